#!/usr/bin/env python3
"""API server and etcd CPU for N Services and N StatefulSets (replicas 0) created by POST against
server-side apply, on test-bed cluster kd-1: C requests in flight (default 8), alternating, 3 rounds,
medians. Reads the components' CPU from /proc through kwokctl's pid files, and each request's latency
as this client sees it (p50, p99 of the round).

  source testbed/env.sh && testbed/up.sh 1
  kubectl --kubeconfig "$TESTBED_KUBECONFIG" proxy --port 8199 &
  PIDS="$KWOK_WORKDIR/clusters/kd-1/pids" KUBECONFIG="$TESTBED_KUBECONFIG" python3 testbed/bench/ssa_vs_post.py
"""
import json,os,sys,time,urllib.request,concurrent.futures as cf,subprocess
pids=os.environ['PIDS']; N=int(os.environ.get('N','1000')); C=int(os.environ.get('C','8')); P='http://127.0.0.1:8199'
def cpu():
    t=os.sysconf('SC_CLK_TCK'); out=[]
    for c in ['kube-apiserver','etcd']:
        pid=open(f"{pids}/{c}.pid").read().strip()
        f=open(f"/proc/{pid}/stat").read().rsplit(')',1)[1].split()
        out.append((int(f[11])+int(f[12]))/t)
    return out
def req(method,path,body,ctype):
    r=urllib.request.Request(P+path,data=json.dumps(body).encode(),method=method,headers={'Content-Type':ctype})
    with urllib.request.urlopen(r) as x: x.read()
def obj(kind,i):
    lab={"kubedirector.hpe.com/kdcluster":f"c{i//5}","kubedirector.hpe.com/role":"worker","app":"x"}
    if kind=="svc":
        return "/api/v1/namespaces/%s/services", {"apiVersion":"v1","kind":"Service","metadata":{"name":f"s{i}","labels":lab},
          "spec":{"selector":{"statefulset.kubernetes.io/pod-name":f"p{i}"},"ports":[{"name":"ssh","port":22},{"name":"http","port":8080}],"publishNotReadyAddresses":True}}
    return "/apis/apps/v1/namespaces/%s/statefulsets", {"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{"name":f"t{i}","labels":lab},
          "spec":{"replicas":0,"serviceName":f"t{i}","podManagementPolicy":"Parallel","selector":{"matchLabels":lab},
          "template":{"metadata":{"labels":lab},"spec":{"containers":[{"name":"app","image":"busybox","command":["sh","-c","sleep 1d"],
            "resources":{"requests":{"cpu":"10m","memory":"16Mi"}},"ports":[{"containerPort":22,"name":"ssh"}],
            "volumeMounts":[{"name":"cm","mountPath":"/etc/x"}]}],"volumes":[{"name":"cm","emptyDir":{}}]}}}}
def one(kind,how,ns,i):
    path,o=obj(kind,i); path=path%ns; t=time.monotonic()
    if how=='post': req('POST',path+'?fieldManager=kubedirector',o,'application/json')
    else: req('PATCH',path+'/'+o['metadata']['name']+'?fieldManager=kubedirector&force=true',o,'application/apply-patch+yaml')
    return time.monotonic()-t
def pct(xs,q): xs=sorted(xs); return xs[min(len(xs)-1,int(q*len(xs)))]
def ns_gone(ns):
    subprocess.run(['kubectl','delete','ns',ns,'--wait=true'],stdout=subprocess.DEVNULL,check=True)
k=0
for kind in os.environ.get('KINDS','svc,sts').split(','):
    res={'post':[], 'apply':[]}
    for rep in range(3):
        for how in ['post','apply']:
            k+=1; ns=f"ssa-{k}"
            req('POST','/api/v1/namespaces',{"apiVersion":"v1","kind":"Namespace","metadata":{"name":ns}},'application/json')
            time.sleep(3); b=cpu(); s=time.time()
            with cf.ThreadPoolExecutor(C) as ex: lat=list(ex.map(lambda i: one(kind,how,ns,i), range(N)))
            time.sleep(2)  # controllers' follow-up (endpoints etc.) within the window for both
            e=time.time(); a=cpu()
            res[how].append((a[0]-b[0],a[1]-b[1],pct(lat,0.5),pct(lat,0.99)))
            print(kind,how,'wall %.1f apiserver %.2f etcd %.2f latency p50 %.3f p99 %.3f'%(e-s-2,a[0]-b[0],a[1]-b[1],pct(lat,0.5),pct(lat,0.99)),flush=True)
            ns_gone(ns); time.sleep(3)
    m=lambda h,j: sorted(x[j] for x in res[h])[1]
    print(kind,'MEDIAN apply/post apiserver %.2f etcd %.2f latency p50 %.2f p99 %.2f'%tuple(m('apply',j)/m('post',j) for j in range(4)),flush=True)
