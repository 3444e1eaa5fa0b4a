//! Connections for real, across two member clusters: a cluster in kwok-kd-1 connected to a typed
//! ConfigMap and Secret next to it and to a cluster in kwok-kd-2. Changing the ConfigMap, or the
//! remote cluster's membership, runs `--reconnect` on the connected cluster's members only, with the
//! new content in their configmeta.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use kubedirector::api::KubeDirectorCluster;
use kubedirector::model::status::is_configured;

use crate::guest::{Guests, app, cluster, package, pods};
use crate::operator::Operator;
use crate::reconcile::create;
use crate::testbed;

/// Configured at its generation with nothing left to deliver.
async fn settled(client: &Client, ns: &str, name: &str, log: &std::path::Path) -> KubeDirectorCluster {
    let api: Api<KubeDirectorCluster> = Api::namespaced(client.clone(), ns);
    let done = |c: &KubeDirectorCluster| {
        is_configured(c)
            && c.status
                .iter()
                .flat_map(|s| &s.roles)
                .flat_map(|r| &r.members)
                .all(|m| m.state_detail.pending_notify_cmds.is_empty())
    };
    let what = format!("{name} settled (log: {})", log.display());
    testbed::wait_for(
        &what,
        Duration::from_secs(120),
        testbed::cluster_until(&api, name, done),
    )
    .await;
    api.get(name).await.expect("get")
}

fn reconnects(guests: &Guests, pod: &str) -> usize {
    guests.calls(pod).iter().filter(|c| *c == "--reconnect").count()
}

/// Polls the guests' call records until `pods` have each run `--reconnect` `n` times.
async fn wait_reconnects(guests: &Guests, pods: &[String], n: usize) {
    testbed::wait_for(
        &format!("--reconnect ×{n} on {pods:?}"),
        Duration::from_secs(120),
        async {
            while !pods.iter().all(|p| reconnects(guests, p) >= n) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn a_changed_connected_configmap_or_remote_cluster_reconnects_only_the_connected_members() {
    let (c1, c2) = (
        testbed::client_for("kwok-kd-1").await,
        testbed::client_for("kwok-kd-2").await,
    );
    let ns = testbed::unique("conn");
    let sys = testbed::unique("conn-sys");
    for c in [&c1, &c2] {
        testbed::install_crds(c).await;
        testbed::namespace_named(c, &ns).await;
        testbed::namespace_named(c, &sys).await;
    }
    let (g1, g2) = (Guests::start(&c1, &ns, Vec::new()), Guests::start(&c2, &ns, Vec::new()));
    let pkg = package(&g1.root.join("package"));
    for c in [&c1, &c2] {
        create(c, &sys, &app("setup-test", &pkg, None)).await;
    }
    let op = Operator::start_with(
        &[
            "--context",
            "kwok-kd-1",
            "--context",
            "kwok-kd-2",
            "--watch-namespace",
            &ns,
        ],
        &ns,
        &sys,
    );

    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "cfg", "labels": {"kubedirector.hpe.com/cmType": "settings"}}, "data": {"k": "1"}
    }))
    .expect("ConfigMap");
    Api::<ConfigMap>::namespaced(c1.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await
        .expect("create ConfigMap");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds", "labels": {"kubedirector.hpe.com/secretType": "login"}}, "stringData": {"user": "x"}
    }))
    .expect("Secret");
    Api::<Secret>::namespaced(c1.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create Secret");

    // The remote cluster is there (with its status) before the connected one is created, so that
    // the connected members configure with it and nothing has changed for them afterwards.
    create(&c2, &ns, &cluster("remote", "setup-test", 1)).await;
    create(&c1, &ns, &cluster("db", "setup-test", 1)).await;
    settled(&c2, &ns, "remote", &op.log).await;
    let mut connected = cluster("app", "setup-test", 2);
    connected["spec"]["connections"] = json!({
        "clusters": [format!("kwok-kd-2/{ns}/remote")], "configmaps": ["cfg"], "secrets": ["creds"]
    });
    create(&c1, &ns, &connected).await;

    let remote = settled(&c2, &ns, "remote", &op.log).await;
    let db = settled(&c1, &ns, "db", &op.log).await;
    let app_cluster = settled(&c1, &ns, "app", &op.log).await;
    let (app_pods, db_pods, remote_pods) = (pods(&app_cluster), pods(&db), pods(&remote));
    assert_eq!(app_pods.len(), 2);

    // configmeta of a connected member: the ConfigMap, the Secret and the remote cluster.
    let connections = |pod: &str| -> Value { g1.configmeta(pod)["connections"].clone() };
    let c = connections(&app_pods[0]);
    assert_eq!(c["configmaps"]["settings"][0]["data"]["k"], "1", "{c}");
    assert_eq!(c["configmaps"]["settings"][0]["metadata"]["name"], "cfg");
    assert_eq!(
        c["secrets"]["login"][0]["data"]["user"], "eA==",
        "Secret data as stored (base64)"
    );
    let remote_fqdns = &c["clusters"]["remote"]["nodegroups"]["1"]["roles"]["node"]["fqdns"];
    assert_eq!(remote_fqdns.as_array().map(Vec::len), Some(1), "{c}");
    assert!(app_pods.iter().all(|p| reconnects(&g1, p) == 0), "nothing changed yet");

    // The ConfigMap changes: the connected members reconnect, with the new content.
    Api::<ConfigMap>::namespaced(c1.clone(), &ns)
        .patch(
            "cfg",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "2"}})),
        )
        .await
        .expect("patch ConfigMap");
    wait_reconnects(&g1, &app_pods, 1).await;
    settled(&c1, &ns, "app", &op.log).await;
    for p in &app_pods {
        assert_eq!(reconnects(&g1, p), 1, "{p}: {:?}", g1.calls(p));
        assert_eq!(connections(p)["configmaps"]["settings"][0]["data"]["k"], "2");
    }

    // The remote cluster (other member cluster) grows: the connected members reconnect again.
    Api::<KubeDirectorCluster>::namespaced(c2.clone(), &ns)
        .patch(
            "remote",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"roles": [{"id": "node", "members": 2,
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}})),
        )
        .await
        .expect("resize remote");
    settled(&c2, &ns, "remote", &op.log).await;
    wait_reconnects(&g1, &app_pods, 2).await;
    settled(&c1, &ns, "app", &op.log).await;
    for p in &app_pods {
        let fqdns = &connections(p)["clusters"]["remote"]["nodegroups"]["1"]["roles"]["node"]["fqdns"];
        assert_eq!(fqdns.as_array().map(Vec::len), Some(2), "{p}");
    }

    // Nobody else heard anything.
    for p in &db_pods {
        assert_eq!(reconnects(&g1, p), 0, "db {p}: {:?}", g1.calls(p));
    }
    for p in &remote_pods {
        assert_eq!(reconnects(&g2, p), 0, "remote {p}: {:?}", g2.calls(p));
    }
    for p in &app_pods {
        assert_eq!(reconnects(&g1, p), 2, "{p}: {:?}", g1.calls(p));
    }
}
