//! Event → keys: every change a member's watches see becomes the keys of the KubeDirectorClusters it
//! concerns, and the pump puts those keys on the queue. Nothing polls the API; a slow resync is only
//! a safety net.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::BoxStream;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

use crate::model::connections::{Kind, Target};
use crate::queue::WorkQueue;
use crate::reconcile::connections::Hub;
use crate::reconcile::context::ClusterKey;
use crate::reconcile::freshness::Settled;
use crate::shard::manager::Shards;
use crate::telemetry::metrics::Metrics;

use super::cache::Changes;
use super::division::Division;

/// A stream of the keys each change concerns.
pub(crate) type Events = BoxStream<'static, Result<Vec<ClusterKey>, watcher::Error>>;

pub(crate) fn key_of(ns: Option<String>, name: String) -> Option<ClusterKey> {
    Some(ClusterKey { namespace: ns?, name })
}

pub(crate) fn all_keys(store: &Store<DynamicObject>) -> Vec<ClusterKey> {
    store
        .state()
        .iter()
        .filter_map(|c| key_of(c.namespace(), c.name_any()))
        .collect()
}

/// This member, as its own cluster events are judged: its context, the versions it wrote with
/// nothing left to do, and where the events it drops are counted.
pub(crate) struct Own<'a> {
    pub context: &'a str,
    pub settled: &'a Arc<Settled<ClusterKey>>,
    pub metrics: &'a Arc<Metrics>,
}

/// Who hears of a change: the cluster itself (and the connections hub); the clusters named by a
/// child's label; the clusters using a changed app; every cluster for kd-global-config and
/// StorageClasses; for a connected ConfigMap or Secret, the clusters connected to it in any member
/// (through the hub). `woken` carries the keys of guest commands that finished.
pub(crate) fn streams(
    changes: Changes,
    clusters: &Store<DynamicObject>,
    own: Own<'_>,
    hub: &Arc<Hub>,
    system_ns: &str,
    woken: mpsc::UnboundedReceiver<ClusterKey>,
) -> Vec<Events> {
    let Changes {
        clusters: cluster_events,
        children,
        apps,
        configs,
        storage_classes,
        configmaps,
        secrets,
    } = changes;
    let context = own.context;
    let by_app = using_app(clusters.clone(), system_ns.to_string());
    let (for_configs, for_classes) = (clusters.clone(), clusters.clone());
    let connected = |kind: Kind| {
        let (hub, context) = (hub.clone(), context.to_string());
        move |(ns, name): (String, String)| {
            hub.changed(&Target {
                kind,
                context: context.clone(),
                namespace: ns,
                name,
            });
            Vec::new()
        }
    };
    let (on_configmap, on_secret) = (connected(Kind::ConfigMap), connected(Kind::Secret));
    let woken = futures::stream::unfold(
        woken,
        |mut rx| async move { rx.recv().await.map(|k| (Ok(vec![k]), rx)) },
    );
    let mut others = children;
    others.extend([
        apps.map(move |r| r.map(&by_app)).boxed(),
        configs.map(move |r| r.map(|_| all_keys(&for_configs))).boxed(),
        storage_classes.map(move |r| r.map(|_| all_keys(&for_classes))).boxed(),
        configmaps.map(move |r| r.map(&on_configmap)).boxed(),
        secrets.map(move |r| r.map(&on_secret)).boxed(),
        woken.boxed(),
    ]);
    let mut streams = vec![cluster_keys(cluster_events, clusters.clone(), &own, hub.clone())];
    // Anything else that concerns a cluster means its next reconcile has something to look at.
    streams.extend(others.into_iter().map(|s| {
        let settled = own.settled.clone();
        s.inspect(move |r| {
            for k in r.iter().flatten() {
                settled.touch(k);
            }
        })
        .boxed()
    }));
    streams
}

/// A cluster's own events, told to the hub too. On the end of a (re-)list, every cluster of the
/// then-complete store. The event of a version this process wrote with nothing left to do starts
/// no reconcile (`Settled`); the hub still hears of it.
fn cluster_keys(
    events: BoxStream<'static, Result<watcher::Event<DynamicObject>, watcher::Error>>,
    clusters: Store<DynamicObject>,
    own: &Own<'_>,
    hub: Arc<Hub>,
) -> Events {
    let context = own.context.to_string();
    let (settled, metrics) = (own.settled.clone(), own.metrics.clone());
    events
        .map(move |r| {
            r.map(|event| match event {
                watcher::Event::Apply(c) => {
                    hub.cluster_applied(&context, &c);
                    let key = key_of(c.namespace(), c.name_any());
                    let version = c.resource_version().unwrap_or_default();
                    match key {
                        Some(k) if settled.settled(&k, &version) => {
                            metrics
                                .reconciles_settled
                                .get_or_create(&metrics.cluster(&context))
                                .inc();
                            Vec::new()
                        }
                        key => key.into_iter().collect(),
                    }
                }
                watcher::Event::InitApply(c) => {
                    hub.cluster_applied(&context, &c);
                    key_of(c.namespace(), c.name_any()).into_iter().collect()
                }
                watcher::Event::Delete(c) => {
                    hub.cluster_deleted(&context, &c);
                    key_of(c.namespace(), c.name_any()).into_iter().collect()
                }
                watcher::Event::Init => Vec::new(),
                watcher::Event::InitDone => all_keys(&clusters),
            })
        })
        .boxed()
}

/// The clusters an app change concerns: those naming it, in its namespace, or in any namespace for
/// an app of the system catalog (the operator's namespace).
fn using_app(
    clusters: Store<DynamicObject>,
    system_ns: String,
) -> impl Fn(DynamicObject) -> Vec<ClusterKey> + Send + 'static {
    move |app: DynamicObject| {
        let (app_ns, app_name) = (app.namespace(), app.name_any());
        let system = app_ns.as_deref() == Some(system_ns.as_str());
        clusters
            .state()
            .iter()
            .filter(|c| {
                c.data["spec"]["app"].as_str() == Some(app_name.as_str()) && (system || c.namespace() == app_ns)
            })
            .filter_map(|c| key_of(c.namespace(), c.name_any()))
            .collect()
    }
}

/// The pump: every event becomes the keys it concerns. A watch error marks the member unhealthy
/// (logged once per failure streak); the watcher retries with backoff on its own. When watches
/// work again, keys waiting out an error backoff run at once instead of sitting out their delay
/// (but never before a Retry-After the server gave them).
pub(crate) async fn pump(
    streams: Vec<Events>,
    queue: WorkQueue<ClusterKey>,
    healthy: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    context: String,
) {
    let labels = metrics.cluster(&context);
    let mut events = futures::stream::select_all(streams);
    let mut failing = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(keys) => {
                if failing {
                    info!(%context, "watches recovered; retrying keys in backoff now");
                    queue.retry_backed_off_now();
                }
                failing = false;
                healthy.store(true, Ordering::Relaxed);
                for k in keys {
                    tracing::trace!(%context, namespace = %k.namespace, name = %k.name, "event → key");
                    queue.add(k);
                }
            }
            // An expired resource version (410) is routine: the watcher lists again by itself.
            // A sparse watch (typed ConfigMaps, say) may then emit nothing for a long time,
            // so counting it as a failure would leave the member marked unhealthy.
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                tracing::debug!(%context, error = %status, "watch expired; listing again");
            }
            Err(e) => {
                if !failing {
                    warn!(%context, error = %e, "watch failed; member cluster marked unhealthy");
                }
                failing = true;
                healthy.store(false, Ordering::Relaxed);
                metrics.api_error(&context, 0);
            }
        }
        metrics
            .cluster_healthy
            .get_or_create(&labels)
            .set(i64::from(healthy.load(Ordering::Relaxed)));
    }
}

/// A shard this replica just acquired: its keys may have changed while nobody owned them, so they
/// go ahead of the queue (under load, a full queue would hold the shard's first reconcile back far
/// past the lease: failover under load), once the divided caches hold the shard's children.
pub(crate) async fn acquired(
    shards: Arc<Shards>,
    division: Arc<Division>,
    queue: WorkQueue<ClusterKey>,
    clusters: Store<DynamicObject>,
    context: String,
) {
    let mut rx = shards.subscribe();
    // Each acquired shard waits for its lists on its own: one still listing holds back no other.
    let mut waiting = FuturesUnordered::new();
    let mut pending = BTreeSet::new();
    loop {
        tokio::select! {
            got = rx.recv() => {
                let acquired = match got {
                    Ok(shard) => vec![shard],
                    Err(broadcast::error::RecvError::Lagged(_)) => shards.held(),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                for shard in acquired {
                    if pending.insert(shard) {
                        let division = division.clone();
                        waiting.push(async move { (shard, division.wait_ready(shard).await) });
                    }
                }
            }
            Some(first) = waiting.next(), if !waiting.is_empty() => {
                // Shards acquired together list together: queue every one that is ready now in
                // one pass over the keys.
                let mut ready = BTreeSet::new();
                let mut done = vec![first];
                while let Some(Some(next)) = waiting.next().now_or_never() {
                    done.push(next);
                }
                for (shard, held) in done {
                    pending.remove(&shard);
                    if held {
                        ready.insert(shard); // not released meanwhile
                    }
                }
                if ready.is_empty() {
                    continue;
                }
                for key in all_keys(&clusters) {
                    if ready.contains(&shards.shard_of(&context, &key.namespace, &key.name)) {
                        queue.add_urgent(key);
                    }
                }
            }
        }
    }
}
