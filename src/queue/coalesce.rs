//! Status-write coalescing: status changes of one cluster produced within `window` of its last status
//! write are held back and written together when the window closes (the key is requeued for then).

use std::hash::Hash;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

pub struct StatusCoalescer<K> {
    window: Duration,
    last_write: DashMap<K, Instant>,
}

impl<K: Eq + Hash + Clone> StatusCoalescer<K> {
    pub fn new(window: Duration) -> Self {
        StatusCoalescer {
            window,
            last_write: DashMap::new(),
        }
    }

    /// `Ok` if the status of `key` may be written now, else how long until it may.
    pub fn admit(&self, key: &K, now: Instant) -> Result<(), Duration> {
        match self.last_write.get(key) {
            Some(last) if now < *last + self.window => Err(*last + self.window - now),
            _ => Ok(()),
        }
    }

    pub fn wrote(&self, key: &K, now: Instant) {
        self.last_write.insert(key.clone(), now);
    }

    pub fn forget(&self, key: &K) {
        self.last_write.remove(key);
    }
}
