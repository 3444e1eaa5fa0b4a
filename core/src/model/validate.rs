//! Checks of a cluster against its app and the environment. Each error names the field path, the
//! offending value and what is allowed; all errors are reported at once. Admission will run the same
//! checks; the reconcile runs them too, because objects may predate the webhook.

use std::fmt;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::cluster::KubeDirectorClusterSpec;

use super::catalog::ResolvedApp;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All errors joined for a condition message or an Event.
pub fn describe(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// `describe` for the first `limit` errors, then how many more: a huge object must not produce a
/// message larger than the API server passes on.
pub fn describe_first(errors: &[FieldError], limit: usize) -> String {
    let shown = describe(&errors[..errors.len().min(limit)]);
    match errors.len().saturating_sub(limit) {
        0 => shown,
        more => format!("{shown}; and {more} more"),
    }
}

/// What the environment offers for storage: existing StorageClass names and the cluster default.
#[derive(Clone, Debug, Default)]
pub struct StorageClasses {
    pub names: Vec<String>,
    /// The class annotated `storageclass.kubernetes.io/is-default-class: "true"`, if any.
    pub cluster_default: Option<String>,
}

/// The storage class a role's PVCs will use: the role's own, else kd-global-config's, else the
/// cluster default. `None` when none of them is set.
pub fn effective_storage_class(
    requested: Option<&str>,
    config_default: Option<&str>,
    classes: &StorageClasses,
) -> Option<String> {
    requested
        .or(config_default)
        .or(classes.cluster_default.as_deref())
        .map(str::to_string)
}

pub fn validate_cluster(
    spec: &KubeDirectorClusterSpec,
    app: &ResolvedApp,
    config_default_class: Option<&str>,
    classes: &StorageClasses,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let role_ids: Vec<&str> = app.roles.iter().map(|r| r.id.as_str()).collect();
    for (i, role) in spec.roles.iter().enumerate() {
        let at = |field: &str| format!("spec.roles[{i}]{field}");
        if spec.roles[..i].iter().any(|r| r.id == role.id) {
            errors.push(FieldError {
                field: at(".id"),
                message: format!("{:?} appears more than once; role ids must be unique", role.id),
            });
        }
        let Some(app_role) = app.role(&role.id) else {
            errors.push(FieldError {
                field: at(".id"),
                message: format!(
                    "{:?} is not a role of app {:?} (allowed: {})",
                    role.id,
                    app.name,
                    role_ids.join(", ")
                ),
            });
            continue;
        };
        if !app.selected_roles.contains(&role.id) {
            errors.push(FieldError {
                field: at(".id"),
                message: format!(
                    "role {:?} is not selected by app {:?} (selected: {})",
                    role.id,
                    app.name,
                    app.selected_roles.join(", ")
                ),
            });
        }
        let members = role
            .members
            .map(i64::from)
            .unwrap_or(i64::from(app_role.cardinality.default_members()));
        if !app_role.cardinality.allows(members) {
            errors.push(FieldError {
                field: at(".members"),
                message: format!(
                    "{members} is outside the cardinality of role {:?} (allowed: {})",
                    role.id, app_role.cardinality
                ),
            });
        }
        if app_role.image.is_none() {
            errors.push(FieldError {
                field: at(".id"),
                message: format!(
                    "role {:?} of app {:?} has no image (set imageRepoTag or defaultImageRepoTag in the app)",
                    role.id, app.name
                ),
            });
        }
        let limits = role.resources.limits.as_ref();
        for resource in ["cpu", "memory"] {
            if !limits.is_some_and(|l| l.contains_key(resource)) {
                errors.push(FieldError {
                    field: at(&format!(".resources.limits.{resource}")),
                    message: format!(
                        "is required (e.g. {})",
                        if resource == "cpu" { "\"2\"" } else { "\"4Gi\"" }
                    ),
                });
            }
        }
        let given = [("limits", limits), ("requests", role.resources.requests.as_ref())];
        for (kind, name, quantity) in given
            .into_iter()
            .flat_map(|(kind, m)| m.into_iter().flatten().map(move |(n, q)| (kind, n, q)))
        {
            if parse_quantity(quantity).is_none() {
                errors.push(FieldError {
                    field: at(&format!(".resources.{kind}.{name}")),
                    message: format!("{:?} is not a quantity (e.g. \"500m\", \"2\", \"4Gi\")", quantity.0),
                });
            }
        }
        let storage_requests = [
            role.storage
                .as_ref()
                .map(|s| (".storage.storageClassName", s.storage_class_name.as_deref())),
            role.block_storage
                .as_ref()
                .map(|b| (".blockStorage.storageClassName", b.storage_class_name.as_deref())),
        ];
        for (field, requested) in storage_requests.into_iter().flatten() {
            match effective_storage_class(requested, config_default_class, classes) {
                Some(class) if classes.names.contains(&class) => {}
                Some(class) => errors.push(FieldError {
                    field: at(field),
                    message: format!("storage class {class:?} does not exist (existing: {})", list_or_none(&classes.names)),
                }),
                None => errors.push(FieldError {
                    field: at(field),
                    message: format!(
                        "not set and there is no default: set it, or defaultStorageClassName in kd-global-config, or mark a StorageClass as default (existing: {})",
                        list_or_none(&classes.names)
                    ),
                }),
            }
        }
        errors.extend(super::role_rules::check(i, role));
        if let Some(storage) = role.storage.as_ref().filter(|s| parse_quantity(&s.size).is_none()) {
            errors.push(FieldError {
                field: at(".storage.size"),
                message: format!("{:?} is not a quantity (e.g. \"20Gi\")", storage.size.0),
            });
        }
    }
    for app_role in &app.roles {
        if app.selected_roles.contains(&app_role.id)
            && app_role.cardinality.min > 0
            && !spec.roles.iter().any(|r| r.id == app_role.id)
        {
            errors.push(FieldError {
                field: "spec.roles".to_string(),
                message: format!(
                    "role {:?} of app {:?} is required (cardinality {})",
                    app_role.id, app.name, app_role.cardinality
                ),
            });
        }
    }
    errors
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// The value of a Kubernetes quantity in base units (cores, bytes, GPUs), enough to compare and to
/// tell whether a GPU is requested. `None` if the text is not a quantity.
pub fn parse_quantity(q: &Quantity) -> Option<f64> {
    let text = q.0.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(value * factor)
}
