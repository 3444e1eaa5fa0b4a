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

/// The kernel's bounds: a quota of at least 1 ms, a period of at most 1 s.
const MIN_QUOTA_US: u64 = 1000;
const MAX_PERIOD_US: u64 = 1_000_000;

/// The smallest share a CFS quota can hold exactly: 1 ms in the longest period.
pub const MIN_SHARE: f64 = MIN_QUOTA_US as f64 / MAX_PERIOD_US as f64;

/// `share` of one core as a CFS quota and its period, both in µs. Below 0.01 of a core the
/// 100 ms period would need a quota under the kernel's 1 ms minimum, which would silently raise
/// the share (0.008 became 0.01 that way), so the period grows instead, up to 1 s. Shares under
/// [`MIN_SHARE`] are refused by the workload's validation.
pub fn quota_us(share: f64) -> (u64, u64) {
    let period = if share * PERIOD_US as f64 >= MIN_QUOTA_US as f64 {
        PERIOD_US
    } else {
        ((MIN_QUOTA_US as f64 / share.max(MIN_SHARE)).ceil() as u64).min(MAX_PERIOD_US)
    };
    let quota = ((share * period as f64).round() as u64).max(MIN_QUOTA_US);
    (quota, period)
}

/// One process's cgroup; removed when dropped (after the process has exited).
#[derive(Debug)]
pub struct Limit {
    dir: PathBuf,
}

impl Limit {
    /// Puts `pid` into a new cgroup `name` limited to `share` of a core.
    pub fn apply(h: &Hierarchy, name: &str, pid: u32, share: f64) -> Result<Limit, CgroupError> {
        let (quota, period) = quota_us(share);
        let base = match h {
            Hierarchy::V2(root) => {
                // The parent must hand the cpu controller down to its children.
                let parent = root.join(PARENT);
                std::fs::create_dir_all(&parent).map_err(io(&parent))?;
                let ctl = parent.join("cgroup.subtree_control");
                std::fs::write(&ctl, "+cpu").map_err(io(&ctl))?;
                parent
            }
            Hierarchy::V1(cpu) => cpu.join(PARENT),
        };
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let limit = Limit { dir };
        let writes = match h {
            Hierarchy::V2(_) => vec![("cpu.max", format!("{quota} {period}"))],
            // The period first: the quota is read against it.
            Hierarchy::V1(_) => vec![
                ("cpu.cfs_period_us", period.to_string()),
                ("cpu.cfs_quota_us", quota.to_string()),
            ],
        };
        for (file, value) in writes {
            let f = limit.dir.join(file);
            std::fs::write(&f, value).map_err(io(&f))?;
        }
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
        assert_eq!(quota_us(0.2), (20_000, 100_000));
        assert_eq!(quota_us(1.5), (150_000, 100_000));
        assert_eq!(quota_us(0.01), (1000, 100_000));
    }

    #[test]
    fn a_share_under_a_hundredth_lengthens_the_period_instead_of_rounding_up() {
        for share in [0.008, 0.005, 0.004, 0.0025, 0.001] {
            let (q, p) = quota_us(share);
            assert!(
                q >= 1000 && p <= 1_000_000,
                "{share}: {q}/{p} outside the kernel's bounds"
            );
            let held = q as f64 / p as f64;
            assert!((held - share).abs() / share < 0.01, "{share} held as {held}");
        }
        assert_eq!(quota_us(0.008), (1000, 125_000));
        assert_eq!(quota_us(0.005), (1000, 200_000));
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
