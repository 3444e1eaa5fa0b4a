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
    replaced: DashMap<K, (String, Instant)>,
}

impl<K: Eq + Hash + Clone> Superseded<K> {
    pub fn new(patience: Duration) -> Self {
        Self {
            patience,
            replaced: DashMap::new(),
        }
    }

    /// A status write of `key` replaced `resource_version` at `now`.
    pub fn wrote_over(&self, key: &K, resource_version: &str, now: Instant) {
        self.replaced.insert(key.clone(), (resource_version.to_string(), now));
    }

    /// Whether `resource_version` of `key` is one this process wrote over (and patience remains).
    pub fn is_stale(&self, key: &K, resource_version: &str, now: Instant) -> bool {
        let verdict = match self.replaced.get(key) {
            None => return false,
            Some(e) => e.0 == resource_version && now < e.1 + self.patience,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
