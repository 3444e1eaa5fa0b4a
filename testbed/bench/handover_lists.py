#!/usr/bin/env python3
"""What a replica's child lists cost the API server at a handover, by how many shards they select:
the set selector lists every held shard's buckets again, one watch per shard would list only the
acquired ones (docs/sharding.md, "Selection on the server"). N pods of N/5 clusters (labelled as this
operator labels them: kdcluster, shard-bucket; never scheduled) on test-bed cluster kd-1, then lists
of the buckets of k of 32 shards from the watch cache (resourceVersion=0): for each k in KS in
rotation, BATCH lists back to back, REPS rounds; medians over the rounds of wall time and API server
CPU per list (CPU read from /proc, 10 ms ticks: hence batches), and the bytes sent.

  source testbed/env.sh && testbed/up.sh 1
  kubectl --kubeconfig "$TESTBED_KUBECONFIG" proxy --port 8199 &
  PIDS="$KWOK_WORKDIR/clusters/kd-1/pids" KUBECONFIG="$TESTBED_KUBECONFIG" python3 testbed/bench/handover_lists.py
"""
import concurrent.futures as cf
import json
import os
import time
import urllib.parse
import urllib.request

PIDS = os.environ['PIDS']
N = int(os.environ.get('N', '5000'))
REPS = int(os.environ.get('REPS', '5'))
BATCH = int(os.environ.get('BATCH', '10'))
KS = [int(k) for k in os.environ.get('KS', '1,5,11,16,32').split(',')]
SHARDS, BUCKETS, NS = 32, 4096, 'handover-lists'
P = 'http://127.0.0.1:8199'
CLUSTER, BUCKET = 'kubedirector.hpe.com/kdcluster', 'kubedirector.hpe.com/shard-bucket'


def fnv(b):
    h = 0xcbf29ce484222325
    for c in b:
        h = ((h ^ c) * 0x100000001b3) % 2**64
    return h


def shard_of_bucket(context, b):
    return (b + fnv(context.encode()) % SHARDS) % SHARDS


def apiserver_cpu():
    pid = open(f"{PIDS}/kube-apiserver.pid").read().strip()
    f = open(f"/proc/{pid}/stat").read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')


def req(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(P + path, data=data, method=method, headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(r) as x:
        return x.read()


def pod(i):
    cluster = f"c{i // 5:04d}"
    labels = {CLUSTER: cluster, BUCKET: str(fnv(f"{NS}/{cluster}".encode()) % BUCKETS),
              'kubedirector.hpe.com/role': 'worker', 'statefulset.kubernetes.io/pod-name': f"p{i}"}
    return {'apiVersion': 'v1', 'kind': 'Pod', 'metadata': {'name': f"p{i}", 'labels': labels},
            'spec': {'schedulerName': 'none', 'containers': [{
                'name': 'app', 'image': 'busybox', 'command': ['sh', '-c', 'sleep 1d'],
                'resources': {'requests': {'cpu': '10m', 'memory': '16Mi'}},
                'ports': [{'containerPort': 22, 'name': 'ssh'}, {'containerPort': 8080, 'name': 'http'}],
                'env': [{'name': f"E{j}", 'value': 'x' * 40} for j in range(8)]}]}}


def selector(k):
    held = set(range(k))
    inside = [b for b in range(BUCKETS) if shard_of_bucket('kwok-kd-1', b) in held]
    if len(inside) == BUCKETS:
        return f"{CLUSTER},{BUCKET}"
    return f"{CLUSTER},{BUCKET} in ({','.join(map(str, inside))})"


def main():
    req('POST', '/api/v1/namespaces', {'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': NS}})
    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda i: req('POST', f"/api/v1/namespaces/{NS}/pods", pod(i)), range(N)))
    time.sleep(5)
    sels = {k: selector(k) for k in KS}
    sels['unlabelled'] = f"{CLUSTER},!{BUCKET}"
    res = {k: [] for k in sels}
    for _ in range(REPS):
        for k, sel in sels.items():
            q = urllib.parse.urlencode({'labelSelector': sel, 'resourceVersion': '0'})
            c0, t0 = apiserver_cpu(), time.time()
            for _ in range(BATCH):
                body = req('GET', f"/api/v1/namespaces/{NS}/pods?{q}")
            t1, c1 = time.time(), apiserver_cpu()
            res[k].append(((t1 - t0) / BATCH, (c1 - c0) / BATCH, len(body), len(json.loads(body)['items'])))
    med = lambda xs: sorted(xs)[len(xs) // 2]
    print(f"{N} pods of {N // 5} clusters; {REPS} rounds of {BATCH} lists; medians per list")
    print('shards selected | pods | bytes | wall ms | API server CPU ms')
    for k, rows in res.items():
        print(f"{k} | {rows[0][3]} | {rows[0][2]} | {med([r[0] for r in rows]) * 1000:.1f} | "
              f"{med([r[1] for r in rows]) * 1000:.0f}", flush=True)
    req('DELETE', f"/api/v1/namespaces/{NS}")


main()
