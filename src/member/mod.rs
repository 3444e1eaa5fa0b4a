//! One member cluster at run time: its caches (`cache`), the triggers that turn every change into
//! the keys of the KubeDirectorClusters it affects (`triggers`), the work queue, and the worker that
//! runs each key through the shard gate into a reconcile (`worker`). The fleet starts one per
//! selected kubeconfig context (in a pod: one, in-cluster).

pub(crate) mod cache;
pub(crate) mod division;

mod segments;
pub(crate) mod triggers;
mod union;
pub(crate) mod worker;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kube::Client;
use kube::api::DynamicObject;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use tokio::task::JoinHandle;
use tracing::{Instrument, info};

use crate::admission::caches::{Caches, MemberStores, Worlds};
use crate::queue::WorkQueue;
use crate::queue::backoff::Backoff;
use crate::queue::coalesce::StatusCoalescer;
use crate::queue::gate::WriteGate;
use crate::queue::limiter::WriteBudget;
use crate::reconcile::connections::{Hub, MemberView};
use crate::reconcile::context::{ClusterKey, Ctx, EventLevel};
use crate::reconcile::freshness::{Awaited, Settled, Superseded};
use crate::reconcile::guest::{Limits, Runner};
use crate::shard::manager::Shards;
use crate::telemetry::metrics::Metrics;

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
    /// Writes in flight at once (`queue::gate`).
    pub writes_in_flight: u16,
    pub status_window: Duration,
    /// Which Events are published.
    pub events: EventLevel,
    /// How long a new cluster's first status may wait to be written together with `configured`.
    pub status_grace: Duration,
    pub backoff: Backoff,
    /// This replica's identity (shard Leases, spans).
    pub replica: String,
    /// Guest commands: concurrency and timeouts.
    pub guest: Limits,
}

/// What the fleet can see of a running member: readiness (`/readyz`). Its health is the
/// `kubedirector_cluster_healthy` gauge, set by the pump.
pub struct MemberHandle {
    pub context: String,
    pub stores_ready: Box<dyn Fn() -> bool + Send + Sync>,
}

/// A member's parts, each built by the fleet.
pub struct Parts {
    pub context: String,
    pub client: Client,
    pub options: Options,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub shards: Option<Arc<Shards>>,
    /// Admission, when it is on: this member's caches are registered there for its decisions.
    pub worlds: Option<Arc<Worlds>>,
}

/// Runs one member cluster until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    parts: Parts,
    shutdown: impl std::future::Future<Output = ()> + Send,
    register: impl FnOnce(MemberHandle),
) -> anyhow::Result<()> {
    let Parts {
        context,
        client,
        options,
        hub,
        metrics,
        shards,
        worlds,
    } = parts;
    // Sharded: the child caches hold the held shards' children only.
    let division = shards.as_ref().map(|sh| division::Division::new(sh.clone(), &context));
    let caches = cache::start(&client, &options.watch_namespace, division.as_ref());
    let clusters = caches.clusters.clone();
    // Guest commands that finish (or whose poll delay passes) put their cluster back on the queue.
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel::<ClusterKey>();
    let cache::Caches {
        cluster_resource,
        stores,
        changes,
        ..
    } = caches;
    let settled = Arc::new(Settled::default());
    let own = triggers::Own {
        context: &context,
        settled: &settled,
        metrics: &metrics,
    };
    let streams = triggers::streams(changes, &clusters, own, &hub, &options.operator_namespace, woken);
    // Before the hub hears of this member: a start that fails must leave nothing registered.
    let budget = WriteBudget::new(options.write_qps, options.write_burst)?;
    metrics.write_limit(&context, budget.rate());
    hub.register(
        &context,
        MemberView {
            clusters: clusters.clone(),
            apps: stores.apps.clone(),
            configmaps: stores.configmaps.clone(),
            secrets: stores.secrets.clone(),
            operator_namespace: options.operator_namespace.clone(),
            wake: wake.clone(),
            cluster_resource: cluster_resource.clone(),
        },
    );
    let ctx = Arc::new(Ctx {
        context: context.clone(),
        guest: Arc::new(Runner::new(
            context.clone(),
            client.clone(),
            options.guest.clone(),
            wake,
        )),
        recorder: recorder(&client),
        client,
        budget,
        gate: WriteGate::with_gauges(usize::from(options.writes_in_flight), metrics.gate(&context)),
        coalescer: StatusCoalescer::new(options.status_window),
        superseded: Superseded::new(Duration::from_secs(10)),
        awaited: Awaited::new(Duration::from_secs(5)),
        settled,
        metrics: metrics.clone(),
        stores,
        operator_namespace: options.operator_namespace.clone(),
        events: options.events,
        status_grace: options.status_grace,
        field_manager: options.field_manager.clone(),
        cluster_resource: cluster_resource.clone(),
        replica: options.replica.clone(),
        hub: hub.clone(),
        apps: Default::default(),
    });
    let admission = worlds.map(|w| admit(&w, &ctx, &clusters, &options));
    let healthy = Arc::new(AtomicBool::new(false));
    register(handle(&ctx, &clusters));

    let queue: WorkQueue<ClusterKey> = WorkQueue::new(options.backoff, seed());
    let pump = triggers::pump(streams, queue.clone(), healthy, metrics.clone(), context.clone());
    let mut tasks = vec![
        tokio::spawn(pump.instrument(tracing::info_span!("pump", %context))),
        gauges(queue.clone(), ctx.clone(), clusters.clone()),
        // kd-global-config's finalizer and status (every replica; the writes are conditional).
        tokio::spawn(crate::reconcile::config::keep(ctx.clone())),
    ];
    if let (Some(sh), Some(division)) = (&shards, &division) {
        tasks.extend(sharded(sh, division, &queue, &clusters, &context));
        tasks.push(tokio::spawn(share_writes(
            sh.clone(),
            ctx.clone(),
            usize::from(options.writes_in_flight),
        )));
    }
    info!(%context, watch = ?options.watch_namespace, workers = options.concurrency, qps = options.write_qps, burst = options.write_burst, "member cluster started");
    let worker = worker::Worker {
        queue: queue.clone(),
        ctx,
        clusters,
        cluster_ar: cluster_resource,
        shards,
        division,
    };
    let dispatcher = worker::dispatch(worker, options.concurrency);

    shutdown.await;
    info!(%context, "stopping: finishing in-flight reconciles");
    queue.close();
    let _ = dispatcher.await;
    for task in tasks {
        task.abort();
    }
    if let Some((worlds, task)) = admission {
        worlds.remove(&context);
        task.into_iter().for_each(|t| t.abort());
    }
    metrics.cluster_healthy.get_or_create(&metrics.cluster(&context)).set(0);
    hub.deregister(&context);
    info!(%context, "member cluster stopped");
    Ok(())
}

/// Sharded: the division follows the held shards, and a shard's keys are queued when it is
/// acquired (once its children are listed).
fn sharded(
    shards: &Arc<Shards>,
    division: &Arc<division::Division>,
    queue: &WorkQueue<ClusterKey>,
    clusters: &Store<DynamicObject>,
    context: &str,
) -> [JoinHandle<()>; 2] {
    [
        tokio::spawn(division.clone().follow()),
        tokio::spawn(triggers::acquired(
            shards.clone(),
            division.clone(),
            queue.clone(),
            clusters.clone(),
            context.to_string(),
        )),
    ]
}

/// Keeps this replica's bound on writes in flight to the member at its share of the shards it
/// holds (`queue::gate::share`), so that the replicas together keep to `--writes-in-flight`.
async fn share_writes(shards: Arc<Shards>, ctx: Arc<Ctx>, in_flight: usize) {
    let mut changes = shards.changes();
    loop {
        let held = shards.held().len();
        ctx.gate
            .resize(crate::queue::gate::share(in_flight, held, shards.count as usize));
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Registers this member's caches for admission decisions (the same stores, see
/// `admission::caches`); the task is admission's own watch, where it needs one.
fn admit(
    worlds: &Arc<Worlds>,
    ctx: &Ctx,
    clusters: &Store<DynamicObject>,
    options: &Options,
) -> (Arc<Worlds>, Option<JoinHandle<()>>) {
    let stores = MemberStores {
        apps: ctx.stores.apps.clone(),
        clusters: clusters.clone(),
        configs: ctx.stores.configs.clone(),
        classes: ctx.stores.storage_classes.clone(),
    };
    let (caches, task) = Caches::over(
        ctx.client.clone(),
        options.operator_namespace.clone(),
        options.watch_namespace.clone(),
        stores,
    );
    worlds.insert(&ctx.context, caches);
    (worlds.clone(), task)
}

fn recorder(client: &Client) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: "kubedirector".to_string(),
            instance: std::env::var("POD_NAME").ok(),
        },
    )
}

/// Ready once the clusters' cache and every other cache hold their first list.
fn handle(ctx: &Arc<Ctx>, clusters: &Store<DynamicObject>) -> MemberHandle {
    let (ctx, clusters) = (ctx.clone(), clusters.clone());
    MemberHandle {
        context: ctx.context.clone(),
        stores_ready: Box::new(move || {
            let main_ready = futures::FutureExt::now_or_never(clusters.wait_until_ready()).is_some_and(|r| r.is_ok());
            main_ready && ctx.stores.ready().unwrap_or(false)
        }),
    }
}

/// The queue-depth gauge every second, the cache sizes every five.
fn gauges(queue: WorkQueue<ClusterKey>, ctx: Arc<Ctx>, clusters: Store<DynamicObject>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let labels = ctx.metrics.cluster(&ctx.context);
        for tick in 0u64.. {
            ctx.metrics.queue_depth.get_or_create(&labels).set(queue.depth() as i64);
            if tick % 5 == 0 {
                cache::count(&ctx.metrics, &ctx, &clusters);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// The jitter seed of the member's backoff: different per process, so replicas do not retry in step.
fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}
