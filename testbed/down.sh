#!/usr/bin/env bash
# Deletes every test-bed cluster and checks that none of its processes is left.
set -uo pipefail
# shellcheck source=testbed/env.sh
. "$(dirname "$0")/env.sh"
if [ -x "$TOOLS_DIR/kwokctl" ] && [ -d "$KWOK_WORKDIR/clusters" ]; then
  for dir in "$KWOK_WORKDIR"/clusters/*/; do
    [ -d "$dir" ] || continue
    name="$(basename "$dir")"
    echo "[testbed] deleting $name"
    kwokctl delete cluster --name "$name" >/dev/null 2>&1 || echo "[testbed] kwokctl could not delete $name cleanly" >&2
  done
fi
# Every test-bed process has the work dir on its command line (config, certs, data dir).
left=$(pgrep -f "$KWOK_WORKDIR" || true)
if [ -n "$left" ]; then
  echo "[testbed] stopping leftover processes: $left" >&2
  kill $left 2>/dev/null; sleep 2
  left=$(pgrep -f "$KWOK_WORKDIR" || true)
  [ -z "$left" ] || kill -9 $left 2>/dev/null
fi
rm -rf "$KWOK_WORKDIR" "$TESTBED_DIR/kubeconfigs" "$TESTBED_KUBECONFIG"
if pgrep -f "$KWOK_WORKDIR" >/dev/null; then echo "[testbed] processes still running" >&2; exit 1; fi
echo "[testbed] down"
