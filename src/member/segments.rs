//! A divided child cache fed by segments: one watch per round of acquisitions, not one watch
//! restarted at every change.
//!
//! Why: restarted at every acquisition, the one watch of a kind listed every held shard again, and
//! while it listed, no event of any shard reached the cache. Under a failover that froze the
//! replica's own clusters for 0.7–3 s each time, on top of the dead replica's shards it took (std20:
//! 23 of the 48 slowest CRs that no failover touched waited on such a list).
//!
//! How: a segment is a watch of the shards acquired together (`owned`, each with the generation it
//! was admitted at). A new round of acquisitions starts a new segment; the running ones go on. Each
//! shard's children come from exactly one segment (events of shards a segment does not own are
//! dropped), so every object's events arrive in order, from one watch.
//!
//! A segment's list is merged into the store, never swapped in: a reflector replaces its whole store
//! at a list's end, which would drop every other segment's objects. At the list's end, the objects
//! that are new or changed are applied, and the objects of the segment's shards that the list no
//! longer has are deleted; unchanged objects pass no event (nor wake their cluster). The division
//! hears that the list is in (`listed`) only once the merge's events have been taken from this
//! stream, so the store and the index hold them by then. The same merge serves a segment that lists
//! again (its watch too old to resume).
//!
//! A released shard's objects are deleted from the store at once; a segment left without shards is
//! dropped, and one that keeps some lists them again with a narrower selector (so that the API
//! server stops sending it the released shards' events; only its own shards' events pause).
//! Segments are capped (`MAX_SEGMENTS`): past it, one segment takes every held shard (its list
//! pauses their events, as every acquisition did before). Each segment's watch has its own backoff
//! (`open`): an error holds back that segment only.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::task::Poll;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use kube::Resource;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

pub(crate) type Item<K> = Result<Event<K>, watcher::Error>;

/// Shards, each with the generation it was admitted at.
pub(crate) type Owned = BTreeMap<u32, u64>;

/// Most segments per kind. Each is two watches (the shards' buckets, and the children without a
/// bucket); past this many, the next acquisition gathers every held shard into one.
pub(crate) const MAX_SEGMENTS: usize = 6;

/// A change of the held shards waits this long for more (a replica acquires its shards one Lease at
/// a time): one segment for a round of acquisitions, not one per shard.
const SETTLE: Duration = Duration::from_millis(50);

/// A watch of these shards' children.
pub(crate) type WatchFn<K> = Box<dyn Fn(&BTreeSet<u32>) -> BoxStream<'static, Item<K>> + Send>;
/// The shard of a child.
pub(crate) type ShardFn<K> = Box<dyn Fn(&K) -> Option<u32> + Send>;
/// A report about a set of shards.
pub(crate) type ReportFn<A> = Box<dyn Fn(&Owned, A) + Send>;

/// What a divided kind's segments are made of and report to.
pub(crate) struct Feed<K: Resource<DynamicType = ()> + Clone + 'static> {
    /// A watch of these shards' children (labelled by bucket, and those without a bucket).
    pub watch: WatchFn<K>,
    /// The shard of a child (the cluster its label names); None without the label.
    pub shard_of: ShardFn<K>,
    /// The shards the cache keeps now.
    pub admitted: Box<dyn Fn() -> Owned + Send>,
    /// A list of these shards is in the store and the index.
    pub listed: Box<dyn Fn(&Owned) + Send>,
    /// An event dropped: its shard is not its segment's.
    pub dropped: Box<dyn Fn() + Send>,
    /// A segment (or its list) started.
    pub started: ReportFn<Start>,
    /// The store the stream's events go into (read, to merge lists and purge releases).
    pub store: Store<K>,
    /// Bumped at every change of the admitted shards.
    pub changes: watch::Receiver<u64>,
}

/// Why a segment lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// New: the shards acquired in one round.
    Acquired,
    /// Again, for the shards it keeps after a release.
    Narrowed,
    /// New: every held shard, past `MAX_SEGMENTS` (the other segments are dropped).
    Gathered,
}

struct Segment<K> {
    owned: Owned,
    stream: BoxStream<'static, Item<K>>,
    /// The list being merged: from the watch's `Init` to its `InitDone`.
    merging: Option<Vec<K>>,
}

struct State<K: Resource<DynamicType = ()> + Clone + 'static> {
    feed: Feed<K>,
    segments: Vec<Segment<K>>,
    out: VecDeque<Item<K>>,
    /// Lists whose merge is in `out`: reported once `out` has been taken.
    notify: Vec<Owned>,
    /// The change signal is gone (the member is stopping): no more regrouping.
    closed: bool,
    pending: bool,
    /// The segment polled first next time (each gets its turn).
    turn: usize,
}

/// The events of one divided kind: an empty list (the store is ready, holding no shard), then the
/// segments' events, merged as the module doc says.
pub(crate) fn divided<K>(feed: Feed<K>) -> BoxStream<'static, Item<K>>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let state = State {
        feed,
        segments: Vec::new(),
        out: VecDeque::from([Ok(Event::Init), Ok(Event::InitDone)]),
        notify: Vec::new(),
        closed: false,
        pending: true,
        turn: 0,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.out.pop_front() {
                return Some((item, st));
            }
            for owned in std::mem::take(&mut st.notify) {
                (st.feed.listed)(&owned);
            }
            if st.pending && !st.closed {
                tokio::time::sleep(SETTLE).await;
                st.pending = false;
                st.feed.changes.borrow_and_update();
                st.regroup();
                continue;
            }
            let next = {
                let open = !st.closed;
                let changes = &mut st.feed.changes;
                let any = next_of(&mut st.segments, &mut st.turn);
                tokio::select! {
                    biased;
                    changed = changes.changed(), if open => Err(changed.is_ok()),
                    got = any => Ok(got),
                }
            };
            match next {
                Err(true) => st.pending = true,
                Err(false) => st.closed = true,
                Ok((i, None)) => {
                    // A watch does not end; if one does, its shards get a new segment.
                    st.segments.remove(i);
                    st.pending = true;
                }
                Ok((i, Some(item))) => st.take(i, item),
            }
        }
    })
    .boxed()
}

/// A segment's watch, with a backoff of its own: after an error only this segment waits before it
/// watches again. One backoff around all of them (as a plain reflector has) would hold back every
/// held shard's events for one segment's error.
fn open<K>(watch: &WatchFn<K>, shards: &BTreeSet<u32>) -> BoxStream<'static, Item<K>>
where
    K: Send + 'static,
{
    watch(shards).default_backoff().boxed()
}

/// The next item of any segment (each in turn first); pending forever without segments.
async fn next_of<K>(segments: &mut [Segment<K>], turn: &mut usize) -> (usize, Option<Item<K>>) {
    futures::future::poll_fn(|cx| {
        let n = segments.len();
        for k in 0..n {
            let i = (*turn + k) % n;
            if let Poll::Ready(item) = segments[i].stream.poll_next_unpin(cx) {
                *turn = (i + 1) % n;
                return Poll::Ready((i, item));
            }
        }
        Poll::Pending
    })
    .await
}

impl<K> State<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    fn owns(&self, i: usize, o: &K) -> bool {
        (self.feed.shard_of)(o).is_some_and(|s| self.segments[i].owned.contains_key(&s))
    }

    /// One item of segment `i`.
    fn take(&mut self, i: usize, item: Item<K>) {
        match item {
            Ok(Event::Init) => self.segments[i].merging = Some(Vec::new()),
            Ok(Event::InitApply(o)) => match self.segments[i].merging.as_mut() {
                Some(list) => list.push(o),
                // Not after an Init (no watch does that): as an event.
                None => self.pass(i, Event::Apply(o)),
            },
            Ok(Event::InitDone) => {
                if let Some(list) = self.segments[i].merging.take() {
                    self.merge(i, list);
                }
            }
            Ok(e @ (Event::Apply(_) | Event::Delete(_))) => self.pass(i, e),
            // Passed on to be logged. This segment's own backoff (`open`) holds its watch back; the
            // watch then resumes or lists again, merged as any list.
            Err(e) => self.out.push_back(Err(e)),
        }
    }

    fn pass(&mut self, i: usize, e: Event<K>) {
        let o = match &e {
            Event::Apply(o) | Event::Delete(o) => o,
            _ => return,
        };
        if self.owns(i, o) {
            self.out.push_back(Ok(e));
        } else {
            (self.feed.dropped)();
        }
    }

    /// Segment `i`'s list ended: apply what is new or changed, delete what its shards no longer
    /// have, then report the list (once these events are taken).
    fn merge(&mut self, i: usize, list: Vec<K>) {
        let mut seen = HashSet::with_capacity(list.len());
        for o in list {
            if !self.owns(i, &o) {
                (self.feed.dropped)();
                continue;
            }
            let key = ObjectRef::from_obj(&o);
            // Same version, same object. Versions are compared for equality only (their order is
            // not part of the API's contract): a list from the watch cache is never older than
            // what a watch of that cache has already passed on.
            let unchanged = self
                .feed
                .store
                .get(&key)
                .is_some_and(|cur| cur.meta().resource_version == o.meta().resource_version);
            seen.insert(key);
            if !unchanged {
                self.out.push_back(Ok(Event::Apply(o)));
            }
        }
        for cur in self.feed.store.state() {
            if self.owns(i, &cur) && !seen.contains(&ObjectRef::from_obj(&*cur)) {
                self.out.push_back(Ok(Event::Delete((*cur).clone())));
            }
        }
        self.notify.push(self.segments[i].owned.clone());
    }

    /// The admitted shards changed: released shards leave their segments (their objects leave the
    /// store), acquired ones get a new segment.
    fn regroup(&mut self) {
        let admitted = (self.feed.admitted)();
        let mut released = BTreeSet::new();
        let (watch, started) = (&self.feed.watch, &self.feed.started);
        for seg in &mut self.segments {
            let before = seg.owned.len();
            seg.owned.retain(|s, g| {
                let keep = admitted.get(s) == Some(g);
                if !keep {
                    released.insert(*s);
                }
                keep
            });
            if !seg.owned.is_empty() && seg.owned.len() < before {
                // Narrowed to the shards it keeps: left as it was, it would go on receiving the
                // released shards' events (from the API server, only to drop them). Its list
                // pauses the events of its own shards only, not of the other segments'.
                started(&seg.owned, Start::Narrowed);
                seg.stream = open(watch, &seg.owned.keys().copied().collect());
                seg.merging = None;
            }
        }
        self.segments.retain(|s| !s.owned.is_empty());
        if !released.is_empty() {
            for cur in self.feed.store.state() {
                if (self.feed.shard_of)(&cur).is_some_and(|s| released.contains(&s)) {
                    self.out.push_back(Ok(Event::Delete((*cur).clone())));
                }
            }
        }
        let covered: BTreeSet<u32> = self.segments.iter().flat_map(|s| s.owned.keys().copied()).collect();
        let added: Owned = admitted
            .iter()
            .filter(|(s, _)| !covered.contains(s))
            .map(|(s, g)| (*s, *g))
            .collect();
        if added.is_empty() {
            return;
        }
        let gather = self.segments.len() >= MAX_SEGMENTS;
        let owned = if gather {
            self.segments.clear();
            admitted
        } else {
            added
        };
        let start = if gather { Start::Gathered } else { Start::Acquired };
        (self.feed.started)(&owned, start);
        let shards: BTreeSet<u32> = owned.keys().copied().collect();
        self.segments.push(Segment {
            stream: open(&self.feed.watch, &shards),
            owned,
            merging: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use futures::channel::mpsc;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector::{self, store::Writer};

    type Tx = mpsc::UnboundedSender<Item<Pod>>;

    /// A pod of shard `shard` at resource version `rv`.
    fn pod(name: &str, shard: u32, rv: u64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some([("shard".to_string(), shard.to_string())].into()),
                resource_version: Some(rv.to_string()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn show(e: &Item<Pod>) -> String {
        let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
        match e {
            Ok(Event::Init) => "init".into(),
            Ok(Event::InitApply(p)) => format!("list {}", name(p)),
            Ok(Event::InitDone) => "listed".into(),
            Ok(Event::Apply(p)) => format!("apply {}", name(p)),
            Ok(Event::Delete(p)) => format!("delete {}", name(p)),
            Err(e) => format!("error {e}"),
        }
    }

    /// The stream under test, fed by channels, with the store a reflector would keep.
    struct Bed {
        s: BoxStream<'static, Item<Pod>>,
        writer: Writer<Pod>,
        store: Store<Pod>,
        admitted: Arc<Mutex<Owned>>,
        listed: Arc<Mutex<Vec<Owned>>>,
        changes: watch::Sender<u64>,
        made: mpsc::UnboundedReceiver<(BTreeSet<u32>, Tx)>,
    }

    fn bed() -> Bed {
        let (store, writer) = reflector::store::<Pod>();
        let admitted = Arc::new(Mutex::new(Owned::new()));
        let listed = Arc::new(Mutex::new(Vec::new()));
        let (changes, rx) = watch::channel(0);
        let (made_tx, made) = mpsc::unbounded();
        let (a, l) = (admitted.clone(), listed.clone());
        let s = divided(Feed {
            watch: Box::new(move |shards| {
                let (tx, rx) = mpsc::unbounded();
                let _ = made_tx.unbounded_send((shards.clone(), tx));
                rx.boxed()
            }),
            shard_of: Box::new(|p: &Pod| p.metadata.labels.as_ref()?.get("shard")?.parse().ok()),
            admitted: Box::new(move || a.lock().expect("lock").clone()),
            listed: Box::new(move |o| l.lock().expect("lock").push(o.clone())),
            dropped: Box::new(|| {}),
            started: Box::new(|_, _| {}),
            store: store.clone(),
            changes: rx,
        });
        Bed {
            s,
            writer,
            store,
            admitted,
            listed,
            changes,
            made,
        }
    }

    impl Bed {
        /// The next event, applied to the store as the reflector would; None if none comes in 1 s.
        async fn next(&mut self) -> Option<String> {
            let item = tokio::time::timeout(Duration::from_secs(1), self.s.next())
                .await
                .ok()??;
            if let Ok(e) = &item {
                self.writer.apply_watcher_event(e);
            }
            Some(show(&item))
        }

        async fn admit(&mut self, shards: &[(u32, u64)]) -> (BTreeSet<u32>, Tx) {
            *self.admitted.lock().expect("lock") = shards.iter().copied().collect();
            self.changes.send_modify(|g| *g += 1);
            assert_eq!(self.next().await, None, "the change makes no event by itself");
            self.made.next().await.expect("a segment")
        }

        /// Every event until none comes for 1 s.
        async fn drain(&mut self) -> Vec<String> {
            let mut got = Vec::new();
            while let Some(e) = self.next().await {
                got.push(e);
            }
            got
        }

        fn names(&self) -> Vec<String> {
            let mut v: Vec<String> = self
                .store
                .state()
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            v.sort();
            v
        }

        fn listed(&self) -> Vec<Owned> {
            std::mem::take(&mut *self.listed.lock().expect("lock"))
        }
    }

    /// A bed past its empty first list: ready, holding no shard.
    async fn ready() -> Bed {
        let mut b = bed();
        assert_eq!(b.next().await.as_deref(), Some("init"));
        assert_eq!(b.next().await.as_deref(), Some("listed"), "ready, holding no shard");
        b
    }

    /// A whole list of `pods` from one watch.
    fn list(tx: &Tx, pods: Vec<Pod>) {
        send(tx, vec![Event::Init]);
        send(tx, pods.into_iter().map(Event::InitApply).collect());
        send(tx, vec![Event::InitDone]);
    }

    fn send(tx: &Tx, events: Vec<Event<Pod>>) {
        for e in events {
            tx.unbounded_send(Ok(e)).expect("send");
        }
    }

    fn owned(s: &[(u32, u64)]) -> Owned {
        s.iter().copied().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_acquisition_lists_only_its_shards_while_the_others_keep_their_events() {
        let mut b = ready().await;
        let (shards, one) = b.admit(&[(1, 1)]).await;
        assert_eq!(shards, [1].into());
        list(&one, vec![pod("a", 1, 5)]);
        assert_eq!(
            b.next().await.as_deref(),
            Some("apply a"),
            "a list is merged, not swapped"
        );
        assert!(b.listed().is_empty(), "reported only once its events are taken");
        assert_eq!(b.next().await, None);
        assert_eq!(b.listed(), vec![owned(&[(1, 1)])]);

        let (shards, two) = b.admit(&[(1, 1), (2, 2)]).await;
        assert_eq!(shards, [2].into(), "a new segment for the acquired shard only");
        send(&two, vec![Event::Init, Event::InitApply(pod("b", 2, 7))]);
        send(&one, vec![Event::Apply(pod("a", 1, 8))]);
        assert_eq!(
            b.next().await.as_deref(),
            Some("apply a"),
            "shard 1's events flow while shard 2 lists"
        );
        send(&two, vec![Event::InitDone]);
        assert_eq!(b.next().await.as_deref(), Some("apply b"));
        assert_eq!(b.next().await, None);
        assert_eq!(b.listed(), vec![owned(&[(2, 2)])]);
        assert_eq!(b.names(), ["a", "b"], "both segments' objects are in the store");
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_again_applies_what_changed_and_deletes_what_is_gone() {
        let mut b = ready().await;
        let (_, one) = b.admit(&[(1, 1), (2, 1)]).await;
        list(
            &one,
            vec![pod("a", 1, 5), pod("b", 2, 5), pod("c", 2, 5), pod("x", 3, 5)],
        );
        for want in ["apply a", "apply b", "apply c"] {
            assert_eq!(b.next().await.as_deref(), Some(want), "shard 3 is not this segment's");
        }
        assert_eq!(b.next().await, None);
        // The watch was too old to resume: it lists again. a is unchanged (no event), b changed,
        // c is gone, d is new.
        let again = || vec![pod("a", 1, 5), pod("b", 2, 9), pod("d", 1, 9)];
        list(&one, again());
        assert_eq!(b.drain().await, ["apply b", "apply d", "delete c"]);
        assert_eq!(b.names(), ["a", "b", "d"]);
        assert_eq!(b.listed().len(), 2);
        list(&one, again());
        assert_eq!(b.next().await, None, "a list with nothing changed passes no event");
        assert_eq!(b.listed().len(), 1, "but is reported");
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_deletes_its_objects_at_once_and_its_events_are_dropped() {
        let mut b = ready().await;
        let (_, one) = b.admit(&[(1, 1), (2, 1)]).await;
        list(&one, vec![pod("a", 1, 5), pod("b", 2, 5)]);
        assert_eq!(b.drain().await, ["apply a", "apply b"]);
        *b.admitted.lock().expect("lock") = owned(&[(2, 1)]);
        b.changes.send_modify(|g| *g += 1);
        assert_eq!(b.next().await.as_deref(), Some("delete a"), "released: deleted at once");
        assert_eq!(b.next().await, None);
        let (shards, one) = b.made.next().await.expect("the segment narrowed");
        assert_eq!(shards, [2].into(), "it lists only the shard it keeps");
        list(&one, vec![pod("b", 2, 5), pod("e", 2, 6), pod("a", 1, 6)]);
        assert_eq!(
            b.next().await.as_deref(),
            Some("apply e"),
            "b unchanged, a not its shard's"
        );
        assert_eq!(b.next().await, None);
        send(&one, vec![Event::Apply(pod("a", 1, 6)), Event::Apply(pod("b", 2, 6))]);
        assert_eq!(b.next().await.as_deref(), Some("apply b"), "shard 1's event is dropped");
        // Taken again (a new generation): a new segment lists it; the old one's events stay dropped.
        let (shards, again) = b.admit(&[(1, 3), (2, 1)]).await;
        assert_eq!(shards, [1].into());
        send(&one, vec![Event::Apply(pod("a", 1, 7))]);
        assert_eq!(b.next().await, None);
        list(&again, vec![pod("a", 1, 7)]);
        assert_eq!(b.next().await.as_deref(), Some("apply a"));
        assert_eq!(b.next().await, None);
        assert_eq!(b.listed().last(), Some(&owned(&[(1, 3)])));
        // Every shard released: the segments are dropped (their watches end).
        *b.admitted.lock().expect("lock") = owned(&[(5, 4)]);
        b.changes.send_modify(|g| *g += 1);
        let mut got = b.drain().await;
        got.sort();
        assert_eq!(got, ["delete a", "delete b", "delete e"]);
        assert!(one.is_closed() && again.is_closed());
        assert!(b.names().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_one_segment_takes_every_held_shard() {
        let mut b = ready().await;
        let mut held = Vec::new();
        let mut txs = Vec::new();
        for s in 0..MAX_SEGMENTS as u32 {
            held.push((s, u64::from(s) + 1));
            let (shards, tx) = b.admit(&held).await;
            assert_eq!(shards, [s].into());
            txs.push(tx);
        }
        held.push((99, 99));
        let (shards, _) = b.admit(&held).await;
        assert_eq!(shards.len(), MAX_SEGMENTS + 1, "gathered: every held shard");
        assert!(txs.iter().all(|t| t.is_closed()), "the other segments are dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_holds_back_only_its_own_segment() {
        let mut b = ready().await;
        let (_, one) = b.admit(&[(1, 1)]).await;
        list(&one, vec![pod("a", 1, 5)]);
        assert_eq!(b.drain().await, ["apply a"]);
        let (_, two) = b.admit(&[(1, 1), (2, 2)]).await;
        list(&two, vec![pod("b", 2, 5)]);
        assert_eq!(b.drain().await, ["apply b"]);

        let t0 = tokio::time::Instant::now();
        one.unbounded_send(Err(watcher::Error::NoResourceVersion))
            .expect("send");
        send(&one, vec![Event::Apply(pod("a", 1, 6))]);
        send(&two, vec![Event::Apply(pod("b", 2, 6))]);
        let mut at = Vec::new();
        for _ in 0..3 {
            let item = tokio::time::timeout(Duration::from_secs(60), b.s.next()).await;
            let item = item.expect("an event within the backoff").expect("open");
            at.push((show(&item), t0.elapsed()));
        }
        assert!(at[0].0.starts_with("error"), "the error is passed on: {at:?}");
        assert_eq!(at[1].0, "apply b", "the other segment's event comes at once");
        assert!(at[1].1 < Duration::from_millis(100), "{at:?}");
        assert_eq!(at[2].0, "apply a", "after its segment's backoff");
        assert!(
            at[2].1 >= Duration::from_millis(800),
            "the backoff waits 0.8 s at least: {at:?}"
        );
    }
}
