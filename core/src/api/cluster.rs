//! KubeDirectorCluster: one running instance of an app, its roles and members.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{NamingScheme, ServiceType};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "kubedirector.hpe.com",
    version = "v1beta1",
    kind = "KubeDirectorCluster",
    plural = "kubedirectorclusters",
    shortname = "kdcluster",
    namespaced,
    status = "KubeDirectorClusterStatus",
    printcolumn = r#"{"name":"KDApp","type":"string","jsonPath":".spec.app"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Any Down","type":"boolean","jsonPath":".status.memberStateRollup.membersDown"}"#,
    printcolumn = r#"{"name":"Any ConfigError","type":"boolean","jsonPath":".status.memberStateRollup.configErrors"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KubeDirectorClusterSpec {
    /// Name of the KubeDirectorApp (immutable).
    #[schemars(length(min = 1))]
    pub app: String,
    /// Where the app is looked up; unset = the cluster's namespace first, then the operator's (immutable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_catalog: Option<AppCatalog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<ServiceType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub naming_scheme: Option<NamingScheme>,
    pub roles: Vec<RoleSpec>,
    /// Copied into every role that has no `secret` of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_secret: Option<KdSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Connections>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AppCatalog {
    /// The cluster's own namespace.
    Local,
    /// The operator's namespace.
    System,
}

impl AppCatalog {
    pub fn as_str(self) -> &'static str {
        match self {
            AppCatalog::Local => "local",
            AppCatalog::System => "system",
        }
    }
}

/// Other objects whose details are given to this cluster's members (and changes to which fire `--reconnect`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Connections {
    #[serde(default, deserialize_with = "null_is_empty", skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    #[serde(default, deserialize_with = "null_is_empty", skip_serializing_if = "Vec::is_empty")]
    pub configmaps: Vec<String>,
    #[serde(default, deserialize_with = "null_is_empty", skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// `secrets:` with every entry commented out is YAML null: KubeDirector (Go) reads it as an empty
/// list, and so do we (upstream's own mlflow example has it).
fn null_is_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// The requested shape of one app role in this cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    )]
    pub id: String,
    /// Defaulted from the app's cardinality ("N" or "N+" gives N).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub members: Option<i32>,
    pub resources: ResourceRequirements,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<ClusterStorage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<KdSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_storage: Option<BlockStorage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_injections: Vec<FileInjection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_keys: Vec<SecretKey>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_projections: Vec<VolumeProjection>,
    /// Size of the in-memory /dev/shm volume, e.g. "1Gi".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_memory: Option<Quantity>,
}

/// Persistent storage for the role's persisted directories (volumeClaimTemplate `p`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStorage {
    pub size: Quantity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Raw block devices for every member of a role.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockStorage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub num_devices: Option<i32>,
}

/// A Secret mounted into the app container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KdSecret {
    pub name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// A file fetched into each member before setup runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileInjection {
    #[serde(rename = "srcURL")]
    pub src_url: String,
    pub dest_dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<FilePermissions>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilePermissions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_group: Option<String>,
}

/// A value only available to setup scripts; admission replaces `value` by `encryptedValue`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_value: Option<String>,
}

/// An existing PVC mounted into every member of the role.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeProjection {
    pub pvc_name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// Written only by the operator, through the status subresource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeDirectorClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ClusterState>,
    #[serde(default)]
    pub member_state_rollup: StateRollup,
    #[serde(rename = "generationUID", default)]
    pub generation_uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_generation_to_process: Option<i64>,
    /// Name of the headless cluster Service.
    #[serde(default)]
    pub cluster_service: String,
    #[serde(rename = "lastNodeID", default)]
    pub last_node_id: i64,
    #[serde(default)]
    pub roles: Vec<RoleStatus>,
    #[serde(default)]
    pub last_connection_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_progress: Option<RestoreProgress>,
    /// Standard conditions (Ready, Progressing, Degraded) for `kubectl wait` and GitOps tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// KubeDirector's cluster states, spelled exactly as KubeDirector writes them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    Creating,
    Updating,
    Configured,
    Deleting,
    /// Set by KubeDirector's admission webhook when the spec changes; its reconciler then processes
    /// the change as an update. Read (and written by our webhook) the same way.
    #[serde(rename = "spec modified")]
    SpecModified,
}

/// Whether any member needs attention.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateRollup {
    pub membership_changing: bool,
    pub members_down: bool,
    pub members_initializing: bool,
    pub members_waiting: bool,
    pub members_restarting: bool,
    pub config_errors: bool,
    #[serde(default)]
    pub members_not_scheduled: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreProgress {
    pub awaiting_app: bool,
    pub awaiting_status: bool,
    pub awaiting_resources: bool,
    #[serde(default)]
    pub error: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatus {
    pub id: String,
    /// Name of the role's StatefulSet (recorded before it is created, so it is never created twice).
    pub stateful_set: String,
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_secret_keys: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub pod: String,
    /// The member's Service, or "n/a" when the role opens no port.
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    pub state: MemberState,
    #[serde(default)]
    pub state_detail: MemberStateDetail,
    #[serde(rename = "nodeID")]
    pub node_id: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_device_paths: Vec<String>,
}

/// KubeDirector's member states, spelled exactly as KubeDirector writes them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum MemberState {
    #[serde(rename = "create pending")]
    CreatePending,
    #[serde(rename = "creating")]
    Creating,
    #[serde(rename = "configured")]
    Configured,
    #[serde(rename = "config error")]
    ConfigError,
    #[serde(rename = "delete pending")]
    DeletePending,
    #[serde(rename = "deleting")]
    Deleting,
}

/// Progress of configmeta and app scripts inside one member.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStateDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error_detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_config_data_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_setup_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuring_container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_configured_container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_known_container_state: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_notify_cmds: Vec<NotificationDesc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connection_version: Option<i64>,
    /// KubeDirector's copies of the start script's output and of a scheduling failure, and the
    /// progress of its storage init container: kept as read, so no field KubeDirector wrote is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_script_stdout_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_script_stderr_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_init_progress: Option<String>,
}

/// One queued notification (`startscript` arguments) for a member.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct NotificationDesc {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<String>,
}
