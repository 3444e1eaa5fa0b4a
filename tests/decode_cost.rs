//! `make bench`: what parsing one child watch event costs, parsed whole and then slimmed (how the
//! caches took pods and StatefulSets before `reconcile::wire`) against parsed lean, in the same
//! run. Every replica parses every child event of its members, held shard or not, so this is the
//! part of a replica's work that more replicas do not divide.
//!
//! Counted: heap allocations and bytes allocated per event (exact, the same every run), and the
//! time per event (rounds of the two ways interleaved; a ratio, this machine is noisy). The
//! events are the pods and StatefulSets KubeDirector wrote on the test bed
//! (`../shared/kubedirector/takeover/`), as the API server sent them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kubedirector::reconcile::slim::{CachedPod, Slim};
use kubedirector::reconcile::wire::LeanStatefulSet;

mod common;

/// The system allocator, counting.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, which is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn events(kind: &str) -> Vec<String> {
    let out: Vec<String> = common::takeover_items(kind)
        .iter()
        .map(|o| serde_json::to_string(o).expect("serializes"))
        .collect();
    assert!(!out.is_empty(), "no {kind} in the takeover captures");
    out
}

#[derive(Default)]
struct Cost {
    allocs: u64,
    bytes: u64,
    time: Duration,
}

/// Parses every event once with `parse`; allocations counted if `count`.
fn measure(events: &[String], parse: &dyn Fn(&str), cost: &mut Cost, count: bool) {
    let (a, b) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    let start = Instant::now();
    for e in events {
        parse(e);
    }
    cost.time += start.elapsed();
    if count {
        cost.allocs += ALLOCS.load(Ordering::Relaxed) - a;
        cost.bytes += BYTES.load(Ordering::Relaxed) - b;
    }
}

fn compare(kind: &str, whole: &dyn Fn(&str), lean: &dyn Fn(&str)) -> (f64, f64) {
    let events = events(kind);
    let n = events.len() as f64;
    let (mut w, mut l) = (Cost::default(), Cost::default());
    const ROUNDS: usize = 400;
    for round in 0..ROUNDS {
        // Interleaved, and who goes first alternating, so that drift hits both alike.
        if round % 2 == 0 {
            measure(&events, whole, &mut w, round == 0);
            measure(&events, lean, &mut l, round == 0);
        } else {
            measure(&events, lean, &mut l, false);
            measure(&events, whole, &mut w, false);
        }
    }
    let per = |c: &Cost| {
        (
            c.allocs as f64 / n,
            c.bytes as f64 / n,
            c.time.as_secs_f64() / n / ROUNDS as f64 * 1e6,
        )
    };
    let ((wa, wb, wt), (la, lb, lt)) = (per(&w), per(&l));
    println!(
        "{kind}: {} events; whole + slim: {wa:.0} allocations, {:.1} KiB, {wt:.1} µs per event; lean: {la:.0} allocations, {:.1} KiB, {lt:.1} µs; lean/whole: allocations {:.2}, bytes {:.2}, time {:.2}",
        events.len(),
        wb / 1024.0,
        lb / 1024.0,
        la / wa,
        lb / wb,
        lt / wt
    );
    (la / wa, lt / wt)
}

#[test]
#[ignore = "benchmark: make bench"]
fn lean_parsing_of_child_events() {
    let (pod_allocs, _) = compare(
        "Pod",
        &|e| {
            let pod: Pod = serde_json::from_str(e).expect("a Pod");
            black_box(CachedPod::from(pod));
        },
        &|e| {
            black_box(serde_json::from_str::<CachedPod>(e).expect("a Pod"));
        },
    );
    let (sts_allocs, _) = compare(
        "StatefulSet",
        &|e| {
            let mut s: StatefulSet = serde_json::from_str(e).expect("a StatefulSet");
            s.slim();
            black_box(s);
        },
        &|e| {
            black_box(serde_json::from_str::<LeanStatefulSet>(e).expect("a StatefulSet"));
        },
    );
    // Allocation counts are exact: the lean parse must make fewer, whatever the machine.
    assert!(pod_allocs < 1.0 && sts_allocs < 1.0, "{pod_allocs} {sts_allocs}");
}
