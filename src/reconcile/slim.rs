//! What the caches keep of each watched object: only the fields a reconcile reads.
//!
//! A pod as the API server sends it is about 10 KB of JSON (a KubeDirector pod of
//! `../shared/kubedirector/takeover/`), half of it managedFields, and a reconcile reads a dozen
//! fields of it (`observe::pod_facts`). So pods are cached as [`CachedPod`] (metadata and those
//! facts), Services and claims are watched metadata-only, and every other object is trimmed as it
//! comes off the watch, before the reflector stores it (`WatchStreamExt::modify`): a cache holds
//! one slim copy per object. `make bench` (`tests/cache_memory.rs`) measures the bytes per member.
//!
//! The rule for each kind is the list of fields `observe` reads; the tests below check that the
//! facts observed from a slim object equal those from the full one, on objects KubeDirector wrote.
//! A field added to `observe` must be kept here too, or it reads as absent.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;

use crate::model::labels;
use crate::model::members::PodFacts;
use crate::reconcile::observe::pod_facts;

/// Trims an object in place to what a reconcile reads of its kind.
pub trait Slim {
    fn slim(&mut self);
}

/// managedFields are never read (server-side apply computes ownership on the server), and they are
/// the largest part of most objects' metadata.
fn meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
}

/// A child's metadata, down to what `observe` reads: name, namespace, uid, resourceVersion,
/// deletionTimestamp, the cluster label (the index and the triggers), the annotations in
/// `annotations`, and the controlling owner (`observe::child_state`), or every owner with
/// `all_owners` (a PVC is adopted only if it has none).
fn child_meta(m: &mut ObjectMeta, annotations: &[&str], all_owners: bool) {
    let keep = |map: Option<std::collections::BTreeMap<String, String>>, keys: &[&str]| {
        let kept: std::collections::BTreeMap<_, _> = map
            .into_iter()
            .flatten()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .collect();
        (!kept.is_empty()).then_some(kept)
    };
    *m = ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        uid: m.uid.take(),
        resource_version: m.resource_version.take(),
        deletion_timestamp: m.deletion_timestamp.take(),
        labels: keep(m.labels.take(), &[labels::CLUSTER]),
        annotations: keep(m.annotations.take(), annotations),
        owner_references: m.owner_references.take().map(|owners| {
            owners
                .into_iter()
                .filter(|o| all_owners || o.controller == Some(true))
                .collect()
        }),
        ..Default::default()
    };
}

/// A pod as the caches keep it: its child metadata and the facts the state machine reads of it
/// (`observe::pod_facts`), computed once as the watch event is parsed. A k8s-openapi `Pod` is 2.4 KB
/// before any of its strings, even with the spec and most of the status dropped; this is a tenth
/// of that.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedPod {
    pub metadata: ObjectMeta,
    pub facts: PodFacts,
}

/// The projection; the watch parses pods without their spec and managedFields (`wire`) and
/// projects them here.
impl From<Pod> for CachedPod {
    fn from(mut pod: Pod) -> CachedPod {
        let facts = pod_facts(&pod);
        child_meta(&mut pod.metadata, &[], false);
        // Pods are found by the cluster label; their owner (the StatefulSet) is never read.
        pod.metadata.owner_references = None;
        CachedPod {
            metadata: pod.metadata,
            facts,
        }
    }
}

/// Already projected when parsed.
impl Slim for CachedPod {
    fn slim(&mut self) {}
}

/// Services and claims are watched metadata-only (`Api<PartialObjectMeta<_>>`): the API server
/// sends no spec or status, and only metadata is read (`observe::child_state`).
impl Slim for PartialObjectMeta<Service> {
    /// The spec digest annotation and the controlling owner.
    fn slim(&mut self) {
        child_meta(&mut self.metadata, &[labels::SPEC_HASH], false);
        self.types = None;
    }
}

impl Slim for StatefulSet {
    /// Kept: metadata (the digest and role-input annotations, the owner), `replicas` and the claim
    /// retention policy. Dropped: the pod template and claim templates (most of the object; the
    /// rollout decision reads the role-input annotation instead) and the status.
    fn slim(&mut self) {
        meta(&mut self.metadata);
        self.spec = self.spec.take().map(|s| StatefulSetSpec {
            replicas: s.replicas,
            persistent_volume_claim_retention_policy: s.persistent_volume_claim_retention_policy,
            ..Default::default()
        });
        self.status = None;
    }
}

impl Slim for PartialObjectMeta<PersistentVolumeClaim> {
    /// Whether it has owners (a claim is adopted only if it has none), deletionTimestamp,
    /// resourceVersion (the adoption is conditional on it).
    fn slim(&mut self) {
        child_meta(&mut self.metadata, &[], true);
        self.types = None;
    }
}

/// Kinds kept whole but for managedFields.
macro_rules! without_managed_fields {
    ($($kind:ty),+) => {
        $(impl Slim for $kind {
            fn slim(&mut self) {
                meta(&mut self.metadata);
            }
        })+
    };
}

// KubeDirector's own objects (clusters, apps, configs) are parsed on every reconcile; connections
// hand their ConfigMaps' and Secrets' data to the guest; StorageClasses are small.
without_managed_fields!(DynamicObject, StorageClass, ConfigMap, Secret);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::reconcile::observe;
    use serde_json::Value;

    /// The items of a takeover capture: objects KubeDirector wrote on the test bed, as the API
    /// server returned them (managedFields included).
    pub(crate) fn captured(name: &str, kind: &str) -> Vec<Value> {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../shared/kubedirector/takeover/{name}.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let list: Value = serde_json::from_str(&text).expect("capture is JSON");
        list["items"]
            .as_array()
            .expect("a List")
            .iter()
            .filter(|o| o["kind"] == kind)
            .cloned()
            .collect()
    }

    fn both<K: serde::de::DeserializeOwned + Slim + Clone>(v: &Value) -> (K, K) {
        let full: K = serde_json::from_value(v.clone()).expect("the capture parses");
        let mut slim = full.clone();
        slim.slim();
        (full, slim)
    }

    pub(crate) const CAPTURES: [&str; 7] = [
        "connected",
        "mid-expand",
        "shrunk",
        "ubuntu18.04",
        "uid-plain",
        "uid-storage",
        "with-package",
    ];

    #[test]
    fn a_cached_pod_gives_the_facts_of_the_full_one_and_is_a_fraction_of_its_size() {
        let mut seen = 0;
        for name in CAPTURES {
            for v in captured(name, "Pod") {
                let full: Pod = serde_json::from_value(v.clone()).expect("the capture parses");
                // The watch's path: the event's JSON parsed straight into the projection.
                let cached: CachedPod = serde_json::from_value(v.clone()).expect("the capture parses as a CachedPod");
                assert_eq!(cached.facts, pod_facts(&full), "{name}: {:?}", full.metadata.name);
                let label = |m: &ObjectMeta| m.labels.as_ref().and_then(|l| l.get(labels::CLUSTER)).cloned();
                assert!(label(&full.metadata).is_some());
                assert_eq!(
                    label(&cached.metadata),
                    label(&full.metadata),
                    "{name}: the index reads the cluster label"
                );
                assert_eq!(cached.metadata.name, full.metadata.name);
                assert_eq!(cached.metadata.namespace, full.metadata.namespace);
                assert_eq!(cached.metadata.resource_version, full.metadata.resource_version);
                let full_meta = serde_json::to_vec(&full.metadata).expect("serializes").len();
                let kept = serde_json::to_vec(&cached.metadata).expect("serializes").len();
                assert!(
                    kept * 3 < full_meta,
                    "{name}: cached metadata {kept} B against {full_meta} B"
                );
                seen += 1;
            }
        }
        assert!(seen >= 7, "pods in the captures: {seen}");
    }

    #[test]
    fn slim_children_give_the_state_of_the_full_ones() {
        let mut seen = 0;
        for name in CAPTURES {
            for v in captured(name, "StatefulSet") {
                let (full, slim): (StatefulSet, StatefulSet) = both(&v);
                assert_eq!(
                    format!("{:?}", observe::statefulset_state(&slim)),
                    format!("{:?}", observe::statefulset_state(&full)),
                    "{name}"
                );
                seen += 1;
            }
            for v in captured(name, "Service") {
                let full: Service = serde_json::from_value(v.clone()).expect("the capture parses");
                let (_, slim): (_, PartialObjectMeta<Service>) = both(&v);
                let state = |m: &ObjectMeta| format!("{:?}", observe::child_state(m));
                assert_eq!(state(&slim.metadata), state(&full.metadata), "{name}");
                assert!(full.metadata.managed_fields.is_some() && slim.metadata.managed_fields.is_none());
                seen += 1;
            }
            for v in captured(name, "PersistentVolumeClaim") {
                let full: PersistentVolumeClaim = serde_json::from_value(v.clone()).expect("the capture parses");
                let (_, slim): (_, PartialObjectMeta<PersistentVolumeClaim>) = both(&v);
                assert_eq!(slim.metadata.owner_references, full.metadata.owner_references);
                assert_eq!(slim.metadata.resource_version, full.metadata.resource_version);
                assert_eq!(slim.metadata.deletion_timestamp, full.metadata.deletion_timestamp);
                seen += 1;
            }
        }
        assert!(seen >= 20, "children in the captures: {seen}");
    }
}
