//! The run's report: report.json (fields documented in docs/loadtest.md) and report.md.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::records::Kill;
use crate::stats::Summary;
use crate::workload::Workload;
use kubedirector::telemetry::process::Usage;

#[derive(Debug, Serialize)]
pub struct Report {
    pub run: String,
    pub command: String,
    pub provider: crate::provider::Provider,
    pub contexts: Vec<String>,
    pub operator_binary: String,
    pub workload: Workload,
    pub crs: u32,
    pub duration_seconds: f64,
    pub testbed: Testbed,
    pub latency: Latency,
    pub overhead_ratio: Ratio,
    pub writes: Writes,
    pub queue_wait_p99_seconds: f64,
    pub replicas: Vec<ReplicaFigures>,
    /// Pods cached by each live replica when every CR was configured (the caches are divided by
    /// shard: together they should hold each member's pods once, ± a handover in progress).
    pub cached_pods: Result<CachedPods, String>,
    pub failover: Option<Failover>,
    /// With chaos: the create latency split by whether a CR waited through a failover of its shard.
    pub by_failover: Option<FailoverSplit>,
    pub overlaps: usize,
    pub overlap_examples: Vec<String>,
    pub lost: Lost,
    pub phases: BTreeMap<String, f64>,
    /// Who wrote the floor's objects: the operator's ServiceAccount (APF treats both sides alike)
    /// or the bed's admin (exempt from APF).
    pub floor_credentials: String,
    /// API Priority and Fairness queue wait by priority level, per phase (create, floor).
    pub apf_wait: BTreeMap<String, BTreeMap<String, ApfWait>>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CachedPods {
    /// Members (pods) of the workload.
    pub members: u32,
    pub per_replica: Vec<(String, f64)>,
    pub sum: f64,
    /// How long after every CR was configured the figure was read (at most 60 s: the sum was
    /// short of the members until then).
    pub waited_seconds: f64,
}

/// `apiserver_flowcontrol_request_wait_duration_seconds` of one priority level in a window.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ApfWait {
    pub requests: f64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
}

/// Markdown lines of APF waits.
pub fn apf_lines(phase: &str, levels: &BTreeMap<String, ApfWait>) -> String {
    let parts: Vec<String> = levels
        .iter()
        .map(|(l, a)| format!("{l} ×{:.0} p99 {:.3} s", a.requests, a.p99_seconds))
        .collect();
    format!(
        "- {phase}: {}\n",
        if parts.is_empty() {
            "no requests".to_string()
        } else {
            parts.join("; ")
        }
    )
}

#[derive(Debug, Serialize)]
pub struct Testbed {
    /// API server mutating-call p99 (seconds) per context over the operator's and the floor's phases.
    pub mutating_p99_seconds: BTreeMap<String, f64>,
    /// Per context, the five kinds of mutating call with the highest p99.
    pub slowest_calls: BTreeMap<String, Vec<SlowCall>>,
    pub healthy: bool,
}

#[derive(Debug, Serialize)]
pub struct SlowCall {
    pub call: String,
    pub count: f64,
    pub p99_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub create: Summary,
    pub change: Option<Summary>,
    pub floor: Summary,
}

/// A SIGKILL leaves a shard without an owner for about a lease; the CRs that wait through that
/// window carry a delay no floor has. The others, against the floor's groups of the same names, are
/// what the operator costs when no replica dies.
#[derive(Debug, Serialize)]
pub struct FailoverSplit {
    /// CRs that waited through a failover of their shard.
    pub waited: Option<Summary>,
    /// The other CRs.
    pub others: Summary,
    /// The floor's groups of the same names as `others`.
    pub floor_others: Summary,
    pub ratio_others: Ratio,
}

#[derive(Debug, Serialize)]
pub struct Ratio {
    pub p50: f64,
    pub p99: f64,
}

#[derive(Debug, Serialize)]
pub struct Writes {
    /// "audit" (the API servers' audit logs) or "operator-counters".
    pub source: String,
    pub create_phase: u64,
    pub per_member_create: f64,
    pub churn_phase: u64,
    /// Members added or removed by churn.
    pub churn_members: u32,
    pub per_member_churn: Option<f64>,
    pub delete_phase: u64,
    /// Writes of every kind but Leases, whole run.
    pub total: u64,
    /// Shard Lease writes (acquire, renew, release), whole run; not in the per-member figures.
    pub lease_writes: u64,
    pub by_request: BTreeMap<String, u64>,
    /// The operators' own counter (all incarnations), for comparison.
    pub operator_counted: f64,
    /// The floor's writes (audited when it writes as the operator), and per member.
    pub floor_phase: Option<u64>,
    pub floor_per_member: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ReplicaFigures {
    pub slot: u32,
    pub incarnations: Vec<String>,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

impl ReplicaFigures {
    pub fn add(&mut self, id: &str, u: Usage) {
        self.incarnations.push(id.to_string());
        self.cpu_seconds += u.cpu_seconds;
        self.peak_rss_bytes = self.peak_rss_bytes.max(u.peak_rss_bytes);
    }
}

#[derive(Debug, Serialize)]
pub struct Failover {
    pub kills: Vec<Kill>,
    /// Every kill's shards: SIGKILL → first reconcile of the shard by another replica.
    pub seconds: Summary,
    /// Only kills while the create phase was in flight (CRs arriving or being configured).
    pub under_load: Option<Summary>,
    /// Only kills after every CR was configured.
    pub idle: Option<Summary>,
    pub lease_seconds: f64,
}

#[derive(Debug, Serialize, Default)]
pub struct Lost {
    /// CRs that never reached `configured` (after create or after a change).
    pub not_configured: Vec<String>,
    /// Children (StatefulSets, Services, PVCs, Pods) left after every CR was deleted.
    pub children_left: Vec<String>,
    pub total: usize,
}

fn row(name: &str, s: &Summary) -> String {
    format!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        s.count, s.p50, s.p90, s.p99, s.max
    )
}

impl Report {
    pub fn markdown(&self) -> String {
        let w = &self.workload;
        let mut md = format!(
            "# Loadtest {}\n\n`{}`\n\nProvider `{:?}`, {} clusters ({}), {} CRs × {} members = {} members, {} replicas, {} shards, chaos {}, churn {} CRs.\n\n",
            self.run,
            self.command,
            self.provider,
            w.clusters,
            self.contexts.join(", "),
            self.crs,
            w.members_per_cr(),
            w.members,
            w.replicas,
            w.shards,
            if w.chaos.every_seconds > 0 {
                format!("a SIGKILL every {} s", w.chaos.every_seconds)
            } else {
                "off".into()
            },
            w.churned(),
        );
        md.push_str("## Latency (seconds)\n\n| | count | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|\n");
        md.push_str(&row("create → configured", &self.latency.create));
        if let Some(c) = &self.latency.change {
            md.push_str(&row("change → configured", c));
        }
        md.push_str(&row("floor (no operator)", &self.latency.floor));
        md.push_str(&format!(
            "\nArrival: {}; each clock starts at its scheduled arrival, the floor replays the same times and writes as {}.\n",
            w.arrival.describe(),
            self.floor_credentials
        ));
        md.push_str(&format!(
            "\nOverhead ratio (operator / floor): p50 {:.2}, p99 {:.2}\n\n",
            self.overhead_ratio.p50, self.overhead_ratio.p99
        ));
        if let Some(f) = &self.by_failover {
            let waited = f.waited.as_ref().map_or("none".to_string(), |w| {
                format!(
                    "{} CRs, p50 {:.2} s, p99 {:.2} s, max {:.2} s",
                    w.count, w.p50, w.p99, w.max
                )
            });
            md.push_str(&format!(
                "Split by failover: CRs that waited through a failover of their shard: {waited}. The other {} CRs: p50 {:.2} s, p99 {:.2} s, against the floor's same groups p50 {:.2} s, p99 {:.2} s: ratio p50 {:.2}, p99 {:.2}\n\n",
                f.others.count, f.others.p50, f.others.p99, f.floor_others.p50, f.floor_others.p99, f.ratio_others.p50, f.ratio_others.p99
            ));
        }
        let x = &self.writes;
        md.push_str(&format!(
            "## API writes (source: {})\n\n- create phase: {} writes, {:.2} per member\n- churn phase: {} writes for {} members changed{}\n- delete phase: {}; total {} plus {} shard Lease writes (operators' own counters: {})\n- queue wait p99: {:.3} s\n\n",
            x.source,
            x.create_phase,
            x.per_member_create,
            x.churn_phase,
            x.churn_members,
            x.per_member_churn.map(|v| format!(", {v:.2} per member")).unwrap_or_default(),
            x.delete_phase,
            x.total,
            x.lease_writes,
            x.operator_counted,
            self.queue_wait_p99_seconds
        ));
        if let (Some(n), Some(per)) = (x.floor_phase, x.floor_per_member) {
            md.push_str(&format!("- floor: {n} writes, {per:.2} per member\n\n"));
        }
        md.push_str("## API Priority and Fairness (queue wait by priority level)\n\n");
        for (phase, levels) in &self.apf_wait {
            md.push_str(&apf_lines(phase, levels));
        }
        md.push_str("\n## Replicas\n\n| slot | incarnations | CPU s | peak RSS MiB |\n|---|---|---|---|\n");
        for r in &self.replicas {
            md.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} |\n",
                r.slot,
                r.incarnations.join(", "),
                r.cpu_seconds,
                r.peak_rss_bytes as f64 / 1048576.0
            ));
        }
        match &self.cached_pods {
            Ok(c) => {
                let each: Vec<String> = c.per_replica.iter().map(|(id, n)| format!("{id} {n:.0}")).collect();
                md.push_str(&format!(
                    "\nPods cached when every CR was configured: {:.0} over the replicas for {} members ({}), read {:.0} s later\n",
                    c.sum,
                    c.members,
                    each.join(", "),
                    c.waited_seconds
                ));
            }
            Err(why) => md.push_str(&format!("\nPods cached when every CR was configured: {why}\n")),
        }
        match &self.failover {
            Some(f) => {
                md.push_str(&format!(
                    "\n## Failover (lease {:.0} s)\n\n{} kills, {} shard failovers: p50 {:.2} s, p99 {:.2} s, max {:.2} s\n",
                    f.lease_seconds,
                    f.kills.len(),
                    f.seconds.count,
                    f.seconds.p50,
                    f.seconds.p99,
                    f.seconds.max
                ));
                for (name, s) in [("under load (create phase)", &f.under_load), ("idle", &f.idle)] {
                    match s {
                        Some(s) => md.push_str(&format!(
                            "- {name}: {} shards, p50 {:.2} s, p99 {:.2} s, max {:.2} s\n",
                            s.count, s.p50, s.p99, s.max
                        )),
                        None => md.push_str(&format!("- {name}: no kill\n")),
                    }
                }
            }
            None => md.push_str("\n## Failover\n\nchaos off: no kills\n"),
        }
        md.push_str(&format!(
            "\n## Correctness\n\n- overlaps: {}\n- lost: {} ({} not configured, {} children left)\n\n## Test bed\n\n",
            self.overlaps,
            self.lost.total,
            self.lost.not_configured.len(),
            self.lost.children_left.len()
        ));
        for (c, p) in &self.testbed.mutating_p99_seconds {
            let slow: Vec<String> = (self.testbed.slowest_calls.get(c).into_iter().flatten())
                .map(|s| format!("{} ×{} p99 {:.3} s", s.call, s.count, s.p99_seconds))
                .collect();
            md.push_str(&format!(
                "- {c}: API mutating-call p99 {p:.3} s (slowest: {})\n",
                slow.join("; ")
            ));
        }
        md.push_str(&format!(
            "- healthy (p99 < {} s everywhere): {}\n\n## Phases (seconds)\n\n",
            w.healthy_mutating_p99_seconds, self.testbed.healthy
        ));
        for (p, s) in &self.phases {
            md.push_str(&format!("- {p}: {s:.1}\n"));
        }
        md
    }
}
