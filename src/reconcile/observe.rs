//! Reads a cluster's world from the caches: its children, its app, the global settings.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::cluster::AppCatalog;
use crate::api::config::GLOBAL_CONFIG_NAME;
use crate::api::{KubeDirectorApp, KubeDirectorConfig};
use crate::model::catalog::{self, ResolvedApp};
use crate::model::desired::APP_CONTAINER;
use crate::model::labels;
use crate::model::members::{ContainerPhase, Observed, PodFacts};
use crate::model::rollout;
use crate::model::settings::Settings;
use crate::model::validate::StorageClasses;

use super::context::{Ctx, Stores};
use super::index::ClusterIndex;

/// A child as the cache has it: its spec digest and its controlling owner.
#[derive(Clone, Debug, Default)]
pub struct ChildState {
    pub spec_hash: Option<String>,
    pub owner_uid: Option<String>,
}

/// An existing StatefulSet: who controls it, and what `model::rollout` decides from.
#[derive(Clone, Debug, Default)]
pub struct StatefulSetState {
    pub owner_uid: Option<String>,
    /// Its PVCs outlive their pods (`Retain`, KubeDirector's StatefulSets): nothing but the cluster
    /// can own them.
    pub retains_claims: bool,
    pub has_annotations: bool,
    pub existing: rollout::Existing,
}

/// Children of one cluster by kind and name, for the apply step.
#[derive(Clone, Debug, Default)]
pub struct Children {
    pub statefulsets: BTreeMap<String, StatefulSetState>,
    /// PVCs of the cluster that nothing owns, with their resourceVersion: claims KubeDirector made
    /// while its PVC webhook was down, and claims its (Retain) StatefulSets make for new members.
    pub unowned_pvcs: BTreeMap<String, String>,
    pub services: BTreeMap<String, ChildState>,
}

/// Whether the cache holds child `id` (`StatefulSet/<name>` or `Service/<name>`) in `ns`: a lookup,
/// not a scan.
pub fn cached(ctx: &Ctx, ns: &str, id: &str) -> bool {
    use kube::runtime::reflector::ObjectRef;
    match id.split_once('/') {
        Some(("StatefulSet", name)) => ctx.stores.statefulsets.get(&ObjectRef::new(name).within(ns)).is_some(),
        Some(("Service", name)) => ctx.stores.services.get(&ObjectRef::new(name).within(ns)).is_some(),
        _ => true,
    }
}

pub fn child_state(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ChildState {
    ChildState {
        spec_hash: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(labels::SPEC_HASH))
            .cloned(),
        owner_uid: meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone()),
    }
}

fn belongs(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, ns: &str, cluster: &str) -> bool {
    meta.namespace.as_deref() == Some(ns)
        && meta
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::CLUSTER))
            .map(String::as_str)
            == Some(cluster)
}

pub fn pod_facts(pod: &Pod) -> PodFacts {
    let status = pod.status.as_ref();
    let condition = |t: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == t))
            .map(|c| c.status.as_str())
    };
    let app = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == APP_CONTAINER));
    PodFacts {
        running: status.and_then(|s| s.phase.as_deref()) == Some("Running"),
        ready: condition("Ready") == Some("True"),
        container_id: status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == APP_CONTAINER))
            .and_then(|c| c.container_id.clone())
            .filter(|id| !id.is_empty()),
        unschedulable: condition("PodScheduled") == Some("False"),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        app: app.map(|c| match c.state.as_ref() {
            Some(s) if s.running.is_some() => ContainerPhase::Running,
            Some(s) if s.waiting.is_some() => ContainerPhase::Waiting,
            Some(s) if s.terminated.is_some() => ContainerPhase::Terminated,
            _ => ContainerPhase::Unknown,
        }),
        ready_condition: condition("Ready").map(|s| s == "True"),
        init_running: status
            .and_then(|s| s.init_container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .is_some_and(|c| c.state.as_ref().is_none_or(|s| s.terminated.is_none())),
    }
}

/// The cached objects of `store` that `index` lists for (`ns`, `cluster`) and that still carry the
/// cluster's label (the store may be an event ahead of the index).
fn own<K>(store: &Store<K>, index: &ClusterIndex, ns: &str, cluster: &str) -> Vec<std::sync::Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    index
        .names(ns, cluster)
        .into_iter()
        .filter_map(|name: String| store.get(&ObjectRef::new(name.as_str()).within(ns)))
        .filter(|o| belongs(o.meta(), ns, cluster))
        .collect()
}

/// The cluster's children from the caches: a lookup of its own objects (`index`), never a scan.
pub fn observe(s: &Stores, ns: &str, cluster: &str) -> (Observed, Children) {
    let mut observed = Observed::default();
    let mut children = Children::default();
    let ix = &s.by_cluster;
    for pod in own(&s.pods, &ix.pods, ns, cluster) {
        observed.pods.insert(pod.name_any(), pod.facts.clone());
    }
    for svc in own(&s.services, &ix.services, ns, cluster) {
        observed.services.insert(svc.name_any());
        children.services.insert(svc.name_any(), child_state(&svc.metadata));
    }
    for pvc in own(&s.pvcs, &ix.pvcs, ns, cluster) {
        observed.pvcs.insert(pvc.name_any());
        let owned = pvc.metadata.owner_references.as_ref().is_some_and(|o| !o.is_empty());
        if !owned && pvc.metadata.deletion_timestamp.is_none() {
            let version = pvc.metadata.resource_version.clone().unwrap_or_default();
            children.unowned_pvcs.insert(pvc.name_any(), version);
        }
    }
    for sts in own(&s.statefulsets, &ix.statefulsets, ns, cluster) {
        children.statefulsets.insert(sts.name_any(), statefulset_state(&sts));
    }
    (observed, children)
}

/// What the apply step and `model::rollout` need of an existing StatefulSet.
pub fn statefulset_state(sts: &StatefulSet) -> StatefulSetState {
    let meta = &sts.metadata;
    let retention = sts
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    StatefulSetState {
        owner_uid: child_state(meta).owner_uid,
        retains_claims: retention.and_then(|r| r.when_deleted.as_deref()).unwrap_or("Retain") == "Retain",
        has_annotations: meta.annotations.is_some(),
        existing: rollout::Existing {
            replicas: sts.spec.as_ref().and_then(|s| s.replicas),
            role_inputs: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(labels::ROLE_INPUTS))
                .cloned(),
        },
    }
}

pub use crate::model::catalog::parse;

pub fn settings(ctx: &Ctx) -> Settings {
    let global = ctx.stores.configs.state().into_iter().find(|c| {
        c.metadata.name.as_deref() == Some(GLOBAL_CONFIG_NAME)
            && c.metadata.namespace.as_deref() == Some(&ctx.operator_namespace)
    });
    // An unreadable kd-global-config falls back to the defaults rather than stopping every cluster.
    let spec = global
        .and_then(|c| parse::<KubeDirectorConfig>(&c).ok())
        .map(|c| c.spec);
    Settings::from_config(spec.as_ref())
}

pub fn storage_classes(ctx: &Ctx) -> StorageClasses {
    let mut classes = StorageClasses::default();
    for sc in ctx.stores.storage_classes.state() {
        let is_default = sc
            .annotations()
            .get("storageclass.kubernetes.io/is-default-class")
            .map(String::as_str)
            == Some("true");
        if is_default {
            classes.cluster_default = Some(sc.name_any());
        }
        classes.names.push(sc.name_any());
    }
    classes.names.sort();
    classes
}

/// The app of a cluster: local catalog (the cluster's namespace), then the system catalog; parsed
/// once per version of the app (`apps`).
pub fn find_app(
    ctx: &Ctx,
    ns: &str,
    app: &str,
    requested: Option<AppCatalog>,
) -> Result<std::sync::Arc<ResolvedApp>, String> {
    let resource = ApiResource::erase::<KubeDirectorApp>(&());
    let apps = &ctx.stores.apps;
    let lookup = |catalog_ns: &str| apps.get(&ObjectRef::new_with(app, resource.clone()).within(catalog_ns));
    let (catalog, obj) = catalog::choose_app(lookup, &ctx.operator_namespace, ns, app, requested)?;
    ctx.apps.resolve(app, catalog, &obj)
}

/// `find_app` in any member cluster's app cache (connections read other members' clusters).
pub fn find_app_in(
    apps: &Store<DynamicObject>,
    operator_ns: &str,
    ns: &str,
    app: &str,
    requested: Option<AppCatalog>,
) -> Result<ResolvedApp, String> {
    let resource = ApiResource::erase::<KubeDirectorApp>(&());
    let lookup = |catalog_ns: &str| apps.get(&ObjectRef::new_with(app, resource.clone()).within(catalog_ns));
    catalog::find_app(lookup, operator_ns, ns, app, requested)
}

#[cfg(test)]
mod bench {
    //! `make bench`: the cost of observing one cluster of 5 members against caches holding 100 and
    //! 10,000 other members, with the child index and with the whole-cache scan it replaced (the
    //! baseline, in the same run). Printed as ratios; no wall-clock time is asserted.
    use super::*;
    use crate::reconcile::slim::CachedPod;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Service;
    use kube::core::PartialObjectMeta;
    use kube::runtime::{reflector, watcher};
    use serde_json::json;
    use std::time::Instant;

    const NS: &str = "bench";

    fn labelled(name: &str, cluster: &str) -> serde_json::Value {
        json!({"name": name, "namespace": NS, "resourceVersion": "1",
               "labels": {labels::CLUSTER: cluster, "kubedirector.hpe.com/role": "worker"},
               "annotations": {labels::SPEC_HASH: "0123456789abcdef"}})
    }

    fn pod(name: &str, cluster: &str) -> CachedPod {
        serde_json::from_value(json!({
            "metadata": labelled(name, cluster),
            "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "app", "image": "x", "imageID": "x", "ready": true, "restartCount": 0,
                    "containerID": format!("containerd://{name}"), "state": {"running": {}}}]}
        }))
        .expect("pod")
    }

    fn service(name: &str, cluster: &str) -> PartialObjectMeta<Service> {
        serde_json::from_value(json!({"metadata": labelled(name, cluster)})).expect("service")
    }

    struct Bed {
        stores: Stores,
        pods: reflector::store::Writer<CachedPod>,
        services: reflector::store::Writer<PartialObjectMeta<Service>>,
        statefulsets: reflector::store::Writer<StatefulSet>,
    }

    impl Bed {
        fn new() -> Bed {
            let (pods, pw) = reflector::store::<CachedPod>();
            let (services, sw) = reflector::store::<PartialObjectMeta<Service>>();
            let (statefulsets, tw) = reflector::store::<StatefulSet>();
            let dynamic = |ar: ApiResource| reflector::store::Writer::new(ar).as_reader();
            let stores = Stores {
                apps: dynamic(ApiResource::erase::<KubeDirectorApp>(&())),
                configs: dynamic(ApiResource::erase::<KubeDirectorConfig>(&())),
                statefulsets,
                services,
                pods,
                pvcs: reflector::store().0,
                storage_classes: reflector::store().0,
                configmaps: reflector::store().0,
                secrets: reflector::store().0,
                by_cluster: Default::default(),
            };
            Bed {
                stores,
                pods: pw,
                services: sw,
                statefulsets: tw,
            }
        }

        /// A cluster of `members` members: its pods, member Services, headless Service, StatefulSet.
        fn cluster(&mut self, name: &str, members: usize) {
            let ix = self.stores.by_cluster.clone();
            for j in 0..members {
                let e = watcher::Event::Apply(pod(&format!("kdss-{name}-{j}"), name));
                self.pods.apply_watcher_event(&e);
                ix.pods.apply(&e, labels::CLUSTER);
                let e = watcher::Event::Apply(service(&format!("s-kdss-{name}-{j}"), name));
                self.services.apply_watcher_event(&e);
                ix.services.apply(&e, labels::CLUSTER);
            }
            let e = watcher::Event::Apply(service(&format!("kdhs-{name}"), name));
            self.services.apply_watcher_event(&e);
            ix.services.apply(&e, labels::CLUSTER);
            let sts: StatefulSet = serde_json::from_value(json!({"metadata": labelled(&format!("kdss-{name}"), name),
                "spec": {"replicas": members, "serviceName": format!("kdhs-{name}"), "selector": {},
                         "template": {"spec": {"containers": []}}}}))
            .expect("statefulset");
            let e = watcher::Event::Apply(sts);
            self.statefulsets.apply_watcher_event(&e);
            ix.statefulsets.apply(&e, labels::CLUSTER);
        }
    }

    /// What `observe` did before the index: every cached pod, Service and StatefulSet looked at.
    fn observe_by_scan(s: &Stores, ns: &str, cluster: &str) -> usize {
        let mut n = 0;
        for pod in s.pods.state() {
            if belongs(&pod.metadata, ns, cluster) {
                n += usize::from(pod.facts.ready);
            }
        }
        for svc in s.services.state() {
            n += usize::from(belongs(&svc.metadata, ns, cluster));
        }
        for sts in s.statefulsets.state() {
            n += usize::from(belongs(&sts.metadata, ns, cluster));
        }
        n
    }

    fn per_call(rounds: u32, mut f: impl FnMut() -> usize) -> f64 {
        let start = Instant::now();
        let mut sink = 0;
        for _ in 0..rounds {
            sink += std::hint::black_box(f());
        }
        assert!(sink > 0, "the bench observed nothing");
        start.elapsed().as_secs_f64() / f64::from(rounds)
    }

    #[test]
    #[ignore = "benchmark: make bench"]
    fn observe_cost_does_not_grow_with_other_members() {
        let mut at = Vec::new();
        for others in [100usize, 10_000] {
            let mut bed = Bed::new();
            for c in 0..others / 5 {
                bed.cluster(&format!("other-{c:05}"), 5);
            }
            bed.cluster("target", 5);
            let (observed, children) = observe(&bed.stores, NS, "target");
            assert_eq!((observed.pods.len(), observed.services.len()), (5, 6));
            assert_eq!(children.statefulsets.len(), 1);
            let rounds = if others > 1000 { 200 } else { 2000 };
            let indexed = per_call(20_000, || {
                let (o, _) = observe(&bed.stores, NS, "target");
                o.pods.len()
            });
            let scanned = per_call(rounds, || observe_by_scan(&bed.stores, NS, "target"));
            println!(
                "observe, one cluster of 5 members, {others} other members cached: indexed {:.1} µs, whole-cache scan {:.1} µs",
                indexed * 1e6,
                scanned * 1e6
            );
            at.push((indexed, scanned));
        }
        println!(
            "ratio 10,000 / 100 other members: indexed {:.2}, whole-cache scan {:.1}",
            at[1].0 / at[0].0,
            at[1].1 / at[0].1
        );
    }
}
