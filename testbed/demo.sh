#!/usr/bin/env bash
# The main job, end to end on a local cluster it starts itself: build, start a test-bed cluster,
# install the CRDs and an example app, run the operator, create a KubeDirectorCluster, wait for
# `configured`, show it, expand it, show it again, then stop everything.
# KEEP=1 leaves the cluster and the operator running (stop them with `make demo-down`).
set -euo pipefail
cd "$(dirname "$0")/.."
export TESTBED_DIR="${DEMO_DIR:-$PWD/target/demo}" TESTBED_PORT_BASE="${DEMO_PORT_BASE:-32300}"
# shellcheck source=testbed/env.sh
. testbed/env.sh
keep="${KEEP:-0}"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building the operator"
cargo build --quiet --bin kubedirector
testbed/down.sh >/dev/null 2>&1 || true
say "starting a local Kubernetes cluster (kwok-kd-1: etcd, kube-apiserver, controller-manager, scheduler, kwok)"
NODES=3 testbed/up.sh 1

operator_pid=""
cleanup() {
  if [ "$keep" = 1 ]; then
    say "kept running: KUBECONFIG=$KUBECONFIG, operator pid $operator_pid, log $TESTBED_DIR/operator.log; stop with 'make demo-down'"
    return
  fi
  [ -n "$operator_pid" ] && kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null
  testbed/down.sh >/dev/null
  echo "stopped the operator and the cluster"
}
trap cleanup EXIT

say "installing the CRDs, storage and the example app (system catalog: namespace kubedirector)"
kubectl apply --server-side -f crds/ >/dev/null
kubectl create namespace kubedirector >/dev/null
kubectl create namespace demo >/dev/null
deploy/examples/local-storage.sh 10
kubectl -n kubedirector apply -f deploy/examples/app-cassandra-like.yaml
kubectl get kdapp -A

say "running the operator (log: $TESTBED_DIR/operator.log)"
target/debug/kubedirector run --namespace kubedirector > "$TESTBED_DIR/operator.log" 2>&1 &
operator_pid=$!
echo "$operator_pid" > "$TESTBED_DIR/operator.pid"

members() {
  kubectl -n demo get kdcluster cass -o jsonpath='{range .status.roles[*]}{range .members[*]}{.pod}{"\t"}{.nodeID}{"\t"}{.state}{"\t"}{.service}{"\t"}{.pvc}{"\n"}{end}{end}' |
    (printf 'POD\tNODE ID\tSTATE\tSERVICE\tPVC\n'; cat) | column -t -s $'\t'
}
wait_configured() {
  local start=$SECONDS
  kubectl -n demo wait kdcluster/cass --for=jsonpath='{.status.observedGeneration}'="$(kubectl -n demo get kdcluster cass -o jsonpath='{.metadata.generation}')" --timeout=120s >/dev/null
  kubectl -n demo wait kdcluster/cass --for=jsonpath='{.status.state}'=configured --timeout=120s >/dev/null
  kubectl -n demo wait kdcluster/cass --for=condition=Ready --timeout=120s >/dev/null
  echo "configured after $((SECONDS - start)) s"
}

say "creating KubeDirectorCluster demo/cass (1 seed + 2 nodes, persistent storage)"
kubectl -n demo apply -f deploy/examples/cluster-cassandra-like.yaml
wait_configured
kubectl get kdcluster -A
members
kubectl -n demo get statefulsets,services,pods,pvc

say "expanding role node from 2 to 4 members"
kubectl -n demo patch kdcluster cass --type=json -p '[{"op":"replace","path":"/spec/roles/1/members","value":4}]'
wait_configured
kubectl get kdcluster -A
members
kubectl -n demo get events --field-selector involvedObject.kind=KubeDirectorCluster
