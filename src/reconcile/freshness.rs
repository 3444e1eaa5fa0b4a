//! Reconciles must not plan from a version of a cluster this process has already written over.
//!
//! After a status write the cache only learns the new version from the watch. A reconcile that runs
//! before that (woken by a finished guest command, say) would plan from the old status and, for
//! example, queue a notification that was already delivered. So the version each status write
//! replaced is remembered, and a reconcile that sees exactly that version waits briefly for the
//! watch. Nothing is compared by order: a version we wrote over is certainly superseded. After
//! `patience` the reconcile goes ahead anyway (a stalled watch must not stall the cluster; the
//! write conditions still refuse a stale write).

use std::hash::Hash;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

pub struct Superseded<K> {
    patience: Duration,
    /// Per key: the versions written over (a finalizer patch and the status write of one reconcile
    /// replace two), and when the last was.
    replaced: DashMap<K, (Vec<String>, Instant)>,
}

impl<K: Eq + Hash + Clone> Superseded<K> {
    pub fn new(patience: Duration) -> Self {
        Self {
            patience,
            replaced: DashMap::new(),
        }
    }

    /// A write of `key` replaced `resource_version` at `now`. Versions replaced within the patience
    /// of each other are all remembered: the cache may still show any of them.
    pub fn wrote_over(&self, key: &K, resource_version: &str, now: Instant) {
        let mut entry = self.replaced.entry(key.clone()).or_insert_with(|| (Vec::new(), now));
        if now >= entry.1 + self.patience {
            entry.0.clear();
        }
        entry.0.push(resource_version.to_string());
        entry.1 = now;
    }

    /// Whether `resource_version` of `key` is one this process wrote over (and patience remains).
    pub fn is_stale(&self, key: &K, resource_version: &str, now: Instant) -> bool {
        let verdict = match self.replaced.get(key) {
            None => return false,
            Some(e) => e.0.iter().any(|v| v == resource_version) && now < e.1 + self.patience,
        };
        if !verdict {
            self.replaced.remove(key);
        }
        verdict
    }

    pub fn forget(&self, key: &K) {
        self.replaced.remove(key);
    }
}

/// Children this process just created, per cluster, until its caches show them. A reconcile that
/// ran before the watch delivered them would find them missing and create them again: a write each,
/// for nothing. (A status write used to hold such reconciles back through `Superseded`; a new
/// cluster's first status is now held until `configured`, so nothing else would.) After `patience`
/// the reconcile goes ahead anyway: a child deleted before we ever saw it is made again then.
pub struct Awaited<K> {
    patience: Duration,
    created: DashMap<K, (Vec<String>, Instant)>,
}

impl<K: Eq + Hash + Clone> Awaited<K> {
    pub fn new(patience: Duration) -> Self {
        Self {
            patience,
            created: DashMap::new(),
        }
    }

    /// A reconcile of `key` created the children `ids` at `now`.
    pub fn created(&self, key: &K, ids: Vec<String>, now: Instant) {
        if ids.is_empty() {
            return;
        }
        let mut entry = self.created.entry(key.clone()).or_insert_with(|| (Vec::new(), now));
        entry.0.extend(ids);
        entry.1 = now;
    }

    /// Whether a reconcile of `key` should wait for the watch: a child it created is not `cached`
    /// yet, and patience remains. Forgets the key otherwise.
    pub fn waiting(&self, key: &K, cached: impl Fn(&str) -> bool, now: Instant) -> bool {
        let verdict = match self.created.get(key) {
            None => return false,
            Some(e) => now < e.1 + self.patience && e.0.iter().any(|id| !cached(id)),
        };
        if !verdict {
            self.created.remove(key);
        }
        verdict
    }

    pub fn forget(&self, key: &K) {
        self.created.remove(key);
    }
}

/// Versions of clusters this process wrote itself and from which a reconcile would write nothing:
/// the planner, run again on the status it just wrote with the same children, changed nothing
/// (`cluster::settles`). The watch event of such a version starts no reconcile; it would only read
/// and plan. Every other version (a user's edit, another writer's, one we did not judge) reconciles
/// as before.
///
/// "The same children" is kept honest by an epoch per key, raised by every event that concerns the
/// cluster other than its own (children, apps, configs, connected objects, finished guest commands:
/// `touch`). A reconcile reads the epoch before it observes (`epoch`); its note counts only while
/// the epoch is unchanged. So a pod that became Ready while the reconcile was planning from the
/// pod's older state voids the note, and the reconcile that event queued runs.
///
/// The watch can deliver our version before the write's answer is back, so before the note: the key
/// is then queued behind the reconcile that wrote it, which notes the version before it ends; the
/// reconcile queued behind it finds its object at the noted version and ends at once (`take`).
pub struct Settled<K> {
    /// Per key: the version noted, and the epoch its plan was made at.
    versions: DashMap<K, (String, u64)>,
    epochs: DashMap<K, u64>,
}

impl<K: Eq + Hash + Clone> Default for Settled<K> {
    fn default() -> Self {
        Self {
            versions: DashMap::new(),
            epochs: DashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> Settled<K> {
    /// Something other than the cluster itself changed for `key`.
    pub fn touch(&self, key: &K) {
        *self.epochs.entry(key.clone()).or_insert(0) += 1;
    }

    /// Read before a reconcile observes anything.
    pub fn epoch(&self, key: &K) -> u64 {
        self.epochs.get(key).map_or(0, |e| *e)
    }

    /// This process wrote `resource_version` of `key` from a plan made at `epoch`, and it is a
    /// fixpoint of the planner. Not noted if something touched the key since.
    pub fn note(&self, key: &K, resource_version: &str, epoch: u64) {
        if self.epoch(key) == epoch {
            self.versions.insert(key.clone(), (resource_version.to_string(), epoch));
        }
    }

    /// An event of `key` at `resource_version`: whether it is the settled version (no reconcile
    /// needed). Forgets the note either way.
    pub fn settled(&self, key: &K, resource_version: &str) -> bool {
        let current = self.epoch(key);
        self.versions
            .remove(key)
            .is_some_and(|(_, (noted, epoch))| noted == resource_version && epoch == current)
    }

    /// A reconcile of `key` about to plan from `resource_version`: whether it is the settled version
    /// (the reconcile has nothing to do). Forgets the note only then: a reconcile of an older
    /// version (the watch not there yet) leaves it for the event.
    pub fn take(&self, key: &K, resource_version: &str) -> bool {
        let current = self.epoch(key);
        self.versions
            .remove_if(key, |_, (noted, epoch)| noted == resource_version && *epoch == current)
            .is_some()
    }

    pub fn forget(&self, key: &K) {
        self.versions.remove(key);
        self.epochs.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_noted_version_is_settled_and_only_once() {
        let s = Settled::default();
        assert!(!s.settled(&"k", "7"), "nothing noted");
        s.note(&"k", "7", 0);
        assert!(!s.settled(&"other", "7"), "another key");
        assert!(s.settled(&"k", "7"));
        assert!(!s.settled(&"k", "7"), "one event per note");
        // Our version's event came before the note (the watch can beat the write's answer): the
        // next event, a user's edit, reconciles, and takes the note with it.
        s.note(&"k", "9", 0);
        assert!(!s.settled(&"k", "10"));
        assert!(!s.settled(&"k", "9"));
        s.note(&"k", "11", 0);
        s.forget(&"k");
        assert!(!s.settled(&"k", "11"), "forgotten with the cluster");
    }

    #[test]
    fn a_reconcile_queued_behind_the_write_takes_the_note_only_at_that_version() {
        let s = Settled::default();
        s.note(&"k", "7", 0);
        assert!(!s.take(&"k", "6"), "an older version in the cache");
        assert!(s.take(&"k", "7"), "the note stayed for the settled version");
        assert!(!s.take(&"k", "7"), "taken once");
        assert!(!s.settled(&"k", "7"), "and not left for the event");
    }

    #[test]
    fn a_child_event_during_the_plan_voids_the_note() {
        let s = Settled::default();
        // A pod became Ready after the reconcile observed it not Ready, before the write's answer.
        let epoch = s.epoch(&"k");
        s.touch(&"k");
        s.note(&"k", "7", epoch);
        assert!(!s.take(&"k", "7"), "the reconcile the pod event queued runs");
        assert!(!s.settled(&"k", "7"));
        // A touch after the note, before our version's event or the queued reconcile.
        let epoch = s.epoch(&"k");
        s.note(&"k", "8", epoch);
        s.touch(&"k");
        assert!(!s.take(&"k", "8"));
        assert!(!s.settled(&"k", "8"));
        // Untouched: settled.
        let epoch = s.epoch(&"k");
        s.note(&"k", "9", epoch);
        assert!(s.settled(&"k", "9"));
    }

    #[test]
    fn only_the_replaced_version_is_stale_and_only_for_a_while() {
        let s = Superseded::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(!s.is_stale(&"k", "10", t0), "nothing written yet");
        s.wrote_over(&"k", "10", t0);
        assert!(s.is_stale(&"k", "10", t0 + Duration::from_secs(1)));
        assert!(!s.is_stale(&"other", "10", t0));
        // The watch delivered the new version: the entry goes.
        assert!(!s.is_stale(&"k", "11", t0 + Duration::from_secs(2)));
        assert!(
            !s.is_stale(&"k", "10", t0 + Duration::from_secs(2)),
            "forgotten once a newer one was seen"
        );
        // A watch that never delivers: go ahead after the patience.
        s.wrote_over(&"k", "12", t0);
        assert!(s.is_stale(&"k", "12", t0 + Duration::from_secs(4)));
        assert!(!s.is_stale(&"k", "12", t0 + Duration::from_secs(6)));
    }

    #[test]
    fn both_versions_one_reconcile_wrote_over_are_stale() {
        let s = Superseded::new(Duration::from_secs(5));
        let t0 = Instant::now();
        // A finalizer patch replaced 20, then the status write replaced 21 (the patch's version).
        s.wrote_over(&"k", "20", t0);
        s.wrote_over(&"k", "21", t0 + Duration::from_millis(100));
        assert!(s.is_stale(&"k", "20", t0 + Duration::from_secs(1)));
        assert!(s.is_stale(&"k", "21", t0 + Duration::from_secs(1)));
        assert!(
            !s.is_stale(&"k", "22", t0 + Duration::from_secs(1)),
            "the status write's own version"
        );
        assert!(
            !s.is_stale(&"k", "21", t0 + Duration::from_secs(1)),
            "forgotten once it was seen"
        );
        // A write long after the last starts a new list.
        s.wrote_over(&"k", "30", t0);
        s.wrote_over(&"k", "31", t0 + Duration::from_secs(6));
        assert!(!s.is_stale(&"k", "30", t0 + Duration::from_secs(7)));
    }

    #[test]
    fn a_reconcile_waits_for_the_children_it_created_until_the_cache_has_them() {
        let a = Awaited::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(!a.waiting(&"k", |_| false, t0), "nothing created");
        a.created(&"k", vec![], t0);
        assert!(!a.waiting(&"k", |_| false, t0), "an empty list is nothing to wait for");
        a.created(&"k", vec!["StatefulSet/s".into(), "Service/h".into()], t0);
        let only_h = |id: &str| id == "Service/h";
        assert!(a.waiting(&"k", only_h, t0 + Duration::from_secs(1)));
        assert!(!a.waiting(&"other", |_| false, t0), "per key");
        assert!(!a.waiting(&"k", |_| true, t0 + Duration::from_secs(1)), "all cached");
        assert!(
            !a.waiting(&"k", only_h, t0 + Duration::from_secs(1)),
            "forgotten once seen"
        );
        // A child that never shows up: go ahead after the patience.
        a.created(&"k", vec!["Service/m".into()], t0);
        assert!(a.waiting(&"k", |_| false, t0 + Duration::from_secs(4)));
        assert!(!a.waiting(&"k", |_| false, t0 + Duration::from_secs(6)));
    }
}
