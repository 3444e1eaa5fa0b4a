//! Caches divided by shard: with sharding on, a member's child caches (StatefulSets, Services, Pods,
//! PVCs) hold only the children of clusters whose shard this replica holds, so that three replicas
//! hold the fleet's children once between them, not three times.
//!
//! How: each child kind is fed by segments (`segments`): a watch per round of acquisitions, asking
//! the API server for those shards' buckets only. An acquisition starts a new segment and leaves the
//! running ones alone, so the shards held before keep their events flowing while the new ones list.
//! A release deletes the shard's objects from the caches, with no list. Every child event is judged
//! by the shard of the cluster its label names (`shard_of`, the same function the shard gate uses)
//! and kept only if its segment owns that shard.
//!
//! Handover safety: a key of a shard admitted at generation `g` may be reconciled only once every
//! child kind has merged a list of that shard made for generation `g` (`Ledger::ready`); until then
//! the worker puts it back (`worker`), and the acquisition trigger waits before it queues the
//! shard's keys (`triggers::acquired`). A reconcile is never planned from a cache that is missing a
//! shard's children (it would take them for absent and create them again).
//!
//! Selected by the API server: every child written here carries its cluster's bucket
//! (`kubedirector.hpe.com/shard-bucket`), and a shard is a set of buckets (`shard::assign`), so each
//! segment asks only for its shards' buckets. Children without the label (pods and PVCs of a
//! StatefulSet made by KubeDirector or before the label, whose template is never changed: that would
//! roll every pod) come from a second watch of the unlabelled ones, filtered here; both make one
//! segment's list (`union`). The KubeDirectorClusters stay watched in full: they are few and small,
//! and every replica needs them to map keys to shards and hand shards over.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::watch;

use crate::model::labels;
use crate::shard::assign::Buckets;
use crate::shard::manager::Shards;
use crate::telemetry::metrics::KindLabels;

use super::segments::{self, Feed, Owned, Start};
use super::union::union;

/// The child kinds whose caches are divided (each reports its lists by index).
pub(crate) const KINDS: usize = 4;

/// The kinds by index, as metrics name them.
const KIND_NAMES: [&str; KINDS] = ["StatefulSet", "Service", "Pod", "PersistentVolumeClaim"];

/// The held set is compared at each of its changes, and at least this often (a safety net: the
/// change signal is what it follows; a 100 ms poll cost an idle replica a tenth of its CPU).
const POLL: Duration = Duration::from_secs(5);

/// The pure bookkeeping: which shards the caches admit, since which generation, and, per kind, the
/// generation each shard's last merged list was made for.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    generation: u64,
    /// Admitted shards and the generation they were admitted at.
    since: Owned,
    listed: [Owned; KINDS],
}

impl Ledger {
    /// The shards held now. Returns the new generation if the admitted set changed (the segments
    /// regroup: acquired shards are listed, released ones dropped).
    pub fn update(&mut self, held: &BTreeSet<u32>) -> Option<u64> {
        let known: BTreeSet<u32> = self.since.keys().copied().collect();
        if &known == held {
            return None;
        }
        self.generation += 1;
        let g = self.generation;
        self.since.retain(|s, _| held.contains(s));
        for s in held {
            self.since.entry(*s).or_insert(g);
        }
        for l in &mut self.listed {
            l.retain(|s, _| held.contains(s));
        }
        Some(g)
    }

    /// The admitted shards, each with its generation.
    pub fn admitted(&self) -> Owned {
        self.since.clone()
    }

    /// Kind `kind` merged a list of `owned` (made for the generations given); a shard admitted again
    /// since is not counted.
    pub fn listed(&mut self, kind: usize, owned: &Owned) {
        let Some(l) = self.listed.get_mut(kind) else { return };
        for (s, g) in owned {
            if self.since.get(s) == Some(g) {
                l.insert(*s, *g);
            }
        }
    }

    /// Whether every admitted shard is ready.
    pub fn all_ready(&self) -> bool {
        self.since.keys().all(|s| self.ready(*s))
    }

    /// Whether every child of `shard` is in the caches: admitted, and every kind listed since.
    pub fn ready(&self, shard: u32) -> bool {
        self.since
            .get(&shard)
            .is_some_and(|g| self.listed.iter().all(|l| l.get(&shard) == Some(g)))
    }
}

/// One member's division: the ledger, the change signal of its segments, and the shards.
pub(crate) struct Division {
    shards: Arc<Shards>,
    context: String,
    ledger: Mutex<Ledger>,
    changes: watch::Sender<u64>,
    /// Bumped at every list's merge, so that waiters look again.
    progress: watch::Sender<u64>,
    /// Kinds that merged each segment's list, by (generation, shards) (logging only).
    merges: Mutex<HashMap<(u64, usize), usize>>,
}

impl Division {
    pub fn new(shards: Arc<Shards>, context: &str) -> Arc<Self> {
        Arc::new(Division {
            shards,
            context: context.to_string(),
            ledger: Mutex::new(Ledger::default()),
            changes: watch::channel(0).0,
            progress: watch::channel(0).0,
            merges: Mutex::default(),
        })
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic mid-update leaves at worst a key waiting longer; the lock is still usable.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shard of a child: that of the cluster its label names.
    fn shard_of<K: ResourceExt>(&self, child: &K) -> Option<u32> {
        let cluster = child.labels().get(labels::CLUSTER)?;
        let namespace = child.namespace().unwrap_or_default();
        Some(self.shards.shard_of(&self.context, &namespace, cluster))
    }

    /// Counts an event of kind `kind` dropped by its segment.
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
            // A list's merge, a release, or the poll (the senders live as long as `self`).
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
                tracing::info!(context = %self.context, generation = g, shards = held.len(), "held shards changed");
                self.changes.send_replace(g);
            }
            match tokio::time::timeout(POLL, changes.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                // The registry is gone (shutting down): poll, never spin.
                Ok(Err(_)) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// The events of child kind `kind` for `store`, fed by segments (`segments`): each the union of
    /// `watch(selector)` for its shards' buckets and for the children without a bucket.
    pub fn divide<K, S>(
        self: &Arc<Self>,
        kind: usize,
        watch: impl Fn(String) -> S + Clone + Send + Sync + 'static,
        store: Store<K>,
    ) -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let (me, of, ad, li, dr, st) = (
            self.clone(),
            self.clone(),
            self.clone(),
            self.clone(),
            self.clone(),
            self.clone(),
        );
        segments::divided(Feed {
            watch: Box::new(move |shards| {
                let selected = Buckets::of(&me.context, shards, me.shards.count).selector();
                let watch = watch.clone();
                union(move || {
                    let labelled = match &selected {
                        Some(buckets) => watch(format!("{},{buckets}", labels::CLUSTER)).boxed(),
                        None => nothing_listed(),
                    };
                    let unlabelled = watch(format!("{},!{}", labels::CLUSTER, labels::SHARD_BUCKET)).boxed();
                    (labelled, unlabelled)
                })
            }),
            shard_of: Box::new(move |o| of.shard_of(o)),
            admitted: Box::new(move || ad.ledger().admitted()),
            listed: Box::new(move |owned| li.listed(kind, owned)),
            dropped: Box::new(move || dr.dropped(kind)),
            started: Box::new(move |owned, start| st.started(kind, owned, start)),
            store,
            changes: self.changes.subscribe(),
        })
    }

    /// A segment of kind `kind` started a list (logged once per round, by the first kind).
    fn started(&self, kind: usize, owned: &Owned, start: Start) {
        let generation = owned.values().copied().max().unwrap_or(0);
        if kind != 0 {
            return;
        }
        let (context, shards) = (&self.context, owned.len());
        match start {
            Start::Acquired => {
                tracing::info!(%context, generation, shards, "child caches list the acquired shards")
            }
            // Those shards' events pause until it ends (std_tail.py counts these as relists).
            Start::Narrowed => {
                tracing::info!(%context, generation, shards, "child caches list again, narrowed to the shards kept")
            }
            Start::Gathered => {
                tracing::info!(%context, generation, shards, "child caches list again, every held shard in one segment")
            }
        }
    }

    /// A list of kind `kind` was merged, and is in the store and the index (`segments` calls this
    /// once the merge's events are taken, so a key found ready never meets the old store).
    fn listed(&self, kind: usize, owned: &Owned) {
        self.merged(owned);
        let done = {
            let mut ledger = self.ledger();
            let before = ledger.all_ready();
            ledger.listed(kind, owned);
            !before && ledger.all_ready()
        };
        if done {
            let generation = owned.values().copied().max().unwrap_or(0);
            tracing::info!(context = %self.context, generation, "child caches listed for the held shards");
        }
        self.progress.send_modify(|p| *p += 1);
    }
}

impl Division {
    /// Logs a segment's list once every kind has merged it (its end, for `std_tail.py`: the
    /// start line has the same generation and shard count).
    fn merged(&self, owned: &Owned) {
        let key = (owned.values().copied().max().unwrap_or(0), owned.len());
        let all = {
            let mut counts = self.merges.lock().unwrap_or_else(|p| p.into_inner());
            if counts.len() > 256 {
                // Lists of segments replaced before they ended never complete: forget them.
                counts.clear();
            }
            let n = counts.entry(key).or_insert(0);
            *n += 1;
            let all = *n >= KINDS;
            if all {
                counts.remove(&key);
            }
            all
        };
        if all {
            tracing::info!(context = %self.context, generation = key.0, shards = key.1, "child caches merged a segment's list");
        }
    }
}

/// A watch of no objects: a list that ends at once, and no events after it.
fn nothing_listed<K: Send + 'static>() -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>> {
    futures::stream::iter([Ok(watcher::Event::Init), Ok(watcher::Event::InitDone)])
        .chain(futures::stream::pending())
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &[u32]) -> BTreeSet<u32> {
        s.iter().copied().collect()
    }

    fn of(l: &Ledger, s: &[u32]) -> Owned {
        let a = l.admitted();
        s.iter().map(|s| (*s, a[s])).collect()
    }

    #[test]
    fn a_shard_is_ready_only_when_every_kind_has_merged_its_list() {
        let mut l = Ledger::default();
        assert!(!l.ready(3), "not held");
        assert_eq!(l.update(&set(&[1, 3])), Some(1));
        let first = of(&l, &[1, 3]);
        for kind in 0..KINDS {
            assert!(!l.ready(3), "kind {kind} of {KINDS} still listing");
            l.listed(kind, &first);
        }
        assert!(l.ready(1) && l.ready(3) && l.all_ready());
        // Shard 5 acquired: 1 and 3 stay ready (their segment goes on), 5 waits for its own lists,
        // whatever other segments merge meanwhile.
        assert_eq!(l.update(&set(&[1, 3, 5])), Some(2));
        assert!(l.ready(1) && l.ready(3) && !l.ready(5) && !l.all_ready());
        (0..KINDS).for_each(|k| l.listed(k, &first));
        assert!(!l.ready(5), "another segment's list does not count");
        let second = of(&l, &[5]);
        (0..KINDS - 1).for_each(|k| l.listed(k, &second));
        assert!(!l.ready(5), "one kind still listing");
        l.listed(KINDS - 1, &second);
        assert!(l.ready(5) && l.all_ready());
    }

    #[test]
    fn a_released_shard_is_dropped_and_starts_over_when_taken_again() {
        let mut l = Ledger::default();
        l.update(&set(&[2]));
        let first = of(&l, &[2]);
        (0..KINDS).for_each(|k| l.listed(k, &first));
        assert!(l.ready(2));
        assert_eq!(l.update(&set(&[2])), None, "no change");
        assert_eq!(l.update(&set(&[])), Some(2), "released");
        assert!(!l.ready(2) && l.admitted().is_empty());
        assert_eq!(l.update(&set(&[2])), Some(3));
        assert!(!l.ready(2), "taken again: waits for a list made for generation 3");
        (0..KINDS).for_each(|k| l.listed(k, &first));
        assert!(!l.ready(2), "a list made before the release does not count");
        let again = of(&l, &[2]);
        assert_eq!(again[&2], 3);
        (0..KINDS).for_each(|k| l.listed(k, &again));
        assert!(l.ready(2));
    }
}
