//! One process, many member clusters: 100 KubeDirectorClusters over three clusters, the write limit
//! held under a burst (checked against the API server's own request counters), and kubeconfig
//! contexts added and removed while the operator runs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{ListParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use kubedirector::api::KubeDirectorCluster;
use kubedirector::model::status::is_configured;

use crate::operator::Operator;
use crate::{common, testbed};

fn example(path: &str) -> Value {
    common::load_fixture(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
}

/// The example cluster without storage (no volumes needed at this scale), under `name`.
pub fn small_cluster(name: &str) -> Value {
    let mut c = example("deploy/examples/cluster-cassandra-like.yaml");
    c["metadata"]["name"] = json!(name);
    for role in c["spec"]["roles"].as_array_mut().expect("roles") {
        role.as_object_mut().expect("role").remove("storage");
    }
    c
}

pub async fn create(client: &Client, ns: &str, obj: &Value) {
    let kind = obj["kind"].as_str().expect("kind");
    let dynamic = serde_json::from_value(obj.clone()).expect("object");
    testbed::kd_api(client, ns, kind)
        .create(&PostParams::default(), &dynamic)
        .await
        .unwrap_or_else(|e| panic!("create {kind}: {e}"));
}

/// Operator arguments that make every context in `contexts` a member and watch namespace `ns`.
pub fn members<'a>(contexts: &[&'a str], ns: &'a str) -> Vec<&'a str> {
    let mut args = vec!["--watch-namespace", ns];
    for c in contexts {
        args.extend(["--context", c]);
    }
    args
}

/// Same-named watch and system namespaces in each context, CRDs installed, the example app in the
/// system namespace.
pub async fn prepare(contexts: &[&str], ns: &str, sys: &str) -> Vec<Client> {
    let mut clients = Vec::new();
    for context in contexts {
        let client = testbed::client_for(context).await;
        testbed::install_crds(&client).await;
        testbed::namespace_named(&client, ns).await;
        testbed::namespace_named(&client, sys).await;
        create(&client, sys, &example("deploy/examples/app-cassandra-like.yaml")).await;
        clients.push(client);
    }
    clients
}

/// Polls the cluster list until `expected` clusters are configured (a condition on many objects at
/// once; one list per half second is cheaper than a watch per object).
pub async fn wait_all_configured(client: &Client, ns: &str, expected: usize, limit: Duration) -> Duration {
    let api = Api::<KubeDirectorCluster>::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        let list = api.list(&ListParams::default()).await.expect("list clusters");
        let done = list.items.iter().filter(|c| is_configured(c)).count();
        if done == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{done} of {expected} clusters configured after {limit:?} in {ns}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Sum of the samples of `metric` whose labels contain every `label="value"` in `want`.
pub fn sum_metric(text: &str, metric: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && (l[metric.len()..].starts_with('{') || l[metric.len()..].starts_with(' ')))
        .filter(|l| want.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn one_process_reconciles_100_clusters_over_three_member_clusters() {
    let contexts = ["kwok-kd-1", "kwok-kd-2", "kwok-kd-3"];
    let (ns, sys) = (testbed::unique("fleet"), testbed::unique("fleet-sys"));
    let clients = prepare(&contexts, &ns, &sys).await;
    let operator = Operator::start_with(&members(&contexts, &ns), &ns, &sys);
    let started = Instant::now();
    let mut per_cluster = BTreeMap::new();
    for i in 0..100 {
        let which = i % 3;
        create(&clients[which], &ns, &small_cluster(&format!("c{i:03}"))).await;
        *per_cluster.entry(which).or_insert(0usize) += 1;
    }
    for (which, client) in clients.iter().enumerate() {
        wait_all_configured(client, &ns, per_cluster[&which], Duration::from_secs(180)).await;
    }
    let elapsed = started.elapsed();
    let metrics = operator.metrics();
    let members = 300.0; // 100 clusters × (1 seed + 2 nodes)
    let mut total = 0.0;
    for c in &contexts {
        let writes = sum_metric(
            &metrics,
            "kubedirector_api_writes_total",
            &[("context", c), ("outcome", "ok")],
        );
        assert!(writes > 0.0, "no writes recorded for {c}");
        assert_eq!(
            sum_metric(&metrics, "kubedirector_cluster_healthy", &[("context", c)]),
            1.0,
            "{c} healthy"
        );
        total += writes;
    }
    let per_member = total / members;
    eprintln!(
        "100 clusters / 300 members over 3 member clusters configured in {elapsed:?}; {total} writes = {per_member:.2} per member"
    );
    // Per cluster: finalizer, headless Service, 2 StatefulSets, 3 member Services, a couple of status
    // writes and events. More than 5 per member would mean redundant writes.
    assert!(per_member <= 5.0, "{per_member:.2} writes per member");
}

/// Our mutating requests as the API server counts them (server-side apply is verb APPLY): cluster
/// finalizer patches and status replacements, StatefulSet and Service applies, deletions. (The harness only POSTs clusters, and
/// the built-in controllers write StatefulSet status, not StatefulSets.)
async fn apiserver_writes(client: &Client) -> f64 {
    let req = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = client
        .request_text(req)
        .await
        .expect("GET /metrics from the API server");
    let ours = [
        ("PATCH", "kubedirectorclusters", ""),
        ("PUT", "kubedirectorclusters", "status"),
        ("APPLY", "statefulsets", ""),
        ("APPLY", "services", ""),
        ("DELETE", "services", ""),
        ("DELETE", "statefulsets", ""),
    ];
    ours.iter()
        .map(|(verb, resource, sub)| {
            text.lines()
                .filter(|l| l.starts_with("apiserver_request_total{"))
                .filter(|l| {
                    l.contains(&format!("verb=\"{verb}\""))
                        && l.contains(&format!("resource=\"{resource}\""))
                        && l.contains(&format!("subresource=\"{sub}\""))
                })
                .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
                .sum::<f64>()
        })
        .sum()
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn a_300_cluster_burst_never_exceeds_the_write_limit() {
    // The adaptive budget runs between the floor (--write-qps 25) and the ceiling (--write-burst 50,
    // also the bucket's depth): no window may hold more than the ceiling allows.
    let (floor, qps, burst) = (25.0, 50.0, 50.0);
    let (ns, sys) = (testbed::unique("burst"), testbed::unique("burst-sys"));
    let clients = prepare(&["kwok-kd-3"], &ns, &sys).await;
    let client = &clients[0];
    let operator = Operator::start_with(
        &[
            "--context",
            "kwok-kd-3",
            "--watch-namespace",
            &ns,
            "--write-qps",
            "25",
            "--write-burst",
            "50",
        ],
        &ns,
        &sys,
    );
    let base = apiserver_writes(client).await;
    let start = Instant::now();
    for i in 0..300 {
        create(client, &ns, &small_cluster(&format!("b{i:03}"))).await;
    }
    // Sample the API server's counter every second until everything is configured.
    let api = Api::<KubeDirectorCluster>::namespaced(client.clone(), &ns);
    let mut samples: Vec<(f64, f64)> = vec![(0.0, 0.0)];
    let mut limits = Vec::new();
    loop {
        let written = apiserver_writes(client).await - base;
        samples.push((start.elapsed().as_secs_f64(), written));
        limits.push(sum_metric(
            &operator.metrics(),
            "kubedirector_write_limit_qps",
            &[("context", "kwok-kd-3")],
        ));
        let list = api.list(&ListParams::default()).await.expect("list");
        if list.items.iter().filter(|c| is_configured(c)).count() == 300 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "burst not configured in time (log {})",
            operator.log.display()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (duration, total) = *samples.last().expect("samples");
    // Any window between two samples: at most burst + qps·T writes (plus one second of rate for the
    // sampling instants, which are the harness's, not the server's).
    let mut worst: f64 = 0.0;
    for (i, (t0, w0)) in samples.iter().enumerate() {
        for (t1, w1) in &samples[i + 1..] {
            let allowed = burst + qps * (t1 - t0 + 1.0);
            worst = worst.max((w1 - w0) / allowed);
            assert!(
                w1 - w0 <= allowed,
                "{} writes between {t0:.1}s and {t1:.1}s; allowed {allowed}",
                w1 - w0
            );
        }
    }
    let rate = total / duration;
    eprintln!(
        "300 clusters configured in {duration:.1}s with {total} writes counted by the API server ({rate:.1}/s average; worst window at {:.0}% of the limit)",
        worst * 100.0
    );
    let coalesced = sum_metric(&operator.metrics(), "kubedirector_writes_coalesced_total", &[]);
    let throttled = sum_metric(
        &operator.metrics(),
        "kubedirector_reconciles_total",
        &[("outcome", "throttled")],
    );
    eprintln!("status writes coalesced: {coalesced}; reconciles ended by the write budget: {throttled}");
    assert!(throttled > 0.0, "the burst should have hit the write budget");
    let (low, high) = limits
        .iter()
        .fold((f64::MAX, 0.0_f64), |(l, h), v| (l.min(*v), h.max(*v)));
    eprintln!("write limit sampled each second: {low}..{high} per second");
    assert!(
        low >= floor && high <= qps,
        "the limit left [{floor}, {qps}]: {limits:?}"
    );
    assert!(
        high > floor,
        "the budget never rose above its floor while the API server kept up: {limits:?}"
    );
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn kubeconfig_contexts_come_and_go_without_a_restart() {
    let (ns, sys) = (testbed::unique("reload"), testbed::unique("reload-sys"));
    let clients = prepare(&["kwok-kd-1", "kwok-kd-2"], &ns, &sys).await;
    let full = testbed::kubeconfig();
    let only = |names: &[&str]| {
        let mut k: Kubeconfig = full.clone();
        k.contexts.retain(|c| names.contains(&c.name.as_str()));
        k.current_context = names.first().map(|s| s.to_string());
        serde_yaml::to_string(&k).expect("kubeconfig YAML")
    };
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/test-logs/{ns}.kubeconfig"));
    std::fs::write(&path, only(&["kwok-kd-1"])).expect("write kubeconfig");
    let path_text = path.display().to_string();
    let operator = Operator::start_with(
        &[
            "--kubeconfig",
            &path_text,
            "--all-contexts",
            "--kubeconfig-reload-seconds",
            "1",
            "--watch-namespace",
            &ns,
        ],
        &ns,
        &sys,
    );
    create(&clients[0], &ns, &small_cluster("one")).await;
    create(&clients[1], &ns, &small_cluster("two")).await;
    wait_all_configured(&clients[0], &ns, 1, Duration::from_secs(60)).await;
    let two = Api::<KubeDirectorCluster>::namespaced(clients[1].clone(), &ns);
    assert!(
        two.get("two").await.expect("get").status.is_none(),
        "kwok-kd-2 is not a member yet"
    );

    std::fs::write(&path, only(&["kwok-kd-1", "kwok-kd-2"])).expect("add kwok-kd-2");
    wait_all_configured(&clients[1], &ns, 1, Duration::from_secs(60)).await;

    std::fs::write(&path, only(&["kwok-kd-2"])).expect("remove kwok-kd-1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&operator.log).unwrap_or_default();
        if log.contains("member cluster stopped") && log.contains("kwok-kd-1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kwok-kd-1 was not stopped after leaving the kubeconfig"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = operator.metrics();
    assert_eq!(
        sum_metric(&metrics, "kubedirector_cluster_healthy", &[("context", "kwok-kd-1")]),
        0.0
    );
    assert_eq!(
        sum_metric(&metrics, "kubedirector_cluster_healthy", &[("context", "kwok-kd-2")]),
        1.0
    );
    let one = Api::<KubeDirectorCluster>::namespaced(clients[0].clone(), &ns)
        .get("one")
        .await
        .expect("get one");
    assert!(
        one.finalizers().iter().any(|f| f == "kubedirector.hpe.com/cleanup"),
        "leaving the fleet does not strip finalizers"
    );
}
