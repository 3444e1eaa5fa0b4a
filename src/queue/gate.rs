//! Writes in flight to one member cluster, with a new StatefulSet behind every other write.
//!
//! Why: a busy API server serves what is in flight side by side. In a burst, 16 reconciles writing
//! at once, each with up to 8 requests out, shared the server ~128 ways, and a Service create took
//! p99 4–4.8 s. kwok (and a fast kubelet) makes a StatefulSet's pods Ready within a second of its
//! create, so a cluster's Services, written after its StatefulSets, landed seconds after its pods
//! were Ready, and `configured` with them (the lag after pods, p99 3.5–4.2 s).
//!
//! With the requests out bounded, each is served sooner, and the order of the rest is ours to
//! choose: a write that finishes work already started (a cluster's Services after its
//! StatefulSets, a finalizer, a delete) goes before one that starts new work (a StatefulSet
//! create, whose pods and Services follow). At 32 the burst took as long as with nothing held and
//! the lag after pods halved; fewer in flight cost time, as each request also waits on etcd
//! (docs/loadtest.md, "The write gate").
//!
//! How: one fair semaphore for the slots. A `Finish` write queues at it directly; `Start` writes
//! queue one at a time behind a lane lock, so at most one of them is ever among the semaphore's
//! waiters and every `Finish` write that arrives meanwhile is served at most one `Start` later.
//! Starts are not starved: each gets its turn once the one queued before it has its slot. Both
//! waits are cancel-safe (a reconcile cut at its shard's deadline drops them).

use tokio::sync::{Mutex, Semaphore, SemaphorePermit};

/// Which way a write moves the work of its cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Creates new work for the server and the controllers (a StatefulSet create): waits behind
    /// `Finish` writes.
    Start,
    /// Completes what has been started.
    Finish,
}

pub struct WriteGate {
    slots: Semaphore,
    start_lane: Mutex<()>,
}

/// A slot for one write in flight; the slot frees when this is dropped.
pub struct InFlight<'a> {
    _permit: Option<SemaphorePermit<'a>>,
}

impl WriteGate {
    /// `in_flight` writes at once at most (at least one).
    pub fn new(in_flight: usize) -> Self {
        WriteGate {
            slots: Semaphore::new(in_flight.max(1)),
            start_lane: Mutex::new(()),
        }
    }

    /// Waits for a slot for one write of `lane`.
    pub async fn enter(&self, lane: Lane) -> InFlight<'_> {
        let permit = match lane {
            Lane::Finish => self.slots.acquire().await,
            Lane::Start => {
                let _one_at_a_time = self.start_lane.lock().await;
                self.slots.acquire().await
            }
        };
        // The semaphore is never closed; were it, the write would go out unbounded rather than not at all.
        InFlight { _permit: permit.ok() }
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Lets every spawned task run as far as it can.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn no_more_than_the_limit_are_in_flight() {
        let gate = Arc::new(WriteGate::new(3));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (gate, peak, now) = (gate.clone(), peak.clone(), now.clone());
            tasks.push(tokio::spawn(async move {
                let lane = if i % 2 == 0 { Lane::Start } else { Lane::Finish };
                let _in = gate.enter(lane).await;
                let n = now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(gate.free(), 3);
    }

    /// Starts queued first, finishes queued after: the finishes get the freed slots, but for the
    /// one start already waiting at the semaphore.
    #[tokio::test]
    async fn finishing_writes_go_before_waiting_starts() {
        let gate = Arc::new(WriteGate::new(1));
        let held = gate.enter(Lane::Finish).await;
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let spawn = |name: &'static str, lane: Lane| {
            let (gate, order) = (gate.clone(), order.clone());
            tokio::spawn(async move {
                let _in = gate.enter(lane).await;
                order.lock().expect("order").push(name);
                tokio::task::yield_now().await;
            })
        };
        for name in ["s1", "s2", "s3"] {
            tasks.push(spawn(name, Lane::Start));
            settle().await;
        }
        for name in ["f1", "f2"] {
            tasks.push(spawn(name, Lane::Finish));
            settle().await;
        }
        drop(held);
        for t in tasks {
            t.await.expect("task");
        }
        let order = order.lock().expect("order").clone();
        assert_eq!(order, ["s1", "f1", "f2", "s2", "s3"]);
    }

    /// The lane orders the waits only: starts in flight are bounded by the slots alone.
    #[tokio::test]
    async fn starts_fill_every_free_slot() {
        let gate = WriteGate::new(2);
        let first = gate.enter(Lane::Start).await;
        let second = tokio::time::timeout(Duration::from_secs(5), gate.enter(Lane::Start)).await;
        assert!(second.is_ok(), "a second start waited while a slot was free");
        assert_eq!(gate.free(), 0);
        drop(first);
    }

    /// A start that gives up waiting (its reconcile was cut) lets the next start queue.
    #[tokio::test]
    async fn a_cancelled_start_frees_the_lane() {
        let gate = Arc::new(WriteGate::new(1));
        let held = gate.enter(Lane::Finish).await;
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _in = gate.enter(Lane::Start).await;
            })
        };
        settle().await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        let next = tokio::time::timeout(Duration::from_secs(5), gate.enter(Lane::Start)).await;
        assert!(next.is_ok(), "a second start waited behind a cancelled one");
    }
}
