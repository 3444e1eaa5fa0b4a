//! The modes besides `standard`: burst, capacity and scale-out (docs/loadtest.md, "Modes"). Each is a
//! sequence of passes: one side (the operator, or the floor without it) receiving one schedule of
//! CRs, every clock started at its scheduled arrival, then cleaned away before the next pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kube::Client;
use kube::api::{DynamicObject, Patch, PatchParams};
use serde::{Deserialize as _, Serialize};

use kubedirector::shard::record;

use crate::arrival::{Arrival, Kind};
use crate::phases::{self, Arrivals};
use crate::records::Kill;
use crate::replicas::{LEASE_MS, Replicas};
use crate::report::SlowCall;
use crate::report::{ApfWait, apf_lines};
use crate::run::{Bench, LEAD, apf_histograms, apf_window, apiserver_histograms, mutating_window};
use crate::stats::{self, Summary};
use crate::track::{self, Tracker};
use crate::workload::{Mode, Workload};
use crate::{audit, objects, plot};

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Operator,
    Floor,
}

/// One side, one schedule.
#[derive(Debug, Serialize)]
pub struct Pass {
    pub label: String,
    pub side: Side,
    pub arrival: String,
    pub crs: usize,
    /// Scheduled arrival → configured (operator) or → every pod Ready (floor).
    pub latency: Option<Summary>,
    /// First arrival → the last CR done: the time to all configured / all pods Ready.
    pub all_done_seconds: Option<f64>,
    /// Operator passes: the CR's last pod Ready → `configured` (both seen by the harness's watches).
    pub status_lag: Option<Summary>,
    /// Operator passes: the later of the CR's last pod Ready and its last Service seen (both by the
    /// harness's watches) → `configured`: how long the status write follows the last child event.
    pub children_lag: Option<Summary>,
    /// CRs not done within the phase timeout, or refused.
    pub not_done: Vec<String>,
    /// Objects of the pass still there after its deletion timed out.
    pub left_behind: Vec<String>,
    /// Audited writes of the side within the pass (operator: in the CRs' namespace; floor: in its).
    pub writes: Option<u64>,
    pub writes_per_cr: Option<f64>,
    pub apf_wait: BTreeMap<String, ApfWait>,
    /// The five kinds of mutating call with the highest p99 in the pass (every cluster's, by call).
    pub slowest_calls: Vec<SlowCall>,
    /// Objects each replica caches once every CR is done (operator passes).
    pub cached_objects: BTreeMap<String, f64>,
    /// The arrival rate (rate passes).
    pub per_second: Option<f64>,
    /// CPU seconds each process spent within the pass: the bed's components (summed over its
    /// clusters; local beds only) and, in operator passes, `operator` (every live replica).
    pub cpu_seconds: BTreeMap<String, f64>,
    /// Every API server call and watch event counted within the pass (every client's), most
    /// frequent first.
    pub requests: Vec<(String, f64)>,
    #[serde(skip)]
    window: (u64, u64),
    #[serde(skip)]
    latencies: Vec<f64>,
}

/// How a step of the capacity search went.
#[derive(Debug, Serialize)]
pub struct Step {
    /// CRs/s per member cluster.
    pub per_second: f64,
    pub crs: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct CapacityOf {
    /// The highest passing rate, CRs/s per member cluster, and in members/s over every cluster.
    pub per_second: f64,
    pub members_per_second: f64,
    pub steps: Vec<Step>,
}

/// Operator / floor at one arrival rate that both sides ran.
#[derive(Debug, Serialize, PartialEq)]
pub struct RateRatio {
    pub per_second: f64,
    pub p50: f64,
    pub p99: f64,
}

/// Two steps ran the same rate: both searches compute it alike from the same start, so only
/// rounding can tell them apart.
fn same_rate(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// One row per rate that either search ran, in rate order, with each side's step there. The
/// refinements after a miss differ between the sides, so a rate may have only one side.
pub fn capacity_rows<'a>(floor: &'a [Step], operator: &'a [Step]) -> Vec<(f64, Option<&'a Step>, Option<&'a Step>)> {
    let mut rates: Vec<f64> = floor.iter().chain(operator).map(|s| s.per_second).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup_by(|a, b| same_rate(*a, *b));
    let at = |steps: &'a [Step], rate: f64| steps.iter().find(|s| same_rate(s.per_second, rate));
    rates.into_iter().map(|r| (r, at(floor, r), at(operator, r))).collect()
}

/// The rates both searches ran (they step alike from the same start), with the latency ratios.
pub fn rate_ratios(floor: &[Step], operator: &[Step]) -> Vec<RateRatio> {
    floor
        .iter()
        .filter_map(|f| Some((f, operator.iter().find(|o| same_rate(f.per_second, o.per_second))?)))
        .filter_map(|(f, o)| {
            Some(RateRatio {
                per_second: f.per_second,
                p50: o.p50? / f.p50?,
                p99: o.p99? / f.p99?,
            })
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct BurstPair {
    pub flow_schema: bool,
    pub floor_all_ready_seconds: f64,
    pub operator_all_configured_seconds: f64,
    /// operator / floor, time to all done.
    pub ratio: f64,
    pub floor_writes_per_cr: Option<f64>,
    pub operator_writes_per_cr: Option<f64>,
    /// The largest peak RSS of the operator's replicas in the pass (MiB); `None` if none was read.
    pub operator_peak_rss_mib: Option<f64>,
    /// The operator's CPU seconds in the pass, summed over its replicas.
    pub operator_cpu_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct BurstFailover {
    pub kills: Vec<Kill>,
    /// Every killed shard that held a CR: SIGKILL → first reconcile of it by another replica.
    pub seconds: Summary,
}

#[derive(Debug, Serialize)]
pub struct ReplicaUse {
    pub id: String,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    /// Most objects its caches held at the end of a step.
    pub cached_objects: f64,
    /// CFS periods in which it was held back by its quota.
    pub throttled_periods: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ScaleRun {
    pub replicas: u32,
    pub capacity: CapacityOf,
    /// capacity(R) / capacity(first R measured).
    pub ratio_to_first: f64,
    pub per_replica: Vec<ReplicaUse>,
}

#[derive(Debug, Serialize)]
pub struct ModeReport {
    pub run: String,
    pub command: String,
    pub mode: Mode,
    pub contexts: Vec<String>,
    pub workload: Workload,
    pub floor_credentials: String,
    pub lease_seconds: f64,
    pub duration_seconds: f64,
    pub passes: Vec<Pass>,
    pub burst: Vec<BurstPair>,
    /// Burst with `burstKillAfterSeconds`: the kills in the operator passes and their shards'
    /// failover (SIGKILL → first reconcile of the shard by another replica).
    pub burst_failover: Option<BurstFailover>,
    /// (floor, operator, operator/floor capacity ratio)
    pub capacity: Option<(CapacityOf, CapacityOf, f64)>,
    /// Operator / floor latency at each rate both capacity searches ran.
    pub rate_ratios: Vec<RateRatio>,
    pub scaleout: Vec<ScaleRun>,
    pub overlaps: usize,
    pub overlap_examples: Vec<String>,
    pub lost: crate::report::Lost,
}

/// What the passes lost: operator CRs refused or never configured, and objects of either side left
/// after a pass was deleted. (A floor group not Ready in time is the bed's failure, not a loss: it
/// shows in that pass's `not_done`.)
fn lost_of(passes: &[Pass]) -> crate::report::Lost {
    let mut lost = crate::report::Lost::default();
    for p in passes {
        if p.side == Side::Operator {
            lost.not_configured.extend(p.not_done.iter().cloned());
        }
        lost.children_left.extend(p.left_behind.iter().cloned());
    }
    lost.total = lost.not_configured.len() + lost.children_left.len();
    lost
}

fn now_us() -> u64 {
    record::micros(std::time::SystemTime::now())
}

/// The CRs of one pass: `per_cluster` on each cluster, named from `base` on (unique within a run).
fn schedules(arrival: &Arrival, clusters: usize, per_cluster: usize, base: u32, t0: Instant) -> Vec<Arrivals> {
    (0..clusters)
        .map(|c| Arrivals {
            cluster: c,
            items: (0..per_cluster)
                .map(|i| objects::cr_name(base + (i * clusters + c) as u32))
                .zip(arrival.offsets(per_cluster, c))
                .collect(),
            t0,
        })
        .collect()
}

/// One pass: arrivals sent, waited for, measured, cleaned away. `replicas` (operator passes) are
/// asked for their cache sizes once every CR is done.
async fn pass(
    b: &Bench<'_>,
    side: Side,
    label: &str,
    arrival: &Arrival,
    per_cluster: usize,
    base: u32,
    replicas: Option<&Replicas>,
) -> anyhow::Result<Pass> {
    let w = &b.o.workload;
    let n = b.clients.len();
    let tracker = Arc::new(Tracker::default());
    let ns = match side {
        Side::Operator => &b.ns,
        Side::Floor => &b.floor_ns,
    };
    let ready_times = Arc::new(track::ReadyTimes::default());
    let members = w.members_per_cr() as usize;
    let mut watches: Vec<_> = b
        .clients
        .iter()
        .enumerate()
        .map(|(i, c)| match side {
            Side::Operator => track::watch_clusters(c.clone(), ns, i, tracker.clone()),
            Side::Floor => track::watch_floor(c.clone(), ns, i, members, tracker.clone()),
        })
        .collect();
    let service_times = Arc::new(track::ReadyTimes::default());
    // As many Services as the planner gives a cluster of this workload (the floor's objects).
    let services = objects::floor_group("lt-00000", ns, w, b.placement)?.services.len();
    // Both sides' Services are watched, so that the API server sends both passes the same watch
    // events (the operator pass needs them for the lag after children; watched in that pass only,
    // the operator's side carried 6,000 Service watch events against the floor's 3,600).
    let service_label = match side {
        Side::Operator => kubedirector::model::labels::CLUSTER,
        Side::Floor => objects::FLOOR_GROUP,
    };
    for (i, c) in b.clients.iter().enumerate() {
        if side == Side::Operator {
            watches.push(track::watch_member_pods(c.clone(), ns, i, members, ready_times.clone()));
        }
        watches.push(track::watch_services(
            c.clone(),
            ns,
            service_label,
            i,
            services,
            service_times.clone(),
        ));
    }
    let apf_before = apf_histograms(&b.clients).await?;
    let api_before = apiserver_histograms(&b.clients).await?;
    let cpu_before = cpu_sample(b, replicas).await?;
    let requests_before = crate::run::request_counts(&b.clients).await?;
    let profiles = crate::pprof::start(&b.clients, &b.o.run_dir, label)?;
    let (t0, from) = (Instant::now() + LEAD, now_us() + LEAD.as_micros() as u64);
    let plan = schedules(arrival, n, per_cluster, base, t0);
    let sends = plan.iter().map(|a| {
        let (admin, writer, tracker) = (&b.clients[a.cluster], &b.writers[a.cluster], &tracker);
        async move {
            match side {
                Side::Operator => phases::create_crs(admin, ns, a, w, b.placement, tracker).await,
                Side::Floor => phases::create_floor(writer, ns, a, w, b.placement, tracker).await,
            }
        }
    });
    let mut not_done: Vec<String> = futures::future::join_all(sends).await.into_iter().flatten().collect();
    let total = n * per_cluster;
    phases::wait(&tracker, label, total, Duration::from_secs(w.phase_timeout_seconds)).await;
    let to = now_us();
    let apf_wait = apf_window(&apf_histograms(&b.clients).await?, &apf_before);
    let api_after = apiserver_histograms(&b.clients).await?;
    let cpu_seconds = crate::cpu::window(&cpu_sample(b, replicas).await?, &cpu_before);
    let requests = crate::run::window_counts(&crate::run::request_counts(&b.clients).await?, &requests_before);
    let mut slowest_calls: Vec<SlowCall> = api_after
        .iter()
        .zip(&api_before)
        .flat_map(|(a, b)| mutating_window(a, b).1)
        .collect();
    slowest_calls.sort_by(|a, b| b.p99_seconds.total_cmp(&a.p99_seconds));
    slowest_calls.truncate(5);
    for h in watches {
        h.abort();
    }
    // The next pass starts after this one's profiles (a profile that outlasts its pass then
    // covers the pause, not the next pass).
    for p in profiles {
        let _ = p.await;
    }
    not_done.extend(
        tracker
            .pending_keys()
            .into_iter()
            .map(|(c, name)| format!("{label}: {}/{name} not done", b.bed.contexts[c])),
    );
    let done = tracker.take_done();
    let status_lag = stats::summary(&ready_times.lags(&done));
    let children_lag = stats::summary(&ready_times.lags_after(&service_times, &done));
    let latencies: Vec<f64> = done.iter().map(|(_, s, f)| (*f - *s).as_secs_f64()).collect();
    let all_done_seconds = done.iter().map(|(_, _, f)| (*f - t0).as_secs_f64()).reduce(f64::max);
    let mut cached_objects = BTreeMap::new();
    if let Some(r) = replicas {
        // The gauges are refreshed every 5 s.
        tokio::time::sleep(Duration::from_millis(5500)).await;
        cached_objects.extend(r.cached_objects().await?);
    }
    let left_behind = clean(b, side).await?;
    Ok(Pass {
        label: label.to_string(),
        side,
        arrival: arrival.describe(),
        crs: total,
        latency: stats::summary(&latencies),
        all_done_seconds,
        status_lag,
        children_lag,
        not_done,
        left_behind,
        writes: None,
        writes_per_cr: None,
        apf_wait,
        slowest_calls,
        cached_objects,
        per_second: (arrival.kind == Kind::Rate).then_some(arrival.per_second),
        cpu_seconds,
        requests,
        window: (from, to),
        latencies,
    })
}

/// "CPU seconds per pass" in markdown: one row per pass, one column per process seen in any pass.
fn cpu_table(passes: &[Pass]) -> String {
    let mut names: Vec<&String> = passes.iter().flat_map(|p| p.cpu_seconds.keys()).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return String::new();
    }
    let head: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    let mut md = format!(
        "\n## CPU seconds per pass\n\n| pass | {} | total |\n|---|{}---|\n",
        head.join(" | "),
        "---|".repeat(names.len())
    );
    for p in passes {
        let cells: Vec<String> = names
            .iter()
            .map(|n| p.cpu_seconds.get(*n).map_or("—".to_string(), |s| format!("{s:.1}")))
            .collect();
        let total: f64 = p.cpu_seconds.values().sum();
        md.push_str(&format!("| {} | {} | {total:.1} |\n", p.label, cells.join(" | ")));
    }
    md
}

/// The endpoint calls a pass's table shows: a Service that exists before its pods have addresses
/// has its Endpoints and EndpointSlice written again as each pod comes up, so these tell the orders
/// of a new cluster's writes apart (docs/loadtest.md, "Six orders of a burst's writes").
const ENDPOINT_CALLS: [&str; 5] = [
    "POST endpoints",
    "PUT endpoints",
    "POST endpointslices",
    "PUT endpointslices",
    "watch events endpointslices",
];

/// "Endpoint writes per pass" in markdown: one row per pass (label, its window's counts), the
/// calls of `ENDPOINT_CALLS` (0 where the window had none). Empty without passes.
fn endpoint_table(passes: &[(&str, &[(String, f64)])]) -> String {
    if passes.is_empty() {
        return String::new();
    }
    let mut md = format!(
        "\n## Endpoint writes per pass\n\n| pass | {} |\n|---|{}\n",
        ENDPOINT_CALLS.join(" | "),
        "---|".repeat(ENDPOINT_CALLS.len())
    );
    for (label, counts) in passes {
        let cells: Vec<String> = ENDPOINT_CALLS
            .iter()
            .map(|call| {
                let n = counts.iter().find(|(c, _)| c == call).map_or(0.0, |(_, n)| *n);
                format!("{n:.0}")
            })
            .collect();
        md.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    }
    md
}

/// CPU seconds so far of the bed's components and (operator passes) of the live replicas together.
async fn cpu_sample(b: &Bench<'_>, replicas: Option<&Replicas>) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = crate::cpu::sample(&b.bed.pid_dirs);
    if let Some(me) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| crate::cpu::seconds_from_stat(&s, crate::cpu::ticks_per_second()))
    {
        out.insert("harness".to_string(), me);
    }
    if let Some(r) = replicas {
        out.insert("operator".to_string(), r.cpu_seconds().await?);
    }
    Ok(out)
}

/// Deletes what a pass made on every cluster at once; returns what is left after the timeout.
async fn clean(b: &Bench<'_>, side: Side) -> anyhow::Result<Vec<String>> {
    let limit = Duration::from_secs(b.o.workload.phase_timeout_seconds);
    let each = b
        .bed
        .contexts
        .iter()
        .zip(&b.clients)
        .map(|(context, client)| async move {
            let left = match side {
                Side::Operator => {
                    let fresh = || crate::prepare::client(&b.bed.kubeconfig, context);
                    phases::delete_all(fresh, &b.ns, limit).await?
                }
                Side::Floor => phases::delete_floor(client, &b.floor_ns, limit).await?,
            };
            anyhow::Ok(
                left.into_iter()
                    .map(|l| format!("{context}: left after the pass: {l}"))
                    .collect::<Vec<_>>(),
            )
        });
    let mut out = Vec::new();
    for r in futures::future::join_all(each).await {
        out.extend(r?);
    }
    Ok(out)
}

/// Replicas of the bench's launch, `n` of them, each held to `cpu` of a core if given; ready.
async fn replicas(b: &Bench<'_>, n: u32, cpu: Option<f64>, dir: &str) -> anyhow::Result<Replicas> {
    let mut launch = b.launch.clone();
    launch.dir = b.o.run_dir.join(dir);
    launch.cpu = match cpu {
        Some(share) if share > 0.0 => Some((crate::cgroup::detect(std::path::Path::new("/sys/fs/cgroup"))?, share)),
        _ => None,
    };
    let mut r = Replicas::start(launch, n)?;
    r.wait_ready(Duration::from_secs(180)).await?;
    crate::run::wait_admission(b).await?;
    Ok(r)
}

/// The chart's FlowSchema and PriorityLevelConfiguration for the operator's ServiceAccount, rendered
/// by `helm template` from deploy/helm and applied to every cluster.
pub async fn apply_flow_schema(b: &Bench<'_>) -> anyhow::Result<()> {
    let out = std::process::Command::new(b.o.repo.join("testbed/tools/build.sh"))
        .arg("helm")
        .output()?;
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || bin.is_empty() {
        bail!(
            "building helm for the FlowSchema failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rendered = std::process::Command::new(std::path::Path::new(&bin).join("helm"))
        .args(["template", "kd"])
        .arg(b.o.repo.join("deploy/helm/kubedirector"))
        .args(["--namespace", audit::OPERATOR_NAMESPACE])
        .args(["--set", &format!("serviceAccount.name={}", audit::OPERATOR_SA)])
        .args(["--set", "flowControl.enabled=true"])
        .args(["--show-only", "templates/flowcontrol.yaml"])
        .output()?;
    if !rendered.status.success() {
        bail!("helm template: {}", String::from_utf8_lossy(&rendered.stderr));
    }
    let text = String::from_utf8(rendered.stdout)?;
    let docs: Vec<DynamicObject> = serde_yaml::Deserializer::from_str(&text)
        .map(serde_yaml::Value::deserialize)
        .filter_map(|d| d.ok())
        .filter(|v| !v.is_null())
        .map(serde_yaml::from_value)
        .collect::<Result<_, _>>()?;
    if docs.len() != 2 {
        bail!("the chart's flowcontrol.yaml rendered {} objects, not 2", docs.len());
    }
    for client in &b.clients {
        for d in &docs {
            apply_dynamic(client, d).await?;
        }
    }
    eprintln!("[loadtest] applied the chart's FlowSchema and PriorityLevelConfiguration");
    Ok(())
}

async fn apply_dynamic(client: &Client, d: &DynamicObject) -> anyhow::Result<()> {
    let tm = d.types.as_ref().context("object without apiVersion/kind")?;
    let gvk = kube::core::GroupVersionKind::try_from(tm)?;
    let ar = kube::core::ApiResource::from_gvk(&gvk);
    let api: kube::Api<DynamicObject> = kube::Api::all_with(client.clone(), &ar);
    let name = d.metadata.name.clone().context("object without name")?;
    api.patch(&name, &PatchParams::apply("kd-loadtest").force(), &Patch::Apply(d))
        .await
        .with_context(|| format!("applying {} {name}", tm.kind))?;
    Ok(())
}

/// One side's capacity search: the arrival rate steps ×`factor` from `start_per_second` until a
/// step misses the SLO. Stepped one rate at a time, so that two searches can take turns on one bed.
struct Search {
    side: Side,
    what: String,
    walk: RateWalk,
    k: u32,
    steps: Vec<Step>,
}

/// The rates a capacity search tries: ×`factor` while every step passes; after the first miss,
/// `refine` steps at the geometric middle of the highest pass and the lowest miss; then over.
#[derive(Clone, Debug, PartialEq)]
struct RateWalk {
    rate: f64,
    factor: f64,
    refine: u32,
    best: Option<f64>,
    ceiling: Option<f64>,
    over: bool,
}

impl RateWalk {
    fn new(start: f64, factor: f64, refine: u32) -> Self {
        Self {
            rate: start,
            factor,
            refine,
            best: None,
            ceiling: None,
            over: false,
        }
    }

    /// Records how the step at the current rate went, and picks the next rate.
    fn record(&mut self, passed: bool) {
        if passed {
            self.best = Some(self.rate);
        } else {
            self.ceiling = Some(self.rate);
        }
        match (self.best, self.ceiling) {
            (_, None) => self.rate *= self.factor,
            (Some(lo), Some(hi)) if self.refine > 0 => {
                self.refine -= 1;
                self.rate = (lo * hi).sqrt();
            }
            _ => self.over = true,
        }
    }
}

impl Search {
    fn new(side: Side, what: &str, c: &crate::workload::Capacity) -> Self {
        Self {
            side,
            what: what.to_string(),
            walk: RateWalk::new(c.start_per_second, c.factor, c.refine_steps),
            k: 0,
            steps: Vec::new(),
        }
    }

    fn done(&self, max_steps: u32) -> bool {
        self.walk.over || self.k >= max_steps
    }

    /// Runs the step at the current rate and moves on to the next.
    async fn step(
        &mut self,
        b: &Bench<'_>,
        replicas: Option<&Replicas>,
        base: &mut u32,
        passes: &mut Vec<Pass>,
    ) -> anyhow::Result<()> {
        let w = &b.o.workload;
        let rate = self.walk.rate;
        let arrival = Arrival {
            kind: Kind::Rate,
            per_second: rate,
            spacing: w.arrival.spacing,
            seed: w.arrival.seed.wrapping_add(u64::from(self.k)),
        };
        let per_cluster = arrival.count_for(w.capacity.step_seconds as f64);
        let label = format!("{} at {rate:.2}/s", self.what);
        let p = pass(b, self.side, &label, &arrival, per_cluster, *base, replicas).await?;
        *base += (per_cluster * b.clients.len()) as u32;
        let p99 = p.latency.as_ref().map(|s| s.p99);
        let passed = p.not_done.is_empty() && p.left_behind.is_empty() && p99.is_some_and(|v| v <= w.slo_seconds);
        let l = p.latency.as_ref();
        eprintln!(
            "[loadtest] {label}: p50 {} s, p99 {} s, max {} s, {} not done → {}",
            opt(l.map(|s| s.p50)),
            opt(p99),
            opt(l.map(|s| s.max)),
            p.not_done.len(),
            if passed { "within the SLO" } else { "over the SLO" }
        );
        self.steps.push(Step {
            per_second: rate,
            crs: p.crs,
            p50: p.latency.as_ref().map(|s| s.p50),
            p99,
            passed,
        });
        passes.push(p);
        self.k += 1;
        self.walk.record(passed);
        Ok(())
    }

    /// The highest passing rate, or why there is none to report.
    fn finish(self, b: &Bench<'_>) -> anyhow::Result<CapacityOf> {
        let (w, c) = (&b.o.workload, &b.o.workload.capacity);
        let what = &self.what;
        let Some(best) = self.walk.best else {
            bail!(
                "{what}: the first step ({:.2} CRs/s per cluster) already missed the {} s SLO; lower --start-rate",
                c.start_per_second,
                w.slo_seconds
            );
        };
        if self.steps.iter().all(|s| s.passed) {
            bail!(
                "{what}: every one of {} steps passed (up to {best:.2} CRs/s per cluster): capacity not reached; raise --start-rate or capacity.maxSteps",
                c.max_steps
            );
        }
        // In rate order, refinement steps among the others (tables and plots read along the rate).
        let mut steps = self.steps;
        steps.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        Ok(CapacityOf {
            per_second: best,
            members_per_second: best * b.clients.len() as f64 * f64::from(w.members_per_cr()),
            steps,
        })
    }
}

/// Quiet on the fresh bed before the first step (components settle after start).
async fn warm_up(b: &Bench<'_>) {
    let secs = b.o.workload.capacity.warmup_seconds;
    eprintln!("[loadtest] warm-up: {secs} s of quiet before the first step");
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

/// How long a settle watches the replicas' CPU, and how long it waits at most.
const SETTLE_WINDOW: Duration = Duration::from_secs(5);
const SETTLE_LIMIT: Duration = Duration::from_secs(180);

/// Whether replicas that used `used` CPU seconds over `window`, `n` of them held to `share` of a
/// core each, are idle: under half their quota. A replica held to a small share digests its start
/// (lists, 32 Lease writes) and the previous step's deletions for seconds; a step started then
/// measures that backlog, not the rate.
fn idle(used: f64, n: usize, share: f64, window: Duration) -> bool {
    used <= 0.5 * share * n as f64 * window.as_secs_f64()
}

/// Waits until the replicas are idle (`idle`), at most `SETTLE_LIMIT`.
async fn settle(r: &Replicas, share: f64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut before = r.cpu_seconds().await?;
    loop {
        tokio::time::sleep(SETTLE_WINDOW).await;
        let now = r.cpu_seconds().await?;
        if idle(now - before, r.live().count(), share, SETTLE_WINDOW) {
            return Ok(());
        }
        if started.elapsed() > SETTLE_LIMIT {
            eprintln!(
                "[loadtest] the replicas were still busy after {} s; the step goes ahead",
                SETTLE_LIMIT.as_secs()
            );
            return Ok(());
        }
        before = now;
    }
}

/// One side's whole capacity search; with `share` (scale-out), each step waits for idle replicas.
async fn search(
    b: &Bench<'_>,
    side: Side,
    what: &str,
    replicas: Option<&Replicas>,
    share: Option<f64>,
    base: &mut u32,
    passes: &mut Vec<Pass>,
) -> anyhow::Result<CapacityOf> {
    let c = &b.o.workload.capacity;
    let mut s = Search::new(side, what, c);
    while !s.done(c.max_steps) {
        if let (Some(r), Some(share)) = (replicas, share.filter(|s| *s > 0.0)) {
            settle(r, share).await?;
        }
        s.step(b, replicas, base, passes).await?;
    }
    s.finish(b)
}

/// The floor's and the operator's searches taking turns, rate by rate, on one bed: neither side
/// runs all its steps on a bed the other has worn (a fixed order biased the ratio). Who goes first
/// alternates with the rate. A side that missed the SLO stops; the other goes on.
async fn search_both(
    b: &Bench<'_>,
    replicas: &Replicas,
    base: &mut u32,
    passes: &mut Vec<Pass>,
) -> anyhow::Result<(CapacityOf, CapacityOf)> {
    let c = &b.o.workload.capacity;
    let mut floor = Search::new(Side::Floor, "floor", c);
    let mut op = Search::new(Side::Operator, "operator", c);
    for k in 0.. {
        if floor.done(c.max_steps) && op.done(c.max_steps) {
            break;
        }
        let floor_first = k % 2 == 0;
        for turn in [floor_first, !floor_first] {
            match turn {
                true if !floor.done(c.max_steps) => floor.step(b, None, base, passes).await?,
                false if !op.done(c.max_steps) => op.step(b, Some(replicas), base, passes).await?,
                _ => {}
            }
        }
    }
    Ok((floor.finish(b)?, op.finish(b)?))
}

/// Runs the mode of the bench's workload.
pub async fn run(b: &Bench<'_>) -> anyhow::Result<ModeReport> {
    let w = &b.o.workload;
    if b.o.provider == crate::provider::Provider::Kind {
        bail!(
            "mode {:?} runs the replicas as local processes: use the kwok or contexts provider",
            w.mode
        );
    }
    let started = Instant::now();
    let mut passes = Vec::new();
    let (mut burst, mut capacity, mut scaleout, mut rate_ratios) = (Vec::new(), None, Vec::new(), Vec::new());
    let (mut records, mut kills) = (Vec::new(), Vec::new());
    let mut base = 0u32;
    match w.mode {
        Mode::Standard => bail!("the standard mode is run::measure"),
        Mode::Burst => burst = bursts(b, &mut passes, &mut records, &mut kills).await?,
        Mode::Capacity => {
            if w.flow_schema {
                apply_flow_schema(b).await?;
            }
            let r = replicas(b, w.replicas, None, "replicas-capacity").await?;
            warm_up(b).await;
            let both = search_both(b, &r, &mut base, &mut passes).await;
            records.extend(stop(r).await?.0);
            let (floor, op) = both?;
            let ratio = op.per_second / floor.per_second;
            rate_ratios = self::rate_ratios(&floor.steps, &op.steps);
            capacity = Some((floor, op, ratio));
        }
        Mode::Scaleout => {
            if w.flow_schema {
                apply_flow_schema(b).await?;
            }
            let share = w.scaleout.replica_cpu;
            warm_up(b).await;
            for &n in &w.scaleout.replicas {
                let r = replicas(b, n, Some(share), &format!("replicas-scaleout-{n}")).await?;
                let what = format!("operator ×{n}");
                let from = passes.len();
                let cap = search(b, Side::Operator, &what, Some(&r), Some(share), &mut base, &mut passes).await;
                let (recs, mut per_replica) = stop(r).await?;
                records.extend(recs);
                let cap = cap?;
                for u in &mut per_replica {
                    u.cached_objects = passes[from..]
                        .iter()
                        .filter_map(|p| p.cached_objects.get(&u.id))
                        .copied()
                        .fold(0.0, f64::max);
                }
                let first = scaleout
                    .first()
                    .map_or(cap.per_second, |s: &ScaleRun| s.capacity.per_second);
                scaleout.push(ScaleRun {
                    replicas: n,
                    ratio_to_first: cap.per_second / first,
                    capacity: cap,
                    per_replica,
                });
            }
        }
    }
    count_writes(b, &mut passes)?;
    let burst = burst
        .into_iter()
        .enumerate()
        .map(|(i, (fs, f, o, uses))| {
            let of = |side| {
                passes
                    .iter()
                    .filter(|p| p.side == side)
                    .nth(i)
                    .and_then(|p| p.writes_per_cr)
            };
            BurstPair {
                flow_schema: fs,
                floor_all_ready_seconds: f,
                operator_all_configured_seconds: o,
                ratio: o / f,
                floor_writes_per_cr: of(Side::Floor),
                operator_writes_per_cr: of(Side::Operator),
                operator_peak_rss_mib: uses
                    .iter()
                    .map(|u| u.peak_rss_bytes)
                    .max()
                    .filter(|b| *b > 0)
                    .map(|b| b as f64 / 1048576.0),
                operator_cpu_seconds: uses.iter().map(|u| u.cpu_seconds).sum(),
            }
        })
        .collect();
    let all = record::reconciles(&record::read(&records)?);
    if all.is_empty() {
        bail!("no reconcile records: the replicas did not write any");
    }
    let bad = record::overlaps(&all);
    let mut lost = lost_of(&passes);
    let burst_failover = if kills.is_empty() {
        None
    } else {
        let with_keys = crate::run::shards_with_keys(w, &b.bed.contexts, &b.ns);
        let seconds = crate::run::failover_seconds(&kills, &all, &with_keys, &mut lost).context("burst failover")?;
        lost.total = lost.not_configured.len() + lost.children_left.len();
        Some(BurstFailover { kills, seconds })
    };
    let report = ModeReport {
        run: b.o.run.clone(),
        command: b.o.command.clone(),
        mode: w.mode,
        contexts: b.bed.contexts.clone(),
        workload: w.clone(),
        floor_credentials: b.floor_credentials.to_string(),
        lease_seconds: LEASE_MS as f64 / 1000.0,
        duration_seconds: started.elapsed().as_secs_f64(),
        passes,
        burst,
        burst_failover,
        capacity,
        rate_ratios,
        scaleout,
        overlaps: bad.len(),
        overlap_examples: bad.into_iter().take(10).collect(),
        lost,
    };
    report.plot(&b.o.run_dir.join("plot.png"))?;
    Ok(report)
}

/// A burst's pair of passes: (FlowSchema, floor all Ready, operator all configured, what the
/// operator's replicas used).
type BurstRun = (bool, f64, f64, Vec<ReplicaUse>);

/// Burst mode's pairs of passes, without and with the FlowSchema (or one pair). With
/// `burstKillAfterSeconds`, each operator pass loses its last replica while it is in flight.
async fn bursts(
    b: &Bench<'_>,
    passes: &mut Vec<Pass>,
    records: &mut Vec<std::path::PathBuf>,
    kills: &mut Vec<Kill>,
) -> anyhow::Result<Vec<BurstRun>> {
    let w = &b.o.workload;
    let per_cluster = phases::names_of(w, 0).len();
    if w.crs() as usize != per_cluster * b.clients.len() {
        bail!(
            "burst: members must split evenly over the clusters ({} CRs, {} clusters)",
            w.crs(),
            b.clients.len()
        );
    }
    let arrival = Arrival::burst();
    let variants = if w.burst_both {
        vec![false, true]
    } else {
        vec![w.flow_schema]
    };
    let mut out = Vec::new();
    for fs in variants {
        if fs {
            apply_flow_schema(b).await?;
        }
        let tag = if fs { "with FlowSchema" } else { "without FlowSchema" };
        let floor = pass(
            b,
            Side::Floor,
            &format!("floor burst, {tag}"),
            &arrival,
            per_cluster,
            0,
            None,
        )
        .await?;
        let mut r = replicas(b, w.replicas, None, &format!("replicas-burst-{}", u8::from(fs))).await?;
        let label = format!("operator burst, {tag}");
        let op = if w.burst_kill_after_seconds == 0 {
            pass(b, Side::Operator, &label, &arrival, per_cluster, 0, Some(&r)).await
        } else {
            // The replicas' CPU is not sampled (a killed process's is gone): the pass gets none.
            let after = LEAD + Duration::from_secs(w.burst_kill_after_seconds);
            let killed = kill_last_after(b, &mut r, after);
            let (op, kill) = tokio::join!(pass(b, Side::Operator, &label, &arrival, per_cluster, 0, None), killed);
            op.and_then(|p| {
                let k = kill?;
                if k.at >= p.window.1 {
                    bail!(
                        "{label}: every CR was configured before the kill ({} s in): lower --burst-kill-after",
                        w.burst_kill_after_seconds
                    );
                }
                kills.push(k);
                Ok(p)
            })
        };
        let (recs, uses) = stop(r).await?;
        records.extend(recs);
        let op = op?;
        let (Some(f), Some(o)) = (floor.all_done_seconds, op.all_done_seconds) else {
            bail!("burst {tag}: a side finished no CR");
        };
        out.push((fs, f, o, uses));
        passes.push(floor);
        passes.push(op);
    }
    Ok(out)
}

/// Waits `after`, then SIGKILLs the replica of the last slot (slot 0 serves the webhook when the
/// run has one) and starts its replacement.
async fn kill_last_after(b: &Bench<'_>, r: &mut Replicas, after: Duration) -> anyhow::Result<Kill> {
    tokio::time::sleep(after).await;
    crate::run::kill_slot(r, &b.clients[0], &b.system, b.o.workload.replicas - 1).await
}

/// Stops the replicas; their records, and what each used.
async fn stop(mut r: Replicas) -> anyhow::Result<(Vec<std::path::PathBuf>, Vec<ReplicaUse>)> {
    r.stop(Duration::from_secs(30)).await?;
    let uses = r
        .all
        .iter()
        .map(|i| ReplicaUse {
            id: i.id.clone(),
            cpu_seconds: i.usage.cpu_seconds,
            peak_rss_bytes: i.usage.peak_rss_bytes,
            cached_objects: 0.0,
            throttled_periods: i.limit.as_ref().and_then(|l| l.throttled_periods()),
        })
        .collect();
    Ok((r.records(), uses))
}

/// Each pass's writes from the audit logs (when the bed audits): the operator's in the CRs'
/// namespace, the floor's in its own, within the pass's window.
fn count_writes(b: &Bench<'_>, passes: &mut [Pass]) -> anyhow::Result<()> {
    let Some(logs) = &b.bed.audit_logs else { return Ok(()) };
    let all = audit::read_all(logs)?;
    for p in passes.iter_mut() {
        if p.side == Side::Floor && !b.o.workload.floor_as_operator {
            continue;
        }
        let ns = match p.side {
            Side::Operator => &b.ns,
            Side::Floor => &b.floor_ns,
        };
        let mine: Vec<audit::Write> = all.iter().filter(|w| &w.namespace == ns).cloned().collect();
        let n = audit::window(&mine, p.window.0, p.window.1).0;
        if n == 0 {
            bail!("{}: the audit logs hold no write of this pass", p.label);
        }
        p.writes = Some(n);
        p.writes_per_cr = Some(n as f64 / p.crs as f64);
    }
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into())
}

impl ModeReport {
    pub fn markdown(&self) -> String {
        let w = &self.workload;
        let mut md = format!(
            "# Loadtest {} ({:?} mode)\n\n`{}`\n\n{} clusters ({}), CRs of {} members, shards {}; the floor writes as {}; lease {:.0} s.\n\n",
            self.run,
            self.mode,
            self.command,
            self.contexts.len(),
            self.contexts.join(", "),
            w.members_per_cr(),
            w.shards,
            self.floor_credentials,
            self.lease_seconds
        );
        if !self.burst.is_empty() {
            md.push_str("## Burst: time to all done\n\n| FlowSchema | floor: all pods Ready (s) | operator: all configured (s) | ratio | floor writes/CR | operator writes/CR | operator peak RSS (MiB) | operator CPU (s) |\n|---|---|---|---|---|---|---|---|\n");
            for p in &self.burst {
                md.push_str(&format!(
                    "| {} | {:.1} | {:.1} | {:.2} | {} | {} | {} | {:.1} |\n",
                    if p.flow_schema { "yes" } else { "no" },
                    p.floor_all_ready_seconds,
                    p.operator_all_configured_seconds,
                    p.ratio,
                    opt(p.floor_writes_per_cr),
                    opt(p.operator_writes_per_cr),
                    p.operator_peak_rss_mib.map_or("—".to_string(), |m| format!("{m:.1}")),
                    p.operator_cpu_seconds
                ));
            }
            md.push('\n');
        }
        if let Some(f) = &self.burst_failover {
            let shards: usize = f.kills.iter().map(|k| k.shards.len()).sum();
            md.push_str(&format!(
                "## Failover during the burst (lease {:.0} s)\n\n{} kills ({} s into each operator pass, the last replica), {shards} shards: ",
                self.lease_seconds,
                f.kills.len(),
                w.burst_kill_after_seconds
            ));
            let s = &f.seconds;
            md.push_str(&format!(
                "{} shard failovers, p50 {:.2} s, p99 {:.2} s, max {:.2} s (SIGKILL → first reconcile of the shard by another replica)\n\n",
                s.count, s.p50, s.p99, s.max
            ));
        }
        if let Some((floor, op, ratio)) = &self.capacity {
            md.push_str(&format!(
                "## Capacity (p99 ≤ {} s)\n\n- floor: {:.2} CRs/s per cluster ({:.1} members/s)\n- operator: {:.2} CRs/s per cluster ({:.1} members/s)\n- ratio operator/floor: {ratio:.2}\n\n",
                w.slo_seconds, floor.per_second, floor.members_per_second, op.per_second, op.members_per_second
            ));
            md.push_str("| CRs/s per cluster | floor p50 | floor p99 | operator p50 | operator p99 | ratio p50 | ratio p99 |\n|---|---|---|---|---|---|---|\n");
            for (rate, f, o) in capacity_rows(&floor.steps, &op.steps) {
                let r = self.rate_ratios.iter().find(|r| same_rate(r.per_second, rate));
                md.push_str(&format!(
                    "| {rate:.2} | {} | {} | {} | {} | {} | {} |\n",
                    opt(f.and_then(|f| f.p50)),
                    opt(f.and_then(|f| f.p99)),
                    opt(o.and_then(|o| o.p50)),
                    opt(o.and_then(|o| o.p99)),
                    opt(r.map(|r| r.p50)),
                    opt(r.map(|r| r.p99)),
                ));
            }
            md.push('\n');
        }
        if !self.scaleout.is_empty() {
            md.push_str(&format!(
                "## Scale-out ({} of a core per replica, p99 ≤ {} s)\n\n| replicas | capacity CRs/s per cluster | ratio to first | CPU s per replica | peak RSS MiB per replica | cached objects per replica |\n|---|---|---|---|---|---|\n",
                w.scaleout.replica_cpu, w.slo_seconds
            ));
            for s in &self.scaleout {
                let list =
                    |f: &dyn Fn(&ReplicaUse) -> String| s.per_replica.iter().map(f).collect::<Vec<_>>().join(", ");
                md.push_str(&format!(
                    "| {} | {:.2} | {:.2} | {} | {} | {} |\n",
                    s.replicas,
                    s.capacity.per_second,
                    s.ratio_to_first,
                    list(&|u| format!("{:.1}", u.cpu_seconds)),
                    list(&|u| format!("{:.0}", u.peak_rss_bytes as f64 / 1048576.0)),
                    list(&|u| format!("{:.0}", u.cached_objects)),
                ));
            }
            md.push('\n');
        }
        md.push_str("## Passes\n\nLag after pods (operator passes): a CR's last pod Ready → `configured`. Lag after children: the later of its last pod Ready and its last Service seen → `configured`.\n\n| pass | CRs | p50 | p90 | p99 | max | all done (s) | writes/CR | lag after pods p50 / p99 | lag after children p50 / p99 | not done |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        for p in &self.passes {
            let l = p.latency.as_ref();
            let lag = p.status_lag.as_ref();
            let after = p.children_lag.as_ref();
            let pair = |s: Option<&Summary>| format!("{} / {}", opt(s.map(|s| s.p50)), opt(s.map(|s| s.p99)));
            let (lag, after) = (pair(lag), pair(after));
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                p.label,
                p.crs,
                opt(l.map(|s| s.p50)),
                opt(l.map(|s| s.p90)),
                opt(l.map(|s| s.p99)),
                opt(l.map(|s| s.max)),
                opt(p.all_done_seconds),
                opt(p.writes_per_cr),
                lag,
                after,
                p.not_done.len()
            ));
        }
        md.push_str("\n## API Priority and Fairness (queue wait by priority level)\n\n");
        for p in &self.passes {
            md.push_str(&apf_lines(&p.label, &p.apf_wait));
        }
        md.push_str("\n## Slowest mutating calls per pass (API server p99)\n\n");
        for p in &self.passes {
            let calls: Vec<String> = p
                .slowest_calls
                .iter()
                .map(|c| format!("{} ×{:.0} p99 {:.3} s", c.call, c.count, c.p99_seconds))
                .collect();
            md.push_str(&format!("- {}: {}\n", p.label, calls.join("; ")));
        }
        md.push_str(&cpu_table(&self.passes));
        let endpoint_rows: Vec<(&str, &[(String, f64)])> = self
            .passes
            .iter()
            .map(|p| (p.label.as_str(), p.requests.as_slice()))
            .collect();
        md.push_str(&endpoint_table(&endpoint_rows));
        md.push_str("\n## Most frequent API server calls and watch events per pass\n\n");
        for p in &self.passes {
            let calls: Vec<String> = p
                .requests
                .iter()
                .take(12)
                .map(|(c, n)| format!("{c} ×{n:.0}"))
                .collect();
            md.push_str(&format!("- {}: {}\n", p.label, calls.join("; ")));
        }
        md.push_str(&format!(
            "\n## Correctness\n\n- overlaps: {}\n- lost: {} ({} not configured, {} objects left)\n",
            self.overlaps,
            self.lost.total,
            self.lost.not_configured.len(),
            self.lost.children_left.len()
        ));
        md
    }

    fn plot(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let series = |side: Side| -> Vec<(f64, f64, f64)> {
            self.passes
                .iter()
                .filter(|p| p.side == side)
                .filter_map(|p| {
                    let l = p.latency.as_ref()?;
                    Some((p.per_second?, l.p50, l.p99))
                })
                .collect()
        };
        match self.mode {
            Mode::Capacity => plot::rates(
                path,
                &series(Side::Floor),
                &series(Side::Operator),
                self.workload.slo_seconds,
            ),
            Mode::Scaleout => plot::scaleout(
                path,
                &self
                    .scaleout
                    .iter()
                    .map(|s| (f64::from(s.replicas), s.capacity.per_second))
                    .collect::<Vec<_>>(),
            ),
            _ => plot::cdfs(
                path,
                &self
                    .passes
                    .iter()
                    .map(|p| (p.label.clone(), p.latencies.clone()))
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrival::Spacing;

    fn step(per_second: f64, p50: f64, p99: f64) -> Step {
        Step {
            per_second,
            crs: 1,
            p50: Some(p50),
            p99: Some(p99),
            passed: true,
        }
    }

    #[test]
    fn the_endpoint_table_has_a_row_per_pass_and_zero_for_calls_the_window_lacks() {
        let floor = vec![
            ("watch events pods".to_string(), 14000.0),
            ("POST endpointslices".to_string(), 1163.0),
            ("PUT endpointslices".to_string(), 900.0),
        ];
        let operator = vec![("POST endpoints".to_string(), 1202.0)];
        let md = endpoint_table(&[("floor burst", &floor), ("operator burst", &operator)]);
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 3, "{md}");
        assert!(rows[0].starts_with("| pass | POST endpoints | PUT endpoints |"), "{md}");
        assert_eq!(rows[1], "| floor burst | 0 | 0 | 1163 | 900 | 0 |");
        assert_eq!(rows[2], "| operator burst | 1202 | 0 | 0 | 0 | 0 |");
        assert_eq!(endpoint_table(&[]), "");
    }

    #[test]
    fn replicas_are_idle_under_half_their_quota() {
        let w = Duration::from_secs(5);
        // 4 replicas at 0.008 of a core: 0.16 CPU-s per 5 s at most; idle up to 0.08.
        assert!(idle(0.08, 4, 0.008, w));
        assert!(!idle(0.0801, 4, 0.008, w));
        assert!(idle(0.0, 1, 0.008, w));
        assert!(!idle(0.03, 1, 0.008, w));
    }

    #[test]
    fn the_rate_walk_climbs_then_halves_the_gap_after_the_first_miss() {
        let mut w = RateWalk::new(1.0, 1.25, 2);
        let mut tried = Vec::new();
        for passed in [true, true, false, true, false] {
            tried.push(w.rate);
            w.record(passed);
        }
        // 1.5625 misses: the next rates halve the gap (geometrically) to 1.25, the last pass.
        let mid1 = (1.25f64 * 1.5625).sqrt();
        let mid2 = (mid1 * 1.5625).sqrt();
        let expect = [1.0, 1.25, 1.5625, mid1, mid2];
        for (t, e) in tried.iter().zip(expect) {
            assert!((t - e).abs() < 1e-9, "tried {tried:?}");
        }
        assert_eq!(w.best, Some(mid1));
        assert!((w.ceiling.unwrap_or_default() - mid2).abs() < 1e-9);
        assert!(w.over, "two refinement steps, then over");
        let mut none = RateWalk::new(1.0, 1.5, 0);
        none.record(true);
        none.record(false);
        assert!(
            none.over && none.best == Some(1.0),
            "without refinement the first miss ends it"
        );
        let mut first = RateWalk::new(1.0, 1.5, 3);
        first.record(false);
        assert!(first.over && first.best.is_none(), "no pass: nothing to refine between");
    }

    #[test]
    fn rate_ratios_pair_only_the_rates_both_sides_ran() {
        let floor = [step(1.0, 2.0, 4.0), step(1.5, 2.0, 5.0), step(2.25, 3.0, 9.0)];
        let op = [step(1.0, 3.0, 4.0), step(1.5, 5.0, 10.0)];
        let r = rate_ratios(&floor, &op);
        assert_eq!(
            r,
            vec![
                RateRatio {
                    per_second: 1.0,
                    p50: 1.5,
                    p99: 1.0
                },
                RateRatio {
                    per_second: 1.5,
                    p50: 2.5,
                    p99: 2.0
                }
            ]
        );
    }

    #[test]
    fn capacity_rows_have_every_rate_of_either_side_and_each_sides_own_step() {
        // cap4d: the floor refined to 1.04, the operator to 0.85; 0.94 both ran.
        let floor = [step(0.77, 0.4, 2.0), step(0.94, 0.5, 3.3), step(1.04, 1.3, 4.6)];
        let op = [step(0.77, 0.4, 1.6), step(0.85, 0.8, 4.2), step(0.94, 2.0, 11.7)];
        let rows = capacity_rows(&floor, &op);
        let rates: Vec<f64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(rates, [0.77, 0.85, 0.94, 1.04]);
        let p99 = |s: Option<&Step>| s.and_then(|s| s.p99);
        assert_eq!((p99(rows[1].1), p99(rows[1].2)), (None, Some(4.2)));
        assert_eq!((p99(rows[2].1), p99(rows[2].2)), (Some(3.3), Some(11.7)));
        assert_eq!((p99(rows[3].1), p99(rows[3].2)), (Some(4.6), None));
    }

    #[test]
    fn schedules_name_every_cr_once_and_deal_clusters_round_robin() {
        let t0 = Instant::now();
        let s = schedules(&Arrival::rate(2.0, Spacing::Fixed), 2, 3, 10, t0);
        let names: Vec<&str> = s.iter().flat_map(|a| a.items.iter().map(|(n, _)| n.as_str())).collect();
        assert_eq!(
            names,
            ["lt-00010", "lt-00012", "lt-00014", "lt-00011", "lt-00013", "lt-00015"]
        );
        assert_eq!(s[1].items[2].1, Duration::from_secs(1));
    }
}
