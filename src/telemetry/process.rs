//! CPU seconds and resident memory of a process, from /proc (Linux): the operator's own, exported on
//! /metrics, and the loadtest's view of local replicas (read just before one is killed or stopped).

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    #[serde(skip)]
    pub rss_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading /proc/{pid}: {source}")]
    Read { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}/{file} has no {what}")]
    Format {
        pid: u32,
        file: &'static str,
        what: &'static str,
    },
}

pub fn usage(pid: u32) -> Result<Usage, ProcError> {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| ProcError::Read { pid, source })
    };
    let stat = read("stat")?;
    let status = read("status")?;
    let ticks = cpu_ticks(&stat).ok_or(ProcError::Format {
        pid,
        file: "stat",
        what: "utime/stime",
    })?;
    let hwm = status_kib(&status, "VmHWM:").ok_or(ProcError::Format {
        pid,
        file: "status",
        what: "VmHWM",
    })?;
    let rss = status_kib(&status, "VmRSS:").unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok(Usage {
        cpu_seconds: ticks as f64 / hz,
        peak_rss_bytes: hwm * 1024,
        rss_bytes: rss * 1024,
    })
}

/// utime + stime (fields 14 and 15) of /proc/<pid>/stat; the command name (field 2) may hold spaces,
/// so fields are counted after its closing parenthesis.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A kB figure of /proc/<pid>/status, e.g. `VmHWM:` (peak resident) or `VmRSS:`.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "42 (kube director) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 123 456 789";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_vmhwm() {
        let status = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t1 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(12345));
        assert_eq!(status_kib(status, "VmRSS:"), Some(1));
        assert_eq!(status_kib("Name:\tx\n", "VmHWM:"), None);
    }

    #[test]
    fn reads_this_process() {
        let u = usage(std::process::id()).expect("own usage");
        assert!(u.peak_rss_bytes > 0);
    }
}
