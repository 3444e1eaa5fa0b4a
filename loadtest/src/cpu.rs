//! CPU time of the test bed's own processes (API server, etcd, controller-manager, scheduler, kwok),
//! read from `/proc` at the start and end of a pass. On a two-core machine the operator and the bed
//! share the same cores, so "which process spent the pass's CPU" is what tells a slow API server
//! apart from a slow operator.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// CPU seconds (user + system) of one process, from the text of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may hold spaces or `)`, so fields are counted
/// from the last `)`: utime and stime are fields 14 and 15, in clock ticks.
pub fn seconds_from_stat(stat: &str, ticks_per_second: f64) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the `)`: state is field 3, so utime (14) is at index 11 and stime (15) at 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds of each component, summed over the clusters: one directory of `<component>.pid`
/// files per cluster (kwokctl's binary runtime writes them). A process that is gone counts 0.
pub fn sample(pid_dirs: &[PathBuf]) -> BTreeMap<String, f64> {
    let tick = ticks_per_second();
    let mut out = BTreeMap::new();
    for dir in pid_dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let Some(name) = component(&path) else { continue };
            let seconds = std::fs::read_to_string(&path)
                .ok()
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok())
                .and_then(|stat| seconds_from_stat(&stat, tick))
                .unwrap_or(0.0);
            *out.entry(name).or_insert(0.0) += seconds;
        }
    }
    out
}

fn component(pid_file: &Path) -> Option<String> {
    (pid_file.extension()? == "pid").then(|| pid_file.file_stem()?.to_str().map(str::to_string))?
}

/// What each component spent between two samples (a component restarted in between counts from 0).
pub fn window(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or(0.0);
            (k.clone(), if *a >= b { a - b } else { *a })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a `)` in it; utime 250, stime 50 ticks.
        let stat = "4242 (kube apiserver) S 1 4242 4242 0 -1 4194560 9 0 0 0 250 50 0 0 20 0 12 0 100 0 0";
        assert_eq!(seconds_from_stat(stat, 100.0), Some(3.0));
        let odd = "7 (a) b) R 1 7 7 0 -1 0 0 0 0 0 1000 0 0 0";
        assert_eq!(seconds_from_stat(odd, 100.0), Some(10.0));
        assert_eq!(seconds_from_stat("7 (short) R 1", 100.0), None);
        assert_eq!(seconds_from_stat("no parenthesis", 100.0), None);
    }

    #[test]
    fn components_sum_over_clusters_and_windows_subtract() {
        let root = std::env::temp_dir().join(format!("kd-cpu-test-{}", std::process::id()));
        let dirs: Vec<PathBuf> = (1..=2).map(|i| root.join(format!("kd-{i}/pids"))).collect();
        for d in &dirs {
            std::fs::create_dir_all(d).expect("dir");
            // This test's own process stands in for a component; a pid that cannot exist counts 0.
            std::fs::write(d.join("kube-apiserver.pid"), std::process::id().to_string()).expect("pid");
            std::fs::write(d.join("etcd.pid"), "999999999").expect("pid");
            std::fs::write(d.join("notes.txt"), "x").expect("other file");
        }
        let before = sample(&dirs);
        // Busy for 300 ms of wall time: at least a few clock ticks of CPU, even on a loaded machine.
        let (start, mut x) = (std::time::Instant::now(), 0u64);
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let after = sample(&dirs);
        assert_eq!(after.keys().collect::<Vec<_>>(), ["etcd", "kube-apiserver"]);
        assert_eq!(after["etcd"], 0.0);
        let spent = window(&after, &before);
        assert!(spent["kube-apiserver"] > 0.0, "{spent:?}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_restarted_component_counts_from_zero() {
        let before = BTreeMap::from([("etcd".to_string(), 9.0)]);
        let after = BTreeMap::from([("etcd".to_string(), 2.0), ("kwok".to_string(), 1.0)]);
        let w = window(&after, &before);
        assert_eq!(w["etcd"], 2.0);
        assert_eq!(w["kwok"], 1.0);
    }
}
