//! The shard manager of one replica: keeps its membership Lease fresh (the only Lease it renews: the
//! shards it holds stay held by that), acquires free shards up to its share (ending the membership
//! of a silent holder first), drains and releases the excess, and tells the drivers whether a key
//! may be reconciled right now.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::assign::{plan_moves, shard_of};
use super::lease::{self, Observer};
use super::record;
use crate::telemetry::metrics::Metrics;

#[derive(Clone, Debug)]
pub struct ShardOptions {
    pub shards: u32,
    pub replica: String,
    /// Namespace of the Leases in the home cluster.
    pub namespace: String,
    /// Others may take a shard after seeing its Lease unchanged this long.
    pub lease_duration: Duration,
    /// The holder stops acting this long after its last successful renew was sent (< lease_duration).
    pub renew_deadline: Duration,
    /// Renewals and membership checks happen this often (with jitter).
    pub retry_period: Duration,
    /// JSON lines of every reconcile and release, for overlap checks.
    pub record: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardConfigError {
    #[error("--shards must be at least 1")]
    NoShards,
    #[error(
        "--renew-deadline ({deadline:?}) must be shorter than --lease-duration ({lease:?}), or a replica could act after others took its shard"
    )]
    DeadlineTooLong { deadline: Duration, lease: Duration },
    #[error(
        "--retry-period ({retry:?}) must be shorter than --renew-deadline ({deadline:?}), or a healthy replica would lose its shards between renewals"
    )]
    RetryTooLong { retry: Duration, deadline: Duration },
}

impl ShardOptions {
    pub fn validate(&self) -> Result<(), ShardConfigError> {
        if self.shards == 0 {
            return Err(ShardConfigError::NoShards);
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(ShardConfigError::DeadlineTooLong {
                deadline: self.renew_deadline,
                lease: self.lease_duration,
            });
        }
        if self.retry_period >= self.renew_deadline {
            return Err(ShardConfigError::RetryTooLong {
                retry: self.retry_period,
                deadline: self.renew_deadline,
            });
        }
        Ok(())
    }
}

struct Held {
    /// Acting is allowed until then: the last successful membership renewal's send time + renew
    /// deadline.
    valid_until: Instant,
    draining: bool,
    /// Our copy from the acquisition (never renewed): the release is conditional on it.
    lease: Lease,
    /// When the previous holder released it (wall clock), for the handover-gap metric.
    released_at: Option<jiff::Timestamp>,
}

/// Shared between the manager and the drivers of every member cluster.
pub struct Shards {
    pub count: u32,
    pub replica: String,
    held: Mutex<BTreeMap<u32, Held>>,
    /// Send time of the last successful membership renewal + renew deadline: every held shard's
    /// validity (holders renew only their membership).
    membership_until: Mutex<Option<Instant>>,
    in_flight: Vec<AtomicUsize>,
    idle: Notify,
    acquired: broadcast::Sender<u32>,
    /// Bumped at every acquisition and release: what the child watches follow (`member::division`).
    changed: watch::Sender<u64>,
    record: Option<Mutex<File>>,
    metrics: Arc<Metrics>,
}

pub enum Act {
    Go(ActGuard),
    /// Held, but not renewed recently enough: try again shortly.
    Later,
    /// Another replica's (or being handed over).
    NotMine,
}

/// Proof that a reconcile of a key of `shard` may run; keeps the shard from being released until dropped.
pub struct ActGuard {
    shards: Arc<Shards>,
    pub shard: u32,
    pub valid_until: Instant,
}

impl Drop for ActGuard {
    fn drop(&mut self) {
        if self.shards.in_flight[self.shard as usize].fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shards.idle.notify_waiters();
        }
    }
}

impl Shards {
    pub fn new(options: &ShardOptions, metrics: Arc<Metrics>) -> std::io::Result<Arc<Shards>> {
        let record = match &options.record {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new().create(true).append(true).open(path)?,
            )),
            None => None,
        };
        Ok(Arc::new(Shards {
            count: options.shards,
            replica: options.replica.clone(),
            held: Mutex::new(BTreeMap::new()),
            membership_until: Mutex::new(None),
            in_flight: (0..options.shards).map(|_| AtomicUsize::new(0)).collect(),
            idle: Notify::new(),
            acquired: broadcast::channel(1024).0,
            changed: watch::channel(0).0,
            record,
            metrics,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn membership_until(&self) -> Option<Instant> {
        *self.membership_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A membership renewal sent at `sent` succeeded: every held shard may be acted on until
    /// `sent + deadline`, except those being handed over. A draining shard's validity must run
    /// out: its release waits at most a renew deadline for the reconciles in flight, which the
    /// lapse cuts off by then; extended, one would outlive the release and overlap the new owner's.
    fn renewed(&self, sent: Instant, deadline: Duration) {
        let until = sent + deadline;
        *self.membership_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
        for h in self.lock().values_mut().filter(|h| !h.draining) {
            h.valid_until = until;
        }
    }

    /// The membership was ended by another replica (or is gone): its shards may be taken already.
    /// Acting on them stopped at the renew deadline; they are forgotten without a release (the
    /// Leases may be someone else's now).
    fn membership_lost(&self) {
        *self.membership_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let lost: Vec<u32> = std::mem::take(&mut *self.lock()).into_keys().collect();
        if !lost.is_empty() {
            warn!(shards = ?lost, "membership ended by another replica: shards given up");
            // The child caches and the share of writes in flight follow the held set.
            self.note_change();
        }
        self.metrics.shards_held.set(0);
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn shard_of(&self, context: &str, namespace: &str, name: &str) -> u32 {
        shard_of(context, namespace, name, self.count)
    }

    /// Whether a key of `shard` may be reconciled now.
    pub fn begin(self: &Arc<Self>, shard: u32) -> Act {
        let held = self.lock();
        let Some(h) = held.get(&shard) else { return Act::NotMine };
        if h.draining {
            return Act::NotMine; // its new owner reconciles every key of it on acquisition
        }
        if Instant::now() >= h.valid_until {
            return Act::Later; // held, but the last renewal is too old: wait for the next one
        }
        self.in_flight[shard as usize].fetch_add(1, Ordering::SeqCst);
        Act::Go(ActGuard {
            shards: self.clone(),
            shard,
            valid_until: h.valid_until,
        })
    }

    /// Resolves when this replica may no longer act on `shard`: its validity (extended by every
    /// renewal) ran out, or the shard is gone. A reconcile racing this is cut off at that moment.
    pub async fn lapsed(&self, shard: u32) {
        loop {
            let until = self.lock().get(&shard).map(|h| h.valid_until);
            match until {
                Some(at) if Instant::now() < at => tokio::time::sleep_until(at).await,
                _ => return,
            }
        }
    }

    /// Shards newly acquired by this replica: their keys must be reconciled.
    pub fn subscribe(&self) -> broadcast::Receiver<u32> {
        self.acquired.subscribe()
    }

    /// Changes of the held set (acquisitions and releases), without what changed: read `held`.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn note_change(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn held(&self) -> Vec<u32> {
        self.lock().keys().copied().collect()
    }

    /// The first reconcile after an acquisition measures the handover gap (release → now).
    pub fn note_reconcile(&self, shard: u32) {
        let released = self.lock().get_mut(&shard).and_then(|h| h.released_at.take());
        if let Some(at) = released {
            let gap = jiff::Timestamp::now().duration_since(at).as_secs_f64();
            self.metrics.shard_handover_gap.observe(gap.max(0.0));
        }
    }

    fn record(&self, entry: &record::Entry) {
        if let Some(file) = &self.record
            && let Ok(line) = serde_json::to_string(entry)
        {
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(f, "{line}");
        }
    }

    pub fn record_reconcile(&self, key: &str, shard: u32, start: SystemTime, end: SystemTime) {
        self.record(&record::Entry::Reconcile(record::Reconcile {
            key: key.to_string(),
            replica: self.replica.clone(),
            shard,
            start: record::micros(start),
            end: record::micros(end),
        }));
    }

    async fn wait_idle(&self, shard: u32, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.in_flight[shard as usize].load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            let notified = self.idle.notified();
            if self.in_flight[shard as usize].load(Ordering::SeqCst) == 0 {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
}

fn jittered(d: Duration, unit: f64) -> Duration {
    d.mul_f64(0.8 + 0.4 * unit)
}

fn unit_random() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

/// Releases `shard` after its in-flight reconciles finish. `release_after` bounds the wait: past the
/// renew deadline the reconciles are cut off anyway.
async fn drain_and_release(shards: &Arc<Shards>, api: &Api<Lease>, shard: u32, options: &ShardOptions) {
    shards.wait_idle(shard, options.renew_deadline).await;
    let lease = shards.lock().get(&shard).map(|h| h.lease.clone());
    if let Some(lease) = lease {
        match lease::replace(api, &lease, None, options.lease_duration, true).await {
            Ok(Some(_)) => info!(shard, "shard released"),
            Ok(None) => debug!(shard, "shard changed hands before release"),
            Err(e) => warn!(shard, error = %e, "releasing shard failed; the next round releases it"),
        }
    }
    shards.lock().remove(&shard);
    shards.note_change();
    shards.metrics.shard_releases.inc();
    shards.metrics.shards_held.set(shards.lock().len() as i64);
    shards.record(&record::Entry::Release(record::Release {
        replica: shards.replica.clone(),
        shard,
        at: record::micros(SystemTime::now()),
    }));
}

/// Runs until `shutdown`; then hands every shard over (drain, release) and leaves the membership.
pub async fn run(
    shards: Arc<Shards>,
    client: Client,
    options: ShardOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    options.validate()?;
    let api: Api<Lease> = Api::namespaced(client, &options.namespace);
    let (store, changed, watch) = watch_leases(&api);
    wait_ready(&store).await;
    info!(replica = %options.replica, shards = options.shards, lease = ?options.lease_duration, deadline = ?options.renew_deadline, "shard manager started");

    let mut manager = Manager::new(shards, api, options);
    tokio::pin!(shutdown);
    loop {
        let wake = manager.round(&store).await;
        // Sleep until the next renewal, the next moment a lease of someone else could expire, or a
        // lease changes (watch).
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(wake.max(Instant::now() + Duration::from_millis(20))) => {}
            _ = changed.notified() => {}
        }
    }

    manager.hand_over().await;
    watch.abort();
    Ok(())
}

/// The cache of the labelled Leases (shards and memberships), and a notification on every change it
/// sees: a round runs on each one.
fn watch_leases(api: &Api<Lease>) -> (Store<Lease>, Arc<Notify>, tokio::task::JoinHandle<()>) {
    let (store, writer) = reflector::store::<Lease>();
    let changed = Arc::new(Notify::new());
    let watch = {
        let changed = changed.clone();
        let config = watcher::Config::default().labels(&format!("{}=true", lease::LABEL));
        let stream = reflector::reflector(writer, watcher(api.clone(), config))
            .default_backoff()
            .touched_objects();
        tokio::spawn(stream.for_each(move |_| {
            changed.notify_one();
            async {}
        }))
    };
    (store, changed, watch)
}

/// What the manager carries from one round to the next.
struct Manager {
    shards: Arc<Shards>,
    api: Api<Lease>,
    options: ShardOptions,
    me: String,
    /// The name of our membership Lease.
    membership: String,
    /// Our copy from the last successful renewal (or none: read from the cache next time).
    my_membership: Option<Lease>,
    observer: Observer,
    /// Live replicas of another shard protocol seen last round (logged when it changes).
    foreign: Vec<String>,
    last_renew: Instant,
}

impl Manager {
    fn new(shards: Arc<Shards>, api: Api<Lease>, options: ShardOptions) -> Manager {
        let me = options.replica.clone();
        let membership = lease::replica_lease(&me);
        let last_renew = Instant::now() - options.retry_period * 2;
        Manager {
            shards,
            api,
            options,
            me,
            membership,
            my_membership: None,
            observer: Observer::default(),
            foreign: Vec::new(),
            last_renew,
        }
    }

    /// One round: renews when due, then drains, releases and acquires shards by the plan. Returns
    /// when the next round is due at the latest.
    async fn round(&mut self, store: &Store<Lease>) -> Instant {
        let now = Instant::now();
        let leases = store.state();
        for l in &leases {
            self.observer.observe(l, now);
        }
        // Renewals (membership and held shards) when due, not on every wake-up.
        if now.duration_since(self.last_renew) >= jittered(self.options.retry_period, unit_random()) {
            self.last_renew = now;
            self.renew(&leases).await;
        }
        let by_name = ByName::of(&leases);
        // A live replica of another shard protocol puts clusters in other shards: hold nothing
        // (hand every shard over) until it is gone.
        let foreign = lease::foreign_replicas(
            leases.iter().map(|l| l.as_ref()),
            &self.me,
            &self.observer,
            self.options.lease_duration,
            now,
        );
        if !foreign.is_empty() {
            if foreign != self.foreign {
                warn!(replicas = ?foreign, protocol = super::assign::PROTOCOL, "replicas of another shard protocol are live: this one holds no shard until they are gone");
            }
            self.foreign = foreign;
            self.start_drains(self.shards.held());
            return self.next_wake(&leases, now);
        }
        self.foreign.clear();
        let live = self.live_replicas(&leases, now);
        let mine_in_memory = self.shards.held();
        let holders = self.holders(&by_name, &mine_in_memory, now);
        let moves = plan_moves(&self.me, &live, &holders, self.options.shards);
        self.start_drains(moves.release);
        self.release_orphans(&by_name, &mine_in_memory, &moves.acquire).await;
        // Shards of replicas gone silent are taken only once their membership is ended (conditional:
        // a replica that renewed after all keeps them), one write per such replica.
        let takeable = end_memberships(&self.api, &self.me, &moves.acquire, &by_name, &self.options).await;
        // Concurrently: a joining replica's whole share in one round trip.
        let acquisitions = moves.acquire.into_iter().filter(|s| takeable.contains(s)).map(|s| {
            acquire(
                &self.shards,
                &self.api,
                by_name.get(&lease::shard_lease(s)).cloned(),
                s,
                &self.options,
            )
        });
        futures::future::join_all(acquisitions).await;
        self.shards.metrics.shards_held.set(self.shards.lock().len() as i64);
        self.next_wake(&leases, now)
    }

    /// Renews our membership (the one from the cache if we have no copy): the validity of every
    /// held shard follows it.
    async fn renew(&mut self, leases: &[Arc<Lease>]) {
        let sent = Instant::now();
        let current = self.my_membership.take().or_else(|| {
            leases
                .iter()
                .find(|l| l.name_any() == self.membership)
                .map(|l| l.as_ref().clone())
        });
        self.my_membership =
            match renew_membership(&self.api, current.as_ref(), &self.membership, &self.me, &self.options).await {
                Renewal::Renewed(l) => {
                    self.shards.renewed(sent, self.options.renew_deadline);
                    Some(*l)
                }
                Renewal::Lost => {
                    self.shards.membership_lost();
                    None // re-read from the cache next round, and renewed from there
                }
                Renewal::Failed => current,
            };
    }

    /// The replicas the shards are shared among: those with a live membership, and this one.
    fn live_replicas(&self, leases: &[Arc<Lease>], now: Instant) -> Vec<String> {
        let mut live: Vec<String> = leases
            .iter()
            .filter(|l| lease::is_membership(l))
            .filter_map(|l| {
                self.observer
                    .live_holder(l, self.options.lease_duration, now)
                    .map(str::to_string)
            })
            .collect();
        if !live.contains(&self.me) {
            live.push(self.me.clone());
        }
        live.sort();
        live.dedup();
        live
    }

    /// The holder of every held shard, by its Lease and its holder's membership, and ours by memory.
    fn holders(&self, by_name: &ByName<'_>, mine_in_memory: &[u32], now: Instant) -> BTreeMap<u32, String> {
        let mut holders = BTreeMap::new();
        for s in 0..self.options.shards {
            let Some(l) = by_name.get(&lease::shard_lease(s)) else {
                continue;
            };
            let member = lease::holder(l).and_then(|h| by_name.get(&lease::replica_lease(h)));
            if let Some(h) = lease::shard_holder(l, member, &self.observer, self.options.lease_duration, now) {
                // Held under our id by a previous run of this replica (same pod name after a
                // restart): free for us to adopt, conditionally, like any other acquisition.
                if h == self.me && !mine_in_memory.contains(&s) {
                    continue;
                }
                holders.insert(s, h.to_string());
            }
        }
        for s in self.shards.held() {
            holders.insert(s, self.me.clone());
        }
        holders
    }

    /// Marks each shard of `release` draining and hands it over in the background; one already
    /// draining has its handover running.
    fn start_drains(&self, release: Vec<u32>) {
        for s in release {
            let start_drain = self
                .shards
                .lock()
                .get_mut(&s)
                .map(|h| !std::mem::replace(&mut h.draining, true))
                .unwrap_or(false);
            if start_drain {
                self.spawn_drain_and_release(s);
            }
        }
    }

    /// Hands shard `s` over (drain, release) in a task of its own.
    fn spawn_drain_and_release(&self, s: u32) -> tokio::task::JoinHandle<()> {
        let (shards, api, options) = (self.shards.clone(), self.api.clone(), self.options.clone());
        tokio::spawn(async move { drain_and_release(&shards, &api, s, &options).await })
    }

    /// Releases the shard Leases in our name that this process neither holds nor acquires now.
    async fn release_orphans(&self, by_name: &ByName<'_>, mine_in_memory: &[u32], acquire: &[u32]) {
        // Leases in our name that this process does not hold and does not take now: a release that
        // failed, or what a previous run (or a lost membership) left. Nobody else takes a shard of a
        // live replica, and shard Leases never expire by themselves: released here, or stranded.
        let orphans: Vec<&Lease> = (0..self.options.shards)
            .filter(|s| !mine_in_memory.contains(s) && !acquire.contains(s))
            .filter_map(|s| by_name.get(&lease::shard_lease(s)))
            .filter(|l| lease::holder(l) == Some(self.me.as_str()))
            .collect();
        for l in orphans {
            match bounded(
                self.options.renew_deadline,
                lease::replace(&self.api, l, None, self.options.lease_duration, true),
            )
            .await
            {
                Ok(Some(_)) => info!(lease = %l.name_any(), "released a shard Lease left in our name"),
                Ok(None) => {} // already changed: our cache was behind
                Err(e) => warn!(lease = %l.name_any(), error = %e, "releasing a shard Lease left in our name failed"),
            }
        }
    }

    /// The next renewal, or just after the next moment a lease of someone else could expire.
    fn next_wake(&self, leases: &[Arc<Lease>], now: Instant) -> Instant {
        let next_expiry = leases
            .iter()
            .filter_map(|l| self.observer.expires_at(l, self.options.lease_duration))
            .filter(|at| *at > now)
            .min();
        let mut wake = self.last_renew + self.options.retry_period;
        if let Some(at) = next_expiry {
            wake = wake.min(at + Duration::from_millis(10));
        }
        wake
    }

    /// After shutdown: every held shard drained and released (concurrently), then the membership
    /// left.
    async fn hand_over(self) {
        info!(replica = %self.me, "handing over every shard");
        let mut handovers = Vec::new();
        for s in self.shards.held() {
            if let Some(h) = self.shards.lock().get_mut(&s) {
                h.draining = true;
            }
            handovers.push(self.spawn_drain_and_release(s));
        }
        for h in handovers {
            let _ = h.await;
        }
        if let Some(m) = self.my_membership {
            let _ = lease::replace(&self.api, &m, None, self.options.lease_duration, true).await;
        }
    }
}

async fn wait_ready(store: &Store<Lease>) {
    loop {
        if futures::FutureExt::now_or_never(store.wait_until_ready()).is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

enum Renewal {
    Renewed(Box<Lease>),
    /// Changed under us (ended by a replica that took our shards) or deleted.
    Lost,
    /// No answer, or an error: acting stops by itself at the renew deadline.
    Failed,
}

async fn renew_membership(
    api: &Api<Lease>,
    current: Option<&Lease>,
    name: &str,
    me: &str,
    options: &ShardOptions,
) -> Renewal {
    let (duration, limit) = (options.lease_duration, options.renew_deadline);
    let result = match current {
        None => bounded(limit, lease::create(api, name, Some(me), duration)).await,
        Some(l) => bounded(limit, lease::replace(api, l, Some(me), duration, false)).await,
    };
    match result {
        Ok(Some(l)) => Renewal::Renewed(Box::new(l)),
        // A tombstone where we found none, or a newer version than ours.
        Ok(None) => Renewal::Lost,
        Err(LeaseCallError::Api(kube::Error::Api(s))) if s.code == 404 => Renewal::Lost,
        Err(e) => {
            warn!(error = %e, "membership renewal failed");
            Renewal::Failed
        }
    }
}

/// The Leases of one round by name: a round looks each shard's Lease and its holder's membership
/// up, 2 × shards lookups (a linear search with a copy each cost an idle replica most of its CPU).
struct ByName<'a>(std::collections::HashMap<&'a str, &'a Lease>);

impl<'a> ByName<'a> {
    fn of(leases: &'a [Arc<Lease>]) -> Self {
        Self(
            leases
                .iter()
                .filter_map(|l| Some((l.metadata.name.as_deref()?, l.as_ref())))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&'a Lease> {
        self.0.get(name).copied()
    }
}

/// Of the shards to acquire, those that may be taken now: free ones, and those of holders whose
/// membership this call ended. A holder that renewed meanwhile keeps its shards.
async fn end_memberships(
    api: &Api<Lease>,
    me: &str,
    wanted: &[u32],
    by_name: &ByName<'_>,
    options: &ShardOptions,
) -> std::collections::BTreeSet<u32> {
    let mut silent: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut takeable = std::collections::BTreeSet::new();
    for &s in wanted {
        match by_name.get(&lease::shard_lease(s)).and_then(lease::holder) {
            // Ours from a previous run of this replica: our own membership is being renewed.
            Some(h) if h != me => silent.entry(h.to_string()).or_default().push(s),
            _ => {
                takeable.insert(s);
            }
        }
    }
    for (holder, held) in silent {
        let seen = by_name.get(&lease::replica_lease(&holder));
        let ended = lease::end_membership(api, seen, &holder, options.lease_duration);
        match bounded(options.renew_deadline, ended).await {
            Ok(true) => {
                info!(replica = %holder, shards = ?held, "membership of a silent replica ended");
                takeable.extend(held);
            }
            Ok(false) => debug!(replica = %holder, "a silent replica renewed after all"),
            Err(e) => warn!(replica = %holder, error = %e, "ending a silent replica's membership failed"),
        }
    }
    takeable
}

/// `request`, or a timeout error once `limit` has passed.
async fn bounded<T>(
    limit: Duration,
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaseCallError> {
    match tokio::time::timeout(limit, request).await {
        Ok(r) => r.map_err(LeaseCallError::Api),
        Err(_) => Err(LeaseCallError::Timeout(limit)),
    }
}

#[derive(Debug, thiserror::Error)]
enum LeaseCallError {
    #[error(transparent)]
    Api(kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

async fn acquire(shards: &Arc<Shards>, api: &Api<Lease>, current: Option<Lease>, s: u32, options: &ShardOptions) {
    // A shard is acted on only while our membership is renewed: others judge it held by that.
    let Some(valid_until) = shards.membership_until().filter(|at| *at > Instant::now()) else {
        return;
    };
    let released_at = current
        .as_ref()
        .and_then(|l| l.metadata.annotations.as_ref())
        .and_then(|a| a.get(lease::RELEASED_AT))
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let result = match &current {
        None => {
            let name = lease::shard_lease(s);
            let create = lease::create(api, &name, Some(&options.replica), options.lease_duration);
            bounded(options.renew_deadline, create).await
        }
        Some(l) => {
            let replace = lease::replace(api, l, Some(&options.replica), options.lease_duration, false);
            bounded(options.renew_deadline, replace).await
        }
    };
    match result {
        Ok(Some(l)) => {
            shards.lock().insert(
                s,
                Held {
                    valid_until,
                    draining: false,
                    lease: l,
                    released_at,
                },
            );
            shards.metrics.shard_acquisitions.inc();
            info!(shard = s, "shard acquired");
            shards.note_change();
            let _ = shards.acquired.send(s);
        }
        Ok(None) => debug!(shard = s, "lost the race for a shard"),
        Err(e) => warn!(shard = s, error = %e, "acquiring shard failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ShardOptions {
        ShardOptions {
            shards: 4,
            replica: "r0".to_string(),
            namespace: "ns".to_string(),
            lease_duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(7),
            retry_period: Duration::from_secs(2),
            record: None,
        }
    }

    fn hold(shards: &Shards, shard: u32, until: Instant, draining: bool) {
        shards.lock().insert(
            shard,
            Held {
                valid_until: until,
                draining,
                lease: Lease::default(),
                released_at: None,
            },
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_extends_every_held_shard_but_the_ones_being_handed_over() {
        let shards = Shards::new(&options(), Arc::new(Metrics::new())).expect("shards");
        let t0 = Instant::now();
        hold(&shards, 0, t0, false);
        hold(&shards, 1, t0, true);
        let sent = t0 + Duration::from_secs(1);
        shards.renewed(sent, Duration::from_secs(7));
        let until = |s| shards.lock().get(&s).map(|h| h.valid_until);
        assert_eq!(until(0), Some(sent + Duration::from_secs(7)));
        assert_eq!(
            until(1),
            Some(t0),
            "a draining shard's validity runs out, so its release never overlaps a reconcile"
        );
        assert_eq!(shards.membership_until(), Some(sent + Duration::from_secs(7)));
        // Ended by another replica: nothing is held or acquirable until the next renewal.
        shards.membership_lost();
        assert!(shards.held().is_empty());
        assert_eq!(shards.membership_until(), None);
        assert!(matches!(shards.begin(0), Act::NotMine));
    }
}
