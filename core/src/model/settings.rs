//! Operator-wide settings: kd-global-config (KubeDirectorConfig) with KubeDirector's defaults.

use std::collections::BTreeMap;

use crate::api::common::{NamingScheme, ServiceType};
use crate::api::config::KubeDirectorConfigSpec;

/// DNS suffix of member FQDNs when kd-global-config does not set `clusterSvcDomainBase`.
pub const DEFAULT_SVC_DOMAIN_BASE: &str = ".svc.cluster.local";

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub default_service_type: ServiceType,
    pub default_storage_class: Option<String>,
    pub default_naming_scheme: NamingScheme,
    pub svc_domain_base: String,
    /// The nodes' runtime gives containers their own cgroup tree: systemd apps get no host mounts.
    pub native_systemd_support: bool,
    /// Hex AES key of the roles' secret keys (`masterEncryptionKey`).
    pub master_encryption_key: Option<String>,
    pub pod_labels: BTreeMap<String, String>,
    pub pod_annotations: BTreeMap<String, String>,
    pub service_labels: BTreeMap<String, String>,
    pub service_annotations: BTreeMap<String, String>,
    /// Mirror every cluster's status into its KubeDirectorStatusBackup (`backupClusterStatus`).
    pub backup_cluster_status: bool,
    /// A restore does not wait for the objects a cluster connects to.
    pub allow_restore_without_connections: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_config(None)
    }
}

impl Settings {
    /// KubeDirector's defaults: LoadBalancer services, UID naming, `svc.cluster.local`.
    pub fn from_config(config: Option<&KubeDirectorConfigSpec>) -> Self {
        let c = config.cloned().unwrap_or_default();
        Settings {
            default_service_type: c.default_service_type.unwrap_or(ServiceType::LoadBalancer),
            default_storage_class: c.default_storage_class_name.filter(|s| !s.is_empty()),
            default_naming_scheme: c.default_naming_scheme.unwrap_or(NamingScheme::Uid),
            svc_domain_base: c
                .cluster_svc_domain_base
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SVC_DOMAIN_BASE.to_string()),
            native_systemd_support: c.native_systemd_support.unwrap_or(false),
            master_encryption_key: c.master_encryption_key.filter(|k| !k.is_empty()),
            pod_labels: c.pod_labels.unwrap_or_default(),
            pod_annotations: c.pod_annotations.unwrap_or_default(),
            service_labels: c.service_labels.unwrap_or_default(),
            service_annotations: c.service_annotations.unwrap_or_default(),
            backup_cluster_status: c.backup_cluster_status.unwrap_or(false),
            allow_restore_without_connections: c.allow_restore_without_connections.unwrap_or(false),
        }
    }
}
