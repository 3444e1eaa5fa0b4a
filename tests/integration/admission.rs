//! Admission through the real API server: the operator serves the webhook on loopback (self-generated
//! certificate, CA patched into URL-based webhook configurations scoped to the test's namespaces),
//! and every case of tests/fixtures/admission/cases.yaml is sent as a real create/update/delete.
//! Also: two replicas (the refusal comes from one that never reconciled the cluster, and right after
//! its restart), and bad requests straight to the HTTPS endpoint.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

#[path = "../common/admission.rs"]
pub mod cases;

use crate::operator::{Operator, free_port};
use crate::testbed;
use cases::{Base, Case, Op};

pub struct Bed {
    pub client: Client,
    /// The cases' objects: not reconciled by anyone (their PVCs would take other tests' volumes).
    pub ns: String,
    /// The webhook replica's watch namespace: kd-global-config governs the clusters here.
    pub managed: String,
    pub sys: String,
    port: u16,
    configuration: String,
}

async fn label_namespace(client: &Client, ns: &str, id: &str) {
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"kd-admission-test": id}}})),
        )
        .await
        .expect("label namespace");
}

/// Namespaces, storage, a Secret, and webhook configurations pointing at 127.0.0.1:`port` for the
/// test's namespaces only (other tests share the API server).
pub async fn bed(purpose: &str) -> Bed {
    let client = testbed::client().await;
    testbed::install_crds(&client).await;
    let ns = testbed::namespace(&client, purpose).await;
    let sys = testbed::namespace(&client, &format!("{purpose}-sys")).await;
    let managed = testbed::namespace(&client, &format!("{purpose}-managed")).await;
    let id = ns.clone();
    for n in [&ns, &sys, &managed] {
        label_namespace(&client, n, &id).await;
    }
    testbed::kd_local_storage_class(&client).await;
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "kd-secret"}, "stringData": {"k": "v"}})).expect("secret");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    // Claims for the volumeProjections cases (never bound: only their modes count).
    let claims = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    for (name, modes, mode) in [
        ("kd-shared-rwx", vec!["ReadWriteMany"], "Filesystem"),
        ("kd-rwo", vec!["ReadWriteOnce"], "Filesystem"),
        ("kd-block", vec!["ReadWriteMany"], "Block"),
    ] {
        let claim = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"accessModes": modes, "volumeMode": mode, "storageClassName": "kd-none",
                     "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .expect("claim");
        claims.create(&PostParams::default(), &claim).await.expect("claim");
    }
    let port = free_port();
    let configuration = format!("kd-admission-{ns}");
    let hook = |name: &str, path: &str, ops: Vec<&str>, resources: Vec<&str>| {
        json!({
            "name": name,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/{path}")},
            "rules": [{"apiGroups": ["kubedirector.hpe.com"], "apiVersions": ["v1beta1"], "operations": ops,
                       "resources": resources, "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kd-admission-test": id}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 10
        })
    };
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": configuration},
        "webhooks": [hook("mutate.kubedirector.hpe.com", "mutate", vec!["CREATE", "UPDATE"], vec!["kubedirectorapps", "kubedirectorclusters", "kubedirectorconfigs"])]
    }))
    .expect("mutating");
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": configuration},
        "webhooks": [hook("validate.kubedirector.hpe.com", "validate", vec!["CREATE", "UPDATE", "DELETE"],
                          vec!["kubedirectorapps", "kubedirectorclusters", "kubedirectorconfigs"])]
    }))
    .expect("validating");
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mutating)
        .await
        .expect("mutating configuration");
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &validating)
        .await
        .expect("validating configuration");
    Bed {
        client,
        ns,
        managed,
        sys,
        port,
        configuration,
    }
}

impl Bed {
    /// An operator replica serving the webhook; it reconciles the clusters of `watch`.
    pub fn webhook_replica(&self, watch: &str, log: &str) -> Operator {
        let addr = format!("127.0.0.1:{}", self.port);
        let secret = format!("webhook-tls-{}", self.ns);
        Operator::start_with(
            &[
                "--context",
                "kwok-kd-1",
                "--watch-namespace",
                watch,
                "--webhook-addr",
                &addr,
                "--webhook-host",
                "127.0.0.1",
                "--webhook-configuration",
                &self.configuration,
                "--webhook-secret",
                &secret,
            ],
            log,
            &self.sys,
        )
    }

    pub fn api(&self, kind: &str, ns: &str) -> Api<DynamicObject> {
        testbed::kd_api(&self.client, ns, kind)
    }

    pub async fn create(&self, ns: &str, obj: &Value) -> Result<DynamicObject, String> {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let dynamic: DynamicObject = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
        self.api(&kind, ns)
            .create(&PostParams::default(), &dynamic)
            .await
            .map_err(|e| e.to_string())
    }

    /// Creates a cluster using an app created just before, once: the webhook reads an app its cache
    /// has not seen yet from the API server (`admission::lookups::app_missing`; before that, CI saw
    /// "not found" milliseconds after the app's create).
    pub async fn create_user(&self, ns: &str, obj: &Value) -> Result<DynamicObject, String> {
        self.create(ns, obj).await
    }

    pub async fn patch(&self, kind: &str, ns: &str, name: &str, ops: &[Value]) -> Result<DynamicObject, String> {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).map_err(|e| e.to_string())?;
        self.api(kind, ns)
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn delete(&self, kind: &str, ns: &str, name: &str, dry_run: bool) -> Result<(), String> {
        let params = DeleteParams {
            dry_run,
            ..DeleteParams::default()
        };
        self.api(kind, ns)
            .delete(name, &params)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())?;
        // kd-global-config carries the cleanup finalizer (removed by the operator): a delete
        // completes a moment later, and the singleton's next create must not find it still there.
        if kind == "KubeDirectorConfig" && !dry_run {
            testbed::wait_for("kd-global-config gone", Duration::from_secs(30), async {
                while self.api(kind, ns).get_opt(name).await.ok().flatten().is_some() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
        }
        Ok(())
    }

    /// Until the webhook answers with the CA in place: creating the two catalog apps (through the
    /// webhook) succeeds.
    pub async fn wait_ready(&self, operator: &Operator) {
        let what = format!(
            "the webhook to admit the catalog apps (log: {})",
            operator.log.display()
        );
        testbed::wait_for(&what, Duration::from_secs(90), async {
            for app in [cases::app(), cases::app_min()] {
                loop {
                    match self.create(&self.sys, &app).await {
                        // The API server may call the validating configuration a moment before the
                        // mutating one (each is picked up on its own): not ready yet, try again.
                        Ok(stored) if stored.data["spec"].get("defaultImageRepoTag").is_some() => {
                            let name = stored.metadata.name.clone().unwrap_or_default();
                            let _ = self.delete("KubeDirectorApp", &self.sys, &name, false).await;
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        Ok(_) => break,
                        Err(e) if e.contains("AlreadyExists") || e.contains("already exists") => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                    }
                }
            }
        })
        .await;
    }

    pub async fn cleanup(&self) {
        let _ = Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .delete(&self.configuration, &DeleteParams::default())
            .await;
        let _ = Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
            .delete(&self.configuration, &DeleteParams::default())
            .await;
    }
}

fn kind(b: Base) -> &'static str {
    match b {
        Base::App => "KubeDirectorApp",
        Base::Cluster => "KubeDirectorCluster",
        Base::Config => "KubeDirectorConfig",
    }
}

fn named(mut v: Value, name: &str) -> Value {
    if v["kind"] != "KubeDirectorConfig" {
        v["metadata"]["name"] = json!(name);
    }
    v
}

/// Runs one case against the API server; returns the failures.
async fn run_case(bed: &Bed, i: usize, case: &Case) -> Vec<String> {
    let mut failures = Vec::new();
    let home = if case.base == Base::Cluster { &bed.ns } else { &bed.sys };
    let invalid_ns = if case.namespace.as_deref() == Some("watched") {
        &bed.ns
    } else {
        home
    };
    let k = kind(case.base);
    // Unique per run: "system" apps are matched by name, and earlier runs' objects may remain.
    let tag = bed.ns.rsplit('-').next().unwrap_or("x");
    let name = format!("c{tag}-case{i}");
    let ok_name = format!("c{tag}-case{i}-ok");
    let mut refused = |outcome: Result<(), String>, what: &str| match outcome {
        Ok(()) => failures.push(format!("{}: {what} was accepted", case.name)),
        Err(m) if !m.contains(&case.expect) => failures.push(format!(
            "{}: {what}: message lacks {:?}:\n    {m}",
            case.name, case.expect
        )),
        Err(_) => {}
    };
    let base = named(cases::base(case.base), &name);
    match case.op {
        Op::Create => {
            let invalid = cases::patched(&base, &case.invalid);
            refused(bed.create(invalid_ns, &invalid).await.map(|_| ()), "the invalid object");
            let valid = named(cases::patched(&base, &case.valid), &ok_name);
            if let Err(m) = bed.create(home, &valid).await {
                failures.push(format!("{}: the valid counterpart was refused: {m}", case.name));
            } else if case.base == Base::Config {
                // The singleton must go before the next config case (no clusters exist yet).
                let n = valid["metadata"]["name"].as_str().unwrap_or_default().to_string();
                if let Err(m) = bed.delete(k, home, &n, false).await {
                    failures.push(format!("{}: deleting the valid config: {m}", case.name));
                }
            }
        }
        Op::Update => {
            let stored = bed.create(home, &base).await;
            if let Err(m) = stored {
                return vec![format!("{}: the base was refused: {m}", case.name)];
            }
            if case.using {
                let user = cases::user_cluster(&format!("c{tag}-user{i}"), &name);
                if let Err(m) = bed.create_user(&bed.ns, &user).await {
                    return vec![format!("{}: the user cluster was refused: {m}", case.name)];
                }
            }
            refused(
                bed.patch(k, home, &name, &case.invalid).await.map(|_| ()),
                "the invalid update",
            );
            if let Err(m) = bed.patch(k, home, &name, &case.valid).await {
                failures.push(format!("{}: the valid update was refused: {m}", case.name));
            }
        }
        Op::Delete => {
            let target = base["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if let Err(m) = bed.create(home, &base).await {
                return vec![format!("{}: the base was refused: {m}", case.name)];
            }
            let user = format!("c{tag}-user{i}");
            // An app's user may be anywhere; kd-global-config's must be a cluster the replica manages
            // (reconciled, so without storage: no volume claims).
            let (user_ns, user_of) = match case.base {
                Base::App => (&bed.ns, name.clone()),
                _ => (&bed.managed, "cassandra-like".to_string()),
            };
            let mut user_obj = cases::user_cluster(&user, &user_of);
            for role in user_obj["spec"]["roles"].as_array_mut().into_iter().flatten() {
                if let Some(r) = role.as_object_mut() {
                    r.remove("storage");
                }
            }
            if let Err(m) = bed.create_user(user_ns, &user_obj).await {
                return vec![format!("{}: the user cluster was refused: {m}", case.name)];
            }
            refused(bed.delete(k, home, &target, false).await, "the delete while in use");
            // Counterpart: the same delete once nothing uses it.
            let _ = bed.delete("KubeDirectorCluster", user_ns, &user, false).await;
            let gone = testbed::wait_for("the user cluster to be gone", Duration::from_secs(60), async {
                while bed
                    .api("KubeDirectorCluster", user_ns)
                    .get_opt(&user)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            gone.await;
            if let Err(m) = bed.delete(k, home, &target, false).await {
                failures.push(format!("{}: the delete without users was refused: {m}", case.name));
            }
        }
    }
    failures
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn every_invalid_object_is_refused_by_the_api_server_through_the_webhook() {
    let bed = bed("admission").await;
    let operator = bed.webhook_replica(&bed.managed, &bed.ns);
    bed.wait_ready(&operator).await;
    let mut all: Vec<(usize, Case)> = cases::cases().into_iter().enumerate().collect();
    // kd-global-config cases first: their valid counterparts are deleted again, which needs a
    // namespace without clusters.
    all.sort_by_key(|(i, c)| (c.base != Base::Config, *i));
    let mut failures = Vec::new();
    for (i, case) in &all {
        failures.extend(run_case(&bed, *i, case).await);
    }
    bed.cleanup().await;
    assert!(
        failures.is_empty(),
        "{} of {} cases failed (operator log: {}):\n{}",
        failures.len(),
        all.len(),
        operator.log.display(),
        failures.join("\n")
    );
    println!(
        "admission: {} invalid objects refused with their message, {} counterparts accepted ({} decided from API lookups)",
        all.len(),
        all.len(),
        all.iter().filter(|(_, c)| c.api).count()
    );
}

fn curl(port: u16, path: &str, body: &str) -> (String, String) {
    let file = std::env::temp_dir().join(format!("kd-adm-{port}-{}.json", body.len()));
    std::fs::write(&file, body).expect("body file");
    let out = Command::new("curl")
        .args([
            "-sk",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_string(), body.to_string())
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn an_app_in_use_is_protected_by_a_replica_that_never_reconciled_it_also_after_a_restart() {
    let bed = bed("adm-two").await;
    let client = bed.client.clone();
    let elsewhere = testbed::namespace(&client, "adm-two-other").await;
    // Replica B serves the webhook and reconciles only an empty namespace; replica A reconciles.
    let mut b = bed.webhook_replica(&elsewhere, &format!("{}-b", bed.ns));
    bed.wait_ready(&b).await;
    let _a = Operator::start("kwok-kd-1", &bed.ns, &bed.sys);
    // Without storage, so that its members run without volumes to bind.
    let mut user = cases::user_cluster("user", "cassandra-like");
    for role in user["spec"]["roles"].as_array_mut().expect("roles") {
        role.as_object_mut().expect("role").remove("storage");
    }
    bed.create(&bed.ns, &user).await.expect("cluster admitted");
    let configured = |c: Option<&DynamicObject>| c.is_some_and(|c| c.data["status"]["state"] == "configured");
    testbed::wait_for("replica A to configure the cluster", Duration::from_secs(60), async {
        kube::runtime::wait::await_condition(bed.api("KubeDirectorCluster", &bed.ns), "user", configured).await
    })
    .await
    .expect("watch");

    for round in ["running", "just restarted"] {
        // Right after a restart B refuses (caches not filled yet) or refuses for the right reason;
        // it never lets the change through. Dry runs, so a wrong "yes" deletes nothing.
        let verdict = testbed::wait_for("B's verdict on deleting the app", Duration::from_secs(60), async {
            loop {
                match bed.delete("KubeDirectorApp", &bed.sys, "cassandra-like", true).await {
                    Ok(()) => return Err(format!("{round}: the delete of an app in use was allowed")),
                    // Other tests' clusters on this API server may count too (their system catalog
                    // is another namespace, but "system" means one namespace per operator).
                    Err(m) if m.contains("the app is used by") => return Ok(m),
                    Err(m)
                        if m.contains("admission caches are not filled yet")
                            || m.contains("failed calling webhook") =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(m) => return Err(format!("{round}: unexpected refusal: {m}")),
                }
            }
        })
        .await;
        let message = verdict.unwrap_or_else(|e| panic!("{e}"));
        assert!(message.contains("/user"), "names the clusters using it: {message}");
        let change = bed
            .patch(
                "KubeDirectorApp",
                &bed.sys,
                "cassandra-like",
                &[json!({"op": "replace", "path": "/spec/version", "value": "9"})],
            )
            .await;
        let refusal = change.expect_err("a change of an app in use is refused");
        assert!(refusal.contains("cannot be changed while they exist"), "{refusal}");
        if round == "running" {
            b.kill();
            b.restart();
        }
    }

    // Bad requests straight to the endpoint: clear errors, and the replica keeps serving.
    let (code, body) = curl(bed.port, "/validate", "{not json");
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("not an AdmissionReview"), "{body}");
    let (code, body) = curl(bed.port, "/nowhere", "{}");
    assert_eq!(code, "404", "{body}");
    let unknown = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"},
        "name": "p", "namespace": bed.ns, "operation": "CREATE", "userInfo": {}, "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}}});
    let (code, body) = curl(bed.port, "/validate", &unknown.to_string());
    assert_eq!(code, "200", "{body}");
    assert!(
        body.contains("Pod is not handled by the kubedirector admission webhook"),
        "{body}"
    );
    let mut big = cases::cluster();
    big["metadata"]["annotations"] = json!({"padding": "x".repeat(1 << 20)});
    big["metadata"]["namespace"] = json!(bed.ns);
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "2", "kind": {"group": "kubedirector.hpe.com", "version": "v1beta1", "kind": "KubeDirectorCluster"},
        "resource": {"group": "kubedirector.hpe.com", "version": "v1beta1", "resource": "kubedirectorclusters"},
        "name": "cass", "namespace": bed.ns, "operation": "CREATE", "userInfo": {}, "object": big}});
    let (code, body) = curl(bed.port, "/validate", &review.to_string());
    assert_eq!(
        code,
        "200",
        "a 1 MiB object is answered: {}",
        &body[..body.len().min(300)]
    );
    assert!(body.contains("\"allowed\":true"), "{}", &body[..body.len().min(300)]);
    let (code, body) = curl(bed.port, "/validate", &"x".repeat(9 << 20));
    assert_eq!(code, "413", "{}", &body[..body.len().min(300)]);
    assert!(
        b.metrics().contains("kubedirector"),
        "replica B still serves after bad requests"
    );
    bed.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn secret_keys_are_stored_only_encrypted_under_a_generated_master_key() {
    use kubedirector::model::secretkeys;
    let bed = bed("adm-sk").await;
    let operator = bed.webhook_replica(&bed.managed, &bed.ns);
    bed.wait_ready(&operator).await;

    // kd-global-config without a key gets one (64 hex digits) and KubeDirector's defaults.
    let config = json!({"apiVersion": "kubedirector.hpe.com/v1beta1", "kind": "KubeDirectorConfig",
                        "metadata": {"name": "kd-global-config"}, "spec": {}});
    let stored = bed.create(&bed.sys, &config).await.expect("kd-global-config admitted");
    let spec = &stored.data["spec"];
    let key = spec["masterEncryptionKey"].as_str().unwrap_or_default().to_string();
    assert!(key.len() == 64 && hex::decode(&key).is_ok(), "generated key: {spec}");
    assert_eq!(spec["defaultServiceType"], "LoadBalancer");
    assert_eq!(spec["clusterSvcDomainBase"], ".svc.cluster.local");
    assert_eq!(spec["defaultNamingScheme"], "UID");
    assert_eq!(
        (
            spec["nativeSystemdSupport"].clone(),
            spec["backupClusterStatus"].clone()
        ),
        (json!(false), json!(false))
    );

    // A plaintext secret key is stored only sealed, and opens to the plaintext under that key.
    let mut cluster = cases::user_cluster("sk", "cassandra-like");
    for role in cluster["spec"]["roles"].as_array_mut().expect("roles") {
        role.as_object_mut().expect("role").remove("storage");
    }
    cluster["spec"]["roles"][0]["secretKeys"] = json!([{"name": "password", "value": "hunter2"}]);
    let stored = bed.create(&bed.managed, &cluster).await.expect("cluster admitted");
    let keys = &stored.data["spec"]["roles"][0]["secretKeys"];
    assert!(keys[0].get("value").is_none(), "plaintext stored: {keys}");
    let sealed = keys[0]["encryptedValue"].as_str().unwrap_or_default().to_string();
    assert_eq!(secretkeys::decrypt(&key, &sealed).as_deref(), Ok("hunter2"));
    // What the members' configmeta gets: the plaintext, from the stored objects.
    let typed: kubedirector::api::KubeDirectorCluster =
        serde_json::from_value(serde_json::to_value(&stored).expect("json")).expect("typed");
    let settings_config: kubedirector::api::KubeDirectorConfig = serde_json::from_value(
        serde_json::to_value(
            bed.api("KubeDirectorConfig", &bed.sys)
                .get("kd-global-config")
                .await
                .expect("config"),
        )
        .expect("json"),
    )
    .expect("typed config");
    let settings = kubedirector::model::settings::Settings::from_config(Some(&settings_config.spec));
    let opened = kubedirector::model::plan::secret_keys(&typed.spec, &settings);
    assert_eq!(opened["seed"]["password"], "hunter2");

    // A sealed value set by hand (here: one made for this key, but not this cluster's) is refused;
    // the stored one kept beside another change is fine.
    let foreign = secretkeys::encrypt(&key, [3; secretkeys::NONCE_LEN], "stolen").expect("seal");
    let hand = json!([{"op": "replace", "path": "/spec/roles/0/secretKeys/0", "value": {"name": "password", "encryptedValue": foreign}}]);
    let refused = bed
        .patch("KubeDirectorCluster", &bed.managed, "sk", hand.as_array().expect("ops"))
        .await;
    let message = refused.err().unwrap_or_default();
    assert!(
        message.contains("spec.roles[0].secretKeys[0].encryptedValue") && message.contains("cannot be set by hand"),
        "{message}"
    );
    // (As in KubeDirector, a role's secretKeys do not change while it has members.)
    let other = json!([{"op": "replace", "path": "/spec/roles/1/members", "value": 3}]);
    let stored = bed
        .patch(
            "KubeDirectorCluster",
            &bed.managed,
            "sk",
            other.as_array().expect("ops"),
        )
        .await
        .expect("expand admitted");
    let keys = &stored.data["spec"]["roles"][0]["secretKeys"];
    assert_eq!(
        keys[0]["encryptedValue"].as_str(),
        Some(sealed.as_str()),
        "the key stays as sealed"
    );
    assert!(keys[0].get("value").is_none());

    // The key: another AES size is fine in form, a bad one is refused, and no change while in use.
    let set_key = |k: String| vec![json!({"op": "replace", "path": "/spec/masterEncryptionKey", "value": k})];
    let bad = bed
        .patch(
            "KubeDirectorConfig",
            &bed.sys,
            "kd-global-config",
            &set_key("abc".into()),
        )
        .await;
    let message = bad.err().unwrap_or_default();
    assert!(
        message.contains("spec.masterEncryptionKey") && message.contains("16-, 24- or 32-byte"),
        "{message}"
    );
    let in_use = bed
        .patch(
            "KubeDirectorConfig",
            &bed.sys,
            "kd-global-config",
            &set_key(hex::encode([5u8; 24])),
        )
        .await;
    let message = in_use.err().unwrap_or_default();
    assert!(
        message.contains("cannot change while KubeDirectorCluster") && message.contains("/sk"),
        "{message}"
    );
    bed.delete("KubeDirectorCluster", &bed.managed, "sk", false)
        .await
        .expect("delete cluster");
    testbed::wait_for("the cluster gone", Duration::from_secs(60), async {
        while bed
            .api("KubeDirectorCluster", &bed.managed)
            .get_opt("sk")
            .await
            .ok()
            .flatten()
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    testbed::wait_for(
        "the key change accepted once no cluster uses it",
        Duration::from_secs(30),
        async {
            while bed
                .patch(
                    "KubeDirectorConfig",
                    &bed.sys,
                    "kd-global-config",
                    &set_key(hex::encode([5u8; 24])),
                )
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    )
    .await;
    let _ = bed
        .delete("KubeDirectorConfig", &bed.sys, "kd-global-config", false)
        .await;
    bed.cleanup().await;
}

/// The caBundle of every webhook of the configuration, if all have one.
async fn ca_bundles(client: &Client, name: &str) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let m = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(name)
        .await
        .ok()
        .flatten();
    let v = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get_opt(name)
        .await
        .ok()
        .flatten();
    let m = m
        .and_then(|c| c.webhooks?.first()?.client_config.ca_bundle.clone())
        .map(|b| b.0);
    let v = v
        .and_then(|c| c.webhooks?.first()?.client_config.ca_bundle.clone())
        .map(|b| b.0);
    (m, v)
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn a_webhook_configuration_recreated_or_replaced_without_the_ca_gets_it_back() {
    let bed = bed("adm-ca").await;
    let operator = bed.webhook_replica(&bed.managed, &bed.ns);
    bed.wait_ready(&operator).await;
    let (Some(ca), Some(_)) = ca_bundles(&bed.client, &bed.configuration).await else {
        panic!("the CA was not injected at start");
    };
    let mutating = Api::<MutatingWebhookConfiguration>::all(bed.client.clone());
    let validating = Api::<ValidatingWebhookConfiguration>::all(bed.client.clone());

    // Re-created without it (as `kubectl apply` of the manifests after a delete would).
    let mut m = mutating.get(&bed.configuration).await.expect("mutating");
    m.metadata = kube::api::ObjectMeta {
        name: m.metadata.name.clone(),
        ..Default::default()
    };
    m.webhooks
        .iter_mut()
        .flatten()
        .for_each(|w| w.client_config.ca_bundle = None);
    mutating
        .delete(&bed.configuration, &DeleteParams::default())
        .await
        .expect("delete");
    mutating
        .create(&PostParams::default(), &m)
        .await
        .expect("re-create without the CA");
    // Replaced without it (a GitOps re-sync).
    let mut v = validating.get(&bed.configuration).await.expect("validating");
    v.webhooks
        .iter_mut()
        .flatten()
        .for_each(|w| w.client_config.ca_bundle = None);
    validating
        .replace(&bed.configuration, &PostParams::default(), &v)
        .await
        .expect("replace without the CA");

    let started = std::time::Instant::now();
    testbed::wait_for("the CA injected again", Duration::from_secs(30), async {
        loop {
            if ca_bundles(&bed.client, &bed.configuration).await == (Some(ca.clone()), Some(ca.clone())) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    println!("webhook CA re-injected in {:?}", started.elapsed());
    // And the webhook answers through both again: an invalid app is refused with our message.
    let mut app = cases::app();
    app["metadata"]["name"] = json!("dup");
    app["spec"]["roles"]
        .as_array_mut()
        .expect("roles")
        .push(json!({"id": "seed", "cardinality": "1"}));
    let refused = bed.create(&bed.sys, &app).await.err().unwrap_or_default();
    assert!(refused.contains("appears more than once"), "{refused}");
    bed.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn a_file_injection_url_must_answer_within_the_webhooks_time() {
    let bed = bed("adm-url").await;
    let operator = bed.webhook_replica(&bed.managed, &bed.ns);
    bed.wait_ready(&operator).await;
    // One that answers, one that accepts the connection and never answers.
    let answers = crate::http::serve("x=1\n");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let with_url = |name: &str, url: String| {
        let mut c = cases::cluster();
        c["metadata"]["name"] = json!(name);
        c["spec"]["roles"][0]["fileInjections"] = json!([{"srcURL": url, "destDir": "/etc/app"}]);
        c
    };
    bed.create(
        &bed.ns,
        &with_url("answers", format!("http://127.0.0.1:{answers}/app.conf")),
    )
    .await
    .expect("a reachable URL is admitted");
    let started = std::time::Instant::now();
    let refused = bed
        .create(
            &bed.ns,
            &with_url("silent", format!("http://127.0.0.1:{silent_port}/app.conf")),
        )
        .await
        .err()
        .unwrap_or_default();
    let took = started.elapsed();
    assert!(
        refused.contains("spec.roles[0].fileInjections[0].srcURL") && refused.contains("no answer within 3s"),
        "{refused}"
    );
    println!("a silent srcURL was refused after {took:?} (webhook timeout 10 s)");
    assert!(took < Duration::from_secs(10), "{took:?}");
    drop(silent);
    bed.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn a_cluster_created_through_the_webhook_costs_its_children_and_one_status_write() {
    use crate::fleet::sum_metric;
    let bed = bed("adm-writes").await;
    let operator = bed.webhook_replica(&bed.managed, &bed.ns);
    bed.wait_ready(&operator).await;
    let mut cluster = cases::user_cluster("w", "cassandra-like");
    for role in cluster["spec"]["roles"].as_array_mut().expect("roles") {
        role.as_object_mut().expect("role").remove("storage");
    }
    let stored = bed.create(&bed.managed, &cluster).await.expect("cluster admitted");
    assert_eq!(
        stored.metadata.finalizers,
        Some(vec![kubedirector::model::labels::FINALIZER.to_string()]),
        "the finalizer is in from the create"
    );
    let api = bed.api("KubeDirectorCluster", &bed.managed);
    testbed::wait_for("w configured", Duration::from_secs(90), async {
        loop {
            let c = api.get("w").await.expect("get w");
            if c.data["status"]["state"] == "configured" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    let selector = format!("{}=w", kubedirector::model::labels::CLUSTER);
    let lp = kube::api::ListParams::default().labels(&selector);
    let sts = Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(bed.client.clone(), &bed.managed)
        .list(&lp)
        .await
        .expect("statefulsets")
        .items
        .len();
    let svcs = Api::<k8s_openapi::api::core::v1::Service>::namespaced(bed.client.clone(), &bed.managed)
        .list(&lp)
        .await
        .expect("services")
        .items
        .len();
    // Settle: a reconcile after the status write must not write again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = operator.metrics();
    let verb = |v: &str| {
        sum_metric(
            &metrics,
            "kubedirector_api_writes_total",
            &[("verb", v), ("outcome", "ok")],
        )
    };
    assert!(sts > 0 && svcs > 0, "children: {sts} StatefulSets, {svcs} Services");
    assert_eq!(verb("apply"), (sts + svcs) as f64, "one apply per child");
    assert_eq!(verb("update_status"), 1.0, "one status write, at configured");
    assert_eq!(verb("patch"), 0.0, "no finalizer patch");
    assert_eq!(verb("event"), 0.0, "no Event by default for a cluster that came up");
}
