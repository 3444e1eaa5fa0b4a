//! KubeDirectorApp: the data-driven definition of an application (roles, services, setup package).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Extra, Label};
use super::tristate::Tristate;

/// Spec of a KubeDirectorApp. Unknown fields are kept: KubeDirector's own schema preserves them and
/// real catalog entries rely on it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "kubedirector.hpe.com",
    version = "v1beta1",
    kind = "KubeDirectorApp",
    plural = "kubedirectorapps",
    shortname = "kdapp",
    namespaced,
    printcolumn = r#"{"name":"App Name","type":"string","jsonPath":".spec.label.name"}"#,
    printcolumn = r#"{"name":"Distro ID","type":"string","jsonPath":".spec.distroID"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct KubeDirectorAppSpec {
    pub label: Label,
    #[serde(rename = "distroID")]
    pub distro_id: String,
    pub version: String,
    /// Version of the app-definition schema; KubeDirector v1beta1 apps are 7 or later.
    #[schemars(range(min = 7))]
    pub config_schema_version: i64,
    #[serde(rename = "logoURL", default, skip_serializing_if = "Option::is_none")]
    pub logo_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_image_repo_tag: Option<String>,
    /// Absent: roles have no default package; `null`: explicitly none; object: the default package.
    #[serde(default, skip_serializing_if = "Tristate::is_absent")]
    pub default_config_package: Tristate<SetupPackage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_persist_dirs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_event_list: Option<Vec<LifecycleEvent>>,
    /// Bytes of setup-script output kept in status on a config error (KubeDirector default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub default_max_log_size_dump: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    pub roles: Vec<AppRole>,
    pub config: AppConfig,
    /// Linux capabilities added to the app container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_required: Option<bool>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// Where and how to fetch an app setup package.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetupPackage {
    #[serde(rename = "packageURL")]
    #[schemars(regex(pattern = r"^(file|https?)://.+\.tgz$"))]
    pub package_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_new_setup_layout: Option<bool>,
}

/// Lifecycle events a role's setup script may be notified of.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LifecycleEvent {
    Configure,
    Addnodes,
    Delnodes,
}

/// A network endpoint the app exposes (or only names, when it has no port).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Service {
    /// Used as the container port name, hence a DNS label of at most 15 characters.
    #[schemars(length(min = 1, max = 15), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Label>,
    /// Nullable in KubeDirector; `null` and absent both mean "no endpoint", kept apart only so that
    /// re-serialising an app gives back what the user wrote.
    #[serde(default, skip_serializing_if = "Tristate::is_absent")]
    pub endpoint: Tristate<ServiceEndpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_service: Option<String>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEndpoint {
    /// No port: the service is only named (configmeta), no container or Service port is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_dashboard: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_auth_token: Option<bool>,
}

/// A role of the app: members of one role share image, resources, storage and services.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRole {
    /// Role ids may use upper case, `_` and `.` (e.g. `vanilla_centos`); names derived from them are mangled.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    )]
    pub id: String,
    /// "N" = exactly N members, "N+" = at least N.
    #[schemars(regex(pattern = r"^\d+\+?$"))]
    pub cardinality: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repo_tag: Option<String>,
    /// Absent: inherit the app default; `null`: no setup for this role; object: this package.
    #[serde(default, skip_serializing_if = "Tristate::is_absent")]
    pub config_package: Tristate<SetupPackage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist_dirs: Option<Vec<String>>,
    /// Absent = every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_list: Option<Vec<LifecycleEvent>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_resources: Option<BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_storage: Option<MinStorage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_spec: Option<ContainerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_log_size_dump: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MinStorage {
    pub size: Quantity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_mode_supported: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ContainerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
}

/// Which roles are active and which services each role runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppConfig {
    pub role_services: Vec<RoleServices>,
    pub selected_roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_meta: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RoleServices {
    #[serde(rename = "roleID")]
    pub role_id: String,
    #[serde(rename = "serviceIDs")]
    pub service_ids: Vec<String>,
}
