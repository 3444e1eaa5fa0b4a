//! Queue behaviour on tokio's paused clock: time only moves when every task is idle, so delays are
//! measured exactly and no test sleeps for real.

use std::time::Duration;

use tokio::time::Instant;

use super::backoff::Backoff;
use super::coalesce::StatusCoalescer;
use super::{Outcome, WorkQueue};

fn queue() -> WorkQueue<String> {
    WorkQueue::new(
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: 0.0,
        },
        1,
    )
}

fn k(s: &str) -> String {
    s.to_string()
}

/// `next` with a deadline: `None` if nothing becomes ready within `limit` of (fake) time.
async fn next_within(q: &WorkQueue<String>, limit: Duration) -> Option<String> {
    tokio::time::timeout(limit, q.next())
        .await
        .ok()
        .flatten()
        .map(|(key, _)| key)
}

#[tokio::test(start_paused = true)]
async fn adds_of_a_queued_key_are_deduplicated() {
    let q = queue();
    for _ in 0..5 {
        q.add(k("a"));
    }
    q.add(k("b"));
    assert_eq!(q.depth(), 2);
    assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some(k("a")));
    assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some(k("b")));
    assert_eq!(
        next_within(&q, Duration::from_secs(60)).await,
        None,
        "a was handed out once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_running_key_is_never_handed_out_twice() {
    let q = queue();
    q.add(k("a"));
    assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some(k("a")));
    q.add(k("a")); // a change while it runs
    q.add(k("a"));
    assert_eq!(next_within(&q, Duration::from_secs(60)).await, None, "single flight");
    q.done(&k("a"), Outcome::Done);
    assert_eq!(
        next_within(&q, Duration::from_secs(1)).await,
        Some(k("a")),
        "the change is not lost"
    );
    q.done(&k("a"), Outcome::Done);
    assert_eq!(
        next_within(&q, Duration::from_secs(60)).await,
        None,
        "and runs once for both adds"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_on_failures_and_resets_on_success() {
    let q = queue();
    q.add(k("a"));
    let mut delays = Vec::new();
    let mut last = Instant::now();
    for _ in 0..5 {
        let got = next_within(&q, Duration::from_secs(60)).await;
        assert_eq!(got, Some(k("a")));
        delays.push(last.elapsed().as_millis());
        q.done(&k("a"), Outcome::Failed { retry_after: None });
        last = Instant::now();
    }
    assert_eq!(delays, vec![0, 100, 200, 400, 800]);
    assert_eq!(q.failures(&k("a")), 5);
    assert_eq!(next_within(&q, Duration::from_secs(60)).await, Some(k("a")));
    q.done(&k("a"), Outcome::Done);
    assert_eq!(q.failures(&k("a")), 0, "success resets");
    q.add(k("a"));
    assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some(k("a")));
    let t = Instant::now();
    q.done(&k("a"), Outcome::Failed { retry_after: None });
    assert_eq!(next_within(&q, Duration::from_secs(60)).await, Some(k("a")));
    assert_eq!(
        t.elapsed().as_millis(),
        100,
        "first failure after a success waits the base again"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_from_the_server_is_honoured() {
    let q = queue();
    q.add(k("a"));
    assert!(next_within(&q, Duration::from_secs(1)).await.is_some());
    let t = Instant::now();
    q.done(
        &k("a"),
        Outcome::Failed {
            retry_after: Some(Duration::from_secs(7)),
        },
    );
    q.add(k("a")); // an event during the wait does not cut it short
    assert_eq!(next_within(&q, Duration::from_secs(60)).await, Some(k("a")));
    assert_eq!(t.elapsed(), Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn throttled_keys_wait_without_backoff_and_resyncs_yield_to_events() {
    let q = queue();
    q.add(k("a"));
    assert!(next_within(&q, Duration::from_secs(1)).await.is_some());
    let t = Instant::now();
    q.done(&k("a"), Outcome::Throttled(Duration::from_millis(250)));
    q.add(k("a"));
    assert_eq!(next_within(&q, Duration::from_secs(60)).await, Some(k("a")));
    assert_eq!(
        t.elapsed(),
        Duration::from_millis(250),
        "waits for the write budget, not less"
    );
    assert_eq!(q.failures(&k("a")), 0, "throttling is not a failure");

    q.done(&k("a"), Outcome::RequeueAfter(Duration::from_secs(600)));
    let t = Instant::now();
    q.add(k("a"));
    assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some(k("a")));
    assert_eq!(
        t.elapsed(),
        Duration::ZERO,
        "an event runs a resync-delayed key at once"
    );
    q.done(&k("a"), Outcome::RequeueAfter(Duration::from_secs(600)));
    let t = Instant::now();
    assert_eq!(next_within(&q, Duration::from_secs(700)).await, Some(k("a")));
    assert_eq!(t.elapsed(), Duration::from_secs(600), "and the resync fires on its own");
}

#[tokio::test(start_paused = true)]
async fn queue_wait_is_reported() {
    let q = queue();
    q.add(k("a"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (key, waited) = q.next().await.expect("key");
    assert_eq!((key.as_str(), waited), ("a", Duration::from_millis(1500)));
}

#[tokio::test(start_paused = true)]
async fn closing_releases_workers() {
    let q = queue();
    let worker = tokio::spawn({
        let q = q.clone();
        async move { q.next().await }
    });
    tokio::task::yield_now().await;
    q.close();
    assert!(worker.await.expect("worker").is_none());
}

#[tokio::test(start_paused = true)]
async fn status_writes_within_the_window_are_coalesced() {
    let c = StatusCoalescer::new(Duration::from_millis(200));
    let t0 = Instant::now();
    assert!(c.admit(&k("a"), t0).is_ok());
    c.wrote(&k("a"), t0);
    // Three more changes inside the window: held back, each told when the window closes.
    for ms in [10, 50, 150] {
        assert_eq!(
            c.admit(&k("a"), t0 + Duration::from_millis(ms)),
            Err(Duration::from_millis(200 - ms))
        );
    }
    assert!(c.admit(&k("b"), t0).is_ok(), "per key");
    assert!(
        c.admit(&k("a"), t0 + Duration::from_millis(200)).is_ok(),
        "one write once the window closes"
    );
}

#[tokio::test(start_paused = true)]
async fn backed_off_keys_run_at_once_when_the_cluster_recovers_but_never_before_a_retry_after() {
    let q = queue();
    // "a" failed seven times in a row: its own backoff is 6.4 s.
    q.add(k("a"));
    for _ in 0..7 {
        assert_eq!(next_within(&q, Duration::from_secs(10)).await, Some(k("a")));
        q.done(&k("a"), Outcome::Failed { retry_after: None });
    }
    // "c" was answered 429 with a Retry-After of 3 s (its backoff alone would be 100 ms).
    q.add(k("c"));
    assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some(k("c")));
    let told = Instant::now();
    q.done(
        &k("c"),
        Outcome::Failed {
            retry_after: Some(Duration::from_secs(3)),
        },
    );
    q.add(k("b"));
    assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some(k("b")));
    q.done(&k("b"), Outcome::RequeueAfter(Duration::from_secs(600)));
    let t = Instant::now();
    q.retry_backed_off_now();
    assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some(k("a")));
    assert_eq!(t.elapsed(), Duration::ZERO, "a backoff of our own is cut short");
    assert_eq!(next_within(&q, Duration::from_secs(5)).await, Some(k("c")));
    assert_eq!(
        told.elapsed(),
        Duration::from_secs(3),
        "the server's Retry-After is not"
    );
    assert_eq!(
        next_within(&q, Duration::from_secs(5)).await,
        None,
        "only backed-off keys are pulled forward"
    );
}

/// The race behind a lost reconcile: a change (`add`) arriving while the worker reports `done`. On a
/// multi-threaded runtime, start both at the same instant (barrier) many times; every change made
/// after a key was taken must lead to one more run of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_racing_done_is_never_lost() {
    let q = queue();
    let go = std::sync::Arc::new(std::sync::Barrier::new(2));
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    let adder = {
        let (q, go) = (q.clone(), go.clone());
        std::thread::spawn(move || {
            while rx.recv().unwrap_or(false) {
                go.wait();
                q.add(k("a"));
                go.wait();
            }
        })
    };
    for round in 0..50_000 {
        q.add(k("a"));
        let taken = tokio::time::timeout(Duration::from_secs(5), q.next()).await;
        let Ok(Some((key, _))) = taken else {
            panic!("round {round}: key not handed out")
        };
        tx.send(true).expect("adder alive");
        go.wait();
        q.done(&key, Outcome::Done);
        go.wait();
        // The add came after the key was taken: it must run again, whichever side won the race.
        let again = tokio::time::timeout(Duration::from_secs(5), q.next()).await;
        assert!(matches!(again, Ok(Some(_))), "round {round}: the change was lost");
        q.done(&k("a"), Outcome::Done);
    }
    tx.send(false).expect("adder alive");
    adder.join().expect("adder thread");
}

#[tokio::test(start_paused = true)]
async fn urgent_keys_go_ahead_of_a_full_queue_and_are_still_handed_out_once() {
    let q = queue();
    for i in 0..100 {
        q.add(format!("k{i:03}"));
    }
    // A just-acquired shard's keys: one new, one already queued far back, one already running.
    assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some(k("k000")));
    q.add_urgent(k("new"));
    q.add_urgent(k("k099"));
    q.add_urgent(k("k000"));
    assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some(k("new")));
    assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some(k("k099")));
    assert_eq!(
        next_within(&q, Duration::from_secs(1)).await,
        Some(k("k001")),
        "the running key only got marked dirty"
    );
    let mut rest = Vec::new();
    while let Some(key) = next_within(&q, Duration::from_secs(1)).await {
        rest.push(key);
    }
    assert_eq!(
        rest.len(),
        97,
        "k002..k098 once each; k099's old place skipped: {rest:?}"
    );
    assert!(!rest.contains(&k("k099")) && !rest.contains(&k("new")));
    q.done(&k("k000"), Outcome::Done);
    assert_eq!(
        next_within(&q, Duration::from_secs(1)).await,
        Some(k("k000")),
        "the change seen while it ran runs it again"
    );
}

#[tokio::test(start_paused = true)]
async fn urgent_adds_are_folded_and_never_starve_the_normal_lane() {
    let q = queue();
    for i in 0..10 {
        q.add(format!("n{i}"));
        for _ in 0..5 {
            // A key added urgently again while it waits (a shard acquired twice in a row).
            q.add_urgent(format!("u{i}"));
        }
    }
    let mut order = Vec::new();
    while let Some(key) = next_within(&q, Duration::from_secs(1)).await {
        order.push(key);
    }
    assert_eq!(order.len(), 20, "each key once: {order:?}");
    let normal_in_first_8 = order[..8].iter().filter(|k| k.starts_with('n')).count();
    assert_eq!(
        normal_in_first_8, 2,
        "one pop in four serves the normal lane: {order:?}"
    );
    assert!(order[..3].iter().all(|k| k.starts_with('u')), "urgent first: {order:?}");
}
