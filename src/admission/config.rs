//! KubeDirectorConfig admission: one `kd-global-config` in the operator's namespace, naming only
//! StorageClasses that exist, and kept while any KubeDirectorCluster exists.

use crate::api::KubeDirectorConfigSpec;
use crate::api::config::GLOBAL_CONFIG_NAME;
use crate::model::validate::FieldError;

use super::world::World;

pub fn validate(name: &str, ns: &str, spec: &KubeDirectorConfigSpec, world: &dyn World) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let home = world.operator_namespace();
    if name != GLOBAL_CONFIG_NAME {
        errors.push(FieldError {
            field: "metadata.name".to_string(),
            message: format!("{name:?} is not allowed: the only KubeDirectorConfig is {GLOBAL_CONFIG_NAME:?}"),
        });
    }
    if ns != home {
        errors.push(FieldError {
            field: "metadata.namespace".to_string(),
            message: format!("{ns:?} is not allowed: {GLOBAL_CONFIG_NAME} lives in the operator's namespace {home:?}"),
        });
    }
    if let Some(class) = spec.default_storage_class_name.as_deref().filter(|c| !c.is_empty()) {
        let classes = world.storage_classes();
        if !classes.names.iter().any(|n| n == class) {
            let existing = if classes.names.is_empty() {
                "none".to_string()
            } else {
                classes.names.join(", ")
            };
            errors.push(FieldError {
                field: "spec.defaultStorageClassName".to_string(),
                message: format!("StorageClass {class:?} does not exist (existing: {existing})"),
            });
        }
    }
    errors
}

/// kd-global-config cannot go while clusters depend on its defaults.
pub fn deletable(name: &str, ns: &str, world: &dyn World) -> Vec<FieldError> {
    if name != GLOBAL_CONFIG_NAME || ns != world.operator_namespace() {
        return Vec::new();
    }
    let clusters = world.managed_clusters();
    let Some(first) = clusters.first() else {
        return Vec::new();
    };
    let example = format!(
        "{}/{}",
        first.metadata.namespace.as_deref().unwrap_or(""),
        first.metadata.name.as_deref().unwrap_or("")
    );
    vec![FieldError {
        field: "metadata.name".to_string(),
        message: format!(
            "{GLOBAL_CONFIG_NAME} cannot be deleted while KubeDirectorClusters exist ({}, e.g. {example})",
            clusters.len()
        ),
    }]
}
