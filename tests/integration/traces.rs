//! Tracing for real: a Jaeger v2 on loopback, the operator exporting OTLP/HTTP to it, a cluster
//! created under a creator's trace (its `traceparent` annotation). The traces are read back through
//! Jaeger's HTTP API: the reconcile span with its attributes, its write spans, the link to the
//! creator's trace — and the last spans arrive because the operator flushes them on SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube::api::{DynamicObject, PostParams};
use serde_json::{Value, json};

use crate::http::request;
use crate::operator::{Operator, free_port};
use crate::reconcile::{self, CLUSTER, example};
use crate::testbed;

/// A Jaeger process with in-memory storage (testbed/jaeger.yaml), killed on drop.
struct Jaeger {
    child: Child,
    otlp_port: u16,
    query_port: u16,
}

impl Jaeger {
    async fn start(name: &str) -> Jaeger {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let log = root.join(format!("target/test-logs/jaeger-{name}.log"));
        std::fs::create_dir_all(log.parent().expect("dir")).expect("log dir");
        let file = std::fs::File::create(&log).expect("jaeger log");
        let (otlp_port, query_port, grpc_port) = (free_port(), free_port(), free_port());
        let child = Command::new("jaeger")
            .args(["--config", &root.join("testbed/jaeger.yaml").display().to_string()])
            .env("JAEGER_OTLP_PORT", otlp_port.to_string())
            .env("JAEGER_QUERY_PORT", query_port.to_string())
            .env("JAEGER_QUERY_GRPC_PORT", grpc_port.to_string())
            .stdout(Stdio::from(file.try_clone().expect("log handle")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start jaeger (built into the tools cache by make tools)");
        let jaeger = Jaeger {
            child,
            otlp_port,
            query_port,
        };
        let what = format!("Jaeger's query API (log: {})", log.display());
        testbed::wait_for(&what, Duration::from_secs(60), async {
            while request(query_port, "GET", "/api/services", None).is_none_or(|(code, _)| code != 200)
                || request(otlp_port, "POST", "/v1/traces", Some("{}")).is_none()
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        jaeger
    }

    /// Jaeger's JSON for `path` of its query API.
    fn get(&self, path: &str) -> Value {
        let (code, body) = request(self.query_port, "GET", path, None).expect("Jaeger answers");
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON from Jaeger")
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex_id(bytes: usize, salt: u64) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(1);
    let mut x = (nanos as u64) ^ salt.rotate_left(17) ^ u64::from(std::process::id());
    (0..bytes)
        .map(|i| {
            // xorshift: enough spread for ids unique to this run; the first byte is never zero.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = (x & 0xff) as u8;
            format!("{:02x}", if i == 0 { b | 0x10 } else { b })
        })
        .collect()
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn reconciles_are_traced_into_jaeger_and_linked_to_the_creator() {
    let jaeger = Jaeger::start(&testbed::unique("trace")).await;
    let service = testbed::unique("kd-traces");
    let (creator_trace, creator_span) = (hex_id(16, 1), hex_id(8, 2));

    // The creator's own span, sent to the same Jaeger (OTLP/JSON), so that its trace exists there.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
    let creator = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": format!("{service}-creator")}}]},
        "scopeSpans": [{"scope": {"name": "integration-test"}, "spans": [{
            "traceId": creator_trace, "spanId": creator_span, "name": "create KubeDirectorCluster", "kind": 3,
            "startTimeUnixNano": (now - 1_000_000).to_string(), "endTimeUnixNano": now.to_string()
        }]}]
    }]});
    let (code, body) =
        request(jaeger.otlp_port, "POST", "/v1/traces", Some(&creator.to_string())).expect("OTLP receiver");
    assert_eq!(code, 200, "creator span refused: {body}");

    let endpoint = format!("http://127.0.0.1:{}", jaeger.otlp_port);
    let svc = service.clone();
    let mut env = reconcile::setup_with("traces", 6, |ns, system_ns| async move {
        Operator::start_with_env(
            &["--context", "kwok-kd-1", "--watch-namespace", &ns, "--shards", "4"],
            &ns,
            &system_ns,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), ("OTEL_SERVICE_NAME", svc)],
        )
    })
    .await;
    let mut cluster = example(CLUSTER);
    cluster["metadata"]["annotations"] = json!({"traceparent": format!("00-{creator_trace}-{creator_span}-01")});
    let client = testbed::client().await;
    let obj: DynamicObject = serde_json::from_value(cluster).expect("cluster");
    testbed::kd_api(&client, &env.ns, "KubeDirectorCluster")
        .create(&PostParams::default(), &obj)
        .await
        .expect("create cluster");
    reconcile::wait_configured(&env, "cass", Duration::from_secs(60)).await;
    // SIGTERM right away: the spans of the last reconciles are still in the exporter's batch and
    // reach Jaeger only through the flush on shutdown.
    assert!(env.operator.terminate(Duration::from_secs(20)).await, "graceful exit");

    let creator_seen = jaeger.get(&format!("/api/traces/{creator_trace}"));
    assert_eq!(
        creator_seen["data"][0]["spans"][0]["spanID"],
        creator_span.as_str(),
        "creator trace stored"
    );

    let traces = testbed::wait_for("the operator's traces in Jaeger", Duration::from_secs(30), async {
        loop {
            let found = jaeger.get(&format!(
                "/api/traces?service={service}&operation=reconcile&limit=1000&lookback=1h"
            ));
            // The collector stores what arrives in batches: wait until the traces of the status
            // and children writes are in too, not just the first one.
            let text = found.to_string();
            if ["\"apply\"", "\"update_status\"", "\"patch\""]
                .iter()
                .all(|v| text.contains(v))
            {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    let spans: Vec<&Value> = traces["data"]
        .as_array()
        .expect("traces")
        .iter()
        .flat_map(|t| t["spans"].as_array().into_iter().flatten())
        .collect();
    let reconciles: Vec<&&Value> = spans.iter().filter(|s| s["operationName"] == "reconcile").collect();
    assert!(!reconciles.is_empty(), "reconcile spans: {traces}");
    for r in &reconciles {
        assert_eq!(tag(r, "context").and_then(Value::as_str), Some("kwok-kd-1"));
        assert_eq!(tag(r, "namespace").and_then(Value::as_str), Some(env.ns.as_str()));
        assert_eq!(tag(r, "name").and_then(Value::as_str), Some("cass"));
        assert!(
            tag(r, "shard")
                .and_then(Value::as_i64)
                .is_some_and(|s| (0..4).contains(&s)),
            "shard: {r}"
        );
        assert!(
            tag(r, "replica").and_then(Value::as_str).is_some_and(|s| !s.is_empty()),
            "replica: {r}"
        );
        assert!(tag(r, "outcome").and_then(Value::as_str).is_some(), "outcome: {r}");
        // The creator's trace, as a link (a reference into another trace).
        let refs = r["references"].as_array().cloned().unwrap_or_default();
        assert!(
            refs.iter()
                .any(|x| x["traceID"] == creator_trace.as_str() && x["spanID"] == creator_span.as_str()),
            "link to the creator's trace missing: {r}"
        );
    }
    // Write spans: children of a reconcile span, one per API write, with verb, kind and outcome.
    let writes: Vec<&&Value> = spans.iter().filter(|s| s["operationName"] == "write").collect();
    let reconcile_ids: Vec<&Value> = reconciles.iter().map(|r| &r["spanID"]).collect();
    assert!(!writes.is_empty(), "write spans: {traces}");
    for w in &writes {
        let parent = w["references"]
            .as_array()
            .and_then(|refs| refs.iter().find(|x| x["refType"] == "CHILD_OF"))
            .map(|x| &x["spanID"]);
        assert!(
            parent.is_some_and(|p| reconcile_ids.contains(&p)),
            "write span not under a reconcile: {w}"
        );
        assert_eq!(tag(w, "outcome").and_then(Value::as_str), Some("ok"), "{w}");
    }
    let verbs: std::collections::BTreeSet<&str> = writes
        .iter()
        .filter_map(|w| tag(w, "verb").and_then(Value::as_str))
        .collect();
    let kinds: std::collections::BTreeSet<&str> = writes
        .iter()
        .filter_map(|w| tag(w, "kind").and_then(Value::as_str))
        .collect();
    assert!(
        verbs.contains("apply") && verbs.contains("update_status") && verbs.contains("patch"),
        "verbs: {verbs:?}"
    );
    assert!(
        kinds.contains("StatefulSet") && kinds.contains("Service"),
        "kinds: {kinds:?}"
    );
    println!(
        "traces: {} reconcile spans, {} write spans ({verbs:?}), all linked to creator trace {creator_trace}",
        reconciles.len(),
        writes.len()
    );
}
