//! The worker: one key off the queue → shard gate → reconcile → outcome, with its span and metrics.
//! Each key runs as its own task in one of `--concurrency` slots, and may give its slot back while
//! it waits for creates (`reconcile::slots`).

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::division::Division;
use crate::queue::{Outcome, WorkQueue};
use crate::reconcile::cluster::{outcome_of_error, reconcile};
use crate::reconcile::context::{ClusterKey, Ctx};
use crate::reconcile::slots::{self, Slot, Slots};
use crate::shard::manager::{Act, Shards};
use crate::telemetry::metrics::OutcomeLabels;
use crate::telemetry::trace;

/// What a reconcile task needs: the member's queue, context and cluster cache, and the shards.
pub(crate) struct Worker {
    pub queue: WorkQueue<ClusterKey>,
    pub ctx: Arc<Ctx>,
    pub clusters: Store<DynamicObject>,
    pub cluster_ar: ApiResource,
    pub shards: Option<Arc<Shards>>,
    /// With `shards`: whether the divided caches hold a shard's children yet.
    pub division: Option<Arc<Division>>,
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
            ctx.settled.forget(&key);
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
        // Just acquired, its children still listing: planned now, it would take them for absent.
        if let (Some(d), Some(s)) = (&self.division, shard)
            && !d.ready(s)
        {
            drop(guard);
            queue.done(&key, Outcome::Throttled(Duration::from_millis(200)));
            return;
        }
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

/// The dispatcher: each key off the queue runs as its own task once one of `concurrency` slots is
/// free. Ends when the queue is closed and every running key has finished.
pub(crate) fn dispatch(worker: Worker, concurrency: u16) -> JoinHandle<()> {
    let queue = worker.queue.clone();
    let worker = Arc::new(worker);
    let slots = Slots::new(usize::from(concurrency));
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
}
