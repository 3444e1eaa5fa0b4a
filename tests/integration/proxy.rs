//! A fault-injecting HTTP proxy in front of a real API server: it forwards every request through a
//! kube client (real TLS and credentials), or, while `reject` is on, answers 429 Too Many Requests
//! with a Retry-After — what an overloaded API server's flow control does. It records every request
//! so a test can check that the operator honoured the Retry-After.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kube::Client;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: String,
    pub rejected: bool,
}

pub struct FaultProxy {
    pub port: u16,
    pub retry_after_secs: u64,
    reject: Arc<AtomicBool>,
    /// While set, lists (GETs that are not watches) of a path ending so wait here.
    hold: Arc<Mutex<Option<String>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

/// Whether `path?query` is a list held by `hold` now.
fn held(hold: &Mutex<Option<String>>, method: &str, path: &str, query: &str) -> bool {
    let watch = query.split('&').any(|p| p == "watch=true" || p == "watch=1");
    let suffix = hold.lock().map(|h| h.clone()).unwrap_or_default();
    method == "GET" && !watch && suffix.is_some_and(|s| path.ends_with(&s))
}

fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync()
}

async fn handle(
    req: Request<Incoming>,
    client: Client,
    reject: Arc<AtomicBool>,
    retry_after: u64,
    seen: Arc<Mutex<Vec<Seen>>>,
    hold: Arc<Mutex<Option<String>>>,
) -> Result<Response<ProxyBody>, Infallible> {
    let rejected = reject.load(Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    while held(&hold, req.method().as_str(), &path, &query) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if let Ok(mut s) = seen.lock() {
        s.push(Seen {
            at: Instant::now(),
            method: req.method().to_string(),
            path,
            query,
            rejected,
        });
    }
    if rejected {
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "TooManyRequests", "code": 429,
            "message": "injected by the test proxy: too many requests", "details": {"retryAfterSeconds": retry_after}
        });
        let resp = Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("Retry-After", retry_after.to_string())
            .header("Content-Type", "application/json")
            .body(full(status.to_string()));
        return Ok(resp.unwrap_or_else(|_| Response::new(full(String::new()))));
    }
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(hyper::header::HOST);
    let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let forwarded = Request::from_parts(parts, kube::client::Body::from(bytes.to_vec()));
    match client.send(forwarded).await {
        Ok(resp) => Ok(resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync())),
        Err(e) => {
            let mut resp = Response::new(full(format!("proxy: {e}")));
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(resp)
        }
    }
}

impl FaultProxy {
    pub async fn start(target: Client, retry_after_secs: u64) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let reject = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let hold: Arc<Mutex<Option<String>>> = Arc::default();
        let (r, s, h) = (reject.clone(), seen.clone(), hold.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (client, reject, seen, hold) = (target.clone(), r.clone(), s.clone(), h.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        handle(
                            req,
                            client.clone(),
                            reject.clone(),
                            retry_after_secs,
                            seen.clone(),
                            hold.clone(),
                        )
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy {
            port,
            retry_after_secs,
            reject,
            hold,
            seen,
        }
    }

    /// Holds every list of a path ending in `suffix` (e.g. `/pods`) until called with `None`.
    pub fn hold_lists(&self, suffix: Option<&str>) {
        if let Ok(mut h) = self.hold.lock() {
            *h = suffix.map(str::to_string);
        }
    }

    pub fn reject(&self, on: bool) {
        self.reject.store(on, Ordering::SeqCst);
    }

    /// Mutating requests that came back for the same object sooner than Retry-After after a 429.
    pub fn early_retries(&self) -> Vec<String> {
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        let mutating = |m: &str| matches!(m, "POST" | "PUT" | "PATCH" | "DELETE");
        let mut early = Vec::new();
        for (i, a) in seen
            .iter()
            .enumerate()
            .filter(|(_, s)| s.rejected && mutating(&s.method))
        {
            if let Some(b) = seen[i + 1..].iter().find(|b| b.path == a.path && b.method == a.method) {
                let gap = b.at.duration_since(a.at).as_secs_f64();
                // 50 ms of tolerance for the two timestamps being taken in different tasks.
                if gap + 0.05 < self.retry_after_secs as f64 {
                    early.push(format!("{} {} again after {gap:.2} s", a.method, a.path));
                }
            }
        }
        early
    }

    /// Rejected requests by kind: (writes, watches, other reads).
    pub fn rejected_by_kind(&self) -> (usize, usize, usize) {
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        let rejected = seen.iter().filter(|s| s.rejected);
        let (mut writes, mut watches, mut reads) = (0, 0, 0);
        for s in rejected {
            match s.method.as_str() {
                "POST" | "PUT" | "PATCH" | "DELETE" => writes += 1,
                _ if s.query.split('&').any(|p| p == "watch=true" || p == "watch=1") => watches += 1,
                _ => reads += 1,
            }
        }
        (writes, watches, reads)
    }

    pub fn rejected(&self) -> usize {
        self.seen
            .lock()
            .map(|s| s.iter().filter(|x| x.rejected).count())
            .unwrap_or(0)
    }
}

/// The test bed's kubeconfig plus a context `name` that reaches `proxy` (plain HTTP, no credentials:
/// the proxy adds the real ones), minus the contexts in `drop`; written next to the test logs.
pub fn kubeconfig_with(proxy: &FaultProxy, name: &str, drop: &[&str], file: &str) -> std::path::PathBuf {
    use kube::config::{AuthInfo, Cluster, Context, NamedAuthInfo, NamedCluster, NamedContext};
    let mut kubeconfig = crate::testbed::kubeconfig();
    kubeconfig.contexts.retain(|c| !drop.contains(&c.name.as_str()));
    let server = Some(format!("http://127.0.0.1:{}", proxy.port));
    kubeconfig.clusters.push(NamedCluster {
        name: name.into(),
        cluster: Some(Cluster {
            server,
            ..Default::default()
        }),
        other: Default::default(),
    });
    kubeconfig.auth_infos.push(NamedAuthInfo {
        name: "proxied".into(),
        auth_info: Some(AuthInfo::default()),
        other: Default::default(),
    });
    let context = Context {
        cluster: name.into(),
        user: Some("proxied".into()),
        ..Default::default()
    };
    kubeconfig.contexts.push(NamedContext {
        name: name.into(),
        context: Some(context),
        other: Default::default(),
    });
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/test-logs/{file}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).expect("kubeconfig YAML")).expect("write kubeconfig");
    path
}
