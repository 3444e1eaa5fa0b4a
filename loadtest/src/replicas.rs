//! Operator replicas as local processes: start, readiness, metrics scrape, SIGKILL and replacement,
//! graceful stop. Every incarnation gets its own identity (like a Deployment's new pod) and its own
//! record, log and figures, read just before it dies.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::procstat::{self, Usage};
use crate::stats::{self, Sample};

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
    pub dir: PathBuf,
    pub log_level: String,
}

/// One process of one replica slot.
pub struct Incarnation {
    pub id: String,
    pub slot: u32,
    child: Option<Child>,
    pub port: u16,
    pub record: PathBuf,
    /// Last figures read from the process (refreshed before it is killed or stopped).
    pub usage: Usage,
    pub metrics: Vec<Sample>,
    pub killed: bool,
}

pub struct Replicas {
    launch: Launch,
    pub all: Vec<Incarnation>,
    /// Index into `all` of each slot's live incarnation.
    live: Vec<usize>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Replicas {
    pub fn start(launch: Launch, n: u32) -> anyhow::Result<Replicas> {
        std::fs::create_dir_all(launch.dir.join("records"))?;
        std::fs::create_dir_all(launch.dir.join("logs"))?;
        let mut r = Replicas {
            launch,
            all: Vec::new(),
            live: Vec::new(),
        };
        for slot in 0..n {
            let i = r.spawn(slot)?;
            r.live.push(i);
        }
        Ok(r)
    }

    fn spawn(&mut self, slot: u32) -> anyhow::Result<usize> {
        let n = self.all.iter().filter(|i| i.slot == slot).count() + 1;
        let id = format!("r{slot}-{n}");
        let port = free_port()?;
        let l = &self.launch;
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
            .args([
                "--write-qps",
                &l.write_qps.to_string(),
                "--write-burst",
                &l.write_burst.to_string(),
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
        let child = cmd
            .env("RUST_LOG", &l.log_level)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", l.binary.display()))?;
        self.all.push(Incarnation {
            id,
            slot,
            child: Some(child),
            port,
            record,
            usage: Usage::default(),
            metrics: Vec::new(),
            killed: false,
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
                if let Some(child) = self.all[i].child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    bail!(
                        "replica {} exited with {status}; see {}",
                        self.all[i].id,
                        self.launch.dir.join("logs").display()
                    );
                }
                if get(self.all[i].port, "/readyz").await.is_ok() {
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

    /// Reads the figures of incarnation `i` while it still runs.
    async fn snapshot(&mut self, i: usize) -> anyhow::Result<()> {
        let inc = &mut self.all[i];
        let pid = inc.child.as_ref().map(Child::id).context("no process")?;
        inc.usage = procstat::usage(pid)?;
        let text = get(inc.port, "/metrics")
            .await
            .with_context(|| format!("scraping {} on port {}", inc.id, inc.port))?;
        inc.metrics = stats::parse(&text);
        Ok(())
    }

    /// SIGKILLs the live incarnation of `slot` (after reading its figures) and starts its
    /// replacement at once. Returns the killed identity.
    pub async fn kill_and_replace(&mut self, slot: u32) -> anyhow::Result<String> {
        let i = self.live[slot as usize];
        self.snapshot(i).await?;
        let inc = &mut self.all[i];
        if let Some(mut c) = inc.child.take() {
            c.kill()?;
            c.wait()?;
        }
        inc.killed = true;
        let id = inc.id.clone();
        self.live[slot as usize] = self.spawn(slot)?;
        Ok(id)
    }

    /// SIGTERM to every live replica after reading its figures; waits up to `grace` each.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        for i in self.live.clone() {
            self.snapshot(i).await?;
        }
        for i in self.live.clone() {
            if let Some(mut c) = self.all[i].child.take() {
                terminate(&mut c, grace)?;
            }
        }
        Ok(())
    }

    pub fn records(&self) -> Vec<PathBuf> {
        self.all.iter().map(|i| i.record.clone()).collect()
    }
}

impl Drop for Replicas {
    /// A harness that fails half-way leaves no operator behind.
    fn drop(&mut self) {
        for inc in &mut self.all {
            if let Some(mut c) = inc.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
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
