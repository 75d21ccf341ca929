#!/usr/bin/env bash
# How long `bazaar shards add` takes to grow a 100,000-product store from 4 shards to 5, on
# SQLite and on PostgreSQL, with no load (the move alone), and the seed's comparison under
# load: `bazaar lab tradeoff resharding` (hash mod N against the ring).
#
#   bench/run-resharding.sh [postgres-server-url=postgres://postgres@127.0.0.1:5432/postgres]
#
# PRODUCTS (default 100000) and RANGES (default 32) change the size and the ranges.
# The PostgreSQL shards are five fresh databases `bazaar_move_{0..4}`, dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:-postgres://postgres@127.0.0.1:5432/postgres}
products=${PRODUCTS:-100000}
ranges=${RANGES:-32}
base=${server%/*}

[ -n "${BAZAAR:-}" ] || cargo build --release --quiet -p bazaar --bin bazaar
bazaar=${BAZAAR:-./target/release/bazaar}
dirs=()
cleanup() {
  rm -rf "${dirs[@]}"
  for i in 0 1 2 3 4; do psql -q "$server" -c "DROP DATABASE IF EXISTS bazaar_move_$i WITH (FORCE)" || true; done
}
trap cleanup EXIT

# move BACKEND: seed, then time `shards add` (wall clock and peak memory).
move() {
  local backend=$1 data env=(BAZAAR_STORE__DURABILITY=full) add
  data=$(mktemp -d)
  dirs+=("$data")
  if [ "$backend" = postgres ]; then
    local urls=()
    for i in 0 1 2 3 4; do
      psql -q "$server" -c "DROP DATABASE IF EXISTS bazaar_move_$i WITH (FORCE)" -c "CREATE DATABASE bazaar_move_$i"
    done
    for i in 0 1 2 3; do urls+=("\"$base/bazaar_move_$i\""); done
    env+=(BAZAAR_STORE__BACKEND=postgres "BAZAAR_STORE__POSTGRES__SHARDS=[$(IFS=,; echo "${urls[*]}")]")
    add=(--url "$base/bazaar_move_4")
  else
    add=(--count 5)
  fi
  env "${env[@]}" "$bazaar" seed --data-dir "$data" --products "$products" >/dev/null 2>&1
  echo "== $backend: shards add, $products products, 4 -> 5 shards, $ranges ranges"
  env "${env[@]}" /usr/bin/time -f "wall %e s, peak RSS %M KiB" \
    "$bazaar" shards add "${add[@]}" --ranges "$ranges" --data-dir "$data" 2>&1 | grep -v '^\s*$'
}

move sqlite
move postgres
echo "== lab tradeoff resharding, $products products"
"$bazaar" lab tradeoff resharding --products "$products" --rate "${RATE:-100}" --ranges "$ranges" 2>/dev/null
