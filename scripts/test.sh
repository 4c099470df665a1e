#!/usr/bin/env bash
# Runs the whole shopmesh test suite: unit tests and the integration tests
# in tests/integration against the real PostgreSQL, Redis and Tansu broker
# (installed and started here if missing, stopped again afterwards).
# Extra arguments go to cargo nextest (e.g. a test name filter).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
trap stack_stop_started EXIT

stack_up
export SHOPMESH_TEST_POSTGRES_URL="$SHOPMESH_POSTGRES_URL"
export SHOPMESH_TEST_REDIS_URL="$SHOPMESH_REDIS_URL"
export SHOPMESH_TEST_KAFKA_BROKERS="$SHOPMESH_KAFKA_BROKERS"
# Some tests run a private broker of their own (even when the shared one was already up).
install_tansu
export SHOPMESH_TANSU_BIN="$TANSU_BIN"

if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
cargo nextest run --workspace --no-fail-fast "$@"
