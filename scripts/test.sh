#!/usr/bin/env bash
# Runs every test: unit and property tests, and the end-to-end scenarios against the real
# binaries, a real Postgres and a real Kafka-compatible broker, which this script installs
# (if missing) and starts on loopback. Extra arguments go to `cargo test`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

PG_PORT=${E2E_PG_PORT:-55432}
KAFKA_PORT=${E2E_KAFKA_PORT:-19092}

ensure_rust_tools
ensure_postgres
ensure_wal2json
ensure_tansu
ensure_sqlite3
ensure_schemathesis
ensure_moto # exports E2E_MOTO_SERVER for tests/tests/object_store.rs
ensure_chromium # exports E2E_CHROMIUM for tests/tests/dashboard.rs
ensure_promtool # exports E2E_PROMTOOL for tests/tests/compose.rs
ensure_kubernetes_validate # exports E2E_KUBERNETES_VALIDATE for tests/tests/kubernetes.rs
start_postgres test-pg "$PG_PORT" 400
start_tansu test-broker "$KAFKA_PORT" fresh
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
export E2E_SCHEMATHESIS="$SCHEMATHESIS"

# Formatting is part of the build: a change that rustfmt would rewrite fails here, first.
log "checking formatting"
cargo fmt --all -- --check
# Lints are part of the build too: the workspace's lints (Cargo.toml) and clippy's defaults.
log "linting"
cargo clippy --workspace --all-targets -- -D warnings

log "building"
cargo build --workspace --all-targets
log "testing"
cargo test --workspace "$@"
