#!/usr/bin/env bash
# What events cost and how far behind they run, in one run (release build, 4 shards,
# synchronous=FULL, rate limits off, embedded queue):
#
#   1. checkout throughput with the outbox on and off (`store.outbox`), alternated twice,
#      by crates/bazaar/examples/checkout_load.rs;
#   2. relay and consumer lag under TPC-W's ordering mix at a fixed rate (`bazaar lab run`),
#      sampled from /metrics every half second.
#
#   bench/run-events.sh [seconds=10] [workers=32] [rate=100]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
workers=${2:-32}
rate=${3:-100}

cargo build --release --quiet -p bazaar --bin bazaar --example checkout_load
dirs=()
servers=()
cleanup() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "${dirs[@]}"
}
trap cleanup EXIT

start() { # port outbox
  local data
  data=$(mktemp -d)
  dirs+=("$data")
  BAZAAR_RATE_LIMITS__ENABLED=false BAZAAR_STORE__OUTBOX=$2 ./target/release/bazaar \
    --listen 127.0.0.1:"$1" --data-dir "$data" --demo-products 200 >/dev/null 2>&1 &
  servers+=($!)
  for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && break; sleep 0.5; done
}

echo "## Checkout with the outbox on and off"
start 18131 true
start 18132 false
for round in 1 2; do
  for port in 18131 18132; do
    if [ "$port" = 18131 ]; then label="outbox on"; else label="outbox off"; fi
    echo "### round $round, $label"
    ./target/release/examples/checkout_load "http://127.0.0.1:$port" "$workers" "$seconds"
  done
done

echo
echo "## Event lag under the ordering mix at $rate interactions/s"
start 18133 true
samples=$(mktemp)
dirs+=("$samples")
(
  while true; do
    curl -s http://127.0.0.1:18133/metrics \
      | awk '/^bazaar_outbox_lag_seconds\{/ {if ($2 > o) o = $2}
             /^bazaar_outbox_unpublished\{/ {u += $2}
             /^bazaar_queue_depth\{queue="tally"\}/ {d = $2}
             END {print o, u, d}' >>"$samples"
    sleep 0.5
  done
) &
sampler=$!
buckets() { curl -s http://127.0.0.1:18133/metrics | grep '^bazaar_event_effect_lag_seconds_bucket' | grep 'consumer="tally"' \
  | sed -E 's/.*le="([^"]+)".* ([0-9.e+]+)$/\1 \2/'; }
sleep 2 # the demo catalog's events, relayed at start, are not the load's
buckets >"$samples.before"
./target/release/bazaar lab run --target http://127.0.0.1:18133 --workload ordering \
  --rate "$rate" --duration "${seconds}s" --connections 16 --shoppers 32
kill "$sampler"
sort -n -k1 "$samples" | awk '{o[NR] = $1; if ($2 > u) u = $2; if ($3 > d) d = $3}
  END {printf "outbox lag (oldest unpublished row), per sample: median %.3f s, max %.3f s; max unpublished rows %d; max tally backlog %d (%d samples)\n",
       o[int((NR + 1) / 2)], o[NR], u, d, NR}'
sleep 2
buckets >"$samples.after"
dirs+=("$samples.before" "$samples.after")
# Commit-to-effect lag of the tally consumer during the load: the histogram's growth, as the
# upper bound of the bucket holding each percentile.
paste "$samples.before" "$samples.after" | awk '{le[NR] = $1; n[NR] = $4 - $2}
  END {total = n[NR]; split("0.5 0.9 0.99", q, " ");
       printf "commit-to-effect lag (tally), %d events:", total;
       for (i = 1; i <= 3; i++) for (j = 1; j <= NR; j++) if (n[j] >= q[i] * total) {printf " p%s <= %s s;", q[i] * 100, le[j]; break}
       print ""}'

