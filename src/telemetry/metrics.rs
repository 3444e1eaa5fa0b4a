//! Prometheus metrics, labelled by member cluster (kubeconfig context). Histogram buckets put
//! boundaries at 0.1 s, 1 s and 5 s so that "under 100 ms / 1 s / 5 s" is read off directly.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

pub const BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub context: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub context: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub context: String,
    pub verb: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    pub context: String,
    pub lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub context: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub context: String,
    pub code: String,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

pub struct Metrics {
    pub registry: Registry,
    pub queue_depth: Family<ClusterLabels, Gauge>,
    pub queue_wait: Family<ClusterLabels, Histogram, fn() -> Histogram>,
    pub reconcile_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    pub reconciles: Family<OutcomeLabels, Counter>,
    pub writes: Family<WriteLabels, Counter>,
    pub writes_coalesced: Family<ClusterLabels, Counter>,
    pub writes_skipped: Family<ClusterLabels, Counter>,
    pub events_skipped: Family<ClusterLabels, Counter>,
    /// Watch events of the operator's own status writes that started no reconcile (`Settled`).
    pub reconciles_settled: Family<ClusterLabels, Counter>,
    pub api_errors: Family<ErrorLabels, Counter>,
    /// The adaptive write budget's current rate, by member cluster.
    pub write_limit: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
    /// API writes out at once per member cluster, and writes waiting for a slot (`queue::gate`).
    pub writes_in_flight: Family<ClusterLabels, Gauge>,
    /// This replica's bound on those (its share of `--writes-in-flight` by the shards it holds).
    pub writes_in_flight_limit: Family<ClusterLabels, Gauge>,
    pub writes_waiting: Family<LaneLabels, Gauge>,
    pub cluster_healthy: Family<ClusterLabels, Gauge>,
    /// Objects in this replica's caches, by member cluster and kind (the loadtest's scale-out
    /// figure: what each replica holds).
    pub cached_objects: Family<KindLabels, Gauge>,
    /// Child watch events received for shards this replica does not hold (dropped before the
    /// caches). The API server selects children by bucket, so this stays near 0 outside handovers.
    pub child_events_dropped: Family<KindLabels, Counter>,
    pub shards_held: Gauge,
    pub shard_acquisitions: Counter,
    pub shard_releases: Counter,
    pub shard_handover_gap: Histogram,
    /// This process, refreshed at every scrape (the loadtest reads in-cluster replicas from these).
    pub process_cpu_seconds: Gauge<f64, AtomicU64>,
    pub process_resident_memory: Gauge,
    pub process_max_resident_memory: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kubedirector");
        let m = Metrics {
            queue_depth: Family::default(),
            queue_wait: Family::new_with_constructor(histogram),
            reconcile_duration: Family::new_with_constructor(histogram),
            reconciles: Family::default(),
            writes: Family::default(),
            writes_coalesced: Family::default(),
            writes_skipped: Family::default(),
            events_skipped: Family::default(),
            reconciles_settled: Family::default(),
            api_errors: Family::default(),
            write_limit: Family::default(),
            writes_in_flight: Family::default(),
            writes_in_flight_limit: Family::default(),
            writes_waiting: Family::default(),
            cluster_healthy: Family::default(),
            cached_objects: Family::default(),
            child_events_dropped: Family::default(),
            shards_held: Gauge::default(),
            shard_acquisitions: Counter::default(),
            shard_releases: Counter::default(),
            shard_handover_gap: histogram(),
            process_cpu_seconds: Gauge::default(),
            process_resident_memory: Gauge::default(),
            process_max_resident_memory: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("queue_depth", "Keys waiting for a worker", m.queue_depth.clone());
        registry.register(
            "queue_wait_seconds",
            "Time from a key becoming ready to a worker taking it",
            m.queue_wait.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles by outcome (done, requeue, throttled, error)",
            m.reconciles.clone(),
        );
        registry.register(
            "api_writes",
            "Mutating API requests issued, by verb and outcome",
            m.writes.clone(),
        );
        registry.register(
            "writes_coalesced",
            "Status writes held back and merged into a later one",
            m.writes_coalesced.clone(),
        );
        registry.register(
            "writes_skipped",
            "Writes not issued because the object already matched",
            m.writes_skipped.clone(),
        );
        registry.register(
            "reconciles_settled",
            "Watch events of the operator's own status writes that started no reconcile (nothing left to do)",
            m.reconciles_settled.clone(),
        );
        registry.register(
            "api_errors",
            "API errors by HTTP status code (0 = no response)",
            m.api_errors.clone(),
        );
        registry.register(
            "write_limit_qps",
            "Writes per second the member cluster's adaptive budget allows now (between --write-qps and --write-burst)",
            m.write_limit.clone(),
        );
        registry.register(
            "writes_in_flight",
            "API writes out at once to the member cluster (at most kubedirector_writes_in_flight_limit)",
            m.writes_in_flight.clone(),
        );
        registry.register(
            "writes_in_flight_limit",
            "This replica's bound on API writes out at once to the member cluster: its share of --writes-in-flight by the shards it holds",
            m.writes_in_flight_limit.clone(),
        );
        registry.register(
            "writes_waiting",
            "API writes waiting for a slot in flight, by lane (behind: Services, after every other write)",
            m.writes_waiting.clone(),
        );
        registry.register(
            "cluster_healthy",
            "1 while the member cluster's watches are healthy",
            m.cluster_healthy.clone(),
        );
        registry.register(
            "cached_objects",
            "Objects held in this replica's caches, by member cluster and kind",
            m.cached_objects.clone(),
        );
        registry.register(
            "child_events_dropped",
            "Child watch events received for shards this replica does not hold, by member cluster and kind",
            m.child_events_dropped.clone(),
        );
        registry.register("shards_held", "Shards this replica holds", m.shards_held.clone());
        registry.register(
            "shard_acquisitions",
            "Shard Leases acquired",
            m.shard_acquisitions.clone(),
        );
        registry.register(
            "shard_releases",
            "Shard Leases released (handover or shutdown)",
            m.shard_releases.clone(),
        );
        registry.register(
            "shard_handover_gap_seconds",
            "From a shard's release by its old owner to the first reconcile by its new owner",
            m.shard_handover_gap.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "CPU time (user + system) this process has used",
            m.process_cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of this process now",
            m.process_resident_memory.clone(),
        );
        registry.register(
            "process_max_resident_memory_bytes",
            "Peak resident memory of this process",
            m.process_max_resident_memory.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text, with this process's own figures read just now.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        if let Ok(u) = super::process::usage(std::process::id()) {
            self.process_cpu_seconds.set(u.cpu_seconds);
            self.process_resident_memory
                .set(i64::try_from(u.rss_bytes).unwrap_or(i64::MAX));
            self.process_max_resident_memory
                .set(i64::try_from(u.peak_rss_bytes).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    pub fn write(&self, context: &str, verb: &str, outcome: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                context: context.to_string(),
                verb: verb.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn write_limit(&self, context: &str, rate: f64) {
        self.write_limit.get_or_create(&self.cluster(context)).set(rate);
    }

    /// The gauges a member's write gate counts into.
    pub fn gate(&self, context: &str) -> crate::queue::gate::Gauges {
        let lane = |lane: &str| {
            self.writes_waiting
                .get_or_create(&LaneLabels {
                    context: context.to_string(),
                    lane: lane.to_string(),
                })
                .clone()
        };
        crate::queue::gate::Gauges {
            limit: self
                .writes_in_flight_limit
                .get_or_create(&self.cluster(context))
                .clone(),
            in_flight: self.writes_in_flight.get_or_create(&self.cluster(context)).clone(),
            ahead: lane("ahead"),
            ready: lane("ready"),
            behind: lane("behind"),
        }
    }

    pub fn api_error(&self, context: &str, code: u16) {
        self.api_errors
            .get_or_create(&ErrorLabels {
                context: context.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    pub fn cluster(&self, context: &str) -> ClusterLabels {
        ClusterLabels {
            context: context.to_string(),
        }
    }
}
