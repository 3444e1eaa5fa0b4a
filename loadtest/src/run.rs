//! One run, phase by phase: bed up → prepare → replicas → create → churn (chaos throughout) → delete
//! → replicas stopped → floor → figures → report. The bed is torn down whatever happens.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;
use kube::{Api, Client};

use kubedirector::shard::assign::shard_of;
use kubedirector::shard::{lease, record};

use crate::objects::{self, Placement};
use crate::provider::{self, Bed, Provider};
use crate::records::{self, Kill};
use crate::replicas::{InCluster, Launch, Replicas};
use crate::report::{self, Report};
use crate::stats::{self, Bound};
use crate::track::{self, Tracker};
use crate::workload::Workload;
use crate::{audit, phases, plot, prepare};

pub struct Options {
    pub provider: Provider,
    pub workload: Workload,
    pub run_dir: PathBuf,
    pub run: String,
    pub command: String,
    pub operator_bin: PathBuf,
    pub repo: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub contexts: Vec<String>,
    pub port_base: u16,
    pub log_level: String,
}

fn now_us() -> u64 {
    record::micros(SystemTime::now())
}

/// A run's report: the standard one, or one of the other modes'.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Standard(Box<Report>),
    Modes(Box<crate::modes::ModeReport>),
}

impl Outcome {
    pub fn markdown(&self) -> String {
        match self {
            Outcome::Standard(r) => r.markdown(),
            Outcome::Modes(r) => r.markdown(),
        }
    }

    /// (overlaps, lost)
    pub fn failures(&self) -> (usize, usize) {
        match self {
            Outcome::Standard(r) => (r.overlaps, r.lost.total),
            Outcome::Modes(r) => (r.overlaps, r.lost.total),
        }
    }
}

pub async fn run(o: Options) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(&o.run_dir)?;
    let policy_path = o.run_dir.join("audit-policy.yaml");
    std::fs::write(&policy_path, audit::policy())?;
    std::fs::write(o.run_dir.join("workload.yaml"), serde_yaml::to_string(&o.workload)?)?;
    let w = &o.workload;
    let mut bed = match o.provider {
        Provider::Kwok => provider::kwok::up(
            &o.repo,
            &o.run_dir.join("testbed"),
            o.port_base,
            w.clusters,
            w.nodes,
            &policy_path,
        )?,
        Provider::Kind => provider::kind::up(&o.repo, &o.run_dir, w.clusters, w.nodes, &audit::policy())?,
        Provider::Contexts => {
            let kc = o
                .kubeconfig
                .clone()
                .or_else(default_kubeconfig)
                .context("--kubeconfig (or KUBECONFIG) is needed for the contexts provider")?;
            provider::contexts::bed(kc, &o.contexts, w.clusters)?
        }
    };
    eprintln!("[loadtest] member clusters: {}", bed.contexts.join(", "));
    let work = async {
        let b = prepare_bench(&o, &bed).await?;
        let outcome = if o.workload.mode == crate::workload::Mode::Standard {
            measure(&b).await.map(|r| Outcome::Standard(Box::new(r)))
        } else {
            crate::modes::run(&b).await.map(|r| Outcome::Modes(Box::new(r)))
        };
        if b.launch.webhook.is_some() {
            // Fail closed, with nothing serving it any more: it would refuse every object of the
            // namespace after the run.
            crate::admission::remove(&b.clients[0]).await;
        }
        outcome
    };
    // Ctrl-C (or SIGTERM) ends the run here, so that the replicas (dropped with the work: killed) and
    // the bed (torn down below) do not outlive it.
    let result = tokio::select! {
        r = work => r,
        _ = interrupted() => Err(anyhow::anyhow!("interrupted; the bed is torn down")),
    };
    if let Err(e) = bed.teardown() {
        eprintln!("[loadtest] teardown: {e:#}");
    }
    result
}

async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn default_kubeconfig() -> Option<PathBuf> {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config")))
}

type Histograms = BTreeMap<String, BTreeMap<Bound, f64>>;

/// How long before the first arrival a phase's schedule starts (the harness's own set-up is off
/// every clock).
pub const LEAD: Duration = Duration::from_millis(500);

/// Each API server's APF queue-wait histograms, by priority level.
pub async fn apf_histograms(clients: &[Client]) -> anyhow::Result<Vec<Histograms>> {
    let mut out = Vec::new();
    for c in clients {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        out.push(apf_levels(&stats::parse(
            &c.request_text(req).await.context("API server /metrics")?,
        )));
    }
    Ok(out)
}

/// `apiserver_flowcontrol_request_wait_duration_seconds` of one API server, by priority level
/// (flow schemas and `execute` merged).
fn apf_levels(samples: &[stats::Sample]) -> Histograms {
    const NAME: &str = "apiserver_flowcontrol_request_wait_duration_seconds";
    let levels: BTreeSet<String> = samples
        .iter()
        .filter(|s| s.name == format!("{NAME}_bucket"))
        .filter_map(|s| s.labels.get("priority_level").cloned())
        .collect();
    levels
        .into_iter()
        .map(|l| {
            let b = stats::buckets(samples, NAME, |x| x.get("priority_level") == Some(&l));
            (l, b)
        })
        .collect()
}

/// APF queue wait within a window (after − before), merged over the clusters, by priority level.
pub fn apf_window(after: &[Histograms], before: &[Histograms]) -> BTreeMap<String, report::ApfWait> {
    let empty = BTreeMap::new();
    let mut merged: Histograms = BTreeMap::new();
    for (i, a) in after.iter().enumerate() {
        for (level, h) in a {
            let prev = before.get(i).and_then(|b| b.get(level)).unwrap_or(&empty);
            stats::add(merged.entry(level.clone()).or_default(), &stats::delta(h, prev));
        }
    }
    merged
        .into_iter()
        .filter_map(|(level, h)| {
            let requests = h.get(&Bound(f64::INFINITY)).copied().unwrap_or(0.0);
            (requests > 0.0).then(|| {
                let q = |p| stats::quantile(p, &h).unwrap_or(0.0);
                (
                    level,
                    report::ApfWait {
                        requests,
                        p50_seconds: q(0.5),
                        p99_seconds: q(0.99),
                    },
                )
            })
        })
        .collect()
}

fn mutating(l: &BTreeMap<String, String>) -> bool {
    matches!(
        l.get("verb").map(String::as_str),
        Some("POST" | "PUT" | "PATCH" | "DELETE" | "APPLY")
    )
}

/// "VERB resource[/subresource]" of an API server metric sample.
fn call_of(l: &BTreeMap<String, String>) -> String {
    let get = |k: &str| l.get(k).map(String::as_str).unwrap_or("");
    let sub = get("subresource");
    let sep = if sub.is_empty() { "" } else { "/" };
    format!("{} {}{sep}{sub}", get("verb"), get("resource"))
}

/// Each API server's mutating-call latency histograms, by call.
pub async fn apiserver_histograms(clients: &[Client]) -> anyhow::Result<Vec<Histograms>> {
    let mut out = Vec::new();
    for c in clients {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        let text = c.request_text(req).await.context("API server /metrics")?;
        let samples = stats::parse(&text);
        let calls: BTreeSet<String> = samples
            .iter()
            .filter(|s| s.name == "apiserver_request_duration_seconds_bucket" && mutating(&s.labels))
            .map(|s| call_of(&s.labels))
            .collect();
        let by_call = calls
            .into_iter()
            .map(|name| {
                let b = stats::buckets(&samples, "apiserver_request_duration_seconds", |l| {
                    mutating(l) && call_of(l) == name
                });
                (name, b)
            })
            .collect();
        out.push(by_call);
    }
    Ok(out)
}

/// Requests served (every verb, reads and watches included) and watch events sent, by call, summed
/// over the API servers: `"VERB resource[/sub]"` from `apiserver_request_total`, and
/// `"watch events <resource>"` from `apiserver_watch_events_total`.
pub async fn request_counts(clients: &[Client]) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for c in clients {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        let text = c.request_text(req).await.context("API server /metrics")?;
        for (key, value) in request_counts_of(&stats::parse(&text)) {
            *out.entry(key).or_insert(0.0) += value;
        }
    }
    Ok(out)
}

fn request_counts_of(samples: &[stats::Sample]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples {
        let key = match s.name.as_str() {
            "apiserver_request_total" => call_of(&s.labels),
            "apiserver_watch_events_total" => {
                let of = |k: &str| s.labels.get(k).map(String::as_str);
                format!("watch events {}", of("resource").or(of("kind")).unwrap_or("?"))
            }
            _ => continue,
        };
        *out.entry(key).or_insert(0.0) += s.value;
    }
    out
}

/// Every count of a window (after − before) that grew, largest first.
pub fn window_counts(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    let mut d: Vec<(String, f64)> = after
        .iter()
        .map(|(k, a)| (k.clone(), a - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    d.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    d
}

/// The calls of a window (after − before) merged, and the five kinds of call with the highest p99.
pub fn mutating_window(after: &Histograms, before: &Histograms) -> (BTreeMap<Bound, f64>, Vec<report::SlowCall>) {
    let empty = BTreeMap::new();
    let mut all = BTreeMap::new();
    let mut slow = Vec::new();
    for (name, b) in after {
        let d = stats::delta(b, before.get(name).unwrap_or(&empty));
        let count = d.get(&Bound(f64::INFINITY)).copied().unwrap_or(0.0);
        if let Some(p99) = stats::quantile(0.99, &d) {
            slow.push(report::SlowCall {
                call: name.clone(),
                count,
                p99_seconds: p99,
            });
        }
        stats::add(&mut all, &d);
    }
    slow.sort_by(|a, b| b.p99_seconds.total_cmp(&a.p99_seconds));
    slow.truncate(5);
    (all, slow)
}

async fn holders(home: &Client, ns: &str) -> anyhow::Result<BTreeMap<u32, String>> {
    let leases = Api::<Lease>::namespaced(home.clone(), ns)
        .list(&ListParams::default())
        .await?;
    Ok(lease::holders(&leases.items))
}

/// The shards that hold at least one of the run's CRs.
pub fn shards_with_keys(w: &Workload, contexts: &[String], ns: &str) -> BTreeSet<u32> {
    (0..w.crs())
        .map(|g| shard_of(&contexts[(g % w.clusters) as usize], ns, &objects::cr_name(g), w.shards))
        .collect()
}

/// The create latency split by whether each CR waited through a failover of its shard, the others
/// against the floor's groups of the same names. `None` when no CR or no floor group is left to compare.
fn split_by_failover(
    windows: &BTreeMap<u32, Vec<(u64, u64)>>,
    create_done: &[(track::Key, Instant, Instant)],
    floor_done: &[(track::Key, Instant, Instant)],
    at: impl Fn(Instant) -> u64,
    shard: impl Fn(&track::Key) -> u32,
) -> Option<report::FailoverSplit> {
    let (mut waited, mut others) = (Vec::new(), BTreeMap::new());
    for (key, start, end) in create_done {
        let secs = (*end - *start).as_secs_f64();
        if records::waited_for_failover(windows, shard(key), at(*start), at(*end)) {
            waited.push(secs);
        } else {
            others.insert(key, secs);
        }
    }
    let floor: Vec<f64> = floor_done
        .iter()
        .filter(|(k, _, _)| others.contains_key(k))
        .map(|(_, s, e)| (*e - *s).as_secs_f64())
        .collect();
    let others = stats::summary(&others.into_values().collect::<Vec<_>>())?;
    let floor_others = stats::summary(&floor)?;
    Some(report::FailoverSplit {
        waited: stats::summary(&waited),
        ratio_others: report::Ratio {
            p50: others.p50 / floor_others.p50,
            p99: others.p99 / floor_others.p99,
        },
        others,
        floor_others,
    })
}

/// Every CR's and floor group's latency, one line each, for a look at the tail after the run:
/// `side,context,name,arrival_s,seconds,waited_for_failover` (arrival from its side's start).
fn write_latencies(
    path: &std::path::Path,
    contexts: &[String],
    (operator, t0): (&[(track::Key, Instant, Instant)], Instant),
    (floor, t3): (&[(track::Key, Instant, Instant)], Instant),
    waited: impl Fn(&track::Key, Instant, Instant) -> bool,
) -> anyhow::Result<()> {
    let mut out = String::from("side,context,name,arrival_s,seconds,waited_for_failover\n");
    for (side, done, from) in [("operator", operator, t0), ("floor", floor, t3)] {
        for (k, s, e) in done {
            out.push_str(&format!(
                "{side},{},{},{:.3},{:.3},{}\n",
                contexts.get(k.0).map_or("?", String::as_str),
                k.1,
                s.saturating_duration_since(from).as_secs_f64(),
                (*e - *s).as_secs_f64(),
                side == "operator" && waited(k, *s, *e),
            ));
        }
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// Waits until every shard of `kill` (with CRs) has been reconciled by another replica, as the
/// records show, or `limit` passes (the figures then report it as lost).
async fn wait_failed_over(
    kill: &Kill,
    records: &[PathBuf],
    with_keys: &BTreeSet<u32>,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let all = record::reconciles(&record::read(records)?);
        let (_, missing) = records::failovers(std::slice::from_ref(kill), &all, with_keys);
        if missing.is_empty() || start.elapsed() > limit {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// SIGKILLs the live replica of `slot` and starts its replacement; the kill names the shards the
/// Leases in `system` gave the victim just before.
pub async fn kill_slot(r: &mut Replicas, home: &Client, system: &str, slot: u32) -> anyhow::Result<Kill> {
    let held = holders(home, system).await?;
    let victim = r
        .live()
        .nth(slot as usize)
        .map(|i| i.id.clone())
        .with_context(|| format!("no live replica in slot {slot}"))?;
    let shards: Vec<u32> = held.iter().filter(|(_, h)| **h == victim).map(|(s, _)| *s).collect();
    let at = now_us();
    r.kill_and_replace(slot).await?;
    eprintln!("[loadtest] chaos: SIGKILL {victim} (holding {} shards)", shards.len());
    Ok(Kill {
        replica: victim,
        at,
        shards,
    })
}

/// Kills a replica every `every`, round robin, until `stop` is set; records each kill.
fn chaos(
    replicas: Arc<tokio::sync::Mutex<Replicas>>,
    home: Client,
    system: String,
    n: u32,
    every: Duration,
    stop: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<Kill>>> {
    tokio::spawn(async move {
        let mut kills = Vec::new();
        let mut slot = 0;
        loop {
            tokio::select! {
                _ = stop.notified() => return Ok(kills),
                _ = tokio::time::sleep(every) => {}
            }
            let mut r = replicas.lock().await;
            kills.push(kill_slot(&mut r, &home, &system, slot).await?);
            slot = (slot + 1) % n;
        }
    })
}

/// kind: the chart installed into the home cluster with the members kubeconfig (tokens of the
/// loadtest ServiceAccount, servers on the kind network); the replicas are its pods.
async fn deploy_to_kind(o: &Options, bed: &Bed, launch: &Launch, home: &Client) -> anyhow::Result<Replicas> {
    let names = provider::kind::cluster_names(o.workload.clusters);
    let ips = bed
        .contexts
        .iter()
        .zip(&names)
        .map(|(c, n)| {
            Ok((
                c.clone(),
                std::fs::read_to_string(provider::kind::ip_file(&o.run_dir, n))?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let members = provider::kind::members_kubeconfig(&std::fs::read_to_string(&launch.kubeconfig)?, &ips)?;
    std::fs::write(o.run_dir.join("kind/members.kubeconfig"), members)?;
    let home_context = bed.contexts.first().context("no cluster")?;
    provider::kind::execute(&provider::kind::deploy_steps(
        &o.repo,
        &o.run_dir,
        home_context,
        &kind_deploy(o, launch),
    ))?;
    let ic = InCluster {
        client: home.clone(),
        namespace: launch.system_namespace.clone(),
        release: provider::kind::RELEASE.to_string(),
        deployment: format!("{}-kubedirector", provider::kind::RELEASE),
        metrics_port: 8080,
        dir: launch.dir.clone(),
    };
    Replicas::in_cluster(ic, o.workload.replicas, Duration::from_secs(300)).await
}

pub fn kind_deploy(o: &Options, launch: &Launch) -> provider::kind::Deploy {
    provider::kind::Deploy {
        replicas: o.workload.replicas,
        shards: o.workload.shards,
        write_qps: o.workload.write_qps,
        write_burst: o.workload.write_burst,
        writes_in_flight: o.workload.writes_in_flight,
        watch_namespace: launch.watch_namespace.clone(),
        namespace: launch.system_namespace.clone(),
        log_level: o.log_level.clone(),
    }
}

/// What every mode starts from: the bed's clients (admin), the clients the floor writes with, the
/// namespaces, and how replicas are launched.
pub struct Bench<'a> {
    pub o: &'a Options,
    pub bed: &'a Bed,
    pub clients: Vec<Client>,
    /// The floor's writers: the operator's ServiceAccount where the bed has its tokens (and
    /// `floorAsOperator`), else the admin clients.
    pub writers: Vec<Client>,
    pub floor_credentials: &'static str,
    pub ns: String,
    pub floor_ns: String,
    pub system: String,
    pub placement: Placement,
    pub launch: Launch,
}

pub async fn prepare_bench<'a>(o: &'a Options, bed: &'a Bed) -> anyhow::Result<Bench<'a>> {
    let w = &o.workload;
    let placement = if o.provider == Provider::Kind {
        Placement::KwokNodesOnly
    } else {
        Placement::Anywhere
    };
    let audited = bed.audit_logs.is_some();
    let ns = "kd-loadtest".to_string();
    let floor_ns = "kd-loadtest-floor".to_string();
    let system = if audited {
        audit::OPERATOR_NAMESPACE.to_string()
    } else {
        format!("{ns}-system")
    };

    let mut clients = Vec::new();
    for c in &bed.contexts {
        clients.push(prepare::client(&bed.kubeconfig, c).await?);
    }
    let app = objects::app(&w.roles);
    for c in &clients {
        // One a killed `--admission` run left would refuse the app (no one serves it).
        crate::admission::remove(c).await;
    }
    let mut tokens = Vec::new();
    for (c, client) in bed.contexts.iter().zip(&clients) {
        prepare::cluster(client, &[&ns, &floor_ns], &system, &app).await?;
        if audited {
            tokens.push((c.clone(), prepare::operator_token(client, 6).await?));
        }
    }
    let operator_kubeconfig = if audited {
        prepare::token_kubeconfig(&bed.kubeconfig, &tokens, &o.run_dir.join("operator-kubeconfig"))?
    } else {
        bed.kubeconfig.clone()
    };
    let (writers, floor_credentials) = if audited && w.floor_as_operator {
        let mut v = Vec::new();
        for c in &bed.contexts {
            v.push(prepare::client(&operator_kubeconfig, c).await?);
        }
        (v, "the operator's ServiceAccount")
    } else {
        (clients.clone(), "the bed's admin")
    };
    let mut launch = Launch {
        binary: o.operator_bin.clone(),
        kubeconfig: operator_kubeconfig,
        contexts: bed.contexts.clone(),
        watch_namespace: ns.clone(),
        system_namespace: system.clone(),
        shards: w.shards,
        write_qps: w.write_qps,
        write_burst: w.write_burst,
        writes_in_flight: w.writes_in_flight,
        dir: o.run_dir.join("replicas"),
        log_level: o.log_level.clone(),
        cpu: None,
        webhook: None,
    };
    if w.admission {
        if o.provider == Provider::Kind {
            anyhow::bail!("--admission runs local replicas; on kind, the chart's values choose admission");
        }
        let port = crate::replicas::free_port()?;
        crate::admission::install(&clients[0], &ns, port).await?;
        launch.webhook = Some(crate::admission::Webhook { port });
    }
    Ok(Bench {
        o,
        bed,
        clients,
        writers,
        floor_credentials,
        ns,
        floor_ns,
        system,
        placement,
        launch,
    })
}

/// With `--admission`, until the API server calls the (just started) webhook.
pub async fn wait_admission(b: &Bench<'_>) -> anyhow::Result<()> {
    if b.launch.webhook.is_none() {
        return Ok(());
    }
    let probe = objects::cluster("lt-admission-probe", &b.o.workload.roles, b.placement);
    crate::admission::wait_serving(&b.clients[0], &b.ns, &probe, Duration::from_secs(90)).await
}

/// The pods the live replicas cache, read once their sum equals the members (the caches are
/// divided by shard, and a handover in progress leaves a taken-over shard's pods uncounted until
/// its lists end) or after 60 s, whichever is first. The gauges are refreshed every 5 s. A replica
/// the chaos just killed may not answer: then the figure is missing, and says why.
async fn settled_cached_pods(
    replicas: &tokio::sync::Mutex<Replicas>,
    members: u32,
) -> Result<report::CachedPods, String> {
    let start = Instant::now();
    let limit = Duration::from_secs(60);
    loop {
        let read = replicas.lock().await.cached(Some("Pod")).await;
        let waited = start.elapsed();
        match read {
            Ok(per_replica) => {
                let sum: f64 = per_replica.iter().map(|(_, n)| n).sum();
                if sum == f64::from(members) || waited >= limit {
                    return Ok(report::CachedPods {
                        members,
                        sum,
                        per_replica,
                        waited_seconds: waited.as_secs_f64(),
                    });
                }
            }
            Err(e) if waited >= limit => return Err(format!("not read: {e:#}")),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// CRs or floor groups done: key, clock start (scheduled arrival), done.
type Done = Vec<(track::Key, Instant, Instant)>;

/// Unix-µs bounds of the phases, to window the audit logs by.
struct Spans {
    create: (u64, u64),
    churn: (u64, u64),
    delete: (u64, u64),
    floor: (u64, u64),
}

async fn measure(b: &Bench<'_>) -> anyhow::Result<Report> {
    let (o, bed, clients, ns) = (b.o, b.bed, &b.clients, &b.ns);
    let w = &o.workload;
    let started = Instant::now();
    let mut phase_secs = BTreeMap::new();
    if w.flow_schema {
        crate::modes::apply_flow_schema(b).await?;
    }
    let api_before = apiserver_histograms(clients).await?;

    let op = start_operating(b).await?;
    let (replicas, tracker) = (&op.replicas, &op.tracker);
    let timeout = Duration::from_secs(w.phase_timeout_seconds);
    let mut lost = report::Lost::default();

    let apf_create_before = apf_histograms(clients).await?;
    let (schedules, t0, create_from) = create_phase(b, tracker, timeout, &mut lost).await;
    let create_done = tracker.take_done();
    phase_secs.insert("create".to_string(), t0.elapsed().as_secs_f64());
    let create_to = now_us();
    let cached_pods = settled_cached_pods(replicas, w.members).await;
    let apf_create = apf_window(&apf_histograms(clients).await?, &apf_create_before);

    let t1 = Instant::now();
    let (change_done, churn_members) = churn_phase(b, tracker, timeout, &mut lost).await;
    phase_secs.insert("churn".to_string(), t1.elapsed().as_secs_f64());
    let churn_to = now_us();

    let t_soak = Instant::now();
    soak(b, tracker, timeout, &mut lost).await?;
    phase_secs.insert("soak".to_string(), t_soak.elapsed().as_secs_f64());

    // Chaos ends; the last victim's shards must have moved before the CRs go away.
    op.stop_chaos.notify_one();
    let kills = match op.chaos {
        Some(t) => t.await??,
        None => Vec::new(),
    };
    let with_keys = shards_with_keys(w, &bed.contexts, ns);
    if let Some(last) = kills.last() {
        let paths = replicas.lock().await.records();
        wait_failed_over(last, &paths, &with_keys, timeout).await?;
    }

    // Delete.
    let (t2, delete_from) = (Instant::now(), now_us());
    delete_everything(bed, ns, timeout, &mut lost).await?;
    phase_secs.insert("delete".to_string(), t2.elapsed().as_secs_f64());
    let delete_to = now_us();
    for h in op.watches {
        h.abort();
    }
    let mut reps = Arc::try_unwrap(op.replicas)
        .map_err(|_| anyhow::anyhow!("replicas still shared after chaos ended"))?
        .into_inner();
    reps.stop(Duration::from_secs(30)).await?;

    let floor = floor_phase(b, &schedules, timeout).await?;
    phase_secs.insert("floor".to_string(), floor.seconds);
    let api_after = apiserver_histograms(clients).await?;

    // Figures.
    let secs = |d: &Done| -> Vec<f64> { d.iter().map(|(_, s, f)| (*f - *s).as_secs_f64()).collect() };
    let (create_lat, change_lat, floor_lat) = (secs(&create_done), secs(&change_done), secs(&floor.done));
    let create = stats::summary(&create_lat).context("create latency: no CR reached configured")?;
    let floor_s = stats::summary(&floor_lat).context("floor latency: no group became ready")?;
    let change = stats::summary(&change_lat);
    if w.churned() > 0 && change.is_none() {
        bail!("change latency: no resized CR reached configured");
    }
    let ratio = report::Ratio {
        p50: create.p50 / floor_s.p50,
        p99: create.p99 / floor_s.p99,
    };
    let testbed = testbed_figures(bed, w, &api_after, &api_before)?;
    let (operator_counted, queue_wait_p99, replica_figures) = replica_figures(&reps)?;
    let spans = Spans {
        create: (create_from, create_to),
        churn: (create_to, churn_to),
        delete: (delete_from, delete_to),
        floor: (floor.from, floor.to),
    };
    let writes = count_writes(bed, w, &b.floor_ns, &spans, churn_members, operator_counted)?;

    let (bad, by_failover, failover) = from_records(
        b,
        &reps,
        kills,
        &spans,
        (&create_done, t0),
        (&floor.done, floor.t0),
        &mut lost,
    )?;
    lost.total = lost.not_configured.len() + lost.children_left.len();

    let report = Report {
        run: o.run.clone(),
        command: o.command.clone(),
        provider: o.provider,
        contexts: bed.contexts.clone(),
        operator_binary: o.operator_bin.display().to_string(),
        workload: w.clone(),
        crs: w.crs(),
        duration_seconds: started.elapsed().as_secs_f64(),
        testbed,
        latency: report::Latency {
            create,
            change,
            floor: floor_s,
        },
        overhead_ratio: ratio,
        writes,
        queue_wait_p99_seconds: queue_wait_p99,
        replicas: replica_figures,
        cached_pods,
        by_failover,
        failover,
        overlaps: bad.len(),
        overlap_examples: bad.into_iter().take(10).collect(),
        lost,
        phases: phase_secs,
        floor_credentials: b.floor_credentials.to_string(),
        apf_wait: BTreeMap::from([("create".to_string(), apf_create), ("floor".to_string(), floor.apf)]),
    };
    draw(o, (&create_done, t0, &create_lat), (&floor.done, floor.t0, &floor_lat))?;
    Ok(report)
}

/// The operator's side running: its replicas (ready, admission served), the harness's watches
/// of the CRs, and chaos.
struct Operating {
    replicas: Arc<tokio::sync::Mutex<Replicas>>,
    tracker: Arc<Tracker>,
    watches: Vec<tokio::task::JoinHandle<()>>,
    stop_chaos: Arc<tokio::sync::Notify>,
    chaos: Option<tokio::task::JoinHandle<anyhow::Result<Vec<Kill>>>>,
}

async fn start_operating(b: &Bench<'_>) -> anyhow::Result<Operating> {
    let (o, clients, w) = (b.o, &b.clients, &b.o.workload);
    let mut reps = match o.provider {
        Provider::Kind => deploy_to_kind(o, b.bed, &b.launch, &clients[0]).await?,
        _ => Replicas::start(b.launch.clone(), w.replicas)?,
    };
    reps.wait_ready(Duration::from_secs(120)).await?;
    wait_admission(b).await?;
    let replicas = Arc::new(tokio::sync::Mutex::new(reps));
    let tracker = Arc::new(Tracker::default());
    let watches = clients
        .iter()
        .enumerate()
        .map(|(i, c)| track::watch_clusters(c.clone(), &b.ns, i, tracker.clone()))
        .collect();
    let stop_chaos = Arc::new(tokio::sync::Notify::new());
    let chaos = (w.chaos.every_seconds > 0).then(|| {
        let every = Duration::from_secs(w.chaos.every_seconds);
        let home = clients[0].clone();
        chaos(
            replicas.clone(),
            home,
            b.system.clone(),
            w.replicas,
            every,
            stop_chaos.clone(),
        )
    });
    Ok(Operating {
        replicas,
        tracker,
        watches,
        stop_chaos,
        chaos,
    })
}

/// Every CR created at its scheduled arrival and waited for until configured (or lost). Every
/// clock starts at its scheduled arrival; the floor replays the same schedules later. Returns
/// them, and the start as an instant and in unix µs.
async fn create_phase(
    b: &Bench<'_>,
    tracker: &Arc<Tracker>,
    limit: Duration,
    lost: &mut report::Lost,
) -> (Vec<phases::Arrivals>, Instant, u64) {
    let (clients, w) = (&b.clients, &b.o.workload);
    let (t0, from) = (Instant::now() + LEAD, now_us() + LEAD.as_micros() as u64);
    let schedules: Vec<phases::Arrivals> = (0..clients.len()).map(|c| phases::Arrivals::of(w, c, t0)).collect();
    let creates = clients
        .iter()
        .zip(&schedules)
        .map(|(client, a)| phases::create_crs(client, &b.ns, a, w, b.placement, tracker));
    for refused in futures::future::join_all(creates).await {
        lost.not_configured.extend(refused);
    }
    let n = w.crs() as usize;
    wait_or_lose(
        tracker,
        "create → configured",
        n,
        limit,
        &b.bed.contexts,
        "create",
        lost,
    )
    .await;
    (schedules, t0, from)
}

/// Churn: a fraction of the CRs resized, waited for until configured again (or lost). Returns
/// them done, and the members changed.
async fn churn_phase(b: &Bench<'_>, tracker: &Arc<Tracker>, limit: Duration, lost: &mut report::Lost) -> (Done, u32) {
    let w = &b.o.workload;
    let members = phases::churn_plan(w).len() as u32 * w.churn.delta;
    lost.not_configured
        .extend(phases::churn(&b.clients, &b.ns, w, tracker).await);
    let n = w.churned() as usize;
    wait_or_lose(
        tracker,
        "change → configured",
        n,
        limit,
        &b.bed.contexts,
        "change",
        lost,
    )
    .await;
    (tracker.take_done(), members)
}

/// What the replicas' reconcile records tell: overlaps, latencies.csv, the create latency split
/// by failover, and the failover figures (a shard nobody took over is lost).
fn from_records(
    b: &Bench<'_>,
    reps: &Replicas,
    kills: Vec<Kill>,
    spans: &Spans,
    (create_done, t0): (&Done, Instant),
    (floor_done, floor_t0): (&Done, Instant),
    lost: &mut report::Lost,
) -> anyhow::Result<(Vec<String>, Option<report::FailoverSplit>, Option<report::Failover>)> {
    let (o, bed, ns, w) = (b.o, b.bed, &b.ns, &b.o.workload);
    let create_from = spans.create.0;
    let with_keys = shards_with_keys(w, &bed.contexts, ns);
    let all = record::reconciles(&record::read(&reps.records())?);
    if all.is_empty() {
        bail!(
            "no reconcile records: the replicas did not write {}",
            o.run_dir.join("replicas/records").display()
        );
    }
    let bad = record::overlaps(&all);
    let windows = records::orphaned(&kills, &all);
    let at = |i: Instant| create_from + i.saturating_duration_since(t0).as_micros() as u64;
    let shard = |k: &track::Key| shard_of(&bed.contexts[k.0], ns, &k.1, w.shards);
    write_latencies(
        &o.run_dir.join("latencies.csv"),
        &bed.contexts,
        (create_done, t0),
        (floor_done, floor_t0),
        |k, s, e| records::waited_for_failover(&windows, shard(k), at(s), at(e)),
    )?;
    let by_failover = if kills.is_empty() {
        None
    } else {
        split_by_failover(&windows, create_done, floor_done, at, shard)
    };
    let failover = failover_figures(kills, &all, &with_keys, w, spans.create, lost)?;
    Ok((bad, by_failover, failover))
}

/// Waits for `what`; whatever is still pending afterwards is lost, tagged with `phase`.
async fn wait_or_lose(
    tracker: &Tracker,
    what: &str,
    total: usize,
    limit: Duration,
    contexts: &[String],
    phase: &str,
    lost: &mut report::Lost,
) {
    phases::wait(tracker, what, total, limit).await;
    lost.not_configured.extend(
        tracker
            .pending_keys()
            .into_iter()
            .map(|(c, n)| format!("{}/{n} ({phase})", contexts[c])),
    );
}

/// Soak: replicas keep dying; afterwards every CR must still be configured at its generation.
async fn soak(b: &Bench<'_>, tracker: &Tracker, limit: Duration, lost: &mut report::Lost) -> anyhow::Result<()> {
    let w = &b.o.workload;
    tokio::time::sleep(Duration::from_secs(w.soak_seconds)).await;
    for (c, client) in b.clients.iter().enumerate() {
        let crs = Api::<kubedirector::api::KubeDirectorCluster>::namespaced(client.clone(), &b.ns)
            .list(&ListParams::default())
            .await?;
        for cr in crs.items {
            let key = (c, cr.metadata.name.clone().unwrap_or_default());
            tracker.start(key.clone());
            tracker.written(&key, cr.metadata.generation.unwrap_or(0));
        }
    }
    let n = w.crs() as usize;
    wait_or_lose(
        tracker,
        "still configured after soak",
        n,
        limit,
        &b.bed.contexts,
        "soak",
        lost,
    )
    .await;
    tracker.take_done();
    Ok(())
}

/// Deletes the run's CRs on every cluster at once (each one's garbage collector works in
/// parallel); children left afterwards are lost.
async fn delete_everything(bed: &Bed, ns: &str, limit: Duration, lost: &mut report::Lost) -> anyhow::Result<()> {
    let deletes = bed.contexts.iter().map(|context| {
        let fresh = || prepare::client(&bed.kubeconfig, context);
        async move { phases::delete_all(fresh, ns, limit).await }
    });
    for (c, left) in futures::future::join_all(deletes).await.into_iter().enumerate() {
        for left in left? {
            lost.children_left.push(format!("{}: {left}", bed.contexts[c]));
        }
    }
    Ok(())
}

/// The floor's pass: the same objects at the same arrival times, without an operator.
struct FloorRun {
    done: Done,
    t0: Instant,
    from: u64,
    to: u64,
    seconds: f64,
    apf: BTreeMap<String, report::ApfWait>,
}

async fn floor_phase(b: &Bench<'_>, schedules: &[phases::Arrivals], limit: Duration) -> anyhow::Result<FloorRun> {
    let (w, clients) = (&b.o.workload, &b.clients);
    let apf_before = apf_histograms(clients).await?;
    let (t0, from) = (Instant::now() + LEAD, now_us() + LEAD.as_micros() as u64);
    let floor = Arc::new(Tracker::default());
    let watches: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| track::watch_floor(c.clone(), &b.floor_ns, i, w.members_per_cr() as usize, floor.clone()))
        .collect();
    let schedules: Vec<phases::Arrivals> = schedules.iter().map(|a| phases::Arrivals { t0, ..a.clone() }).collect();
    let creates = b
        .writers
        .iter()
        .zip(&schedules)
        .map(|(client, a)| phases::create_floor(client, &b.floor_ns, a, w, b.placement, &floor));
    let mut refused = Vec::new();
    for r in futures::future::join_all(creates).await {
        refused.extend(r);
    }
    phases::wait(&floor, "floor → pods Ready", w.crs() as usize, limit).await;
    let done = floor.take_done();
    for h in watches {
        h.abort();
    }
    let (seconds, to) = (t0.elapsed().as_secs_f64(), now_us());
    let apf = apf_window(&apf_histograms(clients).await?, &apf_before);
    if !refused.is_empty() || floor.pending() > 0 {
        bail!(
            "the floor did not complete ({} refused, {} groups not ready): the test bed cannot carry this workload; first: {:?}",
            refused.len(),
            floor.pending(),
            refused.first()
        );
    }
    Ok(FloorRun {
        done,
        t0,
        from,
        to,
        seconds,
        apf,
    })
}

/// The API servers' mutating-call p99 over the whole run, and whether the bed kept up.
fn testbed_figures(
    bed: &Bed,
    w: &Workload,
    after: &[Histograms],
    before: &[Histograms],
) -> anyhow::Result<report::Testbed> {
    let mut mutating = BTreeMap::new();
    let mut slowest = BTreeMap::new();
    for (i, c) in bed.contexts.iter().enumerate() {
        let (d, slow) = mutating_window(&after[i], &before[i]);
        let p99 = stats::quantile(0.99, &d)
            .with_context(|| format!("{c}: no mutating API calls in the API server's metrics"))?;
        mutating.insert(c.clone(), p99);
        slowest.insert(c.clone(), slow);
    }
    let healthy = mutating.values().all(|p| *p < w.healthy_mutating_p99_seconds);
    if !healthy {
        eprintln!(
            "[loadtest] WARNING: the test bed was overloaded (API mutating p99 {mutating:?}); the figures are not trustworthy"
        );
    }
    Ok(report::Testbed {
        mutating_p99_seconds: mutating,
        slowest_calls: slowest,
        healthy,
    })
}

/// From every incarnation's metrics: writes it counted, the queue wait p99, CPU and peak RSS per slot.
fn replica_figures(reps: &Replicas) -> anyhow::Result<(f64, f64, Vec<report::ReplicaFigures>)> {
    let mut counted = 0.0;
    let mut queue_wait = BTreeMap::new();
    let mut per_slot: BTreeMap<u32, report::ReplicaFigures> = BTreeMap::new();
    for inc in &reps.all {
        counted += stats::sum(&inc.metrics, "kubedirector_api_writes_total", |_| true);
        stats::add(
            &mut queue_wait,
            &stats::buckets(&inc.metrics, "kubedirector_queue_wait_seconds", |_| true),
        );
        per_slot
            .entry(inc.slot)
            .or_insert_with(|| report::ReplicaFigures {
                slot: inc.slot,
                incarnations: Vec::new(),
                cpu_seconds: 0.0,
                peak_rss_bytes: 0,
            })
            .add(&inc.id, inc.usage);
        if inc.usage.peak_rss_bytes == 0 {
            bail!("peak RSS of {} was not measured", inc.id);
        }
    }
    let p99 = stats::quantile(0.99, &queue_wait).context("queue wait: the operators' histograms are empty")?;
    Ok((counted, p99, per_slot.into_values().collect()))
}

/// The run's writes: from the audit logs where the bed keeps them (by phase, Leases and the
/// floor's apart), else the operators' own counters.
fn count_writes(
    bed: &Bed,
    w: &Workload,
    floor_ns: &str,
    spans: &Spans,
    churn_members: u32,
    operator_counted: f64,
) -> anyhow::Result<report::Writes> {
    let members = f64::from(w.members);
    let Some(logs) = &bed.audit_logs else {
        if operator_counted <= 0.0 {
            bail!("writes: the operators' counters are empty");
        }
        return Ok(report::Writes {
            source: "operator-counters".into(),
            create_phase: 0,
            per_member_create: operator_counted / members,
            churn_phase: 0,
            churn_members,
            per_member_churn: None,
            delete_phase: 0,
            total: operator_counted as u64,
            lease_writes: 0,
            by_request: BTreeMap::new(),
            operator_counted,
            floor_phase: None,
            floor_per_member: None,
        });
    };
    let all = audit::read_all(logs)?;
    if all.is_empty() {
        bail!("the audit logs hold no write of the operator: the API servers did not audit it");
    }
    // Lease writes coordinate shards whatever the members do: counted apart. The floor's
    // writes (same identity, when it writes as the operator) are told apart by namespace.
    let (lease_writes, all): (Vec<_>, Vec<_>) = all.into_iter().partition(|w| w.resource == "leases");
    let (floor_writes, all): (Vec<_>, Vec<_>) = all.into_iter().partition(|w| w.namespace == floor_ns);
    let floor_n = audit::window(&floor_writes, spans.floor.0, spans.floor.1).0;
    if w.floor_as_operator && floor_n == 0 {
        bail!("the audit logs hold no write of the floor although it wrote as the operator");
    }
    let (create_n, mut by) = audit::window(&all, spans.create.0, spans.create.1);
    let (churn_n, by_churn) = audit::window(&all, spans.churn.0, spans.churn.1);
    let (delete_n, by_delete) = audit::window(&all, spans.delete.0, spans.delete.1);
    for (k, v) in by_churn.into_iter().chain(by_delete) {
        *by.entry(k).or_insert(0) += v;
    }
    Ok(report::Writes {
        source: "audit".into(),
        create_phase: create_n,
        per_member_create: create_n as f64 / members,
        churn_phase: churn_n,
        churn_members,
        per_member_churn: (churn_members > 0).then(|| churn_n as f64 / f64::from(churn_members)),
        delete_phase: delete_n,
        total: all.len() as u64,
        lease_writes: lease_writes.len() as u64,
        by_request: by,
        operator_counted,
        floor_phase: w.floor_as_operator.then_some(floor_n),
        floor_per_member: w.floor_as_operator.then(|| floor_n as f64 / members),
    })
}

/// The failover times of `kills` (`records::failovers`); a killed replica's shard with CRs that
/// nobody took over is lost.
pub(crate) fn failover_seconds(
    kills: &[Kill],
    all: &[record::Reconcile],
    with_keys: &BTreeSet<u32>,
    lost: &mut report::Lost,
) -> anyhow::Result<stats::Summary> {
    let (times, missing) = records::failovers(kills, all, with_keys);
    lost.not_configured
        .extend(missing.into_iter().map(|m| format!("failover never happened: {m}")));
    stats::summary(&times).context("no shard of a killed replica was reconciled elsewhere")
}

/// Failover times (every kill, and under load / idle apart); a killed replica's shard that nobody
/// took over is lost. `None` without kills, an error if chaos was on and nothing was killed.
fn failover_figures(
    kills: Vec<Kill>,
    all: &[record::Reconcile],
    with_keys: &BTreeSet<u32>,
    w: &Workload,
    (create_from, create_to): (u64, u64),
    lost: &mut report::Lost,
) -> anyhow::Result<Option<report::Failover>> {
    if kills.is_empty() {
        if w.chaos.every_seconds > 0 {
            bail!(
                "failover: chaos was on but no replica was killed (the run ended before the first kill after {} s)",
                w.chaos.every_seconds
            );
        }
        return Ok(None);
    }
    let seconds = failover_seconds(&kills, all, with_keys, lost).context("failover")?;
    // Kills while CRs were still arriving or being configured, apart from the idle ones.
    let (busy, idle): (Vec<Kill>, Vec<Kill>) = kills
        .iter()
        .cloned()
        .partition(|k| k.at >= create_from && k.at < create_to);
    let of = |k: &[Kill]| stats::summary(&records::failovers(k, all, with_keys).0);
    Ok(Some(report::Failover {
        under_load: of(&busy),
        idle: of(&idle),
        lease_seconds: crate::replicas::LEASE_MS as f64 / 1000.0,
        kills,
        seconds,
    }))
}

/// plot.png: latency and members Ready over time, operator against floor.
fn draw(o: &Options, operator: (&Done, Instant, &[f64]), floor: (&Done, Instant, &[f64])) -> anyhow::Result<()> {
    let w = &o.workload;
    let ready = |d: &Done, from: Instant| -> Vec<(f64, u32)> {
        d.iter()
            .map(|(_, _, f)| ((*f - from).as_secs_f64(), w.members_per_cr()))
            .collect()
    };
    plot::draw(
        &o.run_dir.join("plot.png"),
        &format!("{} members, {} clusters", w.members, w.clusters),
        &plot::Series {
            operator_latency: operator.2,
            floor_latency: floor.2,
            operator_ready: &ready(operator.0, operator.1),
            floor_ready: &ready(floor.0, floor.1),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counts_group_by_call_and_watch_resource_and_windows_rank_them() {
        let text = "apiserver_request_total{code=\"200\",resource=\"pods\",subresource=\"\",verb=\"WATCH\"} 3\n\
                    apiserver_request_total{code=\"201\",resource=\"services\",subresource=\"\",verb=\"POST\"} 10\n\
                    apiserver_request_total{code=\"409\",resource=\"services\",subresource=\"\",verb=\"POST\"} 2\n\
                    apiserver_request_total{code=\"200\",resource=\"pods\",subresource=\"status\",verb=\"PATCH\"} 7\n\
                    apiserver_watch_events_total{group=\"\",resource=\"pods\",version=\"v1\"} 40\n\
                    apiserver_request_duration_seconds_count{resource=\"pods\",verb=\"GET\"} 99\n";
        let after = request_counts_of(&stats::parse(text));
        assert_eq!(after["POST services"], 12.0);
        assert_eq!(after["PATCH pods/status"], 7.0);
        assert_eq!(after["watch events pods"], 40.0);
        assert_eq!(after.len(), 4, "{after:?}");
        let before = BTreeMap::from([("watch events pods".to_string(), 35.0), ("WATCH pods".to_string(), 3.0)]);
        let window = window_counts(&after, &before);
        assert_eq!(
            window,
            vec![
                ("POST services".to_string(), 12.0),
                ("PATCH pods/status".to_string(), 7.0),
                ("watch events pods".to_string(), 5.0)
            ]
        );
    }

    fn exposition(low: [f64; 3], exempt: f64) -> String {
        let n = "apiserver_flowcontrol_request_wait_duration_seconds_bucket";
        format!(
            "{n}{{execute=\"true\",flow_schema=\"service-accounts\",priority_level=\"workload-low\",le=\"0.1\"}} {}\n\
             {n}{{execute=\"true\",flow_schema=\"service-accounts\",priority_level=\"workload-low\",le=\"1\"}} {}\n\
             {n}{{execute=\"true\",flow_schema=\"service-accounts\",priority_level=\"workload-low\",le=\"+Inf\"}} {}\n\
             {n}{{execute=\"true\",flow_schema=\"exempt\",priority_level=\"exempt\",le=\"+Inf\"}} {exempt}\n",
            low[0], low[1], low[2]
        )
    }

    #[test]
    fn apf_waits_are_windowed_and_merged_by_priority_level() {
        let before = vec![apf_levels(&stats::parse(&exposition([10.0, 10.0, 10.0], 5.0)))];
        // 100 new requests at workload-low: 50 within 0.1 s, 99 within 1 s.
        let after = vec![apf_levels(&stats::parse(&exposition([60.0, 109.0, 110.0], 5.0)))];
        let w = apf_window(&after, &before);
        assert_eq!(
            w.keys().collect::<Vec<_>>(),
            ["workload-low"],
            "no new exempt requests: left out"
        );
        let low = &w["workload-low"];
        assert_eq!(low.requests, 100.0);
        assert!(low.p50_seconds <= 0.1 && low.p99_seconds <= 1.0, "{low:?}");
        // Two clusters add up.
        let w2 = apf_window(
            &[after[0].clone(), after[0].clone()],
            &[before[0].clone(), before[0].clone()],
        );
        assert_eq!(w2["workload-low"].requests, 200.0);
    }
}
