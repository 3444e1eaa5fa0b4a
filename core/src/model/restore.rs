//! Restoring a cluster from its KubeDirectorStatusBackup, as KubeDirector does: a backup tool
//! re-creates the cluster (and its children, the backup and the volumes) in any order; while the
//! cluster is labelled `restoring`, nothing is built for it. Each step records in
//! `status.restoreProgress` what it still waits for: the app, the backup (whose status is then
//! copied in once), and the children that status names. When nothing is awaited the label goes
//! and the cluster is reconciled as usual, from the restored status: the same member names, the
//! same StatefulSets, Services and claims, no second copy of any.

use std::collections::BTreeSet;

use crate::api::cluster::{KubeDirectorClusterStatus, RestoreProgress};

/// What the cache and the API show of a cluster being restored.
pub struct RestoreFacts<'a> {
    pub app_found: bool,
    /// The backup's copy of the status, when the backup exists.
    pub backup: Option<&'a KubeDirectorClusterStatus>,
    pub services: &'a BTreeSet<String>,
    pub statefulsets: &'a BTreeSet<String>,
    /// Connected objects not found (they are awaited unless kd-global-config
    /// `allowRestoreWithoutConnections`).
    pub missing_connections: &'a [String],
    pub allow_without_connections: bool,
}

/// The next status of a cluster being restored, and whether the restore is complete.
pub fn step(prev: Option<&KubeDirectorClusterStatus>, facts: &RestoreFacts) -> (KubeDirectorClusterStatus, bool) {
    let mut progress = prev
        .and_then(|s| s.restore_progress.clone())
        .unwrap_or(RestoreProgress {
            awaiting_app: true,
            awaiting_status: true,
            awaiting_resources: true,
            error: String::new(),
        });
    let mut status = prev.cloned().unwrap_or_default();
    progress.awaiting_app = !facts.app_found;
    // The backup's status is taken once: later steps work on it.
    if progress.awaiting_status
        && let Some(backup) = facts.backup
    {
        status = backup.clone();
        progress.awaiting_status = false;
    }
    if !progress.awaiting_status {
        let missing = missing_children(&status, facts.services, facts.statefulsets);
        let connections_missing = !facts.allow_without_connections && !facts.missing_connections.is_empty();
        progress.awaiting_resources = !missing.is_empty() || connections_missing;
        progress.error = if missing.is_empty() && !connections_missing {
            String::new()
        } else {
            let mut waiting: Vec<String> = missing;
            waiting.extend(
                facts
                    .missing_connections
                    .iter()
                    .filter(|_| connections_missing)
                    .map(|c| format!("connected {c}")),
            );
            format!("waiting for {}", waiting.join(", "))
        };
    }
    let done = !progress.awaiting_app && !progress.awaiting_status && !progress.awaiting_resources;
    status.restore_progress = Some(progress);
    (status, done)
}

/// What keeping a cluster's KubeDirectorStatusBackup takes after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mirror {
    Nothing,
    /// Write the status into the backup, and mark the cluster (`status-backup-exists: "true"`)
    /// when it is not marked yet.
    Copy {
        mark: bool,
    },
    /// Delete the backup and mark the cluster `"false"`.
    Remove,
}

/// With `backupClusterStatus` the backup follows every status written (and is made when the
/// cluster is not marked as having one); without, a backup made earlier goes. `marked`: the
/// cluster says a backup exists.
pub fn mirror(backup_on: bool, marked: bool, status_written: bool) -> Mirror {
    match (backup_on, marked) {
        (true, false) => Mirror::Copy { mark: true },
        (true, true) if status_written => Mirror::Copy { mark: false },
        (false, true) => Mirror::Remove,
        _ => Mirror::Nothing,
    }
}

/// The children a status names that do not exist: its headless Service, each role's StatefulSet,
/// each member's Service (members without ports have none, `n/a`).
pub fn missing_children(
    status: &KubeDirectorClusterStatus,
    services: &BTreeSet<String>,
    statefulsets: &BTreeSet<String>,
) -> Vec<String> {
    let mut missing = Vec::new();
    if !status.cluster_service.is_empty() && !services.contains(&status.cluster_service) {
        missing.push(format!("Service {}", status.cluster_service));
    }
    for role in &status.roles {
        if !role.stateful_set.is_empty() && !statefulsets.contains(&role.stateful_set) {
            missing.push(format!("StatefulSet {}", role.stateful_set));
        }
        for m in &role.members {
            if !m.service.is_empty() && m.service != "n/a" && !services.contains(&m.service) {
                missing.push(format!("Service {}", m.service));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cluster::{ClusterState, MemberStatus, RoleStatus};

    fn backed_up() -> KubeDirectorClusterStatus {
        KubeDirectorClusterStatus {
            state: Some(ClusterState::Configured),
            cluster_service: "kdhs-abc".into(),
            roles: vec![RoleStatus {
                id: "r".into(),
                stateful_set: "kdss-abc".into(),
                members: vec![
                    serde_json::from_value::<MemberStatus>(serde_json::json!({
                        "pod": "kdss-abc-0", "service": "s-kdss-abc-0", "state": "configured",
                        "stateDetail": {}, "nodeID": 1
                    }))
                    .expect("member"),
                ],
                encrypted_secret_keys: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_backup_follows_status_writes_and_goes_when_turned_off() {
        assert_eq!(
            mirror(true, false, false),
            Mirror::Copy { mark: true },
            "made when missing"
        );
        assert_eq!(mirror(true, true, true), Mirror::Copy { mark: false });
        assert_eq!(mirror(true, true, false), Mirror::Nothing, "no write without a change");
        assert_eq!(mirror(false, true, true), Mirror::Remove);
        assert_eq!(mirror(false, false, true), Mirror::Nothing);
    }

    #[test]
    fn waits_for_app_backup_and_children_then_completes() {
        let none = BTreeSet::new();
        let backup = backed_up();
        let mut facts = RestoreFacts {
            app_found: false,
            backup: None,
            services: &none,
            statefulsets: &none,
            missing_connections: &[],
            allow_without_connections: false,
        };
        let (s1, done) = step(None, &facts);
        let p = s1.restore_progress.clone().expect("progress");
        assert!(!done && p.awaiting_app && p.awaiting_status && p.awaiting_resources);
        assert!(s1.roles.is_empty(), "nothing invented before the backup is there");

        facts.app_found = true;
        facts.backup = Some(&backup);
        let (s2, done) = step(Some(&s1), &facts);
        let p = s2.restore_progress.clone().expect("progress");
        assert!(!done && !p.awaiting_app && !p.awaiting_status && p.awaiting_resources);
        assert_eq!(s2.roles, backup.roles, "the backup's status, as it was");
        assert!(
            p.error.contains("StatefulSet kdss-abc") && p.error.contains("Service s-kdss-abc-0"),
            "{}",
            p.error
        );

        // The backup goes away again (or changes): the status taken stays.
        let services: BTreeSet<String> = ["kdhs-abc".to_string(), "s-kdss-abc-0".to_string()].into();
        let statefulsets: BTreeSet<String> = ["kdss-abc".to_string()].into();
        let missing = vec!["ConfigMap ns/settings".to_string()];
        facts.backup = None;
        facts.services = &services;
        facts.statefulsets = &statefulsets;
        facts.missing_connections = &missing;
        let (s3, done) = step(Some(&s2), &facts);
        assert!(!done, "a connection is missing and not allowed to be");
        assert_eq!(s3.roles, backup.roles);
        facts.allow_without_connections = true;
        let (s4, done) = step(Some(&s3), &facts);
        assert!(done, "{:?}", s4.restore_progress);
        assert_eq!(s4.restore_progress.map(|p| p.error), Some(String::new()));
    }
}
