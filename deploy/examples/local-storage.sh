#!/usr/bin/env bash
# The test bed has no volume provisioner: this creates StorageClass kd-local (no provisioner, bound at
# once) and N pre-made PersistentVolumes of 10Gi for it, so PVCs bind for real (by the PV controller).
# Usage: local-storage.sh [N] (default 20); uses the current kubectl context.
set -euo pipefail
n="${1:-20}"
{
  cat <<'YAML'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: kd-local}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
YAML
  for i in $(seq 1 "$n"); do
    cat <<YAML
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: kd-local-$i, labels: {kd-test: local}}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: kd-local
  hostPath: {path: /tmp/kd-local-$i}
YAML
  done
} | kubectl apply -f - >/dev/null
echo "[storage] StorageClass kd-local with $n PersistentVolumes"
