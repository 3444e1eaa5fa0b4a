# Sourced by the test-bed scripts: where the tools and the clusters live.
# TOOLS_DIR      bin directory of the pinned tools (default: the cache pin of testbed/tools/pin.sh)
# TESTBED_DIR    state of the local clusters (default: <repo>/target/testbed)
# KUBECONFIG of the test bed: $TESTBED_DIR/kubeconfig, contexts kwok-kd-1 ... kwok-kd-N
testbed_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$testbed_root/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$HOME/.cache/kubedirector-rs/tools/$("$testbed_root/tools/pin.sh")/bin}"
TESTBED_DIR="${TESTBED_DIR:-$repo_root/target/testbed}"
TESTBED_KUBECONFIG="$TESTBED_DIR/kubeconfig"
export TOOLS_DIR TESTBED_DIR TESTBED_KUBECONFIG
# kwokctl keeps each cluster's pid files, certificates and logs under its work dir.
export KWOK_WORKDIR="$TESTBED_DIR/kwok"
export PATH="$TOOLS_DIR:$PATH"
# `source testbed/env.sh` in a shell gives kubectl, kwokctl and the test bed's kubeconfig.
export KUBECONFIG="$TESTBED_KUBECONFIG"
