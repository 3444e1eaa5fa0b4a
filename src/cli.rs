//! The operator's command line. One `clap::Args` group per concern (which member clusters, how each
//! is reconciled, guest commands, shards, the webhook, telemetry), each turned into the options of
//! the part it configures and validated there, once, before anything starts: a bad flag is an
//! error that names it, never a part that fails later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::admission::server::{CertSource, WebhookOptions};
use crate::fleet::{self, Admission, FleetOptions, Members};
use crate::member;
use crate::queue::backoff::Backoff;
use crate::reconcile::context::EventLevel;
use crate::reconcile::guest::{Configcli, Limits};
use crate::shard::manager::{ShardConfigError, ShardOptions};
use crate::telemetry::http::{self, Readiness};
use crate::telemetry::metrics::Metrics;

#[derive(Parser)]
#[command(
    name = "kubedirector",
    version,
    about = "KubeDirector-compatible operator for complex stateful applications"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Reconcile every KubeDirectorCluster of the selected member clusters until SIGTERM/SIGINT.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions this version serves (YAML), e.g. for `kubectl apply -f -`.
    Crds,
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub member: MemberArgs,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub shards: ShardArgs,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Which member clusters.
#[derive(clap::Args)]
#[command(next_help_heading = "Member clusters")]
pub struct FleetArgs {
    /// Kubeconfig file. Default: $KUBECONFIG, then ~/.kube/config, then the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Member cluster to manage, by kubeconfig context (repeatable). Default: the current context.
    #[arg(
        long = "context",
        env = "KD_CONTEXTS",
        value_delimiter = ',',
        conflicts_with = "all_contexts"
    )]
    pub contexts: Vec<String>,
    /// Manage every context of the kubeconfig, including contexts added later.
    #[arg(long, env = "KD_ALL_CONTEXTS")]
    pub all_contexts: bool,
    /// Context of the home cluster (holds the shard Leases). Default: the first member.
    #[arg(long, env = "KD_HOME_CONTEXT")]
    pub home_context: Option<String>,
    /// Seconds between kubeconfig re-reads (added, removed and edited contexts apply without a restart).
    #[arg(long, env = "KD_KUBECONFIG_RELOAD_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub kubeconfig_reload_seconds: u64,
}

/// How every member cluster is reconciled.
#[derive(clap::Args)]
#[command(next_help_heading = "Reconciling")]
pub struct MemberArgs {
    /// Namespace of the system app catalog and of kd-global-config (in every member cluster).
    #[arg(long, env = "KD_NAMESPACE", default_value = "kubedirector")]
    pub namespace: String,
    /// Reconcile only the KubeDirectorClusters of this namespace. Default: every namespace.
    #[arg(long, env = "KD_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Worker slots per member cluster: KubeDirectorClusters reconciled at the same time (one waiting
    /// for the answers to its children's creates gives its slot back meanwhile), and at most this
    /// many holding a turn to create children (a new cluster's turn ends once its StatefulSets are
    /// written; its Services are then bounded by --writes-in-flight).
    #[arg(long, env = "KD_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Mutating API requests per second to each member cluster: where the adaptive write budget
    /// starts, and the floor it never goes below.
    #[arg(long, env = "KD_WRITE_QPS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub write_qps: u32,
    /// The ceiling the adaptive write budget rises to while the API server answers fast, in requests
    /// per second, and the token bucket's depth (requests allowed at once).
    #[arg(long, env = "KD_WRITE_BURST", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub write_burst: u32,
    /// API writes in flight at once to each member cluster. Past this, writes wait in the operator,
    /// where it chooses the order (Services after every other write, so that the StatefulSets of
    /// every new cluster go out first); status writes are never held. The API server serves what
    /// is in flight side by side, so fewer in flight are each answered sooner. The bound is the
    /// operator's: with shards, each replica keeps to its share by the shards it holds.
    #[arg(long, env = "KD_WRITES_IN_FLIGHT", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub writes_in_flight: u16,
    /// Status changes of one cluster within this many milliseconds of its last status write are merged
    /// into one write.
    #[arg(long, env = "KD_STATUS_WINDOW_MS", default_value_t = 100)]
    pub status_window_ms: u64,
    /// Events published on KubeDirectorClusters: `warnings` (why a cluster cannot proceed) or `all`
    /// (also every state transition; two more API writes per cluster created).
    #[arg(long, env = "KD_EVENTS", value_enum, default_value_t = EventLevel::Warnings)]
    pub events: EventLevel,
    /// Seconds a new cluster's first status may wait, so that members coming up together cost one
    /// status write (at `configured`) instead of two. Held only while nothing in it must be recorded
    /// (no setup command, no auth token); 0 writes it at once, as KubeDirector does.
    #[arg(long, env = "KD_STATUS_GRACE_SECONDS", default_value_t = 60)]
    pub status_grace_seconds: u64,
    /// Field manager name of the operator's server-side apply writes.
    #[arg(long, env = "KD_FIELD_MANAGER", default_value = "kubedirector")]
    pub field_manager: String,
}

/// Commands run inside members.
#[derive(clap::Args)]
#[command(next_help_heading = "Guest commands")]
pub struct GuestArgs {
    /// Guest commands (setup calls, notifications) in flight at once, per member cluster.
    #[arg(long, env = "KD_GUEST_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub guest_concurrency: u16,
    /// Longest one setup call (inject configmeta, fetch the package, start or poll configure) may take.
    #[arg(long, env = "KD_SETUP_TIMEOUT_SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub setup_timeout_seconds: u64,
    /// Longest a notification (`startscript --addnodes|--delnodes|--reconnect`) may run before it
    /// counts as failed (and is retried).
    #[arg(long, env = "KD_NOTIFY_TIMEOUT_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub notify_timeout_seconds: u64,
    /// KubeDirector's `configcli.tgz`, installed into members (by its own `install` script) instead
    /// of this operator's configcli.
    #[arg(long, env = "KD_CONFIGCLI_PACKAGE")]
    pub configcli_package: Option<PathBuf>,
}

/// Sharding between replicas.
#[derive(clap::Args)]
#[command(next_help_heading = "Shards")]
pub struct ShardArgs {
    /// Number of shards (0 = no sharding: a single replica acts on everything). Must stay the same
    /// across all replicas.
    #[arg(long, env = "KD_SHARDS", default_value_t = 32)]
    pub shards: u32,
    /// This replica's identity in the shard Leases. Default: $POD_NAME, else <hostname>-<pid>.
    #[arg(long, env = "KD_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Milliseconds a shard Lease may stay unrenewed before another replica takes it.
    #[arg(long, env = "KD_LEASE_DURATION_MS", default_value_t = 10_000)]
    pub lease_duration_ms: u64,
    /// Milliseconds after the last successful renewal at which a replica stops acting on a shard
    /// (must be below the lease duration).
    #[arg(long, env = "KD_RENEW_DEADLINE_MS", default_value_t = 7_000)]
    pub renew_deadline_ms: u64,
    /// Milliseconds between Lease renewals and membership checks.
    #[arg(long, env = "KD_RETRY_PERIOD_MS", default_value_t = 2_000)]
    pub retry_period_ms: u64,
}

/// The admission webhook.
#[derive(clap::Args)]
#[command(next_help_heading = "Admission webhook")]
pub struct WebhookArgs {
    /// Serve the admission webhook (HTTPS: /mutate, /validate, /mutate/<context>, /validate/<context>)
    /// on this address, e.g. 0.0.0.0:9443. Default: no admission endpoint.
    #[arg(long, env = "KD_WEBHOOK_ADDR")]
    pub webhook_addr: Option<SocketAddr>,
    /// Directory with tls.crt and tls.key for the webhook (a mounted Secret; re-read on change).
    /// Without it, a certificate is generated once and kept in --webhook-secret.
    #[arg(long, env = "KD_WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<PathBuf>,
    /// Secret (operator namespace, home cluster) holding the self-generated webhook CA and certificate.
    #[arg(long, env = "KD_WEBHOOK_SECRET", default_value = "kubedirector-webhook-tls")]
    pub webhook_secret: String,
    /// DNS name or IP address the self-generated certificate is for (repeatable), e.g.
    /// kubedirector-webhook.kubedirector.svc or 127.0.0.1.
    #[arg(long = "webhook-host", env = "KD_WEBHOOK_HOSTS", value_delimiter = ',')]
    pub webhook_hosts: Vec<String>,
    /// Mutating/ValidatingWebhookConfiguration whose caBundle gets the self-generated CA (repeatable).
    #[arg(
        long = "webhook-configuration",
        env = "KD_WEBHOOK_CONFIGURATIONS",
        value_delimiter = ','
    )]
    pub webhook_configurations: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Metrics, health, records, traces and logs.
#[derive(clap::Args)]
#[command(next_help_heading = "Telemetry")]
pub struct TelemetryArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "KD_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Append a JSON line per reconcile (key, replica, shard, start, end) and per release to this file.
    #[arg(long, env = "KD_RECONCILE_RECORD")]
    pub reconcile_record: Option<PathBuf>,
    /// OTLP/HTTP endpoint for traces (base URL, e.g. http://jaeger-collector:4318). Default: the
    /// standard OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT; with neither, no spans are exported.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "KD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// A flag (or a combination of flags) that cannot work, by name.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("--configcli-package: {0}")]
    Configcli(String),
    #[error(transparent)]
    Shards(#[from] ShardConfigError),
    #[error(
        "--webhook-addr without --webhook-cert-dir needs --webhook-host (the names the API server calls, e.g. kubedirector-webhook.kubedirector.svc)"
    )]
    WebhookHosts,
}

impl FleetArgs {
    pub fn options(self) -> FleetOptions {
        FleetOptions {
            kubeconfig: self.kubeconfig,
            contexts: self.contexts,
            all_contexts: self.all_contexts,
            home_context: self.home_context,
            reload_every: Duration::from_secs(self.kubeconfig_reload_seconds),
        }
    }
}

impl GuestArgs {
    pub fn limits(self) -> Result<Limits, CliError> {
        let configcli = match &self.configcli_package {
            None => Configcli::Ours,
            Some(path) => Configcli::package(path).map_err(|e| CliError::Configcli(e.to_string()))?,
        };
        Ok(Limits {
            concurrency: usize::from(self.guest_concurrency),
            setup_timeout: Duration::from_secs(self.setup_timeout_seconds),
            notify_timeout: Duration::from_secs(self.notify_timeout_seconds),
            configcli,
        })
    }
}

impl MemberArgs {
    pub fn options(self, replica: String, guest: Limits) -> member::Options {
        member::Options {
            operator_namespace: self.namespace,
            watch_namespace: self.watch_namespace,
            concurrency: self.concurrency,
            field_manager: self.field_manager,
            write_qps: self.write_qps,
            write_burst: self.write_burst,
            writes_in_flight: self.writes_in_flight,
            status_window: Duration::from_millis(self.status_window_ms),
            events: self.events,
            status_grace: Duration::from_secs(self.status_grace_seconds),
            backoff: Backoff::default(),
            replica,
            guest,
        }
    }
}

impl ShardArgs {
    /// The shard manager's options (`None` without sharding), with the Leases in `namespace`.
    pub fn options(
        &self,
        replica: String,
        namespace: String,
        record: Option<PathBuf>,
    ) -> Result<Option<ShardOptions>, CliError> {
        if self.shards == 0 {
            return Ok(None);
        }
        let options = ShardOptions {
            shards: self.shards,
            replica,
            namespace,
            lease_duration: Duration::from_millis(self.lease_duration_ms),
            renew_deadline: Duration::from_millis(self.renew_deadline_ms),
            retry_period: Duration::from_millis(self.retry_period_ms),
            record,
        };
        options.validate()?;
        Ok(Some(options))
    }

    /// --replica-id, else $POD_NAME, else <hostname>-<pid>.
    pub fn replica(&self) -> String {
        self.replica_id
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .unwrap_or_else(default_replica_id)
    }
}

impl WebhookArgs {
    pub fn admission(self) -> Result<Option<Admission>, CliError> {
        let Some(addr) = self.webhook_addr else {
            return Ok(None);
        };
        let cert = match self.webhook_cert_dir {
            Some(dir) => CertSource::Dir(dir),
            None if self.webhook_hosts.is_empty() => return Err(CliError::WebhookHosts),
            None => CertSource::SelfSigned {
                secret: self.webhook_secret,
                hosts: self.webhook_hosts,
                configurations: self.webhook_configurations,
            },
        };
        Ok(Some(Admission {
            webhook: WebhookOptions { addr, cert },
            worlds: Arc::default(),
        }))
    }
}

/// <hostname>-<pid>: unique per process even when several replicas run on one machine.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "replica".to_string());
    format!("{host}-{}", std::process::id())
}

/// Every part's options, from the flags; the first flag that cannot work is the error.
pub struct Parts {
    pub fleet: FleetOptions,
    pub member: member::Options,
    pub sharding: Option<ShardOptions>,
    pub admission: Option<Admission>,
}

impl RunArgs {
    pub fn parts(self, replica: String) -> Result<Parts, CliError> {
        let RunArgs {
            fleet,
            member,
            guest,
            shards,
            webhook,
            telemetry,
        } = self;
        let guest = guest.limits()?;
        let sharding = shards.options(replica.clone(), member.namespace.clone(), telemetry.reconcile_record)?;
        Ok(Parts {
            fleet: fleet.options(),
            member: member.options(replica, guest),
            sharding,
            admission: webhook.admission()?,
        })
    }
}

/// The operator until `shutdown`: metrics and health served first, then the fleet.
pub async fn run(
    parts: Parts,
    metrics_addr: SocketAddr,
    record: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let members: Members = Arc::default();
    let readiness: Readiness = {
        let members = members.clone();
        Arc::new(move || match members.lock() {
            Ok(m) if m.is_empty() => vec!["(no member cluster yet)".to_string()],
            Ok(m) => m
                .values()
                .filter(|h| !(h.stores_ready)())
                .map(|h| h.context.clone())
                .collect(),
            Err(_) => vec!["(state unavailable)".to_string()],
        })
    };
    http::serve(metrics_addr, metrics.clone(), readiness, record).await?;
    let Parts {
        fleet,
        member,
        sharding,
        admission,
    } = parts;
    fleet::run(fleet, member, sharding, admission, metrics, members, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parts, String> {
        let mut argv = vec!["kubedirector", "run"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Run(run) = cli.command else {
            return Err("not run".into());
        };
        run.parts("r1".into()).map_err(|e| e.to_string())
    }

    #[test]
    fn every_group_becomes_its_parts_options() {
        let parts = parse(&[
            "--context",
            "a,b",
            "--namespace",
            "sys",
            "--write-qps",
            "7",
            "--guest-concurrency",
            "3",
            "--shards",
            "4",
            "--lease-duration-ms",
            "4000",
            "--renew-deadline-ms",
            "3000",
            "--retry-period-ms",
            "1000",
        ])
        .expect("valid");
        assert_eq!(parts.fleet.contexts, ["a", "b"]);
        assert_eq!(
            (parts.member.operator_namespace.as_str(), parts.member.write_qps),
            ("sys", 7)
        );
        assert_eq!(parts.member.guest.concurrency, 3);
        let shards = parts.sharding.expect("sharding on");
        assert_eq!(
            (shards.shards, shards.namespace.as_str(), shards.replica.as_str()),
            (4, "sys", "r1")
        );
        assert!(parts.admission.is_none());
        assert!(parse(&["--shards", "0"]).expect("valid").sharding.is_none());
    }

    #[test]
    fn flags_that_cannot_work_are_refused_by_name_before_anything_starts() {
        let e = parse(&["--renew-deadline-ms", "10000"]).err().expect("refused");
        assert!(e.contains("--renew-deadline") && e.contains("--lease-duration"), "{e}");
        let e = parse(&["--retry-period-ms", "8000"]).err().expect("refused");
        assert!(e.contains("--retry-period"), "{e}");
        let e = parse(&["--webhook-addr", "127.0.0.1:9443"]).err().expect("refused");
        assert!(e.contains("--webhook-host"), "{e}");
        let e = parse(&["--configcli-package", "/nonexistent/configcli.tgz"])
            .err()
            .expect("refused");
        assert!(e.starts_with("--configcli-package: "), "{e}");
        let e = parse(&["--write-qps", "0"]).err().expect("refused");
        assert!(e.contains("--write-qps"), "{e}");
        let e = parse(&["--context", "a", "--all-contexts"]).err().expect("refused");
        assert!(e.contains("--all-contexts"), "{e}");
    }
}
