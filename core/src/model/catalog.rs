//! The app catalog: which app a cluster uses, and each role's effective settings once the app's
//! `default*` values are applied. Admission uses `apply_app_defaults` to mutate apps; the reconcile
//! uses it too, because apps stored before the webhook existed may still carry their defaults.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube_core::DynamicObject;
use serde::de::DeserializeOwned;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::app::{AppRole, ContainerSpec, KubeDirectorAppSpec, LifecycleEvent, MinStorage, Service, SetupPackage};
use crate::api::cluster::{AppCatalog, KubeDirectorClusterSpec};
use crate::api::common::NamingScheme;
use crate::api::{KubeDirectorApp, Tristate};

use super::cardinality::{Cardinality, CardinalityError};

/// KubeDirector's default for `maxLogSizeDump`.
pub const DEFAULT_MAX_LOG_SIZE_DUMP: i32 = 256;

/// Which catalog supplied the app, given the cluster's `appCatalog` and what each catalog holds.
/// Unset = the cluster's own namespace first, then the operator's.
pub fn choose_catalog(requested: Option<AppCatalog>, in_local: bool, in_system: bool) -> Option<AppCatalog> {
    match requested {
        Some(AppCatalog::Local) => in_local.then_some(AppCatalog::Local),
        Some(AppCatalog::System) => in_system.then_some(AppCatalog::System),
        None if in_local => Some(AppCatalog::Local),
        None if in_system => Some(AppCatalog::System),
        None => None,
    }
}

/// The app with every `default*` moved into the roles that lack their own value, and the defaults removed.
pub fn apply_app_defaults(spec: &KubeDirectorAppSpec) -> KubeDirectorAppSpec {
    let mut out = spec.clone();
    for role in &mut out.roles {
        if role.image_repo_tag.is_none() {
            role.image_repo_tag = spec.default_image_repo_tag.clone();
        }
        role.config_package = role.config_package.or_inherit(&spec.default_config_package).clone();
        if role.persist_dirs.is_none() {
            role.persist_dirs = spec.default_persist_dirs.clone();
        }
        if role.event_list.is_none() {
            role.event_list = spec.default_event_list.clone();
        }
        if role.max_log_size_dump.is_none() {
            role.max_log_size_dump = spec.default_max_log_size_dump;
        }
    }
    out.default_image_repo_tag = None;
    out.default_config_package = Tristate::Absent;
    out.default_persist_dirs = None;
    out.default_event_list = None;
    out.default_max_log_size_dump = None;
    out
}

/// Everything the plan needs about one app role, defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedRole {
    pub id: String,
    pub cardinality: Cardinality,
    pub image: Option<String>,
    /// `None`: members run no setup and are configured as soon as they run.
    pub setup_package: Option<SetupPackage>,
    pub persist_dirs: Vec<String>,
    /// `None` = every lifecycle event.
    pub event_list: Option<Vec<LifecycleEvent>>,
    pub max_log_size_dump: i32,
    pub min_resources: BTreeMap<String, Quantity>,
    pub min_storage: Option<MinStorage>,
    pub container_spec: ContainerSpec,
    /// The app services this role runs, in app order.
    pub services: Vec<Service>,
}

impl ResolvedRole {
    /// Services that open a port (those without one are only named in configmeta).
    pub fn ported_services(&self) -> impl Iterator<Item = (&Service, i32)> {
        self.services
            .iter()
            .filter_map(|s| s.endpoint.as_set().and_then(|e| e.port).map(|p| (s, p)))
    }

    pub fn opens_ports(&self) -> bool {
        self.ported_services().next().is_some()
    }
}

/// An app ready for planning: its roles resolved, plus what labels and configmeta need.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedApp {
    pub name: String,
    pub catalog: AppCatalog,
    pub pretty_name: String,
    pub distro_id: String,
    pub version: String,
    pub capabilities: Vec<String>,
    pub systemd_required: bool,
    pub selected_roles: Vec<String>,
    pub roles: Vec<ResolvedRole>,
    /// `config.configMeta`: configmeta's `config_metadata` (null when the app has none).
    pub config_meta: Option<BTreeMap<String, String>>,
    /// configmeta's `version`.
    pub config_schema_version: i64,
}

impl ResolvedApp {
    pub fn role(&self, id: &str) -> Option<&ResolvedRole> {
        self.roles.iter().find(|r| r.id == id)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppError {
    #[error("spec.roles[{index}].cardinality: {source}")]
    Cardinality {
        index: usize,
        #[source]
        source: CardinalityError,
    },
}

/// Resolves an app: defaults applied, services attached to roles. Fails only on what the CRD schema
/// cannot rule out for objects stored before it (a malformed cardinality).
pub fn resolve_app(name: &str, catalog: AppCatalog, spec: &KubeDirectorAppSpec) -> Result<ResolvedApp, AppError> {
    let spec = apply_app_defaults(spec);
    let roles = spec
        .roles
        .iter()
        .enumerate()
        .map(|(index, role)| resolve_role(&spec, role).map_err(|source| AppError::Cardinality { index, source }))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ResolvedApp {
        name: name.to_string(),
        catalog,
        pretty_name: spec.label.name.clone(),
        distro_id: spec.distro_id.clone(),
        version: spec.version.clone(),
        capabilities: spec.capabilities.clone(),
        systemd_required: spec.systemd_required.unwrap_or(false),
        selected_roles: spec.config.selected_roles.clone(),
        roles,
        config_meta: spec.config.config_meta.clone(),
        config_schema_version: spec.config_schema_version,
    })
}

fn resolve_role(spec: &KubeDirectorAppSpec, role: &AppRole) -> Result<ResolvedRole, CardinalityError> {
    let service_ids: Vec<&String> = spec
        .config
        .role_services
        .iter()
        .filter(|rs| rs.role_id == role.id)
        .flat_map(|rs| rs.service_ids.iter())
        .collect();
    let services = spec
        .services
        .iter()
        .filter(|s| service_ids.contains(&&s.id))
        .cloned()
        .collect();
    Ok(ResolvedRole {
        id: role.id.clone(),
        cardinality: Cardinality::parse(&role.cardinality)?,
        image: role.image_repo_tag.clone(),
        setup_package: role.config_package.as_set().cloned(),
        persist_dirs: role.persist_dirs.clone().unwrap_or_default(),
        event_list: role.event_list.clone(),
        max_log_size_dump: role.max_log_size_dump.unwrap_or(DEFAULT_MAX_LOG_SIZE_DUMP),
        min_resources: role.min_resources.clone().unwrap_or_default(),
        min_storage: role.min_storage.clone(),
        container_spec: role.container_spec.clone().unwrap_or_default(),
        services,
    })
}

/// A cluster spec with KubeDirector's defaults filled in: members from the cardinality, the app
/// catalog that supplied the app, the naming scheme, and `defaultSecret` in roles lacking `secret`.
/// `serviceType` is left unset (it follows kd-global-config when the user did not choose).
pub fn apply_cluster_defaults(
    spec: &KubeDirectorClusterSpec,
    app: &ResolvedApp,
    default_scheme: NamingScheme,
) -> KubeDirectorClusterSpec {
    let mut out = spec.clone();
    out.app_catalog.get_or_insert(app.catalog);
    out.naming_scheme.get_or_insert(default_scheme);
    for role in &mut out.roles {
        if let (None, Some(app_role)) = (role.members, app.role(&role.id)) {
            role.members = Some(i32::try_from(app_role.cardinality.default_members()).unwrap_or(i32::MAX));
        }
        if role.secret.is_none() {
            role.secret = spec.default_secret.clone();
        }
    }
    out
}

/// Any object of ours as its typed form; the error names the field that does not fit.
pub fn parse<T: DeserializeOwned>(obj: &DynamicObject) -> Result<T, String> {
    let value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// The app of a cluster in namespace `ns`: its local catalog (`ns`), then the system catalog
/// (`operator_ns`), as `requested` allows. `lookup(namespace)` returns the app of that name there.
/// Errors are messages for `spec.app`.
pub fn find_app(
    lookup: impl Fn(&str) -> Option<Arc<DynamicObject>>,
    operator_ns: &str,
    ns: &str,
    app: &str,
    requested: Option<AppCatalog>,
) -> Result<ResolvedApp, String> {
    let (catalog, obj) = choose_app(lookup, operator_ns, ns, app, requested)?;
    resolve_object(app, catalog, &obj)
}

/// Which catalog's object `find_app` reads (the first half of it: no parsing).
pub fn choose_app(
    lookup: impl Fn(&str) -> Option<Arc<DynamicObject>>,
    operator_ns: &str,
    ns: &str,
    app: &str,
    requested: Option<AppCatalog>,
) -> Result<(AppCatalog, Arc<DynamicObject>), String> {
    let local = lookup(ns);
    let system = lookup(operator_ns);
    let catalog = choose_catalog(requested, local.is_some(), system.is_some()).ok_or_else(|| {
        let where_ = match requested {
            Some(AppCatalog::Local) => format!("namespace {ns:?} (appCatalog: local)"),
            Some(AppCatalog::System) => format!("namespace {operator_ns:?} (appCatalog: system)"),
            None => format!("namespace {ns:?} or {operator_ns:?}"),
        };
        format!("spec.app: KubeDirectorApp {app:?} not found in {where_}")
    })?;
    let obj = match catalog {
        AppCatalog::Local => local,
        AppCatalog::System => system,
    }
    .ok_or_else(|| format!("spec.app: KubeDirectorApp {app:?} vanished"))?;
    Ok((catalog, obj))
}

/// The second half of `find_app`: the chosen object parsed and resolved.
pub fn resolve_object(app: &str, catalog: AppCatalog, obj: &DynamicObject) -> Result<ResolvedApp, String> {
    let parsed: KubeDirectorApp =
        parse(obj).map_err(|e| format!("spec.app: KubeDirectorApp {app:?} cannot be read: {e}"))?;
    resolve_app(app, catalog, &parsed.spec).map_err(|e| format!("spec.app: KubeDirectorApp {app:?} is invalid: {e}"))
}
