//! What the harness creates: the loadtest app, its KubeDirectorClusters, and the floor — the very
//! StatefulSets and Services the operator would create for the same CR, produced by the operator's own
//! pure planner, so that operator and floor differ only by the operator.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::ObjectMeta;
use serde_json::{Value, json};

use kubedirector::api::cluster::AppCatalog;
use kubedirector::api::{KubeDirectorAppSpec, KubeDirectorClusterSpec};
use kubedirector::model::catalog::resolve_app;
use kubedirector::model::members::Observed;
use kubedirector::model::plan::{ClusterInput, plan_cluster};
use kubedirector::model::settings::Settings;
use kubedirector::model::validate::StorageClasses;

use crate::workload::{Role, Workload};

pub const APP: &str = "loadtest-app";
/// Label put on every floor object, with the group (CR name) as value.
pub const FLOOR_GROUP: &str = "loadtest.kubedirector.hpe.com/floor-group";

/// Where fake pods may run: on kind, only kwok's fake nodes (label `type=kwok`); on the kwok test
/// bed every node is fake, so no constraint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Placement {
    Anywhere,
    KwokNodesOnly,
}

/// A KubeDirectorApp with one role per workload role, no setup package, one service per role.
pub fn app(roles: &[Role]) -> Value {
    let role_ids: Vec<&str> = roles.iter().map(|r| r.id.as_str()).collect();
    json!({
        "apiVersion": "kubedirector.hpe.com/v1beta1",
        "kind": "KubeDirectorApp",
        "metadata": {"name": APP},
        "spec": {
            "label": {"name": "loadtest app", "description": "roles of the loadtest workload"},
            "distroID": "kubedirector-rs/loadtest",
            "version": "1",
            "configSchemaVersion": 8,
            "defaultImageRepoTag": "example.invalid/loadtest:1",
            "defaultConfigPackage": null,
            "services": [{"id": "ui", "label": {"name": "UI"}, "endpoint": {"port": 8080, "urlScheme": "http", "isDashboard": false}}],
            "roles": roles.iter().map(|r| json!({"id": r.id, "cardinality": "0+"})).collect::<Vec<_>>(),
            "config": {
                "selectedRoles": role_ids,
                "roleServices": roles.iter().map(|r| json!({"roleID": r.id, "serviceIDs": ["ui"]})).collect::<Vec<_>>()
            }
        }
    })
}

fn node_affinity(placement: Placement) -> Option<Value> {
    (placement == Placement::KwokNodesOnly).then(|| {
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "type", "operator": "In", "values": ["kwok"]}]}
        ]}}})
    })
}

/// CR `name` with the workload's roles (ClusterIP services: LoadBalancer would use up node ports).
pub fn cluster(name: &str, roles: &[Role], placement: Placement) -> Value {
    let roles: Vec<Value> = roles
        .iter()
        .map(|r| {
            let mut role = json!({
                "id": r.id,
                "members": r.members,
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}}
            });
            if let Some(a) = node_affinity(placement) {
                role["affinity"] = a;
            }
            role
        })
        .collect();
    json!({
        "apiVersion": "kubedirector.hpe.com/v1beta1",
        "kind": "KubeDirectorCluster",
        "metadata": {"name": name},
        "spec": {"app": APP, "appCatalog": "system", "serviceType": "ClusterIP", "roles": roles}
    })
}

/// Name of CR `index` of cluster `cluster`.
pub fn cr_name(index: u32) -> String {
    format!("lt-{index:05}")
}

/// The floor's objects for CR `name` in `namespace`: headless Service, one StatefulSet per role and
/// one Service per member, exactly as the operator's planner makes them once every member is known,
/// minus the owner reference (there is no CR to own them).
pub struct FloorGroup {
    pub statefulsets: Vec<StatefulSet>,
    pub services: Vec<Service>,
}

#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("the loadtest app does not resolve: {0}")]
    App(String),
    #[error("the planner rejected the loadtest CR: {0}")]
    Plan(String),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

pub fn floor_group(name: &str, namespace: &str, w: &Workload, placement: Placement) -> Result<FloorGroup, FloorError> {
    let app_spec: KubeDirectorAppSpec = serde_json::from_value(app(&w.roles)["spec"].clone())?;
    let resolved = resolve_app(APP, AppCatalog::System, &app_spec).map_err(|e| FloorError::App(e.to_string()))?;
    let spec: KubeDirectorClusterSpec = serde_json::from_value(cluster(name, &w.roles, placement)["spec"].clone())?;
    let (settings, classes, observed) = (Settings::default(), StorageClasses::default(), Observed::default());
    let uid = format!(
        "00000000-0000-4000-8000-{:012x}",
        kubedirector::model::names::fnv1a64(name.as_bytes()) >> 16
    );
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let mut prev = None;
    // Twice: the first plan records the members, the second one also gives their Services.
    let mut plan = None;
    for _ in 0..2 {
        let p = plan_cluster(&ClusterInput {
            name,
            namespace,
            uid: &uid,
            generation: Some(1),
            spec: &spec,
            prev: prev.as_ref(),
            app: &resolved,
            settings: &settings,
            classes: &classes,
            observed: &observed,
            connections: &kubedirector::model::connections::empty(),
            now: now.clone(),
            token_salt: "",
        });
        if !p.errors.is_empty() {
            let all: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
            return Err(FloorError::Plan(all.join("; ")));
        }
        prev = Some(p.status.clone());
        plan = Some(p);
    }
    let plan = plan.ok_or_else(|| FloorError::Plan("no plan".into()))?;
    let mut services: Vec<Service> = plan.headless.into_iter().collect();
    services.extend(plan.member_services);
    let mut statefulsets = plan.statefulsets;
    for s in &mut statefulsets {
        floor_meta(&mut s.metadata, name);
        // The pods carry the group too: the floor's clock stops when they are Ready.
        if let Some(t) = s.spec.as_mut().and_then(|s| s.template.metadata.as_mut()) {
            floor_meta(t, name);
        }
    }
    for m in services.iter_mut().map(|s| &mut s.metadata) {
        floor_meta(m, name);
    }
    Ok(FloorGroup { statefulsets, services })
}

fn floor_meta(m: &mut ObjectMeta, group: &str) {
    m.owner_references = None;
    m.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(FLOOR_GROUP.to_string(), group.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_and_cluster_parse_as_the_operator_types() {
        let w = Workload::standard();
        let app: kubedirector::api::KubeDirectorApp = serde_json::from_value(app(&w.roles)).expect("app");
        assert_eq!(app.spec.roles.len(), 2);
        let c: kubedirector::api::KubeDirectorCluster =
            serde_json::from_value(cluster("lt-00001", &w.roles, Placement::KwokNodesOnly)).expect("cluster");
        assert_eq!(c.spec.roles[1].members, Some(4));
        assert!(c.spec.roles[0].affinity.is_some());
    }

    #[test]
    fn the_floor_is_what_the_operator_plans_without_owner() {
        let w = Workload::standard();
        let g = floor_group("lt-00007", "floor", &w, Placement::Anywhere).expect("floor");
        assert_eq!(g.statefulsets.len(), 2);
        let replicas: Vec<i32> = g
            .statefulsets
            .iter()
            .filter_map(|s| s.spec.as_ref().and_then(|s| s.replicas))
            .collect();
        assert_eq!(replicas, vec![1, 4]);
        // headless + one per member
        assert_eq!(g.services.len(), 1 + 5);
        for m in g
            .statefulsets
            .iter()
            .map(|s| &s.metadata)
            .chain(g.services.iter().map(|s| &s.metadata))
        {
            assert!(m.owner_references.is_none());
            assert_eq!(
                m.labels.as_ref().and_then(|l| l.get(FLOOR_GROUP)).map(String::as_str),
                Some("lt-00007")
            );
            assert_eq!(m.namespace.as_deref(), Some("floor"));
        }
        for s in &g.statefulsets {
            let t = s
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .expect("template");
            assert_eq!(
                t.labels.as_ref().and_then(|l| l.get(FLOOR_GROUP)).map(String::as_str),
                Some("lt-00007")
            );
        }
    }
}
