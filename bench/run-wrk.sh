#!/usr/bin/env bash
# Measures `bazaar serve` (release build, demo catalog) with wrk: GET /products/{id} and the
# seed's GraphQL query, each beside GET /healthz of the same server in the same run.
#
#   bench/run-wrk.sh [duration=20s] [connections=32] [threads=2]
#
# Prints a Markdown table; figures go to bench/RESULTS.md with the machine and revision.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-20s}
connections=${2:-32}
threads=${3:-2}
port=18099

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
data=$(mktemp -d)
ids=$(mktemp)
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$data" "$ids"' EXIT
BAZAAR_RATE_LIMITS__ENABLED=false ./target/release/bazaar --listen 127.0.0.1:$port --data-dir "$data" --demo-products 1000 >/dev/null 2>&1 &
server=$!
for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.5; done
curl -sf "http://127.0.0.1:$port/products?limit=100" | python3 -c \
  'import json,sys; print("\n".join(p["id"] for p in json.load(sys.stdin)["items"]))' >"$ids"
export BAZAAR_IDS=$ids

run() { # name script-or-empty path
  local script=$(mktemp --suffix .lua)
  { [ -n "$2" ] && cat "bench/wrk/$2"; cat bench/wrk/report.lua; } >"$script"
  wrk -t"$threads" -c"$connections" -d"$duration" --latency -s "$script" "http://127.0.0.1:$port$3" \
    | sed -n 's/^RESULT //p'
  rm -f "$script"
}

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

echo "| endpoint | req/s | p50 ms | p99 ms | errors | req/s ÷ /healthz |"
echo "|---|---:|---:|---:|---:|---:|"
health=""
for case in "GET /healthz||/healthz" "GET /products/{id}|product.lua|/" "GraphQL seed query|graphql.lua|/"; do
  IFS='|' read -r name script path <<<"$case"
  result=$(run "$name" "$script" "$path")
  rps=$(field rps "$result")
  [ -z "$health" ] && health=$rps
  ratio=$(python3 -c "print(f'{$rps / $health:.2f}')")
  echo "| $name | $rps | $(field p50_ms "$result") | $(field p99_ms "$result") | $(field errors "$result") | $ratio |"
done
