//! The webhook's serving certificate, from one of two sources:
//! - files (`tls.crt`, `tls.key`) in a directory, typically a mounted Secret written by cert-manager;
//!   re-read when they change, so rotation needs no restart;
//! - self-generated: a CA and a serving certificate kept in one Secret of the home cluster, so every
//!   replica serves the same certificate (the first replica creates it, the others read it), with
//!   the CA bundle patched into the named webhook configurations.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: String, what: String },
    #[error("the certificate and key do not form a usable pair: {0}")]
    Key(#[from] rustls::Error),
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Secret {namespace}/{name}: {source}")]
    Secret {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{name} was created by another replica but could not be read three times")]
    SecretRace { namespace: String, name: String },
    #[error("Secret {namespace}/{name} lacks {key}")]
    SecretKey {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("webhook configuration {name}: {source}")]
    Configuration {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// A certificate chain and key in PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

/// The certificate rustls serves, from PEM text.
pub fn certified_key(pair: &PemPair, origin: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let pem_err = |what: String| TlsError::Pem {
        path: origin.to_string(),
        what,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err("no certificate in tls.crt".to_string()));
    }
    let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).map_err(|e| pem_err(format!("private key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(certs, key, &provider)?))
}

/// A self-generated CA and a serving certificate for `hosts` (DNS names or IP addresses), valid for
/// ten years: the CA never leaves the Secret and the webhook configurations.
pub fn generate(hosts: &[String]) -> Result<(PemPair, String), TlsError> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubedirector webhook CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    // Valid from the start of today (UTC) for ten years.
    let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
    let (y, m, d) = (i32::from(today.year()), today.month() as u8, today.day() as u8);
    let (not_before, not_after) = (
        rcgen::date_time_ymd(y, m, d),
        rcgen::date_time_ymd(y + 10, m, d.min(28)),
    );
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut params = rcgen::CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        hosts
            .first()
            .cloned()
            .unwrap_or_else(|| "kubedirector-webhook".to_string()),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok((
        PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        },
        ca.pem(),
    ))
}

/// Serves the certificate files of a directory, re-reading them when their modification time
/// changes (checked at most every 10 s, during handshakes).
#[derive(Debug)]
pub struct FileCert {
    dir: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>, Instant)>,
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn modified(dir: &Path) -> Option<SystemTime> {
    ["tls.crt", "tls.key"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
        .max()
}

impl FileCert {
    pub fn load(dir: &Path) -> Result<FileCert, TlsError> {
        let key = Self::read_pair(dir)?;
        Ok(FileCert {
            dir: dir.to_path_buf(),
            current: RwLock::new((key, modified(dir), Instant::now())),
        })
    }

    fn read_pair(dir: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
        let pair = PemPair {
            cert: read(&dir.join("tls.crt"))?,
            key: read(&dir.join("tls.key"))?,
        };
        certified_key(&pair, &dir.display().to_string())
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let (key, stamp, checked) = self.current.read().ok()?.clone();
        if checked.elapsed() < Duration::from_secs(10) {
            return Some(key);
        }
        let now = modified(&self.dir);
        let key = if now != stamp {
            match Self::read_pair(&self.dir) {
                Ok(fresh) => {
                    info!(dir = %self.dir.display(), "webhook certificate reloaded");
                    fresh
                }
                Err(e) => {
                    warn!(error = %e, "webhook certificate changed but cannot be loaded; serving the previous one");
                    key
                }
            }
        } else {
            key
        };
        if let Ok(mut w) = self.current.write() {
            *w = (key.clone(), now, Instant::now());
        }
        Some(key)
    }
}

/// Always the same certificate (self-generated).
#[derive(Debug)]
pub struct FixedCert(pub Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_no_client_auth().with_cert_resolver(resolver.clone()))
        .unwrap_or_else(|_| {
            // The ring provider supports the default versions; this branch is unreachable in practice.
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_cert_resolver(resolver)
        });
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn data(secret: &Secret, key: &'static str, ns: &str, name: &str) -> Result<String, TlsError> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .ok_or_else(|| TlsError::SecretKey {
            namespace: ns.to_string(),
            name: name.to_string(),
            key,
        })
}

/// The shared self-generated certificate: read from Secret `ns/name`, or generated and stored there
/// (a create that loses the race to another replica reads the winner's). Returns the pair and the
/// CA bundle.
pub async fn shared_certificate(
    client: &Client,
    ns: &str,
    name: &str,
    hosts: &[String],
) -> Result<(PemPair, String), TlsError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret_err = |source| TlsError::Secret {
        namespace: ns.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    };
    for _ in 0..3 {
        if let Some(s) = api.get_opt(name).await.map_err(secret_err)? {
            let pair = PemPair {
                cert: data(&s, "tls.crt", ns, name)?,
                key: data(&s, "tls.key", ns, name)?,
            };
            return Ok((pair, data(&s, "ca.crt", ns, name)?));
        }
        let (pair, ca) = generate(hosts)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(ns.to_string()),
                labels: Some([("app.kubernetes.io/managed-by".to_string(), "kubedirector".to_string())].into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".to_string()),
            data: Some(
                [
                    ("tls.crt".to_string(), ByteString(pair.cert.clone().into_bytes())),
                    ("tls.key".to_string(), ByteString(pair.key.clone().into_bytes())),
                    ("ca.crt".to_string(), ByteString(ca.clone().into_bytes())),
                ]
                .into(),
            ),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                info!(secret = %format!("{ns}/{name}"), hosts = ?hosts, "webhook certificate generated");
                return Ok((pair, ca));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue, // another replica was first
            Err(e) => return Err(secret_err(e)),
        }
    }
    Err(TlsError::SecretRace {
        namespace: ns.to_string(),
        name: name.to_string(),
    })
}

/// Writes `ca` into `clientConfig.caBundle` of every webhook of the Mutating and Validating
/// configurations named `name` (either may be absent); returns how many exist.
pub async fn patch_ca_bundle(client: &Client, name: &str, ca: &str) -> Result<u32, TlsError> {
    let bundle = ByteString(ca.as_bytes().to_vec());
    let conf_err = |source| TlsError::Configuration {
        name: name.to_string(),
        source: Box::new(source),
    };
    let mutating = set_bundle(
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
        name,
        &bundle,
        |c| c.webhooks.iter_mut().flatten().map(|w| &mut w.client_config).collect(),
    );
    let validating = set_bundle(
        Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        name,
        &bundle,
        |c| c.webhooks.iter_mut().flatten().map(|w| &mut w.client_config).collect(),
    );
    let found = u32::from(mutating.await.map_err(conf_err)?) + u32::from(validating.await.map_err(conf_err)?);
    Ok(found)
}

/// Keeps `ca` in the webhook configurations named `names`, as cert-manager's CA injector does: each
/// is watched (by name, so the chart's RBAC can stay scoped to it), and whenever one is created or
/// changed without the CA (install ordering, a GitOps re-sync, `kubectl apply` of the manifests),
/// the CA is written again. An event for a configuration that has it costs no write.
pub async fn keep_ca_injected(client: Client, names: Vec<String>, ca: String) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    // Each event says whether the configuration lacks the CA somewhere (our own write's echo does
    // not, and costs nothing).
    type Named = std::pin::Pin<Box<dyn futures::Stream<Item = (String, Result<bool, String>)> + Send>>;
    let bundle = std::sync::Arc::new(ByteString(ca.as_bytes().to_vec()));
    let lacks =
        move |configs: Vec<&WebhookClientConfig>| configs.iter().any(|c| c.ca_bundle.as_ref() != Some(&*bundle));
    let mut streams: Vec<Named> = Vec::new();
    for name in names {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let (n, lacks_m, lacks_v) = (name.clone(), lacks.clone(), lacks.clone());
        let mutating = watcher(Api::<MutatingWebhookConfiguration>::all(client.clone()), config.clone())
            .default_backoff()
            .applied_objects()
            .map(move |r| {
                let r = r.map(|c| lacks_m(c.webhooks.iter().flatten().map(|w| &w.client_config).collect()));
                (n.clone(), r.map_err(|e| e.to_string()))
            });
        let validating = watcher(Api::<ValidatingWebhookConfiguration>::all(client.clone()), config)
            .default_backoff()
            .applied_objects()
            .map(move |r| {
                let r = r.map(|c| lacks_v(c.webhooks.iter().flatten().map(|w| &w.client_config).collect()));
                (name.clone(), r.map_err(|e| e.to_string()))
            });
        streams.push(Box::pin(mutating));
        streams.push(Box::pin(validating));
    }
    let mut events = futures::stream::select_all(streams);
    while let Some((name, event)) = events.next().await {
        match event {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = patch_ca_bundle(&client, &name, &ca).await {
                    tracing::warn!(configuration = %name, error = %e, "cannot inject the webhook CA; retried on the next change");
                }
            }
            Err(e) => {
                tracing::warn!(configuration = %name, error = %e, "watching the webhook configuration failed; retrying")
            }
        }
    }
}

/// Sets the bundle on every webhook of one configuration (conditional replace, retried on
/// conflict); `false` when the configuration does not exist.
async fn set_bundle<K>(
    api: Api<K>,
    name: &str,
    bundle: &ByteString,
    configs: impl Fn(&mut K) -> Vec<&mut WebhookClientConfig>,
) -> Result<bool, kube::Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..5 {
        let Some(mut c) = api.get_opt(name).await? else {
            return Ok(false);
        };
        let mut hooks = configs(&mut c);
        if hooks.iter().all(|h| h.ca_bundle.as_ref() == Some(bundle)) {
            return Ok(true);
        }
        hooks.iter_mut().for_each(|h| h.ca_bundle = Some(bundle.clone()));
        match api.replace(name, &PostParams::default(), &c).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_rustls::rustls::client::danger::ServerCertVerifier;

    #[test]
    fn generated_certificates_load_and_cover_the_hosts() {
        let hosts = vec!["127.0.0.1".to_string(), "kd-webhook.kubedirector.svc".to_string()];
        let (pair, ca) = generate(&hosts).expect("generate");
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        let key = certified_key(&pair, "test").expect("usable pair");
        assert_eq!(key.cert.len(), 1);
        // The serving certificate is signed by the CA: verifiable with the CA as the only root.
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.expect("ca pem")).expect("root");
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        for host in &hosts {
            let name = rustls_pki_types::ServerName::try_from(host.clone()).expect("name");
            verifier
                .verify_server_cert(&key.cert[0], &[], &name, &[], rustls_pki_types::UnixTime::now())
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
    }

    #[test]
    fn broken_pem_is_a_clear_error() {
        let e = certified_key(
            &PemPair {
                cert: "garbage".into(),
                key: "garbage".into(),
            },
            "/etc/webhook",
        )
        .expect_err("refused");
        assert!(e.to_string().starts_with("/etc/webhook: "), "{e}");
    }
}
