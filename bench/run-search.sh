#!/usr/bin/env bash
# Search at scale: seed PRODUCTS (default 1,000,000) demo products, then for the tantivy index
# and the SQLite FTS5 baseline in turn start a server on them (which builds its index in the
# background, as `bazaar serve` does on a data directory without one) and report the build
# time, the index's size on disk and the server's peak memory, then `GET /search` saturated by
# the lab (p99 bound P99, default 50ms) with p50/p99 at half that rate, and `/search/suggest`
# at a fixed rate. Last, with tantivy, the freshness of new products under the browsing mix.
#
#   bench/run-search.sh            BAZAAR=path/to/bazaar to use a built binary
set -euo pipefail
cd "$(dirname "$0")/.."
products=${PRODUCTS:-1000000}
p99=${P99:-50ms}
[ -n "${BAZAAR:-}" ] || cargo build --release --quiet -p bazaar --bin bazaar
bazaar=${BAZAAR:-./target/release/bazaar}
data=$(mktemp -d)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
export BAZAAR_RATE_LIMITS__ENABLED=false BAZAAR_STORE__DURABILITY=normal
addr=127.0.0.1:18090
target=http://$addr

echo "== seeding $products products (no outbox events: the index is built from the store)"
BAZAAR_STORE__OUTBOX=false "$bazaar" seed --data-dir "$data" --products "$products" 2>/dev/null | tail -2

# serve ENGINE: starts a server with that search engine and waits for its index.
serve() {
  BAZAAR_SEARCH__ENGINE=$1 "$bazaar" serve --listen "$addr" --data-dir "$data" --demo-products 0 \
    >"$data/serve-$1.log" 2>&1 &
  server=$!
  local started=$SECONDS
  until curl -sf "$target/readyz" 2>/dev/null | grep -q '"search":{"state":"ready"}'; do
    sleep 0.5
    kill -0 "$server" || { cat "$data/serve-$1.log"; exit 1; }
  done
  echo "index built and serving after $((SECONDS - started)) s (from the server's start)"
  grep 'rebuilt and swapped in' "$data/serve-$1.log" | tail -1 || true
  echo "index on disk: $(du -sh "$data/search" | cut -f1)   server peak RSS: $(grep VmHWM /proc/$server/status | awk '{print $2/1024 " MiB"}')"
}

stop() {
  kill "$server"
  wait "$server" || true
  server=
}

for engine in tantivy fts5; do
  echo
  echo "== $engine"
  rm -rf "$data/search"
  serve "$engine"
  "$bazaar" lab saturate --target "$target" --workload search --p99 "$p99" --step 5s --start-rate 10
  "$bazaar" lab run --target "$target" --workload suggest --rate 500 --duration 10s
  echo "peak RSS after the load: $(grep VmHWM /proc/$server/status | awk '{print $2/1024 " MiB"}')"
  if [ "$engine" = tantivy ]; then
    echo
    echo "== freshness under the browsing mix (tantivy)"
    "$bazaar" lab run --target "$target" --workload browsing --rate 200 --duration 70s >"$data/browsing.txt" 2>&1 &
    mix=$!
    sleep 5
    "$bazaar" lab freshness --target "$target" --products 300 --every 200ms
    wait "$mix" || true
    grep '^|' "$data/browsing.txt" || tail -5 "$data/browsing.txt"
  fi
  stop
done
