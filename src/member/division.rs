//! Caches divided by shard: with sharding on, a member's child caches (StatefulSets, Services, Pods,
//! PVCs) hold only the children of clusters whose shard this replica holds, so that three replicas
//! hold the fleet's children once between them, not three times.
//!
//! How: every child event is judged by the shard of the cluster its label names (`shard_of`, the
//! same function the shard gate uses); objects of shards not held are dropped before the store and
//! the index. When the set of held shards changes, every child watch is restarted: its new list
//! holds exactly the shards held then (the reflector swaps the store at the list's end), and the
//! objects of released shards are gone from it.
//!
//! Handover safety: a key of a shard acquired at generation `g` may be reconciled only once every
//! child kind has finished a list started at generation `g` or later (`Ledger::ready`); until then
//! the worker puts it back (`worker`), and the acquisition trigger waits before it queues the
//! shard's keys (`triggers::acquired`). A reconcile is never planned from a cache that is missing a
//! shard's children (it would take them for absent and create them again).
//!
//! Selected by the API server: every child written here carries its cluster's bucket
//! (`kubedirector.hpe.com/shard-bucket`), and a shard is a set of buckets (`shard::assign`), so each
//! child watch asks only for the held shards' buckets. Children without the label (pods and PVCs of
//! a StatefulSet made by KubeDirector or before the label, whose template is never changed: that
//! would roll every pod) come from a second watch of the unlabelled ones, filtered here; both feed
//! one store (`union`). The filter still runs on both: between a release and the restart that drops
//! it from the selector, the old selection's events are dropped here. The KubeDirectorClusters stay
//! watched in full: they are few and small, and every replica needs them to map keys to shards and
//! hand shards over.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use kube::ResourceExt;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::model::labels;
use crate::shard::assign::Buckets;
use crate::shard::manager::Shards;
use crate::telemetry::metrics::KindLabels;

use super::union::union;

/// The child kinds whose caches are divided (each reports its lists by index).
pub(crate) const KINDS: usize = 4;

/// The kinds by index, as metrics name them.
const KIND_NAMES: [&str; KINDS] = ["StatefulSet", "Service", "Pod", "PersistentVolumeClaim"];

/// The held set is compared at each of its changes, and at least this often (a safety net: the
/// change signal is what it follows; a 100 ms poll cost an idle replica a tenth of its CPU).
const POLL: Duration = Duration::from_secs(5);

/// A restart waits this long for more changes (a replica acquires its shards one Lease at a time):
/// one list for a round of acquisitions, not one per shard.
const SETTLE: Duration = Duration::from_millis(50);

/// Which kind a divided stream is, and the generation its current watch was started at.
pub(crate) struct Tag {
    kind: usize,
    started: Arc<AtomicU64>,
}

/// The pure bookkeeping: which shards the caches admit, since which generation, and which
/// generation each kind's last complete list was started at.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    generation: u64,
    /// Admitted shards and the generation their objects' lists start at.
    since: BTreeMap<u32, u64>,
    listed: [u64; KINDS],
    /// Released shards' objects are still in the caches (see `update`).
    purge: bool,
}

impl Ledger {
    /// The shards held now. Returns the new generation if the watches must restart: a shard was
    /// added, or only released with none waiting (to drop their objects). A release while an
    /// acquired shard waits for its lists leaves the restart to that wait's end (`listed`):
    /// restarted now, the lists it waits for would start over.
    pub fn update(&mut self, held: &BTreeSet<u32>) -> Option<u64> {
        let known: BTreeSet<u32> = self.since.keys().copied().collect();
        if &known == held {
            return None;
        }
        let added = held.iter().any(|s| !self.since.contains_key(s));
        self.since.retain(|s, _| held.contains(s));
        if !added && self.waiting() {
            self.purge = true;
            return None;
        }
        Some(self.next(held))
    }

    /// A new generation: the shards of `held` not admitted yet are admitted from it.
    fn next(&mut self, held: &BTreeSet<u32>) -> u64 {
        self.purge = false;
        self.generation += 1;
        let g = self.generation;
        for s in held {
            self.since.entry(*s).or_insert(g);
        }
        g
    }

    /// Whether an admitted shard still waits for its lists.
    fn waiting(&self) -> bool {
        self.since.keys().any(|s| !self.ready(*s))
    }

    /// Whether the caches keep objects of `shard`.
    pub fn admits(&self, shard: u32) -> bool {
        self.since.contains_key(&shard)
    }

    /// Kind `kind` finished a list started at `generation`. Returns a new generation if a release
    /// was waiting for this (the watches restart, to drop the released shards' objects).
    pub fn listed(&mut self, kind: usize, generation: u64) -> Option<u64> {
        if let Some(l) = self.listed.get_mut(kind) {
            *l = (*l).max(generation);
        }
        if self.purge && !self.waiting() {
            let held: BTreeSet<u32> = self.since.keys().copied().collect();
            return Some(self.next(&held));
        }
        None
    }

    /// Whether every kind has finished a list started at `generation` (or later).
    pub fn all_listed(&self, generation: u64) -> bool {
        self.listed.iter().all(|l| *l >= generation)
    }

    /// Whether every child of `shard` is in the caches: admitted, and every kind listed since.
    pub fn ready(&self, shard: u32) -> bool {
        self.since
            .get(&shard)
            .is_some_and(|g| self.listed.iter().all(|l| l >= g))
    }
}

/// One member's division: the ledger, the restart signal of its child watches, and the shards.
pub(crate) struct Division {
    shards: Arc<Shards>,
    context: String,
    ledger: Mutex<Ledger>,
    restart: watch::Sender<u64>,
    /// Bumped at every list's end, so that waiters look again.
    progress: watch::Sender<u64>,
}

impl Division {
    pub fn new(shards: Arc<Shards>, context: &str) -> Arc<Self> {
        Arc::new(Division {
            shards,
            context: context.to_string(),
            ledger: Mutex::new(Ledger::default()),
            restart: watch::channel(0).0,
            progress: watch::channel(0).0,
        })
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic mid-update leaves at worst a key waiting longer; the lock is still usable.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shard_of(&self, namespace: &str, cluster: &str) -> u32 {
        self.shards.shard_of(&self.context, namespace, cluster)
    }

    /// Whether the caches keep `child` (deletions always pass: a store never keeps a deleted object).
    fn keeps<K: ResourceExt>(&self, child: &K) -> bool {
        match child.labels().get(labels::CLUSTER) {
            Some(cluster) => {
                let shard = self.shard_of(&child.namespace().unwrap_or_default(), cluster);
                self.ledger().admits(shard)
            }
            None => false,
        }
    }

    /// The buckets of the admitted shards (what the child watches ask the API server for).
    fn buckets(&self) -> Buckets {
        let admitted: BTreeSet<u32> = self.ledger().since.keys().copied().collect();
        Buckets::of(&self.context, &admitted, self.shards.count)
    }

    /// Counts an event of kind `kind` dropped by `keeps`.
    fn dropped(&self, kind: usize) {
        let labels = KindLabels {
            context: self.context.clone(),
            kind: KIND_NAMES.get(kind).copied().unwrap_or("unknown").to_string(),
        };
        self.shards.metrics().child_events_dropped.get_or_create(&labels).inc();
    }

    /// Whether a key of `shard` may be reconciled from these caches.
    pub fn ready(&self, shard: u32) -> bool {
        self.ledger().ready(shard)
    }

    /// Waits until `shard` is ready, or is no longer held (then returns false).
    pub async fn wait_ready(&self, shard: u32) -> bool {
        let mut progress = self.progress.subscribe();
        let mut changes = self.shards.changes();
        loop {
            changes.borrow_and_update();
            if self.ready(shard) {
                return true;
            }
            if !self.shards.held().contains(&shard) {
                return false;
            }
            // A list's end, a release, or the poll (the senders live as long as `self`).
            tokio::select! {
                _ = progress.changed() => {}
                _ = changes.changed() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Follows the held shards for as long as the member runs, at each acquisition (a new owner's
    /// keys wait for the lists) and release.
    pub async fn follow(self: Arc<Self>) {
        let mut changes = self.shards.changes();
        loop {
            // Seen before the read: a change after it wakes the wait below.
            changes.borrow_and_update();
            let held: BTreeSet<u32> = self.shards.held().into_iter().collect();
            let changed = self.ledger().update(&held);
            if let Some(g) = changed {
                tracing::info!(context = %self.context, generation = g, shards = held.len(), "held shards changed: child caches list again");
                self.restart.send_replace(g);
            }
            match tokio::time::timeout(POLL, changes.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                // The registry is gone (shutting down): poll, never spin.
                Ok(Err(_)) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// The watch events of child kind `kind`, restarted at every change of the held shards: the union
    /// of `watch(selector)` for the held shards' buckets and for the children without a bucket,
    /// filtered to the held shards; and the tag its list ends are entered with (`listed`).
    pub fn divide<K, S>(
        self: &Arc<Self>,
        kind: usize,
        watch: impl Fn(String) -> S + Clone + Send + Sync + 'static,
    ) -> (BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>, Tag)
    where
        K: ResourceExt + Send + 'static,
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let started = Arc::new(AtomicU64::new(0));
        let ends_list = |r: &Result<watcher::Event<K>, watcher::Error>| matches!(r, Ok(watcher::Event::InitDone));
        let me = self.clone();
        // The buckets are read at each restart, after its generation (`restarting`): a list tagged
        // with generation g selects every shard admitted by g that is still held.
        let make = move || {
            let selected = me.buckets().selector();
            let watch = watch.clone();
            union(move || {
                let labelled = match &selected {
                    Some(buckets) => watch(format!("{},{buckets}", labels::CLUSTER)).boxed(),
                    None => nothing_listed(),
                };
                let unlabelled = watch(format!("{},!{}", labels::CLUSTER, labels::SHARD_BUCKET)).boxed();
                (labelled, unlabelled)
            })
        };
        let events = restarting(make, ends_list, self.restart.subscribe(), started.clone());
        let me = self.clone();
        let events = events
            .filter(move |r| {
                let keep = match r {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => me.keeps(o),
                    _ => true,
                };
                if !keep {
                    me.dropped(kind);
                }
                futures::future::ready(keep)
            })
            .boxed();
        (events, Tag { kind, started })
    }

    /// A list of `tag`'s kind ended, and is in the store and the index (`cache::children` calls
    /// this after both have applied the event, so a key found ready never meets the old store).
    pub fn listed(&self, tag: &Tag) {
        let generation = tag.started.load(Ordering::SeqCst);
        let (done, purge) = {
            let mut ledger = self.ledger();
            let before = ledger.all_listed(generation);
            let purge = ledger.listed(tag.kind, generation);
            (!before && ledger.all_listed(generation), purge)
        };
        if done {
            tracing::info!(context = %self.context, generation, "child caches listed for the held shards");
        }
        if let Some(g) = purge {
            tracing::info!(context = %self.context, generation = g, "child caches list again without the released shards");
            self.restart.send_replace(g);
        }
        self.progress.send_modify(|p| *p += 1);
    }
}

/// A watch of no objects: a list that ends at once, and no events after it.
fn nothing_listed<K: Send + 'static>() -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>> {
    futures::stream::iter([Ok(watcher::Event::Init), Ok(watcher::Event::InitDone)])
        .chain(futures::stream::pending())
        .boxed()
}

/// The items of `make()`, a new one made (and the old one dropped) whenever `restarts` changes;
/// `started` holds the generation the current one was made at. Changes that come within `SETTLE`
/// of each other make one restart. A stream still listing (until an item `ends_list`) is cut by a
/// change once: the stream that replaces a cut one lists to its end before the next restart. Under
/// a round of handovers, a list abandoned at every change was made again and again by the API
/// server (every child of the member, each time), and the lists that finished came later, not
/// sooner; cut once, a round of changes costs the API server at most two lists.
///
/// Why cut at all, at any age: a failover takes a dead replica's shards in a round or two, a few
/// hundred ms to a second or more apart, while lists of a busy member take 0.5–4 s. Say the first
/// round's list starts at t1 and the second round comes at t2, before that list ends (t2 < t1 + L).
/// Finished first, the second round's shards are served at t1 + 2L; cut, every shard is served at
/// t2 + L, which is always sooner. Only the first round's shards wait longer (t2 − t1 more). std12
/// measured 2.8 s from acquisition to first reconcile without any cut; std14's failover under load
/// had its maximum (13.19 s) in a second round 1.08 s after the first, just past the first second
/// of a list, within which alone a list could be cut before.
pub(crate) fn restarting<T, S>(
    make: impl Fn() -> S + Send + 'static,
    ends_list: impl Fn(&T) -> bool + Send + 'static,
    restarts: watch::Receiver<u64>,
    started: Arc<AtomicU64>,
) -> BoxStream<'static, T>
where
    T: Send + 'static,
    S: Stream<Item = T> + Send + 'static,
{
    struct State<T, F, E> {
        current: Option<BoxStream<'static, T>>,
        restarts: Option<watch::Receiver<u64>>,
        make: F,
        ends_list: E,
        started: Arc<AtomicU64>,
        /// The current stream has not finished its first list.
        listing: bool,
        /// A change came: restart once the list is done (or now, if it may be cut).
        pending: bool,
        /// The current stream's list may be cut short: it does not replace a list cut short.
        may_cut: bool,
    }
    impl<T, F, E> State<T, F, E> {
        fn cuttable(&self) -> bool {
            self.listing && self.may_cut
        }
    }
    let state = State {
        current: None,
        restarts: Some(restarts),
        make,
        ends_list,
        started,
        listing: false,
        pending: false,
        may_cut: true,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.pending && (!st.listing || st.cuttable()) {
                tokio::time::sleep(SETTLE).await;
                st.current = None;
            }
            if st.current.is_none() {
                let g = st.restarts.as_mut().map(|r| *r.borrow_and_update()).unwrap_or(0);
                st.started.store(g, Ordering::SeqCst);
                st.current = Some((st.make)().boxed());
                // Replacing a list cut short: this one lists to its end.
                st.may_cut = !st.listing;
                (st.listing, st.pending) = (true, false);
            }
            let pending = st.pending;
            let current = st.current.as_mut()?;
            let item = match st.restarts.as_mut() {
                // Nobody can restart it any more: the current stream to its end.
                None => current.next().await,
                Some(restarts) => tokio::select! {
                    biased;
                    changed = restarts.changed(), if !pending => {
                        match changed {
                            Ok(()) => st.pending = true,
                            Err(_) => st.restarts = None,
                        }
                        continue;
                    }
                    item = current.next() => item,
                },
            };
            let item = item?;
            if (st.ends_list)(&item) {
                st.listing = false;
            }
            return Some((item, st));
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &[u32]) -> BTreeSet<u32> {
        s.iter().copied().collect()
    }

    #[test]
    fn a_shard_is_ready_only_when_every_kind_has_listed_since_its_acquisition() {
        let mut l = Ledger::default();
        assert!(!l.ready(3), "not held");
        assert_eq!(l.update(&set(&[1, 3])), Some(1));
        for kind in 0..KINDS {
            assert!(!l.ready(3), "kind {kind} of {KINDS} still listing");
            l.listed(kind, 1);
        }
        assert!(l.ready(1) && l.ready(3));
        // Shard 5 acquired: 1 and 3 stay ready (their objects are in every list since), 5 waits
        // for the lists started at the new generation, even if an old list ends meanwhile.
        assert_eq!(l.update(&set(&[1, 3, 5])), Some(2));
        assert!(l.ready(1) && l.ready(3) && !l.ready(5));
        (0..KINDS).for_each(|k| {
            l.listed(k, 1);
        });
        assert!(!l.ready(5), "a list started before the acquisition does not count");
        (0..KINDS - 1).for_each(|k| {
            l.listed(k, 2);
        });
        assert!(!l.ready(5), "one kind (the delayed list) still at the old generation");
        l.listed(KINDS - 1, 2);
        assert!(l.ready(5));
    }

    #[test]
    fn a_released_shard_is_dropped_and_starts_over_when_taken_again() {
        let mut l = Ledger::default();
        l.update(&set(&[2]));
        (0..KINDS).for_each(|k| {
            l.listed(k, 1);
        });
        assert!(l.admits(2) && l.ready(2));
        assert_eq!(l.update(&set(&[2])), None, "no change, no restart");
        assert_eq!(
            l.update(&set(&[])),
            Some(2),
            "released, nothing waiting: restart to drop it"
        );
        assert!(!l.admits(2) && !l.ready(2));
        assert_eq!(l.update(&set(&[2])), Some(3));
        assert!(!l.ready(2), "taken again: waits for lists of generation 3");
        (0..KINDS).for_each(|k| {
            l.listed(k, 3);
        });
        assert!(l.ready(2));
    }

    #[test]
    fn a_release_while_a_shard_waits_restarts_only_after_the_wait() {
        let mut l = Ledger::default();
        l.update(&set(&[1, 2]));
        (0..KINDS).for_each(|k| assert_eq!(l.listed(k, 1), None));
        assert_eq!(l.update(&set(&[1, 2, 3])), Some(2));
        assert_eq!(
            l.update(&set(&[1, 3])),
            None,
            "2 released while 3 waits: its lists go on"
        );
        assert!(!l.admits(2));
        (0..KINDS - 1).for_each(|k| assert_eq!(l.listed(k, 2), None));
        assert_eq!(
            l.listed(KINDS - 1, 2),
            Some(3),
            "3 ready: now restart to drop 2's objects"
        );
        assert!(l.ready(1) && l.ready(3), "a purge restart makes no held shard wait");
        (0..KINDS).for_each(|k| assert_eq!(l.listed(k, 3), None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_drops_the_old_stream_and_tags_the_new_one() {
        let (tx, rx) = watch::channel(0u64);
        let made = Arc::new(AtomicU64::new(0));
        let started = Arc::new(AtomicU64::new(u64::MAX));
        let m = made.clone();
        // Each made stream yields its number forever (one item every 10 ms).
        let mut s = restarting(
            move || {
                let n = m.fetch_add(1, Ordering::SeqCst);
                futures::stream::unfold((), move |()| async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Some((n, ()))
                })
            },
            |_| true,
            rx,
            started.clone(),
        );
        assert_eq!(s.next().await, Some(0));
        assert_eq!(started.load(Ordering::SeqCst), 0);
        // Two changes close together: one restart, tagged with the later generation.
        tx.send_replace(1);
        tx.send_replace(2);
        assert_eq!(s.next().await, Some(1));
        assert_eq!(started.load(Ordering::SeqCst), 2);
        assert_eq!(s.next().await, Some(1), "the new stream goes on");
        assert_eq!(made.load(Ordering::SeqCst), 2, "made once per restart");
        drop(tx);
        assert_eq!(s.next().await, Some(1), "no sender: the current stream continues");
    }

    /// Streams of three list items `step` apart, the list's end (0), then nothing for long; each
    /// stream's items are its number (from 1).
    fn lists(step: Duration, rx: watch::Receiver<u64>, made: Arc<AtomicU64>) -> BoxStream<'static, u64> {
        restarting(
            move || {
                let n = made.fetch_add(1, Ordering::SeqCst) + 1;
                futures::stream::iter([n, n, n, 0])
                    .then(move |i| async move {
                        tokio::time::sleep(step).await;
                        i
                    })
                    .chain(futures::stream::pending())
            },
            |i| *i == 0,
            rx,
            Arc::new(AtomicU64::new(0)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_list_is_cut_however_old() {
        let (tx, rx) = watch::channel(0u64);
        let made = Arc::new(AtomicU64::new(0));
        // Items 400 ms apart: the changes come 1.2 s into the list, which is cut all the same
        // (finished first, the second round would be served a whole list later).
        let mut s = lists(Duration::from_millis(400), rx, made.clone());
        for _ in 0..3 {
            assert_eq!(s.next().await, Some(1));
        }
        tx.send_replace(1);
        tx.send_replace(2);
        assert_eq!(
            s.next().await,
            Some(2),
            "one restart for both changes, before the list's end"
        );
        assert_eq!(made.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_that_replaces_a_cut_one_finishes_before_the_restart() {
        let (tx, rx) = watch::channel(0u64);
        let made = Arc::new(AtomicU64::new(0));
        let mut s = lists(Duration::from_millis(400), rx, made.clone());
        assert_eq!(s.next().await, Some(1));
        tx.send_replace(1);
        assert_eq!(s.next().await, Some(2), "the first list is cut");
        assert_eq!(s.next().await, Some(2));
        assert_eq!(s.next().await, Some(2));
        // 1.2 s into the replacement: it lists to its end, then one restart for both changes.
        tx.send_replace(2);
        tx.send_replace(3);
        assert_eq!(s.next().await, Some(0), "the replacement's list ends");
        assert_eq!(s.next().await, Some(3));
        assert_eq!(made.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_is_cut_once_and_its_replacement_finishes() {
        let (tx, rx) = watch::channel(0u64);
        let made = Arc::new(AtomicU64::new(0));
        let mut s = lists(Duration::from_millis(10), rx, made.clone());
        assert_eq!(s.next().await, Some(1));
        // 10 ms into the first list: cut, the new stream lists at once.
        tx.send_replace(1);
        assert_eq!(s.next().await, Some(2), "cut short");
        // The replacement is not cut, however young: it lists to its end, then restarts.
        tx.send_replace(2);
        assert_eq!(s.next().await, Some(2));
        assert_eq!(s.next().await, Some(2));
        assert_eq!(s.next().await, Some(0), "the replacement's list ends");
        assert_eq!(s.next().await, Some(3));
        // A list made after a finished one may be cut again.
        tx.send_replace(3);
        assert_eq!(s.next().await, Some(4));
        assert_eq!(made.load(Ordering::SeqCst), 4);
    }
}
