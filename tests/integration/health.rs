//! The test bed itself: the right Kubernetes version, Ready fake nodes, and the built-in controllers,
//! scheduler and kwok working together on a StatefulSet.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

use crate::testbed;

fn is_ready(conditions: Option<&Vec<k8s_openapi::api::core::v1::NodeCondition>>) -> bool {
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn every_context_serves_kubernetes_1_36_with_ready_fake_nodes() {
    let contexts = testbed::contexts();
    let want: usize = std::env::var("KD_TESTBED_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    assert!(contexts.len() >= want, "expected {want} contexts, found {contexts:?}");
    for (i, context) in contexts.iter().enumerate() {
        assert_eq!(
            context,
            &format!("kwok-kd-{}", i + 1),
            "contexts are named kwok-kd-1..N"
        );
        let client = testbed::client_for(context).await;
        let version = client.apiserver_version().await.expect("GET /version");
        assert!(
            version.git_version.starts_with("v1.36."),
            "{context}: server reports {}",
            version.git_version
        );
        let nodes = Api::<Node>::all(client)
            .list(&ListParams::default())
            .await
            .expect("list nodes");
        assert!(!nodes.items.is_empty(), "{context}: no fake nodes");
        for node in &nodes.items {
            let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
            assert!(
                is_ready(conditions),
                "{context}: node {:?} is not Ready",
                node.metadata.name
            );
        }
    }
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn statefulset_of_three_gets_three_ready_pods() {
    let client = testbed::client().await;
    let ns = testbed::namespace(&client, "sts").await;
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3, "serviceName": "web", "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "app", "image": "example.invalid/web:1"}]}}
        }
    }))
    .expect("StatefulSet literal");
    let api = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &sts)
        .await
        .expect("create StatefulSet");
    let three_ready = |s: Option<&StatefulSet>| {
        s.and_then(|s| s.status.as_ref())
            .and_then(|st| st.ready_replicas)
            .unwrap_or(0)
            == 3
    };
    testbed::wait_for(
        "3 ready replicas",
        Duration::from_secs(60),
        await_condition(api, "web", three_ready),
    )
    .await
    .expect("watch StatefulSet");
    let pods = Api::<Pod>::namespaced(client, &ns)
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods");
    let ready = pods
        .items
        .iter()
        .filter(|p| {
            let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
            conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    assert_eq!(
        ready,
        3,
        "pods: {:?}",
        pods.items.iter().map(|p| &p.metadata.name).collect::<Vec<_>>()
    );
}
