//! Facts an admission decision needs that no cache holds, fetched from the API server for the one
//! request before the (pure) decision: whether a role's `serviceAccountName` exists and the
//! requesting user may use it (a SubjectAccessReview, as KubeDirector does), the claims its
//! `volumeProjections` name, and whether the Secrets it names exist. Only a KubeDirectorCluster
//! create or spec update asks for them. (Secrets are asked, not watched: a watch of every Secret of
//! every namespace would cost each replica memory in proportion to the whole cluster's Secrets, for
//! a check made once per create.)

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, ServiceAccount};
use kube::api::{DynamicObject, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use kube::{Api, Client};

use crate::api::KubeDirectorCluster;
use crate::model::catalog::parse;

/// What the API server said about one service account for the requesting user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Account {
    Missing,
    /// The user may not use it: the authorizer's reason.
    Denied(String),
    Allowed,
}

/// A claim a role projects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub block: bool,
    pub access_modes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lookups {
    pub accounts: BTreeMap<(String, String), Account>,
    /// `None`: the claim does not exist.
    pub claims: BTreeMap<(String, String), Option<Claim>>,
    /// fileInjections' http(s) srcURLs that did not answer a HEAD, with why.
    pub unreachable: BTreeMap<String, String>,
    /// Whether each Secret the cluster names exists.
    pub secrets: BTreeMap<(String, String), bool>,
}

/// How long one srcURL may take to answer a HEAD; all are asked at once, so a request waits at
/// most this long for them (well inside the webhook's timeout).
pub const URL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// What to look up for this request (empty for anything but a cluster create or spec change).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Needs {
    pub namespace: String,
    pub accounts: Vec<String>,
    pub claims: Vec<String>,
    /// http(s) srcURLs of fileInjections (`file://` ones are paths inside the member).
    pub urls: Vec<String>,
    /// Secrets named by `defaultSecret` and the roles' `secret`.
    pub secrets: Vec<String>,
    pub user: UserInfo,
    /// kd-global-config as it is now (not as cached): the cluster has secret keys, which its key
    /// seals and opens (in either phase).
    pub config: bool,
}

impl Needs {
    /// Whether there is anything to ask the API server besides kd-global-config.
    pub fn has_lookups(&self) -> bool {
        !(self.accounts.is_empty() && self.claims.is_empty() && self.urls.is_empty() && self.secrets.is_empty())
    }
}

/// The cluster of a create or spec change of a KubeDirectorCluster, with the request.
fn changed_cluster(body: &[u8]) -> Option<(AdmissionRequest<DynamicObject>, KubeDirectorCluster)> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).ok()?;
    let req: AdmissionRequest<DynamicObject> = review.try_into().ok()?;
    if req.kind.kind != "KubeDirectorCluster" || !matches!(req.operation, Operation::Create | Operation::Update) {
        return None;
    }
    let new = req.object.as_ref()?;
    let unchanged = req
        .old_object
        .as_ref()
        .is_some_and(|o| o.data.get("spec") == new.data.get("spec"));
    if unchanged {
        return None;
    }
    let cluster = parse::<KubeDirectorCluster>(new).ok()?;
    Some((req, cluster))
}

/// The app a cluster create or spec change names, where `world`'s caches do not have it in any
/// catalog the cluster may use: (namespaces to ask, app name). A KubeDirectorApp created a moment
/// before the cluster may not be in the cache yet (seen in CI: "not found" milliseconds after the
/// app's create), so before refusing, the API server is asked.
pub fn app_missing(body: &[u8], world: &dyn super::world::World) -> Option<(Vec<String>, String)> {
    use crate::api::cluster::AppCatalog;
    let (req, cluster) = changed_cluster(body)?;
    let ns = req.namespace.clone().unwrap_or_default();
    let system = world.operator_namespace().to_string();
    let app = cluster.spec.app;
    let candidates = match cluster.spec.app_catalog {
        Some(AppCatalog::Local) => vec![ns],
        Some(AppCatalog::System) => vec![system],
        None => vec![ns, system],
    };
    let cached = candidates.iter().any(|n| world.app(n, &app).is_some());
    (!cached && !app.is_empty()).then_some((candidates, app))
}

/// The KubeDirectorApp `app` as the API server has it now, in each of `namespaces` it exists in.
pub async fn live_apps(
    client: &Client,
    namespaces: &[String],
    app: &str,
) -> Result<Vec<std::sync::Arc<DynamicObject>>, kube::Error> {
    let ar = kube::api::ApiResource::erase::<crate::api::KubeDirectorApp>(&());
    let mut out = Vec::new();
    for ns in namespaces {
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
        out.extend(api.get_opt(app).await?.map(std::sync::Arc::new));
    }
    Ok(out)
}

/// kd-global-config as the API server has it now (a list of it, or empty).
pub async fn live_config(
    client: &Client,
    operator_namespace: &str,
) -> Result<Vec<std::sync::Arc<DynamicObject>>, kube::Error> {
    let ar = kube::api::ApiResource::erase::<crate::api::KubeDirectorConfig>(&());
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), operator_namespace, &ar);
    let found = api.get_opt(crate::api::config::GLOBAL_CONFIG_NAME).await?;
    Ok(found.into_iter().map(std::sync::Arc::new).collect())
}

/// Reads what a review of `body` will need from the API server (the service accounts, claims and
/// URLs only when `validating`); `None` when nothing (or unreadable: the decision reports that).
pub fn needs(validating: bool, body: &[u8]) -> Option<Needs> {
    let (req, cluster) = changed_cluster(body)?;
    let mut needs = Needs {
        namespace: req.namespace.clone().unwrap_or_default(),
        user: req.user_info.clone(),
        config: cluster.spec.roles.iter().any(|r| !r.secret_keys.is_empty()),
        ..Default::default()
    };
    let roles = if validating { cluster.spec.roles.as_slice() } else { &[] };
    let default_secret = cluster.spec.default_secret.iter().filter(|_| validating);
    for secret in default_secret.chain(roles.iter().filter_map(|r| r.secret.as_ref())) {
        if !secret.name.is_empty() && !needs.secrets.contains(&secret.name) {
            needs.secrets.push(secret.name.clone());
        }
    }
    for role in roles {
        if let Some(sa) = role.service_account_name.as_ref().filter(|s| !s.is_empty())
            && !needs.accounts.contains(sa)
        {
            needs.accounts.push(sa.clone());
        }
        for p in &role.volume_projections {
            if !p.pvc_name.is_empty() && !needs.claims.contains(&p.pvc_name) {
                needs.claims.push(p.pvc_name.clone());
            }
        }
        for f in &role.file_injections {
            let web = f.src_url.starts_with("http://") || f.src_url.starts_with("https://");
            if web && !needs.urls.contains(&f.src_url) {
                needs.urls.push(f.src_url.clone());
            }
        }
    }
    (needs.config || needs.has_lookups()).then_some(needs)
}

/// Asks the API server.
pub async fn fetch(client: &Client, needs: &Needs) -> Result<Lookups, kube::Error> {
    let ns = &needs.namespace;
    let mut out = Lookups::default();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    for name in &needs.accounts {
        let verdict = if accounts.get_opt(name).await?.is_none() {
            Account::Missing
        } else {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: needs.user.username.clone(),
                    groups: needs.user.groups.clone(),
                    uid: needs.user.uid.clone(),
                    extra: needs.user.extra.clone(),
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(ns.clone()),
                        verb: Some("get".into()),
                        resource: Some("serviceaccounts".into()),
                        name: Some(name.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = reviews.create(&PostParams::default(), &review).await?;
            match answer.status {
                Some(s) if s.allowed => Account::Allowed,
                Some(s) => Account::Denied(s.reason.unwrap_or_else(|| "not allowed".into())),
                None => Account::Denied("no answer from the authorizer".into()),
            }
        };
        out.accounts.insert((ns.clone(), name.clone()), verdict);
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    for name in &needs.claims {
        let claim = claims.get_opt(name).await?.map(|c| {
            let spec = c.spec.unwrap_or_default();
            Claim {
                block: spec.volume_mode.as_deref() == Some("Block"),
                access_modes: spec.access_modes.unwrap_or_default(),
            }
        });
        out.claims.insert((ns.clone(), name.clone()), claim);
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for name in &needs.secrets {
        let found = secrets.get_metadata_opt(name).await?.is_some();
        out.secrets.insert((ns.clone(), name.clone()), found);
    }
    out.unreachable = unreachable(&needs.urls).await;
    Ok(out)
}

/// HEADs every URL at once, each bounded by `URL_TIMEOUT`; as KubeDirector checks them, only a URL
/// that cannot be reached counts (any HTTP answer, even an error status, is an answer).
async fn unreachable(urls: &[String]) -> BTreeMap<String, String> {
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;
    if urls.is_empty() {
        return BTreeMap::new();
    }
    let connector = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(tokio_rustls::rustls::crypto::ring::default_provider())
    {
        Ok(b) => b.https_or_http().enable_http1().build(),
        Err(e) => {
            let why = format!("no CA certificates to check https with: {e}");
            return urls.iter().map(|u| (u.clone(), why.clone())).collect();
        }
    };
    let client: HttpClient<_, http_body_util::Empty<bytes::Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build(connector);
    let asks = urls.iter().map(|url| {
        let client = client.clone();
        async move {
            let request = hyper::Request::head(url.as_str()).body(http_body_util::Empty::new());
            let outcome = match request {
                Err(e) => Err(format!("not a usable URL: {e}")),
                Ok(request) => match tokio::time::timeout(URL_TIMEOUT, client.request(request)).await {
                    Err(_) => Err(format!("no answer within {URL_TIMEOUT:?}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(_)) => Ok(()),
                },
            };
            (url.clone(), outcome)
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(url, outcome)| outcome.err().map(|why| (url, why)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(spec: serde_json::Value) -> Vec<u8> {
        let cluster = json!({
            "apiVersion": "kubedirector.hpe.com/v1beta1", "kind": "KubeDirectorCluster",
            "metadata": {"name": "c", "namespace": "ns"}, "spec": spec,
        });
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "1", "kind": {"group": "kubedirector.hpe.com", "version": "v1beta1", "kind": "KubeDirectorCluster"},
                "resource": {"group": "kubedirector.hpe.com", "version": "v1beta1", "resource": "kubedirectorclusters"},
                "name": "c", "namespace": "ns", "operation": "CREATE", "userInfo": {"username": "u"},
                "object": cluster,
            }
        }))
        .expect("review")
    }

    #[test]
    fn the_secrets_a_cluster_names_are_asked_once_each_when_validating() {
        let body = create(json!({
            "app": "a",
            "defaultSecret": {"name": "s1", "mountPath": "/s"},
            "roles": [
                {"id": "r", "resources": {}, "secret": {"name": "s2", "mountPath": "/s"}},
                {"id": "q", "resources": {}, "secret": {"name": "s1", "mountPath": "/s"}},
                {"id": "p", "resources": {}}
            ]
        }));
        let needs = needs(true, &body).expect("something to ask");
        assert_eq!(needs.secrets, ["s1", "s2"]);
        assert!(needs.has_lookups());
        // The mutating phase judges no Secret, so it asks for none.
        assert!(needs_none_or_no_secrets(false, &body));
        // A cluster naming no Secret asks for none either.
        let plain = create(json!({"app": "a", "roles": [{"id": "r", "resources": {}}]}));
        assert!(needs_none_or_no_secrets(true, &plain));
    }

    fn needs_none_or_no_secrets(validating: bool, body: &[u8]) -> bool {
        needs(validating, body).is_none_or(|n| n.secrets.is_empty())
    }
}
