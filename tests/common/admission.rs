//! The admission case table (tests/fixtures/admission/cases.yaml): loading it and building each
//! case's objects. Used by the pure table test and by the integration test through the API server.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub base: Base,
    #[serde(default)]
    pub op: Op,
    #[serde(default)]
    pub using: bool,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub invalid: Vec<Value>,
    #[serde(default)]
    pub valid: Vec<Value>,
    pub expect: String,
    /// Decided from what the webhook asks the API server (service accounts, claims): run only
    /// through the real webhook, not by the pure table test.
    #[serde(default)]
    pub api: bool,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Base {
    App,
    Cluster,
    Config,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    #[default]
    Create,
    Update,
    Delete,
}

pub fn cases() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission/cases.yaml");
    let text = std::fs::read_to_string(&path).expect("cases.yaml");
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn example(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples").join(file);
    serde_yaml::from_str(&std::fs::read_to_string(&path).expect("example")).expect("example yaml")
}

/// The example app (system catalog).
pub fn app() -> Value {
    example("app-cassandra-like.yaml")
}

/// The second catalog app: minimum resources and storage on role node, an unselected role tools.
pub fn app_min() -> Value {
    let mut app = app();
    app["metadata"]["name"] = json!("cassandra-min");
    let roles = app["spec"]["roles"].as_array_mut().expect("roles");
    roles[1]["minResources"] = json!({"memory": "8Gi"});
    roles[1]["minStorage"] = json!({"size": "5Gi"});
    roles.push(json!({"id": "tools", "cardinality": "0+"}));
    app
}

pub fn cluster() -> Value {
    example("cluster-cassandra-like.yaml")
}

pub fn config() -> Value {
    json!({
        "apiVersion": "kubedirector.hpe.com/v1beta1", "kind": "KubeDirectorConfig",
        "metadata": {"name": "kd-global-config"},
        "spec": {"defaultServiceType": "NodePort"}
    })
}

pub fn base(b: Base) -> Value {
    match b {
        Base::App => app(),
        Base::Cluster => cluster(),
        Base::Config => config(),
    }
}

/// `obj` with the JSON-patch operations applied.
pub fn patched(obj: &Value, ops: &[Value]) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).expect("ops form a JSON patch");
    let mut out = obj.clone();
    json_patch::patch(&mut out, &patch).expect("ops apply to the base");
    out
}

/// A cluster of the watched namespace using app `app` (system catalog).
pub fn user_cluster(name: &str, app: &str) -> Value {
    let mut c = cluster();
    c["metadata"]["name"] = json!(name);
    c["spec"]["app"] = json!(app);
    c
}
