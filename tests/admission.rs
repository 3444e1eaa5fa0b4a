//! The admission decisions as pure functions, with the API server's part simulated: every case of the
//! table (tests/fixtures/admission/cases.yaml) goes through the mutating then the validating review,
//! as the API server would send them; the same table runs through the real API server in
//! tests/integration/admission.rs. Plus bad requests, a 1 MiB object and a property test.

#[path = "common/admission.rs"]
mod cases;
mod common;

use std::sync::Arc;

use kube::api::DynamicObject;
use kubedirector::admission::review::{self, Phase, ReviewError};
use kubedirector::admission::world::Snapshot;
use kubedirector::model::labels::FINALIZER;
use kubedirector::model::validate::StorageClasses;
use proptest::prelude::*;
use serde_json::{Value, json};

use cases::{Base, Case, Op};

const SYS: &str = "kubedirector";
const NS: &str = "apps";

fn obj(v: &Value, ns: &str) -> Arc<DynamicObject> {
    let mut v = v.clone();
    v["metadata"]["namespace"] = json!(ns);
    Arc::new(serde_json::from_value(v).expect("object"))
}

fn world() -> Snapshot {
    Snapshot {
        operator_namespace: SYS.to_string(),
        apps: vec![obj(&cases::app(), SYS), obj(&cases::app_min(), SYS)],
        storage_classes: StorageClasses {
            names: vec!["kd-local".to_string()],
            cluster_default: None,
        },
        secrets: [(NS.to_string(), "kd-secret".to_string())].into_iter().collect(),
        ..Default::default()
    }
}

fn kind_of(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn request(op: &str, ns: &str, object: Option<&Value>, old: Option<&Value>) -> Vec<u8> {
    let sample = object.or(old).expect("an object");
    let kind = kind_of(sample);
    let plural = format!("{}s", kind.to_lowercase());
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0000-1111", "kind": {"group": "kubedirector.hpe.com", "version": "v1beta1", "kind": kind},
            "resource": {"group": "kubedirector.hpe.com", "version": "v1beta1", "resource": plural},
            "name": sample["metadata"]["name"], "namespace": ns, "operation": op,
            "userInfo": {"username": "tester"}, "object": object, "oldObject": old,
        }
    });
    serde_json::to_vec(&body).expect("json")
}

/// What the API server does with one write: the mutating review, its patch applied, then the
/// validating review. `Ok(stored object)` or `Err(denial message)`.
fn admit(world: &Snapshot, op: &str, ns: &str, object: Option<&Value>, old: Option<&Value>) -> Result<Value, String> {
    let mut object = object.cloned();
    if let Some(o) = object.as_mut() {
        o["metadata"]["namespace"] = json!(ns);
        let review = review::handle(Phase::Mutate, &request(op, ns, Some(o), old), "test", Some(world))
            .expect("mutating review answers");
        let response = review.response.as_ref().expect("response");
        if !response.allowed {
            return Err(response.result.message.clone());
        }
        if let Some(patch) = review::patch_of(&review) {
            let patch: json_patch::Patch = serde_json::from_value(patch).expect("a JSON patch");
            json_patch::patch(o, &patch).expect("the patch applies");
        }
    }
    let review = review::handle(
        Phase::Validate,
        &request(op, ns, object.as_ref(), old),
        "test",
        Some(world),
    )
    .expect("validating review answers");
    let response = review.response.expect("response");
    if response.allowed {
        Ok(object.or(old.cloned()).unwrap_or(Value::Null))
    } else {
        Err(response.result.message)
    }
}

fn home(case: &Case) -> &'static str {
    match case.base {
        Base::App | Base::Config => SYS,
        Base::Cluster => NS,
    }
}

/// Runs one case; returns (invalid outcome, valid outcome).
fn run(case: &Case) -> (Result<Value, String>, Result<Value, String>) {
    let mut w = world();
    let mut base = cases::base(case.base);
    if case.using {
        let user = cases::user_cluster("user", base["metadata"]["name"].as_str().unwrap_or(""));
        w.clusters.push(obj(&user, NS));
    }
    let invalid_ns = if case.namespace.as_deref() == Some("watched") {
        NS
    } else {
        home(case)
    };
    match case.op {
        Op::Create => (
            admit(
                &w,
                "CREATE",
                invalid_ns,
                Some(&cases::patched(&base, &case.invalid)),
                None,
            ),
            admit(
                &w,
                "CREATE",
                home(case),
                Some(&cases::patched(&base, &case.valid)),
                None,
            ),
        ),
        Op::Update => {
            base = admit(&w, "CREATE", home(case), Some(&base), None).expect("the base is valid");
            (
                admit(
                    &w,
                    "UPDATE",
                    home(case),
                    Some(&cases::patched(&base, &case.invalid)),
                    Some(&base),
                ),
                admit(
                    &w,
                    "UPDATE",
                    home(case),
                    Some(&cases::patched(&base, &case.valid)),
                    Some(&base),
                ),
            )
        }
        Op::Delete => {
            let refused = admit(&w, "DELETE", home(case), None, Some(&base));
            let unused = world();
            (refused, admit(&unused, "DELETE", home(case), None, Some(&base)))
        }
    }
}

#[test]
fn every_case_is_refused_with_its_message_and_its_counterpart_accepted() {
    let all = cases::cases();
    assert!(all.len() >= 40, "the table holds {} cases", all.len());
    let mut failures = Vec::new();
    for case in all.iter().filter(|c| !c.api) {
        let (invalid, valid) = run(case);
        match invalid {
            Ok(_) => failures.push(format!("{}: the invalid object was accepted", case.name)),
            Err(m) if !m.contains(&case.expect) => {
                failures.push(format!("{}: message lacks {:?}:\n    {m}", case.name, case.expect))
            }
            Err(_) => {}
        }
        if let Err(m) = valid {
            failures.push(format!("{}: the valid counterpart was refused: {m}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn denials_name_the_object_and_report_every_error_at_once() {
    let w = world();
    let mut c = cases::cluster();
    c["spec"]["roles"][0]["members"] = json!(5);
    c["spec"]["roles"][1]["storage"]["storageClassName"] = json!("ghost");
    let message = admit(&w, "CREATE", NS, Some(&c), None).expect_err("refused");
    assert!(
        message.starts_with("KubeDirectorCluster apps/cass is invalid: "),
        "{message}"
    );
    assert!(message.contains("spec.roles[0].members: 5") && message.contains("spec.roles[1].storage.storageClassName"));
}

#[test]
fn defaults_are_filled_in_by_the_mutating_review() {
    let mut w = world();
    w.configs
        .push(obj(&json!({"apiVersion": "kubedirector.hpe.com/v1beta1", "kind": "KubeDirectorConfig",
            "metadata": {"name": "kd-global-config"}, "spec": {"defaultServiceType": "NodePort", "defaultStorageClassName": "kd-local"}}), SYS));
    let mut c = cases::cluster();
    let spec = c["spec"].as_object_mut().expect("spec");
    spec.remove("serviceType");
    spec.insert("defaultSecret".into(), json!({"name": "kd-secret", "mountPath": "/s"}));
    let roles = c["spec"]["roles"].as_array_mut().expect("roles");
    roles[1].as_object_mut().expect("role").remove("members");
    roles[1]["storage"]
        .as_object_mut()
        .expect("storage")
        .remove("storageClassName");
    let stored = admit(&w, "CREATE", NS, Some(&c), None).expect("accepted");
    let s = &stored["spec"];
    assert_eq!(s["appCatalog"], "system");
    assert_eq!(s["serviceType"], "NodePort");
    assert_eq!(s["namingScheme"], "UID");
    assert_eq!(s["roles"][1]["members"], 2, "the cardinality's N");
    assert_eq!(s["roles"][1]["storage"]["storageClassName"], "kd-local");
    assert_eq!(s["roles"][0]["secret"]["name"], "kd-secret");
    assert_eq!(s["roles"][0]["members"], 1, "given values stay");
    assert_eq!(
        stored["metadata"]["finalizers"],
        json!([FINALIZER]),
        "the finalizer goes in at creation: the first reconcile need not write it"
    );

    // Finalizers of others stay; ours is not added twice, nor on update (the reconcile restores a
    // removed one), nor where this operator does not reconcile.
    let mut theirs = c.clone();
    theirs["metadata"]["finalizers"] = json!(["example.com/keep", FINALIZER]);
    let stored = admit(&w, "CREATE", NS, Some(&theirs), None).expect("accepted");
    assert_eq!(stored["metadata"]["finalizers"], json!(["example.com/keep", FINALIZER]));
    let mut without = stored.clone();
    without["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("finalizers");
    let updated = admit(&w, "UPDATE", NS, Some(&without), Some(&stored)).expect("accepted");
    assert_eq!(updated["metadata"].get("finalizers"), None);
    let mut elsewhere = w.clone();
    elsewhere.watch_namespace = Some("another".to_string());
    let stored = admit(&elsewhere, "CREATE", NS, Some(&c), None).expect("accepted");
    assert_eq!(
        stored["metadata"].get("finalizers"),
        None,
        "a finalizer nobody removes would keep the cluster forever"
    );

    let app = admit(&w, "CREATE", SYS, Some(&cases::app()), None).expect("app accepted");
    assert!(app["spec"].get("defaultImageRepoTag").is_none() && app["spec"].get("defaultPersistDirs").is_none());
    for role in app["spec"]["roles"].as_array().expect("roles") {
        assert_eq!(role["imageRepoTag"], "example.invalid/cassandra-like:4.1");
        assert_eq!(role["persistDirs"], json!(["/var/lib/cassandra", "/etc/cassandra"]));
        assert_eq!(
            role["configPackage"],
            Value::Null,
            "an explicit null default is kept as null"
        );
    }
}

#[test]
fn an_app_the_cache_has_not_seen_yet_is_read_live_and_admits_the_cluster() {
    use kubedirector::admission::lookups::app_missing;
    use kubedirector::admission::world::WithLookups;
    let app = cases::app();
    let name = app["metadata"]["name"].as_str().expect("app name").to_string();
    let cached = world();
    let lagging = Snapshot {
        apps: Vec::new(),
        ..world()
    };
    let mut cluster = cases::user_cluster("fresh", &name);
    cluster["metadata"]["namespace"] = json!(NS);
    let body = request("CREATE", NS, Some(&cluster), None);
    assert_eq!(app_missing(&body, &cached), None, "in the cache: nothing to ask");
    let (namespaces, missing) = app_missing(&body, &lagging).expect("not in the cache");
    assert_eq!(missing, name);
    let catalog = cluster["spec"]["appCatalog"].as_str();
    let expected: Vec<&str> = match catalog {
        Some("system") => vec![SYS],
        Some("local") => vec![NS],
        _ => vec![NS, SYS],
    };
    assert_eq!(namespaces, expected, "the catalogs the cluster may use ({catalog:?})");
    // From the lagging cache alone the cluster is refused; with the app read live, admitted.
    let answer = |w: &dyn kubedirector::admission::world::World| {
        review::handle(Phase::Validate, &body, "test", Some(w))
            .expect("answers")
            .response
            .expect("response")
    };
    let refused = answer(&lagging);
    assert!(
        !refused.allowed && refused.result.message.contains("not found"),
        "{}",
        refused.result.message
    );
    let live = WithLookups {
        inner: &lagging,
        lookups: None,
        configs: None,
        apps: vec![obj(&app, SYS)],
    };
    let admitted = answer(&live);
    assert!(admitted.allowed, "{}", admitted.result.message);
}

#[test]
fn bad_requests_get_clear_errors() {
    let w = world();
    for (body, fragment) in [
        (&b"{not json"[..], "not an AdmissionReview"),
        (&b""[..], "not an AdmissionReview"),
        (
            &br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#[..],
            "no request",
        ),
    ] {
        let e = review::handle(Phase::Validate, body, "test", Some(&w)).expect_err("refused");
        assert!(e.to_string().contains(fragment), "{e}");
        assert!(matches!(e, ReviewError::Malformed(_) | ReviewError::NoRequest));
    }
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
    let mut body: Value = serde_json::from_slice(&request("CREATE", NS, Some(&pod), None)).expect("json");
    body["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Pod"});
    let review = review::handle(Phase::Validate, body.to_string().as_bytes(), "test", Some(&w)).expect("answered");
    let response = review.response.expect("response");
    assert!(!response.allowed);
    assert!(
        response
            .result
            .message
            .contains("/v1 Pod is not handled by the kubedirector admission webhook (allowed: KubeDirectorApp")
    );
    // Caches not filled: refused with a reason, never waved through.
    let review = review::handle(
        Phase::Validate,
        &request("CREATE", NS, Some(&cases::cluster()), None),
        "kd-9",
        None,
    )
    .expect("answered");
    let message = review.response.expect("response").result.message;
    assert!(
        message.contains("member cluster \"kd-9\": the admission caches are not filled yet"),
        "{message}"
    );
}

#[test]
fn a_one_mebibyte_cluster_is_answered_with_a_bounded_message() {
    let mut c = cases::cluster();
    let role = c["spec"]["roles"][1].clone();
    let roles = c["spec"]["roles"].as_array_mut().expect("roles");
    for i in 0..4000 {
        let mut r = role.clone();
        r["id"] = json!(format!("extra-role-{i:05}-{}", "x".repeat(200)));
        roles.push(r);
    }
    let size = c.to_string().len();
    assert!(size >= 1 << 20, "object is {size} bytes");
    let message = admit(&world(), "CREATE", NS, Some(&c), None).expect_err("refused");
    assert!(
        message.contains("and 3980 more"),
        "{}",
        &message[message.len().saturating_sub(200)..]
    );
    assert!(message.len() < 16 * 1024, "message of {} bytes", message.len());
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-zA-Z0-9+./:-]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("1"),
            Just("2+"),
            Just("seed"),
            Just("node"),
            Just("4Gi"),
            Just("kd-local"),
            Just("cql")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z]{1,8}",
                    Just("roles".to_string()),
                    Just("id".to_string()),
                    Just("members".to_string()),
                    Just("app".to_string()),
                    Just("cardinality".to_string()),
                    Just("resources".to_string()),
                    Just("limits".to_string()),
                    Just("storage".to_string()),
                    Just("config".to_string()),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A base object with one subtree replaced by arbitrary JSON, so that most cases get past parsing.
fn arb_object() -> impl Strategy<Value = (Value, String, &'static str)> {
    let bases = prop_oneof![Just(Base::App), Just(Base::Cluster), Just(Base::Config)];
    let paths = prop_oneof![
        Just("/spec"),
        Just("/spec/roles"),
        Just("/spec/roles/0"),
        Just("/spec/roles/1/members"),
        Just("/spec/roles/0/resources"),
        Just("/spec/config"),
        Just("/spec/services"),
        Just("/spec/app"),
        Just("/metadata/name"),
    ];
    (
        bases,
        paths,
        arb_json(),
        prop::sample::select(vec!["CREATE", "UPDATE", "DELETE"]),
    )
        .prop_map(|(b, path, value, op)| {
            let mut obj = cases::base(b);
            if let Some(slot) = obj.pointer_mut(path) {
                *slot = value;
            }
            (obj, op.to_string(), path)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100_000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn no_input_makes_admission_panic((object, op, path) in arb_object(), (old, _, old_path) in arb_object()) {
        let w = world();
        let (new, old) = match op.as_str() {
            "CREATE" => (Some(&object), None),
            "UPDATE" => (Some(&object), Some(&old)),
            _ => (None, Some(&object)),
        };
        for phase in [Phase::Mutate, Phase::Validate] {
            let body = request(&op, NS, new, old);
            let review = review::handle(phase, &body, "fuzz", Some(&w));
            // Only object metadata of the wrong shape makes the review itself unreadable (an API
            // server never sends that); everything else is answered.
            let metadata_garbled = path == "/metadata/name" || (op == "UPDATE" && old_path == "/metadata/name");
            prop_assert!(review.is_ok() || metadata_garbled, "answered: {:?}", review.err());
        }
        // Raw bytes too: truncated reviews.
        let body = request(&op, NS, new, old);
        let _ = review::handle(Phase::Validate, &body[..body.len() / 2], "fuzz", Some(&w));
    }
}

/// The in-process benchmark (`make bench`): latency of whole reviews (parse, decide, serialise) for a
/// cluster create, an app create and a cluster update, against a baseline in the same run: only
/// parsing the same AdmissionReview. Figures are printed, not asserted (noisy machines).
#[test]
#[ignore = "benchmark: make bench"]
fn validation_latency_benchmark() {
    let w = world();
    let mut cluster = cases::cluster();
    cluster["metadata"]["namespace"] = json!(NS);
    let mut app = cases::app();
    app["metadata"]["namespace"] = json!(SYS);
    let mut changed = cluster.clone();
    changed["spec"]["roles"][1]["members"] = json!(4);
    let bodies = [
        (
            "cluster create",
            Phase::Validate,
            request("CREATE", NS, Some(&cluster), None),
        ),
        (
            "cluster create (mutate)",
            Phase::Mutate,
            request("CREATE", NS, Some(&cluster), None),
        ),
        ("app create", Phase::Validate, request("CREATE", SYS, Some(&app), None)),
        (
            "cluster update",
            Phase::Validate,
            request("UPDATE", NS, Some(&changed), Some(&cluster)),
        ),
    ];
    const N: usize = 20_000;
    println!("admission review latency, {N} reviews each (in-process, release build):");
    for (what, phase, body) in &bodies {
        let mut review_us = Vec::with_capacity(N);
        let mut parse_us = Vec::with_capacity(N);
        for _ in 0..N {
            let t = std::time::Instant::now();
            let parsed: Value = serde_json::from_slice(body).expect("json");
            std::hint::black_box(parsed);
            parse_us.push(t.elapsed().as_secs_f64() * 1e6);
            let t = std::time::Instant::now();
            let review = review::handle(*phase, body, "bench", Some(&w)).expect("answered");
            let out = serde_json::to_vec(&review).expect("serialised");
            std::hint::black_box(out);
            review_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let (p50, p99) = (common::quantile(&review_us, 0.5), common::quantile(&review_us, 0.99));
        let (b50, b99) = (common::quantile(&parse_us, 0.5), common::quantile(&parse_us, 0.99));
        println!(
            "  {what:<24} p50 {p50:7.1} µs  p99 {p99:7.1} µs  max {:8.1} µs | baseline (parse only) p50 {b50:6.1} µs p99 {b99:6.1} µs | ratio p50 {:.1}, p99 {:.1}",
            review_us[N - 1],
            p50 / b50,
            p99 / b99
        );
    }
}
