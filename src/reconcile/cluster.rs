//! One reconcile of one KubeDirectorCluster: observe (caches) → plan (pure, `model::plan`) → apply.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::DynamicObject;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::KubeDirectorCluster;
use crate::api::cluster::{ClusterState, KubeDirectorClusterStatus};
use crate::model::connections;
use crate::model::labels::{self, FINALIZER};
use crate::model::names;
use crate::model::plan::{self, ClusterInput};
use crate::model::settings::Settings;
use crate::model::validate;

use super::apply::{self, Writes};
use crate::queue::Outcome;

use super::context::{ClusterKey, Ctx, EventLevel};
use super::error::Error;
use super::observe;
use super::slots::{self, Slot};

/// Safety-net resync: every change of a cluster or its children triggers a reconcile by watch; this
/// only catches what a watch could have missed.
const RESYNC: Duration = Duration::from_secs(600);

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// The status as stored: absent, read, or present but unreadable by these types (written by another
/// version of KubeDirector, or by hand). An unreadable status is never replaced.
enum Previous {
    Absent,
    Read(Box<KubeDirectorClusterStatus>),
    Unreadable,
}

fn previous_status(obj: &DynamicObject) -> Previous {
    match obj.data.get("status").filter(|s| !s.is_null()) {
        None => Previous::Absent,
        Some(s) => match serde_json::from_value(s.clone()) {
            Ok(status) => Previous::Read(Box::new(status)),
            Err(_) => Previous::Unreadable,
        },
    }
}

impl Previous {
    fn readable(&self) -> Option<&KubeDirectorClusterStatus> {
        match self {
            Previous::Read(s) => Some(s),
            _ => None,
        }
    }
}

/// Time since the cluster was created (zero if the clocks disagree or it has no timestamp).
fn age_of(obj: &DynamicObject) -> Duration {
    obj.meta()
        .creation_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(jiff::Timestamp::now().duration_since(t.0)).ok())
        .unwrap_or_default()
}

/// 16 random bytes, hex: what new members' auth tokens are derived from.
fn token_salt() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // The system's generator does not fail on the platforms we run on; a zero salt would still
    // give distinct tokens per cluster and pod.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    hex::encode(bytes)
}

/// Events are best-effort: they come out of the same write budget as everything else, and are
/// skipped (and counted) rather than exceed it.
async fn publish(ctx: &Ctx, obj: &DynamicObject, type_: EventType, reason: &str, note: String) {
    if ctx.budget.try_take().is_err() {
        ctx.metrics
            .events_skipped
            .get_or_create(&ctx.metrics.cluster(&ctx.context))
            .inc();
        debug!(context = %ctx.context, reason, "write budget spent: event skipped");
        return;
    }
    let reference = obj.object_ref(&ctx.cluster_resource);
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &reference).await {
        Ok(()) => ctx.metrics.write(&ctx.context, "event", "ok"),
        Err(e) => {
            ctx.metrics.write(&ctx.context, "event", "error");
            warn!(context = %ctx.context, error = %e, "could not publish event");
        }
    }
}

/// Writes a status that says why the cluster cannot proceed, with an Event when the reason is new.
/// A status these types cannot read gets only its conditions written (a merge patch): everything
/// else in it stays as stored, since replacing what was not read would lose member and child names.
async fn block(ctx: &Ctx, obj: &DynamicObject, reason: &str, message: String) -> Result<Outcome, Error> {
    let prev = previous_status(obj);
    let prev_conditions: Vec<Condition> = obj
        .data
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let prev_message = prev_conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| c.message.clone());
    match &prev {
        Previous::Unreadable => {
            let conditions = plan::blocked_conditions(&prev_conditions, &message, obj.meta().generation, &now());
            if conditions != prev_conditions {
                apply::patch_status_conditions(ctx, obj, &conditions).await?;
            }
        }
        Previous::Absent | Previous::Read(_) => {
            let status = plan::blocked_status(prev.readable(), &message, obj.meta().generation, &now());
            if prev.readable() != Some(&status) {
                apply::replace_status(ctx, obj, &status).await?;
            }
        }
    }
    if prev_message.as_deref() != Some(message.as_str()) {
        warn!(context = %ctx.context, cluster = %obj.name_any(), %message, "cluster blocked");
        publish(ctx, obj, EventType::Warning, reason, message).await;
    }
    // A fix arrives as a change of the cluster, its app, the config or a StorageClass: all watched.
    Ok(Outcome::RequeueAfter(RESYNC))
}

/// Children written at once by one reconcile. They are independent objects (the StatefulSets name the
/// headless Service, but the API does not need it first), every write is idempotent, and each takes
/// its token from the member's write budget, which still caps the rate.
const APPLY_CONCURRENCY: usize = 8;

/// The StatefulSets, the headless Service and the member Services, written concurrently,
/// StatefulSets first while one is still to be created (and then the writing turn ends: the
/// Services wait behind every StatefulSet at the write gate, `queue::gate`). Measured both ways
/// (docs/loadtest.md, burst17/burst18): with the Services first, every Service existed before its
/// pod had an address, so the endpoints controllers rewrote each Endpoints and EndpointSlice as the
/// pod came up (3,000 more writes at the API server for 1,000 members, 20 more CPU-seconds on the
/// bed, all done 10 s later); created after the StatefulSets, they are written once, with the pod
/// already in them. The cost: a cluster whose pods are Ready waits for its Service creates
/// (seconds on a busy server) before it is `configured`; once they are Ready, its Services go out
/// before those of the clusters still starting (the gate's `Ready` lane). Every write is tried;
/// the first error is returned once all have finished (the others' writes stand, and the retry
/// skips them by digest).
/// The children created (`Kind/name`) are remembered in `awaited` either way: a retry must wait for
/// them to reach the caches, not create them again.
async fn apply_children(
    ctx: &Ctx,
    ns: &str,
    plan: &plan::ClusterPlan,
    children: &observe::Children,
    key: &ClusterKey,
    uid: &str,
    turn: &Turn,
) -> Result<Writes, Error> {
    use futures::{FutureExt, StreamExt, future::BoxFuture};
    type Call<'a> = BoxFuture<'a, (Option<String>, Result<Writes, Error>)>;
    let new_statefulset = plan
        .statefulsets
        .iter()
        .any(|s| !children.statefulsets.contains_key(&s.name_any()));
    let (pods_ready, promotion) = tokio::sync::watch::channel(false);
    let promotion = apply::Promotion(promotion);
    // A new cluster's Services go out after its StatefulSets, without a writing turn.
    let after_statefulsets = new_statefulset.then_some(&promotion);
    let mut services: Vec<Call<'_>> = Vec::new();
    for svc in plan.headless.iter().chain(&plan.member_services) {
        let current = children.services.get(&svc.name_any());
        let created = current.is_none().then(|| format!("Service/{}", svc.name_any()));
        services.push(
            async move {
                let mut w = Writes::default();
                let r = apply::ensure(ctx, ns, svc, current, uid, after_statefulsets, &mut w).await;
                (created, r.map(|()| w))
            }
            .boxed(),
        );
    }
    let mut statefulsets: Vec<Call<'_>> = Vec::new();
    for sts in &plan.statefulsets {
        let current = children.statefulsets.get(&sts.name_any());
        let created = current.is_none().then(|| format!("StatefulSet/{}", sts.name_any()));
        statefulsets.push(
            async move {
                let mut w = Writes::default();
                let r = apply::ensure_statefulset(ctx, ns, sts, current, uid, &mut w).await;
                (created, r.map(|()| w))
            }
            .boxed(),
        );
    }
    type Done = Vec<(Option<String>, Result<Writes, Error>)>;
    async fn all_at_once(calls: Vec<Call<'_>>) -> Done {
        futures::stream::iter(calls)
            .buffer_unordered(APPLY_CONCURRENCY)
            .collect()
            .await
    }
    // (Creates run in a writing turn: `reconcile` took one before planning them.)
    // A new cluster's Services wait in the gate's `Behind` lane until its pods are Ready, then
    // move to its `Ready` lane (still after every StatefulSet): created then, their endpoints are
    // written once, and the cluster need not wait for the Services of clusters still starting.
    let ready = |name: &str| {
        let pod = kube::runtime::reflector::ObjectRef::new(name).within(ns);
        ctx.stores.pods.get(&pod).is_some_and(|p| p.facts.ready)
    };
    let promote_when_ready = async {
        while !all_pods_ready(&plan.statefulsets, ready) {
            tokio::time::sleep(PODS_READY_POLL).await;
        }
        let _ = pods_ready.send(true);
        std::future::pending::<Done>().await
    };
    let results: Done = if new_statefulset {
        let mut done = all_at_once(statefulsets).await;
        // The next cluster's StatefulSets need not wait for these Services: they go out behind
        // every StatefulSet anyway (`queue::gate`).
        if let Turn::Held(t) = turn {
            t.end();
        }
        // A StatefulSet refused (a 429 among them) holds the Services back: the server asked us
        // to wait.
        if done.iter().all(|(_, r)| r.is_ok()) {
            done.extend(tokio::select! {
                done = all_at_once(services) => done,
                never = promote_when_ready => never,
            });
        }
        done
    } else {
        services.extend(statefulsets);
        all_at_once(services).await
    };
    let (mut total, mut made, mut error) = (Writes::default(), Vec::new(), None);
    for (created, result) in results {
        match result {
            Ok(w) => {
                total += w;
                made.extend(created);
            }
            Err(e) => error = Some(graver(error, e)),
        }
    }
    ctx.awaited.created(key, made, tokio::time::Instant::now());
    error.map_or(Ok(total), Err)
}

/// How often a new cluster's waiting Services look for its pods being Ready (a store lookup per
/// pod; the most this adds to the lag after the last pod is Ready).
const PODS_READY_POLL: Duration = Duration::from_millis(100);

/// Whether every pod the StatefulSets will have (`<name>-<ordinal>`, by their replicas) is `ready`.
fn all_pods_ready(statefulsets: &[StatefulSet], ready: impl Fn(&str) -> bool) -> bool {
    statefulsets.iter().all(|sts| {
        let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let replicas = usize::try_from(replicas).unwrap_or(0);
        (0..replicas).all(|i| ready(&names::pod(&sts.name_any(), i)))
    })
}

/// Of two errors of one reconcile's writes, the one that decides when it runs again: a failure
/// (with its backoff and the server's Retry-After) over a spent write budget, which would bring the
/// key back in milliseconds and retry a write the server had just refused; the first failure, or
/// the longer wait for budget.
fn graver(kept: Option<Error>, new: Error) -> Error {
    match (kept, new) {
        (None, new) => new,
        (Some(Error::Throttled(a)), Error::Throttled(b)) => Error::Throttled(a.max(b)),
        (Some(Error::Throttled(_)), new) => new,
        (Some(kept), _) => kept,
    }
}

/// Both results, or the graver error of the two: the finalizer patch refused with a Retry-After
/// while the children ran out of budget must come back after the Retry-After, not in milliseconds.
fn both<A, B>(a: Result<A, Error>, b: Result<B, Error>) -> Result<(A, B), Error> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(a), Err(b)) => Err(graver(Some(a), b)),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
    }
}

/// Patches our finalizer in unless the cluster has it, and returns the object to go on from (the
/// patch's answer: later writes need its resourceVersion, without waiting for the watch).
async fn add_finalizer(
    ctx: &Ctx,
    key: &ClusterKey,
    obj: Arc<DynamicObject>,
    version: &str,
    has_it: bool,
) -> Result<(Arc<DynamicObject>, String), Error> {
    if has_it {
        return Ok((obj, version.to_string()));
    }
    let mut with_ours = obj.finalizers().to_vec();
    with_ours.push(FINALIZER.to_string());
    let patched = apply::set_finalizers(ctx, &obj, with_ours).await?;
    ctx.superseded.wrote_over(key, version, tokio::time::Instant::now());
    let version = patched.resource_version().unwrap_or_default();
    Ok((Arc::new(patched), version))
}

/// One reconcile; the outcome tells the queue when to run the key again.
///
/// A reconcile that creates children waits for a writing turn (`slots`) without its worker slot,
/// and plans only once it has the turn: while it waits it holds its key, not its plan. (Planned
/// first, 200 new clusters of a burst waiting for their turn held about 14 MB of typed children and
/// 6 MB of futures: most of the operator's peak memory, measured with heaptrack.) The plan made in
/// the turn is from the caches as they are then, fresher than the one that asked for the turn.
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: &Ctx, slot: &Slot) -> Result<Outcome, Error> {
    match attempt(obj.clone(), ctx, Turn::Wait).await? {
        Step::Done(outcome) => Ok(outcome),
        Step::NeedsTurn => match slot.writing(|turn| attempt(obj, ctx, Turn::Held(turn))).await? {
            Step::Done(outcome) => Ok(outcome),
            // Not returned with the turn held; should it ever be, the key comes back soon.
            Step::NeedsTurn => Ok(Outcome::Throttled(Duration::from_millis(50))),
        },
    }
}

/// Whether this attempt holds a writing turn.
enum Turn {
    /// Not yet: an attempt that would create children stops before planning writes, asking for one.
    Wait,
    Held(Arc<slots::Turn>),
}

enum Step {
    Done(Outcome),
    NeedsTurn,
}

/// A cluster being deleted: its finalizer goes, and this process forgets it. Children are owned by
/// the cluster: the garbage collector removes them once it is gone.
async fn deleted(ctx: &Ctx, obj: &DynamicObject, key: &ClusterKey) -> Result<Outcome, Error> {
    let finalizers = obj.finalizers().to_vec();
    if finalizers.iter().any(|f| f == FINALIZER) {
        apply::set_finalizers(ctx, obj, finalizers.into_iter().filter(|f| f != FINALIZER).collect()).await?;
        info!(context = %ctx.context, cluster = %key.name, namespace = %key.namespace, "finalizer removed");
    }
    if let Some(prev) = previous_status(obj).readable() {
        ctx.guest.forget(&key.namespace, &prev.roles);
    }
    ctx.coalescer.forget(key);
    ctx.superseded.forget(key);
    ctx.awaited.forget(key);
    ctx.settled.forget(key);
    Ok(Outcome::Done)
}

/// Everything up to the plan; then, unless it must wait for a turn, the plan's writes.
async fn attempt(obj: Arc<DynamicObject>, ctx: &Ctx, turn: Turn) -> Result<Step, Error> {
    if !ctx.stores.ready()? {
        debug!(context = %ctx.context, "caches not filled yet; retrying in 250 ms");
        return Ok(Step::Done(Outcome::RequeueAfter(Duration::from_millis(250))));
    }
    let ns = obj.namespace().ok_or(Error::MissingNamespace)?;
    let name = obj.name_any();
    let key = ClusterKey {
        namespace: ns.clone(),
        name: name.clone(),
    };
    let version = obj.resource_version().unwrap_or_default();
    // Before anything is observed: what touches the key from here on voids a note (`Settled`).
    let epoch = ctx.settled.epoch(&key);
    if let Some(outcome) = own_version(ctx, &key, &version) {
        return Ok(Step::Done(outcome));
    }
    if obj.meta().deletion_timestamp.is_some() {
        return deleted(ctx, &obj, &key).await.map(Step::Done);
    }
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
    if ctx
        .awaited
        .waiting(&key, |id| observe::cached(ctx, &ns, id), tokio::time::Instant::now())
    {
        debug!(context = %ctx.context, cluster = %name, namespace = %ns, "children just created not in the cache yet; waiting for the watch");
        return Ok(Step::Done(Outcome::Throttled(Duration::from_millis(100))));
    }
    let cluster: KubeDirectorCluster = match observe::parse(&obj) {
        Ok(c) => c,
        Err(e) => {
            // Nothing is planned from a half-read object: without the recorded status, every child
            // would be created a second time.
            return block(ctx, &obj, "InvalidObject", format!("the object cannot be read: {e}"))
                .await
                .map(Step::Done);
        }
    };
    let settings = observe::settings(ctx);
    if obj.labels().contains_key(labels::RESTORING) {
        let (obj, _) = add_finalizer(ctx, &key, obj, &version, has_finalizer).await?;
        return super::restore::reconcile(ctx, &obj, &cluster, &settings)
            .await
            .map(Step::Done);
    }
    let app = match observe::find_app(ctx, &ns, &cluster.spec.app, cluster.spec.app_catalog) {
        Ok(app) => app,
        Err(message) => return block(ctx, &obj, "AppNotFound", message).await.map(Step::Done),
    };
    let classes = observe::storage_classes(ctx);
    let (targets, bad_refs) = connections::targets(cluster.spec.connections.as_ref(), &ctx.context, &ns);
    if !bad_refs.is_empty() {
        return block(ctx, &obj, "InvalidSpec", bad_refs.join("; "))
            .await
            .map(Step::Done);
    }
    // Connected objects not found are left out (and logged): the cluster works without them, and
    // their arrival changes the content hash, which tells the members (`--reconnect`).
    let (connected, missing) = ctx.hub.resolve(&targets, &settings.svc_domain_base);
    if !missing.is_empty() {
        debug!(context = %ctx.context, cluster = %name, namespace = %ns, ?missing, "connected objects not found");
    }
    let (mut observed, children) = observe::observe(&ctx.stores, &ns, &name);
    let prev = cluster.status.clone();
    if let Some(p) = &prev {
        ctx.guest.fill(&ns, &p.roles, &mut observed);
    }
    let uid = obj.uid().unwrap_or_default();
    let salt = token_salt();
    let input = ClusterInput {
        name: &name,
        namespace: &ns,
        uid: &uid,
        generation: obj.meta().generation,
        spec: &cluster.spec,
        prev: prev.as_ref(),
        app: &app,
        settings: &settings,
        classes: &classes,
        observed: &observed,
        connections: &connected,
        now: now(),
        token_salt: &salt,
    };
    let plan = plan::plan_cluster(&input);
    if !plan.errors.is_empty() {
        return block(ctx, &obj, "InvalidSpec", validate::describe(&plan.errors))
            .await
            .map(Step::Done);
    }

    if matches!(turn, Turn::Wait) && creates(&plan, &children) {
        return Ok(Step::NeedsTurn);
    }
    // Judged only for a status that will be written (planning twice costs a plan).
    let settles = if prev.as_ref() != Some(&plan.status) {
        settles(&input, &plan, &children, has_finalizer)
    } else {
        None
    };
    let done = Planned {
        obj,
        key,
        version,
        has_finalizer,
        ns,
        name,
        uid,
        prev,
        settings,
        children,
        settles,
        epoch,
    };
    write_plan(ctx, done, plan, &turn).await.map(Step::Done)
}

/// The cached version is one this replica wrote: with nothing left to do (`Settled`), or already
/// written over (the cache is behind: wait for the watch).
fn own_version(ctx: &Ctx, key: &ClusterKey, version: &str) -> Option<Outcome> {
    let (ns, name) = (&key.namespace, &key.name);
    if ctx.settled.take(key, version) {
        // Queued by our own write's event, which came before the write's answer (`Settled`).
        debug!(context = %ctx.context, cluster = %name, namespace = %ns, "the version we wrote leaves nothing to do");
        ctx.metrics
            .reconciles_settled
            .get_or_create(&ctx.metrics.cluster(&ctx.context))
            .inc();
        return Some(Outcome::RequeueAfter(RESYNC));
    }
    if ctx.superseded.is_stale(key, version, tokio::time::Instant::now()) {
        debug!(context = %ctx.context, cluster = %name, namespace = %ns, "cache still holds the version we wrote over; waiting for the watch");
        return Some(Outcome::Throttled(Duration::from_millis(50)));
    }
    None
}

/// What `attempt` read and decided, for the writes.
struct Planned {
    obj: Arc<DynamicObject>,
    key: ClusterKey,
    version: String,
    has_finalizer: bool,
    ns: String,
    name: String,
    uid: String,
    prev: Option<KubeDirectorClusterStatus>,
    settings: Settings,
    children: observe::Children,
    /// Nothing left to do once this status is stored (`settles`).
    settles: Option<KubeDirectorClusterStatus>,
    /// `Settled::epoch` before anything was observed.
    epoch: u64,
}

/// Whether the reconcile after this plan's status write would write nothing: the plan writes only
/// its status (every child as desired, nothing to delete, to own or to run in a member), no guest
/// result waits to be recorded, and the planner, run again on that status with the same children,
/// gives the same status and writes nothing either. A guest result is left out because recording
/// it changes what the next reconcile observes (`guest::Runner::fill`). Returns the status as the
/// next reconcile will read it back (through JSON: times are stored to the second), if so.
fn settles(
    input: &ClusterInput<'_>,
    plan: &plan::ClusterPlan,
    children: &observe::Children,
    has_finalizer: bool,
) -> Option<KubeDirectorClusterStatus> {
    let quiet = |p: &plan::ClusterPlan| {
        p.errors.is_empty()
            && p.guest_work.is_empty()
            && p.delete_services.is_empty()
            && p.delete_pvcs.is_empty()
            && !p
                .delete_statefulsets
                .iter()
                .any(|s| children.statefulsets.contains_key(s))
            && p.statefulsets.iter().all(|s| {
                children
                    .statefulsets
                    .get(&s.name_any())
                    .is_some_and(|c| apply::is_current_statefulset(s, c))
            })
            && p.headless.iter().chain(&p.member_services).all(|s| {
                children
                    .services
                    .get(&s.name_any())
                    .is_some_and(|c| apply::is_current(s, c))
            })
    };
    let o = input.observed;
    let no_guest_results = o.setups.is_empty() && o.notified.is_empty() && o.refreshed.is_empty();
    if !(has_finalizer && no_guest_results && children.unowned_pvcs.is_empty() && quiet(plan)) {
        return None;
    }
    let stored: KubeDirectorClusterStatus = serde_json::to_value(&plan.status)
        .and_then(serde_json::from_value)
        .ok()?;
    let again = plan::plan_cluster(&ClusterInput {
        prev: Some(&stored),
        now: input.now.clone(),
        ..*input
    });
    (again.status == stored && quiet(&again)).then_some(stored)
}

/// Whether the plan creates a child (a StatefulSet or Service the caches do not hold).
fn creates(plan: &plan::ClusterPlan, children: &observe::Children) -> bool {
    let new_service = plan
        .headless
        .iter()
        .chain(&plan.member_services)
        .any(|s| !children.services.contains_key(&s.name_any()));
    let new_statefulset = plan
        .statefulsets
        .iter()
        .any(|s| !children.statefulsets.contains_key(&s.name_any()));
    new_service || new_statefulset
}

/// The plan's writes: children (with the finalizer), deletions, claims, the status, then guest work.
async fn write_plan(ctx: &Ctx, done: Planned, mut plan: plan::ClusterPlan, turn: &Turn) -> Result<Outcome, Error> {
    let Planned {
        obj,
        key,
        version,
        has_finalizer,
        ns,
        name,
        uid,
        prev,
        settings,
        children,
        settles,
        epoch,
    } = done;
    // The finalizer goes out together with the first children, not a round trip ahead of them.
    let (applied, finalized) = futures::join!(
        apply_children(ctx, &ns, &plan, &children, &key, &uid, turn),
        add_finalizer(ctx, &key, obj, &version, has_finalizer),
    );
    let (mut writes, (obj, version)) = both(applied, finalized)?;
    for sts in &plan.delete_statefulsets {
        if children.statefulsets.contains_key(sts) {
            apply::delete_statefulset(ctx, &ns, sts, &mut writes).await?;
        }
    }
    for svc in &plan.delete_services {
        apply::delete_service(ctx, &ns, svc, &mut writes).await?;
    }
    if let Some(owner) = &plan.owner {
        for (pvc, version) in &children.unowned_pvcs {
            // Only claims of StatefulSets that keep them: the others' claims get their StatefulSet
            // as owner from the StatefulSet controller.
            let retained = names::pod_of_pvc(pvc).is_some_and(|pod| {
                children
                    .statefulsets
                    .iter()
                    .any(|(sts, state)| state.retains_claims && names::ordinal_of(sts, pod).is_some())
            });
            if retained && !plan.delete_pvcs.contains(pvc) {
                apply::own_pvc(ctx, &ns, pvc, version, owner, &mut writes).await?;
            }
        }
    }
    for pvc in &plan.delete_pvcs {
        apply::delete_pvc(ctx, &ns, pvc, &mut writes).await?;
    }

    let written = prev.as_ref() != Some(&plan.status);
    if let Some(wait) = plan::hold_first_status(prev.as_ref(), &plan, age_of(&obj), ctx.status_grace) {
        // Pod events bring the key back as the members come up; the wait bounds the hold.
        debug!(context = %ctx.context, cluster = %name, namespace = %ns, ?wait, "new cluster: first status held until configured");
        return Ok(Outcome::RequeueAfter(wait));
    }
    if written {
        // Status changes within the coalescing window of the last write wait and go out as one.
        let now = tokio::time::Instant::now();
        if let Err(wait) = ctx.coalescer.admit(&key, now) {
            ctx.metrics
                .writes_coalesced
                .get_or_create(&ctx.metrics.cluster(&ctx.context))
                .inc();
            return Ok(Outcome::Throttled(wait));
        }
        let written = apply::replace_status(ctx, &obj, &plan.status).await?;
        ctx.coalescer.wrote(&key, now);
        ctx.superseded.wrote_over(&key, &version, now);
        // The next reconcile would read back exactly this status (as the server stored it) and
        // find nothing to do: its watch event need not start one.
        let stored = observe::parse(&written)
            .ok()
            .and_then(|c: KubeDirectorCluster| c.status);
        if settles.is_some() && stored == settles {
            ctx.settled
                .note(&key, &written.resource_version().unwrap_or_default(), epoch);
        }
        let (before, after) = (prev.as_ref().and_then(|s| s.state), plan.status.state);
        let show = |s: Option<ClusterState>| {
            s.map(|s| format!("{s:?}").to_lowercase())
                .unwrap_or_else(|| "new".to_string())
        };
        if before != after {
            info!(context = %ctx.context, cluster = %name, namespace = %ns, from = %show(before), to = %show(after), "cluster state changed");
        }
        if before != after && ctx.events == EventLevel::All {
            // The reason is the new state: the event recorder folds events of one reason into a series,
            // which would hide every transition after the first.
            let reason = after
                .map(|s| format!("{s:?}"))
                .unwrap_or_else(|| "StateChanged".to_string());
            publish(
                ctx,
                &obj,
                EventType::Normal,
                &reason,
                format!("cluster state {} → {}", show(before), show(after)),
            )
            .await;
        }
    }
    super::restore::mirror(ctx, &obj, &plan.status, written, plan.owner.as_ref(), &settings).await?;
    // Guest commands start only from a status that is recorded (unchanged, or just written): a
    // notification queued in a status that was never written must not run, or it would run again once
    // queued for real. They report by putting the key back on the queue; the worker goes on.
    ctx.guest.submit(&key, std::mem::take(&mut plan.guest_work));
    debug!(context = %ctx.context, cluster = %name, namespace = %ns, applied = writes.applied, skipped = writes.skipped, deleted = writes.deleted, "reconciled");
    Ok(Outcome::RequeueAfter(RESYNC))
}

/// What the queue does after a failed reconcile.
pub fn outcome_of_error(key: &ClusterKey, error: &Error, ctx: &Ctx) -> Outcome {
    match error {
        Error::Throttled(wait) => Outcome::Throttled(*wait),
        Error::ClusterGone => {
            debug!(context = %ctx.context, cluster = %key.name, namespace = %key.namespace, "deleted while reconciling");
            Outcome::Done
        }
        e if e.is_conflict() => {
            debug!(context = %ctx.context, cluster = %key.name, namespace = %key.namespace, "stale view, retrying");
            Outcome::Failed { retry_after: None }
        }
        e if e.code() == Some(403) => {
            // Named apart: a missing RBAC rule never heals by retrying, an operator must grant it.
            warn!(context = %ctx.context, cluster = %key.name, namespace = %key.namespace, error = %e,
                "reconcile failed: permission denied; the operator's ServiceAccount lacks an RBAC rule (see the chart's ClusterRole)");
            Outcome::Failed { retry_after: None }
        }
        e if e.code() == Some(429) => {
            // Flow control, not a fault: counted in kubedirector_api_errors_total{code="429"}; a warning
            // per key and retry would flood the log for as long as the API server is overloaded.
            debug!(context = %ctx.context, cluster = %key.name, namespace = %key.namespace, retry_after = ?e.retry_after(), "API server asked to slow down");
            Outcome::Failed {
                retry_after: e.retry_after(),
            }
        }
        e => {
            warn!(context = %ctx.context, cluster = %key.name, namespace = %key.namespace, error = %e, "reconcile failed");
            Outcome::Failed {
                retry_after: e.retry_after(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_ready_when_every_ordinal_of_every_statefulset_is() {
        let sts = |name: &str, replicas: i32| StatefulSet {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::apps::v1::StatefulSetSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            ..Default::default()
        };
        let plan = [sts("kdss-a", 2), sts("kdss-b", 1), sts("kdss-empty", 0)];
        let ready = |names: &'static [&'static str]| move |n: &str| names.contains(&n);
        assert!(all_pods_ready(&plan, ready(&["kdss-a-0", "kdss-a-1", "kdss-b-0"])));
        assert!(
            !all_pods_ready(&plan, ready(&["kdss-a-0", "kdss-b-0"])),
            "kdss-a-1 is not Ready"
        );
        assert!(
            !all_pods_ready(&plan, ready(&["kdss-a-0", "kdss-a-1"])),
            "kdss-b-0 is not Ready"
        );
        assert!(
            all_pods_ready(&[sts("kdss-empty", 0)], ready(&[])),
            "no pods: nothing to wait for"
        );
    }

    #[test]
    fn a_refusal_decides_over_a_spent_budget_whichever_came_first() {
        let ms = Duration::from_millis;
        let e = graver(Some(Error::Throttled(ms(30))), Error::status(429));
        assert_eq!(e.code(), Some(429));
        let e = graver(Some(Error::status(429)), Error::Throttled(ms(30)));
        assert_eq!(e.code(), Some(429));
        let e = graver(Some(Error::status(429)), Error::status(500));
        assert_eq!(e.code(), Some(429), "the first failure stays");
        let e = graver(Some(Error::Throttled(ms(30))), Error::Throttled(ms(80)));
        assert!(matches!(e, Error::Throttled(d) if d == ms(80)));
    }

    #[test]
    fn a_refused_finalizer_patch_decides_over_children_out_of_budget() {
        // The children ran out of budget (the 429 emptied the bucket) while the finalizer patch was
        // refused: the key must wait for the refusal's Retry-After, not the budget's few ms.
        let ms = Duration::from_millis;
        let r = both::<(), ()>(Err(Error::Throttled(ms(30))), Err(Error::status(429)));
        assert_eq!(r.err().and_then(|e| e.code()), Some(429));
        let r = both::<(), ()>(Err(Error::status(429)), Ok(()));
        assert_eq!(r.err().and_then(|e| e.code()), Some(429));
        let r = both::<(), ()>(Ok(()), Err(Error::Throttled(ms(30))));
        assert!(matches!(r, Err(Error::Throttled(_))));
        assert!(both::<u8, u8>(Ok(1), Ok(2)).is_ok_and(|p| p == (1, 2)));
    }
}
