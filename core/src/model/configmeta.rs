//! `/etc/guestconfig/configmeta.json`: what a member's setup package learns about its cluster, key
//! for key as KubeDirector's generator writes it (one nodegroup, "1"; services and distros as
//! `bdvlibrefkey` references into `nodegroups`, which configcli resolves). Pure: built from the spec,
//! the app and the status being written, so every member of one status sees the same membership.
//! `tests/configmeta_golden.rs` compares it with documents KubeDirector generated.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::api::cluster::{KubeDirectorClusterSpec, MemberState, MemberStatus, RoleStatus};

use super::catalog::ResolvedApp;
use super::validate::parse_quantity;

pub const NODEGROUP: &str = "1";
const MIB: f64 = 1024.0 * 1024.0;

/// Everything configmeta is made of.
pub struct Cluster<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub headless_service: &'a str,
    pub spec: &'a KubeDirectorClusterSpec,
    pub app: &'a ResolvedApp,
    pub roles: &'a [RoleStatus],
    /// `{clusters, configmaps, secrets}`, resolved by the caller from the connected objects.
    pub connections: &'a Value,
    /// kd-global-config's `clusterSvcDomainBase` (KubeDirector's default `.svc.cluster.local`).
    pub domain_base: &'a str,
    /// Decrypted secret keys by role id (roles whose spec has `secretKeys`).
    pub secret_keys: &'a BTreeMap<String, BTreeMap<String, String>>,
}

/// `<headless>.<namespace>.<base>`: the DNS domain of every member. KubeDirector's base carries its
/// leading dot; one without is taken the same way.
pub fn domain(headless_service: &str, namespace: &str, base: &str) -> String {
    format!("{headless_service}.{namespace}.{}", base.trim_start_matches('.'))
}

pub fn fqdn(pod: &str, domain: &str) -> String {
    format!("{pod}.{domain}")
}

fn leaving(m: &MemberStatus) -> bool {
    matches!(m.state, MemberState::DeletePending | MemberState::Deleting)
}

/// A role's members in configmeta, in KubeDirector's order: create pending, creating, configured,
/// config error (status order within each); members on their way out are not listed.
fn listed(role: &RoleStatus) -> Vec<&MemberStatus> {
    let rank = |m: &&MemberStatus| match m.state {
        MemberState::CreatePending => 0,
        MemberState::Creating => 1,
        MemberState::Configured => 2,
        _ => 3,
    };
    let mut members: Vec<&MemberStatus> = role.members.iter().filter(|m| !leaving(m)).collect();
    members.sort_by_key(rank);
    members
}

/// FQDNs of `role`'s present members, in configmeta's order.
pub fn role_fqdns(role: &RoleStatus, domain: &str) -> Vec<String> {
    listed(role).into_iter().map(|m| fqdn(&m.pod, domain)).collect()
}

fn refkey(prefix: &[&str], path: &[&str]) -> Value {
    let keys: Vec<&str> = prefix.iter().chain(path).copied().collect();
    json!({ "bdvlibrefkey": keys })
}

/// KubeDirector's flavor: whole cores (rounded up) and MiB (rounded down) of the role's limits,
/// "0" without a limit; the other fields are always "n/a".
fn flavor(c: &Cluster, role_id: &str) -> Value {
    let limit = |k: &str| {
        c.spec
            .roles
            .iter()
            .find(|r| r.id == role_id)
            .and_then(|r| r.resources.limits.as_ref())
            .and_then(|l| l.get(k))
            .and_then(parse_quantity)
            .unwrap_or(0.0)
    };
    json!({
        "cores": format!("{}", limit("cpu").ceil() as i64),
        "memory": format!("{}", (limit("memory") / MIB).floor() as i64),
        "name": "n/a",
        "description": "n/a",
        "storage": "n/a",
    })
}

/// The configmeta of one member (`pod`); `None` when `pod` is not a member of `c`.
pub fn for_member(c: &Cluster, pod: &str) -> Option<Value> {
    let domain = domain(c.headless_service, c.namespace, c.domain_base);
    let (role, member) = c
        .roles
        .iter()
        .find_map(|r| r.members.iter().find(|m| m.pod == pod).map(|m| (r, m)))?;
    let mut doc = document(c, &domain, &[]);
    let mut node = json!({
        "role_id": role.id,
        "nodegroup_id": NODEGROUP,
        "id": member.node_id.to_string(),
        "hostname": fqdn(pod, &domain),
        "fqdn": fqdn(pod, &domain),
        "domain": domain,
        "distro_id": c.app.distro_id,
        "depends_on": {},
    });
    if !member.block_device_paths.is_empty() {
        node["block_device_paths"] = json!(member.block_device_paths);
    }
    doc["node"] = node;
    doc["connections"] = c.connections.clone();
    Some(doc)
}

/// What a connected cluster (named `name` in the connecting cluster's spec) contributes to
/// `connections.clusters`: its document without `node` and connections, its top-level references
/// pointing into `connections.clusters.<name>`.
pub fn for_cluster(c: &Cluster, name: &str) -> Value {
    let prefix = ["connections", "clusters", name];
    let mut doc = document(c, &domain(c.headless_service, c.namespace, c.domain_base), &prefix);
    doc["node"] = Value::Null;
    doc["connections"] = json!({"clusters": null, "configmaps": null, "secrets": null});
    doc
}

/// One role's entry in `nodegroups.1.roles`.
fn role_entry(c: &Cluster, role: &RoleStatus, domain: &str) -> Value {
    let members = listed(role);
    let fqdns: Vec<String> = members.iter().map(|m| fqdn(&m.pod, domain)).collect();
    let node_ids: Vec<String> = members.iter().map(|m| m.node_id.to_string()).collect();
    let mappings: Map<String, Value> = members
        .iter()
        .map(|m| (fqdn(&m.pod, domain), Value::String(m.node_id.to_string())))
        .collect();
    // KubeDirector gives a role's token-bearing services the token of its last member.
    let token = members
        .iter()
        .rev()
        .find_map(|m| m.auth_token.clone())
        .unwrap_or_default();
    let mut services = Map::new();
    for svc in c.app.role(&role.id).map(|r| r.services.as_slice()).unwrap_or_default() {
        let endpoint = svc.endpoint.as_set();
        let endpoints: Vec<String> = match endpoint.and_then(|e| e.port) {
            // Without a urlScheme KubeDirector writes `://host:port`; kept, startscripts parse it.
            Some(port) => fqdns
                .iter()
                .map(|f| {
                    let scheme = endpoint.and_then(|e| e.url_scheme.as_deref()).unwrap_or("");
                    format!("{scheme}://{f}:{port}")
                })
                .collect(),
            None => Vec::new(),
        };
        let has_token = endpoint.and_then(|e| e.has_auth_token).unwrap_or(false);
        services.insert(
            svc.id.clone(),
            json!({
                "qualifiers": [],
                "name": svc.label.as_ref().map(|l| l.name.clone()).unwrap_or_else(|| svc.id.clone()),
                "id": svc.id,
                "hostnames": refkey(&[], &["nodegroups", NODEGROUP, "roles", &role.id, "hostnames"]),
                "global_id": format!("{NODEGROUP}_{}_{}", role.id, svc.id),
                "fqdns": refkey(&[], &["nodegroups", NODEGROUP, "roles", &role.id, "fqdns"]),
                "exported_service": svc.exported_service.clone().unwrap_or_default(),
                "endpoints": endpoints,
                "authToken": if has_token { token.clone() } else { String::new() },
            }),
        );
    }
    let mut entry = json!({
        "services": services,
        "node_ids": node_ids,
        "hostnames": fqdns,
        "fqdns": fqdns,
        "fqdn_mappings": mappings,
        "flavor": flavor(c, &role.id),
    });
    if let Some(keys) = c.secret_keys.get(&role.id) {
        entry["secret_keys"] = json!(keys);
    }
    entry
}

/// Everything but `node` and `connections`; `prefix` roots the top-level references (a connected
/// cluster's document sits under `connections.clusters.<name>`).
fn document(c: &Cluster, domain: &str, prefix: &[&str]) -> Value {
    let mut roles = Map::new();
    for role in c.roles.iter().filter(|r| c.spec.roles.iter().any(|s| s.id == r.id)) {
        roles.insert(role.id.clone(), role_entry(c, role, domain));
    }
    // Every service of every role the spec asks for, members or not.
    let mut services: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for spec_role in &c.spec.roles {
        for svc in c
            .app
            .role(&spec_role.id)
            .map(|r| r.services.as_slice())
            .unwrap_or_default()
        {
            let path = ["nodegroups", NODEGROUP, "roles", &spec_role.id, "services", &svc.id];
            services
                .entry(svc.id.clone())
                .or_default()
                .insert(spec_role.id.clone(), refkey(prefix, &path));
        }
    }
    let services: Map<String, Value> = services
        .into_iter()
        .map(|(id, by_role)| (id, json!({ NODEGROUP: Value::Object(by_role) })))
        .collect();
    let config_meta = c.app.config_meta.as_ref().map(|m| json!(m)).unwrap_or(Value::Null);
    json!({
        "version": c.app.config_schema_version.to_string(),
        "services": services,
        "nodegroups": {
            NODEGROUP: {
                "roles": roles,
                "distro_id": c.app.distro_id,
                "catalog_entry_version": c.app.version,
                "config_metadata": config_meta,
            }
        },
        "distros": {
            c.app.distro_id.clone(): { NODEGROUP: refkey(prefix, &["nodegroups", NODEGROUP]) }
        },
        "cluster": {
            "name": c.name,
            "id": c.uid,
            "isolated": false,
            "config_metadata": { NODEGROUP: refkey(&[], &["nodegroups", NODEGROUP, "config_metadata"]) },
        },
    })
}

/// A connected ConfigMap as KubeDirector lists it under `connections.configmaps.<cmType>`.
pub fn configmap_entry(
    name: &str,
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
    data: Option<&BTreeMap<String, String>>,
) -> Value {
    json!({"metadata": {"name": name}, "labels": labels, "annotations": annotations, "data": data})
}

/// A connected Secret under `connections.secrets.<secretType>`: its name and the values of its
/// labels and annotations base64-encoded, as KubeDirector writes them; `data` is base64 already.
pub fn secret_entry(
    name: &str,
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
    data: Option<&BTreeMap<String, String>>,
) -> Value {
    let encoded = |m: Option<&BTreeMap<String, String>>| {
        m.map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), STANDARD.encode(v)))
                .collect::<BTreeMap<_, _>>()
        })
    };
    json!({"metadata": {"name": STANDARD.encode(name)}, "labels": encoded(labels),
           "annotations": encoded(annotations), "data": data})
}

/// One connected object, ready for `connections`.
pub enum Connected {
    /// A cluster by the name the spec gives it, with its `for_cluster` document.
    Cluster {
        name: String,
        doc: Value,
    },
    /// A ConfigMap or Secret entry under its type label's value.
    ConfigMap {
        type_: String,
        entry: Value,
    },
    Secret {
        type_: String,
        entry: Value,
    },
}

/// configmeta's `connections`: clusters by name, ConfigMaps and Secrets listed by type.
pub fn connections(found: impl IntoIterator<Item = Connected>) -> Value {
    let mut out = json!({"clusters": {}, "configmaps": {}, "secrets": {}});
    for c in found {
        let (field, key, value, listed) = match c {
            Connected::Cluster { name, doc } => ("clusters", name, doc, false),
            Connected::ConfigMap { type_, entry } => ("configmaps", type_, entry, true),
            Connected::Secret { type_, entry } => ("secrets", type_, entry, true),
        };
        let slot = &mut out[field][&key];
        if !listed {
            *slot = value;
            continue;
        }
        if !slot.is_array() {
            *slot = Value::Array(Vec::new());
        }
        if let Value::Array(list) = slot {
            list.push(value);
        }
    }
    out
}
