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
    let lagged = shards.clone();
    let acquisitions = futures::stream::unfold(shards.subscribe(), move |mut rx| {
        let lagged = lagged.clone();
        async move {
            match rx.recv().await {
                Ok(shard) => Some((vec![shard], rx)),
                // Missed some: every held shard is (re)considered.
                Err(broadcast::error::RecvError::Lagged(_)) => Some((lagged.held(), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        }
    });
    let held = shards.clone();
    when_ready(
        acquisitions,
        move |shard| {
            let division = division.clone();
            async move { division.wait_ready(shard).await }
        },
        move |shard| held.held().contains(&shard),
        |ready| {
            for key in all_keys(&clusters) {
                if ready.contains(&shards.shard_of(&context, &key.namespace, &key.name)) {
                    queue.add_urgent(key);
                }
            }
        },
    )
    .await;
}

/// Each acquired shard waits (`wait`: true once its lists are in, false if it was released first)
/// on its own, so one still listing holds back no other; `on_ready` gets the shards that became
/// ready together, at once. A shard released and taken again while its wait was pending waits
/// again: its second acquisition arrived while the first was still counted as pending.
async fn when_ready<W, F>(
    acquisitions: impl futures::Stream<Item = Vec<u32>>,
    wait: W,
    held: impl Fn(u32) -> bool,
    mut on_ready: impl FnMut(&BTreeSet<u32>),
) where
    W: Fn(u32) -> F,
    F: std::future::Future<Output = bool>,
{
    let mut acquisitions = std::pin::pin!(acquisitions.fuse());
    let mut waiting = FuturesUnordered::new();
    let mut pending = BTreeSet::new();
    let start = |shard: u32| {
        let f = wait(shard);
        async move { (shard, f.await) }
    };
    loop {
        tokio::select! {
            // Acquisitions first: rare, and then a shard's order of events is the same every run.
            biased;
            got = acquisitions.next() => {
                let Some(got) = got else { return };
                for shard in got {
                    if pending.insert(shard) {
                        waiting.push(start(shard));
                    }
                }
            }
            Some(first) = waiting.next(), if !waiting.is_empty() => {
                // Shards acquired together list together: take every one that is ready now.
                let mut done = vec![first];
                while let Some(Some(next)) = waiting.next().now_or_never() {
                    done.push(next);
                }
                let mut ready = BTreeSet::new();
                for (shard, listed) in done {
                    if listed {
                        pending.remove(&shard);
                        ready.insert(shard);
                    } else if held(shard) {
                        waiting.push(start(shard)); // released and taken again meanwhile
                    } else {
                        pending.remove(&shard);
                    }
                }
                if !ready.is_empty() {
                    on_ready(&ready);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

    use super::*;

    /// A scripted bed: each shard's waits end with the outcomes the test sends, in order.
    struct Bed {
        acquire: UnboundedSender<Vec<u32>>,
        outcome: HashMap<u32, UnboundedSender<bool>>,
        held: Arc<Mutex<BTreeSet<u32>>>,
        ready: mpsc::UnboundedReceiver<BTreeSet<u32>>,
    }

    fn bed(shards: &[u32]) -> Bed {
        let (acquire, acquisitions) = unbounded_channel::<Vec<u32>>();
        let mut outcome = HashMap::new();
        let mut script = HashMap::new();
        for &s in shards {
            let (tx, rx) = unbounded_channel::<bool>();
            outcome.insert(s, tx);
            script.insert(s, Arc::new(tokio::sync::Mutex::new(rx)));
        }
        let held = Arc::new(Mutex::new(BTreeSet::new()));
        let (report, ready) = unbounded_channel();
        let h = held.clone();
        tokio::spawn(async move {
            let acquisitions =
                futures::stream::unfold(acquisitions, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) });
            when_ready(
                acquisitions,
                |shard| {
                    let rx = script.get(&shard).cloned();
                    async move {
                        match rx {
                            Some(rx) => rx.lock().await.recv().await.unwrap_or(false),
                            None => false,
                        }
                    }
                },
                move |shard| h.lock().map(|h| h.contains(&shard)).unwrap_or(false),
                |ready| {
                    let _ = report.send(ready.clone());
                },
            )
            .await;
        });
        Bed {
            acquire,
            outcome,
            held,
            ready,
        }
    }

    impl Bed {
        fn acquire(&self, shards: &[u32]) {
            let mut held = self.held.lock().expect("held");
            held.extend(shards);
            self.acquire.send(shards.to_vec()).expect("loop runs");
        }
        fn release(&self, shard: u32) {
            self.held.lock().expect("held").remove(&shard);
        }
        fn end_wait(&self, shard: u32, listed: bool) {
            self.outcome[&shard].send(listed).expect("scripted shard");
        }
        async fn next_ready(&mut self) -> Option<BTreeSet<u32>> {
            tokio::time::timeout(Duration::from_secs(5), self.ready.recv())
                .await
                .ok()
                .flatten()
        }
    }

    fn set(s: &[u32]) -> BTreeSet<u32> {
        s.iter().copied().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn shards_that_list_together_are_queued_together_and_a_slow_one_on_its_own() {
        let mut b = bed(&[1, 2, 3]);
        b.acquire(&[1, 2, 3]);
        tokio::task::yield_now().await;
        b.end_wait(1, true);
        b.end_wait(2, true);
        assert_eq!(b.next_ready().await, Some(set(&[1, 2])));
        b.end_wait(3, true);
        assert_eq!(b.next_ready().await, Some(set(&[3])), "3 did not hold 1 and 2 back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_taken_again_while_its_wait_saw_the_release_waits_again() {
        let mut b = bed(&[4]);
        b.acquire(&[4]);
        tokio::task::yield_now().await;
        // Released and taken again before the wait reports: the second acquisition finds the
        // shard pending, and the wait (which saw the release) ends with false.
        b.release(4);
        b.acquire(&[4]);
        b.end_wait(4, false);
        tokio::task::yield_now().await;
        b.end_wait(4, true);
        assert_eq!(
            b.next_ready().await,
            Some(set(&[4])),
            "the re-acquired shard's keys are queued once its lists are in"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_released_while_it_waits_is_not_queued_and_starts_over_when_taken() {
        let mut b = bed(&[5]);
        b.acquire(&[5]);
        tokio::task::yield_now().await;
        b.release(5);
        b.end_wait(5, false);
        assert_eq!(b.next_ready().await, None, "released: nothing to queue");
        b.acquire(&[5]);
        tokio::task::yield_now().await;
        b.end_wait(5, true);
        assert_eq!(b.next_ready().await, Some(set(&[5])), "a fresh wait after the release");
    }
}
