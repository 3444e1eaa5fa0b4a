//! Two watches of one kind as one watch: the children a replica selects by bucket on the API server,
//! and the children that carry no bucket label (made by KubeDirector, or from a pod template older
//! than the label), which no selector can add to the first: a selector's requirements are ANDed.
//!
//! Why one stream and not two reflectors into one store: a reflector replaces its whole store at the
//! end of each list, so each watch would wipe the other's objects. Here the union's list is both
//! lists: it starts with one `Init`, passes both lists' objects, and ends with one `InitDone` once
//! both have ended. What a side sends after its own list, while the other still lists, is held back
//! and sent after that `InitDone`, in order (sent before, it would go into the store that the list's
//! end replaces, and be lost). A side that starts a list again (a watch too old to resume, or an
//! error mid-list) restarts both: the union lists again as a whole, so the store never keeps an
//! object one side no longer has.

use std::collections::VecDeque;

use futures::stream::{BoxStream, Stream, StreamExt};
use kube::runtime::watcher::{self, Event};

type Item<K> = Result<Event<K>, watcher::Error>;

/// The union of the streams `make` returns (made again when either starts a new list).
pub(crate) fn union<K, S>(make: impl Fn() -> (S, S) + Send + 'static) -> BoxStream<'static, Item<K>>
where
    K: Send + 'static,
    S: Stream<Item = Item<K>> + Send + 'static,
{
    struct State<K, F> {
        both: Option<BoxStream<'static, (usize, Item<K>)>>,
        make: F,
        /// Per side: its list started, its list ended.
        started: [bool; 2],
        listed: [bool; 2],
        /// A side's events after its list, while the other lists.
        held: VecDeque<Item<K>>,
    }
    let state = State {
        both: None,
        make,
        started: [false; 2],
        listed: [false; 2],
        held: VecDeque::new(),
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            let Some(both) = st.both.as_mut() else {
                let (a, b) = (st.make)();
                st.both = Some(futures::stream::select(a.map(|i| (0, i)), b.map(|i| (1, i))).boxed());
                (st.started, st.listed, st.held) = ([false; 2], [false; 2], VecDeque::new());
                return Some((Ok(Event::Init), st));
            };
            if st.listed == [true; 2]
                && let Some(first) = st.held.pop_front()
            {
                return Some((first, st));
            }
            let (side, item) = both.next().await?;
            let listing = st.listed != [true; 2];
            match item {
                Ok(Event::Init) if st.started[side] => st.both = None, // lists again: both do
                Ok(Event::Init) => st.started[side] = true,
                Ok(Event::InitDone) => {
                    st.listed[side] = true;
                    if st.listed == [true; 2] {
                        return Some((Ok(Event::InitDone), st));
                    }
                }
                Ok(Event::InitApply(o)) => return Some((Ok(Event::InitApply(o)), st)),
                Ok(e @ (Event::Apply(_) | Event::Delete(_))) if listing => st.held.push_back(Ok(e)),
                other => return Some((other, st)),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::channel::mpsc;

    type Tx = mpsc::UnboundedSender<Item<&'static str>>;
    type Union = BoxStream<'static, Item<&'static str>>;

    /// A union of two channels; each call of `make` hands the test a new pair of senders.
    fn channels() -> (Union, mpsc::UnboundedReceiver<(Tx, Tx)>, Arc<AtomicUsize>) {
        let (pairs_tx, pairs_rx) = mpsc::unbounded();
        let made = Arc::new(AtomicUsize::new(0));
        let m = made.clone();
        let s = union(move || {
            m.fetch_add(1, Ordering::SeqCst);
            let (a_tx, a) = mpsc::unbounded();
            let (b_tx, b) = mpsc::unbounded();
            let _ = pairs_tx.unbounded_send((a_tx, b_tx));
            (a, b)
        });
        (s, pairs_rx, made)
    }

    fn show(i: Option<Item<&'static str>>) -> String {
        match i {
            Some(Ok(Event::Init)) => "init".into(),
            Some(Ok(Event::InitApply(o))) => format!("list {o}"),
            Some(Ok(Event::InitDone)) => "listed".into(),
            Some(Ok(Event::Apply(o))) => format!("apply {o}"),
            Some(Ok(Event::Delete(o))) => format!("delete {o}"),
            Some(Err(e)) => format!("error {e}"),
            None => "end".into(),
        }
    }

    async fn next(s: &mut Union) -> String {
        show(s.next().await)
    }

    #[tokio::test]
    async fn one_list_of_both_sides_then_what_a_side_sent_meanwhile() {
        let (mut s, mut pairs, _) = channels();
        assert_eq!(next(&mut s).await, "init");
        let (a, b) = pairs.next().await.expect("a pair");
        for e in [
            Event::Init,
            Event::InitApply("a1"),
            Event::InitDone,
            Event::Apply("a1'"),
            Event::Delete("a2"),
        ] {
            a.unbounded_send(Ok(e)).expect("send");
        }
        assert_eq!(next(&mut s).await, "list a1");
        b.unbounded_send(Ok(Event::Init)).expect("send");
        b.unbounded_send(Ok(Event::InitApply("b1"))).expect("send");
        assert_eq!(
            next(&mut s).await,
            "list b1",
            "a's events after its list wait for b's list"
        );
        b.unbounded_send(Ok(Event::InitDone)).expect("send");
        assert_eq!(next(&mut s).await, "listed");
        assert_eq!(next(&mut s).await, "apply a1'");
        assert_eq!(next(&mut s).await, "delete a2");
        b.unbounded_send(Ok(Event::Apply("b1'"))).expect("send");
        assert_eq!(next(&mut s).await, "apply b1'", "after the list, events pass at once");
    }

    #[tokio::test]
    async fn a_side_listing_again_restarts_both() {
        let (mut s, mut pairs, made) = channels();
        assert_eq!(next(&mut s).await, "init");
        let (a, b) = pairs.next().await.expect("a pair");
        for tx in [&a, &b] {
            tx.unbounded_send(Ok(Event::Init)).expect("send");
            tx.unbounded_send(Ok(Event::InitDone)).expect("send");
        }
        assert_eq!(next(&mut s).await, "listed");
        a.unbounded_send(Err(watcher::Error::NoResourceVersion)).expect("send");
        assert!(
            next(&mut s).await.starts_with("error"),
            "errors pass (the backoff is outside)"
        );
        a.unbounded_send(Ok(Event::Init)).expect("send");
        assert_eq!(next(&mut s).await, "init", "a new list of the union");
        assert_eq!(made.load(Ordering::SeqCst), 2, "both sides made again");
        let (a2, b2) = pairs.next().await.expect("a second pair");
        assert!(
            a.unbounded_send(Ok(Event::InitDone)).is_err(),
            "the old side is dropped"
        );
        for tx in [&a2, &b2] {
            tx.unbounded_send(Ok(Event::Init)).expect("send");
            tx.unbounded_send(Ok(Event::InitApply("x"))).expect("send");
            tx.unbounded_send(Ok(Event::InitDone)).expect("send");
        }
        assert_eq!(next(&mut s).await, "list x");
        assert_eq!(next(&mut s).await, "list x");
        assert_eq!(next(&mut s).await, "listed");
    }
}
