#!/usr/bin/env bash
# Benchmarks: brings up the stack, runs a release `shopmesh dev` on fresh
# bench databases with rate limits lifted, seeds it, runs shopmesh-bench,
# then stops shopmesh and whatever stack.sh started.
#
#   scripts/bench.sh                      # all three benchmarks, default sizes
#   scripts/bench.sh checkout --rate 200 --duration 5
#   SHOPMESH_BENCH_PROFILE=debug scripts/bench.sh gateway-vs-grpc --duration 5
#
# Loopback only; every load run stops by itself (duration or count).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
trap stack_stop_started EXIT

PROFILE="${SHOPMESH_BENCH_PROFILE:-release}"
GATEWAY="http://127.0.0.1:8080"

if listening 8080; then
  log "something already listens on 8080 (a running shopmesh dev?); stop it first so the bench measures its own stack"
  exit 1
fi

stack_up
log "building shopmesh and shopmesh-bench ($PROFILE)"
if [ "$PROFILE" = release ]; then
  cargo build --quiet --release -p shopmesh -p shopmesh-bench
else
  cargo build --quiet -p shopmesh -p shopmesh-bench
fi
BIN="$ROOT/target/$PROFILE/shopmesh"
BENCH="$ROOT/target/$PROFILE/shopmesh-bench"

# Fresh databases, Redis keys and topics per run, apart from dev data: old
# events on reused topics would replay into the new databases.
RUN="bench$(date +%s)"
for svc in auth user catalog inventory cart order payment notification; do
  db="shopmesh_bench_$svc"
  PGOPTIONS=--client-min-messages=warning psql -q "$SHOPMESH_POSTGRES_URL/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  export "SHOPMESH_${svc^^}_DATABASE_URL=$SHOPMESH_POSTGRES_URL/$db"
done
export SHOPMESH_REDIS_KEY_PREFIX="$RUN:"
export SHOPMESH_KAFKA_TOPIC_PREFIX="$RUN."
# Lifted, not disabled: the limiter's Redis round trip stays in the measurement.
export SHOPMESH_RATE_LIMIT_ANONYMOUS=1000000000/1
export SHOPMESH_RATE_LIMIT_AUTHENTICATED=1000000000/1
export SHOPMESH_RATE_LIMIT_LOGIN=1000000000/1
export SHOPMESH_RATE_LIMIT_SIGNUP=1000000000/1
export SHOPMESH_ADMIN_EMAIL="${SHOPMESH_ADMIN_EMAIL:-admin@bench.test}"
export SHOPMESH_ADMIN_PASSWORD="${SHOPMESH_ADMIN_PASSWORD:-bench-admin-password}"
# Per-request info logs would be a large share of the CPU being measured; the
# platform's few (relay leadership, partition assignments) show a stuck group.
export RUST_LOG="${RUST_LOG:-warn,shopmesh_platform=info}"

SERVER_LOG="$LOCAL/bench-shopmesh.log"
ready() { curl -fsS -o /dev/null "$1" 2>/dev/null; }
DEV_PID=
trap 'if [ -n "$DEV_PID" ]; then kill -TERM $DEV_PID 2>/dev/null; wait $DEV_PID 2>/dev/null; fi; stack_stop_started' EXIT
trap 'exit 130' INT TERM
# The fixed ports lie in the ephemeral range, so a passing client socket can
# hold one for a while: retry the start instead of failing the run.
for attempt in $(seq 1 12); do
  log "starting shopmesh dev ($PROFILE), log in $SERVER_LOG"
  "$BIN" dev > "$SERVER_LOG" 2>&1 &
  DEV_PID=$!
  for _ in $(seq 1 300); do
    kill -0 $DEV_PID 2>/dev/null || break
    ready "$GATEWAY/health/ready" && break
    sleep 0.2
  done
  ready "$GATEWAY/health/ready" && break
  kill -TERM $DEV_PID 2>/dev/null || true; wait $DEV_PID 2>/dev/null || true
  DEV_PID=
  if grep -q "Address already in use" "$SERVER_LOG" && [ "$attempt" -lt 12 ]; then
    log "$(tail -1 "$SERVER_LOG"); retrying in 5 s"; sleep 5; continue
  fi
  log "shopmesh dev did not become ready; see $SERVER_LOG"; tail -20 "$SERVER_LOG" >&2; exit 1
done
for port in $(seq 9101 9108); do
  for _ in $(seq 1 150); do ready "http://127.0.0.1:$port/health/ready" && break; sleep 0.2; done
done
"$BIN" seed >&2  # stdout stays the bench's (--json)

# The services may use Postgres' socket; pgbench's reference run keeps to
# TCP, as in every figure the README compares it with.
export SHOPMESH_POSTGRES_URL="$POSTGRES_TCP_URL"
if [ $# -eq 0 ]; then
  "$BENCH" gateway-vs-grpc
  "$BENCH" catalog-get
  "$BENCH" checkout
else
  "$BENCH" "$@"
fi
