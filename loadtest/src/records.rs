//! Failover times from the replicas' reconcile records (format and overlap check: the operator's
//! `shard::record`).

use std::collections::{BTreeMap, BTreeSet};

use kubedirector::shard::record::Reconcile;

/// A SIGKILL: who, when (unix µs), and the shards its Leases named it holder of just before.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Kill {
    pub replica: String,
    pub at: u64,
    pub shards: Vec<u32>,
}

/// When another replica first reconciled `shard` after the kill `k` (unix µs). The dead replica's
/// own records can end after the kill (written late), so they do not count.
fn taken_over(k: &Kill, shard: u32, all: &[Reconcile]) -> Option<u64> {
    all.iter()
        .filter(|r| r.shard == shard && r.replica != k.replica && r.start >= k.at)
        .map(|r| r.start)
        .min()
}

/// Failover times in seconds: for each shard of each kill, from the kill to the first reconcile of
/// that shard by another replica. Shards with no CR (nothing to reconcile) are left out; a shard
/// with CRs that nobody else reconciled afterwards is returned in the second list.
pub fn failovers(kills: &[Kill], all: &[Reconcile], shards_with_keys: &BTreeSet<u32>) -> (Vec<f64>, Vec<String>) {
    let mut times = Vec::new();
    let mut missing = Vec::new();
    for k in kills {
        for shard in k.shards.iter().filter(|s| shards_with_keys.contains(s)) {
            match taken_over(k, *shard, all) {
                Some(t) => times.push((t - k.at) as f64 / 1e6),
                None => missing.push(format!("shard {shard} of {} killed at {}", k.replica, k.at)),
            }
        }
    }
    (times, missing)
}

/// When each shard had no live owner: from a kill to the first reconcile of that shard by another
/// replica (or, if none came, to the end of time). Keyed by shard; one window per kill that named it.
pub fn orphaned(kills: &[Kill], all: &[Reconcile]) -> BTreeMap<u32, Vec<(u64, u64)>> {
    let mut out: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for k in kills {
        for shard in &k.shards {
            let end = taken_over(k, *shard, all).unwrap_or(u64::MAX);
            out.entry(*shard).or_default().push((k.at, end));
        }
    }
    out
}

/// Whether a CR of `shard` that waited from `start` to `end` (unix µs) waited through part of a
/// window in which its shard had no owner: its latency then includes a failover, which no floor has.
pub fn waited_for_failover(windows: &BTreeMap<u32, Vec<(u64, u64)>>, shard: u32, start: u64, end: u64) -> bool {
    windows
        .get(&shard)
        .is_some_and(|w| w.iter().any(|(from, to)| *from < end && *to > start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, replica: &str, shard: u32, start: u64, end: u64) -> Reconcile {
        Reconcile {
            key: key.into(),
            replica: replica.into(),
            shard,
            start,
            end,
        }
    }

    #[test]
    fn failover_is_the_first_reconcile_elsewhere_after_the_kill() {
        let kills = vec![Kill {
            replica: "a".into(),
            at: 1_000_000,
            shards: vec![1, 2, 3],
        }];
        let all = vec![
            rec("x", "a", 1, 1_500_000, 1_600_000), // the dead one (late record): ignored
            rec("x", "b", 1, 900_000, 950_000),     // before the kill: ignored
            rec("x", "b", 1, 4_000_000, 4_100_000),
            rec("y", "c", 1, 3_000_000, 3_100_000),
            rec("z", "b", 2, 12_000_000, 12_100_000),
        ];
        let with_keys: BTreeSet<u32> = [1, 2, 3].into();
        let (t, missing) = failovers(&kills, &all, &with_keys);
        assert_eq!(t, vec![2.0, 11.0]);
        assert_eq!(missing.len(), 1);
        assert!(missing[0].starts_with("shard 3"));
        let (t, missing) = failovers(&kills, &all, &[1, 2].into());
        assert_eq!((t.len(), missing.len()), (2, 0));
    }

    #[test]
    fn a_cr_waited_for_a_failover_when_its_wait_meets_its_shards_orphaned_window() {
        let kills = vec![Kill {
            replica: "a".into(),
            at: 10,
            shards: vec![1, 2],
        }];
        // Shard 1 is taken at 20; shard 2 never is.
        let all = vec![rec("x", "b", 1, 20, 21), rec("y", "a", 2, 30, 31)];
        let w = orphaned(&kills, &all);
        assert_eq!(w[&1], vec![(10, 20)]);
        assert_eq!(w[&2], vec![(10, u64::MAX)]);
        assert!(waited_for_failover(&w, 1, 5, 15)); // killed while it waited
        assert!(waited_for_failover(&w, 1, 12, 25)); // arrived while its shard had no owner
        assert!(!waited_for_failover(&w, 1, 0, 10)); // done at the kill
        assert!(!waited_for_failover(&w, 1, 20, 30)); // arrived once the shard was taken
        assert!(!waited_for_failover(&w, 3, 0, 100)); // another shard
        assert!(waited_for_failover(&w, 2, 1_000, 2_000));
    }
}
