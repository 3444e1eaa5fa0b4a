//! KubeDirectorConfig: the single global settings object `kd-global-config`.

use std::collections::BTreeMap;

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{NamingScheme, ServiceType};

/// The only accepted name of the global config, in the operator's namespace.
pub const GLOBAL_CONFIG_NAME: &str = "kd-global-config";

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "kubedirector.hpe.com",
    version = "v1beta1",
    kind = "KubeDirectorConfig",
    plural = "kubedirectorconfigs",
    shortname = "kdconfig",
    namespaced,
    status = "KubeDirectorConfigStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct KubeDirectorConfigSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_storage_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_service_type: Option<ServiceType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_naming_scheme: Option<NamingScheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_systemd_support: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_secret_prefix: Option<String>,
    /// DNS suffix of member FQDNs (default `svc.cluster.local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_svc_domain_base: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_encryption_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_cluster_status: Option<bool>,
    /// A restored cluster may start before the objects it connects to are back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_restore_without_connections: Option<bool>,
    /// Honour `sharedMemory` even on Kubernetes versions KubeDirector considered too old for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_shared_memory_size_support: Option<bool>,
    /// Added to every member pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// Added to every Service the operator creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_annotations: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeDirectorConfigStatus {
    #[serde(rename = "generationUID", default)]
    pub generation_uid: String,
    #[serde(default)]
    pub state: String,
}
