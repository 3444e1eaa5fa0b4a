//! `make bench`: how many bytes the caches hold per member, with the objects as the API server sends
//! them (before) and as the operator keeps them (`reconcile::slim`, after), in the same run.
//!
//! The objects are those KubeDirector wrote on the test bed (`../shared/kubedirector/takeover/
//! uid-storage.json`: a StatefulSet, its headless Service, and per member a pod, a Service and a
//! PVC, with managedFields as the API server returns them), renamed into 2,000 clusters of 5
//! members. They go through the same path as a watch event: JSON → typed object → (slim) →
//! reflector store + the (namespace, cluster) index. The allocator counts the bytes still held
//! after every transient copy is freed. A member's figure is its pod, Service and PVC plus a fifth
//! of its cluster's StatefulSet, headless Service and KubeDirectorCluster.

use std::alloc::System;
use std::path::PathBuf;

use cap::Cap;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use kubedirector::api::KubeDirectorCluster;
use kubedirector::model::labels;
use kubedirector::reconcile::index::ClusterIndex;
use kubedirector::reconcile::slim::{CachedPod, Slim};
use serde_json::Value;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

const CLUSTERS: usize = 2_000;
const MEMBERS: usize = 5;

struct Templates {
    sts: Value,
    headless: Value,
    service: Value,
    pvc: Value,
    pod: Value,
    cluster: Value,
}

fn templates() -> Templates {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/kubedirector/takeover/uid-storage.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let list: Value = serde_json::from_str(&text).expect("the capture is JSON");
    let items = list["items"].as_array().expect("a List");
    let first = |pred: &dyn Fn(&Value) -> bool| items.iter().find(|o| pred(o)).cloned().expect("in the capture");
    let named = |kind: &'static str, prefix: &'static str| {
        first(&move |o: &Value| {
            o["kind"] == kind && o["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(prefix))
        })
    };
    Templates {
        sts: named("StatefulSet", ""),
        headless: named("Service", "kdhs-"),
        service: named("Service", "s-"),
        pvc: named("PersistentVolumeClaim", ""),
        pod: named("Pod", ""),
        cluster: named("KubeDirectorCluster", ""),
    }
}

/// `template` as the object `name` of cluster `cluster` (a distinct name, uid and cluster label).
fn renamed(template: &Value, name: &str, cluster: &str) -> String {
    let mut v = template.clone();
    v["metadata"]["name"] = Value::from(name);
    v["metadata"]["uid"] = Value::from(format!("uid-{name}"));
    if v["metadata"]["labels"].is_object() {
        v["metadata"]["labels"][labels::CLUSTER] = Value::from(cluster);
    }
    serde_json::to_string(&v).expect("serialises")
}

/// One cached kind: its store, its index, and how a watch event's JSON becomes the cached object.
struct Kind<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    index: ClusterIndex,
    prepare: fn(&str) -> K,
    /// Bytes still held after each add (the object, its store entry and its index entry).
    held: usize,
}

/// The object as the API server sent it.
fn parsed<K: serde::de::DeserializeOwned>(json: &str) -> K {
    serde_json::from_str(json).expect("parses")
}

/// The object as the operator's watch keeps it: parsed into the cached type, then trimmed.
fn slimmed<K: serde::de::DeserializeOwned + Slim>(json: &str) -> K {
    let mut obj: K = parsed(json);
    obj.slim();
    obj
}

impl<K> Kind<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    fn new(prepare: fn(&str) -> K) -> Self {
        Kind {
            writer: reflector::store::<K>().1,
            index: ClusterIndex::default(),
            prepare,
            held: 0,
        }
    }

    fn add(&mut self, json: &str) {
        let before = ALLOCATOR.allocated();
        let event = Event::Apply((self.prepare)(json));
        self.writer.apply_watcher_event(&event);
        self.index.apply(&event, labels::CLUSTER);
        drop(event);
        self.held += ALLOCATOR.allocated().saturating_sub(before);
    }
}

/// The caches of one member cluster: pods as `P`, Services as `S`, claims as `C`.
struct Caches<P, S, C>
where
    P: kube::Resource<DynamicType = ()> + Clone + 'static,
    S: kube::Resource<DynamicType = ()> + Clone + 'static,
    C: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    sts: Kind<StatefulSet>,
    services: Kind<S>,
    pvcs: Kind<C>,
    pods: Kind<P>,
    cluster: fn(&str) -> DynamicObject,
}

/// The objects as sent: what a plain `watcher(Api<Pod>)` reflector holds.
fn full_caches() -> Caches<Pod, Service, PersistentVolumeClaim> {
    Caches {
        sts: Kind::new(parsed),
        services: Kind::new(parsed),
        pvcs: Kind::new(parsed),
        pods: Kind::new(parsed),
        cluster: parsed,
    }
}

/// The operator's caches (`member::cache`): projected pods, metadata-only Services and claims
/// (the bench parses the full JSON into them; the API server would send only the metadata),
/// trimmed StatefulSets and clusters.
fn slim_caches() -> Caches<CachedPod, PartialObjectMeta<Service>, PartialObjectMeta<PersistentVolumeClaim>> {
    Caches {
        sts: Kind::new(slimmed),
        services: Kind::new(slimmed),
        pvcs: Kind::new(slimmed),
        pods: Kind::new(parsed),
        cluster: slimmed,
    }
}

/// Bytes held per member: in all, and by kind (pods, Services, PVCs, StatefulSets, clusters).
struct Held {
    total: f64,
    kinds: [(&'static str, f64); 5],
}

/// Fills caches with `CLUSTERS` × `MEMBERS` members and returns the bytes they hold per member.
fn bytes_per_member<P, S, C>(t: &Templates, make: fn() -> Caches<P, S, C>) -> Held
where
    P: kube::Resource<DynamicType = ()> + Clone + 'static,
    S: kube::Resource<DynamicType = ()> + Clone + 'static,
    C: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let before = ALLOCATOR.allocated();
    let mut c = make();
    let mut clusters = Writer::new(ApiResource::erase::<KubeDirectorCluster>(&()));
    let mut cluster_bytes = 0;
    for n in 0..CLUSTERS {
        let cluster = format!("c{n}");
        let sts = format!("kdss-{n}");
        c.sts.add(&renamed(&t.sts, &sts, &cluster));
        c.services.add(&renamed(&t.headless, &format!("kdhs-{n}"), &cluster));
        for m in 0..MEMBERS {
            c.pods.add(&renamed(&t.pod, &format!("{sts}-{m}"), &cluster));
            c.services.add(&renamed(&t.service, &format!("s-{sts}-{m}"), &cluster));
            c.pvcs.add(&renamed(&t.pvc, &format!("p-{sts}-{m}"), &cluster));
        }
        let json = renamed(&t.cluster, &cluster, &cluster);
        let before = ALLOCATOR.allocated();
        clusters.apply_watcher_event(&Event::Apply((c.cluster)(&json)));
        cluster_bytes += ALLOCATOR.allocated().saturating_sub(before);
    }
    let held = ALLOCATOR.allocated().saturating_sub(before);
    let members = CLUSTERS * MEMBERS;
    assert_eq!(c.pods.writer.as_reader().state().len(), members);
    assert_eq!(c.pods.index.names("kd-take", "c7").len(), MEMBERS, "the index is fed");
    assert_eq!(
        c.services.index.names("kd-take", "c7").len(),
        MEMBERS + 1,
        "the index is fed"
    );
    let per = |b: usize| b as f64 / members as f64;
    let kinds = [
        ("Pod", per(c.pods.held)),
        ("Service", per(c.services.held)),
        ("PersistentVolumeClaim", per(c.pvcs.held)),
        ("StatefulSet", per(c.sts.held)),
        ("KubeDirectorCluster", per(cluster_bytes)),
    ];
    drop(c);
    drop(clusters);
    Held {
        total: per(held),
        kinds,
    }
}

#[test]
#[ignore = "benchmark: make bench"]
fn cache_bytes_per_member() {
    let t = templates();
    // Warm-up: the first fill also allocates lazily initialised statics; measure the second.
    bytes_per_member(&t, slim_caches);
    let full = bytes_per_member(&t, full_caches);
    let slim = bytes_per_member(&t, slim_caches);
    println!("cache bytes per member ({CLUSTERS} clusters x {MEMBERS} members, objects KubeDirector wrote):");
    println!("  {:<24} {:>12} {:>12}", "", "as sent", "slim");
    for ((kind, f), (_, s)) in full.kinds.iter().zip(&slim.kinds) {
        println!("  {kind:<24} {f:>10.0} B {s:>10.0} B");
    }
    println!(
        "  {:<24} {:>10.0} B {:>10.0} B",
        "all (with the stores)", full.total, slim.total
    );
    println!(
        "  slim: {:.1} KiB per member, {:.2} of the objects as sent; goal <= 10 KiB",
        slim.total / 1024.0,
        slim.total / full.total
    );
    // Whatever the machine, trimming must keep less than the full objects.
    assert!(
        slim.total < full.total,
        "slim {} B >= full {} B",
        slim.total,
        full.total
    );
}
