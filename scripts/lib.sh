# Shared by scripts/demo.sh and scripts/test.sh: installs and starts the real Postgres and the
# Kafka-compatible broker on loopback, with all state under .local/ (ignored by git).
# Source it; do not run it.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/.local"
mkdir -p "$STATE"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# ensure_build_tools: a C toolchain and make, which librdkafka (built from source by the
# rdkafka crate) needs, and pkg-config; from Debian's packages if missing.
ensure_build_tools() {
  if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1 \
    || ! command -v pkg-config >/dev/null 2>&1; then
    log "installing a C toolchain (build-essential, pkg-config) from Debian's packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential pkg-config >/dev/null
  fi
}

# ensure_rust_tools: rustfmt and clippy, which scripts/test.sh runs before building.
ensure_rust_tools() {
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    log "installing rustfmt and clippy"
    rustup component add rustfmt clippy
  fi
}

ensure_postgres() {
  if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
    log "installing PostgreSQL from Debian's packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
}

# The CDC publisher decodes the WAL with the wal2json output plugin.
ensure_wal2json() {
  if [ ! -f "$(dirname "$(pg_bin)")/lib/wal2json.so" ]; then
    log "installing wal2json from Debian's packages"
    local major
    major=$(basename "$(dirname "$(pg_bin)")")
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$major-wal2json" >/dev/null
  fi
}

# `libsql` gives the broker its durable sqlite:// log, which survives the restarts of the chaos
# test; `dynostore` its memory:// one; `postgres` an engine whose schema must exist beforehand.
TANSU_FEATURES=dynostore,postgres,libsql

# Whether the installed tansu was built with every feature in TANSU_FEATURES (cargo records
# them in .crates2.json).
tansu_has_features() {
  command -v tansu >/dev/null 2>&1 || return 1
  local entry
  entry=$(grep -o '"tansu [^"]*": *{[^}]*}' "${CARGO_HOME:-$HOME/.cargo}/.crates2.json" 2>/dev/null) || return 1
  local feature
  for feature in ${TANSU_FEATURES//,/ }; do
    case $entry in *"\"$feature\""*) ;; *) return 1 ;; esac
  done
}

ensure_tansu() {
  if ! tansu_has_features; then
    log "installing the tansu broker with cargo (about 12 minutes, once)"
    cargo install --locked tansu --features "$TANSU_FEATURES"
  fi
}

# ensure_schemathesis: the API fuzzer the OpenAPI test (tests/tests/openapi.rs) runs, from PyPI
# into .local/schemathesis-venv; sets SCHEMATHESIS to its executable.
SCHEMATHESIS_VERSION=4.32
ensure_schemathesis() {
  local venv="$STATE/schemathesis-venv"
  SCHEMATHESIS="$venv/bin/schemathesis"
  if [ -x "$SCHEMATHESIS" ] && "$SCHEMATHESIS" --version >/dev/null 2>&1; then
    return 0
  fi
  install_in_venv "$venv" "schemathesis~=$SCHEMATHESIS_VERSION"
}

# ensure_moto: the S3-compatible server the object-store scenario (tests/tests/object_store.rs)
# keeps its lake in, moto's server mode from PyPI, into .local/moto-venv; exports its executable
# as E2E_MOTO_SERVER.
MOTO_VERSION=5.1
ensure_moto() {
  local venv="$STATE/moto-venv"
  E2E_MOTO_SERVER="$venv/bin/moto_server"
  export E2E_MOTO_SERVER
  if [ -x "$E2E_MOTO_SERVER" ] && "$venv/bin/python" -c 'import moto.server' 2>/dev/null; then
    return 0
  fi
  install_in_venv "$venv" "moto[server]~=$MOTO_VERSION"
}

# ensure_kubernetes_validate: the Kubernetes schema validator the manifests' test
# (tests/tests/kubernetes.rs) runs, from PyPI into .local/kubernetes-validate-venv (its schemas
# ship in the package: no cluster, no network at test time); exports its executable as
# E2E_KUBERNETES_VALIDATE.
KUBERNETES_VALIDATE_VERSION=1.37.0
ensure_kubernetes_validate() {
  local venv="$STATE/kubernetes-validate-venv"
  E2E_KUBERNETES_VALIDATE="$venv/bin/kubernetes-validate"
  export E2E_KUBERNETES_VALIDATE
  if [ -x "$E2E_KUBERNETES_VALIDATE" ] && "$E2E_KUBERNETES_VALIDATE" --version >/dev/null 2>&1; then
    return 0
  fi
  install_in_venv "$venv" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
}

# install_in_venv VENV SPEC: a new virtualenv at VENV (any old one replaced) with SPEC installed
# from PyPI.
install_in_venv() {
  local venv=$1 spec=$2
  ensure_python_venv
  log "installing $spec from PyPI into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$spec"
}

# Python's venv module, from Debian's packages if missing.
ensure_python_venv() {
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    log "installing Python's venv from Debian's packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  fi
}

# jq from Debian's packages, for tests/tests/grafana_panels.rs: it applies the dashboard's jq
# selectors as Grafana's Infinity plugin does; exports its path as E2E_JQ.
ensure_jq() {
  if ! command -v jq >/dev/null 2>&1; then
    log "installing jq from Debian's packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
  fi
  E2E_JQ=$(command -v jq)
  export E2E_JQ
}

# promtool, Prometheus's checker, from Debian's prometheus package, unpacked under .local rather
# than installed (which would start a Prometheus server); exports its path as E2E_PROMTOOL for
# tests/tests/compose_observability.rs, which checks the shipped alerting rules with it.
ensure_promtool() {
  local dir="$ROOT/.local/promtool"
  if [ ! -x "$dir/usr/bin/promtool" ]; then
    log "unpacking promtool from Debian's prometheus package"
    local download
    download=$(mktemp -d)
    (cd "$download" && apt-get download prometheus >/dev/null 2>&1) || {
      as_root apt-get update -qq
      (cd "$download" && apt-get download prometheus >/dev/null)
    }
    mkdir -p "$dir"
    dpkg-deb -x "$download"/prometheus_*.deb "$dir"
    rm -rf "$download"
  fi
  E2E_PROMTOOL="$dir/usr/bin/promtool"
  export E2E_PROMTOOL
}

# Headless Chromium from Debian's packages, for the dashboard scenario; exports its path as
# E2E_CHROMIUM. fonts-liberation gives the screenshot legible text on a bare machine.
ensure_chromium() {
  if ! command -v chromium >/dev/null 2>&1 || [ ! -d /usr/share/fonts/truetype/liberation ]; then
    log "installing Chromium from Debian's packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-liberation >/dev/null
  fi
  E2E_CHROMIUM=$(command -v chromium)
  export E2E_CHROMIUM
}

# The server refuses to run as root, so as root it runs as the postgres user.
pg_run() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Where the cluster NAME lives: .local/NAME, unless the postgres user cannot reach it (a checkout
# inside a private directory), then a directory of its own under /tmp.
pg_dir() {
  local name=$1
  if [ "$(id -u)" != 0 ] || runuser -u postgres -- test -x "$STATE" 2>/dev/null; then
    echo "$STATE/$name"
  else
    echo "/tmp/lambda-platform-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)/$name"
  fi
}

# Whether something listens on 127.0.0.1:PORT.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# refuse_foreign_port PORT WHAT: the scripts only ever use servers they started, never one that
# happens to listen on their port (a Kafka or Postgres of the machine's own).
refuse_foreign_port() {
  local port=$1 what=$2
  if port_in_use "$port"; then
    echo "127.0.0.1:$port is taken by a server these scripts did not start, so $what cannot use it." >&2
    echo "Choose free ports: DEMO_PG_PORT, DEMO_KAFKA_PORT, LISTEN_ADDR for scripts/demo.sh; E2E_PG_PORT, E2E_KAFKA_PORT for scripts/test.sh." >&2
    return 1
  fi
}

# start_postgres NAME PORT [MAX_CONNECTIONS]: a private cluster on 127.0.0.1:PORT, trust auth on
# loopback only. DATABASE_URLs are postgres://postgres@127.0.0.1:PORT/<db>. Postgres' default
# settings, as users' servers have them, except logical WAL for the CDC publisher and, where
# MAX_CONNECTIONS raises the default 100 (the test suite runs many services at once), fewer locks
# per transaction: the shared lock table stays at its default 64 x 100 slots, since a larger one
# hides the "out of shared memory" an ordinary server shows.
start_postgres() {
  local name=$1 port=$2 connections=${3:-100} bin dir data run
  bin=$(pg_bin)
  dir=$(pg_dir "$name")
  data="$dir/data"
  run="$dir/run"
  if pg_run "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    return 0
  fi
  refuse_foreign_port "$port" "Postgres ($name)" || return 1
  mkdir -p "$data" "$run"
  if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dir"; fi
  if [ ! -f "$data/PG_VERSION" ]; then
    log "creating a Postgres cluster in $data"
    pg_run "$bin/initdb" -D "$data" -U postgres -A trust --no-sync >/dev/null
  fi
  log "starting Postgres on 127.0.0.1:$port"
  pg_run "$bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 start \
    -o "-p $port -k $run -c listen_addresses=127.0.0.1 -c max_connections=$connections -c max_locks_per_transaction=$((6400 / connections)) -c wal_level=logical -c max_replication_slots=64" >/dev/null
}

stop_postgres() {
  local name=$1
  pg_run "$(pg_bin)/pg_ctl" -D "$(pg_dir "$name")/data" -m fast -w stop >/dev/null 2>&1 || true
}

wait_for_port() {
  local port=$1 what=$2 i
  for i in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "$what did not open 127.0.0.1:$port" >&2
  return 1
}

# start_tansu NAME PORT [fresh]: the broker on 127.0.0.1:PORT, its log in .local/NAME/log.db,
# which a restart keeps unless `fresh` is given. This script's broker NAME already running is
# left as it is; anything else on PORT is refused.
# TANSU_STORAGE overrides the storage engine URL (the benchmarks use memory://tansu/).
start_tansu() {
  local name=$1 port=$2 fresh=${3:-} pid
  if [ -f "$STATE/$name/broker.pid" ]; then
    pid=$(cat "$STATE/$name/broker.pid")
    if kill -0 "$pid" 2>/dev/null && port_in_use "$port"; then
      return 0
    fi
  fi
  refuse_foreign_port "$port" "the broker ($name)" || return 1
  log "starting the broker on 127.0.0.1:$port"
  mkdir -p "$STATE/$name"
  if [ "$fresh" = fresh ]; then rm -f "$STATE/$name"/log.db*; fi
  # Group coordinator decisions (joins, expiries) are what a failed scenario needs to see.
  # tansu reads a sqlite:// path relative to its working directory.
  (cd "$STATE/$name" && RUST_LOG=${BROKER_LOG:-warn,tansu_broker::coordinator=info} exec nohup tansu broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "${TANSU_STORAGE:-sqlite://log.db}" >>broker.log 2>&1 </dev/null) &
  echo $! >"$STATE/$name/broker.pid"
  wait_for_port "$port" "the broker"
}

# The partition-growth scenario edits the broker's sqlite:// store (grow_tansu_topic).
ensure_sqlite3() {
  if ! command -v sqlite3 >/dev/null 2>&1; then
    log "installing sqlite3 from Debian's packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqlite3 >/dev/null
  fi
}

# grow_tansu_topic NAME TOPIC PARTITIONS: gives TOPIC, on the running broker NAME of
# start_tansu (sqlite:// storage), PARTITIONS partitions. tansu 0.6 does not implement
# CreatePartitions, so this writes what its CreateTopics writes for each partition (a topition
# and a watermark row) and the new count; the broker reads topics from its store on every
# metadata request, so clients see the growth as they would after CreatePartitions.
grow_tansu_topic() {
  local name=$1 topic=$2 partitions=$3
  case "$topic$partitions" in *[!A-Za-z0-9_.-]*) echo "grow_tansu_topic: bad arguments" >&2; return 1 ;; esac
  sqlite3 -cmd ".timeout 10000" "$STATE/$name/log.db" <<SQL
BEGIN IMMEDIATE;
WITH RECURSIVE n(p) AS (SELECT 0 UNION ALL SELECT p + 1 FROM n WHERE p + 1 < $partitions)
INSERT INTO topition (topic, partition)
  SELECT t.id, n.p FROM topic t, n WHERE t.name = '$topic'
  AND NOT EXISTS (SELECT 1 FROM topition x WHERE x.topic = t.id AND x.partition = n.p);
INSERT INTO watermark (topition)
  SELECT tp.id FROM topition tp JOIN topic t ON tp.topic = t.id WHERE t.name = '$topic'
  AND NOT EXISTS (SELECT 1 FROM watermark w WHERE w.topition = tp.id);
UPDATE topic SET partitions = $partitions WHERE name = '$topic' AND partitions < $partitions;
COMMIT;
SQL
}

stop_tansu() {
  local name=$1 pid
  if [ -f "$STATE/$name/broker.pid" ]; then
    pid=$(cat "$STATE/$name/broker.pid")
    kill "$pid" 2>/dev/null || true
    # Its port and log file are free only once it has exited.
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$STATE/$name/broker.pid"
  fi
}

