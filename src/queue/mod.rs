//! A keyed work queue for one member cluster: deduplicating, at most one run in flight per key,
//! a fixed number of workers, per-key exponential backoff with jitter on errors (reset on success),
//! and delays that never occupy a worker (backoff, rate-limit waits and resyncs sit in a timer set).
//!
//! Lifecycle of a key: `add` → queued → `next` hands it to a worker (running) → `done` with an
//! outcome → gone, delayed, or queued again if it was added while running (dirty).

pub mod backoff;
pub mod coalesce;
pub mod gate;
pub mod limiter;

use std::collections::{BTreeMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use backoff::{Backoff, Jitter};

/// How a run ended, and so when the key runs next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Nothing more to do until something changes.
    Done,
    /// Run again after this long (a safety-net resync). A new event runs it earlier.
    RequeueAfter(Duration),
    /// The write budget was spent: run again when it refills. Not an error, no backoff.
    Throttled(Duration),
    /// Failed: retry after the key's backoff, or the server's Retry-After if that is longer.
    Failed { retry_after: Option<Duration> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DelayKind {
    Resync,
    Throttle,
    Backoff,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Queued { since: Instant },
    Running { dirty: bool },
    Delayed { until: Instant, kind: DelayKind },
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    phase: Phase,
    failures: u32,
    /// Queued in the urgent lane (once is enough: further urgent adds while queued are folded).
    urgent: bool,
    /// The end of the server's last Retry-After for this key: nothing, not even a recovered member,
    /// runs the key before it.
    not_before: Option<Instant>,
}

struct Inner<K> {
    entries: DashMap<K, Entry>,
    ready: Mutex<VecDeque<K>>,
    /// Served before `ready`: keys that must not wait behind a full queue (a just-acquired shard's).
    urgent: Mutex<VecDeque<K>>,
    pops: AtomicU64,
    ready_signal: Notify,
    timers: Mutex<BTreeMap<(Instant, u64), K>>,
    timer_signal: Notify,
    seq: AtomicU64,
    backoff: Backoff,
    jitter: Jitter,
    closed: AtomicBool,
}

/// Cheap to clone; every clone is the same queue.
pub struct WorkQueue<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            inner: self.inner.clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these short locks cannot leave them inconsistent; keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K: Clone + Eq + Hash + Ord + Send + Sync + 'static> WorkQueue<K> {
    /// A queue; its timer task runs until `close`.
    pub fn new(backoff: Backoff, seed: u64) -> Self {
        let q = WorkQueue {
            inner: Arc::new(Inner {
                entries: DashMap::new(),
                ready: Mutex::new(VecDeque::new()),
                urgent: Mutex::new(VecDeque::new()),
                pops: AtomicU64::new(0),
                ready_signal: Notify::new(),
                timers: Mutex::new(BTreeMap::new()),
                timer_signal: Notify::new(),
                seq: AtomicU64::new(0),
                backoff,
                jitter: Jitter::new(seed),
                closed: AtomicBool::new(false),
            }),
        };
        tokio::spawn(q.clone().run_timers());
        q
    }

    fn push_ready(&self, key: K) {
        lock(&self.inner.ready).push_back(key);
        self.inner.ready_signal.notify_one();
    }

    fn schedule(&self, key: K, until: Instant) {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.timers).insert((until, seq), key);
        self.inner.timer_signal.notify_one();
    }

    /// Something about `key` changed. Deduplicated while queued; remembered while running; runs a
    /// resync-delayed key now, but leaves a key in backoff or waiting for write budget where it is.
    pub fn add(&self, key: K) {
        self.add_in(key, false);
    }

    /// `add`, served ahead of every key already waiting: a key also queued normally is taken from
    /// the front (its later place is skipped as stale). For the keys of a shard this replica just
    /// acquired, which nobody reconciled since its previous owner stopped.
    pub fn add_urgent(&self, key: K) {
        self.add_in(key, true);
    }

    fn add_in(&self, key: K, urgent: bool) {
        if self.inner.closed.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let mut enqueue = false;
        self.inner
            .entries
            .entry(key.clone())
            .and_modify(|e| match e.phase {
                Phase::Queued { .. } => enqueue = urgent && !e.urgent,
                Phase::Running { .. } => e.phase = Phase::Running { dirty: true },
                Phase::Delayed {
                    kind: DelayKind::Resync,
                    ..
                } => {
                    e.phase = Phase::Queued { since: now };
                    enqueue = true;
                }
                Phase::Delayed { .. } => {}
            })
            .or_insert_with(|| {
                enqueue = true;
                Entry {
                    phase: Phase::Queued { since: now },
                    failures: 0,
                    urgent: false,
                    not_before: None,
                }
            });
        if enqueue && urgent {
            if let Some(mut e) = self.inner.entries.get_mut(&key) {
                e.urgent = true;
            }
            lock(&self.inner.urgent).push_back(key);
            self.inner.ready_signal.notify_one();
        } else if enqueue {
            self.push_ready(key);
        }
    }

    /// The urgent lane first, except every fourth pop, which serves the normal lane first: the keys
    /// of shards taken over one after another (a replica with thousands of clusters dying) must not
    /// starve the others.
    fn pop(&self) -> Option<K> {
        let n = self.inner.pops.fetch_add(1, Ordering::Relaxed);
        let (urgent, ready) = (&self.inner.urgent, &self.inner.ready);
        if n % 4 == 3 {
            let k = lock(ready).pop_front();
            k.or_else(|| lock(urgent).pop_front())
        } else {
            let k = lock(urgent).pop_front();
            k.or_else(|| lock(ready).pop_front())
        }
    }

    /// The next key to work on and how long it waited, or `None` once the queue is closed.
    pub async fn next(&self) -> Option<(K, Duration)> {
        loop {
            if self.inner.closed.load(Ordering::Relaxed) {
                return None;
            }
            let notified = self.inner.ready_signal.notified();
            while let Some(key) = self.pop() {
                let mut waited = None;
                if let Some(mut e) = self.inner.entries.get_mut(&key)
                    && let Phase::Queued { since } = e.phase
                {
                    e.phase = Phase::Running { dirty: false };
                    e.urgent = false;
                    waited = Some(since.elapsed());
                }
                // Stale ready entries (a key that moved on) are skipped.
                if let Some(w) = waited {
                    return Some((key, w));
                }
            }
            notified.await;
        }
    }

    /// The worker finished `key`.
    pub fn done(&self, key: &K, outcome: Outcome) {
        enum Next {
            Ready,
            Gone,
            At(Instant),
        }
        let now = Instant::now();
        // Decide and remove under the entry's lock: an `add` arriving between a check and a separate
        // removal would mark the entry dirty and then be thrown away with it — a lost change.
        let next = match self.inner.entries.entry(key.clone()) {
            dashmap::Entry::Vacant(_) => return,
            dashmap::Entry::Occupied(mut o) => {
                let e = o.get_mut();
                let dirty = matches!(e.phase, Phase::Running { dirty: true });
                let delay = match outcome {
                    Outcome::Done | Outcome::RequeueAfter(_) | Outcome::Throttled(_) => {
                        e.failures = 0;
                        e.not_before = None;
                        match outcome {
                            Outcome::RequeueAfter(d) => Some((d, DelayKind::Resync)),
                            Outcome::Throttled(d) => Some((d, DelayKind::Throttle)),
                            _ => None,
                        }
                    }
                    Outcome::Failed { retry_after } => {
                        e.failures = e.failures.saturating_add(1);
                        let backoff = self.inner.backoff.delay(e.failures, self.inner.jitter.unit());
                        e.not_before = retry_after.filter(|d| !d.is_zero()).map(|d| now + d);
                        Some((backoff.max(retry_after.unwrap_or(Duration::ZERO)), DelayKind::Backoff))
                    }
                };
                match delay {
                    // A change arrived while running and nothing asks to wait: run again now.
                    Some((_, DelayKind::Resync)) | None if dirty => {
                        e.phase = Phase::Queued { since: now };
                        Next::Ready
                    }
                    None => {
                        o.remove();
                        Next::Gone
                    }
                    Some((d, kind)) => {
                        e.phase = Phase::Delayed { until: now + d, kind };
                        Next::At(now + d)
                    }
                }
            }
        };
        match next {
            Next::Ready => self.push_ready(key.clone()),
            Next::At(at) => self.schedule(key.clone(), at),
            Next::Gone => {}
        }
    }

    /// Runs every key that is waiting out an error backoff now (its member cluster just recovered),
    /// or, for a key the server told to wait (Retry-After), as soon as that wait is over: the server's
    /// word outranks our guess that it has recovered.
    pub fn retry_backed_off_now(&self) {
        let now = Instant::now();
        let (mut ready, mut later) = (Vec::new(), Vec::new());
        for mut e in self.inner.entries.iter_mut() {
            if let Phase::Delayed {
                kind: DelayKind::Backoff,
                until,
            } = e.phase
            {
                match e.not_before.filter(|t| *t > now) {
                    Some(t) if t < until => {
                        e.phase = Phase::Delayed {
                            until: t,
                            kind: DelayKind::Backoff,
                        };
                        later.push((e.key().clone(), t));
                    }
                    Some(_) => {}
                    None => {
                        e.phase = Phase::Queued { since: now };
                        ready.push(e.key().clone());
                    }
                }
            }
        }
        for key in ready {
            self.push_ready(key);
        }
        for (key, at) in later {
            self.schedule(key, at);
        }
    }

    /// Keys waiting for a worker.
    pub fn depth(&self) -> usize {
        self.inner
            .entries
            .iter()
            .filter(|e| matches!(e.phase, Phase::Queued { .. }))
            .count()
    }

    /// Consecutive failures of a key (0 when unknown).
    #[cfg(test)]
    pub fn failures(&self, key: &K) -> u32 {
        self.inner.entries.get(key).map(|e| e.failures).unwrap_or(0)
    }

    /// Forgets a key that no longer exists (its object was deleted).
    pub fn forget(&self, key: &K) {
        self.inner
            .entries
            .remove_if(key, |_, e| !matches!(e.phase, Phase::Running { .. }));
    }

    /// Stops handing out work; workers see `None` from `next`.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.ready_signal.notify_waiters();
        self.inner.timer_signal.notify_one();
    }

    /// Moves delayed keys whose time has come back to the ready list.
    async fn run_timers(self) {
        loop {
            if self.inner.closed.load(Ordering::Relaxed) {
                return;
            }
            let notified = self.inner.timer_signal.notified();
            let next = lock(&self.inner.timers).keys().next().copied();
            match next {
                Some((at, _)) if at <= Instant::now() => {
                    let due: Vec<K> = {
                        let mut timers = lock(&self.inner.timers);
                        let later = timers.split_off(&(Instant::now(), u64::MAX));
                        let due = std::mem::replace(&mut *timers, later);
                        due.into_values().collect()
                    };
                    for key in due {
                        self.fire(key);
                    }
                }
                Some((at, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn fire(&self, key: K) {
        let now = Instant::now();
        let mut ready = false;
        if let Some(mut e) = self.inner.entries.get_mut(&key)
            && let Phase::Delayed { until, .. } = e.phase
            && until <= now
        {
            e.phase = Phase::Queued { since: now };
            ready = true;
        }
        if ready {
            self.push_ready(key);
        }
    }
}

#[cfg(test)]
mod tests;
