#!/usr/bin/env bash
# Runs every benchmark in one command: starts Postgres and the broker on their own ports,
# installs DuckDB (PyPI) into a virtualenv under .local/, builds in release mode and runs
# `bench`, which prints a table and writes bench/results/latest.json. Extra arguments go to
# `bench` (see `target/release/bench --help`), e.g. `--only throughput,freshness`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

PG_PORT=${BENCH_PG_PORT:-55632}
KAFKA_PORT=${BENCH_KAFKA_PORT:-19292}

ensure_build_tools
ensure_postgres
ensure_tansu
start_postgres bench-pg "$PG_PORT"
# The broker keeps its log in memory here, so that its disk does not bound the figures; the
# baselines read from the same broker. tansu 0.6's memory storage answers a fetch that starts
# inside a record batch with the next batch, so a partition handed over between consumers
# loses the rest of that batch: run `--only scaling` with BENCH_TANSU_STORAGE=sqlite://log.db.
TANSU_STORAGE=${BENCH_TANSU_STORAGE:-memory://tansu/} start_tansu bench-broker "$KAFKA_PORT" fresh
cleanup() {
  stop_tansu bench-broker
  stop_postgres bench-pg
}
if [ "${KEEP_STACK:-0}" != 1 ]; then trap cleanup EXIT; fi

VENV="$STATE/bench-venv"
# Pinned: the baseline's version moves its figure (an unpinned reinstall, which brought
# 2.0.1, took it from 15 s to 12 s), and ratios should compare across runs.
DUCKDB=2.0.1
if [ ! -x "$VENV/bin/python" ] ||
  [ "$("$VENV/bin/python" -c "import duckdb; print(duckdb.__version__)" 2>/dev/null)" != "$DUCKDB" ]; then
  install_in_venv "$VENV" "duckdb==$DUCKDB"
fi

if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

log "building (release)"
cargo build --release -p platform-bench -p speed-layer -p batch-layer -p serving-layer

export E2E_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export E2E_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
export RUST_LOG=${RUST_LOG:-warn}
log "benchmarking"
"$ROOT/target/release/bench" --python "$VENV/bin/python" "$@"
