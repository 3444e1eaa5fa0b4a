//! Fault injection for the crash tests: with `KD_TEST_ABORT_AFTER_WRITES=N` the process aborts right
//! after its N-th API write, i.e. inside a reconcile between two writes, the worst place to die.
//! Inert when the variable is unset (the only cost is one atomic add per write).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub const ENV: &str = "KD_TEST_ABORT_AFTER_WRITES";

static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
static WRITES: AtomicU64 = AtomicU64::new(0);

/// Called after every successful API write.
pub fn after_write() {
    let limit = *LIMIT.get_or_init(|| std::env::var(ENV).ok().and_then(|v| v.parse().ok()));
    if let Some(limit) = limit
        && WRITES.fetch_add(1, Ordering::SeqCst) + 1 >= limit
    {
        eprintln!("{ENV}={limit}: aborting after write {limit}");
        std::process::abort();
    }
}
