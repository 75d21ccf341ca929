#!/usr/bin/env bash
# Measures `bazaar serve` (release build, demo catalog) with wrk: GET /products/{id} and the
# seed's GraphQL query, with the product cache on and off, each beside GET /healthz of the
# same server, all in one run.
#
#   bench/run-wrk.sh [duration=20s] [connections=32] [threads=2]
#
# Prints a Markdown table; figures go to bench/RESULTS.md with the machine and revision.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-20s}
connections=${2:-32}
threads=${3:-2}
cached_port=18099
uncached_port=18098

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
cached_data=$(mktemp -d)
uncached_data=$(mktemp -d)
ids=$(mktemp)
servers=()
cleanup() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$cached_data" "$uncached_data" "$ids"
}
trap cleanup EXIT

# Rate limits off: every wrk connection comes from one address.
start() { # port data-dir extra-env...
  local port=$1 data=$2
  shift 2
  env BAZAAR_RATE_LIMITS__ENABLED=false "$@" ./target/release/bazaar --listen 127.0.0.1:"$port" \
    --data-dir "$data" --demo-products 1000 >/dev/null 2>&1 &
  servers+=($!)
  for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.5; done
  echo "server on $port did not start" >&2
  exit 1
}
start "$cached_port" "$cached_data"
start "$uncached_port" "$uncached_data" BAZAAR_CACHE__PRODUCTS__ENABLED=false
# The demo catalog is deterministic: both servers hold the same ids.
curl -sf "http://127.0.0.1:$cached_port/products?limit=100" | python3 -c \
  'import json,sys; print("\n".join(p["id"] for p in json.load(sys.stdin)["items"]))' >"$ids"
export BAZAAR_IDS=$ids

run() { # script-or-empty url
  local script
  script=$(mktemp --suffix .lua)
  { [ -n "$1" ] && cat "bench/wrk/$1"; cat bench/wrk/report.lua; } >"$script"
  wrk -t"$threads" -c"$connections" -d"$duration" --latency -s "$script" "$2" | sed -n 's/^RESULT //p'
  rm -f "$script"
}

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

echo "| endpoint | req/s | p50 ms | p99 ms | errors | req/s ÷ /healthz |"
echo "|---|---:|---:|---:|---:|---:|"
health=""
for case in \
  "GET /healthz||$cached_port|/healthz" \
  "GET /products/{id}, cache on|product.lua|$cached_port|/" \
  "GET /products/{id}, cache off|product.lua|$uncached_port|/" \
  "GraphQL seed query, cache on|graphql.lua|$cached_port|/" \
  "GraphQL seed query, cache off|graphql.lua|$uncached_port|/"; do
  IFS='|' read -r name script port path <<<"$case"
  result=$(run "$script" "http://127.0.0.1:$port$path")
  rps=$(field rps "$result")
  [ -z "$health" ] && health=$rps
  ratio=$(python3 -c "print(f'{$rps / $health:.2f}')")
  echo "| $name | $rps | $(field p50_ms "$result") | $(field p99_ms "$result") | $(field errors "$result") | $ratio |"
done
