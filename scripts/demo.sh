#!/usr/bin/env bash
# Runs the whole platform locally, without Docker: Postgres and the broker on loopback, the
# speed layer, the lander, the batch scheduler (every minute) and the HTTP API, fed by the demo
# event generator. Ctrl-C stops everything. Settings: RATE, DUPLICATES, LATE, BAD (shares).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

PG_PORT=${DEMO_PG_PORT:-5433}
KAFKA_PORT=${DEMO_KAFKA_PORT:-9092}
HTTP=${LISTEN_ADDR:-127.0.0.1:8080}

ensure_build_tools
ensure_postgres
ensure_wal2json
ensure_tansu
# The HTTP API, and the services' /metrics listeners, only on ports nothing else holds.
for port in "${HTTP##*:}" 9101 9102 9103 9104; do
  refuse_foreign_port "$port" "the platform" || exit 1
done
start_postgres demo-pg "$PG_PORT"
start_tansu demo-broker "$KAFKA_PORT" fresh
# Every demo starts from empty state: a fresh broker log (above), database and lake, so the
# stored offsets match the new topic.
# The CDC publisher's slot holds the old database; it goes with it.
pg_run "$(pg_bin)/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAt -c \
  "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'platform_cdc'" >/dev/null
pg_run "$(pg_bin)/dropdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres --if-exists platform
pg_run "$(pg_bin)/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres platform
rm -rf "$STATE/demo-lake"

log "building"
# The same build as scripts/test.sh's: with `--bins` alone cargo resolves the dependencies'
# features without the dev-dependencies, a different set, and rebuilds the whole tree (about ten
# minutes on two cores) after the tests, and the tests again after the demo.
cargo build --workspace --all-targets
BIN="$ROOT/target/debug"

export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/platform"
export KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
export EVENTS_TOPIC=events
export LAKE_DIR="$STATE/demo-lake"
export LISTEN_ADDR="$HTTP"
LOGS="$STATE/demo-logs"
mkdir -p "$LOGS"

pids=()
stop() {
  trap - EXIT INT TERM
  log "stopping"
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  stop_tansu demo-broker
  stop_postgres demo-pg
}
trap stop EXIT INT TERM

"$BIN/event-generator" --create-topic --partitions 4 --rate "${RATE:-200}" \
  --duplicates "${DUPLICATES:-0.05}" --late "${LATE:-0.05}" --bad "${BAD:-0.01}" >"$LOGS/generator.log" 2>&1 &
pids+=($!)
"$BIN/cdc-publisher" run >"$LOGS/cdc-publisher.log" 2>&1 & pids+=($!)
"$BIN/speed-layer" run >"$LOGS/speed-layer.log" 2>&1 & pids+=($!)
"$BIN/batch-layer" land >"$LOGS/lander.log" 2>&1 & pids+=($!)
"$BIN/batch-layer" schedule --cron "*/1 * * * *" >"$LOGS/batch.log" 2>&1 & pids+=($!)
"$BIN/serving-layer" run >"$LOGS/serving-layer.log" 2>&1 & pids+=($!)
wait_for_port "${HTTP##*:}" "the serving layer"

from=$(date -u -d '-30 min' +%Y-%m-%dT%H:%M:00Z)
to=$(date -u -d '+5 min' +%Y-%m-%dT%H:%M:00Z)
cat <<MSG

The platform is running. Query it in your browser or with curl:

  curl 'http://$HTTP/v1/metrics'                                   # the metrics it answers
  curl 'http://$HTTP/v1/metrics/revenue?from=$from&to=$to&group_by=country'
  curl 'http://$HTTP/v1/metrics/purchases?from=$from&to=$to&step=5m&window=15m'
  curl 'http://$HTTP/v1/freshness'                                 # how far behind each side is

Points before "cutover" come from the batch view ("source":"batch"), later ones from the speed
layer. The first batch run promotes within about two minutes.

Send your own event:

  KAFKA_BROKERS=$KAFKA_BROKERS $BIN/event-generator --event \\
    '{"event_id":"mine-1","event_type":"purchase","event_time":"'\$(date -u +%Y-%m-%dT%H:%M:%SZ)'","user_id":"me","amount":12.5,"country":"DE","schema_version":2}'

  Dashboard        http://$HTTP/ (the merged metrics, the cutover drawn)
  API description  http://$HTTP/openapi.json
  Prometheus       http://$HTTP/metrics (serving), 127.0.0.1:9101/metrics (speed layer),
                   :9102 (lander), :9103 (batch scheduler), :9104 (CDC publisher)
  Logs             $LOGS/{speed-layer,lander,batch,serving-layer,cdc-publisher,generator}.log

Ctrl-C stops everything (the servers too; their state stays under .local/).
MSG
wait -n "${pids[@]}"
log "a service exited; see $LOGS"
