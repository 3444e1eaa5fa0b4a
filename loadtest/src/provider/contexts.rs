//! Existing clusters, by kubeconfig context. Nothing is created or torn down but the run's
//! namespaces; the operator's writes are counted by its own counters (no access to audit logs).

use std::path::PathBuf;

use kube::config::Kubeconfig;

use super::Bed;

#[derive(Debug, thiserror::Error)]
pub enum ContextsError {
    #[error("--context: the contexts provider needs at least one context")]
    None,
    #[error("--context {0:?}: not in the kubeconfig (it has: {1})")]
    Unknown(String, String),
    #[error("--context: {0} contexts given, but the workload's `clusters` is {1}")]
    Count(usize, u32),
    #[error("kubeconfig {0}: {1}")]
    Read(String, String),
}

pub fn bed(kubeconfig: PathBuf, contexts: &[String], clusters: u32) -> Result<Bed, ContextsError> {
    if contexts.is_empty() {
        return Err(ContextsError::None);
    }
    if contexts.len() != clusters as usize {
        return Err(ContextsError::Count(contexts.len(), clusters));
    }
    let kc = Kubeconfig::read_from(&kubeconfig)
        .map_err(|e| ContextsError::Read(kubeconfig.display().to_string(), e.to_string()))?;
    let known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
    for c in contexts {
        if !known.contains(&c.as_str()) {
            return Err(ContextsError::Unknown(c.clone(), known.join(", ")));
        }
    }
    Ok(Bed {
        kubeconfig,
        contexts: contexts.to_vec(),
        audit_logs: None,
        pid_dirs: Vec::new(),
        teardown: None,
    })
}
