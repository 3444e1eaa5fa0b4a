//! `kubedirector`: the operator binary.

use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kubedirector::admission::server::{CertSource, WebhookOptions};
use kubedirector::fleet::{Admission, FleetOptions, Members};
use kubedirector::member;
use kubedirector::queue::backoff::Backoff;
use kubedirector::shard::manager::ShardOptions;
use kubedirector::telemetry::http::{self, Readiness};
use kubedirector::telemetry::metrics::Metrics;
use kubedirector::telemetry::trace::{self, TraceOptions};

#[derive(Parser)]
#[command(
    name = "kubedirector",
    version,
    about = "KubeDirector-compatible operator for complex stateful applications"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile every KubeDirectorCluster of the selected member clusters until SIGTERM/SIGINT.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions this version serves (YAML), e.g. for `kubectl apply -f -`.
    Crds,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kubeconfig file. Default: $KUBECONFIG, then ~/.kube/config, then the in-cluster service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Member cluster to manage, by kubeconfig context (repeatable). Default: the current context.
    #[arg(
        long = "context",
        env = "KD_CONTEXTS",
        value_delimiter = ',',
        conflicts_with = "all_contexts"
    )]
    contexts: Vec<String>,
    /// Manage every context of the kubeconfig, including contexts added later.
    #[arg(long, env = "KD_ALL_CONTEXTS")]
    all_contexts: bool,
    /// Context of the home cluster (holds the shard Leases). Default: the first member.
    #[arg(long, env = "KD_HOME_CONTEXT")]
    home_context: Option<String>,
    /// Seconds between kubeconfig re-reads (added, removed and edited contexts apply without a restart).
    #[arg(long, env = "KD_KUBECONFIG_RELOAD_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    kubeconfig_reload_seconds: u64,
    /// Namespace of the system app catalog and of kd-global-config (in every member cluster).
    #[arg(long, env = "KD_NAMESPACE", default_value = "kubedirector")]
    namespace: String,
    /// Reconcile only the KubeDirectorClusters of this namespace. Default: every namespace.
    #[arg(long, env = "KD_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Worker slots per member cluster: KubeDirectorClusters reconciled at the same time (one waiting
    /// for the answers to its children's creates gives its slot back meanwhile), and at most this
    /// many creating children at once.
    #[arg(long, env = "KD_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Guest commands (setup calls, notifications) in flight at once, per member cluster.
    #[arg(long, env = "KD_GUEST_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    guest_concurrency: u16,
    /// Longest one setup call (inject configmeta, fetch the package, start or poll configure) may take.
    #[arg(long, env = "KD_SETUP_TIMEOUT_SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    setup_timeout_seconds: u64,
    /// Longest a notification (`startscript --addnodes|--delnodes|--reconnect`) may run before it
    /// counts as failed (and is retried).
    #[arg(long, env = "KD_NOTIFY_TIMEOUT_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    notify_timeout_seconds: u64,
    /// KubeDirector's `configcli.tgz`, installed into members (by its own `install` script) instead
    /// of this operator's configcli.
    #[arg(long, env = "KD_CONFIGCLI_PACKAGE")]
    configcli_package: Option<std::path::PathBuf>,
    /// Mutating API requests per second to each member cluster: where the adaptive write budget
    /// starts, and the floor it never goes below.
    #[arg(long, env = "KD_WRITE_QPS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    write_qps: u32,
    /// The ceiling the adaptive write budget rises to while the API server answers fast, in requests
    /// per second, and the token bucket's depth (requests allowed at once).
    #[arg(long, env = "KD_WRITE_BURST", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    write_burst: u32,
    /// Status changes of one cluster within this many milliseconds of its last status write are merged
    /// into one write.
    #[arg(long, env = "KD_STATUS_WINDOW_MS", default_value_t = 100)]
    status_window_ms: u64,
    /// Events published on KubeDirectorClusters: `warnings` (why a cluster cannot proceed) or `all`
    /// (also every state transition; two more API writes per cluster created).
    #[arg(long, env = "KD_EVENTS", value_enum, default_value_t = kubedirector::reconcile::context::EventLevel::Warnings)]
    events: kubedirector::reconcile::context::EventLevel,
    /// Seconds a new cluster's first status may wait, so that members coming up together cost one
    /// status write (at `configured`) instead of two. Held only while nothing in it must be recorded
    /// (no setup command, no auth token); 0 writes it at once, as KubeDirector does.
    #[arg(long, env = "KD_STATUS_GRACE_SECONDS", default_value_t = 60)]
    status_grace_seconds: u64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "KD_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Number of shards (0 = no sharding: a single replica acts on everything). Must stay the same
    /// across all replicas.
    #[arg(long, env = "KD_SHARDS", default_value_t = 32)]
    shards: u32,
    /// This replica's identity in the shard Leases. Default: $POD_NAME, else <hostname>-<pid>.
    #[arg(long, env = "KD_REPLICA_ID")]
    replica_id: Option<String>,
    /// Milliseconds a shard Lease may stay unrenewed before another replica takes it.
    #[arg(long, env = "KD_LEASE_DURATION_MS", default_value_t = 10_000)]
    lease_duration_ms: u64,
    /// Milliseconds after the last successful renewal at which a replica stops acting on a shard
    /// (must be below the lease duration).
    #[arg(long, env = "KD_RENEW_DEADLINE_MS", default_value_t = 7_000)]
    renew_deadline_ms: u64,
    /// Milliseconds between Lease renewals and membership checks.
    #[arg(long, env = "KD_RETRY_PERIOD_MS", default_value_t = 2_000)]
    retry_period_ms: u64,
    /// Append a JSON line per reconcile (key, replica, shard, start, end) and per release to this file.
    #[arg(long, env = "KD_RECONCILE_RECORD")]
    reconcile_record: Option<PathBuf>,
    /// Field manager name of the operator's server-side apply writes.
    #[arg(long, env = "KD_FIELD_MANAGER", default_value = "kubedirector")]
    field_manager: String,
    /// OTLP/HTTP endpoint for traces (base URL, e.g. http://jaeger-collector:4318). Default: the
    /// standard OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT; with neither, no spans are exported.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Serve the admission webhook (HTTPS: /mutate, /validate, /mutate/<context>, /validate/<context>)
    /// on this address, e.g. 0.0.0.0:9443. Default: no admission endpoint.
    #[arg(long, env = "KD_WEBHOOK_ADDR")]
    webhook_addr: Option<std::net::SocketAddr>,
    /// Directory with tls.crt and tls.key for the webhook (a mounted Secret; re-read on change).
    /// Without it, a certificate is generated once and kept in --webhook-secret.
    #[arg(long, env = "KD_WEBHOOK_CERT_DIR")]
    webhook_cert_dir: Option<PathBuf>,
    /// Secret (operator namespace, home cluster) holding the self-generated webhook CA and certificate.
    #[arg(long, env = "KD_WEBHOOK_SECRET", default_value = "kubedirector-webhook-tls")]
    webhook_secret: String,
    /// DNS name or IP address the self-generated certificate is for (repeatable), e.g.
    /// kubedirector-webhook.kubedirector.svc or 127.0.0.1.
    #[arg(long = "webhook-host", env = "KD_WEBHOOK_HOSTS", value_delimiter = ',')]
    webhook_hosts: Vec<String>,
    /// Mutating/ValidatingWebhookConfiguration whose caBundle gets the self-generated CA (repeatable).
    #[arg(
        long = "webhook-configuration",
        env = "KD_WEBHOOK_CONFIGURATIONS",
        value_delimiter = ','
    )]
    webhook_configurations: Vec<String>,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "KD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            for (_, crd) in kubedirector::api::crds() {
                print!("---\n{}", kubedirector::api::crd_yaml(&crd)?);
            }
            Ok(())
        }
        Command::Run(args) => {
            let replica = args
                .replica_id
                .clone()
                .or_else(|| std::env::var("POD_NAME").ok())
                .unwrap_or_else(default_replica_id);
            let telemetry = trace::init(&TraceOptions {
                endpoint: args.otlp_endpoint.clone(),
                replica: replica.clone(),
                json_logs: matches!(args.log_format, LogFormat::Json),
            })?;
            if telemetry.exporting() {
                tracing::info!("exporting traces over OTLP/HTTP");
            }
            let result = run(*args, replica).await;
            // Spans still in the exporter's batch are sent before the process ends.
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
            result
        }
    }
}

async fn run(args: RunArgs, replica: String) -> anyhow::Result<()> {
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
    http::serve(
        args.metrics_addr,
        metrics.clone(),
        readiness,
        args.reconcile_record.clone(),
    )
    .await?;
    let fleet = FleetOptions {
        kubeconfig: args.kubeconfig,
        contexts: args.contexts,
        all_contexts: args.all_contexts,
        home_context: args.home_context,
        reload_every: Duration::from_secs(args.kubeconfig_reload_seconds),
    };
    let member = member::Options {
        operator_namespace: args.namespace,
        watch_namespace: args.watch_namespace,
        concurrency: args.concurrency,
        field_manager: args.field_manager,
        write_qps: args.write_qps,
        write_burst: args.write_burst,
        status_window: Duration::from_millis(args.status_window_ms),
        events: args.events,
        status_grace: Duration::from_secs(args.status_grace_seconds),
        backoff: Backoff::default(),
        replica: replica.clone(),
        guest: kubedirector::reconcile::guest::Limits {
            concurrency: usize::from(args.guest_concurrency),
            setup_timeout: Duration::from_secs(args.setup_timeout_seconds),
            notify_timeout: Duration::from_secs(args.notify_timeout_seconds),
            configcli: match &args.configcli_package {
                None => kubedirector::reconcile::guest::Configcli::Ours,
                Some(path) => kubedirector::reconcile::guest::Configcli::package(path)
                    .map_err(|e| anyhow::anyhow!("--configcli-package: {e}"))?,
            },
        },
    };
    let sharding = (args.shards > 0).then(|| ShardOptions {
        shards: args.shards,
        replica,
        namespace: member.operator_namespace.clone(),
        lease_duration: Duration::from_millis(args.lease_duration_ms),
        renew_deadline: Duration::from_millis(args.renew_deadline_ms),
        retry_period: Duration::from_millis(args.retry_period_ms),
        record: args.reconcile_record.clone(),
    });
    let admission = match args.webhook_addr {
        None => None,
        Some(addr) => {
            let cert = match args.webhook_cert_dir {
                Some(dir) => CertSource::Dir(dir),
                None if args.webhook_hosts.is_empty() => anyhow::bail!(
                    "--webhook-addr without --webhook-cert-dir needs --webhook-host (the names the API server calls, e.g. kubedirector-webhook.kubedirector.svc)"
                ),
                None => CertSource::SelfSigned {
                    secret: args.webhook_secret,
                    hosts: args.webhook_hosts,
                    configurations: args.webhook_configurations,
                },
            };
            Some(Admission {
                webhook: WebhookOptions { addr, cert },
                worlds: Arc::default(),
            })
        }
    };
    kubedirector::fleet::run(fleet, member, sharding, admission, metrics, members, shutdown_signal()).await
}

/// <hostname>-<pid>: unique per process even when several replicas run on one machine.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "replica".to_string());
    format!("{host}-{}", std::process::id())
}
