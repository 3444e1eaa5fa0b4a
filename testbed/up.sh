#!/usr/bin/env bash
# Starts N local clusters (kwokctl, binary runtime) named kd-1..kd-N, with fake nodes, and writes one
# kubeconfig with contexts kwok-kd-1..kwok-kd-N to $TESTBED_DIR/kubeconfig.
# Usage: up.sh [N]   env: NODES (fake nodes per cluster, default 10), NODE_PODS (pods per node, default 1000),
#                         TESTBED_PORT_BASE (cluster i uses ports base+10*(i-1) .. +5, default 32100)
#                         AUDIT_POLICY (audit policy file; the log is $KWOK_WORKDIR/clusters/kd-i/logs/audit.log)
set -euo pipefail
# shellcheck source=testbed/env.sh
. "$(dirname "$0")/env.sh"
# shellcheck source=/dev/null
. "$testbed_root/versions.env"
n="${1:-1}"
case "$n" in ''|*[!0-9]*) echo "up.sh: CLUSTERS must be a positive number, got '$n'" >&2; exit 2 ;; esac
[ "$n" -ge 1 ] || { echo "up.sh: CLUSTERS must be at least 1" >&2; exit 2; }
nodes="${NODES:-10}"; node_pods="${NODE_PODS:-1000}"
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl kwok-stages.yaml; do
  [ -e "$TOOLS_DIR/$b" ] || { echo "up.sh: $TOOLS_DIR/$b is missing: run 'make tools' first" >&2; exit 1; }
done
mkdir -p "$TESTBED_DIR/kubeconfigs" "$KWOK_WORKDIR"
port_base="${TESTBED_PORT_BASE:-32100}"

create() {
  local name="kd-$1" kc="$TESTBED_DIR/kubeconfigs/kd-$1" config="$TESTBED_DIR/kwokctl-kd-$1.yaml"
  local p=$((port_base + 10 * ($1 - 1)))
  sed -e "s|@TOOLS_DIR@|$TOOLS_DIR|g" -e "s|@KUBE_VERSION@|$KUBE_VERSION|g" \
      -e "s|@ETCD_VERSION@|${ETCD_VERSION#v}|g" -e "s|@KWOK_VERSION@|$KWOK_VERSION|g" \
      -e "s|@PORT_APISERVER@|$p|" -e "s|@PORT_ETCD@|$((p + 1))|" -e "s|@PORT_ETCD_PEER@|$((p + 2))|" \
      -e "s|@PORT_KCM@|$((p + 3))|" -e "s|@PORT_SCHEDULER@|$((p + 4))|" -e "s|@PORT_KWOK@|$((p + 5))|" \
      "$testbed_root/kwokctl-config.yaml.tmpl" > "$config"
  if kwokctl get clusters 2>/dev/null | grep -qx "$name"; then
    echo "[testbed] $name already exists"
  else
    echo "[testbed] creating $name"
    kwokctl create cluster --name "$name" --config "$config" ${AUDIT_POLICY:+--kube-audit-policy "$AUDIT_POLICY"} --config "$TOOLS_DIR/kwok-stages.yaml" --kubeconfig "$kc" --wait 2m --quiet-pull \
      > "$TESTBED_DIR/create-$name.log" 2>&1 || { cat "$TESTBED_DIR/create-$name.log" >&2; return 1; }
  fi
  kwokctl --name "$name" scale node --replicas "$nodes" \
    --param ".allocatable.pods=$node_pods" --param '.allocatable.cpu="1000"' --param '.allocatable.memory="4Ti"' \
    > "$TESTBED_DIR/scale-$name.log" 2>&1 || { cat "$TESTBED_DIR/scale-$name.log" >&2; return 1; }
}

# Clusters start in parallel: each waits for its own API server, so N clusters take about as long as one.
pids=()
for i in $(seq 1 "$n"); do create "$i" & pids+=("$!"); done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done
[ "$failed" = 0 ] || { echo "up.sh: a cluster failed to start; see $TESTBED_DIR/*.log" >&2; exit 1; }

# A component that gives up while starting is not restarted by kwokctl's binary runtime. Seen on 4
# clusters starting at once on 2 cores: kube-controller-manager waits only 20 s for the API server's
# /healthz (RBAC bootstrap took longer) and exits, leaving StatefulSets without pods. So every
# component must still run once it is past that wait; a cluster with one gone is restarted.
gone() {
  local f pid
  for f in "$KWOK_WORKDIR/clusters/kd-$1/pids"/*.pid; do
    pid=$(cat "$f")
    while [ "$(ps -o etimes= -p "$pid" 2>/dev/null | tr -d ' ')" ] && [ "$(ps -o etimes= -p "$pid" | tr -d ' ')" -lt 25 ]; do sleep 1; done
    kill -0 "$pid" 2>/dev/null || { basename "$f" .pid; return 0; }
  done
  return 1
}
for i in $(seq 1 "$n"); do
  for attempt in 1 2 3; do
    dead=$(gone "$i") || break
    echo "[testbed] kd-$i: $dead exited while starting; creating kd-$i anew ($attempt/3)"
    # Anew, not `kwokctl start cluster`: a kwok controller restarted that way watched nodes but no
    # longer moved pods past Pending.
    mkdir -p "$TESTBED_DIR/failed-starts"
    cp -r "$KWOK_WORKDIR/clusters/kd-$i/logs" "$TESTBED_DIR/failed-starts/kd-$i-$attempt" 2>/dev/null || true
    kwokctl delete cluster --name "kd-$i" --kubeconfig "$TESTBED_DIR/kubeconfigs/kd-$i" >/dev/null 2>&1 || true
    create "$i" || true
  done
  if dead=$(gone "$i"); then
    echo "up.sh: kd-$i: $dead keeps exiting; see $KWOK_WORKDIR/clusters/kd-$i/logs" >&2
    exit 1
  fi
done
kcs=$(ls "$TESTBED_DIR"/kubeconfigs/kd-* | tr '\n' ':')
KUBECONFIG="$kcs" kubectl config view --flatten > "$TESTBED_KUBECONFIG.tmp"
mv "$TESTBED_KUBECONFIG.tmp" "$TESTBED_KUBECONFIG"
KUBECONFIG="$TESTBED_KUBECONFIG" kubectl config use-context kwok-kd-1 >/dev/null
for i in $(seq 1 "$n"); do
  KUBECONFIG="$TESTBED_KUBECONFIG" kubectl --context "kwok-kd-$i" wait --for=condition=Ready node --all --timeout=120s >/dev/null
done
echo "[testbed] $n cluster(s) ready; export KUBECONFIG=$TESTBED_KUBECONFIG (contexts: $(KUBECONFIG="$TESTBED_KUBECONFIG" kubectl config get-contexts -o name | tr '\n' ' '))"
