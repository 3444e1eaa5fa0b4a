//! The fleet: one member per selected kubeconfig context, each with its own client, caches, queue,
//! write budget and health. The kubeconfig is re-read periodically: contexts that appear are started,
//! contexts that disappear are stopped gracefully, edited contexts are restarted — no process restart.

pub mod select;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::reconcile::driver::{self, MemberHandle};
use crate::telemetry::metrics::Metrics;

/// Where member clusters come from.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Explicit kubeconfig file; otherwise KUBECONFIG, ~/.kube/config, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    pub contexts: Vec<String>,
    pub all_contexts: bool,
    /// Context of the home cluster (Leases); defaults to the first member.
    pub home_context: Option<String>,
    pub reload_every: Duration,
}

/// Running members, for readiness and health reporting.
pub type Members = Arc<Mutex<BTreeMap<String, MemberHandle>>>;

struct Running {
    fingerprint: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

fn load(options: &FleetOptions) -> anyhow::Result<Option<Kubeconfig>> {
    match &options.kubeconfig {
        Some(path) => Kubeconfig::read_from(path)
            .map(Some)
            .with_context(|| format!("--kubeconfig {}: cannot read it", path.display())),
        None => match Kubeconfig::read() {
            Ok(k) => Ok(Some(k)),
            // No kubeconfig anywhere: run in-cluster (as a pod), one member.
            Err(_) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Ok(None),
            Err(e) => Err(anyhow::anyhow!(
                "no kubeconfig ({e}) and not running in a cluster: set --kubeconfig or KUBECONFIG"
            )),
        },
    }
}

fn selection(kubeconfig: &Kubeconfig, options: &FleetOptions) -> Result<Vec<String>, select::SelectError> {
    let available: Vec<String> = kubeconfig.contexts.iter().map(|c| c.name.clone()).collect();
    select::select_contexts(
        &available,
        kubeconfig.current_context.as_deref(),
        &options.contexts,
        options.all_contexts,
    )
}

async fn client_for(kubeconfig: &Kubeconfig, context: &str) -> anyhow::Result<Client> {
    let opts = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig.clone(), &opts)
        .await
        .with_context(|| format!("context {context}: unusable"))?;
    Client::try_from(config).with_context(|| format!("context {context}: cannot build a client"))
}

fn start(
    context: String,
    client: Client,
    member: &driver::Options,
    metrics: &Arc<Metrics>,
    members: &Members,
    fingerprint: String,
) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let (member, metrics, registry) = (member.clone(), metrics.clone(), members.clone());
    let name = context.clone();
    let task = tokio::spawn(async move {
        let register = |handle: MemberHandle| {
            if let Ok(mut m) = registry.lock() {
                m.insert(handle.context.clone(), handle);
            }
        };
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = driver::run_member(name.clone(), client, member, metrics, shutdown, register).await {
            error!(context = %name, error = %e, "member cluster failed");
        }
        if let Ok(mut m) = registry.lock() {
            m.remove(&name);
        }
    });
    Running {
        fingerprint,
        stop,
        task,
    }
}

async fn stop(context: &str, running: Running) {
    info!(%context, "stopping member cluster");
    let _ = running.stop.send(());
    let _ = running.task.await;
}

/// Runs the fleet until `shutdown` resolves. Startup errors (unreadable kubeconfig, unknown
/// --context) are returned; later kubeconfig problems are logged and the running set is kept.
pub async fn run(
    options: FleetOptions,
    member: driver::Options,
    metrics: Arc<Metrics>,
    members: Members,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let initial = load(&options)?;
    let Some(mut kubeconfig) = initial else {
        let config = Config::incluster().context("in-cluster configuration")?;
        let client = Client::try_from(config)?;
        running.insert(
            "in-cluster".to_string(),
            start(
                "in-cluster".to_string(),
                client,
                &member,
                &metrics,
                &members,
                String::new(),
            ),
        );
        shutdown.await;
        for (name, r) in std::mem::take(&mut running) {
            stop(&name, r).await;
        }
        return Ok(());
    };
    let mut wanted = selection(&kubeconfig, &options)?;
    if let Some(home) = &options.home_context {
        anyhow::ensure!(
            kubeconfig.contexts.iter().any(|c| &c.name == home),
            "--home-context {home}: not in the kubeconfig"
        );
    }
    tokio::pin!(shutdown);
    loop {
        let prints = select::fingerprints(&kubeconfig);
        // Stop what is no longer wanted or was edited.
        let gone: Vec<String> = running
            .iter()
            .filter(|(name, r)| !wanted.contains(name) || prints.get(*name) != Some(&r.fingerprint))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(r) = running.remove(&name) {
                stop(&name, r).await;
            }
        }
        for name in &wanted {
            if running.contains_key(name) {
                continue;
            }
            match client_for(&kubeconfig, name).await {
                Ok(client) => {
                    info!(context = %name, "starting member cluster");
                    let print = prints.get(name).cloned().unwrap_or_default();
                    running.insert(
                        name.clone(),
                        start(name.clone(), client, &member, &metrics, &members, print),
                    );
                }
                Err(e) => {
                    warn!(context = %name, error = %e, "cannot start member cluster; retrying at the next kubeconfig reload")
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(options.reload_every) => {}
        }
        match load(&options).map(|k| k.map(|k| (selection(&k, &options), k))) {
            Ok(Some((Ok(next), k))) => {
                if next != wanted {
                    info!(before = ?wanted, after = ?next, "kubeconfig contexts changed");
                }
                wanted = next;
                kubeconfig = k;
            }
            Ok(Some((Err(e), _))) => warn!(error = %e, "kubeconfig reload: keeping the current members"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "kubeconfig reload failed: keeping the current members"),
        }
    }
    for (name, r) in std::mem::take(&mut running) {
        stop(&name, r).await;
    }
    Ok(())
}
