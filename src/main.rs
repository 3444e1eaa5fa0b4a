//! `kubedirector`: the operator binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tracing_subscriber::EnvFilter;

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
    /// Reconcile every KubeDirectorCluster of the selected Kubernetes cluster until SIGTERM/SIGINT.
    Run(RunArgs),
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
    /// Kubeconfig context to use. Default: the kubeconfig's current context.
    #[arg(long, env = "KD_CONTEXT")]
    context: Option<String>,
    /// Namespace of the system app catalog and of kd-global-config.
    #[arg(long, env = "KD_NAMESPACE", default_value = "kubedirector")]
    namespace: String,
    /// Reconcile only the KubeDirectorClusters of this namespace. Default: every namespace.
    #[arg(long, env = "KD_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// KubeDirectorClusters reconciled at the same time.
    #[arg(long, env = "KD_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Field manager name of the operator's server-side apply writes.
    #[arg(long, env = "KD_FIELD_MANAGER", default_value = "kubedirector")]
    field_manager: String,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "KD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn client(args: &RunArgs) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}: cannot read it", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| {
                    format!(
                        "--kubeconfig {}: context {:?} is not usable",
                        path.display(),
                        args.context
                    )
                })?
        }
        (None, Some(context)) => Config::from_kubeconfig(&options).await.with_context(|| {
            format!("--context {context}: not in the kubeconfig, or not usable")
        })?,
        (None, None) => Config::infer().await.context(
            "no kubeconfig found and not running in a cluster (set --kubeconfig or KUBECONFIG)",
        )?,
    };
    Client::try_from(config).context("cannot build a Kubernetes client from the kubeconfig")
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
            init_logging(args.log_format);
            let client = client(&args).await?;
            let options = kubedirector::reconcile::run::Options {
                operator_namespace: args.namespace.clone(),
                watch_namespace: args.watch_namespace.clone(),
                concurrency: args.concurrency,
                field_manager: args.field_manager.clone(),
            };
            kubedirector::reconcile::run::run(client, options, shutdown_signal()).await
        }
    }
}
