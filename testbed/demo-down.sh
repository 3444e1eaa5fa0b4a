#!/usr/bin/env bash
# Stops what `KEEP=1 make demo` left running.
set -uo pipefail
cd "$(dirname "$0")/.."
export TESTBED_DIR="${DEMO_DIR:-$PWD/target/demo}"
[ -f "$TESTBED_DIR/operator.pid" ] && kill "$(cat "$TESTBED_DIR/operator.pid")" 2>/dev/null
rm -f "$TESTBED_DIR/operator.pid"
testbed/down.sh
