//! Worker slots of one member cluster: `--concurrency` reconciles run at once, but a reconcile that
//! is creating children gives its slot back while it waits for the API server.
//!
//! Why: in a burst, every new cluster's first reconcile spends seconds waiting for its children's
//! creates (a saturated API server answers Service creates in seconds). Holding the slot through
//! that, 16 slots got through about 5 new clusters a second, and a cluster whose pods had become
//! Ready waited behind every first reconcile still queued: all 200 clusters of a 1,000-member burst
//! were `configured` in the last 2 s, 25 s (median) after their pods were Ready.
//!
//! The creates themselves stay bounded: at most `--concurrency` reconciles hold a writing turn at
//! once, in the order they asked (tokio's semaphore is fair), and at most `PARKED` reconciles wait
//! for a turn without a slot; past that, a reconcile keeps its slot while it waits, as before. A
//! reconcile that gave its slot back takes one again before it goes on. At most `--concurrency`
//! reconciles hold a slot and as many a writing turn, so no more than twice `--concurrency` are
//! planning at once.
//!
//! A reconcile that creates StatefulSets ends its turn once they are written (`Turn::end`) and
//! writes its Services without one: they wait behind every StatefulSet at the write gate anyway
//! (`queue::gate`), and held through them, the turn let only ~6 new clusters a second start their
//! pods (docs/loadtest.md, "StatefulSets first"). Those reconciles hold their plan while their
//! Services wait (at most one per new cluster: 200 in a 1,000-member burst, 2–4 MiB more at the
//! peak); the requests they send stay bounded by the gate.
//!
//! A reconcile asks for its turn before it plans its creates (`cluster::reconcile`): one that waits
//! holds its key and the cluster object (shared with the cache), not a plan. Planned first, the
//! 200 new clusters of a burst held about 20 MB of typed children and futures while they waited.
//!
//! The reconcile stays one task from start to end: the shard guard, the cut-off at the shard's
//! renew deadline, and the reconcile record cover its writes exactly as before.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reconciles that may wait for a turn to write without holding a slot (each holds its key and
/// a reference to its cluster object, not its plan).
const PARKED: usize = 1024;

pub struct Slots {
    workers: Arc<Semaphore>,
    writing: Arc<Semaphore>,
    parked: Arc<Semaphore>,
}

/// A writing turn, held by the reconcile it was given to until it ends it or returns.
pub struct Turn {
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Turn {
    /// Gives the turn to the next reconcile while this one goes on writing (`cluster`: once its
    /// StatefulSets are written, its Services go out without a turn).
    pub fn end(&self) {
        drop(self.permit.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// The slot a reconcile runs in (or, while it waits for the API server, gave back).
pub struct Slot {
    slots: Arc<Slots>,
    held: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Slots {
    pub fn new(workers: usize) -> Arc<Self> {
        Self::with_parked(workers, PARKED)
    }

    fn with_parked(workers: usize, parked: usize) -> Arc<Self> {
        let workers = workers.max(1);
        Arc::new(Slots {
            workers: Arc::new(Semaphore::new(workers)),
            writing: Arc::new(Semaphore::new(workers)),
            parked: Arc::new(Semaphore::new(parked)),
        })
    }

    /// Waits for a free slot (the dispatcher takes one before it takes a key off the queue).
    pub async fn take(self: &Arc<Self>) -> Slot {
        let permit = acquire(&self.workers).await;
        Slot {
            slots: self.clone(),
            held: Mutex::new(permit),
        }
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.workers.available_permits()
    }
}

/// Runs every item `next` hands out (until it gives `None`) as its own task, in a slot: the item
/// first, then the slot. The other way round, an idle dispatcher would sit on a free slot while a
/// reconcile that gave its slot back waits to take one again (with one slot: until the next event,
/// or for good). Returns once the items in flight are done.
pub async fn dispatch<T, Next, Run>(slots: Arc<Slots>, mut next: impl FnMut() -> Next, run: impl Fn(T, Slot) -> Run)
where
    Next: Future<Output = Option<T>>,
    Run: Future<Output = ()> + Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    while let Some(item) = next().await {
        let slot = slots.take().await;
        while running.try_join_next().is_some() {}
        running.spawn(run(item, slot));
    }
    while running.join_next().await.is_some() {}
}

/// The semaphores are never closed; `None` only if one were.
async fn acquire(s: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    s.clone().acquire_owned().await.ok()
}

impl Slot {
    fn held(&self) -> std::sync::MutexGuard<'_, Option<OwnedSemaphorePermit>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `writes` (a reconcile that creates children: its plan and writes) in a writing turn,
    /// with this slot given back while it waits for the turn and for the answers; takes a slot
    /// again before returning. `writes` may end its turn early (`Turn::end`).
    pub async fn writing<T, W: Future<Output = T>>(&self, writes: impl FnOnce(Arc<Turn>) -> W) -> T {
        let parked = self.slots.parked.clone().try_acquire_owned().ok();
        if parked.is_some() {
            drop(self.held().take());
        }
        let turn = Arc::new(Turn {
            permit: Mutex::new(acquire(&self.slots.writing).await),
        });
        let out = writes(turn.clone()).await;
        turn.end();
        if parked.is_some() {
            let permit = acquire(&self.slots.workers).await;
            *self.held() = permit;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_waiting_for_its_creates_frees_its_slot_for_the_next_key() {
        let slots = Slots::new(1);
        let first = slots.take().await;
        assert_eq!(slots.free(), 0);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            first.writing(|_| async { rx.await.ok() }).await;
            first
        });
        // The only slot is free while the first reconcile waits for the API server...
        let second = tokio::time::timeout(Duration::from_secs(1), slots.take())
            .await
            .expect("a slot while the first waits");
        // ...and the first takes one back before it goes on: not before the second is done.
        tx.send(()).expect("writer waiting");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!writer.is_finished(), "went on without a slot");
        drop(second);
        let first = writer.await.expect("writer");
        assert_eq!(slots.free(), 0, "the first holds the slot again");
        drop(first);
        assert_eq!(slots.free(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_reconciles_write_at_once_than_there_are_slots() {
        let slots = Slots::new(2);
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let slot = slots.take().await;
            let (now, most) = (now.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                slot.writing(|_| async {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                })
                .await;
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(slots.free(), 2);
    }

    /// A reconcile that ends its turn early (its StatefulSets written, its Services still going
    /// out) lets the next one start while it goes on.
    #[tokio::test(start_paused = true)]
    async fn an_ended_turn_goes_to_the_next_reconcile_at_once() {
        let slots = Slots::new(1);
        let first = slots.take().await;
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            first
                .writing(|turn| async move {
                    turn.end();
                    let _ = ended_tx.send(());
                    let _ = release_rx.await;
                })
                .await;
        });
        ended_rx.await.expect("the first reconcile ended its turn");
        // The first gave its slot back while writing, so the second gets one.
        let second = slots.take().await;
        let got_turn = tokio::time::timeout(Duration::from_secs(1), second.writing(|_| async {})).await;
        assert!(
            got_turn.is_ok(),
            "the second reconcile waited for a turn the first had ended"
        );
        // The first takes a slot again before it returns: the second's.
        drop(second);
        let _ = release_tx.send(());
        writer.await.expect("writer");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_dispatcher_does_not_keep_a_reconcile_from_taking_its_slot_back() {
        let slots = Slots::new(1);
        let (items, queue) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let (finished, mut done) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let dispatcher = tokio::spawn(dispatch(
            slots.clone(),
            move || {
                let queue = queue.clone();
                async move { queue.lock().await.recv().await }
            },
            move |item, slot| {
                let finished = finished.clone();
                async move {
                    // Writes that take a second, then the rest of the reconcile in a slot.
                    slot.writing(|_| tokio::time::sleep(Duration::from_secs(1))).await;
                    let _ = finished.send(item);
                }
            },
        ));
        items.send(7).expect("dispatcher running");
        // Nothing else arrives: the reconcile must still get its slot back and finish.
        let got = tokio::time::timeout(Duration::from_secs(5), done.recv()).await;
        assert_eq!(got.expect("finished while the queue was idle"), Some(7));
        drop(items);
        dispatcher.await.expect("dispatcher ends when the queue does");
        assert_eq!(slots.free(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_parked_limit_a_reconcile_keeps_its_slot() {
        let slots = Slots::with_parked(1, 0);
        let first = slots.take().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move { first.writing(|_| async { rx.await.ok() }).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(slots.free(), 0, "kept");
        tx.send(()).expect("writer waiting");
        writer.await.expect("writer");
    }
}
