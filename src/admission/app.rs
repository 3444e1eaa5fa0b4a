//! KubeDirectorApp admission: defaults moved into the roles (mutating), the app's own consistency
//! and "an app in use cannot change" (validating).

use std::collections::BTreeSet;

use kube::api::DynamicObject;
use serde_json::Value;

use crate::api::KubeDirectorAppSpec;
use crate::api::app::AppRole;
use crate::api::cluster::AppCatalog;
use crate::model::cardinality::Cardinality;
use crate::model::catalog::apply_app_defaults;
use crate::model::validate::{FieldError, parse_quantity};

use super::world::World;

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// The app's `default*` fields, and the role field each one fills.
const DEFAULTS: [(&str, &str); 5] = [
    ("defaultImageRepoTag", "imageRepoTag"),
    ("defaultConfigPackage", "configPackage"),
    ("defaultPersistDirs", "persistDirs"),
    ("defaultEventList", "eventList"),
    ("defaultMaxLogSizeDump", "maxLogSizeDump"),
];

/// Mutates the app object (JSON) in place: every `default*` value moves into the roles that lack
/// their own (the rule is `catalog::apply_app_defaults`, shared with the reconcile), then the
/// `default*` fields are removed. Fields this version does not know are left untouched.
pub fn mutate(obj: &mut Value, spec: &KubeDirectorAppSpec) {
    let defaulted = apply_app_defaults(spec);
    let Some(spec_json) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(roles) = spec_json.get_mut("roles").and_then(Value::as_array_mut) {
        for (role_json, role) in roles.iter_mut().zip(&defaulted.roles) {
            let (Some(role_json), Ok(Value::Object(filled))) = (role_json.as_object_mut(), serde_json::to_value(role))
            else {
                continue;
            };
            for (_, field) in DEFAULTS {
                if !role_json.contains_key(field)
                    && let Some(v) = filled.get(field)
                {
                    role_json.insert(field.to_string(), v.clone());
                }
            }
        }
    }
    for (default, _) in DEFAULTS {
        spec_json.remove(default);
    }
}

/// The app's own rules: unique ids, references between roles and services, an image per role,
/// valid cardinalities, quantities and paths, tty with stdin, dashboards with a URL scheme.
pub fn validate(spec: &KubeDirectorAppSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let role_ids: Vec<&str> = spec.roles.iter().map(|r| r.id.as_str()).collect();
    let service_ids: Vec<&str> = spec.services.iter().map(|s| s.id.as_str()).collect();
    if spec.config_schema_version < 7 {
        errors.push(err(
            "spec.configSchemaVersion",
            format!("{} is not supported (allowed: 7 or later)", spec.config_schema_version),
        ));
    }
    if spec.roles.is_empty() {
        errors.push(err("spec.roles", "at least one role is required"));
    }
    for (i, role) in spec.roles.iter().enumerate() {
        validate_role(spec, i, role, &role_ids, &mut errors);
    }
    validate_services(spec, &service_ids, &mut errors);
    validate_role_services(spec, &role_ids, &service_ids, &mut errors);
    validate_selected_roles(spec, &role_ids, &mut errors);
    errors
}

/// `ids` as the messages list them ("none" if empty).
fn list(ids: &[&str]) -> String {
    if ids.is_empty() {
        "none".to_string()
    } else {
        ids.join(", ")
    }
}

/// Role `i`: a unique id, a valid cardinality, an image (its own or the app's default), tty with
/// stdin, persist dirs that are absolute paths without a trailing slash, valid quantities.
fn validate_role(
    spec: &KubeDirectorAppSpec,
    i: usize,
    role: &AppRole,
    role_ids: &[&str],
    errors: &mut Vec<FieldError>,
) {
    let at = |f: &str| format!("spec.roles[{i}]{f}");
    if role_ids[..i].contains(&role.id.as_str()) {
        errors.push(err(
            at(".id"),
            format!("{:?} appears more than once; role ids must be unique", role.id),
        ));
    }
    if let Err(e) = Cardinality::parse(&role.cardinality) {
        errors.push(err(at(".cardinality"), e.0));
    }
    if role
        .image_repo_tag
        .as_deref()
        .or(spec.default_image_repo_tag.as_deref())
        .is_none_or(str::is_empty)
    {
        errors.push(err(
            at(".imageRepoTag"),
            format!(
                "role {:?} has no image: set imageRepoTag, or defaultImageRepoTag for every role",
                role.id
            ),
        ));
    }
    let container = role.container_spec.as_ref();
    if container.and_then(|c| c.tty) == Some(true) && container.and_then(|c| c.stdin) != Some(true) {
        errors.push(err(at(".containerSpec.tty"), "true needs containerSpec.stdin: true"));
    }
    let dirs = role.persist_dirs.as_ref().or(spec.default_persist_dirs.as_ref());
    for (j, dir) in dirs.into_iter().flatten().enumerate() {
        let field = || {
            if role.persist_dirs.is_some() {
                at(&format!(".persistDirs[{j}]"))
            } else {
                format!("spec.defaultPersistDirs[{j}]")
            }
        };
        if !dir.starts_with('/') {
            errors.push(err(
                field(),
                format!("{dir:?} is not an absolute path (e.g. \"/var/lib/app\")"),
            ));
        } else if dir.ends_with('/') {
            // KubeDirector's pattern `^/.*[^/]$`: no trailing slash (and not "/" itself).
            errors.push(err(
                field(),
                format!("{dir:?} must not end with \"/\" (e.g. \"/var/lib/app\")"),
            ));
        }
    }
    for (name, q) in role.min_resources.iter().flatten() {
        if parse_quantity(q).is_none() {
            errors.push(err(
                at(&format!(".minResources.{name}")),
                format!("{:?} is not a quantity (e.g. \"500m\", \"2\", \"4Gi\")", q.0),
            ));
        }
    }
    if let Some(ms) = role
        .min_storage
        .as_ref()
        .filter(|ms| parse_quantity(&ms.size).is_none())
    {
        errors.push(err(
            at(".minStorage.size"),
            format!("{:?} is not a quantity (e.g. \"20Gi\")", ms.size.0),
        ));
    }
}

/// Unique service ids, and a URL scheme for every dashboard.
fn validate_services(spec: &KubeDirectorAppSpec, service_ids: &[&str], errors: &mut Vec<FieldError>) {
    for (i, service) in spec.services.iter().enumerate() {
        if service_ids[..i].contains(&service.id.as_str()) {
            errors.push(err(
                format!("spec.services[{i}].id"),
                format!("{:?} appears more than once; service ids must be unique", service.id),
            ));
        }
        if let Some(ep) = service.endpoint.as_set()
            && ep.is_dashboard == Some(true)
            && ep.url_scheme.as_deref().is_none_or(str::is_empty)
        {
            errors.push(err(
                format!("spec.services[{i}].endpoint.urlScheme"),
                "is required when isDashboard is true (e.g. \"http\")",
            ));
        }
    }
}

/// `config.roleServices`: one entry per role, naming roles and services of this app.
fn validate_role_services(
    spec: &KubeDirectorAppSpec,
    role_ids: &[&str],
    service_ids: &[&str],
    errors: &mut Vec<FieldError>,
) {
    for (i, rs) in spec.config.role_services.iter().enumerate() {
        if spec.config.role_services[..i].iter().any(|r| r.role_id == rs.role_id) {
            errors.push(err(
                format!("spec.config.roleServices[{i}].roleID"),
                format!(
                    "{:?} appears more than once; list each role's services in one entry",
                    rs.role_id
                ),
            ));
        }
        if !role_ids.contains(&rs.role_id.as_str()) {
            errors.push(err(
                format!("spec.config.roleServices[{i}].roleID"),
                format!("{:?} is not a role of this app (roles: {})", rs.role_id, list(role_ids)),
            ));
        }
        for (j, sid) in rs.service_ids.iter().enumerate() {
            if !service_ids.contains(&sid.as_str()) {
                errors.push(err(
                    format!("spec.config.roleServices[{i}].serviceIDs[{j}]"),
                    format!("{sid:?} is not a service of this app (services: {})", list(service_ids)),
                ));
            }
        }
    }
}

/// `config.selectedRoles`: at least one, unique, each a role of this app.
fn validate_selected_roles(spec: &KubeDirectorAppSpec, role_ids: &[&str], errors: &mut Vec<FieldError>) {
    if spec.config.selected_roles.is_empty() {
        errors.push(err(
            "spec.config.selectedRoles",
            format!("select at least one role (roles: {})", list(role_ids)),
        ));
    }
    for (i, id) in spec.config.selected_roles.iter().enumerate() {
        if spec.config.selected_roles[..i].contains(id) {
            errors.push(err(
                format!("spec.config.selectedRoles[{i}]"),
                format!("{id:?} appears more than once; selected roles must be unique"),
            ));
        }
        if !role_ids.contains(&id.as_str()) {
            errors.push(err(
                format!("spec.config.selectedRoles[{i}]"),
                format!("{id:?} is not a role of this app (roles: {})", list(role_ids)),
            ));
        }
    }
}

/// "namespace/name" of every KubeDirectorCluster that uses the app `name` of namespace `ns`: the
/// local catalog serves clusters of the same namespace, the system catalog (the operator's
/// namespace) clusters of any namespace. A cluster without `appCatalog` is counted for both: it
/// would fall back to the system app if the local one went away.
pub fn users(world: &dyn World, ns: &str, name: &str) -> Vec<String> {
    let system = ns == world.operator_namespace();
    let mut users: BTreeSet<String> = BTreeSet::new();
    for c in world.clusters() {
        let spec = &c.data["spec"];
        if spec["app"].as_str() != Some(name) {
            continue;
        }
        let cluster_ns = c.metadata.namespace.clone().unwrap_or_default();
        let catalog = serde_json::from_value::<AppCatalog>(spec["appCatalog"].clone()).ok();
        let uses = match catalog {
            Some(AppCatalog::Local) => cluster_ns == ns,
            Some(AppCatalog::System) => system,
            None => cluster_ns == ns || system,
        };
        if uses {
            users.insert(format!("{cluster_ns}/{}", c.metadata.name.clone().unwrap_or_default()));
        }
    }
    users.into_iter().collect()
}

/// Refuses changing or deleting an app while clusters use it (`old` is the stored object).
/// `ns` and `name` come from the request (the API server's word, whatever the objects say).
pub fn in_use(
    world: &dyn World,
    ns: &str,
    name: &str,
    old: &DynamicObject,
    new: Option<&DynamicObject>,
) -> Vec<FieldError> {
    if new.is_some_and(|n| n.data.get("spec") == old.data.get("spec")) {
        return Vec::new(); // metadata only (labels, annotations, finalizers)
    }
    let users = users(world, ns, name);
    if users.is_empty() {
        return Vec::new();
    }
    let shown = users.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let more = if users.len() > 5 {
        format!(" and {} more", users.len() - 5)
    } else {
        String::new()
    };
    let (field, action) = match new {
        Some(_) => ("spec", "changed"),
        None => ("metadata.name", "deleted"),
    };
    vec![err(
        field,
        format!(
            "the app is used by {} KubeDirectorCluster(s) ({shown}{more}) and cannot be {action} while they exist; create the new version under another name",
            users.len()
        ),
    )]
}
