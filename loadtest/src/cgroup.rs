//! A CPU limit for one replica process (scale-out): a cgroup of its own with a CFS quota, so that
//! the operator, not the test bed, is what runs out. cgroup v2 (`cpu.max`) where the unified
//! hierarchy has the cpu controller, else cgroup v1's `cpu` controller (`cpu.cfs_quota_us`).

use std::path::{Path, PathBuf};

const PERIOD_US: u64 = 100_000;
const PARENT: &str = "kd-loadtest";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "--replica-cpu needs a writable cgroup cpu controller (v2 {v2}/cgroup.controllers listing `cpu`, or v1 {v1}); run as root, or use --replica-cpu 0"
    )]
    NoController { v2: String, v1: String },
    #[error("--replica-cpu: {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where the controller is, and which version.
#[derive(Clone, Debug, PartialEq)]
pub enum Hierarchy {
    V2(PathBuf),
    V1(PathBuf),
}

pub fn detect(root: &Path) -> Result<Hierarchy, CgroupError> {
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "cpu") {
        return Ok(Hierarchy::V2(root.to_path_buf()));
    }
    let v1 = root.join("cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Ok(Hierarchy::V1(v1));
    }
    Err(CgroupError::NoController {
        v2: root.display().to_string(),
        v1: v1.display().to_string(),
    })
}

/// The quota line or value for `share` of one core.
pub fn quota_us(share: f64) -> u64 {
    ((share * PERIOD_US as f64).round() as u64).max(1000)
}

/// One process's cgroup; removed when dropped (after the process has exited).
#[derive(Debug)]
pub struct Limit {
    dir: PathBuf,
}

impl Limit {
    /// Puts `pid` into a new cgroup `name` limited to `share` of a core.
    pub fn apply(h: &Hierarchy, name: &str, pid: u32, share: f64) -> Result<Limit, CgroupError> {
        let (base, quota_file, quota) = match h {
            Hierarchy::V2(root) => {
                // The parent must hand the cpu controller down to its children.
                let parent = root.join(PARENT);
                std::fs::create_dir_all(&parent).map_err(io(&parent))?;
                let ctl = parent.join("cgroup.subtree_control");
                std::fs::write(&ctl, "+cpu").map_err(io(&ctl))?;
                (parent, "cpu.max", format!("{} {PERIOD_US}", quota_us(share)))
            }
            Hierarchy::V1(cpu) => (cpu.join(PARENT), "cpu.cfs_quota_us", quota_us(share).to_string()),
        };
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let limit = Limit { dir };
        if let Hierarchy::V1(_) = h {
            let period = limit.dir.join("cpu.cfs_period_us");
            std::fs::write(&period, PERIOD_US.to_string()).map_err(io(&period))?;
        }
        let q = limit.dir.join(quota_file);
        std::fs::write(&q, quota).map_err(io(&q))?;
        let procs = limit.dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(io(&procs))?;
        Ok(limit)
    }

    /// Periods in which the process wanted more than its quota (v1 and v2 both report it).
    pub fn throttled_periods(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        // Only an empty cgroup can go; a process still in it keeps it (and the next run reuses it).
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_the_share_of_the_period() {
        assert_eq!(quota_us(0.2), 20_000);
        assert_eq!(quota_us(1.5), 150_000);
        assert_eq!(quota_us(0.0001), 1000, "the kernel's minimum");
    }

    #[test]
    fn detect_prefers_v2_with_cpu_then_v1_then_names_both() {
        let root = std::env::temp_dir().join(format!("kd-lt-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("cpu")).expect("dir");
        let e = detect(&root).expect_err("nothing there").to_string();
        assert!(e.contains("--replica-cpu") && e.contains("cgroup.controllers"), "{e}");
        std::fs::write(root.join("cpu/cpu.cfs_quota_us"), "-1").expect("v1");
        assert_eq!(detect(&root).expect("v1"), Hierarchy::V1(root.join("cpu")));
        std::fs::write(root.join("cgroup.controllers"), "memory io").expect("v2 without cpu");
        assert_eq!(detect(&root).expect("still v1"), Hierarchy::V1(root.join("cpu")));
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io").expect("v2");
        assert_eq!(detect(&root).expect("v2"), Hierarchy::V2(root.clone()));
        let _ = std::fs::remove_dir_all(&root);
    }
}
