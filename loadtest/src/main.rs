//! kd-loadtest: reconcile latency of kubedirector-rs for thousands of members across many clusters,
//! against a floor without operator, with failover, overlaps and lost CRs. See docs/loadtest.md.

mod admission;
mod arrival;
mod audit;
mod cgroup;
mod cpu;
mod modes;
mod objects;
mod phases;
mod plot;
mod pprof;
mod prepare;
mod provider;
mod records;
mod replicas;
mod report;
mod run;
mod stats;
mod track;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use provider::Provider;
use workload::Workload;

#[derive(Parser, Debug)]
#[command(
    name = "kd-loadtest",
    version,
    about = "Loadtest of kubedirector-rs: latency vs floor, writes, failover, overlaps, lost"
)]
struct Cli {
    /// Where the member clusters come from.
    #[arg(long, value_enum, default_value = "kwok")]
    provider: Provider,
    /// Workload YAML (fields in docs/loadtest.md); flags below override it.
    #[arg(long)]
    workload: Option<PathBuf>,
    /// The small profile (part of `make test`) instead of the standard one.
    #[arg(long)]
    small: bool,
    #[arg(long)]
    clusters: Option<u32>,
    /// Members in total, over all CRs.
    #[arg(long)]
    members: Option<u32>,
    /// Roles of each CR with their members, e.g. controller=1,worker=4.
    #[arg(long)]
    roles: Option<String>,
    /// Fraction of CRs resized once all are configured (0 = no churn).
    #[arg(long)]
    churn: Option<f64>,
    #[arg(long)]
    replicas: Option<u32>,
    #[arg(long)]
    shards: Option<u32>,
    /// SIGKILL a replica every this many seconds (0 = no chaos).
    #[arg(long)]
    chaos_every: Option<u64>,
    #[arg(long)]
    write_qps: Option<u32>,
    /// The operator's API writes in flight per member cluster (workload `writesInFlight`).
    #[arg(long)]
    writes_in_flight: Option<u16>,
    /// Contexts of the `contexts` provider (repeatable).
    #[arg(long = "context")]
    contexts: Vec<String>,
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The operator binary the replicas run.
    #[arg(long, default_value = "target/release/kubedirector")]
    operator_bin: PathBuf,
    /// Runs go to <out>/<run>/.
    #[arg(long, default_value = "target/loadtest")]
    out: PathBuf,
    /// Name of the run (default: UTC date and time).
    #[arg(long)]
    run: Option<String>,
    /// First port of the kwok test bed (cluster i uses base+10·(i−1) … +5).
    #[arg(long, default_value_t = 32500)]
    port_base: u16,
    /// RUST_LOG of the replicas.
    #[arg(long, default_value = "info")]
    operator_log: String,
    /// What the run measures: standard, burst, capacity or scaleout (docs/loadtest.md).
    #[arg(long, value_enum)]
    mode: Option<workload::Mode>,
    /// How CRs arrive: burst (all at once) or rate (--rate per cluster).
    #[arg(long, value_enum)]
    arrival: Option<arrival::Kind>,
    /// CRs per second per member cluster (with --arrival rate; alone, it implies it).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, value_enum)]
    spacing: Option<arrival::Spacing>,
    /// Seed of Poisson arrivals.
    #[arg(long)]
    seed: Option<u64>,
    /// The latency objective of capacity (p99, seconds).
    #[arg(long)]
    slo: Option<f64>,
    /// Capacity: the first step's rate (CRs/s per cluster) and each step's length.
    #[arg(long)]
    start_rate: Option<f64>,
    #[arg(long)]
    step_seconds: Option<u64>,
    /// Capacity: each step's rate is the previous one's times this (above 1; default 1.5).
    #[arg(long)]
    rate_factor: Option<f64>,
    /// Capacity: the most steps a search takes.
    #[arg(long)]
    max_steps: Option<u32>,
    /// Capacity: steps spent after the first miss, halving the gap between the highest passing
    /// and the lowest missing rate (geometric middle); default 0.
    #[arg(long)]
    refine_steps: Option<u32>,
    /// Scale-out: the CPU share of one core each replica gets (cgroup), e.g. 0.2.
    #[arg(long)]
    replica_cpu: Option<f64>,
    /// Scale-out: the replica counts measured, e.g. 1,2,4.
    #[arg(long, value_delimiter = ',')]
    scaleout_replicas: Option<Vec<u32>>,
    /// Creates in flight per cluster (default: the workload's; in burst mode every CR at once).
    #[arg(long)]
    create_concurrency: Option<u32>,
    /// The floor writes as the bed's admin instead of the operator's ServiceAccount.
    #[arg(long)]
    floor_as_admin: bool,
    /// Apply the chart's FlowSchema before the run (burst mode measures without and with it anyway).
    #[arg(long)]
    flow_schema: bool,
    /// Burst: one pair of passes (floor and operator) instead of two, without the FlowSchema, or
    /// with it if --flow-schema is given.
    #[arg(long)]
    burst_once: bool,
    /// Burst: SIGKILL the last replica this many seconds into each operator pass and measure its
    /// shards' failover while the burst is in flight (needs --replicas 2 or more).
    #[arg(long)]
    burst_kill_after: Option<u64>,
    /// The operator serves its admission webhook and the API server calls it (one cluster only).
    #[arg(long)]
    admission: bool,
    /// Print what would be done (kind: every command and file) and stop.
    #[arg(long)]
    dry_run: bool,
}

fn workload(cli: &Cli) -> anyhow::Result<Workload> {
    let mut w = match &cli.workload {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--workload {}: {e}", path.display()))?;
            Workload::from_yaml(&path.display().to_string(), &text)?
        }
        None if cli.small => Workload::small(),
        None => Workload::standard(),
    };
    if let Some(v) = cli.clusters {
        w.clusters = v;
    }
    if let Some(v) = cli.members {
        w.members = v;
    }
    if let Some(v) = &cli.roles {
        w.roles = workload::parse_roles(v)?;
    }
    if let Some(v) = cli.churn {
        w.churn.fraction = v;
    }
    if let Some(v) = cli.replicas {
        w.replicas = v;
    }
    if let Some(v) = cli.shards {
        w.shards = v;
    }
    if let Some(v) = cli.chaos_every {
        w.chaos.every_seconds = v;
    }
    if let Some(v) = cli.write_qps {
        w.write_qps = v;
        w.write_burst = w.write_burst.max(v);
    }
    if let Some(v) = cli.writes_in_flight {
        w.writes_in_flight = v;
    }
    if let Some(v) = cli.mode {
        w.mode = v;
    }
    if let Some(v) = cli.arrival {
        w.arrival.kind = v;
    }
    if let Some(v) = cli.rate {
        w.arrival.per_second = v;
        if cli.arrival.is_none() {
            w.arrival.kind = arrival::Kind::Rate;
        }
    }
    if let Some(v) = cli.spacing {
        w.arrival.spacing = v;
    }
    if let Some(v) = cli.seed {
        w.arrival.seed = v;
    }
    if let Some(v) = cli.slo {
        w.slo_seconds = v;
    }
    if let Some(v) = cli.start_rate {
        w.capacity.start_per_second = v;
    }
    if let Some(v) = cli.step_seconds {
        w.capacity.step_seconds = v;
    }
    if let Some(v) = cli.rate_factor {
        w.capacity.factor = v;
    }
    if let Some(v) = cli.max_steps {
        w.capacity.max_steps = v;
    }
    if let Some(v) = cli.refine_steps {
        w.capacity.refine_steps = v;
    }
    if let Some(v) = cli.replica_cpu {
        w.scaleout.replica_cpu = v;
    }
    if let Some(v) = &cli.scaleout_replicas {
        w.scaleout.replicas = v.clone();
    }
    match cli.create_concurrency {
        Some(v) => w.create_concurrency = v,
        // "At once" for both sides: a floor group is 8 requests in a row, so a small window would
        // hold the floor back in the harness and not the operator.
        None if w.mode == workload::Mode::Burst => w.create_concurrency = w.crs().div_ceil(w.clusters).max(1),
        None => {}
    }
    if cli.flow_schema {
        w.flow_schema = true;
    }
    if cli.burst_once {
        w.burst_both = false;
    }
    if let Some(v) = cli.burst_kill_after {
        w.burst_kill_after_seconds = v;
    }
    if cli.admission {
        w.admission = true;
    }
    if cli.floor_as_admin {
        w.floor_as_operator = false;
    }
    if cli.provider == Provider::Contexts && cli.clusters.is_none() && !cli.contexts.is_empty() {
        w.clusters = cli.contexts.len() as u32;
    }
    w.validate()?;
    Ok(w)
}

/// The repository the harness was built from (deploy/, testbed/).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dry_run(cli: &Cli, w: &Workload, run_dir: &std::path::Path) {
    println!(
        "# workload ({} CRs of {} members)\n{}",
        w.crs(),
        w.members_per_cr(),
        serde_yaml::to_string(w).unwrap_or_default()
    );
    match cli.provider {
        Provider::Kind => {
            println!("# kind: clusters, kwok and fake nodes, the operator image");
            for step in provider::kind::plan(&repo(), run_dir, w.clusters, w.nodes, &audit::policy()) {
                print!("{step}");
            }
            println!(
                "# then, after the namespaces, CRDs, app and the loadtest ServiceAccount's tokens are in place:\n# write {}: the token kubeconfig with each server at https://<kind/<name>/ip>:6443",
                run_dir.join("kind/members.kubeconfig").display()
            );
            let home = format!(
                "kind-{}",
                provider::kind::cluster_names(w.clusters)
                    .first()
                    .cloned()
                    .unwrap_or_default()
            );
            let deploy = provider::kind::Deploy {
                replicas: w.replicas,
                shards: w.shards,
                write_qps: w.write_qps,
                write_burst: w.write_burst,
                writes_in_flight: w.writes_in_flight,
                watch_namespace: "kd-loadtest".to_string(),
                namespace: audit::OPERATOR_NAMESPACE.to_string(),
                log_level: cli.operator_log.clone(),
            };
            for step in provider::kind::deploy_steps(&repo(), run_dir, &home, &deploy) {
                print!("{step}");
            }
            println!(
                "# the replicas are the pods of deployment {}-kubedirector; chaos deletes them with --grace-period=0",
                provider::kind::RELEASE
            );
        }
        Provider::Kwok => println!(
            "# kwok: TESTBED_DIR={} TESTBED_PORT_BASE={} NODES={} AUDIT_POLICY={} testbed/up.sh {}",
            run_dir.join("testbed").display(),
            cli.port_base,
            w.nodes,
            run_dir.join("audit-policy.yaml").display(),
            w.clusters
        ),
        Provider::Contexts => println!("# contexts: {}", cli.contexts.join(", ")),
    }
    if cli.provider != Provider::Kind {
        println!(
            "# then {} replicas of {} (shards {}), on every context",
            w.replicas,
            cli.operator_bin.display(),
            w.shards
        );
    }
    if let Some(c) = phases::names_of(w, 0).first() {
        let example = objects::cluster(
            c,
            &w.roles,
            if cli.provider == Provider::Kind {
                objects::Placement::KwokNodesOnly
            } else {
                objects::Placement::Anywhere
            },
        );
        println!("# first CR\n{}", serde_yaml::to_string(&example).unwrap_or_default());
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let w = match workload(&cli) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("kd-loadtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    let run = cli
        .run
        .clone()
        .unwrap_or_else(|| jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string());
    // Absolute: the test bed's scripts and kwokctl run in other directories.
    let out = std::fs::create_dir_all(&cli.out).and_then(|_| std::fs::canonicalize(&cli.out));
    let run_dir = match out {
        Ok(out) => out.join(&run),
        Err(e) => {
            eprintln!("kd-loadtest: --out {}: {e}", cli.out.display());
            return ExitCode::from(2);
        }
    };
    if cli.dry_run {
        dry_run(&cli, &w, &run_dir);
        return ExitCode::SUCCESS;
    }
    if !cli.operator_bin.exists() {
        eprintln!(
            "kd-loadtest: --operator-bin {}: no such file (build it: cargo build --release --bin kubedirector)",
            cli.operator_bin.display()
        );
        return ExitCode::from(2);
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let options = run::Options {
        provider: cli.provider,
        workload: w,
        run_dir: run_dir.clone(),
        run,
        command,
        operator_bin: std::fs::canonicalize(&cli.operator_bin).unwrap_or(cli.operator_bin.clone()),
        repo: repo(),
        kubeconfig: cli.kubeconfig.clone(),
        contexts: cli.contexts.clone(),
        port_base: cli.port_base,
        log_level: cli.operator_log.clone(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kd-loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(run::run(options)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kd-loadtest: the run failed or a figure could not be measured; no report written: {e:#}");
            return ExitCode::from(3);
        }
    };
    let md = report.markdown();
    let written = serde_json::to_string_pretty(&report)
        .map_err(anyhow::Error::from)
        .and_then(|json| Ok(std::fs::write(run_dir.join("report.json"), json)?))
        .and_then(|_| Ok(std::fs::write(run_dir.join("report.md"), &md)?));
    if let Err(e) = written {
        eprintln!("kd-loadtest: writing the report: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "{md}\nreport: {}/report.{{json,md}}, plot: {}/plot.png",
        run_dir.display(),
        run_dir.display()
    );
    let (overlaps, lost) = report.failures();
    if overlaps > 0 || lost > 0 {
        eprintln!("kd-loadtest: FAILED: {overlaps} overlaps, {lost} lost (see report.json: overlap_examples, lost)");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
