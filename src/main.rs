//! `kubedirector`: the operator binary. The flags and how they become each part's options are in
//! `kubedirector::cli`.

use clap::Parser;
use kubedirector::cli::{Cli, Command, LogFormat};
use kubedirector::telemetry::trace::{self, TraceOptions};

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
            let replica = args.shards.replica();
            let (metrics_addr, record) = (args.telemetry.metrics_addr, args.telemetry.reconcile_record.clone());
            let telemetry = trace::init(&TraceOptions {
                endpoint: args.telemetry.otlp_endpoint.clone(),
                replica: replica.clone(),
                json_logs: matches!(args.telemetry.log_format, LogFormat::Json),
            })?;
            if telemetry.exporting() {
                tracing::info!("exporting traces over OTLP/HTTP");
            }
            let result = match args.parts(replica) {
                Ok(parts) => kubedirector::cli::run(parts, metrics_addr, record, shutdown_signal()).await,
                Err(e) => Err(e.into()),
            };
            // Spans still in the exporter's batch are sent before the process ends.
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
            result
        }
    }
}
