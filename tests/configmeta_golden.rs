//! configmeta.json key for key against documents KubeDirector's own generator wrote
//! (`../shared/kubedirector/configmeta/`, five cases with their inputs), and the secret-key vectors
//! of `../shared/kubedirector/secretkeys.json`. Where a golden document shows an upstream bug that
//! we correct, the test says so and checks the corrected value.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use kubedirector::api::cluster::AppCatalog;
use kubedirector::api::{KubeDirectorApp, KubeDirectorCluster, KubeDirectorConfig};
use kubedirector::model::catalog::{ResolvedApp, resolve_app};
use kubedirector::model::configmeta::{self, Connected};
use kubedirector::model::plan::secret_keys;
use kubedirector::model::secretkeys;
use kubedirector::model::settings::Settings;

fn dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../shared/kubedirector/configmeta/{case}"))
}

fn read(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn app_of(v: &Value) -> ResolvedApp {
    let app: KubeDirectorApp = serde_json::from_value(v.clone()).expect("app");
    let name = app.metadata.name.clone().expect("name");
    resolve_app(&name, AppCatalog::System, &app.spec).expect("resolves")
}

/// The connected objects of the `connections` case, in the order the spec names them.
fn connected(case: &str, cluster: &KubeDirectorCluster, settings: &Settings) -> Value {
    let path = dir(case).join("connections.json");
    if !path.exists() {
        return kubedirector::model::connections::empty();
    }
    let objects = read(path);
    let find = |kind: &str, name: &str| {
        objects[kind]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["metadata"]["name"] == name)
            .cloned()
    };
    let strings = |v: &Value| -> Option<BTreeMap<String, String>> { serde_json::from_value(v.clone()).ok() };
    let spec = cluster.spec.connections.clone().unwrap_or_default();
    let mut found = Vec::new();
    for name in &spec.clusters {
        let obj = find("kubedirectorclusters", name).expect("connected cluster");
        let other: KubeDirectorCluster = serde_json::from_value(obj).expect("cluster");
        let app = app_of(&find("kubedirectorapps", &other.spec.app).expect("its app"));
        let status = other.status.clone().expect("status");
        let (no_conn, no_keys) = (json!({}), BTreeMap::new());
        let uid = other.metadata.uid.clone().expect("uid");
        let c = configmeta::Cluster {
            name,
            namespace: "demo-ns",
            uid: &uid,
            headless_service: &status.cluster_service,
            spec: &other.spec,
            app: &app,
            roles: &status.roles,
            connections: &no_conn,
            domain_base: &settings.svc_domain_base,
            secret_keys: &no_keys,
        };
        found.push(Connected::Cluster {
            name: name.clone(),
            doc: configmeta::for_cluster(&c, name),
        });
    }
    for name in &spec.configmaps {
        let cm = find("configmaps", name).expect("configmap");
        let labels = strings(&cm["metadata"]["labels"]);
        let Some(type_) = labels
            .as_ref()
            .and_then(|l| l.get("kubedirector.hpe.com/cmType"))
            .cloned()
        else {
            continue;
        };
        let entry = configmeta::configmap_entry(
            name,
            labels.as_ref(),
            strings(&cm["metadata"]["annotations"]).as_ref(),
            strings(&cm["data"]).as_ref(),
        );
        found.push(Connected::ConfigMap { type_, entry });
    }
    for name in &spec.secrets {
        let s = find("secrets", name).expect("secret");
        let labels = strings(&s["metadata"]["labels"]);
        let Some(type_) = labels
            .as_ref()
            .and_then(|l| l.get("kubedirector.hpe.com/secretType"))
            .cloned()
        else {
            continue;
        };
        let entry = configmeta::secret_entry(
            name,
            labels.as_ref(),
            strings(&s["metadata"]["annotations"]).as_ref(),
            strings(&s["data"]).as_ref(),
        );
        found.push(Connected::Secret { type_, entry });
    }
    configmeta::connections(found)
}

/// Upstream's connected-cluster bug (`genClusterConnections` aliasing its loop variable): a role's
/// last member is listed once per member. Checks the golden document has it, and returns the
/// document with the correct lists, which is what we write.
fn corrected(mut golden: Value, cluster: &str, role: &str, members: &[(&str, &str)]) -> Value {
    let r = &mut golden["connections"]["clusters"][cluster]["nodegroups"]["1"]["roles"][role];
    let last = members.last().expect("members");
    assert!(
        r["fqdns"]
            .as_array()
            .is_some_and(|f| f.len() == members.len() && f.iter().all(|x| x == last.0)),
        "the golden document repeats the last member: {}",
        r["fqdns"]
    );
    let fqdns: Vec<&str> = members.iter().map(|m| m.0).collect();
    r["fqdns"] = json!(fqdns);
    r["hostnames"] = json!(fqdns);
    r["node_ids"] = json!(members.iter().map(|m| m.1).collect::<Vec<_>>());
    r["fqdn_mappings"] = json!(members.iter().map(|m| (m.0, m.1)).collect::<BTreeMap<_, _>>());
    for svc in r["services"].as_object_mut().expect("services").values_mut() {
        let endpoints: Vec<String> = svc["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .zip(&fqdns)
            .map(|(e, f)| e.as_str().expect("endpoint").replace(last.0, f))
            .collect();
        svc["endpoints"] = json!(endpoints);
    }
    golden
}

#[test]
fn configmeta_equals_kubedirectors_for_every_golden_case() {
    let mut compared = 0;
    for case in ["spark-like", "authtoken", "connections", "secretkeys", "block-devices"] {
        let app = app_of(&read(dir(case).join("app.json")));
        let cluster: KubeDirectorCluster =
            serde_json::from_value(read(dir(case).join("cluster.json"))).expect("cluster");
        let config = dir(case).join("config.json");
        let settings = if config.exists() {
            let c: KubeDirectorConfig = serde_json::from_value(read(config)).expect("config");
            Settings::from_config(Some(&c.spec))
        } else {
            Settings::default()
        };
        let status = cluster.status.clone().expect("status");
        let connections = connected(case, &cluster, &settings);
        let keys = secret_keys(&cluster.spec, &settings);
        let name = cluster.metadata.name.clone().expect("name");
        let uid = cluster.metadata.uid.clone().expect("uid");
        let c = configmeta::Cluster {
            name: &name,
            namespace: "demo-ns",
            uid: &uid,
            headless_service: &status.cluster_service,
            spec: &cluster.spec,
            app: &app,
            roles: &status.roles,
            connections: &connections,
            domain_base: &settings.svc_domain_base,
            secret_keys: &keys,
        };
        for m in status.roles.iter().flat_map(|r| &r.members) {
            let mut golden = read(dir(case).join(format!("configmeta-{}.json", m.pod)));
            if case == "connections" {
                let base = "cassandra-peerq7w2x.demo-ns.svc.cluster.local";
                golden = corrected(
                    golden,
                    "cassandra-peer",
                    "seed",
                    &[
                        (&format!("cassandra-peer-seed-k2v9s-0.{base}"), "1"),
                        (&format!("cassandra-peer-seed-k2v9s-1.{base}"), "2"),
                    ],
                );
            }
            let ours = configmeta::for_member(&c, &m.pod).expect("a member");
            let mut diff = Vec::new();
            differences(&golden, &ours, "", &mut diff);
            assert!(diff.is_empty(), "{case} {}: {diff:#?}", m.pod);
            compared += 1;
        }
    }
    assert_eq!(compared, 16, "every golden document");
}

fn differences(want: &Value, got: &Value, path: &str, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for k in w.keys().chain(g.keys().filter(|k| !w.contains_key(*k))) {
                let p = format!("{path}.{k}");
                match (w.get(k), g.get(k)) {
                    (Some(wv), Some(gv)) => differences(wv, gv, &p, out),
                    (Some(_), None) => out.push(format!("{p}: missing")),
                    (None, Some(gv)) => out.push(format!("{p}: extra {gv}")),
                    (None, None) => {}
                }
            }
        }
        (w, g) if w == g => {}
        (w, g) => out.push(format!("{path}: want {w}, got {g}")),
    }
}

#[test]
fn secret_keys_kubedirector_encrypted_decrypt_to_their_plaintexts() {
    let vectors = read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/kubedirector/secretkeys.json"));
    let key = vectors["masterEncryptionKey"].as_str().expect("key");
    let cases = vectors["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 3);
    for case in cases {
        let plain = secretkeys::decrypt(key, case["encryptedValue"].as_str().expect("value")).expect("decrypts");
        assert_eq!(plain, case["plaintext"].as_str().expect("plaintext"));
    }
}

/// Members of roles with a `hasAuthToken` service get a token once (kept in status, different per
/// member and per salt), carried on their Service as KubeDirector's annotation and in configmeta.
#[test]
fn auth_tokens_are_made_once_per_member_and_kept() {
    use kubedirector::model::members::Observed;
    use kubedirector::model::plan::{ClusterInput, plan_cluster};
    use kubedirector::model::validate::StorageClasses;
    let app = app_of(&read(dir("authtoken").join("app.json")));
    let mut cluster: KubeDirectorCluster =
        serde_json::from_value(read(dir("authtoken").join("cluster.json"))).expect("cluster");
    cluster.status = None;
    let (settings, connections) = (Settings::default(), kubedirector::model::connections::empty());
    let classes = StorageClasses::default();
    let plan = |prev: Option<&kubedirector::api::cluster::KubeDirectorClusterStatus>, salt: &str| {
        plan_cluster(&ClusterInput {
            name: "training-environment",
            namespace: "demo-ns",
            uid: "u-1",
            generation: Some(1),
            spec: &cluster.spec,
            prev,
            app: &app,
            settings: &settings,
            classes: &classes,
            observed: &Observed::default(),
            connections: &connections,
            now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
            token_salt: salt,
        })
    };
    let first = plan(None, "salt-a");
    let tokens: Vec<String> = first
        .status
        .roles
        .iter()
        .flat_map(|r| &r.members)
        .map(|m| m.auth_token.clone().expect("a token"))
        .collect();
    assert_eq!(tokens.len(), 3);
    assert!(
        tokens
            .iter()
            .all(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
    );
    assert_eq!(
        tokens.iter().collect::<std::collections::BTreeSet<_>>().len(),
        3,
        "one per member"
    );
    for m in first.status.roles.iter().flat_map(|r| &r.members) {
        let svc = first
            .member_services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(m.service.as_str()))
            .expect("member Service");
        let annotation = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubedirector.hpe.com/kd-auth-token"));
        assert_eq!(annotation, m.auth_token.as_ref());
    }
    // Recorded, they are kept, whatever the next salt; a new salt makes other tokens.
    let again = plan(Some(&first.status), "salt-b");
    let kept: Vec<String> = again
        .status
        .roles
        .iter()
        .flat_map(|r| &r.members)
        .filter_map(|m| m.auth_token.clone())
        .collect();
    assert_eq!(kept, tokens);
    let other = plan(None, "salt-b");
    assert_ne!(
        other.status.roles[0].members[0].auth_token,
        first.status.roles[0].members[0].auth_token
    );
}
