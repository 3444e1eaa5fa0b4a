//! The replicas' reconcile records (`--reconcile-record`, one JSON line per finished reconcile) turned
//! into overlaps and failover times. Pure apart from reading the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct Reconcile {
    pub key: String,
    pub replica: String,
    pub shard: u32,
    /// Unix microseconds.
    pub start: u64,
    pub end: u64,
}

/// Reads every record; a line cut short by SIGKILL is skipped (its reconcile never finished).
pub fn read(paths: &[impl AsRef<Path>]) -> std::io::Result<Vec<Reconcile>> {
    let mut out = Vec::new();
    for p in paths {
        let text = match std::fs::read_to_string(p.as_ref()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // never reconciled anything
            Err(e) => return Err(e),
        };
        out.extend(text.lines().filter_map(parse));
    }
    Ok(out)
}

pub fn parse(line: &str) -> Option<Reconcile> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["kind"] != "reconcile" {
        return None;
    }
    Some(Reconcile {
        key: v["key"].as_str()?.to_string(),
        replica: v["replica"].as_str()?.to_string(),
        shard: u32::try_from(v["shard"].as_u64()?).ok()?,
        start: v["start"].as_u64()?,
        end: v["end"].as_u64()?,
    })
}

/// Pairs of reconciles of one key by two replicas whose [start, end] intervals intersect.
pub fn overlaps(all: &[Reconcile]) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<&Reconcile>> = BTreeMap::new();
    for r in all {
        by_key.entry(&r.key).or_default().push(r);
    }
    let mut found = Vec::new();
    for (key, mut rs) in by_key {
        rs.sort_by_key(|r| r.start);
        for (i, a) in rs.iter().enumerate() {
            for b in &rs[i + 1..] {
                if b.start > a.end {
                    break;
                }
                if a.replica != b.replica {
                    found.push(format!(
                        "{key}: {} [{}, {}] and {} [{}, {}]",
                        a.replica, a.start, a.end, b.replica, b.start, b.end
                    ));
                }
            }
        }
    }
    found
}

/// A SIGKILL: who, when (unix µs), and the shards its Leases named it holder of just before.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Kill {
    pub replica: String,
    pub at: u64,
    pub shards: Vec<u32>,
}

/// Failover times in seconds: for each shard of each kill, from the kill to the first reconcile of
/// that shard by another replica. Shards with no CR (nothing to reconcile) are left out; a shard
/// with CRs that nobody else reconciled afterwards is returned in the second list.
pub fn failovers(kills: &[Kill], all: &[Reconcile], shards_with_keys: &BTreeSet<u32>) -> (Vec<f64>, Vec<String>) {
    let mut times = Vec::new();
    let mut missing = Vec::new();
    for k in kills {
        for shard in k.shards.iter().filter(|s| shards_with_keys.contains(s)) {
            let first = all
                .iter()
                .filter(|r| r.shard == *shard && r.replica != k.replica && r.start >= k.at)
                .map(|r| r.start)
                .min();
            match first {
                Some(t) => times.push((t - k.at) as f64 / 1e6),
                None => missing.push(format!("shard {shard} of {} killed at {}", k.replica, k.at)),
            }
        }
    }
    (times, missing)
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
    fn parses_records_and_skips_cut_lines() {
        let line = r#"{"kind":"reconcile","key":"c/ns/a","replica":"r0","shard":3,"start":10,"end":20}"#;
        assert_eq!(parse(line), Some(rec("c/ns/a", "r0", 3, 10, 20)));
        assert_eq!(parse(&line[..30]), None);
        assert_eq!(parse(r#"{"kind":"release","replica":"r0","shard":3,"at":1}"#), None);
    }

    #[test]
    fn overlap_only_between_replicas_of_one_key() {
        let all = vec![
            rec("k", "a", 0, 0, 10),
            rec("k", "a", 0, 5, 12), // same replica: not an overlap
            rec("k", "b", 0, 11, 20),
            rec("j", "b", 0, 0, 10),
            rec("k", "c", 0, 21, 30), // after every other
        ];
        let o = overlaps(&all);
        assert_eq!(o.len(), 1, "{o:?}");
        assert!(o[0].starts_with("k: a [5, 12] and b [11, 20]"), "{o:?}");
        assert!(overlaps(&all[..2]).is_empty());
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
}
