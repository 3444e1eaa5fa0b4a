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

    /// Copies the components' logs (not the audit logs, which are read already and large) out of
    /// the clusters' directories, which down.sh removes: a run that fails keeps its evidence.
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
            for log in logs.flatten().filter(|l| l.file_name() != "audit.log") {
                let _ = std::fs::copy(log.path(), to.join(log.file_name()));
            }
        }
    }
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
