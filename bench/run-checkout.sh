#!/usr/bin/env bash
# Checkout throughput of `bazaar serve` (release build, synchronous=FULL, rate limits off) at
# 1 and 4 shards, each measured by crates/bazaar/examples/checkout_load.rs in the same run.
#
#   bench/run-checkout.sh [seconds=20] [workers=32]
#
# Prints a Markdown table per shard count; figures go to bench/RESULTS.md with the machine
# and revision.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
workers=${2:-32}

cargo build --release --quiet -p bazaar --bin bazaar --example checkout_load
dirs=()
servers=()
cleanup() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "${dirs[@]}"
}
trap cleanup EXIT

port=18120
for shards in 1 4; do
  port=$((port + 1))
  data=$(mktemp -d)
  dirs+=("$data")
  BAZAAR_RATE_LIMITS__ENABLED=false BAZAAR_STORE__SHARDS=$shards ./target/release/bazaar \
    --listen 127.0.0.1:"$port" --data-dir "$data" --demo-products 100 >/dev/null 2>&1 &
  servers+=($!)
  for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.5; done
  echo "### $shards shard(s)"
  ./target/release/examples/checkout_load "http://127.0.0.1:$port" "$workers" "$seconds"
  echo
done
