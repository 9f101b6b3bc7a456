#!/usr/bin/env bash
# Runs every test: unit and property tests, and the end-to-end scenarios against the real
# binaries, a real Postgres and a real Kafka-compatible broker, which this script installs
# (if missing) and starts on loopback. Extra arguments go to `cargo test`.
#
# `./scripts/test.sh -p <crate>` tests only those crates. Unless one of them is
# `platform-tests` (the end-to-end scenarios), only Postgres is installed and started: the
# crates' own tests need no broker, no browser and none of the scenarios' tools.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

PG_PORT=${E2E_PG_PORT:-55432}
KAFKA_PORT=${E2E_KAFKA_PORT:-19092}

packages=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    -p | --package) packages+=("${args[i + 1]:-}") ;;
    --package=*) packages+=("${args[i]#--package=}") ;;
  esac
done
scope=(--workspace)
e2e=1
if [ ${#packages[@]} -gt 0 ]; then
  scope=()
  e2e=0
  for package in "${packages[@]}"; do
    if [ "$package" = platform-tests ]; then e2e=1; fi
  done
fi

ensure_build_tools
ensure_rust_tools
ensure_postgres
if [ "$e2e" = 1 ]; then
  ensure_wal2json
  ensure_tansu
  ensure_sqlite3
  ensure_schemathesis
  ensure_moto # exports E2E_MOTO_SERVER for tests/tests/object_store.rs
  ensure_chromium # exports E2E_CHROMIUM for tests/tests/dashboard.rs
  ensure_promtool # exports E2E_PROMTOOL for tests/tests/compose_observability.rs
  ensure_jq # exports E2E_JQ for tests/tests/grafana_panels.rs
  ensure_kubernetes_validate # exports E2E_KUBERNETES_VALIDATE for tests/tests/kubernetes.rs
fi
start_postgres test-pg "$PG_PORT" 400
if [ "$e2e" = 1 ]; then start_tansu test-broker "$KAFKA_PORT" fresh; fi
cleanup() {
  stop_tansu test-broker
  stop_postgres test-pg
}
if [ "${KEEP_STACK:-0}" != 1 ]; then trap cleanup EXIT; fi

# Each scenario creates its own database and topic on these servers.
export E2E_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export E2E_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
# The outage and chaos scenarios restart Postgres and the broker through these.
export E2E_STACK_LIB="$ROOT/scripts/lib.sh" E2E_PG_NAME=test-pg E2E_PG_PORT="$PG_PORT"
export E2E_BROKER_NAME=test-broker E2E_KAFKA_PORT="$KAFKA_PORT"
# The OpenAPI scenario runs it against the serving layer.
export E2E_SCHEMATHESIS="${SCHEMATHESIS:-}"

# Formatting is part of the build: a change that rustfmt would rewrite fails here, first.
log "checking formatting"
cargo fmt --all -- --check
# Lints are part of the build too: the workspace's lints (Cargo.toml) and clippy's defaults.
log "linting"
cargo clippy --workspace --all-targets -- -D warnings

log "building"
if [ ${#packages[@]} -gt 0 ]; then
  for package in "${packages[@]}"; do scope+=(-p "$package"); done
fi
cargo build "${scope[@]}" --all-targets
log "testing"
# With `-p`, "$@" names the packages; `--workspace` would test every crate regardless.
if [ ${#packages[@]} -gt 0 ]; then cargo test "$@"; else cargo test --workspace "$@"; fi
