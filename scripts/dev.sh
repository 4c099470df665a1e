#!/usr/bin/env bash
# Runs the whole shopmesh platform locally: installs and starts what is
# missing (PostgreSQL, Redis, the Tansu broker), builds the one binary,
# runs `shopmesh dev` (every service + gateway, per-service databases
# created on start) and loads the demo catalog once it is up.
# Ctrl-C stops shopmesh and whatever this script started.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
trap stack_stop_started EXIT

stack_up
log "building shopmesh"
cargo build --quiet --bin shopmesh
BIN="$ROOT/target/debug/shopmesh"

"$BIN" dev &
DEV_PID=$!
trap 'kill -TERM $DEV_PID 2>/dev/null; wait $DEV_PID 2>/dev/null; stack_stop_started' EXIT
trap 'exit 130' INT TERM

if "$BIN" help seed >/dev/null 2>&1; then
  # Seeding needs the catalog up; it is idempotent, so a rerun changes nothing.
  for _ in $(seq 1 100); do "$BIN" seed && break; sleep 0.5; done
fi
wait $DEV_PID
