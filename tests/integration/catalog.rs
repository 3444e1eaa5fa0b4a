//! KubeDirector's own example catalog and clusters (`../shared/kubedirector/example_catalog/`,
//! `example_clusters/`), applied unchanged on the test bed: the API server takes every app, and every
//! cluster whose app has no setup package reaches `configured` with pods built as KubeDirector builds
//! them. (Clusters of apps with a setup package need the app images' packages; the admission rules
//! for all of them are checked in tests/kubedirector_parity.rs.)

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use kubedirector::api::KubeDirectorCluster;
use kubedirector::model::status::is_configured;

use crate::operator::Operator;
use crate::testbed;

/// The example clusters whose app runs no setup package.
const CLUSTERS: [&str; 8] = [
    "cr-cluster-centos7.yaml",
    "cr-cluster-centos7-stor.yaml",
    "cr-cluster-ubuntu18.04.yaml",
    "cr-cluster-ubuntu18.04-stor.yaml",
    "cr-cluster-qwen2-test.yaml",
    "cr-cluster-tinyllama-test.yaml",
    "cr-cluster-ngc.yaml",
    "cr-cluster-tensorflow-gpu-dockerhub.yaml",
];

fn upstream(path: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../shared/kubedirector/{path}"));
    crate::common::load_fixture(&p)
}

async fn create(api: &Api<DynamicObject>, obj: &Value) {
    let dynamic: DynamicObject = serde_json::from_value(obj.clone()).expect("object");
    match api.create(&PostParams::default(), &dynamic).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create {}: {e}", dynamic.name_any()),
    }
}

/// The class the examples name, with volumes only this test's claims can use (the examples ask
/// for 20–40 GiB, more than the shared kd-local volumes hold).
async fn local_path_storage(client: &Client, ns: &str, n: usize) {
    testbed::storage_class(client, "local-path").await;
    testbed::volumes(client, "local-path", ns, n, "100Gi").await;
}

/// GPUs on one fake node, for the examples that ask for one (kwok keeps what a status patch sets).
async fn gpus(client: &Client) {
    let nodes = Api::<Node>::all(client.clone());
    let node = nodes
        .list(&ListParams::default())
        .await
        .expect("nodes")
        .items
        .into_iter()
        .map(|n| n.name_any())
        .max()
        .expect("a node");
    let patch = json!({"status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "8"}}});
    nodes
        .patch_status(&node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("node GPUs");
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn upstream_example_apps_are_accepted_and_their_clusters_without_packages_configure() {
    let client = testbed::client().await;
    testbed::install_crds(&client).await;
    let ns = testbed::namespace(&client, "upstream").await;
    let system_ns = testbed::namespace(&client, "upstream-sys").await;
    local_path_storage(&client, &ns, 4).await;
    gpus(&client).await;
    // The API server takes every app as it is (CRD schema); the system catalog has them all, the
    // clusters' namespace those that examples ask for from `local`.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/kubedirector/example_catalog");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("example_catalog")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    for file in &files {
        let app = upstream(&format!("example_catalog/{file}"));
        for catalog in [&system_ns, &ns] {
            create(&testbed::kd_api(&client, catalog, "KubeDirectorApp"), &app).await;
        }
    }
    assert_eq!(files.len(), 20);
    create(
        &testbed::kd_api(&client, &system_ns, "KubeDirectorConfig"),
        &json!({"apiVersion": "kubedirector.hpe.com/v1beta1", "kind": "KubeDirectorConfig",
                "metadata": {"name": "kd-global-config"}, "spec": {"defaultStorageClassName": "local-path"}}),
    )
    .await;
    let operator = Operator::start("kwok-kd-1", &ns, &system_ns);
    let mut names = Vec::new();
    for file in CLUSTERS {
        let cluster = upstream(&format!("example_clusters/{file}"));
        names.push(cluster["metadata"]["name"].as_str().expect("name").to_string());
        create(&testbed::kd_api(&client, &ns, "KubeDirectorCluster"), &cluster).await;
    }
    let api = Api::<KubeDirectorCluster>::namespaced(client.clone(), &ns);
    for name in &names {
        let what = format!("{name} configured (log: {})", operator.log.display());
        testbed::wait_for(
            &what,
            Duration::from_secs(90),
            testbed::cluster_until(&api, name, is_configured),
        )
        .await;
    }
    // As KubeDirector builds them: the storage init container and its marker, the in-memory volumes,
    // the systemd mounts of these systemd apps (kd-global-config leaves nativeSystemdSupport off).
    let centos = api.get("centos7-persistent").await.expect("centos7-persistent");
    let sts_name = centos.status.expect("status").roles[0].stateful_set.clone();
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get(&sts_name)
        .await
        .expect("sts");
    let pod = sts.spec.expect("spec").template.spec.expect("pod spec");
    let init = &pod.init_containers.as_ref().expect("init")[0];
    assert_eq!(init.name, "init");
    assert!(init.args.as_ref().expect("args")[1].contains("/mnt/etc/kubedirector.init"));
    let volumes: Vec<String> = pod.volumes.iter().flatten().map(|v| v.name.clone()).collect();
    assert_eq!(
        volumes,
        ["tmpfs-tmp", "tmpfs-run", "tmpfs-run-lock", "cgroupfs", "systemd"]
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
}
