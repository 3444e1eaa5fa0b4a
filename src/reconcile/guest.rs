//! Runs guest commands (setup, notifications) by exec into member containers, off the workers.
//!
//! A reconcile only hands work over (`submit`) and reads what has finished (`fill`): each command
//! runs in its own task, bounded by a semaphore and a timeout, and when it ends the cluster's key is
//! put back on the queue (at once, or after the poll or retry delay). A script that hangs holds one
//! of those tasks until its timeout, never a worker. What a result means is decided in
//! `model::guest`; what must outlive this process (the member states, the notification queue) is in
//! the cluster's status, and the guest side keeps `configure`'s outcome in files keyed by container
//! id, so a replica that takes over simply asks again.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use k8s_openapi::api::core::v1::Pod;
use kube::api::AttachParams;
use kube::{Api, Client};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::api::cluster::{MemberState, RoleStatus};
use crate::model::guest::{self, Finished, SetupReport, Work, WorkKind};
use crate::model::members::Observed;

use super::context::ClusterKey;

/// The guest side of the in-guest contract (see the script's header).
pub const SCRIPT: &str = include_str!("guest.sh");
/// Our configcli (module and commands), installed into members with a setup package.
pub const CONFIGCLI: &str = include_str!("configcli.py");
/// The container every guest command runs in (the contract's `app`).
pub const CONTAINER: &str = "app";

/// The configcli installed into members with a setup package.
#[derive(Clone, Default)]
pub enum Configcli {
    /// This project's (`CONFIGCLI`).
    #[default]
    Ours,
    /// KubeDirector's `configcli.tgz`, installed as KubeDirector installs it (its `install` script).
    Package(Arc<Vec<u8>>),
}

impl std::fmt::Debug for Configcli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ours => f.write_str("Ours"),
            Self::Package(b) => write!(f, "Package({} bytes)", b.len()),
        }
    }
}

/// Largest configcli package taken: it travels on the exec's stdin of each member's first setup call.
const MAX_PACKAGE: usize = 8 << 20;

impl Configcli {
    /// Reads KubeDirector's `configcli.tgz` (`--configcli-package`): it must be a gzip file of at
    /// most 8 MiB.
    pub fn package(path: &std::path::Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !bytes.starts_with(&[0x1f, 0x8b]) {
            return Err(format!(
                "{} is not a gzip file (expected KubeDirector's configcli.tgz)",
                path.display()
            ));
        }
        if bytes.len() > MAX_PACKAGE {
            return Err(format!(
                "{} has {} bytes; at most {MAX_PACKAGE} are allowed",
                path.display(),
                bytes.len()
            ));
        }
        Ok(Self::Package(Arc::new(bytes)))
    }

    /// What the guest script installs: the bytes, and their kind (`py` or `tgz`).
    fn payload(&self) -> (&[u8], &'static str) {
        match self {
            Self::Ours => (CONFIGCLI.as_bytes(), "py"),
            Self::Package(b) => (b.as_slice(), "tgz"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// Guest commands in flight at once, per member cluster.
    pub concurrency: usize,
    /// Longest a setup call (inject, fetch, start or poll) may take.
    pub setup_timeout: Duration,
    /// Longest a notification script may run.
    pub notify_timeout: Duration,
    pub configcli: Configcli,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            concurrency: 32,
            setup_timeout: Duration::from_secs(120),
            notify_timeout: Duration::from_secs(600),
            configcli: Configcli::Ours,
        }
    }
}

/// What is known of one pod's guest work.
#[derive(Clone, Debug, Default)]
struct PodGuest {
    /// A command for this pod is running now.
    busy: bool,
    /// Not before this instant (poll or retry delay).
    not_before: Option<Instant>,
    /// `configure` finished in this container.
    setup: Option<Finished>,
    /// Setup polls (or failed setup calls) for the current container, for the poll delay.
    setup_calls: u32,
    setup_container: Option<String>,
    /// The guest script answered a setup call for this container: configcli is installed (or
    /// was not needed), so later polls need not carry its source again.
    setup_answered: Option<String>,
    /// The generation of the configmeta.json a setup call for `setup_container` wrote.
    setup_generation: Option<i64>,
    /// A refresh wrote the configmeta.json of this generation (until the status records it).
    refreshed: Option<i64>,
    /// Failed refresh attempts in a row, for the retry delay.
    refresh_failures: u32,
    /// Arguments of the head notification that finished (ran, or gave up).
    notified: Option<Vec<String>>,
    /// Failed attempts of the current head notification.
    notify_failures: u32,
    notify_args: Option<Vec<String>>,
}

type PodKey = (String, String);

pub struct Runner {
    context: String,
    client: Client,
    limits: Limits,
    pods: Arc<DashMap<PodKey, PodGuest>>,
    permits: Arc<Semaphore>,
    wake: mpsc::UnboundedSender<ClusterKey>,
}

impl Runner {
    /// `wake` puts a cluster's key back on its member cluster's queue.
    pub fn new(context: String, client: Client, limits: Limits, wake: mpsc::UnboundedSender<ClusterKey>) -> Self {
        Self {
            context,
            client,
            permits: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            limits,
            pods: Arc::new(DashMap::new()),
            wake,
        }
    }

    /// Adds what has finished for the members of `roles` to `observed`, and forgets what the
    /// recorded status already reflects.
    pub fn fill(&self, ns: &str, roles: &[RoleStatus], observed: &mut Observed) {
        for m in roles.iter().flat_map(|r| &r.members) {
            let key = (ns.to_string(), m.pod.clone());
            let Some(mut g) = self.pods.get_mut(&key) else {
                continue;
            };
            // A setup result the status holds (the member left `creating` for that container).
            if let Some(done) = &g.setup {
                let recorded = m.state != MemberState::Creating
                    && m.state_detail.last_configured_container.as_ref() == Some(&done.container);
                if recorded {
                    g.setup = None;
                    g.setup_calls = 0;
                    g.setup_container = None;
                }
            }
            if g.refreshed.is_some() && g.refreshed == m.state_detail.last_config_data_generation {
                g.refreshed = None;
            }
            // A finished notification the status no longer has at the head of the queue.
            if g.notified
                .as_ref()
                .is_some_and(|args| m.state_detail.pending_notify_cmds.first().map(|n| &n.arguments) != Some(args))
            {
                g.notified = None;
                g.notify_failures = 0;
                g.notify_args = None;
            }
            if let Some(done) = &g.setup {
                observed.setups.insert(m.pod.clone(), done.clone());
            }
            if let Some(args) = &g.notified {
                observed.notified.insert(m.pod.clone(), args.clone());
            }
            if let Some(generation) = g.refreshed {
                observed.refreshed.insert(m.pod.clone(), generation);
            }
        }
    }

    /// Forgets every pod of a cluster that is gone.
    pub fn forget(&self, ns: &str, roles: &[RoleStatus]) {
        for m in roles.iter().flat_map(|r| &r.members) {
            self.pods.remove(&(ns.to_string(), m.pod.clone()));
        }
    }

    /// Starts the commands of `work` that are not running and not waiting out a delay.
    pub fn submit(self: &Arc<Self>, key: &ClusterKey, work: Vec<Work>) {
        let now = Instant::now();
        for w in work {
            let pod_key = (key.namespace.clone(), w.pod.clone());
            {
                let mut g = self.pods.entry(pod_key.clone()).or_default();
                if g.busy || g.not_before.is_some_and(|t| t > now) {
                    continue;
                }
                // The plan may predate a result that came in since (it was read before the command
                // ended): never run again what has finished and only waits to be recorded.
                let finished = match &w.kind {
                    WorkKind::Setup { .. } => g.setup.as_ref().is_some_and(|f| f.container == w.container),
                    WorkKind::Notify { arguments, .. } => g.notified.as_ref() == Some(arguments),
                    WorkKind::Refresh { .. } => g.refreshed == Some(w.generation),
                };
                if finished {
                    continue;
                }
                g.busy = true;
            }
            debug!(context = %self.context, pod = %w.pod, kind = ?w.kind, "guest command started");
            let (runner, key) = (self.clone(), key.clone());
            tokio::spawn(async move { runner.run(key, pod_key, w).await });
        }
    }

    async fn run(self: Arc<Self>, key: ClusterKey, pod_key: PodKey, w: Work) {
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        // The script reads exactly this many bytes of stdin (see guest.sh).
        let mut stdin = serde_json::to_vec_pretty(&w.configmeta).unwrap_or_default();
        let mut args = vec![
            String::new(),
            w.container.clone(),
            w.max_log_size_dump.to_string(),
            stdin.len().to_string(),
        ];
        let timeout = match &w.kind {
            WorkKind::Setup {
                package_url,
                injections,
                configure,
                new_layout,
                wait_systemd,
            } => {
                args[0] = "setup".to_string();
                // configcli follows configmeta on stdin, for members with a package, until the
                // script has answered for this container (polls of a running configure do not
                // install anything).
                let answered = self
                    .pods
                    .get(&pod_key)
                    .is_some_and(|g| g.setup_answered.as_ref() == Some(&w.container));
                let (cli, kind) = self.limits.configcli.payload();
                let cli = if new_layout.is_some() && !answered { cli } else { &[] };
                stdin.extend_from_slice(cli);
                args.push(cli.len().to_string());
                args.push(kind.to_string());
                args.push(layout(*new_layout == Some(true)).to_string());
                args.push(if *configure { "1" } else { "0" }.to_string());
                args.push(if *wait_systemd { "1" } else { "0" }.to_string());
                args.push(package_url.clone().unwrap_or_default());
                for f in injections {
                    let p = f.permissions.clone().unwrap_or_default();
                    args.extend([
                        f.src_url.clone(),
                        f.dest_dir.clone(),
                        p.file_mode.map(|m| m.to_string()).unwrap_or_default(),
                        p.file_owner.unwrap_or_default(),
                        p.file_group.unwrap_or_default(),
                    ]);
                }
                self.limits.setup_timeout
            }
            WorkKind::Notify { arguments, new_layout } => {
                args[0] = "notify".to_string();
                args.push(layout(*new_layout).to_string());
                args.extend(guest::notify_argv(arguments));
                self.limits.notify_timeout
            }
            WorkKind::Refresh { new_layout } => {
                args[0] = "refresh".to_string();
                args.push(layout(*new_layout).to_string());
                self.limits.setup_timeout
            }
        };
        let result = tokio::time::timeout(
            timeout,
            self.exec(&key.namespace, &w.pod, args, stdin, w.max_log_size_dump),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        let delay = self.record(&pod_key, &w, result);
        let wake = self.wake.clone();
        if delay.is_zero() {
            let _ = wake.send(key);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = wake.send(key);
            });
        }
    }

    /// Records a command's result; returns when the cluster should be reconciled again.
    fn record(&self, pod_key: &PodKey, w: &Work, result: Result<(String, String), String>) -> Duration {
        let mut g = self.pods.entry(pod_key.clone()).or_default();
        g.busy = false;
        let report = result.and_then(|(out, err)| guest::parse_report(&w.container, &out, &err));
        let delay = match &w.kind {
            WorkKind::Setup { .. } => self.record_setup(&mut g, &pod_key.1, w, report),
            WorkKind::Notify { arguments, .. } => self.record_notify(&mut g, &pod_key.1, w, arguments, report),
            WorkKind::Refresh { .. } => match report {
                Ok((SetupReport::Done(f), _)) if f.exit_code == 0 => {
                    debug!(context = %self.context, pod = %pod_key.1, generation = w.generation, "configmeta refreshed");
                    g.refreshed = Some(w.generation);
                    g.refresh_failures = 0;
                    Duration::ZERO
                }
                other => {
                    g.refresh_failures += 1;
                    let why = failure(other, w.max_log_size_dump);
                    warn!(context = %self.context, pod = %pod_key.1, error = %why, "configmeta refresh failed; retrying");
                    guest::notify_retry_delay(g.refresh_failures)
                }
            },
        };
        g.not_before = Some(Instant::now() + delay);
        delay
    }

    fn record_setup(
        &self,
        g: &mut PodGuest,
        pod: &str,
        w: &Work,
        report: Result<(SetupReport, bool), String>,
    ) -> Duration {
        if g.setup_container.as_ref() != Some(&w.container) {
            g.setup_container = Some(w.container.clone());
            g.setup_calls = 0;
            g.setup_generation = None;
        }
        g.setup_calls += 1;
        if report.is_ok() {
            g.setup_answered = Some(w.container.clone());
        }
        match report {
            Ok((report, fresh)) => {
                if fresh {
                    g.setup_generation = Some(w.generation);
                }
                match report {
                    SetupReport::Done(mut f) => {
                        info!(context = %self.context, %pod, exit_code = f.exit_code, "configure finished");
                        f.configmeta_generation = g.setup_generation;
                        g.setup = Some(f);
                        Duration::ZERO
                    }
                    SetupReport::Running => guest::poll_delay(g.setup_calls),
                }
            }
            Err(e) => {
                warn!(context = %self.context, %pod, error = %e, "setup call failed; retrying");
                guest::poll_delay(g.setup_calls)
            }
        }
    }

    fn record_notify(
        &self,
        g: &mut PodGuest,
        pod: &str,
        w: &Work,
        arguments: &[String],
        report: Result<(SetupReport, bool), String>,
    ) -> Duration {
        if g.notify_args.as_deref() != Some(arguments) {
            g.notify_args = Some(arguments.to_vec());
            g.notify_failures = 0;
        }
        match report {
            Ok((SetupReport::Done(f), _)) if f.exit_code == 0 => {
                info!(context = %self.context, %pod, args = ?arguments, "notification delivered");
                g.notified = Some(arguments.to_vec());
                Duration::ZERO
            }
            other => {
                g.notify_failures += 1;
                let why = failure(other, w.max_log_size_dump);
                warn!(context = %self.context, %pod, args = ?arguments, error = %why, attempts = g.notify_failures, "notification failed; retrying");
                guest::notify_retry_delay(g.notify_failures)
            }
        }
    }

    /// One exec: the script with `args`, `stdin` written (the script reads exactly its length);
    /// stdout and stderr read (each capped) concurrently until the command ends.
    async fn exec(
        &self,
        ns: &str,
        pod: &str,
        args: Vec<String>,
        stdin: Vec<u8>,
        max_log: usize,
    ) -> Result<(String, String), String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut command = vec![
            "sh".to_string(),
            "-c".to_string(),
            SCRIPT.to_string(),
            "kd-guest".to_string(),
        ];
        command.extend(args);
        let params = AttachParams::default()
            .container(CONTAINER)
            .stdin(true)
            .stdout(true)
            .stderr(true);
        let mut process = api
            .exec(pod, command, &params)
            .await
            .map_err(|e| format!("exec: {e}"))?;
        let (Some(mut input), Some(out), Some(err)) = (process.stdin(), process.stdout(), process.stderr()) else {
            return Err("exec: streams missing".to_string());
        };
        let cap = max_log + 4096;
        let write = async move {
            let r = input.write_all(&stdin).await;
            let _ = input.shutdown().await;
            r
        };
        let (w, out, err) = tokio::join!(write, read_capped(out, cap), read_capped(err, cap));
        if let Err(e) = w {
            debug!(%pod, error = %e, "stdin not fully taken");
        }
        let _ = process.join().await;
        Ok((out, err))
    }
}

fn layout(new: bool) -> &'static str {
    if new { "new" } else { "old" }
}

/// Why a notification or refresh did not succeed, for the log.
fn failure(report: Result<(SetupReport, bool), String>, max_log: usize) -> String {
    match report {
        Ok((SetupReport::Done(f), _)) => guest::config_error_detail(&f, max_log),
        Ok((SetupReport::Running, _)) => "unexpected report".to_string(),
        Err(e) => e,
    }
}

/// Reads to the end, keeping the first `cap` bytes.
async fn read_capped(mut r: impl AsyncRead + Unpin, cap: usize) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::Configcli;

    #[test]
    fn a_configcli_package_must_be_a_readable_gzip_file() {
        let dir = std::env::temp_dir().join(format!("kd-configcli-flag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let missing = dir.join("missing.tgz");
        let err = Configcli::package(&missing).err().unwrap_or_default();
        assert!(err.contains("cannot read") && err.contains("missing.tgz"), "{err}");
        let text = dir.join("configcli.tgz");
        std::fs::write(&text, "not a tarball").expect("write");
        let err = Configcli::package(&text).err().unwrap_or_default();
        assert!(err.contains("not a gzip file"), "{err}");
        std::fs::write(&text, [0x1f, 0x8b, 8, 0]).expect("write");
        assert!(matches!(Configcli::package(&text), Ok(Configcli::Package(b)) if b.len() == 4));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
