//! The HTTPS admission endpoint. Paths: `/mutate` and `/validate` answer for the home cluster;
//! `/mutate/<context>` and `/validate/<context>` for any member cluster (each member's webhook
//! configuration points at its own path). Bodies above 8 MiB are refused (the API server sends at
//! most ~3 MiB objects, twice for updates).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kube::Client;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::caches::{Caches, WithLiveClusters, Worlds};
use super::lookups::Needs;
use super::review::{self, Phase};
use super::tls::{self, FileCert, FixedCert, TlsError};
use super::world::{WithLookups, World};

pub const MAX_BODY: usize = 8 << 20;

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// `tls.crt` and `tls.key` in this directory (a mounted Secret, e.g. from cert-manager).
    Dir(PathBuf),
    /// Generated once and kept in Secret `secret` of the operator namespace (home cluster); its CA
    /// is written into the webhook configurations named in `configurations`.
    SelfSigned {
        secret: String,
        hosts: Vec<String>,
        configurations: Vec<String>,
    },
}

#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub addr: SocketAddr,
    pub cert: CertSource,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("webhook certificate: {0}")]
    Tls(#[from] TlsError),
    #[error("binding the webhook address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Prepares the certificate, binds and serves until the returned task is aborted.
pub async fn serve(
    options: WebhookOptions,
    worlds: Arc<Worlds>,
    home: Client,
    operator_namespace: &str,
) -> Result<JoinHandle<()>, ServeError> {
    let mut injector: Option<futures::future::BoxFuture<'static, ()>> = None;
    let resolver: Arc<dyn tokio_rustls::rustls::server::ResolvesServerCert> = match &options.cert {
        CertSource::Dir(dir) => Arc::new(FileCert::load(dir)?),
        CertSource::SelfSigned {
            secret,
            hosts,
            configurations,
        } => {
            let (pair, ca) = tls::shared_certificate(&home, operator_namespace, secret, hosts).await?;
            for name in configurations {
                let n = tls::patch_ca_bundle(&home, name, &ca).await?;
                if n == 0 {
                    warn!(configuration = %name, "no Mutating/ValidatingWebhookConfiguration of that name yet: the CA goes in when it appears");
                }
            }
            injector = Some(Box::pin(tls::keep_ca_injected(
                home.clone(),
                configurations.clone(),
                ca,
            )));
            Arc::new(FixedCert(tls::certified_key(
                &pair,
                &format!("Secret {operator_namespace}/{secret}"),
            )?))
        }
    };
    let acceptor = TlsAcceptor::from(tls::server_config(resolver));
    let listener = TcpListener::bind(options.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: options.addr,
            source,
        })?;
    info!(addr = %options.addr, "serving admission (/mutate, /validate)");
    // The CA injector lives and ends with the accept loop (one task, aborted together).
    let injector = injector.unwrap_or_else(|| Box::pin(futures::future::pending()));
    let accept = async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "webhook accept failed");
                    continue;
                }
            };
            let (acceptor, worlds) = (acceptor.clone(), worlds.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        debug!(%peer, error = %e, "webhook TLS handshake failed");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req| {
                    let worlds = worlds.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(req, &worlds).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    debug!(%peer, error = %e, "webhook connection ended with an error");
                }
            });
        }
    };
    Ok(tokio::spawn(async move {
        tokio::join!(accept, injector);
    }))
}

fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(message + "\n")));
    *r.status_mut() = status;
    r
}

/// Phase and member cluster of a path; `None` for unknown paths.
pub fn route(path: &str, home: Option<String>) -> Option<(Phase, Option<String>)> {
    let mut parts = path.trim_matches('/').splitn(2, '/');
    let phase = match parts.next()? {
        "mutate" => Phase::Mutate,
        "validate" => Phase::Validate,
        _ => return None,
    };
    let context = match parts.next() {
        Some(c) if !c.is_empty() => Some(c.to_string()),
        _ => home,
    };
    Some((phase, context))
}

async fn answer(req: Request<Incoming>, worlds: &Worlds) -> Response<Full<Bytes>> {
    let Some((phase, context)) = route(req.uri().path(), worlds.home()) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "{}: unknown path (allowed: /mutate, /validate, /mutate/<context>, /validate/<context>)",
                req.uri().path()
            ),
        );
    };
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{}: only POST (an AdmissionReview)", req.method()),
        );
    }
    let body = match read_review(req).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let context = context.unwrap_or_default();
    let caches = worlds.ready(&context);
    // A cluster created a moment ago may not be in the cache yet: where that decides (is the app
    // in use?), the clusters are listed from the API server.
    let live = match (&caches, review::needs_live_clusters(phase, &body)) {
        (Some(c), Some(true)) => match c.live_clusters().await {
            Ok(clusters) => Some(WithLiveClusters { caches: c, clusters }),
            Err(e) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("listing KubeDirectorClusters of {context:?} to check what uses the object: {e}"),
                );
            }
        },
        _ => None,
    };
    let world: Option<&dyn World> = match (&live, &caches) {
        (Some(l), _) => Some(l),
        (None, Some(c)) => Some(c.as_ref()),
        (None, None) => None,
    };
    // Service accounts, projected claims and srcURLs, and kd-global-config where secret keys depend
    // on it, are asked of the API server for this request only.
    let needs = super::lookups::needs(phase == Phase::Validate, &body);
    let missing_app = world.and_then(|w| super::lookups::app_missing(&body, w));
    let with_lookups = match (&caches, world) {
        (Some(c), Some(inner)) if needs.is_some() || missing_app.is_some() => {
            match fetch_lookups(c, inner, needs.unwrap_or_default(), missing_app.as_ref(), &context).await {
                Ok(w) => Some(w),
                Err(unavailable) => return unavailable,
            }
        }
        _ => None,
    };
    let world: Option<&dyn World> = match &with_lookups {
        Some(w) => Some(w),
        None => world,
    };
    review_response(phase, &body, &context, world)
}

/// The request body, or the refusal: larger than `MAX_BODY` (declared or sent), or unreadable.
async fn read_review(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    // A declared length above the limit is refused before any of the body is asked for (a client
    // waiting on `Expect: 100-continue` then gets the 413, not a reset in mid-upload).
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("AdmissionReview larger than {} MiB", MAX_BODY >> 20),
        ));
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => {
            let too_big = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            Err(if too_big {
                text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("AdmissionReview larger than {} MiB", MAX_BODY >> 20),
                )
            } else {
                text(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))
            })
        }
    }
}

/// What the review needs that the caches of `context` do not have, asked of its API server; a
/// failed look-up is answered with a 503.
async fn fetch_lookups<'a>(
    c: &Caches,
    inner: &'a dyn World,
    needs: Needs,
    missing_app: Option<&(Vec<String>, String)>,
    context: &str,
) -> Result<WithLookups<'a>, Response<Full<Bytes>>> {
    let lookups = match needs.has_lookups() {
        true => Some(super::lookups::fetch(c.client(), &needs).await),
        false => None,
    };
    let configs = match needs.config {
        true => Some(super::lookups::live_config(c.client(), inner.operator_namespace()).await),
        false => None,
    };
    let apps = match missing_app {
        Some((namespaces, app)) => super::lookups::live_apps(c.client(), namespaces, app).await,
        None => Ok(Vec::new()),
    };
    match (lookups.transpose(), configs.transpose(), apps) {
        (Ok(lookups), Ok(configs), Ok(apps)) => Ok(WithLookups {
            inner,
            lookups,
            configs,
            apps,
        }),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("looking up service accounts, claims, kd-global-config or the app in {context:?}: {e}"),
        )),
    }
}

/// The answered AdmissionReview as JSON; a body that is no AdmissionReview is a 400.
fn review_response(phase: Phase, body: &[u8], context: &str, world: Option<&dyn World>) -> Response<Full<Bytes>> {
    match review::handle(phase, body, context, world) {
        Ok(review) => match serde_json::to_vec(&review) {
            Ok(json) => {
                let mut r = Response::new(Full::new(Bytes::from(json)));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("serialising the review: {e}"),
            ),
        },
        Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_pick_phase_and_member() {
        let home = Some("kind-a".to_string());
        assert_eq!(route("/mutate", home.clone()), Some((Phase::Mutate, home.clone())));
        assert_eq!(route("/validate/", home.clone()), Some((Phase::Validate, home.clone())));
        assert_eq!(
            route("/validate/kind-b", home.clone()),
            Some((Phase::Validate, Some("kind-b".into())))
        );
        assert_eq!(route("/healthz", home.clone()), None);
        assert_eq!(route("/", home), None);
    }
}
