//! `--admission`: the operator's webhook, as the chart deploys it, in the path of every
//! KubeDirector object of the run. The configurations call a local replica on 127.0.0.1 (the bed's
//! API servers run on this machine); the operator generates its certificate and injects the CA.
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use kube::api::{DeleteParams, DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// The name of both configurations (and the operator's `--webhook-configuration`).
pub const CONFIGURATION: &str = "kd-loadtest-admission";
/// The Secret the operator keeps its generated CA and certificate in (system namespace).
pub const SECRET: &str = "kd-loadtest-webhook-tls";

/// Where replica slot 0 serves the webhook.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub port: u16,
}

impl Webhook {
    /// The operator flags that serve it.
    pub fn args(&self) -> Vec<String> {
        [
            "--webhook-addr",
            &format!("127.0.0.1:{}", self.port),
            "--webhook-host",
            "127.0.0.1",
            "--webhook-configuration",
            CONFIGURATION,
            "--webhook-secret",
            SECRET,
        ]
        .map(str::to_string)
        .to_vec()
    }
}

/// The two configurations for the KubeDirector objects of namespace `ns`, as the chart's (fail
/// closed), but calling `https://127.0.0.1:<port>`. Any left from an earlier run are replaced.
pub fn configurations(ns: &str, port: u16) -> (Value, Value) {
    let hook = |name: &str, path: &str, ops: &[&str]| {
        json!({
            "name": name,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/{path}")},
            "rules": [{"apiGroups": ["kubedirector.hpe.com"], "apiVersions": ["v1beta1"], "operations": ops,
                       "resources": ["kubedirectorapps", "kubedirectorclusters", "kubedirectorconfigs"],
                       "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 10
        })
    };
    let mutating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION},
        "webhooks": [hook("mutate.kubedirector.hpe.com", "mutate", &["CREATE", "UPDATE"])]
    });
    let validating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION},
        "webhooks": [hook("validate.kubedirector.hpe.com", "validate", &["CREATE", "UPDATE", "DELETE"])]
    });
    (mutating, validating)
}

/// Creates both configurations (deleting any of the same name first: the operator injects the CA
/// into what it finds, and an old caBundle would not match its new certificate).
pub async fn install(client: &Client, ns: &str, port: u16) -> anyhow::Result<()> {
    remove(client).await;
    let (m, v) = configurations(ns, port);
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(m)?)
        .await
        .context("creating the MutatingWebhookConfiguration")?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(v)?)
        .await
        .context("creating the ValidatingWebhookConfiguration")?;
    Ok(())
}

/// Deletes both configurations (best effort: a bed torn down takes them anyway).
pub async fn remove(client: &Client) {
    let dp = DeleteParams::default();
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(CONFIGURATION, &dp)
        .await;
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(CONFIGURATION, &dp)
        .await;
}

/// Waits until the API server calls the webhook: a dry-run create of `cr` comes back with the
/// finalizer the mutating webhook adds. Until the CA is injected and the server listens, the dry
/// run is refused (fail closed) or, for a moment, admitted without the mutation.
pub async fn wait_serving(client: &Client, ns: &str, cr: &Value, limit: Duration) -> anyhow::Result<()> {
    let api = crate::prepare::kd_api(client, ns, "KubeDirectorCluster");
    let probe: DynamicObject = serde_json::from_value(cr.clone())?;
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = Instant::now() + limit;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match api.create(&pp, &probe).await {
            Ok(o) if o.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty()) => return Ok(()),
            Ok(_) => last = "admitted without the mutating webhook's finalizer".to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    anyhow::bail!("--admission: the webhook did not serve within {limit:?} (last: {last})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_call_the_local_port_for_the_runs_namespace_and_fail_closed() {
        let (m, v) = configurations("kd-loadtest", 41234);
        let mh = &m["webhooks"][0];
        assert_eq!(mh["clientConfig"]["url"], "https://127.0.0.1:41234/mutate");
        assert_eq!(
            v["webhooks"][0]["clientConfig"]["url"],
            "https://127.0.0.1:41234/validate"
        );
        assert_eq!(
            mh["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "kd-loadtest"
        );
        assert_eq!(mh["failurePolicy"], "Fail");
        assert_eq!(
            v["webhooks"][0]["rules"][0]["operations"],
            json!(["CREATE", "UPDATE", "DELETE"])
        );
        // Both parse as the typed objects the API server takes.
        serde_json::from_value::<MutatingWebhookConfiguration>(m).expect("mutating");
        serde_json::from_value::<ValidatingWebhookConfiguration>(v).expect("validating");
        let args = Webhook { port: 41234 }.args();
        assert_eq!(args[..2], ["--webhook-addr", "127.0.0.1:41234"]);
        assert!(args.windows(2).any(|w| w == ["--webhook-configuration", CONFIGURATION]));
    }
}
