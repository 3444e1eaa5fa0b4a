#!/usr/bin/env bash
# Runs the integration tests on a fresh 3-cluster test bed and always tears it down (also on failure);
# fails if the teardown leaves a process behind. Tests that measure latency or failover run one at a
# time after the others, with their figures printed.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=testbed/env.sh
. testbed/env.sh
timed=(fault:: sharding:: fleet::a_300 guest::a_hanging)
testbed/down.sh >/dev/null 2>&1
trap 'testbed/down.sh >/dev/null 2>&1' EXIT
rc=0
if testbed/up.sh 3; then
  export KD_TESTBED_CLUSTERS=3 KD_TESTBED_KUBECONFIG="$TESTBED_KUBECONFIG"
  skips=()
  for t in "${timed[@]}"; do skips+=(--skip "$t"); done
  cargo test --test integration -- --include-ignored --test-threads 4 "${skips[@]}" || rc=1
  if [ "$rc" = 0 ]; then
    cargo test --test integration -- --include-ignored --test-threads 1 --nocapture "${timed[@]}" || rc=1
  fi
else
  rc=1
fi
trap - EXIT
testbed/down.sh || { echo "test bed teardown left processes behind" >&2; rc=1; }
exit "$rc"
