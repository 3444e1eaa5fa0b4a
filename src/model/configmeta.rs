//! `/etc/guestconfig/configmeta.json`: what a member's setup package learns about its cluster, in
//! KubeDirector's documented structure (one nodegroup, "1"). Pure: built from the spec, the app and
//! the status being written, so that every member of one status sees the same membership.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::api::cluster::{KubeDirectorClusterSpec, MemberState, MemberStatus, RoleStatus};

use super::catalog::ResolvedApp;

/// The configmeta version KubeDirector's guest libraries read.
pub const VERSION: &str = "7";
pub const NODEGROUP: &str = "1";

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
}

/// `<headless>.<namespace>.svc.cluster.local`: the DNS domain of every member.
pub fn domain(headless_service: &str, namespace: &str) -> String {
    format!("{headless_service}.{namespace}.svc.cluster.local")
}

pub fn fqdn(pod: &str, domain: &str) -> String {
    format!("{pod}.{domain}")
}

/// Members that belong to the cluster's membership (not on their way out).
fn present(role: &RoleStatus) -> impl Iterator<Item = &MemberStatus> {
    role.members
        .iter()
        .filter(|m| !matches!(m.state, MemberState::DeletePending | MemberState::Deleting))
}

/// FQDNs of `role`'s present members, in member order.
pub fn role_fqdns(role: &RoleStatus, domain: &str) -> Vec<String> {
    present(role).map(|m| fqdn(&m.pod, domain)).collect()
}

fn flavor(c: &Cluster, role_id: &str) -> Value {
    let Some(spec) = c.spec.roles.iter().find(|r| r.id == role_id) else {
        return json!({});
    };
    let limit = |k: &str| {
        spec.resources
            .limits
            .as_ref()
            .and_then(|l| l.get(k))
            .map(|q| q.0.clone())
            .unwrap_or_default()
    };
    json!({
        "cores": limit("cpu"),
        "memory": limit("memory"),
        "gpus": limit("nvidia.com/gpu"),
        "storage": spec.storage.as_ref().map(|s| s.size.0.clone()).unwrap_or_else(|| "n/a".to_string()),
        "description": format!("{role_id} members"),
    })
}

/// The configmeta of one member (`pod`); `None` when `pod` is not a member of `c`.
pub fn for_member(c: &Cluster, pod: &str) -> Option<Value> {
    let domain = domain(c.headless_service, c.namespace);
    let (role, member) = c
        .roles
        .iter()
        .find_map(|r| r.members.iter().find(|m| m.pod == pod).map(|m| (r, m)))?;
    let mut doc = shared(c, &domain);
    let obj = doc.as_object_mut()?;
    obj.insert(
        "node".to_string(),
        json!({
            "role_id": role.id,
            "nodegroup_id": NODEGROUP,
            "id": member.node_id.to_string(),
            "hostname": fqdn(pod, &domain),
            "fqdn": fqdn(pod, &domain),
            "domain": domain,
            "distro_id": c.app.distro_id,
            "depends_on": {},
            "block_device_paths": member.block_device_paths,
        }),
    );
    Some(doc)
}

/// What a connected cluster contributes to `connections.clusters`: its configmeta without `node`
/// (and without its own connections).
pub fn for_cluster(c: &Cluster) -> Value {
    let mut doc = shared(c, &domain(c.headless_service, c.namespace));
    if let Some(obj) = doc.as_object_mut() {
        obj.remove("connections");
    }
    doc
}

/// Everything but `node`: the same for every member.
fn shared(c: &Cluster, domain: &str) -> Value {
    let config_meta: Map<String, Value> = c
        .app
        .config_meta
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut roles = Map::new();
    let mut services: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for role in c.roles {
        let fqdns = role_fqdns(role, domain);
        let node_ids: Vec<String> = present(role).map(|m| m.node_id.to_string()).collect();
        let mappings: Map<String, Value> = present(role)
            .map(|m| (fqdn(&m.pod, domain), Value::String(m.node_id.to_string())))
            .collect();
        let app_role = c.app.role(&role.id);
        let service_ids: Vec<&str> = app_role
            .map(|r| r.services.iter().map(|s| s.id.as_str()).collect())
            .unwrap_or_default();
        roles.insert(
            role.id.clone(),
            json!({
                "node_ids": node_ids,
                "hostnames": fqdns,
                "fqdns": fqdns,
                "fqdn_mappings": mappings,
                "services": service_ids,
                "flavor": flavor(c, &role.id),
                "secret_keys": role.encrypted_secret_keys.clone().unwrap_or_default(),
            }),
        );
        for svc in app_role.map(|r| r.services.as_slice()).unwrap_or_default() {
            let endpoints: Vec<String> = match svc.endpoint.as_set() {
                Some(e) => match e.port {
                    Some(port) => fqdns
                        .iter()
                        .map(|f| {
                            let scheme = e.url_scheme.as_deref().map(|s| format!("{s}://")).unwrap_or_default();
                            format!("{scheme}{f}:{port}{}", e.path.as_deref().unwrap_or(""))
                        })
                        .collect(),
                    None => Vec::new(),
                },
                None => Vec::new(),
            };
            services.entry(svc.id.clone()).or_default().insert(
                role.id.clone(),
                json!({
                    "qualifiers": [],
                    "name": svc.label.as_ref().map(|l| l.name.clone()).unwrap_or_else(|| svc.id.clone()),
                    "id": svc.id,
                    "hostnames": fqdns,
                    "global_id": format!("{NODEGROUP}_{}_{}", role.id, svc.id),
                    "fqdns": fqdns,
                    "exported_service": svc.exported_service.clone().unwrap_or_default(),
                    "endpoints": endpoints,
                }),
            );
        }
    }
    let services: Map<String, Value> = services
        .into_iter()
        .map(|(id, by_role)| (id, json!({ NODEGROUP: Value::Object(by_role) })))
        .collect();
    json!({
        "version": VERSION,
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
            c.app.distro_id.clone(): {
                NODEGROUP: {
                    "distro_id": c.app.distro_id,
                    "version": c.app.version,
                    "name": c.app.pretty_name,
                    "roles": c.roles.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
                }
            }
        },
        "cluster": {
            "name": c.name,
            "id": c.uid,
            "isolated": false,
            "config_metadata": config_meta,
        },
        "connections": c.connections,
    })
}
