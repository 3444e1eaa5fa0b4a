//! Reads a cluster's world from the caches: its children, its app, the global settings.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::cluster::AppCatalog;
use crate::api::config::GLOBAL_CONFIG_NAME;
use crate::api::{KubeDirectorApp, KubeDirectorConfig};
use crate::model::catalog::{self, ResolvedApp};
use crate::model::labels;
use crate::model::members::{ContainerPhase, Observed, PodFacts};
use crate::model::rollout;
use crate::model::settings::Settings;
use crate::model::validate::StorageClasses;

use super::context::Ctx;
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

fn child_state(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ChildState {
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
        .and_then(|cs| cs.iter().find(|c| c.name == "app"));
    PodFacts {
        running: status.and_then(|s| s.phase.as_deref()) == Some("Running"),
        ready: condition("Ready") == Some("True"),
        container_id: status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == "app"))
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
pub fn observe(ctx: &Ctx, ns: &str, cluster: &str) -> (Observed, Children) {
    let mut observed = Observed::default();
    let mut children = Children::default();
    let (s, ix) = (&ctx.stores, &ctx.stores.by_cluster);
    for pod in own(&s.pods, &ix.pods, ns, cluster) {
        observed.pods.insert(pod.name_any(), pod_facts(&pod));
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
        let meta = &sts.metadata;
        let retention = sts
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
        let state = StatefulSetState {
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
        };
        children.statefulsets.insert(sts.name_any(), state);
    }
    (observed, children)
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

/// The app of a cluster: local catalog (the cluster's namespace), then the system catalog.
pub fn find_app(ctx: &Ctx, ns: &str, app: &str, requested: Option<AppCatalog>) -> Result<ResolvedApp, String> {
    find_app_in(&ctx.stores.apps, &ctx.operator_namespace, ns, app, requested)
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
