//! What a reconcile needs: the API client of its Kubernetes cluster and the caches (reflector stores)
//! of everything it reads. Reconciles read only from these caches; they never list from the API.

use futures::FutureExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Client;
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use std::sync::Arc;

use crate::queue::coalesce::StatusCoalescer;
use crate::queue::limiter::WriteBudget;
use crate::telemetry::metrics::Metrics;

use super::error::Error;
use super::index::ClusterIndex;
use super::slim::CachedPod;

pub struct Stores {
    pub apps: Store<DynamicObject>,
    pub configs: Store<DynamicObject>,
    pub statefulsets: Store<StatefulSet>,
    /// Metadata only, slim (`slim`): a reconcile reads nothing else of its Services and claims.
    pub services: Store<PartialObjectMeta<Service>>,
    pub pods: Store<CachedPod>,
    pub pvcs: Store<PartialObjectMeta<PersistentVolumeClaim>>,
    pub storage_classes: Store<StorageClass>,
    /// ConfigMaps and Secrets that connections may name (only those with a type label).
    pub configmaps: Store<ConfigMap>,
    pub secrets: Store<Secret>,
    /// The children's names by (namespace, cluster), fed with the stores above.
    pub by_cluster: ChildIndexes,
}

/// One [`ClusterIndex`] per child kind.
#[derive(Clone, Default)]
pub struct ChildIndexes {
    pub statefulsets: ClusterIndex,
    pub services: ClusterIndex,
    pub pods: ClusterIndex,
    pub pvcs: ClusterIndex,
}

impl Stores {
    /// Whether every cache holds its first full list: deciding on a half-filled cache would, for
    /// example, see a member's pod as missing. This never waits: a reconcile parked on
    /// `wait_until_ready` was seen never to wake (kube-runtime 4.2), so the caller requeues instead.
    pub fn ready(&self) -> Result<bool, Error> {
        fn one<K: kube::Resource + Clone>(store: &Store<K>) -> Result<bool, Error>
        where
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            match store.wait_until_ready().now_or_never() {
                None => Ok(false),
                Some(Ok(())) => Ok(true),
                Some(Err(_)) => Err(Error::CacheGone),
            }
        }
        Ok(one(&self.apps)?
            && one(&self.configs)?
            && one(&self.statefulsets)?
            && one(&self.services)?
            && one(&self.pods)?
            && one(&self.pvcs)?
            && one(&self.storage_classes)?
            && one(&self.configmaps)?
            && one(&self.secrets)?)
    }
}

/// Which Events the operator publishes on a KubeDirectorCluster. Every Event is an API write, and a
/// state transition is already in the status (`kubectl get kdc` shows it), so by default only what a
/// user must act on is published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EventLevel {
    /// Warnings only: why a cluster cannot proceed (bad spec, missing app, unreadable object).
    #[default]
    Warnings,
    /// Warnings and every cluster state transition (creating, configured, updating, …).
    All,
}

/// A KubeDirectorCluster within one member cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterKey {
    pub namespace: String,
    pub name: String,
}

pub struct Ctx {
    /// The member cluster (kubeconfig context) this context serves; part of every key's identity.
    pub context: String,
    pub client: Client,
    /// API writes to this member cluster: one token per write.
    pub budget: WriteBudget,
    /// API writes to this member cluster in flight at once, Services behind the rest.
    pub gate: crate::queue::gate::WriteGate,
    /// At most one status write per cluster per window.
    pub coalescer: StatusCoalescer<ClusterKey>,
    /// Versions of clusters this process wrote a status over: not to be planned from again.
    pub superseded: super::freshness::Superseded<ClusterKey>,
    /// Children this process created, not yet in the caches: not to be planned without.
    pub awaited: super::freshness::Awaited<ClusterKey>,
    /// Versions this process wrote with nothing left to do: their watch events start no reconcile.
    pub settled: Arc<super::freshness::Settled<ClusterKey>>,
    pub metrics: Arc<Metrics>,
    pub stores: Stores,
    /// Holds the system app catalog and kd-global-config.
    pub operator_namespace: String,
    pub recorder: Recorder,
    pub events: EventLevel,
    /// How long a new cluster's first status may wait to be written together with `configured`.
    pub status_grace: std::time::Duration,
    pub field_manager: String,
    pub cluster_resource: ApiResource,
    /// This replica's identity, on every reconcile span.
    pub replica: String,
    /// Runs setup and notification commands inside members, off the workers.
    pub guest: Arc<super::guest::Runner>,
    /// Every member cluster's caches and queue, for connections.
    pub hub: Arc<super::connections::Hub>,
    /// Apps parsed and resolved, once per version.
    pub apps: super::apps::ResolvedApps,
}
