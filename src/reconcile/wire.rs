//! How the busiest child watches are parsed: straight into what the caches keep, so that the parts
//! nothing reads are skipped by the JSON parser instead of being built and then dropped.
//!
//! Why: every replica parses every child event of its members, also those of shards it does not
//! hold (docs/sharding.md, "Caches divided by shard"), and parsing a whole `Pod` or `StatefulSet`
//! builds its pod spec and its managedFields (a `serde_json::Value` tree per entry), object by
//! object, only for `slim` to drop them. A perf profile of a burst had a quarter of a replica's
//! samples in the allocator. `make bench` (`tests/decode_cost.rs`) counts the allocations per
//! event both ways.
//!
//! The result is the same object `slim` makes of the whole one; the tests below check that on every
//! pod and StatefulSet KubeDirector wrote on the test bed.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::runtime::watcher;
use serde::{Deserialize, Deserializer};

use super::slim::CachedPod;

/// Every field of `ObjectMeta` but managedFields, which is never read (and is the largest part of
/// most objects' metadata).
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Meta {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

impl From<Meta> for ObjectMeta {
    fn from(m: Meta) -> ObjectMeta {
        ObjectMeta {
            annotations: m.annotations,
            creation_timestamp: m.creation_timestamp,
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            deletion_timestamp: m.deletion_timestamp,
            finalizers: m.finalizers,
            generate_name: m.generate_name,
            generation: m.generation,
            labels: m.labels,
            managed_fields: None,
            name: m.name,
            namespace: m.namespace,
            owner_references: m.owner_references,
            resource_version: m.resource_version,
            self_link: m.self_link,
            uid: m.uid,
        }
    }
}

/// A pod as the watch sends it, but for its spec (nothing the caches keep is read from it).
#[derive(Default, Deserialize)]
#[serde(default)]
struct PodWire {
    metadata: Meta,
    status: Option<PodStatus>,
}

/// Parsed without the pod's spec and managedFields, then projected as a whole pod would be.
impl<'de> Deserialize<'de> for CachedPod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CachedPod, D::Error> {
        let wire = PodWire::deserialize(d)?;
        Ok(CachedPod::from(Pod {
            metadata: wire.metadata.into(),
            spec: None,
            status: wire.status,
        }))
    }
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct StatefulSetSpecWire {
    replicas: Option<i32>,
    persistent_volume_claim_retention_policy: Option<StatefulSetPersistentVolumeClaimRetentionPolicy>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct StatefulSetWire {
    metadata: Meta,
    spec: Option<StatefulSetSpecWire>,
}

/// A StatefulSet parsed as `slim` keeps it (`Slim for StatefulSet`): metadata without
/// managedFields, `replicas` and the claim retention policy; the pod template, the claim templates
/// and the status are skipped by the parser. The store holds the `StatefulSet` inside.
#[derive(Clone, Debug)]
pub struct LeanStatefulSet(pub StatefulSet);

impl<'de> Deserialize<'de> for LeanStatefulSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LeanStatefulSet, D::Error> {
        let wire = StatefulSetWire::deserialize(d)?;
        Ok(LeanStatefulSet(StatefulSet {
            metadata: wire.metadata.into(),
            spec: wire.spec.map(|s| StatefulSetSpec {
                replicas: s.replicas,
                persistent_volume_claim_retention_policy: s.persistent_volume_claim_retention_policy,
                ..Default::default()
            }),
            status: None,
        }))
    }
}

impl From<LeanStatefulSet> for StatefulSet {
    fn from(s: LeanStatefulSet) -> StatefulSet {
        s.0
    }
}

/// `$lean` is the API resource `$kind` (an `Api<$lean>` lists and watches `$kind`), its metadata
/// at `$($meta).+`.
macro_rules! same_resource_as {
    ($lean:ty, $kind:ty, $($meta:tt).+) => {
        impl kube::Resource for $lean {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                <$kind as kube::Resource>::kind(&())
            }
            fn group(_: &()) -> Cow<'_, str> {
                <$kind as kube::Resource>::group(&())
            }
            fn version(_: &()) -> Cow<'_, str> {
                <$kind as kube::Resource>::version(&())
            }
            fn plural(_: &()) -> Cow<'_, str> {
                <$kind as kube::Resource>::plural(&())
            }
            fn meta(&self) -> &ObjectMeta {
                &self.$($meta).+
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.$($meta).+
            }
        }
    };
}

same_resource_as!(CachedPod, Pod, metadata);
same_resource_as!(LeanStatefulSet, StatefulSet, 0.metadata);

/// A watch event of the parsed type as one of the cached type.
pub fn event_into<W, K: From<W>>(event: watcher::Event<W>) -> watcher::Event<K> {
    use watcher::Event::*;
    match event {
        Apply(o) => Apply(o.into()),
        Delete(o) => Delete(o.into()),
        Init => Init,
        InitApply(o) => InitApply(o.into()),
        InitDone => InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::slim::Slim;
    use crate::reconcile::slim::tests::{CAPTURES, captured as slim_captured};
    use serde_json::Value;

    /// Every object of `kind` in the takeover captures.
    fn captured(kind: &str) -> Vec<Value> {
        CAPTURES.iter().flat_map(|name| slim_captured(name, kind)).collect()
    }

    #[test]
    fn a_pod_parsed_lean_is_the_projection_of_the_whole_pod() {
        let pods = captured("Pod");
        assert!(pods.len() >= 7, "pods in the captures: {}", pods.len());
        for v in pods {
            let text = serde_json::to_string(&v).expect("serializes");
            let whole: Pod = serde_json::from_str(&text).expect("parses as a Pod");
            assert!(whole.spec.is_some() && whole.metadata.managed_fields.is_some());
            let lean: CachedPod = serde_json::from_str(&text).expect("parses lean");
            assert_eq!(lean, CachedPod::from(whole), "{:?}", v["metadata"]["name"]);
        }
    }

    #[test]
    fn a_statefulset_parsed_lean_is_the_slim_whole_one() {
        let sets = captured("StatefulSet");
        assert!(sets.len() >= 7, "StatefulSets in the captures: {}", sets.len());
        for v in sets {
            let text = serde_json::to_string(&v).expect("serializes");
            let mut whole: StatefulSet = serde_json::from_str(&text).expect("parses as a StatefulSet");
            assert!(whole.spec.as_ref().is_some_and(|s| s.template.spec.is_some()));
            whole.slim();
            let lean: LeanStatefulSet = serde_json::from_str(&text).expect("parses lean");
            assert_eq!(lean.0, whole, "{:?}", v["metadata"]["name"]);
        }
    }

    #[test]
    fn missing_parts_parse_as_absent_and_a_wrong_type_is_an_error() {
        let pod: CachedPod = serde_json::from_str(r#"{"metadata": {"name": "p"}}"#).expect("a bare pod");
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
        assert!(!pod.facts.ready && !pod.facts.running);
        let sts: LeanStatefulSet = serde_json::from_str("{}").expect("a bare StatefulSet");
        assert!(sts.0.spec.is_none());
        let err = serde_json::from_str::<LeanStatefulSet>(r#"{"spec": {"replicas": "three"}}"#)
            .expect_err("replicas is a number");
        assert!(err.to_string().contains("invalid type"), "{err}");
    }
}
