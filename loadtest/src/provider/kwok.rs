//! The local test bed (testbed/up.sh): N kwokctl clusters on loopback, in the run's own directory and
//! port range, with the API servers auditing the operator's writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Bed, Teardown, run};

#[derive(Debug)]
pub struct Kwok {
    repo: PathBuf,
    dir: PathBuf,
    port_base: u16,
}

impl Kwok {
    fn command(&self, script: &str) -> Command {
        let mut c = Command::new(self.repo.join("testbed").join(script));
        c.env("TESTBED_DIR", &self.dir)
            .env("TESTBED_PORT_BASE", self.port_base.to_string());
        c
    }

    pub fn down(&self) -> anyhow::Result<()> {
        self.keep_logs();
        run(&mut self.command("down.sh")).map(|_| ())
    }

    /// Copies the components' logs out of the clusters' directories, which down.sh removes: a run
    /// that fails keeps its evidence. The audit logs are kept gzipped (`audit.log.gz`, about a
    /// tenth of their size): each write's server-side latency and its latency annotations are
    /// what tell the API server's own time from the operator's (`testbed/bench/service_creates.py`).
    fn keep_logs(&self) {
        let Ok(clusters) = std::fs::read_dir(self.dir.join("kwok/clusters")) else {
            return;
        };
        for cluster in clusters.flatten() {
            let Ok(logs) = std::fs::read_dir(cluster.path().join("logs")) else {
                continue;
            };
            let to = self.dir.join("logs").join(cluster.file_name());
            if std::fs::create_dir_all(&to).is_err() {
                continue;
            }
            for log in logs.flatten() {
                if log.file_name() == "audit.log" {
                    let _ = gzip(&log.path(), &to.join("audit.log.gz"));
                } else {
                    let _ = std::fs::copy(log.path(), to.join(log.file_name()));
                }
            }
        }
    }
}

fn gzip(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut input = std::fs::File::open(from)?;
    let mut out = flate2::write::GzEncoder::new(std::fs::File::create(to)?, flate2::Compression::fast());
    std::io::copy(&mut input, &mut out)?;
    out.finish().map(|_| ())
}

/// Starts `clusters` clusters with `nodes` fake nodes each under `dir` (contexts kwok-kd-1..N).
pub fn up(
    repo: &Path,
    dir: &Path,
    port_base: u16,
    clusters: u32,
    nodes: u32,
    audit_policy: &Path,
) -> anyhow::Result<Bed> {
    let k = Kwok {
        repo: repo.to_path_buf(),
        dir: dir.to_path_buf(),
        port_base,
    };
    let _ = k.down(); // a previous run killed half-way
    let mut up = k.command("up.sh");
    up.arg(clusters.to_string())
        .env("NODES", nodes.to_string())
        .env("AUDIT_POLICY", audit_policy);
    if let Err(e) = run(&mut up) {
        let _ = k.down();
        return Err(e);
    }
    let contexts: Vec<String> = (1..=clusters).map(|i| format!("kwok-kd-{i}")).collect();
    let audit_logs = (1..=clusters)
        .map(|i| dir.join(format!("kwok/clusters/kd-{i}/logs/audit.log")))
        .collect();
    Ok(Bed {
        kubeconfig: dir.join("kubeconfig"),
        contexts,
        audit_logs: Some(audit_logs),
        pid_dirs: (1..=clusters)
            .map(|i| dir.join(format!("kwok/clusters/kd-{i}/pids")))
            .collect(),
        teardown: Some(Teardown::Kwok(k)),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    #[test]
    fn a_kept_audit_log_reads_back_whole() {
        let dir = std::env::temp_dir().join(format!("kd-gzip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (from, to) = (dir.join("audit.log"), dir.join("audit.log.gz"));
        let text: String = (0..2000).map(|i| format!("{{\"auditID\":\"{i}\"}}\n")).collect();
        std::fs::write(&from, &text).expect("write");
        super::gzip(&from, &to).expect("gzip");
        let mut back = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&to).expect("open"))
            .read_to_string(&mut back)
            .expect("gunzip");
        assert_eq!(back, text);
        assert!(
            std::fs::metadata(&to).expect("size").len() < text.len() as u64 / 4,
            "compressed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
