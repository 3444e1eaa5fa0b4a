//! The Helm chart on the real test bed: lint, a server-side dry run of everything it renders, an
//! install that waits for its replicas (kwok runs the pods as fakes), and its RBAC proven by running
//! the operator with a token of the chart's ServiceAccount — enough for the core reconcile, and a
//! clear permission error with one rule removed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::operator::Operator;
use crate::reconcile::{self, CLUSTER, create, example};
use crate::testbed;

const CONTEXT: &str = "kwok-kd-1";

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/kubedirector")
}

/// Runs a command to completion; (success, stdout, stderr).
fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {cmd:?} ({e}); the test bed's tools are on PATH under make integration")
        });
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

fn helm(args: &[&str]) -> (bool, String, String) {
    let kubeconfig = testbed::kubeconfig_path();
    let mut cmd = Command::new("helm");
    cmd.args(args).args([
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--kube-context",
        CONTEXT,
    ]);
    run(&mut cmd, None)
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let kubeconfig = testbed::kubeconfig_path();
    let mut cmd = Command::new("kubectl");
    cmd.args(["--kubeconfig", &kubeconfig.display().to_string(), "--context", CONTEXT])
        .args(args);
    run(&mut cmd, stdin)
}

/// `helm template` of `chart` as release `release` in `ns`, with `--set` values.
fn render(chart: &Path, release: &str, ns: &str, sets: &[&str]) -> String {
    let chart = chart.display().to_string();
    let mut args = vec!["template", release, chart.as_str(), "--namespace", ns];
    for s in sets {
        args.extend(["--set", s]);
    }
    let (ok, out, err) = helm(&args);
    assert!(ok, "helm template failed: {err}");
    out
}

/// The rendered documents of the given kinds, as one multi-document YAML.
fn only_kinds(rendered: &str, kinds: &[&str]) -> String {
    rendered
        .split("\n---")
        .filter(|doc| {
            doc.lines()
                .any(|l| kinds.iter().any(|k| l.trim_end() == format!("kind: {k}")))
        })
        .map(|doc| format!("---{doc}\n"))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Keeps the chart's webhook configurations away from every namespace of the shared test bed.
const NO_NAMESPACE: &str = "webhook.namespaceSelector.matchLabels.kd-never=match";

/// Applies the chart's ServiceAccount, RBAC and webhook configurations (release `release` in `ns`;
/// the configurations select no namespace) and returns a kubeconfig whose only identity is a token
/// of that ServiceAccount.
async fn chart_identity(chart: &Path, release: &str, ns: &str) -> PathBuf {
    let rbac = only_kinds(
        &render(chart, release, ns, &[NO_NAMESPACE]),
        &[
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ],
    );
    let (ok, _, err) = kubectl(&["apply", "-f", "-"], Some(&rbac));
    assert!(ok, "applying the chart's RBAC failed: {err}");
    let sa_name = format!("{release}-kubedirector");
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let client = testbed::client().await;
    let token = Api::<ServiceAccount>::namespaced(client, ns)
        .create_token_request(&sa_name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {sa_name}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("token");
    token_kubeconfig(&token, &format!("{release}.kubeconfig"))
}

/// A kubeconfig with the test bed's first cluster and nothing but `token` as identity (a client
/// certificate next to a token would authenticate as the certificate's admin).
fn token_kubeconfig(token: &str, file: &str) -> PathBuf {
    let kc = testbed::kubeconfig();
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == CONTEXT)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .expect("test-bed context");
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .expect("test-bed cluster");
    let doc = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": CONTEXT,
        "clusters": [serde_json::to_value(cluster).expect("cluster")],
        "users": [{"name": "chart-sa", "user": {"token": token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": cluster_name, "user": "chart-sa"}}],
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(file);
    std::fs::write(&path, serde_yaml::to_string(&doc).expect("yaml")).expect("write kubeconfig");
    path
}

/// The operator as the chart's ServiceAccount, as the chart runs it: sharded (the Lease Role) and
/// serving admission with the self-generated certificate (the Secret Role, the webhook
/// configurations rule, the Secret watch).
async fn operator_as(chart: PathBuf, ns: String, system_ns: String) -> Operator {
    let kubeconfig = chart_identity(&chart, &system_ns, &system_ns).await;
    let kubeconfig = kubeconfig.display().to_string();
    let webhook_addr = format!("127.0.0.1:{}", crate::operator::free_port());
    let release = format!("{system_ns}-kubedirector");
    let secret = format!("{release}-webhook-tls");
    Operator::start_with(
        &[
            "--kubeconfig",
            &kubeconfig,
            "--context",
            CONTEXT,
            "--watch-namespace",
            &ns,
            "--shards",
            "4",
            "--webhook-addr",
            &webhook_addr,
            "--webhook-host",
            "127.0.0.1",
            "--webhook-configuration",
            &release,
            "--webhook-secret",
            &secret,
        ],
        &ns,
        &system_ns,
    )
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn chart_lints_and_the_api_server_accepts_what_it_renders() {
    let chart = chart_dir().display().to_string();
    let (ok, out, err) = helm(&["lint", "--strict", &chart]);
    assert!(ok, "helm lint: {out}{err}");

    // Bad values are refused with the value named.
    for (set, fragment) in [
        ("replicaCount=0", "replicaCount"),
        ("podAntiAffinity=always", "podAntiAffinity"),
        ("shards=0", "shards: 0"),
        ("otlp.endpoint=jaeger:4318", "otlp"),
        ("flowControl.lendablePercent=101", "lendablePercent"),
        (
            "guest.configcliPackage.configMap=Bad_Name",
            "configcliPackage/configMap",
        ),
    ] {
        let (ok, out, err) = helm(&["template", "x", &chart, "--set", set]);
        assert!(!ok, "--set {set} was accepted:\n{out}");
        assert!(
            err.contains(fragment),
            "--set {set}: error does not name {fragment:?}: {err}"
        );
    }

    // Everything rendered (CRDs, multi-cluster Secret, tracing on) passes the real API server's
    // validation and admission in a server-side dry run.
    let client = testbed::client().await;
    let ns = testbed::namespace(&client, "chart-dry").await;
    let sets = [
        NO_NAMESPACE,
        "multiCluster.enabled=true",
        "multiCluster.kubeconfig=apiVersion: v1",
        "multiCluster.contexts={kwok-kd-1,kwok-kd-2}",
        "otlp.endpoint=http://jaeger:4318",
        "guest.configcliPackage.configMap=kd-configcli",
        "flowControl.enabled=true",
    ];
    let chart_path = chart_dir();
    let mut args = vec!["template", "dry", chart.as_str(), "--namespace", &ns, "--include-crds"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let (ok, rendered, err) = helm(&args);
    assert!(ok, "helm template: {err}");
    let (ok, out, err) = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
    assert!(ok, "server-side dry run refused the chart: {err}");
    for object in [
        "deployment.apps/dry-kubedirector",
        "clusterrole.rbac.authorization.k8s.io/dry-kubedirector",
        "role.rbac.authorization.k8s.io/dry-kubedirector-shards",
        "poddisruptionbudget.policy/dry-kubedirector",
        "secret/dry-kubedirector-kubeconfig",
        "service/dry-kubedirector-metrics",
        "service/dry-kubedirector-webhook",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/dry-kubedirector",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/dry-kubedirector",
        "customresourcedefinition.apiextensions.k8s.io/kubedirectorclusters.kubedirector.hpe.com",
        "flowschema.flowcontrol.apiserver.k8s.io/dry-kubedirector",
        "prioritylevelconfiguration.flowcontrol.apiserver.k8s.io/dry-kubedirector",
    ] {
        assert!(out.contains(object), "{object} missing from the dry run:\n{out}");
    }
    assert_eq!(chart_path.join("crds").read_dir().map(|d| d.count()).unwrap_or(0), 4);

    // With cert-manager (whose CRDs the test bed lacks: rendered only): a Certificate for the
    // webhook Service, its Secret mounted, the CA injected into both configurations.
    let rendered = render(&chart_path, "cm", &ns, &["webhook.certManager.enabled=true"]);
    for fragment in [
        "kind: Certificate",
        "kind: Issuer",
        "secretName: cm-kubedirector-webhook-tls",
        "KD_WEBHOOK_CERT_DIR",
    ] {
        assert!(rendered.contains(fragment), "{fragment} missing with cert-manager");
    }
    assert_eq!(rendered.matches("cert-manager.io/inject-ca-from").count(), 2);
    assert!(
        !rendered.contains("mutatingwebhookconfigurations"),
        "no CA-patching rule with cert-manager"
    );
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn chart_installs_three_replicas_and_waits_until_they_are_ready() {
    let client = testbed::client().await;
    let ns = testbed::unique("chart-install");
    let chart = chart_dir().display().to_string();
    let (ok, out, err) = helm(&[
        "install",
        "kd",
        &chart,
        "--namespace",
        &ns,
        "--create-namespace",
        "--wait",
        "--timeout",
        "180s",
        // The replicas are kwok fakes that serve nothing: their webhook must select no namespace.
        "--set",
        NO_NAMESPACE,
    ]);
    assert!(ok, "helm install --wait failed: {out}{err}");
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("kd-kubedirector")
        .await
        .expect("Deployment");
    let status = deployment.status.expect("status");
    assert_eq!(status.ready_replicas, Some(3), "three ready replicas");
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .get("kd-kubedirector")
        .await
        .expect("PodDisruptionBudget (replicas > 1)");
    assert_eq!(
        pdb.spec.and_then(|s| s.max_unavailable),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let (ok, out, err) = helm(&["status", "kd", "--namespace", &ns]);
    assert!(ok && out.contains("deployed"), "helm status: {out}{err}");
    let (ok, _, err) = helm(&["uninstall", "kd", "--namespace", &ns, "--wait", "--timeout", "120s"]);
    assert!(ok, "helm uninstall: {err}");
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn the_charts_rbac_is_enough_for_the_core_reconcile() {
    let env = reconcile::setup_with("chart-rbac", 6, |ns, system_ns| operator_as(chart_dir(), ns, system_ns)).await;
    reconcile::contract_case(&env).await;
    // The webhook started with the chart's permissions: its certificate Secret exists and its CA is
    // in both of the chart's webhook configurations.
    let client = testbed::client().await;
    let release = format!("{}-kubedirector", env.system_ns);
    let secret = Api::<Secret>::namespaced(client.clone(), &env.system_ns)
        .get(&format!("{release}-webhook-tls"))
        .await
        .expect("self-generated webhook certificate Secret");
    let ca = secret
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .expect("ca.crt")
        .clone();
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(&release)
        .await
        .expect("mutating configuration");
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(&release)
        .await
        .expect("validating configuration");
    assert!(
        mutating
            .webhooks
            .iter()
            .flatten()
            .all(|w| w.client_config.ca_bundle.as_ref() == Some(&ca))
    );
    assert!(
        validating
            .webhooks
            .iter()
            .flatten()
            .all(|w| w.client_config.ca_bundle.as_ref() == Some(&ca))
    );
    let log = std::fs::read_to_string(&env.operator.log).unwrap_or_default();
    assert!(
        !log.contains("forbidden"),
        "a permission error in {}",
        env.operator.log.display()
    );
    for kind in ["mutatingwebhookconfiguration", "validatingwebhookconfiguration"] {
        let _ = kubectl(&["delete", kind, &release, "--ignore-not-found"], None);
    }
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn a_missing_rbac_rule_fails_with_a_clear_permission_error() {
    // A copy of the chart without the rule that lets the operator write StatefulSets.
    let copy = std::env::temp_dir().join(testbed::unique("chart-norule"));
    copy_dir(&chart_dir(), &copy);
    let rbac_path = copy.join("templates/rbac.yaml");
    let rbac = std::fs::read_to_string(&rbac_path).expect("rbac.yaml");
    let removed = r#"resources: ["statefulsets"], verbs: ["create", "patch", "delete"]"#;
    let kept: Vec<&str> = rbac.lines().filter(|l| !l.contains(removed)).collect();
    assert_eq!(kept.len() + 1, rbac.lines().count(), "exactly one rule removed");
    std::fs::write(&rbac_path, kept.join("\n") + "\n").expect("write rbac.yaml");

    let env = reconcile::setup_with("chart-norule", 0, |ns, system_ns| {
        operator_as(copy.clone(), ns, system_ns)
    })
    .await;
    let mut cluster = example(CLUSTER);
    cluster["spec"]["roles"]
        .as_array_mut()
        .expect("roles")
        .iter_mut()
        .for_each(|r| {
            r.as_object_mut().expect("role").remove("storage");
        });
    let client = testbed::client().await;
    create(&client, &env.ns, &cluster).await;
    let log = env.operator.log.clone();
    let found = testbed::wait_for(
        "the permission error in the operator log",
        Duration::from_secs(60),
        async {
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(line) = text.lines().find(|l| l.contains("permission denied")) {
                    return line.to_string();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    )
    .await;
    assert!(
        found.contains(r#"cannot patch resource \"statefulsets\""#)
            || found.contains(r#"cannot patch resource "statefulsets""#),
        "the error names the verb and resource: {found}"
    );
    assert!(found.contains("RBAC"), "the error says what to fix: {found}");
    let _ = std::fs::remove_dir_all(&copy);
}
