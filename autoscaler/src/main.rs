//! The `usher-autoscaler` command.

use std::io::{BufReader, IsTerminal, stdin, stdout};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::api::coordination::v1::Lease;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use usher_autoscaler::controller::{self, Context, Settings};
use usher_autoscaler::lease::{self, Elector, Timing};
use usher_autoscaler::local::{self, LocalSettings};
use usher_autoscaler::telemetry::{self, Metrics};
use usher_autoscaler::{crd, filter, policy};

/// Usher's autoscaler: scales LMS Deployments from the balancer's metrics.
#[derive(Debug, Parser)]
#[command(name = "usher-autoscaler", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller against the Kubernetes API (in-cluster, or the
    /// current kubeconfig context; KUBECONFIG is honoured).
    Run(RunArgs),
    /// Scale local copies of a command instead of a Deployment, writing the
    /// balancer's endpoints file (no Kubernetes needed).
    Local(LocalArgs),
    /// Print the ScalingPolicy CustomResourceDefinition (YAML).
    Crd,
    /// Validate ScalingPolicy files; exit 1 naming the file and field on error.
    Check {
        /// Policy files (YAML).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Read JSON lines of observations on stdin and write one JSON decision
    /// per line on stdout, exactly as the controller would decide.
    Decide {
        /// The policy file.
        #[arg(short, long, value_name = "FILE")]
        policy: PathBuf,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Serve /metrics and /healthz here.
    #[arg(long, default_value = "0.0.0.0:9902", env = "USHER_METRICS_BIND")]
    metrics_bind: SocketAddr,
    /// Compute, log and record decisions, but never scale.
    #[arg(long)]
    dry_run: bool,
    /// Log format; `auto` is JSON unless stderr is a terminal.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, env = "USHER_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Namespace to watch (default: the kubeconfig's or the pod's namespace).
    #[arg(long, env = "USHER_NAMESPACE")]
    namespace: Option<String>,
    /// Watch ScalingPolicies in every namespace (needs a ClusterRole).
    #[arg(long, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// Also run the policy files in this directory.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Do not watch ScalingPolicy objects (file policies only; no CRD rights needed).
    #[arg(long, requires = "policies")]
    no_crd: bool,
    /// Run without leader election (a single replica only).
    #[arg(long)]
    no_leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "usher-autoscaler")]
    lease_name: String,
    /// This instance's identity (default: $POD_NAME or the host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the lease is valid without renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// A leader that could not renew for this long stops acting.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    renew_deadline: Duration,
    /// Time between election attempts.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    retry_period: Duration,
}

#[derive(Debug, Args)]
struct LocalArgs {
    #[command(flatten)]
    common: Common,
    /// The policy file; its metricsSource.urls name the balancer's /metrics.
    #[arg(short, long, value_name = "FILE")]
    policy: PathBuf,
    /// The balancer's endpoints file to write (pool `endpoints.file.path`).
    #[arg(long, value_name = "FILE")]
    endpoints_file: PathBuf,
    /// Host the copies listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Readiness path of a copy.
    #[arg(long, default_value = "/healthz")]
    ready_path: String,
    /// Time between removing a copy from the file and stopping it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Copies to start with (default: the policy's minReplicas).
    #[arg(long)]
    initial: Option<u32>,
    /// Keep predictive history here across restarts (predictive policies).
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// The command to run, `{port}` replaced by a free port, e.g.
    /// `-- lms-sim --port {port}`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Text,
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("USHER_LOG").unwrap_or_else(|_| "info".into());
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// A watch that turns true on SIGTERM or SIGINT.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Check { files } => check(files),
        Command::Decide { policy: path } => {
            let policy = match policy::load(&path) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match filter::run(&policy, BufReader::new(stdin().lock()), stdout().lock()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => runtime().block_on(run(args)),
        Command::Local(args) => runtime().block_on(run_local(args)),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn check(files: Vec<PathBuf>) -> ExitCode {
    let mut ok = true;
    for file in files {
        match policy::load(&file) {
            Ok(p) => println!(
                "{}: OK: {} scales Deployment {} from pool `{}`, {} to {} replicas, {} schedule(s)",
                file.display(),
                p.name,
                p.target_ref.name,
                p.pool,
                p.min_replicas,
                p.max_replicas,
                p.schedules.len()
            ),
            Err(e) => {
                eprintln!("error: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(args: RunArgs) -> ExitCode {
    init_logging(args.common.log_format);
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot reach the Kubernetes API: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(dir) = &args.policies
        && let Err(e) = policy::load_dir(dir)
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let namespace = if args.all_namespaces {
        None
    } else {
        Some(
            args.namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string()),
        )
    };
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "usher-autoscaler".to_string());
        format!("{host}-{}", std::process::id())
    });
    let metrics = Metrics::new();
    let shutdown = shutdown_signal();
    match telemetry::start(args.common.metrics_bind, &metrics).await {
        Ok(addr) => tracing::info!(%addr, "serving /metrics"),
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.common.metrics_bind);
            return ExitCode::FAILURE;
        }
    }

    let (leader_tx, leader_rx) = watch::channel(args.no_leader_election);
    let mut tasks = tokio::task::JoinSet::new();
    if args.no_leader_election {
        metrics.set_leader(true);
    } else {
        let lease_ns = namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), &lease_ns);
        let timing = Timing {
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
        };
        if timing.renew_deadline + timing.retry_period > timing.lease_duration {
            eprintln!(
                "error: --renew-deadline plus --retry-period must be below --lease-duration, so a leader stops before another can take over"
            );
            return ExitCode::FAILURE;
        }
        tracing::info!(%identity, lease = %args.lease_name, namespace = %lease_ns, "joining leader election");
        tasks.spawn(lease::run(
            api,
            args.lease_name.clone(),
            Elector::new(&identity, timing),
            leader_tx,
            shutdown.clone(),
        ));
        let m = metrics.clone();
        let mut rx = leader_rx.clone();
        tasks.spawn(async move {
            loop {
                m.set_leader(*rx.borrow_and_update());
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let settings = Settings {
        namespace,
        watch_crds: !args.no_crd,
        policies_dir: args.policies.clone(),
        dry_run: args.common.dry_run,
        identity,
    };
    let ctx = Arc::new(Context::new(client, settings.clone(), metrics, leader_rx));
    if settings.watch_crds {
        tasks.spawn(controller::run_crds(ctx.clone(), shutdown.clone()));
    }
    if let Some(dir) = settings.policies_dir.clone() {
        tasks.spawn(controller::run_files(ctx.clone(), dir, shutdown.clone()));
    }
    let mut stop = shutdown.clone();
    let _ = stop.wait_for(|s| *s).await;
    // Let the election release the lease, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    ExitCode::SUCCESS
}

async fn run_local(args: LocalArgs) -> ExitCode {
    init_logging(args.common.log_format);
    let policy = match policy::load(&args.policy) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = local::urls_of(&policy) {
        eprintln!("error: {}: {e}", args.policy.display());
        return ExitCode::FAILURE;
    }
    let metrics = Metrics::new();
    match telemetry::start(args.common.metrics_bind, &metrics).await {
        Ok(addr) => tracing::info!(%addr, "serving /metrics"),
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.common.metrics_bind);
            return ExitCode::FAILURE;
        }
    }
    let settings = LocalSettings {
        command: args.command,
        host: args.host,
        endpoints_file: args.endpoints_file,
        ready_path: args.ready_path,
        drain: args.drain,
        initial: args.initial,
        dry_run: args.common.dry_run,
        history_file: args.history,
    };
    let shutdown = shutdown_signal();
    match local::run(policy, settings, metrics, shutdown, Arc::new(|_, _| {})).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
