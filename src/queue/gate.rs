//! Writes in flight to one member cluster, in three lanes: every other write, then the Services of
//! clusters whose pods are Ready, then the other Services.
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
//! configured in 26–28.5 s instead of 35–40 s, with 15–25 fewer CPU-seconds on the bed. Five other
//! orders, measured against it (docs/loadtest.md, "Six orders"): only those with a cluster's
//! Services in place before its pods are Ready kept its status within 0.5 s of them, and their
//! bursts took 1.3–1.7× the floor's time (with 1,700–3,100 more endpoint events, the likely cost;
//! not separated from the bed's speed by a profile). A cluster created alone finds the gate empty
//! and is not held at all.
//!
//! Why a `Ready` lane: with the Services in one line, a cluster whose pods were Ready waited for
//! the Services of every cluster queued before it, Ready or not (the lag after pods p99 17–22 s).
//! A new cluster's Services move to the `Ready` lane once its pods are (`enter_service`), so they
//! go out before the Services of clusters still starting, and still after every StatefulSet.
//! Their write-budget token is taken here, once a write is the next of its lane (`admit`): taken
//! before, the waiting Services held the tokens that the next clusters' StatefulSets needed
//! (docs/loadtest.md, "Services of Ready clusters first").
//!
//! How: one fair semaphore for the slots. An `Ahead` write queues at it directly. `Ready` writes
//! queue one at a time behind the `Ready` lane's lock; `Behind` writes one at a time behind the
//! `Behind` lane's lock and then the `Ready` one, so at most one `Ready` or `Behind` write is ever
//! among the semaphore's waiters, and every `Ahead` write that arrives meanwhile is served at most
//! one write later. Neither lane is starved: each write gets its turn once the one queued before it
//! at its lock has its slot. Every wait is cancel-safe (a reconcile cut at its shard's deadline
//! drops them).

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Mutex, Semaphore, SemaphorePermit};

/// Where a write queues for its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Served before every `Ready` and `Behind` write but one of each.
    Ahead,
    /// Waits behind `Ahead` writes (a new cluster's Service whose pods are Ready:
    /// `enter_service`).
    Ready,
    /// Waits behind `Ahead` and `Ready` writes (a Service write: `reconcile::apply::lane_of`).
    Behind,
}

pub struct WriteGate {
    slots: Semaphore,
    size: std::sync::Mutex<Size>,
    ready_lane: Mutex<()>,
    behind_lane: Mutex<()>,
    gauges: Gauges,
}

/// What the gate holds now, for the metrics (`kubedirector_writes_in_flight`,
/// `kubedirector_writes_waiting{lane}`): whether `--writes-in-flight` is what holds writes back.
#[derive(Clone, Default)]
pub struct Gauges {
    /// The bound in force (`resize`).
    pub limit: Gauge,
    pub in_flight: Gauge,
    pub ahead: Gauge,
    pub ready: Gauge,
    pub behind: Gauge,
}

/// The bound now, and the slots to retire as they come back: a bound lowered while its slots are
/// out cannot take them back at once (`resize`).
#[derive(Debug)]
struct Size {
    limit: usize,
    owed: usize,
}

/// A slot for one write in flight; the slot frees when this is dropped.
pub struct InFlight<'a> {
    permit: Option<SemaphorePermit<'a>>,
    gate: &'a WriteGate,
    _counted: Counted,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else { return };
        // Returned or retired under the lock: a `resize` in between would not see this slot and
        // leave it free past a lowered bound.
        let mut size = self.gate.size();
        if size.owed > 0 {
            size.owed -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
    }
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
        gauges.limit.set(in_flight.max(1) as i64);
        WriteGate {
            slots: Semaphore::new(in_flight.max(1)),
            size: std::sync::Mutex::new(Size {
                limit: in_flight.max(1),
                owed: 0,
            }),
            ready_lane: Mutex::new(()),
            behind_lane: Mutex::new(()),
            gauges,
        }
    }

    fn size(&self) -> std::sync::MutexGuard<'_, Size> {
        self.size.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the bound to `in_flight` (at least one). Raised: the new slots are free at once.
    /// Lowered: free slots are retired at once, the rest as their writes are answered; no write in
    /// flight is cut.
    pub fn resize(&self, in_flight: usize) {
        let target = in_flight.max(1);
        let mut size = self.size();
        if target >= size.limit {
            let grow = target - size.limit;
            let repaid = grow.min(size.owed);
            size.owed -= repaid;
            self.slots.add_permits(grow - repaid);
        } else {
            let shrink = size.limit - target;
            let retired = self.slots.forget_permits(shrink);
            size.owed += shrink - retired;
        }
        size.limit = target;
        self.gauges.limit.set(target as i64);
    }

    /// The bound now (what `resize` last set).
    pub fn limit(&self) -> usize {
        self.size().limit
    }

    /// Waits for a slot for one write of `lane`.
    pub async fn enter(&self, lane: Lane) -> InFlight<'_> {
        self.enter_admitted(lane, || async {}).await
    }

    /// As `enter`; `admit` runs once this write is the next of its lane (`Ready`, `Behind`) and
    /// before it waits for its slot (the write budget's token: so the tokens, too, go out in the
    /// lanes' order, and a waiting Service holds none of them).
    pub async fn enter_admitted<A: Future<Output = ()>>(&self, lane: Lane, admit: impl FnOnce() -> A) -> InFlight<'_> {
        let waiting = Counted::new(self.gauge(lane));
        let _next = match lane {
            Lane::Ahead => None,
            Lane::Ready => Some((None, self.ready_lane.lock().await)),
            Lane::Behind => {
                let behind = self.behind_lane.lock().await;
                Some((Some(behind), self.ready_lane.lock().await))
            }
        };
        admit().await;
        self.slot(waiting).await
    }

    /// A new cluster's Service: a `Behind` write until `promoted` completes (its pods are Ready),
    /// then a `Ready` write. Once it is the next of the `Behind` lane it is not moved: it then
    /// waits at the `Ready` lane's lock in its arrival order either way. `admit` as in
    /// `enter_admitted`.
    pub async fn enter_service<A: Future<Output = ()>>(
        &self,
        promoted: impl Future<Output = ()>,
        admit: impl FnOnce() -> A,
    ) -> InFlight<'_> {
        // Promotion counts only until the write is the next of the `Behind` lane: from then on it
        // queues at the `Ready` lane's lock in the order it came, as a `Ready` write would.
        let mut waiting = Counted::new(&self.gauges.behind);
        let behind = tokio::select! {
            biased;
            next = self.behind_lane.lock() => Some(next),
            () = promoted => {
                waiting = Counted::new(&self.gauges.ready);
                None
            }
        };
        let _next = (behind, self.ready_lane.lock().await);
        admit().await;
        self.slot(waiting).await
    }

    fn gauge(&self, lane: Lane) -> &Gauge {
        match lane {
            Lane::Ahead => &self.gauges.ahead,
            Lane::Ready => &self.gauges.ready,
            Lane::Behind => &self.gauges.behind,
        }
    }

    /// The slot itself, for a write no longer `waiting` in its lane once it has it.
    async fn slot(&self, waiting: Counted) -> InFlight<'_> {
        let permit = self.slots.acquire().await;
        drop(waiting);
        // The semaphore is never closed; were it, the write would go out unbounded rather than not at all.
        InFlight {
            permit: permit.ok(),
            gate: self,
            _counted: Counted::new(&self.gauges.in_flight),
        }
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.slots.available_permits()
    }
}

/// This replica's part of the operator's `--writes-in-flight` to one member cluster: the share of
/// the shards it holds, rounded up, at least one. The bound is the operator's, not each replica's:
/// three replicas with 32 each sent up to 96 writes at once, more than the API server's
/// `workload-low` level held while it lent its seats (docs/loadtest.md, "The standard run's
/// bunches"). The keys hash evenly over the shards, so the writes do too.
pub fn share(in_flight: usize, held: usize, shards: usize) -> usize {
    if shards == 0 {
        return in_flight.max(1);
    }
    (in_flight * held.min(shards)).div_ceil(shards).max(1)
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

    /// A Service promoted while it waits in the `Behind` lane is served as a `Ready` write: before
    /// the `Behind` writes queued with it, after the `Ahead` writes.
    #[tokio::test]
    async fn a_promoted_service_goes_before_the_behind_lane_and_after_the_ahead_writes() {
        let gate = Arc::new(WriteGate::new(1));
        let held = gate.enter(Lane::Ahead).await;
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (promote, promoted) = tokio::sync::oneshot::channel::<()>();
        let mut tasks = Vec::new();
        let record = |name: &'static str, order: Arc<std::sync::Mutex<Vec<&'static str>>>| {
            order.lock().expect("order").push(name);
        };
        for name in ["b1", "b2"] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _in = gate.enter(Lane::Behind).await;
                record(name, order);
                tokio::task::yield_now().await;
            }));
            settle().await;
        }
        {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let promoted = async {
                    let _ = promoted.await;
                };
                let _in = gate.enter_service(promoted, || async {}).await;
                record("p", order);
                tokio::task::yield_now().await;
            }));
            settle().await;
        }
        {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _in = gate.enter(Lane::Ahead).await;
                record("a1", order);
                tokio::task::yield_now().await;
            }));
            settle().await;
        }
        assert_eq!(gate.gauges.behind.get(), 3, "p waits in the Behind lane until promoted");
        promote.send(()).expect("promote");
        settle().await;
        assert_eq!(gate.gauges.behind.get(), 2, "promoted: p left the Behind lane");
        assert_eq!((gate.gauges.ready.get(), gate.gauges.ahead.get()), (1, 1));
        drop(held);
        for t in tasks {
            t.await.expect("task");
        }
        let order = order.lock().expect("order").clone();
        assert_eq!(order, ["b1", "a1", "p", "b2"]);
    }

    /// A lane admits (takes the token of) only its next write: the others wait without one.
    #[tokio::test]
    async fn only_the_next_write_of_a_lane_is_admitted() {
        let gate = Arc::new(WriteGate::new(1));
        let held = gate.enter(Lane::Ahead).await;
        let admitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for lane in [Lane::Behind, Lane::Behind, Lane::Ready, Lane::Ready] {
            let (gate, admitted) = (gate.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                let admit = || async {
                    admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                };
                let _in = gate.enter_admitted(lane, admit).await;
                tokio::task::yield_now().await;
            }));
            settle().await;
        }
        // The first Behind write holds both lane locks while it waits for the slot: nobody else.
        assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop(held);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 4);
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

    /// A bound lowered while its slots are out retires them as they come back, and a bound raised
    /// again first cancels what is still owed: the writes in flight never exceed the bound in force.
    #[tokio::test]
    async fn a_resized_bound_holds_once_the_writes_out_are_answered() {
        let gate = WriteGate::new(4);
        let out: Vec<_> = futures::future::join_all((0..4).map(|_| gate.enter(Lane::Ahead))).await;
        gate.resize(1);
        assert_eq!((gate.limit(), gate.free()), (1, 0));
        let mut out = out.into_iter();
        drop(out.next());
        drop(out.next());
        assert_eq!(gate.free(), 0, "two of the three owed slots retired");
        gate.resize(2);
        assert_eq!(
            gate.free(),
            0,
            "raised by one: the one slot still owed is kept, none freed"
        );
        drop(out.next());
        assert_eq!(gate.free(), 1, "two out of a bound of two, then one");
        drop(out.next());
        assert_eq!(gate.free(), 2);
        let held = gate.enter(Lane::Ahead).await;
        gate.resize(6);
        assert_eq!(gate.free(), 5);
        drop(held);
        assert_eq!((gate.limit(), gate.free()), (6, 6));
        gate.resize(0);
        assert_eq!((gate.limit(), gate.free()), (1, 1), "at least one slot");
    }

    #[test]
    fn replicas_share_the_bound_by_the_shards_they_hold() {
        assert_eq!(share(32, 32, 32), 32, "one replica holding every shard");
        let three: Vec<usize> = [11, 11, 10].iter().map(|h| share(32, *h, 32)).collect();
        assert_eq!(three, [11, 11, 10]);
        assert_eq!(share(32, 3, 4), 24);
        assert_eq!(
            share(32, 0, 32),
            1,
            "holding none: still one, for the writes outside shards"
        );
        assert_eq!(share(32, 1, 64), 1, "rounded up, never zero");
        assert_eq!(share(32, 5, 0), 32, "unsharded");
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
