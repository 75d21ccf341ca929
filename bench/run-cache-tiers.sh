#!/usr/bin/env bash
# What each cache tier costs on GET /products/{id}: four `bazaar serve` processes on the same
# demo catalog, measured with wrk in one run —
#   L1       the default in-process product cache (read-through, W-TinyLFU)
#   L1 + L2  the same with the Redis tier under it (hits never reach Redis)
#   L2       an in-process cache too small to hold the working set (LRU, 16 entries for
#            100 products), so most reads are answered by Redis
#   store    no cache: every read is a SQLite query
#
#   bench/run-cache-tiers.sh [duration=15s] [connections=32] [threads=2] [redis=redis://127.0.0.1:6379]
#
# Prints a Markdown table; figures go to bench/RESULTS.md with the machine and revision.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-15s}
connections=${2:-32}
threads=${3:-2}
redis=${4:-redis://127.0.0.1:6379}

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
ids=$(mktemp)
dirs=()
servers=()
cleanup() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "${dirs[@]}" "$ids"
}
trap cleanup EXIT

prefix="bazaar-bench:$$"
start() { # port extra-env...
  local port=$1 data
  shift
  data=$(mktemp -d)
  dirs+=("$data")
  env BAZAAR_RATE_LIMITS__ENABLED=false "$@" ./target/release/bazaar --listen 127.0.0.1:"$port" \
    --data-dir "$data" --demo-products 1000 >/dev/null 2>&1 &
  servers+=($!)
  for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.5; done
  echo "server on $port did not start" >&2
  exit 1
}
shared=(BAZAAR_CACHE__REDIS__URL="$redis" BAZAAR_CACHE__REDIS__PREFIX="$prefix")
start 18101
start 18102 "${shared[@]}" BAZAAR_CACHE__PRODUCTS__L2=true
start 18103 "${shared[@]}" BAZAAR_CACHE__PRODUCTS__L2=true \
  BAZAAR_CACHE__PRODUCTS__POLICY=lru BAZAAR_CACHE__PRODUCTS__CAPACITY=1
start 18104 BAZAAR_CACHE__PRODUCTS__ENABLED=false
curl -sf "http://127.0.0.1:18101/products?limit=100" | python3 -c \
  'import json,sys; print("\n".join(p["id"] for p in json.load(sys.stdin)["items"]))' >"$ids"
export BAZAAR_IDS=$ids

run() { # url
  local script
  script=$(mktemp --suffix .lua)
  cat bench/wrk/product.lua bench/wrk/report.lua >"$script"
  wrk -t"$threads" -c"$connections" -d"$duration" --latency -s "$script" "$1" | sed -n 's/^RESULT //p'
  rm -f "$script"
}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
counter() { # port name
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v n="$2" 'index($0, n) == 1 { print $2 }'
}

echo "| tier answering | req/s | p50 ms | p99 ms | errors | L1 hits | L2 hits | ÷ store |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
declare -A rows
store_rps=""
for case in "store|18104" "L2 (Redis)|18103" "L1 + L2|18102" "L1|18101"; do
  IFS='|' read -r name port <<<"$case"
  result=$(run "http://127.0.0.1:$port/")
  rps=$(field rps "$result")
  [ -z "$store_rps" ] && store_rps=$rps
  l1=$(counter "$port" 'bazaar_cache_requests_total{cache="products",result="hit"}')
  l2=$(counter "$port" 'bazaar_cache_requests_total{cache="products_l2",result="hit"}')
  ratio=$(python3 -c "print(f'{$rps / $store_rps:.2f}')")
  rows[$name]="| $name | $rps | $(field p50_ms "$result") | $(field p99_ms "$result") | $(field errors "$result") | ${l1:-–} | ${l2:-–} | $ratio |"
done
for name in "L1" "L1 + L2" "L2 (Redis)" "store"; do echo "${rows[$name]}"; done
