//! KubeDirectorConfig admission: one `kd-global-config` in the operator's namespace, naming only
//! StorageClasses that exist, and kept while any KubeDirectorCluster exists.

use crate::api::KubeDirectorConfigSpec;
use crate::api::config::GLOBAL_CONFIG_NAME;
use crate::model::secretkeys;
use crate::model::validate::FieldError;

use super::world::World;

/// Fills in what KubeDirector's webhook fills in when left out: `defaultServiceType`
/// (LoadBalancer), `nativeSystemdSupport` (false), `clusterSvcDomainBase` (`.svc.cluster.local`),
/// `defaultNamingScheme` (UID), `backupClusterStatus` (false), and a `masterEncryptionKey` (32 random
/// bytes, hex: an AES-256 key for secret keys).
pub fn mutate(obj: &mut serde_json::Value, spec: &KubeDirectorConfigSpec) {
    let Some(object) = obj.as_object_mut() else {
        return;
    };
    let spec_json = object.entry("spec").or_insert_with(|| serde_json::json!({}));
    let Some(spec_json) = spec_json.as_object_mut() else {
        return;
    };
    for (key, value) in [
        ("defaultServiceType", serde_json::json!("LoadBalancer")),
        ("nativeSystemdSupport", serde_json::json!(false)),
        ("clusterSvcDomainBase", serde_json::json!(".svc.cluster.local")),
        ("defaultNamingScheme", serde_json::json!("UID")),
        ("backupClusterStatus", serde_json::json!(false)),
    ] {
        spec_json.entry(key).or_insert(value);
    }
    if spec.master_encryption_key.as_deref().is_some_and(|k| !k.is_empty()) {
        return;
    }
    let mut key = [0u8; 32];
    // Without randomness no key is made: a cluster's secret key is then refused, naming the field.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).is_ok() {
        spec_json.insert("masterEncryptionKey".to_string(), serde_json::json!(hex::encode(key)));
    }
}

/// Every rule for kd-global-config; `old` is the stored spec on update.
pub fn validate(
    name: &str,
    ns: &str,
    spec: &KubeDirectorConfigSpec,
    old: Option<&KubeDirectorConfigSpec>,
    world: &dyn World,
) -> Vec<FieldError> {
    let mut errors = master_key(spec, old, world);
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

/// `masterEncryptionKey`: hex of an AES key (16, 24 or 32 bytes, as KubeDirector takes it), and not
/// changed while a managed cluster holds a secret key sealed under the old one (its members could
/// not open it any more).
fn master_key(
    spec: &KubeDirectorConfigSpec,
    old: Option<&KubeDirectorConfigSpec>,
    world: &dyn World,
) -> Vec<FieldError> {
    let field = "spec.masterEncryptionKey".to_string();
    let new = spec.master_encryption_key.as_deref().filter(|k| !k.is_empty());
    if let Some(Err(e)) = new.map(secretkeys::check_master_key) {
        return vec![FieldError {
            field,
            message: format!("{e} (64 hex digits for AES-256)"),
        }];
    }
    let before = old
        .and_then(|o| o.master_encryption_key.as_deref())
        .filter(|k| !k.is_empty());
    if before.is_none() || before == new {
        return Vec::new();
    }
    let sealing = world.managed_clusters().into_iter().find(|c| {
        crate::model::catalog::parse::<crate::api::KubeDirectorCluster>(c).is_ok_and(|c| {
            c.spec
                .roles
                .iter()
                .flat_map(|r| &r.secret_keys)
                .any(|k| k.encrypted_value.is_some())
        })
    });
    match sealing {
        None => Vec::new(),
        Some(c) => vec![FieldError {
            field,
            message: format!(
                "cannot change while KubeDirectorCluster {}/{} holds secret keys encrypted under it",
                c.metadata.namespace.as_deref().unwrap_or(""),
                c.metadata.name.as_deref().unwrap_or("")
            ),
        }],
    }
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
