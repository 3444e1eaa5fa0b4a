//! The reconcile record (`--reconcile-record`): one JSON line per finished reconcile or shard release.
//! Written by the shard manager; read by the sharding tests and the loadtest, which check from it that
//! no key was reconciled by two replicas at once and how fast shards moved. One format, defined here.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A line of the record. Times are Unix microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    Reconcile(Reconcile),
    Release(Release),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reconcile {
    pub key: String,
    pub replica: String,
    pub shard: u32,
    pub start: u64,
    pub end: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub replica: String,
    pub shard: u32,
    pub at: u64,
}

pub fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Every entry of the record files; a line cut short by SIGKILL is skipped (its reconcile never
/// finished), and a file that does not exist is a replica that never wrote one.
pub fn read(paths: &[impl AsRef<Path>]) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for p in paths {
        match std::fs::read_to_string(p.as_ref()) {
            Ok(text) => out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

pub fn reconciles(entries: &[Entry]) -> Vec<Reconcile> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Reconcile(r) => Some(r.clone()),
            Entry::Release(_) => None,
        })
        .collect()
}

pub fn releases(entries: &[Entry]) -> Vec<Release> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Release(r) => Some(r.clone()),
            Entry::Reconcile(_) => None,
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, replica: &str, start: u64, end: u64) -> Reconcile {
        Reconcile {
            key: key.into(),
            replica: replica.into(),
            shard: 0,
            start,
            end,
        }
    }

    #[test]
    fn lines_round_trip_in_the_written_format() {
        let line = r#"{"kind":"reconcile","key":"c/ns/a","replica":"r0","shard":3,"start":10,"end":20}"#;
        let e: Entry = serde_json::from_str(line).expect("reconcile line");
        assert_eq!(
            e,
            Entry::Reconcile(Reconcile {
                shard: 3,
                ..rec("c/ns/a", "r0", 10, 20)
            })
        );
        assert_eq!(serde_json::to_string(&e).expect("json"), line);
        let r: Entry = serde_json::from_str(r#"{"kind":"release","replica":"r1","shard":2,"at":5}"#).expect("release");
        assert_eq!(releases(&[e.clone(), r.clone()]).len(), 1);
        assert_eq!(reconciles(&[e, r]).len(), 1);
        assert!(
            serde_json::from_str::<Entry>(&line[..30]).is_err(),
            "a cut line is not an entry"
        );
    }

    #[test]
    fn overlap_only_between_replicas_of_one_key() {
        let all = vec![
            rec("k", "a", 0, 10),
            rec("k", "a", 5, 12), // same replica: not an overlap
            rec("k", "b", 11, 20),
            rec("j", "b", 0, 10),
            rec("k", "c", 21, 30), // after every other
        ];
        let o = overlaps(&all);
        assert_eq!(o.len(), 1, "{o:?}");
        assert!(o[0].starts_with("k: a [5, 12] and b [11, 20]"), "{o:?}");
        assert!(overlaps(&all[..2]).is_empty());
    }

    #[test]
    fn missing_files_are_empty_and_cut_lines_skipped() {
        let dir = std::env::temp_dir().join(format!("kd-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("r.jsonl");
        std::fs::write(
            &f,
            "{\"kind\":\"release\",\"replica\":\"r\",\"shard\":1,\"at\":2}\n{\"kind\":\"reco",
        )
        .expect("write");
        let entries = read(&[f, dir.join("absent")]).expect("read");
        assert_eq!(entries.len(), 1);
    }
}
