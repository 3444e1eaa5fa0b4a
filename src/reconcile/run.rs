//! Wires the caches and the controller of one Kubernetes cluster. Every child kind is watched and
//! mapped back to its KubeDirectorCluster by label; apps, kd-global-config and StorageClasses map to
//! the clusters they affect. Nothing polls.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::api::{KubeDirectorApp, KubeDirectorCluster, KubeDirectorConfig};
use crate::model::labels;

use super::cluster::{error_policy, reconcile};
use super::context::{Ctx, Stores};

pub struct Options {
    pub operator_namespace: String,
    /// Only clusters (and their children) in this namespace; `None` = every namespace.
    pub watch_namespace: Option<String>,
    pub concurrency: u16,
    pub field_manager: String,
}

/// A cache of `K` (children filtered by our label) and its event stream for the controller.
fn cached<K>(
    api: Api<K>,
    labelled: bool,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let mut config = watcher::Config::default().any_semantic();
    if labelled {
        config = config.labels(labels::CLUSTER);
    }
    (
        store,
        reflector::reflector(writer, watcher(api, config))
            .default_backoff()
            .touched_objects(),
    )
}

/// A cache of one of our own kinds, read as untyped objects so that one malformed object cannot
/// break the watch (it is parsed, with a field-naming error, where it is used).
fn cached_dynamic(
    client: Client,
    ar: ApiResource,
) -> (
    Store<DynamicObject>,
    impl Stream<Item = Result<DynamicObject, watcher::Error>> + Send,
) {
    let api = Api::<DynamicObject>::all_with(client, &ar);
    let writer = reflector::store::Writer::new(ar);
    let store = writer.as_reader();
    (
        store,
        reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().any_semantic()),
        )
        .default_backoff()
        .touched_objects(),
    )
}

fn namespaced_or_all<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn cluster_ref(ar: &ApiResource, ns: Option<String>, name: &str) -> ObjectRef<DynamicObject> {
    let r = ObjectRef::new_with(name, ar.clone());
    match ns {
        Some(ns) => r.within(&ns),
        None => r,
    }
}

/// The cluster a child belongs to, from its `kdcluster` label.
fn owner_of<K: ResourceExt>(
    ar: ApiResource,
) -> impl Fn(K) -> Option<ObjectRef<DynamicObject>> + Send + Sync + Clone {
    move |child: K| {
        let cluster = child.labels().get(labels::CLUSTER)?.clone();
        Some(cluster_ref(&ar, child.namespace(), &cluster))
    }
}

pub async fn run(
    client: Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let cluster_ar = ApiResource::erase::<KubeDirectorCluster>(&());
    let app_ar = ApiResource::erase::<KubeDirectorApp>(&());
    let config_ar = ApiResource::erase::<KubeDirectorConfig>(&());

    let (apps, apps_events) = cached_dynamic(client.clone(), app_ar);
    let (configs, config_events) = cached_dynamic(client.clone(), config_ar);
    let ns = options.watch_namespace.clone();
    let (statefulsets, sts_events) = cached(namespaced_or_all::<StatefulSet>(&client, &ns), true);
    let (services, svc_events) = cached(namespaced_or_all::<Service>(&client, &ns), true);
    let (pods, pod_events) = cached(namespaced_or_all::<Pod>(&client, &ns), true);
    let (pvcs, pvc_events) = cached(
        namespaced_or_all::<PersistentVolumeClaim>(&client, &ns),
        true,
    );
    let (storage_classes, sc_events) = cached(Api::<StorageClass>::all(client.clone()), false);

    let clusters = match &ns {
        Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &cluster_ar),
        None => Api::<DynamicObject>::all_with(client.clone(), &cluster_ar),
    };
    let controller = Controller::new_with(
        clusters,
        watcher::Config::default().any_semantic(),
        cluster_ar.clone(),
    );
    let cluster_store = controller.store();

    let by_app = {
        let (store, ar, system_ns) = (
            cluster_store.clone(),
            cluster_ar.clone(),
            options.operator_namespace.clone(),
        );
        move |app: DynamicObject| {
            let (app_ns, app_name) = (app.namespace(), app.name_any());
            let system = app_ns.as_deref() == Some(system_ns.as_str());
            store
                .state()
                .into_iter()
                .filter(|c| {
                    c.data["spec"]["app"].as_str() == Some(app_name.as_str())
                        && (system || c.namespace() == app_ns)
                })
                .map(|c| cluster_ref(&ar, c.namespace(), &c.name_any()))
                .collect::<Vec<_>>()
        }
    };
    let everything = |store: Store<DynamicObject>, ar: ApiResource| {
        move || {
            store
                .state()
                .into_iter()
                .map(|c| cluster_ref(&ar, c.namespace(), &c.name_any()))
                .collect::<Vec<_>>()
        }
    };
    // Apps, kd-global-config and StorageClasses fan out to the clusters they affect.
    let all_for_config = everything(cluster_store.clone(), cluster_ar.clone());
    let all_for_classes = everything(cluster_store.clone(), cluster_ar.clone());
    let fan_out = futures::stream::select_all([
        apps_events
            .filter_map(|e| async move { e.ok() })
            .map(by_app)
            .boxed(),
        config_events
            .filter_map(|e| async move { e.ok() })
            .map(move |_| all_for_config())
            .boxed(),
        sc_events
            .filter_map(|e| async move { e.ok() })
            .map(move |_| all_for_classes())
            .boxed(),
    ])
    .flat_map(futures::stream::iter);

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kubedirector".to_string(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let ctx = Arc::new(Ctx {
        client,
        stores: Stores {
            apps,
            configs,
            statefulsets,
            services,
            pods,
            pvcs,
            storage_classes,
        },
        operator_namespace: options.operator_namespace,
        recorder,
        field_manager: options.field_manager,
        cluster_resource: cluster_ar.clone(),
    });

    info!(namespace = %ctx.operator_namespace, watch = ?ns, concurrency = options.concurrency, "starting the cluster controller");
    controller
        .watches_stream(sts_events, owner_of::<StatefulSet>(cluster_ar.clone()))
        .watches_stream(svc_events, owner_of::<Service>(cluster_ar.clone()))
        .watches_stream(pod_events, owner_of::<Pod>(cluster_ar.clone()))
        .watches_stream(
            pvc_events,
            owner_of::<PersistentVolumeClaim>(cluster_ar.clone()),
        )
        .reconcile_on(fan_out)
        .with_config(controller::Config::default().concurrency(options.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                match e {
                    controller::Error::ReconcilerFailed(..) => {} // logged by error_policy
                    other => warn!(error = %other, "controller"),
                }
            }
        })
        .await;
    info!("cluster controller stopped");
    Ok(())
}
