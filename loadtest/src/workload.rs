//! What a run does: how many clusters, CRs and members, the roles of each CR, churn, replicas, shards
//! and chaos. From a YAML file, a profile, and flags (flags win). Pure: validated here, used everywhere.

use serde::{Deserialize, Serialize};

use crate::arrival::{Arrival, Spacing};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkloadError {
    #[error("workload field `{field}`: {problem}")]
    Invalid { field: String, problem: String },
    #[error("workload file {path}: {message}")]
    File { path: String, message: String },
}

fn invalid(field: &str, problem: impl Into<String>) -> WorkloadError {
    WorkloadError::Invalid {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// One role of the loadtest app, with the members each CR asks for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub id: String,
    pub members: u32,
}

/// After every CR is configured, `fraction` of them are resized, alternately by +delta and −delta
/// members of the last role, spread evenly over `seconds`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Churn {
    pub fraction: f64,
    pub delta: u32,
    pub seconds: u64,
}

/// SIGKILL one replica every `every_seconds` (round robin) and start a replacement at once, as a
/// Deployment would (a new pod, a new replica identity). 0 turns chaos off.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Chaos {
    pub every_seconds: u64,
}

/// What a run measures (docs/loadtest.md, "Modes").
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Create (at `arrival`) → churn → soak (chaos throughout) → delete, then the floor at the same
    /// arrival times.
    Standard,
    /// Every CR at once, and the floor's groups at once: time to all configured against time to all
    /// pods Ready, without and with the chart's FlowSchema.
    Burst,
    /// The arrival rate stepped ×`capacity.factor` until p99 passes `sloSeconds`, floor and operator.
    Capacity,
    /// Capacity of the operator with each of `scaleout.replicas`, every replica held to
    /// `scaleout.replicaCpu` of a core by a cgroup.
    Scaleout,
}

/// The `capacity` and `scaleout` steps: each step's CRs arrive at `perSecond` (per cluster) for
/// `stepSeconds`; the next step multiplies the rate by `factor`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Capacity {
    pub start_per_second: f64,
    pub factor: f64,
    pub step_seconds: u64,
    pub max_steps: u32,
    /// Quiet time before the first step: a bed that has just started (4 clusters on 2 cores) is
    /// still busy bootstrapping, and its first step would measure that.
    pub warmup_seconds: u64,
    /// Steps spent after the first miss, each at the geometric middle of the highest passing and
    /// the lowest missing rate: with ×1.25 steps, 2 of them read the capacity to ×1.06. 0 = none.
    #[serde(default)]
    pub refine_steps: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scaleout {
    pub replicas: Vec<u32>,
    /// Share of one core each replica may use (cgroup cfs quota); 0 = unlimited.
    pub replica_cpu: f64,
}

/// The operator's own default (`--writes-in-flight`).
fn default_writes_in_flight() -> u16 {
    32
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    pub mode: Mode,
    /// When the CRs (and the floor's groups) arrive.
    pub arrival: Arrival,
    /// A latency objective: capacity is the highest rate whose p99 stays within it (default 5 s,
    /// the Kubernetes pod-startup SLO).
    pub slo_seconds: f64,
    pub capacity: Capacity,
    pub scaleout: Scaleout,
    /// The floor writes with the operator's ServiceAccount token (where the bed has one), so that
    /// API Priority and Fairness treats both sides alike; false = as the bed's admin.
    pub floor_as_operator: bool,
    /// The chart's FlowSchema and PriorityLevelConfiguration applied before the run (standard,
    /// capacity, scaleout; burst measures without and with it regardless).
    pub flow_schema: bool,
    /// Burst: measure both without and with the FlowSchema; false = only as `flowSchema` says.
    pub burst_both: bool,
    /// Burst: this long after the first arrival of each operator pass, SIGKILL the replica of the
    /// last slot (never slot 0, which serves the webhook) and start a replacement; its shards'
    /// failover is measured while the burst is in flight. 0 = no kill.
    #[serde(default)]
    pub burst_kill_after_seconds: u64,
    /// The operator serves its admission webhook (as the chart deploys it) and the API server calls
    /// it for every KubeDirector object of the run: the mutating webhook puts the finalizer in at
    /// create, so no finalizer patch. Local replicas on one cluster only (the webhook listens on
    /// 127.0.0.1); replica slot 0 serves it.
    #[serde(default)]
    pub admission: bool,
    /// Member clusters (kwok, kind: created by the harness; contexts: the number of contexts given).
    pub clusters: u32,
    /// Members in total, over every CR of every cluster.
    pub members: u32,
    pub roles: Vec<Role>,
    pub churn: Churn,
    pub replicas: u32,
    pub shards: u32,
    pub chaos: Chaos,
    /// After churn, everything keeps running (and chaos keeps killing) this long; then every CR
    /// must still be configured.
    pub soak_seconds: u64,
    /// Creates (CRs, floor objects) in flight at once, per cluster.
    pub create_concurrency: u32,
    /// The operator's write limit per member cluster.
    pub write_qps: u32,
    pub write_burst: u32,
    /// The operator's API writes in flight at once per member cluster (`--writes-in-flight`).
    #[serde(default = "default_writes_in_flight")]
    pub writes_in_flight: u16,
    /// Fake nodes per cluster (kwok, kind).
    pub nodes: u32,
    /// Longest wait for one phase (create, churn, delete, floor) before its stragglers count as lost.
    pub phase_timeout_seconds: u64,
    /// The test bed is trusted when its API servers' mutating-call p99 stays below this.
    pub healthy_mutating_p99_seconds: f64,
}

impl Workload {
    /// The `make loadtest` run: 4 clusters, 5,000 members, 3 replicas, 32 shards, a kill every 60 s.
    pub fn standard() -> Workload {
        Workload {
            mode: Mode::Standard,
            arrival: Arrival::rate(2.0, Spacing::Poisson),
            slo_seconds: 5.0,
            capacity: Capacity {
                start_per_second: 1.0,
                factor: 1.5,
                step_seconds: 60,
                max_steps: 12,
                warmup_seconds: 60,
                refine_steps: 0,
            },
            scaleout: Scaleout {
                replicas: vec![1, 2, 4],
                replica_cpu: 0.2,
            },
            floor_as_operator: true,
            flow_schema: false,
            burst_both: true,
            burst_kill_after_seconds: 0,
            admission: false,
            clusters: 4,
            members: 5000,
            roles: vec![
                Role {
                    id: "controller".into(),
                    members: 1,
                },
                Role {
                    id: "worker".into(),
                    members: 4,
                },
            ],
            churn: Churn {
                fraction: 0.1,
                delta: 1,
                seconds: 30,
            },
            replicas: 3,
            shards: 32,
            chaos: Chaos { every_seconds: 60 },
            soak_seconds: 150,
            create_concurrency: 16,
            write_qps: 100,
            write_burst: 200,
            writes_in_flight: default_writes_in_flight(),
            nodes: 10,
            phase_timeout_seconds: 600,
            healthy_mutating_p99_seconds: 1.0,
        }
    }

    /// The `--small` run, part of `make test`: every phase and figure, in well under 3 minutes.
    pub fn small() -> Workload {
        Workload {
            clusters: 2,
            members: 200,
            replicas: 2,
            shards: 8,
            churn: Churn {
                fraction: 0.25,
                delta: 1,
                seconds: 10,
            },
            chaos: Chaos { every_seconds: 15 },
            arrival: Arrival::rate(2.0, Spacing::Poisson),
            soak_seconds: 40,
            nodes: 4,
            phase_timeout_seconds: 180,
            ..Workload::standard()
        }
    }

    pub fn from_yaml(path: &str, text: &str) -> Result<Workload, WorkloadError> {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| WorkloadError::File {
            path: path.to_string(),
            message: format!("at `{}`: {}", e.path(), e.inner()),
        })
    }

    pub fn members_per_cr(&self) -> u32 {
        self.roles.iter().map(|r| r.members).sum()
    }

    /// CRs in the whole run (validated: members is a multiple of the members per CR).
    pub fn crs(&self) -> u32 {
        self.members / self.members_per_cr().max(1)
    }

    /// CRs resized by churn.
    pub fn churned(&self) -> u32 {
        (f64::from(self.crs()) * self.churn.fraction).round() as u32
    }

    /// Every rule, each naming its field and what is allowed.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        if self.clusters == 0 {
            return Err(invalid("clusters", "must be at least 1"));
        }
        if self.roles.is_empty() {
            return Err(invalid("roles", "needs at least one role, e.g. controller=1,worker=4"));
        }
        for (i, r) in self.roles.iter().enumerate() {
            let ok = !r.id.is_empty()
                && r.id.len() <= 30
                && r.id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && r.id.starts_with(|c: char| c.is_ascii_lowercase());
            if !ok {
                return Err(invalid(
                    &format!("roles[{i}].id"),
                    format!(
                        "{:?}: use 1-30 lower-case letters, digits or '-', starting with a letter",
                        r.id
                    ),
                ));
            }
            if r.members == 0 {
                return Err(invalid(&format!("roles[{i}].members"), "must be at least 1"));
            }
            if self.roles[..i].iter().any(|o| o.id == r.id) {
                return Err(invalid(&format!("roles[{i}].id"), format!("{:?} is used twice", r.id)));
            }
        }
        let per_cr = self.members_per_cr();
        if self.members < per_cr || !self.members.is_multiple_of(per_cr) {
            return Err(invalid(
                "members",
                format!(
                    "{} is not a positive multiple of the members per CR ({per_cr}, from roles)",
                    self.members
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.churn.fraction) {
            return Err(invalid(
                "churn.fraction",
                format!("{} is not within 0..=1", self.churn.fraction),
            ));
        }
        let last = self.roles.last().map(|r| r.members).unwrap_or(0);
        if self.churn.fraction > 0.0 && (self.churn.delta == 0 || self.churn.delta >= last) {
            return Err(invalid(
                "churn.delta",
                format!(
                    "must be between 1 and {} (the last role's members − 1)",
                    last.saturating_sub(1)
                ),
            ));
        }
        if self.replicas == 0 {
            return Err(invalid("replicas", "must be at least 1"));
        }
        if self.admission && self.clusters != 1 {
            return Err(invalid(
                "admission",
                format!(
                    "needs clusters: 1 (the webhook listens on 127.0.0.1), got {}",
                    self.clusters
                ),
            ));
        }
        if self.shards == 0 && self.replicas > 1 {
            return Err(invalid("shards", "0 (unsharded) allows only replicas: 1"));
        }
        // Chaos, churn and soak belong to the standard run; the other modes ignore them.
        let standard = self.mode == Mode::Standard;
        if standard && self.admission && self.chaos.every_seconds > 0 {
            return Err(invalid(
                "admission",
                "needs chaos.everySeconds: 0 (killing replica 0 would take the webhook, and with it every create, down)",
            ));
        }
        if standard && self.chaos.every_seconds > 0 && self.replicas < 2 {
            return Err(invalid(
                "chaos.everySeconds",
                "chaos needs replicas >= 2 (someone must take the shards over)",
            ));
        }
        if standard && self.chaos.every_seconds > 0 && self.soak_seconds < self.chaos.every_seconds {
            return Err(invalid(
                "soakSeconds",
                format!(
                    "must be at least chaos.everySeconds ({}) so that at least one replica is killed",
                    self.chaos.every_seconds
                ),
            ));
        }
        if standard && self.chaos.every_seconds > 0 && self.shards == 0 {
            return Err(invalid("chaos.everySeconds", "chaos needs shards > 0"));
        }
        if self.burst_kill_after_seconds > 0 {
            if self.mode != Mode::Burst {
                return Err(invalid("burstKillAfterSeconds", "belongs to mode: burst"));
            }
            if self.replicas < 2 || self.shards == 0 {
                return Err(invalid(
                    "burstKillAfterSeconds",
                    "needs replicas >= 2 and shards > 0 (someone must take the shards over)",
                ));
            }
        }
        for (field, v) in [
            ("createConcurrency", self.create_concurrency),
            ("writeQps", self.write_qps),
            ("writeBurst", self.write_burst),
            ("writesInFlight", u32::from(self.writes_in_flight)),
            ("nodes", self.nodes),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if let Some(p) = self.arrival.problem() {
            return Err(invalid("arrival.perSecond", p));
        }
        if !(self.slo_seconds.is_finite() && self.slo_seconds > 0.0) {
            return Err(invalid(
                "sloSeconds",
                format!("{} is not a positive number of seconds", self.slo_seconds),
            ));
        }
        let c = &self.capacity;
        if !(c.start_per_second.is_finite() && c.start_per_second > 0.0) {
            return Err(invalid(
                "capacity.startPerSecond",
                "must be a positive rate (CRs/s per cluster)",
            ));
        }
        if !(c.factor.is_finite() && c.factor > 1.0) {
            return Err(invalid("capacity.factor", format!("{} must be above 1", c.factor)));
        }
        if c.step_seconds == 0 {
            return Err(invalid("capacity.stepSeconds", "must be at least 1"));
        }
        if c.max_steps == 0 {
            return Err(invalid("capacity.maxSteps", "must be at least 1"));
        }
        if self.scaleout.replicas.is_empty() || self.scaleout.replicas.contains(&0) {
            return Err(invalid(
                "scaleout.replicas",
                "needs replica counts of at least 1, e.g. [1, 2, 4]",
            ));
        }
        if self.mode == Mode::Scaleout && self.scaleout.replicas.iter().any(|r| *r > 1) && self.shards == 0 {
            return Err(invalid("shards", "scale-out needs shards > 0"));
        }
        let cpu = self.scaleout.replica_cpu;
        if !(cpu.is_finite() && (cpu == 0.0 || cpu >= crate::cgroup::MIN_SHARE)) {
            return Err(invalid(
                "scaleout.replicaCpu",
                "must be 0 (unlimited) or a share of a core of at least 0.001 (1 ms a second, the kernel's smallest quota), e.g. 0.2",
            ));
        }
        if self.phase_timeout_seconds == 0 {
            return Err(invalid("phaseTimeoutSeconds", "must be at least 1"));
        }
        Ok(())
    }
}

/// Parses `controller=1,worker=4` (the `--roles` flag).
pub fn parse_roles(text: &str) -> Result<Vec<Role>, WorkloadError> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|part| {
            let (id, n) = part
                .split_once('=')
                .ok_or_else(|| invalid("roles", format!("{part:?}: expected id=members, e.g. worker=4")))?;
            let members = n
                .trim()
                .parse::<u32>()
                .map_err(|_| invalid("roles", format!("{part:?}: members must be a whole number")))?;
            Ok(Role {
                id: id.trim().to_string(),
                members,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid_and_add_up() {
        let w = Workload::standard();
        w.validate().expect("standard");
        assert_eq!((w.crs(), w.members_per_cr()), (1000, 5));
        Workload::small().validate().expect("small");
        assert_eq!(Workload::small().crs(), 40);
        assert_eq!(Workload::small().churned(), 10);
    }

    /// The workload files docs/loadtest.md runs are kept valid.
    #[test]
    fn the_kept_workloads_parse_and_validate() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("loadtest/workloads") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            let w = Workload::from_yaml(&path.display().to_string(), &text).expect("parse");
            w.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
        assert!(seen > 0, "no workload in {dir}");
    }

    #[test]
    fn errors_name_the_field_and_what_is_allowed() {
        let mut w = Workload {
            members: 4999,
            ..Workload::standard()
        };
        let e = w.validate().expect_err("not a multiple").to_string();
        assert!(
            e.contains("`members`") && e.contains("multiple of the members per CR (5"),
            "{e}"
        );
        w.members = 5000;
        w.roles[1].id = "Worker".into();
        let e = w.validate().expect_err("bad id").to_string();
        assert!(e.contains("`roles[1].id`") && e.contains("lower-case"), "{e}");
        w.roles[1].id = "worker".into();
        w.churn.delta = 4;
        let e = w.validate().expect_err("delta").to_string();
        assert!(e.contains("`churn.delta`") && e.contains("between 1 and 3"), "{e}");
        w.churn.delta = 1;
        w.replicas = 1;
        let e = w.validate().expect_err("chaos").to_string();
        assert!(e.contains("`chaos.everySeconds`"), "{e}");
        w.mode = Mode::Capacity;
        w.validate().expect("other modes ignore chaos");
        w.burst_kill_after_seconds = 10;
        let e = w.validate().expect_err("a kill outside burst").to_string();
        assert!(
            e.contains("`burstKillAfterSeconds`") && e.contains("mode: burst"),
            "{e}"
        );
        w.mode = Mode::Burst;
        let e = w.validate().expect_err("a kill with one replica").to_string();
        assert!(
            e.contains("`burstKillAfterSeconds`") && e.contains("replicas >= 2"),
            "{e}"
        );
        w.replicas = 3;
        w.validate().expect("a kill with three replicas");
        w.burst_kill_after_seconds = 0;
        w.replicas = 1;
        w.mode = Mode::Capacity;
        w.admission = true;
        let e = w.validate().expect_err("admission on 4 clusters").to_string();
        assert!(e.contains("`admission`") && e.contains("clusters: 1"), "{e}");
        w.clusters = 1;
        w.validate().expect("admission on one cluster");
        (w.mode, w.replicas) = (Mode::Standard, 2);
        let e = w.validate().expect_err("admission with chaos").to_string();
        assert!(e.contains("`admission`") && e.contains("chaos.everySeconds: 0"), "{e}");
        (w.admission, w.mode) = (false, Mode::Scaleout);
        w.scaleout.replica_cpu = 0.0005;
        let e = w.validate().expect_err("under a CFS quota's reach").to_string();
        assert!(
            e.contains("`scaleout.replicaCpu`") && e.contains("at least 0.001"),
            "{e}"
        );
        w.scaleout.replica_cpu = 0.001;
        w.validate().expect("1 ms a second");
    }

    #[test]
    fn yaml_errors_carry_the_path() {
        let e = Workload::from_yaml("w.yaml", "clusters: two\n")
            .expect_err("type")
            .to_string();
        assert!(e.contains("w.yaml") && e.contains("clusters"), "{e}");
        let mut text = serde_yaml::to_string(&Workload::small()).expect("yaml");
        assert_eq!(Workload::from_yaml("w", &text), Ok(Workload::small()));
        text.push_str("surprise: 1\n");
        let e = Workload::from_yaml("w", &text).expect_err("unknown").to_string();
        assert!(e.contains("surprise"), "{e}");
    }

    #[test]
    fn roles_flag() {
        assert_eq!(
            parse_roles("a=1, b=4").expect("roles"),
            vec![
                Role {
                    id: "a".into(),
                    members: 1
                },
                Role {
                    id: "b".into(),
                    members: 4
                }
            ]
        );
        let e = parse_roles("a").expect_err("no =").to_string();
        assert!(e.contains("expected id=members"), "{e}");
        assert!(parse_roles("a=x").is_err());
    }
}
