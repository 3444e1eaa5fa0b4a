#!/usr/bin/env bash
# Prints the cache pin: the pinned versions plus a digest of versions.env (incl. TOOLS_RECIPE) and the
# wrapper modules, so a change to either lands in a new cache directory instead of reusing stale binaries.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
. "$here/../versions.env"
digest=$(cat "$here/../versions.env" "$here"/*/go.mod "$here"/*/go.sum "$here"/*/*.go 2>/dev/null | sha256sum | cut -c1-10)
echo "k8s-${KUBE_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}-${digest}"
