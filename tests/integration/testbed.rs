//! Access to the test bed: clients per kubeconfig context, throw-away namespaces, CRD installation.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config};

/// The test bed's kubeconfig: `KD_TESTBED_KUBECONFIG`, else the default of `make testbed`.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KD_TESTBED_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/testbed/kubeconfig"))
}

pub fn kubeconfig() -> Kubeconfig {
    let path = kubeconfig_path();
    Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "no test bed at {} ({e}): start one with `make testbed` or run `make test`",
            path.display()
        )
    })
}

/// Contexts of the test bed, sorted (kwok-kd-1, kwok-kd-2, ...).
pub fn contexts() -> Vec<String> {
    let mut names: Vec<String> = kubeconfig().contexts.into_iter().map(|c| c.name).collect();
    names.sort();
    names
}

pub async fn client_for(context: &str) -> Client {
    let options = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig(), &options)
        .await
        .unwrap_or_else(|e| panic!("kubeconfig context {context}: {e}"));
    Client::try_from(config).expect("client from test-bed kubeconfig")
}

/// Client for the first cluster, kwok-kd-1.
pub async fn client() -> Client {
    client_for("kwok-kd-1").await
}

/// A name unique to this test run.
pub fn unique(purpose: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("it-{purpose}-{}-{:x}", SEQ.fetch_add(1, Ordering::Relaxed), nanos)
}

/// Creates the namespace `name` (the same name can be created in several clusters).
pub async fn namespace_named(client: &Client, name: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// Creates a namespace unique to this test run and returns its name.
pub async fn namespace(client: &Client, purpose: &str) -> String {
    let name = unique(purpose);
    namespace_named(client, &name).await;
    name
}

/// Installs the committed CRDs (crds/*.yaml, what users apply) and waits until each is established.
pub async fn install_crds(client: &Client) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds");
    let params = PatchParams::apply("kubedirector-tests").force();
    for (file, _) in kubedirector::api::crds() {
        let text = std::fs::read_to_string(dir.join(file)).expect("committed CRD file");
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("CRD YAML");
        let name = crd.metadata.name.clone().expect("CRD name");
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("API server refused CRD {file}: {e}"));
        wait_for(&format!("CRD {name} established"), Duration::from_secs(30), async {
            await_condition(api.clone(), &name, conditions::is_crd_established()).await
        })
        .await
        .expect("watch on CRD");
    }
}

/// StorageClass kd-local (shared by the tests; PVs are pre-created, the real PV controller binds).
pub async fn kd_local_storage_class(client: &Client) {
    storage_class(client, "kd-local").await;
}

/// A StorageClass without a provisioner, binding at once (created if missing).
pub async fn storage_class(client: &Client, name: &str) {
    let sc: StorageClass = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}, "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"
    }))
    .expect("StorageClass");
    match Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &sc)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("StorageClass: {e}"),
    }
}

/// `n` hostPath PersistentVolumes `<prefix>-<i>` of class `class` and `size` (Retain); the PV
/// controller of the real controller-manager binds claims to them.
pub async fn volumes(client: &Client, class: &str, prefix: &str, n: usize, size: &str) {
    let pvs = Api::<PersistentVolume>::all(client.clone());
    for i in 0..n {
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{prefix}-{i}")},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": format!("/tmp/{prefix}-{i}")}}
        }))
        .expect("PV");
        pvs.create(&PostParams::default(), &pv).await.expect("create PV");
    }
}

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`.
pub async fn wait_for<T>(what: &str, limit: Duration, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Untyped access to one of our kinds, so tests can send objects the Rust types would not produce.
pub fn kd_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(kubedirector::api::GROUP, kubedirector::api::VERSION, kind);
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

/// Waits until `done` holds for the cluster `name`, watching; a watch that expires (410, the bed's
/// etcd compacts often) is started again rather than failing the test.
pub async fn cluster_until(
    api: &Api<kubedirector::api::KubeDirectorCluster>,
    name: &str,
    done: impl Fn(&kubedirector::api::KubeDirectorCluster) -> bool + Clone,
) {
    loop {
        let cond = done.clone();
        match await_condition(
            api.clone(),
            name,
            move |c: Option<&kubedirector::api::KubeDirectorCluster>| c.is_some_and(&cond),
        )
        .await
        {
            Ok(_) => return,
            Err(e) => {
                eprintln!("watch on cluster {name} ended ({e}); watching again");
                // A persistent error (the caller's `wait_for` limit ends it) must not spin.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
