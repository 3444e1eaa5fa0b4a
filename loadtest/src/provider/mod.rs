//! Where the member clusters come from: the local test bed (`kwok`), kind clusters with kwok inside
//! (`kind`), or any existing kubeconfig contexts (`contexts`). Every provider ends with a kubeconfig,
//! its contexts and, where the API servers can be configured, their audit logs.

pub mod contexts;
pub mod kind;
pub mod kwok;

use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Kwok,
    Kind,
    Contexts,
}

/// The member clusters of a run.
#[derive(Debug)]
pub struct Bed {
    pub kubeconfig: PathBuf,
    pub contexts: Vec<String>,
    /// One per context when the API servers audit the operator's writes.
    pub audit_logs: Option<Vec<PathBuf>>,
    /// Directories of the bed's `<component>.pid` files, one per cluster (local clusters only), for
    /// the CPU each component spends in a pass.
    pub pid_dirs: Vec<PathBuf>,
    /// Clusters the harness started, torn down at the end.
    pub teardown: Option<Teardown>,
}

#[derive(Debug)]
pub enum Teardown {
    Kwok(kwok::Kwok),
    Kind(Vec<String>),
}

impl Bed {
    pub fn teardown(&mut self) -> anyhow::Result<()> {
        match self.teardown.take() {
            Some(Teardown::Kwok(k)) => k.down(),
            Some(Teardown::Kind(names)) => kind::delete(&names),
            None => Ok(()),
        }
    }
}

/// Runs a command, failing with its output when it fails.
pub fn run(cmd: &mut std::process::Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {shown}: {e} (is it installed and on PATH?)"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
