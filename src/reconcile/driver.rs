//! The driver of one member cluster: caches (reflectors) of everything a reconcile reads, an event
//! pump that turns every change into the keys of the KubeDirectorClusters it affects, the work queue,
//! and a dispatcher that runs each key as its own task in one of `--concurrency` worker slots. Nothing polls the API; a slow resync is only a safety net.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::broadcast;
use tracing::{Instrument, info, warn};

use crate::api::{KubeDirectorApp, KubeDirectorCluster, KubeDirectorConfig};
use crate::model::connections::{Kind, Target};
use crate::model::labels;
use crate::queue::backoff::Backoff;
use crate::queue::coalesce::StatusCoalescer;
use crate::queue::limiter::WriteBudget;
use crate::queue::{Outcome, WorkQueue};
use crate::shard::manager::{Act, Shards};
use crate::telemetry::metrics::{Metrics, OutcomeLabels};
use crate::telemetry::trace;

use super::cluster::{outcome_of_error, reconcile};
use super::connections::{CM_TYPE, Hub, MemberView, SECRET_TYPE};
use super::context::{ChildIndexes, ClusterKey, Ctx, Stores};
use super::index::ClusterIndex;
use super::slim::{CachedPod, Slim};
use super::slots::{self, Slot, Slots};

/// Settings shared by every member cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub operator_namespace: String,
    /// Only clusters (and their children) in this namespace; `None` = every namespace.
    pub watch_namespace: Option<String>,
    /// Workers per member cluster.
    pub concurrency: u16,
    pub field_manager: String,
    pub write_qps: u32,
    pub write_burst: u32,
    pub status_window: Duration,
    /// Which Events are published.
    pub events: super::context::EventLevel,
    /// How long a new cluster's first status may wait to be written together with `configured`.
    pub status_grace: Duration,
    pub backoff: Backoff,
    /// This replica's identity (shard Leases, spans).
    pub replica: String,
    /// Guest commands: concurrency and timeouts.
    pub guest: super::guest::Limits,
}

/// What the fleet can see of a running member: readiness and health.
pub struct MemberHandle {
    pub context: String,
    pub stores_ready: Box<dyn Fn() -> bool + Send + Sync>,
    pub healthy: Arc<AtomicBool>,
}

type Events = BoxStream<'static, Result<Vec<ClusterKey>, watcher::Error>>;

fn key_of(ns: Option<String>, name: String) -> Option<ClusterKey> {
    Some(ClusterKey { namespace: ns?, name })
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

/// A cache of a child kind (only objects carrying our cluster label), `index` fed with it, and its
/// events, mapped to the cluster named by the label.
fn children<K>(api: Api<K>, index: &ClusterIndex) -> (Store<K>, Events)
where
    K: Resource<DynamicType = ()>
        + Slim
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().any_semantic().labels(labels::CLUSTER);
    let index = index.clone();
    let events = reflector::reflector(writer, watcher(api, config).modify(K::slim))
        // After the store, before the triggers (see `index`).
        .map(move |r| {
            if let Ok(event) = &r {
                index.apply(event, labels::CLUSTER);
            }
            r
        })
        .default_backoff()
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
fn typed<K>(
    api: Api<K>,
    label: &str,
) -> (
    Store<K>,
    impl Stream<Item = Result<(String, String), watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Slim
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().any_semantic().labels(label);
    let events = reflector::reflector(writer, watcher(api, config).modify(K::slim))
        .default_backoff()
        .touched_objects()
        .map(|r| r.map(|o: K| (o.namespace().unwrap_or_default(), o.name_any())));
    (store, events)
}

/// A cache of one of our kinds, read untyped so that one malformed object cannot break the watch.
fn ours(
    api: Api<DynamicObject>,
    ar: ApiResource,
) -> (
    Store<DynamicObject>,
    impl Stream<Item = Result<DynamicObject, watcher::Error>> + Send,
) {
    let writer = reflector::store::Writer::new(ar);
    let store = writer.as_reader();
    (
        store,
        reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().any_semantic()).modify(DynamicObject::slim),
        )
        .default_backoff()
        .touched_objects(),
    )
}

/// The sizes of this member's caches, as `kubedirector_cached_objects{context, kind}`.
fn cached_objects(metrics: &Metrics, ctx: &Ctx, clusters: &Store<DynamicObject>) {
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
        let labels = crate::telemetry::metrics::KindLabels {
            context: ctx.context.clone(),
            kind: kind.to_string(),
        };
        metrics.cached_objects.get_or_create(&labels).set(n as i64);
    }
}

/// What a reconcile task needs: the member's queue, context and cluster cache, and the shards.
struct Worker {
    queue: WorkQueue<ClusterKey>,
    ctx: Arc<Ctx>,
    clusters: Store<DynamicObject>,
    cluster_ar: ApiResource,
    shards: Option<Arc<Shards>>,
}

impl Worker {
    /// One key from the queue: shard gate → reconcile (in `slot`) → outcome, with its span and metrics.
    async fn run(self: Arc<Self>, key: ClusterKey, waited: Duration, slot: Slot) {
        let (queue, ctx, shards) = (&self.queue, &self.ctx, &self.shards);
        tracing::trace!(context = %ctx.context, namespace = %key.namespace, name = %key.name, "worker took key");
        let m = &ctx.metrics;
        m.queue_wait
            .get_or_create(&m.cluster(&ctx.context))
            .observe(waited.as_secs_f64());
        let oref = ObjectRef::<DynamicObject>::new_with(&key.name, self.cluster_ar.clone()).within(&key.namespace);
        let Some(obj) = self.clusters.get(&oref) else {
            // Deleted: nothing left to do for this key.
            queue.done(&key, Outcome::Done);
            queue.forget(&key);
            ctx.coalescer.forget(&key);
            ctx.superseded.forget(&key);
            ctx.awaited.forget(&key);
            return;
        };
        // Sharded: only while this replica holds the key's shard, and never past its renew
        // deadline (the reconcile is cut off there, before anyone else may take the shard).
        let guard = match shards {
            None => None,
            Some(sh) => match sh.begin(sh.shard_of(&ctx.context, &key.namespace, &key.name)) {
                Act::Go(g) => Some(g),
                Act::Later => {
                    queue.done(&key, Outcome::Throttled(Duration::from_millis(250)));
                    return;
                }
                Act::NotMine => {
                    queue.done(&key, Outcome::Done);
                    return;
                }
            },
        };
        let shard = guard.as_ref().map(|g| g.shard);
        // The root span of this reconcile (its own trace), linked to the CR creator's trace.
        let span = tracing::info_span!(
            parent: None,
            "reconcile",
            context = %ctx.context, namespace = %key.namespace, name = %key.name,
            shard = tracing::field::Empty, replica = %ctx.replica,
            outcome = tracing::field::Empty, otel.status_code = tracing::field::Empty,
        );
        if let Some(s) = shard {
            span.record("shard", i64::from(s));
        }
        trace::link_to_creator(&span, obj.annotations());
        let started = tokio::time::Instant::now();
        let wall_start = std::time::SystemTime::now();
        let run = reconcile(obj, ctx, &slot).instrument(span.clone());
        let result = match (shards, &guard) {
            (Some(sh), Some(g)) => tokio::select! {
                r = run => r,
                _ = sh.lapsed(g.shard) => Ok(Outcome::Throttled(Duration::from_millis(250))),
            },
            _ => run.await,
        };
        if let (Some(sh), Some(g)) = (shards, &guard) {
            sh.record_reconcile(
                &format!("{}/{}/{}", ctx.context, key.namespace, key.name),
                g.shard,
                wall_start,
                std::time::SystemTime::now(),
            );
            sh.note_reconcile(g.shard);
        }
        drop(guard);
        let outcome = result.unwrap_or_else(|e| outcome_of_error(&key, &e, ctx));
        let label = match outcome {
            Outcome::Done | Outcome::RequeueAfter(_) => "done",
            Outcome::Throttled(_) => "throttled",
            Outcome::Failed { .. } => "error",
        };
        span.record("outcome", label);
        if label == "error" {
            span.record("otel.status_code", "ERROR");
        }
        drop(span);
        let labels = OutcomeLabels {
            context: ctx.context.clone(),
            outcome: label.to_string(),
        };
        m.reconcile_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        m.reconciles.get_or_create(&labels).inc();
        queue.done(&key, outcome);
    }
}

fn all_keys(store: &Store<DynamicObject>) -> Vec<ClusterKey> {
    store
        .state()
        .iter()
        .filter_map(|c| key_of(c.namespace(), c.name_any()))
        .collect()
}

/// Runs one member cluster until `shutdown` resolves; in-flight reconciles finish first.
#[allow(clippy::too_many_arguments)] // the member's parts, each built by the fleet
pub async fn run_member(
    context: String,
    client: Client,
    options: Options,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    shards: Option<Arc<Shards>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
    register: impl FnOnce(MemberHandle),
) -> anyhow::Result<()> {
    let cluster_ar = ApiResource::erase::<KubeDirectorCluster>(&());
    let app_ar = ApiResource::erase::<KubeDirectorApp>(&());
    let config_ar = ApiResource::erase::<KubeDirectorConfig>(&());
    let ns = options.watch_namespace.clone();

    let cluster_api = match &ns {
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
    .default_backoff();
    let (apps, app_events) = ours(Api::all_with(client.clone(), &app_ar), app_ar);
    let (configs, config_events) = ours(Api::all_with(client.clone(), &config_ar), config_ar);
    let by_cluster = ChildIndexes::default();
    let (statefulsets, sts_events) = children(scoped::<StatefulSet>(&client, &ns), &by_cluster.statefulsets);
    let (services, svc_events) = children(scoped::<PartialObjectMeta<Service>>(&client, &ns), &by_cluster.services);
    let (pods, pod_events) = children(scoped::<CachedPod>(&client, &ns), &by_cluster.pods);
    let (pvcs, pvc_events) = children(
        scoped::<PartialObjectMeta<PersistentVolumeClaim>>(&client, &ns),
        &by_cluster.pvcs,
    );
    let (configmaps, cm_events) = typed(scoped::<ConfigMap>(&client, &ns), CM_TYPE);
    let (secrets, secret_events) = typed(scoped::<Secret>(&client, &ns), SECRET_TYPE);
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
    .touched_objects();

    // Fan-out: an app change concerns the clusters using it; kd-global-config and StorageClasses all.
    let system_ns = options.operator_namespace.clone();
    let by_app = {
        let clusters = clusters.clone();
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
                .collect::<Vec<_>>()
        }
    };
    let (for_configs, for_classes) = (clusters.clone(), clusters.clone());
    // A connected ConfigMap or Secret changed: the clusters connected to it, in any member cluster.
    let connected = |kind: Kind| {
        let (hub, context) = (hub.clone(), context.clone());
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
    let streams: Vec<Events> = vec![
        {
            let (clusters, hub, context) = (clusters.clone(), hub.clone(), context.clone());
            cluster_events
                .map(move |r| {
                    r.map(|event| match event {
                        watcher::Event::Apply(c) | watcher::Event::InitApply(c) => {
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
        },
        sts_events,
        svc_events,
        pod_events,
        pvc_events,
        app_events.map(move |r| r.map(&by_app)).boxed(),
        config_events.map(move |r| r.map(|_| all_keys(&for_configs))).boxed(),
        sc_events.map(move |r| r.map(|_| all_keys(&for_classes))).boxed(),
        cm_events.map(move |r| r.map(&on_configmap)).boxed(),
        secret_events.map(move |r| r.map(&on_secret)).boxed(),
    ];

    // Guest commands that finish (or whose poll delay passes) put their cluster back on the queue.
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel::<ClusterKey>();
    let woken = futures::stream::unfold(
        woken,
        |mut rx| async move { rx.recv().await.map(|k| (Ok(vec![k]), rx)) },
    );
    let mut streams = streams;
    streams.push(woken.boxed());
    let guest = Arc::new(super::guest::Runner::new(
        context.clone(),
        client.clone(),
        options.guest.clone(),
        wake.clone(),
    ));
    let budget = WriteBudget::new(options.write_qps, options.write_burst)?;
    metrics.write_limit(&context, budget.rate());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kubedirector".to_string(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let stores = Stores {
        apps,
        configs,
        statefulsets,
        services,
        pods,
        pvcs,
        storage_classes,
        configmaps: configmaps.clone(),
        secrets: secrets.clone(),
        by_cluster,
    };
    hub.register(
        &context,
        MemberView {
            clusters: clusters.clone(),
            apps: stores.apps.clone(),
            configmaps,
            secrets,
            operator_namespace: options.operator_namespace.clone(),
            wake: wake.clone(),
            cluster_resource: cluster_ar.clone(),
        },
    );
    let ctx = Arc::new(Ctx {
        context: context.clone(),
        client,
        budget,
        coalescer: StatusCoalescer::new(options.status_window),
        superseded: super::freshness::Superseded::new(Duration::from_secs(10)),
        awaited: super::freshness::Awaited::new(Duration::from_secs(5)),
        metrics: metrics.clone(),
        stores,
        operator_namespace: options.operator_namespace.clone(),
        recorder,
        events: options.events,
        status_grace: options.status_grace,
        field_manager: options.field_manager.clone(),
        cluster_resource: cluster_ar.clone(),
        replica: options.replica.clone(),
        guest,
        hub: hub.clone(),
    });

    let healthy = Arc::new(AtomicBool::new(false));
    register(MemberHandle {
        context: context.clone(),
        stores_ready: {
            let (ctx, clusters) = (ctx.clone(), clusters.clone());
            Box::new(move || {
                let main_ready =
                    futures::FutureExt::now_or_never(clusters.wait_until_ready()).is_some_and(|r| r.is_ok());
                main_ready && ctx.stores.ready().unwrap_or(false)
            })
        },
        healthy: healthy.clone(),
    });

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let queue: WorkQueue<ClusterKey> = WorkQueue::new(options.backoff, seed);
    let labels = metrics.cluster(&context);

    // The pump: every event becomes the keys it concerns. A watch error marks the member unhealthy
    // (logged once per failure streak); the watcher retries with backoff on its own. When watches
    // work again, keys waiting out an error backoff run at once instead of sitting out their delay.
    let pump = {
        let (queue, healthy, metrics, labels, context) = (
            queue.clone(),
            healthy.clone(),
            metrics.clone(),
            labels.clone(),
            context.clone(),
        );
        let mut events = futures::stream::select_all(streams);
        async move {
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
    };
    let pump = tokio::spawn(pump.instrument(tracing::info_span!("pump", %context)));

    let depth = {
        let (queue, metrics, labels) = (queue.clone(), metrics.clone(), labels.clone());
        let (ctx, clusters) = (ctx.clone(), clusters.clone());
        tokio::spawn(async move {
            for tick in 0u64.. {
                metrics.queue_depth.get_or_create(&labels).set(queue.depth() as i64);
                if tick % 5 == 0 {
                    cached_objects(&metrics, &ctx, &clusters);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // kd-global-config's finalizer and status (every replica; the writes are conditional).
    let config_keeper = tokio::spawn(super::config::keep(ctx.clone()));

    // A shard this replica just acquired: its keys may have changed while nobody owned them.
    let acquired = shards.clone().map(|sh| {
        let (queue, clusters, context) = (queue.clone(), clusters.clone(), context.clone());
        let mut rx = sh.subscribe();
        tokio::spawn(async move {
            loop {
                let only = match rx.recv().await {
                    Ok(shard) => Some(shard),
                    Err(broadcast::error::RecvError::Lagged(_)) => None,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                // Ahead of the queue: under load, a full queue would hold the shard's first
                // reconcile back far past the lease (failover under load).
                for key in all_keys(&clusters) {
                    if only.is_none_or(|s| sh.shard_of(&context, &key.namespace, &key.name) == s) {
                        queue.add_urgent(key);
                    }
                }
            }
        })
    });

    info!(%context, watch = ?ns, workers = options.concurrency, qps = options.write_qps, burst = options.write_burst, "member cluster started");
    // The dispatcher: each key off the queue runs as its own task once a worker slot is free, and may
    // give its slot back while it waits for creates (`slots`).
    let dispatcher = {
        let worker = Arc::new(Worker {
            queue: queue.clone(),
            ctx: ctx.clone(),
            clusters: clusters.clone(),
            cluster_ar: cluster_ar.clone(),
            shards: shards.clone(),
        });
        let slots = Slots::new(usize::from(options.concurrency));
        let queue = queue.clone();
        tokio::spawn(slots::dispatch(
            slots,
            move || {
                let queue = queue.clone();
                async move {
                    queue
                        .next()
                        .await
                        .map(|(key, waited)| (key, waited, tokio::time::Instant::now()))
                }
            },
            move |(key, waited, popped), slot| worker.clone().run(key, waited + popped.elapsed(), slot),
        ))
    };

    shutdown.await;
    info!(%context, "stopping: finishing in-flight reconciles");
    queue.close();
    let _ = dispatcher.await;
    pump.abort();
    depth.abort();
    config_keeper.abort();
    if let Some(a) = acquired {
        a.abort();
    }
    metrics.cluster_healthy.get_or_create(&labels).set(0);
    hub.deregister(&context);
    info!(%context, "member cluster stopped");
    Ok(())
}
