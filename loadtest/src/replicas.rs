//! Operator replicas: local processes (kwok, contexts) or the pods of the Helm chart's Deployment
//! (kind). Start, readiness, metrics scrape, kill and replacement, graceful stop. Every incarnation
//! has its own identity (a new pod, or a new process named like one) and its own record, log and
//! figures, read just before it dies.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use k8s_openapi::api::core::v1::Pod;
use kubedirector::telemetry::process::{self as procstat, Usage};

use crate::stats::{self, Sample};

/// The shard Lease duration every replica runs with (the operator's default, passed explicitly so
/// that failover figures are read against the value in force).
pub const LEASE_MS: u64 = 10_000;

/// How every replica is started.
#[derive(Clone, Debug)]
pub struct Launch {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
    pub contexts: Vec<String>,
    pub watch_namespace: String,
    pub system_namespace: String,
    pub shards: u32,
    pub write_qps: u32,
    pub write_burst: u32,
    pub writes_in_flight: u16,
    pub dir: PathBuf,
    pub log_level: String,
    /// Share of one core each process may use (a cgroup of its own); None = unlimited.
    pub cpu: Option<(crate::cgroup::Hierarchy, f64)>,
    /// `--admission`: slot 0's processes serve the webhook.
    pub webhook: Option<crate::admission::Webhook>,
}

/// Operator pods of the chart's Deployment, reached through the API server (pod proxy).
#[derive(Clone)]
pub struct InCluster {
    pub client: kube::Client,
    pub namespace: String,
    /// The Helm release: pods carry `app.kubernetes.io/instance=<release>`.
    pub release: String,
    pub deployment: String,
    pub metrics_port: u16,
    /// Where records fetched from the pods are kept.
    pub dir: PathBuf,
}

/// Where an incarnation runs.
enum Host {
    Process { child: Option<Child>, port: u16 },
    Pod { name: String, gone: bool },
}

enum Mode {
    Local(Launch),
    Pods(InCluster),
}

/// One process (or pod) of one replica slot.
pub struct Incarnation {
    pub id: String,
    pub slot: u32,
    host: Host,
    pub record: PathBuf,
    /// Last figures read from the process (refreshed before it is killed or stopped).
    pub usage: Usage,
    pub metrics: Vec<Sample>,
    pub killed: bool,
    /// Its CPU limit (local processes with `Launch::cpu`).
    pub limit: Option<crate::cgroup::Limit>,
}

pub struct Replicas {
    mode: Mode,
    pub all: Vec<Incarnation>,
    /// Index into `all` of each slot's live incarnation.
    live: Vec<usize>,
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Replicas {
    pub fn start(launch: Launch, n: u32) -> anyhow::Result<Replicas> {
        std::fs::create_dir_all(launch.dir.join("records"))?;
        std::fs::create_dir_all(launch.dir.join("logs"))?;
        let mut r = Replicas {
            mode: Mode::Local(launch),
            all: Vec::new(),
            live: Vec::new(),
        };
        for slot in 0..n {
            let i = r.spawn(slot)?;
            r.live.push(i);
        }
        Ok(r)
    }

    /// The chart's pods, once `n` of them run.
    pub async fn in_cluster(ic: InCluster, n: u32, limit: Duration) -> anyhow::Result<Replicas> {
        std::fs::create_dir_all(ic.dir.join("records"))?;
        let deadline = Instant::now() + limit;
        let names = loop {
            let names = pods(&ic, true).await?;
            if names.len() >= n as usize {
                break names;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {n} operator pods running after {limit:?} (deployment {})",
                    names.len(),
                    ic.deployment
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let mut r = Replicas {
            mode: Mode::Pods(ic),
            all: Vec::new(),
            live: Vec::new(),
        };
        for (slot, name) in (0..n).zip(names) {
            r.adopt(slot, name);
            r.live.push(r.all.len() - 1);
        }
        Ok(r)
    }

    fn adopt(&mut self, slot: u32, name: String) {
        let dir = match &self.mode {
            Mode::Pods(ic) => ic.dir.clone(),
            Mode::Local(l) => l.dir.clone(),
        };
        self.all.push(Incarnation {
            record: dir.join("records").join(format!("{name}.jsonl")),
            id: name.clone(),
            slot,
            host: Host::Pod { name, gone: false },
            usage: Usage::default(),
            metrics: Vec::new(),
            killed: false,
            limit: None,
        });
    }

    fn spawn(&mut self, slot: u32) -> anyhow::Result<usize> {
        let n = self.all.iter().filter(|i| i.slot == slot).count() + 1;
        let id = format!("r{slot}-{n}");
        let port = free_port()?;
        let Mode::Local(l) = &self.mode else {
            bail!("replicas in the cluster are started by their Deployment");
        };
        let record = l.dir.join("records").join(format!("{id}.jsonl"));
        let log = std::fs::File::create(l.dir.join("logs").join(format!("{id}.log")))?;
        let mut cmd = Command::new(&l.binary);
        cmd.args(["run", "--kubeconfig"])
            .arg(&l.kubeconfig)
            .args([
                "--namespace",
                &l.system_namespace,
                "--watch-namespace",
                &l.watch_namespace,
            ])
            .args(["--shards", &l.shards.to_string(), "--replica-id", &id])
            .args(["--lease-duration-ms", &LEASE_MS.to_string()])
            .args([
                "--write-qps",
                &l.write_qps.to_string(),
                "--write-burst",
                &l.write_burst.to_string(),
                "--writes-in-flight",
                &l.writes_in_flight.to_string(),
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .arg("--reconcile-record")
            .arg(&record);
        if let Some(home) = l.contexts.first() {
            cmd.args(["--home-context", home]);
        }
        for c in &l.contexts {
            cmd.args(["--context", c]);
        }
        if let Some(hook) = l.webhook.as_ref().filter(|_| slot == 0) {
            cmd.args(hook.args());
        }
        let mut child = cmd
            .env("RUST_LOG", &l.log_level)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", l.binary.display()))?;
        // Limited from its first milliseconds: it has read no config and opened no watch yet.
        let limit = match &l.cpu {
            Some((h, share)) => match crate::cgroup::Limit::apply(h, &id, child.id(), *share) {
                Ok(limit) => Some(limit),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e.into());
                }
            },
            None => None,
        };
        self.all.push(Incarnation {
            id,
            slot,
            host: Host::Process {
                child: Some(child),
                port,
            },
            record,
            usage: Usage::default(),
            metrics: Vec::new(),
            killed: false,
            limit,
        });
        Ok(self.all.len() - 1)
    }

    pub fn live(&self) -> impl Iterator<Item = &Incarnation> {
        self.live.iter().map(|i| &self.all[*i])
    }

    /// Waits until every live replica answers /readyz with 200.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        for i in self.live.clone() {
            loop {
                if let Host::Process { child: Some(child), .. } = &mut self.all[i].host
                    && let Some(status) = child.try_wait()?
                {
                    bail!(
                        "replica {} exited with {status}; see its log under {}",
                        self.all[i].id,
                        self.dir().display()
                    );
                }
                if self.get(i, "/readyz").await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("replica {} not ready after {limit:?}", self.all[i].id);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    fn dir(&self) -> PathBuf {
        match &self.mode {
            Mode::Local(l) => l.dir.clone(),
            Mode::Pods(ic) => ic.dir.clone(),
        }
    }

    /// GET `path` of incarnation `i`'s metrics server (directly, or through the pod proxy).
    async fn get(&self, i: usize, path: &str) -> anyhow::Result<String> {
        match (&self.all[i].host, &self.mode) {
            (Host::Process { port, .. }, _) => get(*port, path).await,
            (Host::Pod { name, .. }, Mode::Pods(ic)) => {
                let uri = format!(
                    "/api/v1/namespaces/{}/pods/{name}:{}/proxy{path}",
                    ic.namespace, ic.metrics_port
                );
                let req = http::Request::get(uri).body(Vec::new())?;
                let text = tokio::time::timeout(Duration::from_secs(10), ic.client.request_text(req)).await??;
                Ok(text)
            }
            (Host::Pod { .. }, Mode::Local(_)) => bail!("a pod without a cluster"),
        }
    }

    /// Reads the figures (and, for pods, the reconcile record) of incarnation `i` while it runs.
    async fn snapshot(&mut self, i: usize) -> anyhow::Result<()> {
        let text = self
            .get(i, "/metrics")
            .await
            .with_context(|| format!("scraping {}", self.all[i].id))?;
        let metrics = stats::parse(&text);
        let usage = match &self.all[i].host {
            Host::Process { child, .. } => procstat::usage(child.as_ref().map(Child::id).context("no process")?)?,
            Host::Pod { .. } => {
                usage_from_metrics(&metrics).with_context(|| format!("process figures of {}", self.all[i].id))?
            }
        };
        if matches!(self.all[i].host, Host::Pod { .. }) {
            let record = self.get(i, "/debug/reconcile-record").await?;
            std::fs::write(&self.all[i].record, record)?;
        }
        let inc = &mut self.all[i];
        inc.usage = usage;
        inc.metrics = metrics;
        Ok(())
    }

    /// Kills the live incarnation of `slot` (after reading its figures) and starts its replacement
    /// at once: SIGKILL and a new process, or a pod deleted with no grace period (what a node
    /// failure does) and the one its Deployment creates. Returns the killed identity.
    pub async fn kill_and_replace(&mut self, slot: u32) -> anyhow::Result<String> {
        let i = self.live[slot as usize];
        self.snapshot(i).await?;
        let id = self.all[i].id.clone();
        self.all[i].killed = true;
        match &mut self.all[i].host {
            Host::Process { child, .. } => {
                if let Some(mut c) = child.take() {
                    c.kill()?;
                    c.wait()?;
                }
                self.live[slot as usize] = self.spawn(slot)?;
            }
            Host::Pod { name, gone } => {
                let Mode::Pods(ic) = &self.mode else {
                    bail!("a pod without a cluster");
                };
                let api: kube::Api<Pod> = kube::Api::namespaced(ic.client.clone(), &ic.namespace);
                api.delete(name, &kube::api::DeleteParams::default().grace_period(0))
                    .await?;
                *gone = true;
                let ic = ic.clone();
                let known: Vec<String> = self.all.iter().map(|i| i.id.clone()).collect();
                let replacement = tokio::time::timeout(Duration::from_secs(60), async {
                    loop {
                        if let Ok(names) = pods(&ic, false).await
                            && let Some(n) = names.into_iter().find(|n| !known.contains(n))
                        {
                            return n;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                })
                .await
                .context("no replacement pod within 60 s")?;
                self.adopt(slot, replacement);
                self.live[slot as usize] = self.all.len() - 1;
            }
        }
        Ok(id)
    }

    /// Stops every live replica gracefully after reading its figures: SIGTERM to processes, the
    /// Deployment scaled to 0 for pods; waits up to `grace`.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        for i in self.live.clone() {
            self.snapshot(i).await?;
        }
        if let Mode::Pods(ic) = &self.mode {
            let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
                kube::Api::namespaced(ic.client.clone(), &ic.namespace);
            let scale = serde_json::json!({"spec": {"replicas": 0}});
            api.patch_scale(
                &ic.deployment,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&scale),
            )
            .await?;
            let deadline = Instant::now() + grace;
            while !pods(ic, false).await?.is_empty() {
                if Instant::now() > deadline {
                    bail!("operator pods still there {grace:?} after scaling to 0");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            return Ok(());
        }
        for i in self.live.clone() {
            if let Host::Process { child, .. } = &mut self.all[i].host
                && let Some(mut c) = child.take()
            {
                terminate(&mut c, grace)?;
            }
        }
        Ok(())
    }

    /// Each live replica's `kubedirector_cached_objects`, summed over clusters and kinds.
    pub async fn cached_objects(&self) -> anyhow::Result<Vec<(String, f64)>> {
        self.cached(None).await
    }

    /// Each live replica's `kubedirector_cached_objects` of `kind` (every kind if `None`), summed
    /// over clusters.
    pub async fn cached(&self, kind: Option<&str>) -> anyhow::Result<Vec<(String, f64)>> {
        let mut out = Vec::new();
        for i in self.live.clone() {
            let text = self.get(i, "/metrics").await?;
            let n = stats::sum(&stats::parse(&text), "kubedirector_cached_objects", |l| {
                kind.is_none_or(|k| l.get("kind").map(String::as_str) == Some(k))
            });
            out.push((self.all[i].id.clone(), n));
        }
        Ok(out)
    }

    /// CPU seconds the live replicas have spent so far, together (from their own metrics).
    pub async fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for i in self.live.clone() {
            let text = self.get(i, "/metrics").await?;
            total += stats::sum(&stats::parse(&text), "kubedirector_process_cpu_seconds", |_| true);
        }
        Ok(total)
    }

    pub fn records(&self) -> Vec<PathBuf> {
        self.all.iter().map(|i| i.record.clone()).collect()
    }
}

impl Drop for Replicas {
    /// A harness that fails half-way leaves no operator process behind (pods go with their cluster).
    fn drop(&mut self) {
        for inc in &mut self.all {
            if let Host::Process { child, .. } = &mut inc.host
                && let Some(mut c) = child.take()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Names of the release's operator pods (only Running and not being deleted, if `running`).
async fn pods(ic: &InCluster, running: bool) -> anyhow::Result<Vec<String>> {
    let api: kube::Api<Pod> = kube::Api::namespaced(ic.client.clone(), &ic.namespace);
    let selector = format!("app.kubernetes.io/instance={}", ic.release);
    let list = api.list(&kube::api::ListParams::default().labels(&selector)).await?;
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !running || p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// CPU seconds and peak RSS as the operator reports them about itself.
pub fn usage_from_metrics(metrics: &[Sample]) -> anyhow::Result<Usage> {
    let one = |name: &str| {
        metrics
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.value)
            .with_context(|| format!("{name} missing from /metrics"))
    };
    Ok(Usage {
        cpu_seconds: one("kubedirector_process_cpu_seconds")?,
        peak_rss_bytes: one("kubedirector_process_max_resident_memory_bytes")? as u64,
        rss_bytes: one("kubedirector_process_resident_memory_bytes")? as u64,
    })
}

fn terminate(c: &mut Child, grace: Duration) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(c.id())?;
    // SAFETY: signalling our own child by pid.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if c.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    c.kill()?;
    c.wait()?;
    bail!("replica pid {pid} ignored SIGTERM for {grace:?} and was killed")
}

/// GET http://127.0.0.1:port/path, body as text; an error unless 200.
pub async fn get(port: u16, path: &str) -> anyhow::Result<String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://127.0.0.1:{port}{path}").parse()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri)).await??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("GET {path}: {status}");
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_usage_comes_from_the_operators_own_metrics() {
        let text = "# TYPE kubedirector_process_cpu_seconds gauge\nkubedirector_process_cpu_seconds 12.5\nkubedirector_process_resident_memory_bytes 1000\nkubedirector_process_max_resident_memory_bytes 4096\n";
        let u = usage_from_metrics(&stats::parse(text)).expect("usage");
        assert_eq!((u.cpu_seconds, u.peak_rss_bytes, u.rss_bytes), (12.5, 4096, 1000));
        let e = usage_from_metrics(&stats::parse("other 1\n")).expect_err("missing");
        assert!(
            e.to_string().contains("kubedirector_process_cpu_seconds missing"),
            "{e}"
        );
    }
}
