#!/usr/bin/env bash
# SQLite vs PostgreSQL behind the same server, measured in one run on one machine:
# `bazaar lab saturate` for the product, graphql and browsing workloads with the product
# cache on and off, and checkout orders/s (examples/checkout_load.rs), each backend 4 shards.
#
#   bench/run-backends.sh [postgres-server-url=postgres://postgres@127.0.0.1:5432/postgres]
#
# The PostgreSQL shards are four fresh databases `bazaar_bench_{0..3}` on that server, dropped
# at the end. Prints one line per measurement; figures go to bench/RESULTS.md with the
# machine and revision.
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:-postgres://postgres@127.0.0.1:5432/postgres}
step=${STEP:-3s}
warmup=${WARMUP:-1s}
checkout_seconds=${CHECKOUT_SECONDS:-15}

cargo build --release --quiet -p bazaar --bin bazaar --example checkout_load
bazaar=./target/release/bazaar
base=${server%/*}
pids=()
dirs=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "${dirs[@]}"
  for i in 0 1 2 3; do psql -q "$server" -c "DROP DATABASE IF EXISTS bazaar_bench_$i WITH (FORCE)" || true; done
}
trap cleanup EXIT

# start BACKEND CACHE PORT: a fresh server with the 1,000-product demo catalog.
start() {
  local backend=$1 cache=$2 port=$3 data
  data=$(mktemp -d)
  dirs+=("$data")
  local env=(BAZAAR_RATE_LIMITS__ENABLED=false BAZAAR_CACHE__PRODUCTS__ENABLED="$cache")
  if [ "$backend" = postgres ]; then
    local urls=()
    for i in 0 1 2 3; do
      psql -q "$server" -c "DROP DATABASE IF EXISTS bazaar_bench_$i WITH (FORCE)" -c "CREATE DATABASE bazaar_bench_$i"
      urls+=("\"$base/bazaar_bench_$i\"")
    done
    env+=(BAZAAR_STORE__BACKEND=postgres "BAZAAR_STORE__POSTGRES__SHARDS=[$(IFS=,; echo "${urls[*]}")]")
  fi
  env "${env[@]}" "$bazaar" serve --listen 127.0.0.1:"$port" --data-dir "$data" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0; sleep 0.5; done
  echo "server $backend on $port did not become ready" >&2
  return 1
}

stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  pids=()
}

port=18400
for cache in true false; do
  for backend in sqlite postgres; do
    port=$((port + 1))
    start "$backend" "$cache" "$port"
    for workload in product graphql browsing; do
      bound=10ms
      [ "$workload" = browsing ] && bound=50ms
      echo "### $backend cache=$cache $workload (p99 ≤ $bound)"
      "$bazaar" lab saturate --target "http://127.0.0.1:$port" --workload "$workload" \
        --p99 "$bound" --step "$step" --warmup "$warmup" --start-rate 1000 2>&1 | tail -4
    done
    stop_all
  done
done

for backend in sqlite postgres; do
  port=$((port + 1))
  start "$backend" true "$port"
  echo "### checkout, $backend, 4 shards, 32 buyers of one variant"
  ./target/release/examples/checkout_load "http://127.0.0.1:$port" 32 "$checkout_seconds"
  stop_all
done
