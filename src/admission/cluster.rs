//! KubeDirectorCluster admission: KubeDirector's defaults filled in (mutating), every rule of the
//! contract checked against the app and the member cluster (validating).

use kube::api::DynamicObject;
use serde_json::{Value, json};

use crate::api::KubeDirectorClusterSpec;
use crate::model::catalog::{ResolvedApp, apply_cluster_defaults, find_app};
use crate::model::connections;
use crate::model::labels;
use crate::model::settings::Settings;
use crate::model::validate::{self, FieldError, effective_storage_class, parse_quantity};

use super::world::{World, global_config};

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

fn app_of(world: &dyn World, ns: &str, spec: &KubeDirectorClusterSpec) -> Result<ResolvedApp, String> {
    let lookup = |catalog_ns: &str| world.app(catalog_ns, &spec.app);
    find_app(lookup, world.operator_namespace(), ns, &spec.app, spec.app_catalog)
}

/// Seals each secret key's plaintext `value` into `encryptedValue` under kd-global-config's
/// `masterEncryptionKey` (KubeDirector's format), so the plaintext is never stored. An
/// `encryptedValue` given without a `value` must be the one already stored for that role and key
/// (KubeDirector's rule: a sealed value copied from another cluster would open in this one's
/// members). Returns the errors that refuse the request.
pub fn seal_secret_keys(obj: &mut Value, old: Option<&KubeDirectorClusterSpec>, world: &dyn World) -> Vec<FieldError> {
    let master = global_config(world).and_then(|c| c.master_encryption_key);
    let mut errors = Vec::new();
    let rng = ring::rand::SystemRandom::new();
    let Some(roles) = obj.pointer_mut("/spec/roles").and_then(Value::as_array_mut) else {
        return errors;
    };
    for (i, role) in roles.iter_mut().enumerate() {
        let id = role.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let Some(keys) = role.get_mut("secretKeys").and_then(Value::as_array_mut) else {
            continue;
        };
        for (j, key) in keys.iter_mut().enumerate() {
            let field = format!("spec.roles[{i}].secretKeys[{j}]");
            let name = key.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let value = key.get("value").and_then(Value::as_str).map(str::to_string);
            let sealed = key.get("encryptedValue").and_then(Value::as_str).unwrap_or_default();
            let Some(value) = value else {
                let stored = old
                    .and_then(|o| o.roles.iter().find(|r| r.id == id))
                    .and_then(|r| r.secret_keys.iter().find(|k| k.name == name))
                    .and_then(|k| k.encrypted_value.as_deref());
                if !sealed.is_empty() && stored != Some(sealed) {
                    errors.push(err(
                        format!("{field}.encryptedValue"),
                        format!("secret key {name:?}: encryptedValue cannot be set by hand; give the plaintext as value and it is encrypted on admission"),
                    ));
                }
                continue;
            };
            let Some(master) = master.as_deref() else {
                errors.push(err(
                    format!("{field}.value"),
                    format!("secret key {name:?} cannot be encrypted: kd-global-config has no masterEncryptionKey (create kd-global-config in the operator namespace; one is generated)"),
                ));
                continue;
            };
            let mut nonce = [0u8; crate::model::secretkeys::NONCE_LEN];
            let opened = ring::rand::SecureRandom::fill(&rng, &mut nonce)
                .map_err(|_| crate::model::secretkeys::SecretKeyError::BadMasterKey)
                .and_then(|()| crate::model::secretkeys::encrypt(master, nonce, &value));
            match opened {
                Ok(hex) => *key = json!({"name": name, "encryptedValue": hex}),
                Err(e) => errors.push(err(
                    format!("{field}.value"),
                    format!("secret key {name:?} cannot be encrypted: {e}"),
                )),
            }
        }
    }
    errors
}

/// Adds the operator's finalizer to a cluster being created, so that the first reconcile need not
/// write it (one API write and one round trip less per cluster). Only for namespaces this operator
/// reconciles: a finalizer nobody removes would leave the cluster undeletable. The reconcile still
/// adds it where the webhook did not run (admission off, or the user removed it).
pub fn add_finalizer(obj: &mut Value) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
    match finalizers.as_array_mut() {
        Some(list) if !list.iter().any(|f| f.as_str() == Some(labels::FINALIZER)) => {
            list.push(json!(labels::FINALIZER))
        }
        Some(_) => {}
        // Not a list: the API server refuses the object anyway; leave it as the user wrote it.
        None => {}
    }
}

/// Fills in, where the user left them out: `appCatalog` (the catalog that has the app), `serviceType`
/// (kd-global-config's, else LoadBalancer), `namingScheme`, each role's `members` (the cardinality's
/// N), `secret` (from `defaultSecret`) and `storage.storageClassName` (kd-global-config's default,
/// else the cluster's default class). Nothing is filled when the app cannot be found: validation
/// then reports that.
pub fn mutate(obj: &mut Value, ns: &str, spec: &KubeDirectorClusterSpec, world: &dyn World) {
    let Ok(app) = app_of(world, ns, spec) else {
        return;
    };
    let settings = Settings::from_config(global_config(world).as_ref());
    let defaulted = apply_cluster_defaults(spec, &app, settings.default_naming_scheme);
    let classes = world.storage_classes();
    let Some(spec_json) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let mut fill = |key: &str, value: Value| {
        if !spec_json.contains_key(key) && !value.is_null() {
            spec_json.insert(key.to_string(), value);
        }
    };
    fill("appCatalog", json!(defaulted.app_catalog));
    fill("namingScheme", json!(defaulted.naming_scheme));
    fill("serviceType", json!(settings.default_service_type));
    let Some(roles) = spec_json.get_mut("roles").and_then(Value::as_array_mut) else {
        return;
    };
    for (role_json, role) in roles.iter_mut().zip(&defaulted.roles) {
        let Some(role_json) = role_json.as_object_mut() else {
            continue;
        };
        if !role_json.contains_key("members")
            && let Some(m) = role.members
        {
            role_json.insert("members".to_string(), json!(m));
        }
        if !role_json.contains_key("secret")
            && let Some(s) = &role.secret
        {
            role_json.insert("secret".to_string(), json!(s));
        }
        let class = effective_storage_class(None, settings.default_storage_class.as_deref(), &classes);
        if let (Some(storage), Some(class)) = (role_json.get_mut("storage").and_then(Value::as_object_mut), class)
            && !storage.contains_key("storageClassName")
        {
            storage.insert("storageClassName".to_string(), json!(class));
        }
    }
}

/// Every rule for a created or changed cluster; `old` is the stored object on update.
pub fn validate(
    ns: &str,
    spec: &KubeDirectorClusterSpec,
    old: Option<&KubeDirectorClusterSpec>,
    world: &dyn World,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(old) = old {
        errors.extend(immutable(spec, old));
    }
    match app_of(world, ns, spec) {
        Err(message) => {
            let available = apps_named(world, ns);
            let message = message.strip_prefix("spec.app: ").unwrap_or(&message).to_string();
            errors.push(err("spec.app", format!("{message} (available: {available})")));
        }
        Ok(app) => {
            let config = global_config(world);
            let classes = world.storage_classes();
            let default_class = config.as_ref().and_then(|c| c.default_storage_class_name.as_deref());
            errors.extend(validate::validate_cluster(spec, &app, default_class, &classes));
            errors.extend(minimums(spec, &app));
        }
    }
    errors.extend(secrets(ns, spec, world));
    errors.extend(accounts_and_claims(ns, spec, world));
    errors.extend(connection_refs(ns, spec));
    let master = global_config(world).and_then(|c| c.master_encryption_key);
    errors.extend(crate::model::secretkeys::stored_errors(spec, master.as_deref(), true));
    errors
}

/// References in `spec.connections` must have one of the three forms (whether the objects exist is
/// not checked: a connection may name what is created later, and its arrival reconnects).
fn connection_refs(ns: &str, spec: &KubeDirectorClusterSpec) -> Vec<FieldError> {
    let (_, bad) = connections::targets(spec.connections.as_ref(), "", ns);
    bad.into_iter()
        .map(|e| match e.split_once(": ") {
            Some((field, message)) => err(field, message),
            None => err("spec.connections", e),
        })
        .collect()
}

fn apps_named(world: &dyn World, ns: &str) -> String {
    // The names the user could have meant: apps of the local and the system catalog.
    let mut names: Vec<String> = [ns, world.operator_namespace()]
        .iter()
        .flat_map(|n| world.apps_in(n))
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// `app` and `appCatalog` never change; a role that has members may change only its `members`.
fn immutable(new: &KubeDirectorClusterSpec, old: &KubeDirectorClusterSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if new.app != old.app {
        errors.push(err(
            "spec.app",
            format!(
                "cannot change (was {:?}, now {:?}); create a new cluster for another app",
                old.app, new.app
            ),
        ));
    }
    if let (Some(n), Some(o)) = (new.app_catalog, old.app_catalog)
        && n != o
    {
        errors.push(err(
            "spec.appCatalog",
            format!("cannot change (was {:?}, now {:?})", o.as_str(), n.as_str()),
        ));
    }
    for (i, role) in new.roles.iter().enumerate() {
        let Some(before) = old.roles.iter().find(|r| r.id == role.id) else {
            continue;
        };
        if before.members.unwrap_or(0) == 0 {
            continue;
        }
        let fields = |r: &crate::api::cluster::RoleSpec| match serde_json::to_value(r) {
            Ok(Value::Object(mut m)) => {
                m.remove("members");
                m
            }
            _ => serde_json::Map::new(),
        };
        let (now, was) = (fields(role), fields(before));
        let mut changed: Vec<&str> = now
            .keys()
            .chain(was.keys())
            .filter(|k| now.get(*k) != was.get(*k))
            .map(String::as_str)
            .collect();
        changed.sort_unstable();
        changed.dedup();
        if !changed.is_empty() {
            errors.push(err(
                format!("spec.roles[{i}]"),
                format!(
                    "role {:?} has members, so only its members may change (changed: {}); shrink it to 0 members first",
                    role.id,
                    changed.join(", ")
                ),
            ));
        }
    }
    errors
}

/// The app's minimum resources and storage per role.
fn minimums(spec: &KubeDirectorClusterSpec, app: &ResolvedApp) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, role) in spec.roles.iter().enumerate() {
        let Some(app_role) = app.role(&role.id) else {
            continue;
        };
        for (resource, min) in &app_role.min_resources {
            let Some(min_value) = parse_quantity(min) else {
                continue; // the app's own validation reports it
            };
            let requested = role.resources.requests.as_ref().and_then(|r| r.get(resource));
            let given = requested.or_else(|| role.resources.limits.as_ref().and_then(|l| l.get(resource)));
            let field = format!("spec.roles[{i}].resources.requests.{resource}");
            match given.map(|q| (q, parse_quantity(q))) {
                None => errors.push(err(
                    field,
                    format!("is required: app role {:?} needs at least {}", role.id, min.0),
                )),
                Some((q, Some(v))) if v < min_value => errors.push(err(
                    field,
                    format!(
                        "{} is below the minimum of app role {:?} (at least {})",
                        q.0, role.id, min.0
                    ),
                )),
                _ => {}
            }
        }
        if let Some(min) = &app_role.min_storage
            && let Some(min_value) = parse_quantity(&min.size)
        {
            match &role.storage {
                None if min.ephemeral_mode_supported != Some(true) => errors.push(err(
                    format!("spec.roles[{i}].storage"),
                    format!(
                        "is required: app role {:?} needs persistent storage of at least {}",
                        role.id, min.size.0
                    ),
                )),
                Some(s) if parse_quantity(&s.size).is_some_and(|v| v < min_value) => errors.push(err(
                    format!("spec.roles[{i}].storage.size"),
                    format!(
                        "{} is below the minimum of app role {:?} (at least {})",
                        s.size.0, role.id, min.size.0
                    ),
                )),
                _ => {}
            }
        }
    }
    errors
}

/// Each role's `serviceAccountName` exists and the requesting user may use it; each
/// `volumeProjections` claim exists, is a Filesystem volume, and can be mounted by all the role's
/// members (ReadWriteMany, or ReadOnlyMany with `readOnly`, when there is more than one). Checked
/// from the request's lookups (skipped without them).
fn accounts_and_claims(ns: &str, spec: &KubeDirectorClusterSpec, world: &dyn World) -> Vec<FieldError> {
    use super::lookups::Account;
    let Some(lookups) = world.lookups() else {
        return Vec::new();
    };
    let key = |name: &str| (ns.to_string(), name.to_string());
    let mut errors = Vec::new();
    for (i, role) in spec.roles.iter().enumerate() {
        if let Some(sa) = role.service_account_name.as_deref().filter(|s| !s.is_empty()) {
            let field = format!("spec.roles[{i}].serviceAccountName");
            match lookups.accounts.get(&key(sa)) {
                Some(Account::Missing) => errors.push(err(
                    field,
                    format!("service account {sa:?} does not exist in namespace {ns:?}"),
                )),
                Some(Account::Denied(why)) => errors.push(err(
                    field,
                    format!("you may not use service account {sa:?} (get serviceaccounts in {ns:?}): {why}"),
                )),
                Some(Account::Allowed) | None => {}
            }
        }
        for (j, f) in role.file_injections.iter().enumerate() {
            if let Some(why) = lookups.unreachable.get(&f.src_url) {
                errors.push(err(
                    format!("spec.roles[{i}].fileInjections[{j}].srcURL"),
                    format!("{:?} cannot be reached: {why}", f.src_url),
                ));
            }
        }
        let members = role.members.unwrap_or(1);
        for (j, p) in role.volume_projections.iter().enumerate() {
            let field = format!("spec.roles[{i}].volumeProjections[{j}].pvcName");
            let Some(found) = lookups.claims.get(&key(&p.pvc_name)) else {
                continue;
            };
            let Some(claim) = found else {
                errors.push(err(
                    field,
                    format!("PersistentVolumeClaim {:?} not found in namespace {ns:?}", p.pvc_name),
                ));
                continue;
            };
            let has = |m: &str| claim.access_modes.iter().any(|a| a == m);
            let read_only = p.read_only == Some(true);
            if claim.block {
                errors.push(err(
                    field,
                    format!(
                        "{:?} is a Block volume; a projection needs volumeMode Filesystem",
                        p.pvc_name
                    ),
                ));
            } else if members > 1 && !has("ReadWriteMany") && !(read_only && has("ReadOnlyMany")) {
                errors.push(err(
                    field,
                    format!(
                        "{:?} is mounted by {members} members: it needs accessMode ReadWriteMany (or ReadOnlyMany with readOnly: true); it has {}",
                        p.pvc_name,
                        claim.access_modes.join(", ")
                    ),
                ));
            } else if !read_only && !has("ReadWriteMany") && !has("ReadWriteOnce") && !has("ReadWriteOncePod") {
                errors.push(err(
                    field,
                    format!(
                        "{:?} is read-only ({}): set readOnly: true",
                        p.pvc_name,
                        claim.access_modes.join(", ")
                    ),
                ));
            }
        }
    }
    errors
}

/// Secrets named by the cluster exist in its namespace (judged where the world knows: the request's
/// lookups).
fn secrets(ns: &str, spec: &KubeDirectorClusterSpec, world: &dyn World) -> Vec<FieldError> {
    let named = spec
        .default_secret
        .iter()
        .map(|s| ("spec.defaultSecret.name".to_string(), s))
        .chain(
            spec.roles
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.secret.as_ref().map(|s| (format!("spec.roles[{i}].secret.name"), s))),
        );
    let prefix = global_config(world)
        .and_then(|c| c.required_secret_prefix)
        .filter(|p| !p.is_empty());
    named
        .filter_map(|(field, s)| match &prefix {
            // kd-global-config's requiredSecretPrefix, as KubeDirector checks it.
            Some(p) if !s.name.starts_with(p.as_str()) => Some(err(
                field,
                format!(
                    "Secret {:?} does not have the required name prefix {p:?} (kd-global-config requiredSecretPrefix)",
                    s.name
                ),
            )),
            _ if world.secret_exists(ns, &s.name) == Some(false) => {
                Some(err(field, format!("Secret {:?} not found in namespace {ns:?}", s.name)))
            }
            _ => None,
        })
        .collect()
}

/// Created with KubeDirector's backup annotation: a backup tool re-creating the cluster.
pub fn is_restore(obj: &DynamicObject) -> bool {
    obj.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(labels::STATUS_BACKUP_EXISTS))
}

pub fn is_restoring(obj: &DynamicObject) -> bool {
    obj.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(labels::RESTORING))
}

/// A restored cluster is labelled `restoring` (and left otherwise as stored: no defaults, no
/// sealing; its secret keys are sealed already).
pub fn mark_restoring(obj: &mut Value) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if let Some(labels) = labels.as_object_mut() {
        labels.entry(labels::RESTORING).or_insert(json!(""));
    }
}

/// A cluster being restored is not deleted unless it also carries `allow-delete-while-restoring`.
pub fn deletable_while_restoring(old: &DynamicObject) -> Vec<FieldError> {
    let allowed = old
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(labels::ALLOW_DELETE_WHILE_RESTORING));
    if !is_restoring(old) || allowed {
        return Vec::new();
    }
    vec![err(
        format!("metadata.labels.{}", labels::RESTORING),
        format!(
            "the cluster is being restored: it can be deleted once the restore is done, or with the label {}",
            labels::ALLOW_DELETE_WHILE_RESTORING
        ),
    )]
}

/// Clusters being deleted are not checked again (their finalizer must be removable).
pub fn is_deleting(obj: &DynamicObject) -> bool {
    obj.metadata.deletion_timestamp.is_some()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kube::api::DynamicObject;
    use serde_json::json;

    use super::super::world::Snapshot;
    use super::*;

    #[test]
    fn accounts_and_claims_are_judged_from_the_lookups() {
        use super::super::lookups::{Account, Claim, Lookups};
        use super::super::world::WithLookups;
        let base = Snapshot::default();
        let key = |n: &str| ("ns".to_string(), n.to_string());
        let mut lookups = Lookups::default();
        lookups
            .accounts
            .insert(key("locked"), Account::Denied("RBAC: no rule".into()));
        lookups.accounts.insert(key("fine"), Account::Allowed);
        let claim = |modes: &[&str]| {
            Some(Claim {
                block: false,
                access_modes: modes.iter().map(|m| m.to_string()).collect(),
            })
        };
        lookups.claims.insert(key("rox"), claim(&["ReadOnlyMany"]));
        lookups.claims.insert(key("rwx"), claim(&["ReadWriteMany"]));
        let world = WithLookups {
            inner: &base,
            lookups: Some(lookups),
            configs: None,
            apps: Vec::new(),
        };
        let spec: KubeDirectorClusterSpec = serde_json::from_value(json!({
            "app": "a",
            "roles": [
                {"id": "r", "members": 2, "resources": {}, "serviceAccountName": "locked",
                 "volumeProjections": [{"pvcName": "rox", "mountPath": "/a"}, {"pvcName": "rox", "mountPath": "/b", "readOnly": true}]},
                {"id": "q", "members": 1, "resources": {}, "serviceAccountName": "fine",
                 "volumeProjections": [{"pvcName": "rwx", "mountPath": "/c"}, {"pvcName": "rox", "mountPath": "/d"}]}
            ]
        }))
        .expect("spec");
        let text: Vec<String> = accounts_and_claims("ns", &spec, &world)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("spec.roles[0].serviceAccountName: you may not use")
                && text[0].contains("RBAC: no rule")
        );
        assert!(text[1].starts_with("spec.roles[0].volumeProjections[0].pvcName: \"rox\" is mounted by 2 members"));
        assert!(
            text[2].starts_with("spec.roles[1].volumeProjections[1].pvcName: \"rox\" is read-only"),
            "{text:?}"
        );
        // Without lookups (a pure check) nothing is judged.
        assert!(accounts_and_claims("ns", &spec, &base).is_empty());
    }

    #[test]
    fn secrets_need_kd_global_configs_required_prefix() {
        let config: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubedirector.hpe.com/v1beta1", "kind": "KubeDirectorConfig",
            "metadata": {"name": "kd-global-config", "namespace": "kd"},
            "spec": {"requiredSecretPrefix": "kd-"}
        }))
        .expect("config");
        let mut world = Snapshot {
            operator_namespace: "kd".into(),
            configs: vec![Arc::new(config)],
            ..Default::default()
        };
        world.secrets.insert(("ns".into(), "kd-ok".into()));
        world.secrets.insert(("ns".into(), "other".into()));
        let spec: KubeDirectorClusterSpec = serde_json::from_value(json!({
            "app": "a", "defaultSecret": {"name": "other", "mountPath": "/s"},
            "roles": [{"id": "r", "resources": {}, "secret": {"name": "kd-ok", "mountPath": "/s"}},
                      {"id": "q", "resources": {}, "secret": {"name": "kd-missing", "mountPath": "/s"}}]
        }))
        .expect("spec");
        let errors = secrets("ns", &spec, &world);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with("spec.defaultSecret.name: ") && text[0].contains("required name prefix \"kd-\""),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("spec.roles[1].secret.name: ") && text[1].contains("not found"),
            "{text:?}"
        );
    }
}
