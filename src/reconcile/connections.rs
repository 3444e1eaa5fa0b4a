//! Connections across the fleet: every member cluster registers its caches and its queue here, so a
//! cluster's reconcile can read connected objects in any member cluster (`context/namespace/name`),
//! and a change of a connected object wakes the clusters connected to it, wherever they are.

use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

use crate::api::KubeDirectorCluster;
use crate::api::cluster::Connections;
use crate::model::catalog;
use crate::model::configmeta;
use crate::model::connections::{self, Index, Kind, Source, Target};

use super::context::ClusterKey;

/// The labels KubeDirector uses to type connected ConfigMaps and Secrets (only labelled ones count).
pub const CM_TYPE: &str = "kubedirector.hpe.com/cmType";
pub const SECRET_TYPE: &str = "kubedirector.hpe.com/secretType";

/// What one member cluster shares with the others.
#[derive(Clone)]
pub struct MemberView {
    pub clusters: Store<DynamicObject>,
    pub apps: Store<DynamicObject>,
    pub configmaps: Store<ConfigMap>,
    pub secrets: Store<Secret>,
    pub operator_namespace: String,
    pub wake: UnboundedSender<ClusterKey>,
    pub cluster_resource: kube::api::ApiResource,
}

#[derive(Default)]
pub struct Hub {
    members: DashMap<String, MemberView>,
    index: Mutex<Index>,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn register(&self, context: &str, view: MemberView) {
        self.members.insert(context.to_string(), view);
    }

    pub fn deregister(&self, context: &str) {
        self.members.remove(context);
    }

    /// A cluster was created or changed: record its references, and wake the clusters connected to it.
    pub fn cluster_applied(&self, context: &str, obj: &DynamicObject) {
        let (Some(ns), name) = (obj.namespace(), obj.name_any()) else {
            return;
        };
        // Every cluster event passes here (status writes too): read only `spec.connections`.
        let refs: Option<Connections> = obj.data["spec"]
            .get("connections")
            .and_then(|c| serde_json::from_value(c.clone()).ok());
        let (targets, _) = connections::targets(refs.as_ref(), context, &ns);
        let source = Source {
            context: context.to_string(),
            namespace: ns.clone(),
            name: name.clone(),
        };
        if let Ok(mut index) = self.index.lock() {
            index.set(source, targets);
        }
        self.changed(&Target {
            kind: Kind::Cluster,
            context: context.to_string(),
            namespace: ns,
            name,
        });
    }

    pub fn cluster_deleted(&self, context: &str, obj: &DynamicObject) {
        let (Some(ns), name) = (obj.namespace(), obj.name_any()) else {
            return;
        };
        if let Ok(mut index) = self.index.lock() {
            index.remove(&Source {
                context: context.to_string(),
                namespace: ns.clone(),
                name: name.clone(),
            });
        }
        self.changed(&Target {
            kind: Kind::Cluster,
            context: context.to_string(),
            namespace: ns,
            name,
        });
    }

    /// `target` changed: every cluster connected to it is put on its member's queue.
    pub fn changed(&self, target: &Target) {
        let sources = match self.index.lock() {
            Ok(index) => index.sources_of(target),
            Err(_) => return,
        };
        for s in sources {
            if let Some(m) = self.members.get(&s.context) {
                debug!(context = %s.context, cluster = %s.name, changed = ?target, "connected object changed");
                let _ = m.wake.send(ClusterKey {
                    namespace: s.namespace,
                    name: s.name,
                });
            }
        }
    }

    /// configmeta's `connections` for a cluster's references, and what could not be found.
    pub fn resolve(&self, targets: &[Target]) -> (Value, Vec<String>) {
        let mut out = connections::empty();
        let mut missing = Vec::new();
        for t in targets {
            let found = self.members.get(&t.context).and_then(|m| match t.kind {
                Kind::Cluster => cluster_entry(&m, t).map(|v| ("clusters", t.name.clone(), v, false)),
                Kind::ConfigMap => {
                    let cm = m.configmaps.get(&ObjectRef::new(&t.name).within(&t.namespace))?;
                    let type_ = cm.labels().get(CM_TYPE)?.clone();
                    let data = json!({"metadata": metadata(&cm.metadata), "data": cm.data});
                    Some(("configmaps", type_, data, true))
                }
                Kind::Secret => {
                    let secret = m.secrets.get(&ObjectRef::new(&t.name).within(&t.namespace))?;
                    let type_ = secret.labels().get(SECRET_TYPE)?.clone();
                    let data = json!({"metadata": metadata(&secret.metadata), "data": secret.data});
                    Some(("secrets", type_, data, true))
                }
            });
            match found {
                Some((field, key, value, listed)) => {
                    let slot = &mut out[field][&key];
                    if listed {
                        if !slot.is_array() {
                            *slot = Value::Array(Vec::new());
                        }
                        if let Value::Array(list) = slot {
                            list.push(value);
                        }
                    } else {
                        *slot = value;
                    }
                }
                None => missing.push(format!("{} {}/{}/{}", t.kind.field(), t.context, t.namespace, t.name)),
            }
        }
        (out, missing)
    }
}

fn metadata(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Value {
    json!({"name": m.name, "namespace": m.namespace, "labels": m.labels, "annotations": m.annotations})
}

/// A connected cluster's configmeta (without `node`), from the caches of its member cluster.
fn cluster_entry(m: &MemberView, t: &Target) -> Option<Value> {
    let oref = ObjectRef::<DynamicObject>::new_with(&t.name, m.cluster_resource.clone()).within(&t.namespace);
    let obj = m.clusters.get(&oref)?;
    let cluster: KubeDirectorCluster = catalog::parse(&obj).ok()?;
    let status = cluster.status.as_ref()?;
    let app = super::observe::find_app_in(
        &m.apps,
        &m.operator_namespace,
        &t.namespace,
        &cluster.spec.app,
        cluster.spec.app_catalog,
    )
    .ok()?;
    let uid = obj.uid().unwrap_or_default();
    let empty = Value::Object(Map::new());
    Some(configmeta::for_cluster(&configmeta::Cluster {
        name: &t.name,
        namespace: &t.namespace,
        uid: &uid,
        headless_service: &status.cluster_service,
        spec: &cluster.spec,
        app: &app,
        roles: &status.roles,
        connections: &empty,
    }))
}
