//! A member cluster's caches: one reflector per kind a reconcile reads, each object slimmed on its
//! way into the store (`reconcile::slim`), the children indexed by (namespace, cluster) as they
//! arrive. The raw event streams go to `triggers`, which turns them into keys.

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::api::{KubeDirectorApp, KubeDirectorCluster, KubeDirectorConfig};
use crate::model::labels;
use crate::reconcile::connections::{CM_TYPE, SECRET_TYPE};
use crate::reconcile::context::{ChildIndexes, Ctx, Stores};
use crate::reconcile::index::ClusterIndex;
use crate::reconcile::slim::{CachedPod, Slim};
use crate::reconcile::wire::{self, LeanStatefulSet};
use crate::telemetry::metrics::{KindLabels, Metrics};

use super::division::Division;
use super::triggers::{Events, key_of};

type Stream<T> = BoxStream<'static, Result<T, watcher::Error>>;

/// Every cache of one member, and the change streams `triggers` maps to keys.
pub(crate) struct Caches {
    pub clusters: Store<DynamicObject>,
    pub cluster_resource: ApiResource,
    pub stores: Stores,
    pub changes: Changes,
}

/// What changed, per kind. The clusters' stream is the raw watch (see `triggers::cluster_keys`);
/// the children's are already the keys of the clusters named by their label.
pub(crate) struct Changes {
    pub clusters: Stream<watcher::Event<DynamicObject>>,
    pub children: Vec<Events>,
    pub apps: Stream<DynamicObject>,
    pub configs: Stream<DynamicObject>,
    pub storage_classes: Stream<StorageClass>,
    /// (namespace, name) of a connectable ConfigMap or Secret.
    pub configmaps: Stream<(String, String)>,
    pub secrets: Stream<(String, String)>,
}

/// Starts every watch of the member (they run as the streams are polled). With `division`, the child
/// caches hold only the held shards' children (`division`).
pub(crate) fn start(client: &Client, ns: &Option<String>, division: Option<&Arc<Division>>) -> Caches {
    let cluster_ar = ApiResource::erase::<KubeDirectorCluster>(&());
    let app_ar = ApiResource::erase::<KubeDirectorApp>(&());
    let config_ar = ApiResource::erase::<KubeDirectorConfig>(&());
    let cluster_api = match ns {
        Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &cluster_ar),
        None => Api::<DynamicObject>::all_with(client.clone(), &cluster_ar),
    };
    // The clusters themselves: every event of the raw watch stream, because a list (at start, and on
    // every re-list) announces objects before they are in the store (InitApply) and completes with
    // InitDone, after which every cluster is enqueued from the then-complete store. Without that, a
    // worker taking an announced key finds no object, takes it for deleted and drops it for good.
    let cluster_writer = reflector::store::Writer::new(cluster_ar.clone());
    let clusters = cluster_writer.as_reader();
    let cluster_events = reflector::reflector(
        cluster_writer,
        watcher(cluster_api, watcher::Config::default().any_semantic()).modify(DynamicObject::slim),
    )
    .default_backoff()
    .boxed();
    let (apps, app_events) = ours(Api::all_with(client.clone(), &app_ar), app_ar);
    let (configs, config_events) = ours(Api::all_with(client.clone(), &config_ar), config_ar);
    let by_cluster = ChildIndexes::default();
    let part = |kind: usize| division.map(|d| (d, kind));
    let (statefulsets, sts_events) =
        children::<LeanStatefulSet, StatefulSet>(scoped(client, ns), &by_cluster.statefulsets, part(0));
    let (services, svc_events) =
        children::<PartialObjectMeta<Service>, _>(scoped(client, ns), &by_cluster.services, part(1));
    let (pods, pod_events) = children::<CachedPod, _>(scoped(client, ns), &by_cluster.pods, part(2));
    let (pvcs, pvc_events) =
        children::<PartialObjectMeta<PersistentVolumeClaim>, _>(scoped(client, ns), &by_cluster.pvcs, part(3));
    let (configmaps, cm_events) = typed(scoped::<ConfigMap>(client, ns), CM_TYPE);
    let (secrets, secret_events) = typed(scoped::<Secret>(client, ns), SECRET_TYPE);
    let (storage_classes, sc_writer) = reflector::store::<StorageClass>();
    let sc_events = reflector::reflector(
        sc_writer,
        watcher(
            Api::<StorageClass>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .modify(StorageClass::slim),
    )
    .default_backoff()
    .touched_objects()
    .boxed();
    Caches {
        clusters,
        cluster_resource: cluster_ar,
        stores: Stores {
            apps,
            configs,
            statefulsets,
            services,
            pods,
            pvcs,
            storage_classes,
            configmaps,
            secrets,
            by_cluster,
        },
        changes: Changes {
            clusters: cluster_events,
            children: vec![sts_events, svc_events, pod_events, pvc_events],
            apps: app_events,
            configs: config_events,
            storage_classes: sc_events,
            configmaps: cm_events,
            secrets: secret_events,
        },
    }
}

fn scoped<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What a reflector of a statically typed kind needs of it (slimmed on the way into the store).
trait Cached:
    Resource<DynamicType = ()> + Slim + Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static
{
}

impl<K> Cached for K where
    K: Resource<DynamicType = ()> + Slim + Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static
{
}

/// A cache of a child kind (only objects carrying our cluster label), `index` fed with it, and its
/// events, mapped to the cluster named by the label. Divided (`division`, kind number): only the
/// held shards' objects, selected by bucket on the API server (`parse` is given the selector).
/// Parsed as `W` (`reconcile::wire`: a lean parse), cached as `K`.
fn children<W, K>(api: Api<W>, index: &ClusterIndex, division: Option<(&Arc<Division>, usize)>) -> (Store<K>, Events)
where
    W: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned + Send + 'static,
    K: Cached + From<W>,
{
    let (store, writer) = reflector::store();
    let index = index.clone();
    let parse = move |selector: String| {
        let config = watcher::Config::default().any_semantic().labels(&selector);
        watcher(api.clone(), config).map_ok(wire::event_into::<W, K>)
    };
    // The backoff goes on each watch: divided, every segment has its own (`segments::open`), so an
    // error in one holds back no other shard's events.
    let raw = match division {
        None => parse(labels::CLUSTER.to_string()).default_backoff().boxed(),
        Some((d, kind)) => d.divide(kind, parse, store.clone()),
    };
    let events = reflector::reflector(writer, raw.modify(K::slim))
        // After the store, before the triggers (see `index`).
        .map(move |r| {
            if let Ok(event) = &r {
                index.apply(event, labels::CLUSTER);
            }
            r
        })
        .touched_objects()
        .map(|r| {
            r.map(|child: K| {
                let owner = child.labels().get(labels::CLUSTER).cloned();
                owner
                    .and_then(|name| key_of(child.namespace(), name))
                    .into_iter()
                    .collect()
            })
        });
    (store, events.boxed())
}

/// A cache of the objects of a kind that carry `label` (ConfigMaps and Secrets typed for
/// connections), and the (namespace, name) of each change.
fn typed<K: Cached>(api: Api<K>, label: &str) -> (Store<K>, Stream<(String, String)>) {
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().any_semantic().labels(label);
    let events = reflector::reflector(writer, watcher(api, config).modify(K::slim))
        .default_backoff()
        .touched_objects()
        .map(|r| r.map(|o: K| (o.namespace().unwrap_or_default(), o.name_any())));
    (store, events.boxed())
}

/// A cache of one of our kinds, read untyped so that one malformed object cannot break the watch.
fn ours(api: Api<DynamicObject>, ar: ApiResource) -> (Store<DynamicObject>, Stream<DynamicObject>) {
    let writer = reflector::store::Writer::new(ar);
    let store = writer.as_reader();
    let events = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()).modify(DynamicObject::slim),
    )
    .default_backoff()
    .touched_objects();
    (store, events.boxed())
}

/// The sizes of this member's caches, as `kubedirector_cached_objects{context, kind}`.
pub(crate) fn count(metrics: &Metrics, ctx: &Ctx, clusters: &Store<DynamicObject>) {
    let s = &ctx.stores;
    let sizes = [
        ("KubeDirectorCluster", clusters.state().len()),
        ("KubeDirectorApp", s.apps.state().len()),
        ("KubeDirectorConfig", s.configs.state().len()),
        ("StatefulSet", s.statefulsets.state().len()),
        ("Service", s.services.state().len()),
        ("Pod", s.pods.state().len()),
        ("PersistentVolumeClaim", s.pvcs.state().len()),
        ("StorageClass", s.storage_classes.state().len()),
        ("ConfigMap", s.configmaps.state().len()),
        ("Secret", s.secrets.state().len()),
    ];
    for (kind, n) in sizes {
        let labels = KindLabels {
            context: ctx.context.clone(),
            kind: kind.to_string(),
        };
        metrics.cached_objects.get_or_create(&labels).set(n as i64);
    }
}
