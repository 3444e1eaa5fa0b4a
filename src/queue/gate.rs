//! Writes in flight to one member cluster, with Service writes behind every other write.
//!
//! Why a bound: a busy API server serves what is in flight side by side. In a burst, 16
//! reconciles writing at once, each with up to 8 requests out, shared the server ~128 ways, and a
//! Service create took p99 4–4.8 s. With the requests out bounded (32), each is served sooner and
//! the order of the rest is ours to choose. Fewer than 32 cost the burst time, as each request also
//! waits on etcd (docs/loadtest.md, "The write gate").
//!
//! Why Services last: in a burst the bed's CPU is the limit, and the cheapest order for it is every
//! StatefulSet first, then the Services. The StatefulSets start the long work (the
//! controller-manager creates their pods one by one), and a Service created once its pods are Ready
//! gets its Endpoints and EndpointSlice written once; created before, they are rewritten as each
//! pod comes up. Measured on the 1,000-member burst (docs/loadtest.md, "StatefulSets first"): all
//! configured in 26–28.5 s instead of 35–40 s, with 15–25 fewer CPU-seconds on the bed. The price:
//! in a burst, a cluster's Services (and so its `configured`) can come seconds after its pods are
//! Ready (p99 20–22 s there). Five other orders, measured against it (docs/loadtest.md, "Six
//! orders"): only those with a cluster's Services in place before its pods are Ready kept its
//! status within 0.5 s of them, and their bursts took 1.3–1.7× the floor's time (with 1,700–3,100
//! more endpoint events, the likely cost; not separated from the bed's speed by a profile).
//! A cluster created alone finds the gate empty and is not held at all.
//!
//! How: one fair semaphore for the slots. An `Ahead` write queues at it directly; `Behind` writes
//! queue one at a time behind a lane lock, so at most one of them is ever among the semaphore's
//! waiters and every `Ahead` write that arrives meanwhile is served at most one `Behind` later.
//! `Behind` writes are not starved: each gets its turn once the one queued before it has its slot.
//! Both waits are cancel-safe (a reconcile cut at its shard's deadline drops them).

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Mutex, Semaphore, SemaphorePermit};

/// Where a write queues for its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Served before every `Behind` write but one.
    Ahead,
    /// Waits behind `Ahead` writes (a Service write: `reconcile::apply::lane_of`).
    Behind,
}

pub struct WriteGate {
    slots: Semaphore,
    behind_lane: Mutex<()>,
    gauges: Gauges,
}

/// What the gate holds now, for the metrics (`kubedirector_writes_in_flight`,
/// `kubedirector_writes_waiting{lane}`): whether `--writes-in-flight` is what holds writes back.
#[derive(Clone, Default)]
pub struct Gauges {
    pub in_flight: Gauge,
    pub ahead: Gauge,
    pub behind: Gauge,
}

/// A slot for one write in flight; the slot frees when this is dropped.
pub struct InFlight<'a> {
    _permit: Option<SemaphorePermit<'a>>,
    _counted: Counted,
}

/// One unit of a gauge, given back when dropped (also when a wait is cancelled).
struct Counted(Gauge);

impl Counted {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl WriteGate {
    /// `in_flight` writes at once at most (at least one).
    pub fn new(in_flight: usize) -> Self {
        Self::with_gauges(in_flight, Gauges::default())
    }

    /// As `new`, counting the writes in flight and waiting into `gauges`.
    pub fn with_gauges(in_flight: usize, gauges: Gauges) -> Self {
        WriteGate {
            slots: Semaphore::new(in_flight.max(1)),
            behind_lane: Mutex::new(()),
            gauges,
        }
    }

    /// Waits for a slot for one write of `lane`.
    pub async fn enter(&self, lane: Lane) -> InFlight<'_> {
        let waiting = Counted::new(match lane {
            Lane::Ahead => &self.gauges.ahead,
            Lane::Behind => &self.gauges.behind,
        });
        let permit = match lane {
            Lane::Ahead => self.slots.acquire().await,
            Lane::Behind => {
                let _one_at_a_time = self.behind_lane.lock().await;
                self.slots.acquire().await
            }
        };
        drop(waiting);
        // The semaphore is never closed; were it, the write would go out unbounded rather than not at all.
        InFlight {
            _permit: permit.ok(),
            _counted: Counted::new(&self.gauges.in_flight),
        }
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
                let lane = if i % 2 == 0 { Lane::Behind } else { Lane::Ahead };
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

    /// `Behind` writes queued first, `Ahead` writes queued after: the latter get the freed slots,
    /// but for the one `Behind` write already waiting at the semaphore.
    #[tokio::test]
    async fn ahead_writes_go_before_waiting_behind_writes() {
        let gate = Arc::new(WriteGate::new(1));
        let held = gate.enter(Lane::Ahead).await;
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
        for name in ["b1", "b2", "b3"] {
            tasks.push(spawn(name, Lane::Behind));
            settle().await;
        }
        for name in ["a1", "a2"] {
            tasks.push(spawn(name, Lane::Ahead));
            settle().await;
        }
        drop(held);
        for t in tasks {
            t.await.expect("task");
        }
        let order = order.lock().expect("order").clone();
        assert_eq!(order, ["b1", "a1", "a2", "b2", "b3"]);
    }

    /// The lane orders the waits only: `Behind` writes in flight are bounded by the slots alone.
    #[tokio::test]
    async fn behind_writes_fill_every_free_slot() {
        let gate = WriteGate::new(2);
        let first = gate.enter(Lane::Behind).await;
        let second = tokio::time::timeout(Duration::from_secs(5), gate.enter(Lane::Behind)).await;
        assert!(second.is_ok(), "a second Behind write waited while a slot was free");
        assert_eq!(gate.free(), 0);
        drop(first);
    }

    /// The gauges count what is in flight and what waits in each lane, and a cancelled wait gives
    /// its count back.
    #[tokio::test]
    async fn the_gauges_show_what_is_in_flight_and_waiting() {
        let gauges = Gauges::default();
        let gate = Arc::new(WriteGate::with_gauges(1, gauges.clone()));
        let held = gate.enter(Lane::Ahead).await;
        let spawn = |lane: Lane| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _in = gate.enter(lane).await;
            })
        };
        let behind = spawn(Lane::Behind);
        let ahead = spawn(Lane::Ahead);
        settle().await;
        assert_eq!(
            (gauges.in_flight.get(), gauges.ahead.get(), gauges.behind.get()),
            (1, 1, 1)
        );
        behind.abort();
        let _ = behind.await;
        assert_eq!(gauges.behind.get(), 0, "a cancelled wait still counted");
        drop(held);
        ahead.await.expect("ahead");
        assert_eq!(
            (gauges.in_flight.get(), gauges.ahead.get(), gauges.behind.get()),
            (0, 0, 0)
        );
    }

    /// A `Behind` write that gives up waiting (its reconcile was cut) lets the next one queue.
    #[tokio::test]
    async fn a_cancelled_behind_write_frees_the_lane() {
        let gate = Arc::new(WriteGate::new(1));
        let held = gate.enter(Lane::Ahead).await;
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _in = gate.enter(Lane::Behind).await;
            })
        };
        settle().await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        let next = tokio::time::timeout(Duration::from_secs(5), gate.enter(Lane::Behind)).await;
        assert!(next.is_ok(), "a second Behind write waited behind a cancelled one");
    }
}
