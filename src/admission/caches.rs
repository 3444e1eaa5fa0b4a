//! What admission decisions read of a member cluster: the member's own caches (`member::cache`:
//! apps, clusters and configs in every namespace, StorageClasses), the same stores the reconciler
//! reads, so that a replica holds each object once. The one exception: with a watch namespace the
//! member watches only that namespace's clusters, while an app or kd-global-config decision must
//! count the clusters of every namespace, so then admission watches those itself. Every replica
//! reads the API, never what it happened to reconcile, so decisions never depend on which replica
//! reconciled what.

use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::task::JoinHandle;

use crate::api::{KubeDirectorApp, KubeDirectorCluster};
use crate::model::validate::StorageClasses;
use crate::reconcile::slim::Slim;

use super::world::World;

pub struct Caches {
    client: Client,
    operator_namespace: String,
    watch_namespace: Option<String>,
    apps: Store<DynamicObject>,
    clusters: Store<DynamicObject>,
    configs: Store<DynamicObject>,
    classes: Store<StorageClass>,
}

/// The member's stores admission reads.
pub struct MemberStores {
    pub apps: Store<DynamicObject>,
    /// The member's clusters (of its watch namespace, if it has one).
    pub clusters: Store<DynamicObject>,
    pub configs: Store<DynamicObject>,
    pub classes: Store<StorageClass>,
}

/// The clusters of every namespace, slimmed as the member's are; the stream runs the watch.
fn every_cluster(client: &Client) -> (Store<DynamicObject>, futures::stream::BoxStream<'static, ()>) {
    let ar = ApiResource::erase::<KubeDirectorCluster>(&());
    let writer = reflector::store::Writer::new(ar.clone());
    let store = writer.as_reader();
    let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()).modify(DynamicObject::slim),
    )
    .default_backoff()
    .map(|_| ())
    .boxed();
    (store, stream)
}

impl Caches {
    /// Admission's view of a member: its stores, plus (with a watch namespace only) a watch of the
    /// clusters of every namespace, whose task runs until aborted (when the member stops).
    pub fn over(
        client: Client,
        operator_namespace: String,
        watch_namespace: Option<String>,
        member: MemberStores,
    ) -> (Arc<Caches>, Option<JoinHandle<()>>) {
        let (clusters, task) = match &watch_namespace {
            None => (member.clusters, None),
            Some(_) => {
                let (store, mut stream) = every_cluster(&client);
                let task = tokio::spawn(async move { while stream.next().await.is_some() {} });
                (store, Some(task))
            }
        };
        let caches = Arc::new(Caches {
            client,
            operator_namespace,
            watch_namespace,
            apps: member.apps,
            clusters,
            configs: member.configs,
            classes: member.classes,
        });
        (caches, task)
    }

    /// Every KubeDirectorCluster as the API server has them now (a list, not the cache): for the
    /// rare decisions where a cluster created a moment ago must count (changing or deleting an app
    /// or kd-global-config).
    pub async fn live_clusters(&self) -> Result<Vec<Arc<DynamicObject>>, kube::Error> {
        let ar = ApiResource::erase::<KubeDirectorCluster>(&());
        let list = Api::<DynamicObject>::all_with(self.client.clone(), &ar)
            .list(&Default::default())
            .await?;
        Ok(list.items.into_iter().map(Arc::new).collect())
    }

    /// The member cluster's client (for the lookups of one request).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether every watch holds its first full list (before that, decisions are refused).
    pub fn ready(&self) -> bool {
        fn one<K: kube::Resource + Clone>(s: &Store<K>) -> bool
        where
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            s.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok())
        }
        one(&self.apps) && one(&self.clusters) && one(&self.configs) && one(&self.classes)
    }
}

impl World for Caches {
    fn operator_namespace(&self) -> &str {
        &self.operator_namespace
    }
    fn app(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let oref = reflector::ObjectRef::new_with(name, ApiResource::erase::<KubeDirectorApp>(&())).within(ns);
        self.apps.get(&oref)
    }
    fn apps_in(&self, ns: &str) -> Vec<String> {
        self.apps
            .state()
            .iter()
            .filter(|a| a.metadata.namespace.as_deref() == Some(ns))
            .map(|a| a.name_any())
            .collect()
    }
    fn clusters(&self) -> Vec<Arc<DynamicObject>> {
        self.clusters.state()
    }
    fn manages(&self, ns: &str) -> bool {
        self.watch_namespace.as_deref().is_none_or(|w| w == ns)
    }
    fn managed_clusters(&self) -> Vec<Arc<DynamicObject>> {
        let all = self.clusters.state();
        match &self.watch_namespace {
            None => all,
            Some(ns) => all
                .into_iter()
                .filter(|c| c.metadata.namespace.as_deref() == Some(ns))
                .collect(),
        }
    }
    fn configs(&self) -> Vec<Arc<DynamicObject>> {
        self.configs.state()
    }
    fn storage_classes(&self) -> StorageClasses {
        let mut classes = StorageClasses::default();
        for sc in self.classes.state() {
            if sc
                .annotations()
                .get("storageclass.kubernetes.io/is-default-class")
                .map(String::as_str)
                == Some("true")
            {
                classes.cluster_default = Some(sc.name_any());
            }
            classes.names.push(sc.name_any());
        }
        classes.names.sort();
        classes
    }
    /// Not cached: asked for the request (`lookups`).
    fn secret_exists(&self, _ns: &str, _name: &str) -> Option<bool> {
        None
    }
}

/// The member clusters' caches by context, and which context is home (served at the paths without
/// a context).
#[derive(Default)]
pub struct Worlds {
    by_context: DashMap<String, Arc<Caches>>,
    home: RwLock<Option<String>>,
}

impl Worlds {
    pub fn insert(&self, context: &str, caches: Arc<Caches>) {
        self.by_context.insert(context.to_string(), caches);
    }
    pub fn remove(&self, context: &str) {
        self.by_context.remove(context);
    }
    pub fn set_home(&self, context: &str) {
        if let Ok(mut h) = self.home.write() {
            *h = Some(context.to_string());
        }
    }
    pub fn home(&self) -> Option<String> {
        self.home.read().ok().and_then(|h| h.clone())
    }
    /// The caches of `context`, only once they are filled.
    pub fn ready(&self, context: &str) -> Option<Arc<Caches>> {
        self.by_context.get(context).map(|c| c.clone()).filter(|c| c.ready())
    }
}

/// A member's caches with the clusters replaced by a fresh list.
pub struct WithLiveClusters<'a> {
    pub caches: &'a Caches,
    pub clusters: Vec<Arc<DynamicObject>>,
}

impl World for WithLiveClusters<'_> {
    fn operator_namespace(&self) -> &str {
        self.caches.operator_namespace()
    }
    fn app(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.caches.app(ns, name)
    }
    fn apps_in(&self, ns: &str) -> Vec<String> {
        self.caches.apps_in(ns)
    }
    fn clusters(&self) -> Vec<Arc<DynamicObject>> {
        self.clusters.clone()
    }
    fn manages(&self, ns: &str) -> bool {
        self.caches.manages(ns)
    }
    fn managed_clusters(&self) -> Vec<Arc<DynamicObject>> {
        match &self.caches.watch_namespace {
            None => self.clusters.clone(),
            Some(ns) => self
                .clusters
                .iter()
                .filter(|c| c.metadata.namespace.as_deref() == Some(ns))
                .cloned()
                .collect(),
        }
    }
    fn configs(&self) -> Vec<Arc<DynamicObject>> {
        self.caches.configs()
    }
    fn storage_classes(&self) -> StorageClasses {
        self.caches.storage_classes()
    }
    fn secret_exists(&self, ns: &str, name: &str) -> Option<bool> {
        self.caches.secret_exists(ns, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;

    fn store_with(names: &[&str]) -> Store<DynamicObject> {
        let ar = ApiResource::erase::<KubeDirectorCluster>(&());
        let mut writer = reflector::store::Writer::new(ar.clone());
        let store = writer.as_reader();
        writer.apply_watcher_event(&Event::Init);
        for name in names {
            let obj = DynamicObject::new(name, &ar).within("ns");
            writer.apply_watcher_event(&Event::InitApply(obj));
        }
        writer.apply_watcher_event(&Event::InitDone);
        store
    }

    fn member(clusters: Store<DynamicObject>) -> MemberStores {
        let empty = || store_with(&[]);
        let (classes, mut w) = reflector::store::<StorageClass>();
        w.apply_watcher_event(&Event::Init);
        w.apply_watcher_event(&Event::InitDone);
        MemberStores {
            apps: empty(),
            clusters,
            configs: empty(),
            classes,
        }
    }

    fn client() -> Client {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        Client::try_from(config).expect("client")
    }

    #[tokio::test]
    async fn without_a_watch_namespace_admission_reads_the_members_stores_and_watches_nothing() {
        let (caches, task) = Caches::over(client(), "kd".into(), None, member(store_with(&["a", "b"])));
        assert!(task.is_none(), "no watch of its own");
        assert!(caches.ready());
        let mut names: Vec<String> = caches.clusters().iter().map(|c| c.name_any()).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
    }

    #[tokio::test]
    async fn with_a_watch_namespace_the_clusters_of_every_namespace_are_watched_for_admission() {
        let (caches, task) = Caches::over(client(), "kd".into(), Some("ns".into()), member(store_with(&["a"])));
        let task = task.expect("its own watch of every namespace");
        // Not the member's (one namespace's) store: refused until its own list arrives (here never:
        // no API server answers).
        assert!(caches.clusters().is_empty());
        assert!(!caches.ready());
        task.abort();
    }
}
