//! Connections across the fleet: every member cluster registers its caches and its queue here, so a
//! cluster's reconcile can read connected objects in any member cluster (`context/namespace/name`),
//! and a change of a connected object wakes the clusters connected to it, wherever they are.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine;

use dashmap::DashMap;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

use crate::api::KubeDirectorCluster;
use crate::api::cluster::Connections;
use crate::model::catalog;
use crate::model::configmeta::{self, Connected};
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
    /// `domain_base` is the connecting cluster's `clusterSvcDomainBase` (also used for connected
    /// clusters in other member clusters, whose kd-global-config is not read here).
    pub fn resolve(&self, targets: &[Target], domain_base: &str) -> (Value, Vec<String>) {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for t in targets {
            let entry = self.members.get(&t.context).and_then(|m| match t.kind {
                Kind::Cluster => cluster_entry(&m, t, domain_base).map(|doc| Connected::Cluster {
                    name: t.name.clone(),
                    doc,
                }),
                Kind::ConfigMap => {
                    let cm = m.configmaps.get(&ObjectRef::new(&t.name).within(&t.namespace))?;
                    let type_ = cm.labels().get(CM_TYPE)?.clone();
                    let meta = &cm.metadata;
                    let entry = configmeta::configmap_entry(
                        &t.name,
                        meta.labels.as_ref(),
                        meta.annotations.as_ref(),
                        cm.data.as_ref(),
                    );
                    Some(Connected::ConfigMap { type_, entry })
                }
                Kind::Secret => {
                    let secret = m.secrets.get(&ObjectRef::new(&t.name).within(&t.namespace))?;
                    let type_ = secret.labels().get(SECRET_TYPE)?.clone();
                    let meta = &secret.metadata;
                    // The API's base64 of each value, as KubeDirector passes it on.
                    let data: Option<BTreeMap<String, String>> = secret.data.as_ref().map(|d| {
                        d.iter()
                            .map(|(k, v)| (k.clone(), base64::engine::general_purpose::STANDARD.encode(&v.0)))
                            .collect()
                    });
                    let entry = configmeta::secret_entry(
                        &t.name,
                        meta.labels.as_ref(),
                        meta.annotations.as_ref(),
                        data.as_ref(),
                    );
                    Some(Connected::Secret { type_, entry })
                }
            });
            match entry {
                Some(e) => found.push(e),
                None => missing.push(format!("{} {}/{}/{}", t.kind.field(), t.context, t.namespace, t.name)),
            }
        }
        (configmeta::connections(found), missing)
    }
}

/// A connected cluster's configmeta (without `node`), from the caches of its member cluster.
fn cluster_entry(m: &MemberView, t: &Target, domain_base: &str) -> Option<Value> {
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
    let no_keys = BTreeMap::new();
    let c = configmeta::Cluster {
        name: &t.name,
        namespace: &t.namespace,
        uid: &uid,
        headless_service: &status.cluster_service,
        spec: &cluster.spec,
        app: &app,
        roles: &status.roles,
        connections: &empty,
        domain_base,
        // A connected cluster's secret keys stay its own.
        secret_keys: &no_keys,
    };
    Some(configmeta::for_cluster(&c, &t.name))
}
