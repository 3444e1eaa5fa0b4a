#!/bin/sh
# What idle replicas cost: CPU per replica (ms per second) of R replicas of BIN sharing 32 shards on
# test-bed cluster kd-1 with nothing to reconcile, over WINDOW seconds after SETTLE seconds of start
# (docs/loadtest.md, "Idle replicas"). CPU from /proc/<pid>/stat (utime + stime, in clock ticks).
#
#   . testbed/env.sh && testbed/up.sh 1
#   BIN=target/release/kubedirector R=4 testbed/bench/idle_replicas.sh
#   testbed/down.sh
set -eu
: "${BIN:=target/release/kubedirector}" "${R:=4}" "${SETTLE:=30}" "${WINDOW:=60}"
: "${TESTBED_KUBECONFIG:?source testbed/env.sh and start the test bed first}"
k() { kubectl --kubeconfig "$TESTBED_KUBECONFIG" --context kwok-kd-1 "$@"; }
k apply -f crds/ >/dev/null
k create namespace kd-idle-bench >/dev/null 2>&1 || true
k create namespace kd-idle-system >/dev/null 2>&1 || true
logs=$(mktemp -d)
pids=""
i=1
while [ "$i" -le "$R" ]; do
  "$BIN" run --kubeconfig "$TESTBED_KUBECONFIG" --context kwok-kd-1 --home-context kwok-kd-1 \
    --namespace kd-idle-system --watch-namespace kd-idle-bench --shards 32 --replica-id "idle-$i" \
    --lease-duration-ms 10000 --metrics-addr "127.0.0.1:0" >"$logs/r$i.log" 2>&1 &
  pids="$pids $!"
  i=$((i + 1))
done
trap 'kill $pids 2>/dev/null || true' EXIT
ticks() { for p in $pids; do awk '{print $14 + $15}' "/proc/$p/stat"; done; }
sleep "$SETTLE"
before=$(ticks | tr '\n' ' ')
sleep "$WINDOW"
after=$(ticks | tr '\n' ' ')
hz=$(getconf CLK_TCK)
echo "$before $after" | awk -v n="$R" -v hz="$hz" -v w="$WINDOW" -v logs="$logs" '{
  total = 0
  for (i = 1; i <= n; i++) { d = $(n + i) - $i; total += d; printf "replica %d: %.2f ms/s\n", i, d * 1000 / hz / w }
  printf "mean: %.2f ms/s per replica (%d replicas, logs in %s)\n", total * 1000 / hz / w / n, n, logs
}'
