//! What a reconcile needs: the API client of its Kubernetes cluster and the caches (reflector stores)
//! of everything it reads. Reconciles read only from these caches; they never list from the API.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::Client;

use super::error::Error;

pub struct Stores {
    pub apps: Store<DynamicObject>,
    pub configs: Store<DynamicObject>,
    pub statefulsets: Store<StatefulSet>,
    pub services: Store<Service>,
    pub pods: Store<Pod>,
    pub pvcs: Store<PersistentVolumeClaim>,
    pub storage_classes: Store<StorageClass>,
}

impl Stores {
    /// Waits for the first full list of every cache: deciding on a half-filled cache would, for
    /// example, see a member's pod as missing.
    pub async fn ready(&self) -> Result<(), Error> {
        let r = tokio::try_join!(
            self.apps.wait_until_ready(),
            self.configs.wait_until_ready(),
            self.statefulsets.wait_until_ready(),
            self.services.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.pvcs.wait_until_ready(),
            self.storage_classes.wait_until_ready(),
        );
        r.map(|_| ()).map_err(|_| Error::CacheGone)
    }
}

pub struct Ctx {
    pub client: Client,
    pub stores: Stores,
    /// Holds the system app catalog and kd-global-config.
    pub operator_namespace: String,
    pub recorder: Recorder,
    pub field_manager: String,
    pub cluster_resource: ApiResource,
}
