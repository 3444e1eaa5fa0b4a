//! KubeDirectorStatusBackup (P2): a copy of a cluster's status, so a restored CR can resume.

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cluster::KubeDirectorClusterStatus;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "kubedirector.hpe.com",
    version = "v1beta1",
    kind = "KubeDirectorStatusBackup",
    plural = "kubedirectorstatusbackups",
    shortname = "kdstatusbackup",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct KubeDirectorStatusBackupSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_backup: Option<KubeDirectorClusterStatus>,
}
