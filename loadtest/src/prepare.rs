//! Each member cluster before a run: CRDs, namespaces, the loadtest app, and (where writes are
//! audited) the operator's ServiceAccount and a kubeconfig with its tokens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

use crate::audit::{OPERATOR_NAMESPACE, OPERATOR_SA};

const MANAGER: &str = "kd-loadtest";

pub async fn client(kubeconfig: &Path, context: &str) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let options = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kc, &options)
        .await
        .with_context(|| format!("context {context}"))?;
    Ok(Client::try_from(config)?)
}

async fn apply<K>(api: &Api<K>, name: &str, obj: &Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
        .await
        .with_context(|| format!("applying {name}"))?;
    Ok(())
}

pub fn kd_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(kubedirector::api::GROUP, kubedirector::api::VERSION, kind);
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

/// CRDs (from the operator's types), namespaces, and the app in the system namespace.
pub async fn cluster(client: &Client, namespaces: &[&str], system: &str, app: &Value) -> anyhow::Result<()> {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for (_, crd) in kubedirector::api::crds() {
        let name = crd.metadata.name.clone().context("CRD without name")?;
        apply(&crds, &name, &serde_json::to_value(&crd)?).await?;
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not established in 60 s"))??;
    }
    let ns_api = Api::<Namespace>::all(client.clone());
    for ns in namespaces.iter().chain([&system]) {
        apply(
            &ns_api,
            ns,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await?;
    }
    let name = app["metadata"]["name"].as_str().context("app name")?;
    let api = kd_api(client, system, "KubeDirectorApp");
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(app))
        .await
        .context("creating the loadtest app")?;
    Ok(())
}

/// The operator's ServiceAccount, bound to cluster-admin (least privilege is the Helm chart's job),
/// and a token for it valid for `hours`.
pub async fn operator_token(client: &Client, hours: i64) -> anyhow::Result<String> {
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), OPERATOR_NAMESPACE);
    apply(
        &sa,
        OPERATOR_SA,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}}),
    )
    .await?;
    let crb = Api::<ClusterRoleBinding>::all(client.clone());
    apply(
        &crb,
        "kd-loadtest-operator",
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "kd-loadtest-operator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}]
        }),
    )
    .await?;
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(hours * 3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let tr = sa
        .create_token_request(OPERATOR_SA, &PostParams::default(), &req)
        .await
        .context("TokenRequest for the operator's ServiceAccount")?;
    tr.status.and_then(|s| s.token).context("TokenRequest without a token")
}

/// A copy of `kubeconfig` whose contexts authenticate with the given tokens (same context names).
pub fn token_kubeconfig(kubeconfig: &Path, tokens: &[(String, String)], out: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(kubeconfig)?;
    let mut kc: Value = serde_yaml::from_str(&text)?;
    let mut users = Vec::new();
    for (context, token) in tokens {
        let user = format!("kd-operator@{context}");
        users.push(json!({"name": user, "user": {"token": token}}));
        let ctxs = kc["contexts"].as_array_mut().context("kubeconfig without contexts")?;
        let c = ctxs
            .iter_mut()
            .find(|c| c["name"] == context.as_str())
            .with_context(|| format!("context {context} not in {}", kubeconfig.display()))?;
        c["context"]["user"] = json!(user);
    }
    kc["users"] = Value::Array(users);
    std::fs::write(out, serde_yaml::to_string(&kc)?)?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_kubeconfig_swaps_only_the_users() {
        let dir = std::env::temp_dir().join(format!("kd-lt-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let src = dir.join("in");
        std::fs::write(
            &src,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c1\n  cluster: {server: 'https://127.0.0.1:1'}\ncontexts:\n- name: a\n  context: {cluster: c1, user: admin}\nusers:\n- name: admin\n  user: {client-certificate-data: eA==}\ncurrent-context: a\n",
        )
        .expect("write");
        let out = token_kubeconfig(&src, &[("a".into(), "tok".into())], &dir.join("out")).expect("kubeconfig");
        let kc = Kubeconfig::read_from(&out).expect("valid kubeconfig");
        assert_eq!(
            kc.contexts[0].context.as_ref().map(|c| c.user.clone()),
            Some(Some("kd-operator@a".into()))
        );
        assert_eq!(kc.auth_infos.len(), 1);
        assert_eq!(kc.clusters[0].name, "c1");
        let e = token_kubeconfig(&src, &[("b".into(), "t".into())], &dir.join("out2")).expect_err("unknown context");
        assert!(e.to_string().contains("context b"), "{e}");
    }
}
