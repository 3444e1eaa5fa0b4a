//! Small shapes shared by several kinds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every KubeDirector kind.
pub const GROUP: &str = "kubedirector.hpe.com";
/// The only served (and storage) version.
pub const VERSION: &str = "v1beta1";

/// How a KubeDirectorCluster's member Services are exposed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// How child objects are named: `UID` = short generated names recorded in status,
/// `CrNameRole` = `<cr>-<role>` derived names.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum NamingScheme {
    #[serde(rename = "UID")]
    Uid,
    CrNameRole,
}

/// A short name and a longer description. Apps in the wild carry extra keys here, so unknown
/// fields are kept (in the API server and in `extra`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Label {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// Fields this version does not declare, kept so that nothing a user wrote is lost.
pub type Extra = std::collections::BTreeMap<String, serde_json::Value>;
