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

use crate::admission::caches::Worlds;
use crate::admission::server::{self as webhook, WebhookOptions};
use crate::member::{self, MemberHandle, Options};
use crate::reconcile::connections::Hub;
use crate::shard::manager::{self as shard_manager, ShardOptions, Shards};
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
    Client::try_from(without_client_retries(config))
        .with_context(|| format!("context {context}: cannot build a client"))
}

/// kube's client retries 429/503/504 by itself (up to 15 times, its own backoff growing towards
/// 1,000 s), inside the request: a reconcile would hold its worker through an API server's
/// overload and then sleep on long after it ended. The work queue does this instead: it honours
/// Retry-After, frees the worker, caps the backoff at 15 s and retries at once when watches recover.
fn without_client_retries(mut config: Config) -> Config {
    config.default_retry = false;
    config
}

/// Admission, when it is on: the endpoint's settings and every member's caches.
#[derive(Clone)]
pub struct Admission {
    pub webhook: WebhookOptions,
    pub worlds: Arc<Worlds>,
}

struct Shared<'a> {
    member: &'a member::Options,
    metrics: &'a Arc<Metrics>,
    shards: &'a Option<Arc<Shards>>,
    members: &'a Members,
    worlds: Option<Arc<Worlds>>,
    hub: Arc<Hub>,
}

fn start(context: String, client: Client, shared: &Shared<'_>, fingerprint: String) -> Running {
    let Shared {
        member,
        metrics,
        shards,
        members,
        worlds,
        hub,
    } = shared;
    let (stop, stopped) = oneshot::channel::<()>();
    let hub = Arc::clone(hub);
    let worlds = Option::clone(worlds);
    let (member, metrics, registry, shards) = (
        Options::clone(member),
        Arc::clone(metrics),
        Arc::clone(members),
        Option::clone(shards),
    );
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
        let parts = member::Parts {
            context: name.clone(),
            client,
            options: member,
            hub,
            metrics,
            shards,
            worlds,
        };
        if let Err(e) = member::run(parts, shutdown, register).await {
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

/// The shard manager, when sharding is on: runs against the home cluster; its shutdown hands every
/// shard over (in-flight reconciles finish first) before the members stop.
struct Sharding {
    shards: Arc<Shards>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

fn start_sharding(client: Client, options: ShardOptions, shards: Arc<Shards>) -> Sharding {
    let (stop, stopped) = oneshot::channel::<()>();
    let s = shards.clone();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = shard_manager::run(s, client, options, shutdown).await {
            error!(error = %e, "shard manager failed");
        }
    });
    Sharding { shards, stop, task }
}

async fn stop_sharding(sharding: Option<Sharding>) {
    if let Some(s) = sharding {
        let _ = s.stop.send(());
        let _ = s.task.await;
    }
}

/// Where the members come from: a kubeconfig (re-read every `reload_every`), or, in a pod with no
/// kubeconfig, the pod's own cluster as the one member "in-cluster". Both run the same start/stop path.
enum Source {
    InCluster(Client),
    Kubeconfig {
        kubeconfig: Kubeconfig,
        wanted: Vec<String>,
    },
}

const IN_CLUSTER: &str = "in-cluster";

impl Source {
    fn load(options: &FleetOptions) -> anyhow::Result<Source> {
        match load(options)? {
            None => {
                let config = Config::incluster().context("in-cluster configuration")?;
                Ok(Source::InCluster(Client::try_from(without_client_retries(config))?))
            }
            Some(kubeconfig) => {
                let wanted = selection(&kubeconfig, options)?;
                Ok(Source::Kubeconfig { kubeconfig, wanted })
            }
        }
    }

    /// The home cluster's context name (Leases, the webhook's certificate).
    fn home(&self, options: &FleetOptions) -> anyhow::Result<String> {
        let Source::Kubeconfig { kubeconfig, wanted } = self else {
            return Ok(IN_CLUSTER.to_string());
        };
        match &options.home_context {
            Some(home) => {
                anyhow::ensure!(
                    kubeconfig.contexts.iter().any(|c| &c.name == home),
                    "--home-context {home}: not in the kubeconfig"
                );
                Ok(home.clone())
            }
            None => wanted
                .first()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no member cluster selected")),
        }
    }

    async fn client(&self, context: &str) -> anyhow::Result<Client> {
        match self {
            Source::InCluster(client) => Ok(client.clone()),
            Source::Kubeconfig { kubeconfig, .. } => client_for(kubeconfig, context).await,
        }
    }

    /// The wanted members and each one's fingerprint (an edited context is restarted).
    fn wanted(&self) -> BTreeMap<String, String> {
        match self {
            Source::InCluster(_) => BTreeMap::from([(IN_CLUSTER.to_string(), String::new())]),
            Source::Kubeconfig { kubeconfig, wanted } => {
                let prints = select::fingerprints(kubeconfig);
                wanted
                    .iter()
                    .map(|name| (name.clone(), prints.get(name).cloned().unwrap_or_default()))
                    .collect()
            }
        }
    }

    /// Reads the kubeconfig again; on any problem the current members are kept.
    fn reload(&mut self, options: &FleetOptions) {
        let Source::Kubeconfig { kubeconfig, wanted } = self else {
            return;
        };
        match load(options).map(|k| k.map(|k| (selection(&k, options), k))) {
            Ok(Some((Ok(next), k))) => {
                if &next != wanted {
                    info!(before = ?wanted, after = ?next, "kubeconfig contexts changed");
                }
                *wanted = next;
                *kubeconfig = k;
            }
            Ok(Some((Err(e), _))) => warn!(error = %e, "kubeconfig reload: keeping the current members"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "kubeconfig reload failed: keeping the current members"),
        }
    }
}

/// Stops the members no longer wanted or edited, then starts the wanted ones not running.
async fn converge(source: &Source, running: &mut BTreeMap<String, Running>, shared: &Shared<'_>) {
    let wanted = source.wanted();
    let prints = running
        .iter()
        .map(|(n, r)| (n.clone(), r.fingerprint.clone()))
        .collect();
    for name in select::to_stop(&prints, &wanted) {
        if let Some(r) = running.remove(&name) {
            stop(&name, r).await;
        }
    }
    for (name, print) in wanted {
        if running.contains_key(&name) {
            continue;
        }
        match source.client(&name).await {
            Ok(client) => {
                info!(context = %name, "starting member cluster");
                let started = start(name.clone(), client, shared, print);
                running.insert(name, started);
            }
            Err(e) => {
                warn!(context = %name, error = %e, "cannot start member cluster; retrying at the next kubeconfig reload")
            }
        }
    }
}

/// Runs the fleet until `shutdown` resolves. Startup errors (unreadable kubeconfig, unknown
/// --context, bad shard timing) are returned; later kubeconfig problems are logged and the running
/// set is kept.
#[allow(clippy::too_many_arguments)] // the process's parts, each built by main
pub async fn run(
    options: FleetOptions,
    member: member::Options,
    sharding: Option<ShardOptions>,
    admission: Option<Admission>,
    metrics: Arc<Metrics>,
    members: Members,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Some(s) = &sharding {
        s.validate()?;
    }
    let mut source = Source::load(&options)?;
    let home = source.home(&options)?;
    let home_client = match (&sharding, &admission) {
        (None, None) => None,
        _ => Some(
            source
                .client(&home)
                .await
                .with_context(|| format!("home cluster {home}"))?,
        ),
    };
    let manager = match (sharding, &home_client) {
        (Some(s), Some(client)) => {
            info!(%home, shards = s.shards, replica = %s.replica, "sharding on");
            Some(start_sharding(
                client.clone(),
                s.clone(),
                Shards::new(&s, metrics.clone())?,
            ))
        }
        _ => None,
    };
    let webhook = match &home_client {
        Some(client) => start_webhook(&admission, &home, client, &member.operator_namespace).await?,
        None => None,
    };
    let shards = manager.as_ref().map(|m| m.shards.clone());
    let shared = Shared {
        member: &member,
        metrics: &metrics,
        shards: &shards,
        members: &members,
        worlds: admission.as_ref().map(|a| a.worlds.clone()),
        hub: Hub::new(),
    };
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    tokio::pin!(shutdown);
    loop {
        converge(&source, &mut running, &shared).await;
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(options.reload_every) => {}
        }
        source.reload(&options);
    }
    // Hand the shards over first (members keep running so in-flight reconciles can finish), then
    // close the webhook, then stop the members.
    stop_sharding(manager).await;
    if let Some(w) = webhook {
        w.abort();
    }
    for (name, r) in std::mem::take(&mut running) {
        stop(&name, r).await;
    }
    Ok(())
}

/// Starts the admission endpoint (certificate from the home cluster when self-generated).
async fn start_webhook(
    admission: &Option<Admission>,
    home: &str,
    client: &Client,
    operator_namespace: &str,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(a) = admission else {
        return Ok(None);
    };
    a.worlds.set_home(home);
    let task = webhook::serve(a.webhook.clone(), a.worlds.clone(), client.clone(), operator_namespace).await?;
    Ok(Some(task))
}
