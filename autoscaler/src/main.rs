//! The `usher-autoscaler` command.

use std::io::{BufReader, IsTerminal, Write, stdin, stdout};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::api::coordination::v1::Lease;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use usher_autoscaler::controller::{self, Context, Settings};
use usher_autoscaler::lease::{self, Elector, Timing};
use usher_autoscaler::local::{self, LocalSettings};
use usher_autoscaler::sim::generate::{self, Kind};
use usher_autoscaler::sim::{self, Arrivals, PodModel};
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
    /// Play a load trace through a pod model and the controller's own
    /// decisions on simulated time; print a table, write a timeline CSV and
    /// an SVG chart.
    Simulate(SimulateArgs),
    /// Write a sample load trace (CSV), deterministic per seed.
    Trace {
        /// The shape: weekday, exam-cliff, surprise-spike or daily-peak.
        #[arg(long, value_parser = parse_kind)]
        kind: Kind,
        /// Seed of the noise (and of surprise-spike's height, start and length).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where to write it (default: stdout).
        #[arg(short, long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// Policy files: repeat the flag or list several.
    #[arg(short, long, value_name = "FILE", required = true, num_args = 1..)]
    policy: Vec<PathBuf>,
    /// The load trace: CSV with `t,rps` (seconds) or `time,rps` (RFC 3339);
    /// a row's rate holds until the next row.
    #[arg(long, value_name = "FILE")]
    trace: PathBuf,
    /// Also play an HPA-like and a KPA-like reference built from the first
    /// policy (same target and bounds).
    #[arg(long)]
    compare: bool,
    /// Wall-clock time of t=0 (RFC 3339), for schedules and forecasts
    /// [default: the trace's first `time`, else Monday 2026-11-30T08:00:00Z].
    #[arg(long, value_parser = parse_time)]
    start: Option<DateTime<Utc>>,
    /// Requests per second one ready pod serves [default: concurrency / service time].
    #[arg(long, conflicts_with = "pod_concurrency")]
    pod_rps: Option<f64>,
    /// Concurrent requests one pod serves (its workers).
    #[arg(long, default_value_t = 10.0)]
    pod_concurrency: f64,
    /// Time a request spends in service.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    service_time: Duration,
    /// Time from a pod's creation until it serves.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    cold_start: Duration,
    /// Longest wait in the queue; later requests fail (the balancer's queue timeout).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    queue_timeout: Duration,
    /// Latency objective: a second whose p95 exceeds it (or with failed
    /// requests) is a violation.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    slo: Duration,
    /// Seed of the arrivals (and of the decision phase of policies that
    /// decide less often than every second).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Arrivals per second: Poisson around the trace's rate, or exactly it.
    #[arg(long, value_enum, default_value_t = ArrivalsArg::Poisson)]
    arrivals: ArrivalsArg,
    /// Pods at t=0 for every policy [default: the first minute's load at 70%
    /// of capacity, raised to minReplicas and an active schedule floor].
    #[arg(long)]
    initial: Option<u32>,
    /// Seconds per timeline row [default: 1 s, longer for traces over ~2.8 h
    /// so a timeline stays within 10,000 rows].
    #[arg(long, value_name = "SECONDS")]
    timeline_step: Option<u64>,
    /// Directory for timeline.csv and chart.svg.
    #[arg(long, default_value = "sim-out", value_name = "DIR")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ArrivalsArg {
    Poisson,
    Exact,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
}

/// Where the autoscaler runs, for defaults that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `run`: in the cluster, scraped by Prometheus.
    Cluster,
    /// `local`: one machine; nothing outside it needs the metrics.
    Local,
}

/// `--metrics-bind`, or the mode's default: every interface in the
/// cluster, loopback only in local mode.
fn metrics_bind(given: Option<SocketAddr>, mode: Mode) -> SocketAddr {
    given.unwrap_or_else(|| match mode {
        Mode::Cluster => SocketAddr::from(([0, 0, 0, 0], 9902)),
        Mode::Local => SocketAddr::from(([127, 0, 0, 1], 9902)),
    })
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}; expected RFC 3339 such as 2026-11-30T08:00:00Z"))
}

#[derive(Debug, Args)]
struct Common {
    /// Serve /metrics and /healthz here [default: 0.0.0.0:9902 for `run`
    /// (scraped in the cluster), 127.0.0.1:9902 for `local` (one machine)].
    #[arg(long, env = "USHER_METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,
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
        Command::Simulate(args) => simulate(args),
        Command::Trace { kind, seed, out } => write_trace(kind, seed, out),
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

fn simulate(args: SimulateArgs) -> ExitCode {
    let mut policies = Vec::new();
    for file in &args.policy {
        match policy::load(file) {
            Ok(p) => policies.push((p.name.clone(), p)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let trace = match sim::trace::load(&args.trace) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut model = PodModel::from_concurrency(args.pod_concurrency, args.service_time);
    if let Some(rps) = args.pod_rps {
        model.pod_rps = rps;
    }
    model.cold_start = args.cold_start;
    model.queue_timeout = args.queue_timeout;
    if !(model.pod_rps.is_finite() && model.pod_rps > 0.0) || args.service_time.is_zero() {
        eprintln!("error: a pod must serve more than 0 requests/s and take some service time");
        return ExitCode::FAILURE;
    }
    let config = sim::Config {
        trace_name: args.trace.display().to_string(),
        trace,
        contenders: sim::contenders(policies, args.compare),
        start: args.start,
        model,
        slo: args.slo,
        arrivals: match args.arrivals {
            ArrivalsArg::Poisson => Arrivals::Poisson,
            ArrivalsArg::Exact => Arrivals::Exact,
        },
        seed: args.seed,
        initial: args.initial,
        timeline_step: args.timeline_step,
    };
    let report = sim::run(&config);
    print!("{}\n{}", report.header(), report.table());
    match report.write(&args.out) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_trace(kind: Kind, seed: u64, out: Option<PathBuf>) -> ExitCode {
    let text = generate::generate(kind, seed);
    let written = match &out {
        Some(path) => std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display())),
        None => stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string()),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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
    let bind = metrics_bind(args.common.metrics_bind, Mode::Cluster);
    match telemetry::start(bind, &metrics).await {
        Ok(addr) => tracing::info!(%addr, "serving /metrics"),
        Err(e) => {
            eprintln!("error: cannot listen on {bind}: {e}");
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
    let bind = metrics_bind(args.common.metrics_bind, Mode::Local);
    match telemetry::start(bind, &metrics).await {
        Ok(addr) => tracing::info!(%addr, "serving /metrics"),
        Err(e) => {
            eprintln!("error: cannot listen on {bind}: {e}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_bind_defaults_to_loopback_in_local_mode_only() {
        assert_eq!(
            metrics_bind(None, Mode::Local),
            "127.0.0.1:9902".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            metrics_bind(None, Mode::Cluster),
            "0.0.0.0:9902".parse::<SocketAddr>().unwrap()
        );
        let given = "127.0.0.5:1".parse().unwrap();
        assert_eq!(metrics_bind(Some(given), Mode::Cluster), given);
        assert_eq!(metrics_bind(Some(given), Mode::Local), given);
    }
}
