//! The peak-hour demo: a school day compressed into about 90 seconds, on
//! one machine, everything on 127.0.0.1.
//!
//! - the balancer (in-process, from `usher-balancer`) with one pool fed by
//!   an endpoints file, sticky on `MoodleSession`, with a surge queue;
//! - the autoscaler in local mode (in-process, `usher_autoscaler::local`)
//!   with a demo policy: a schedule pre-warms the timetabled lecture, panic
//!   mode catches the unscheduled surge, a short window scales down after;
//! - `lms-sim` pods (this program's hidden `pod` subcommand) with a cold
//!   start and a php-fpm-like worker limit;
//! - goose learners following the day ([`profile`]).
//!
//! Each second prints a live line and becomes a timeline row; at the end
//! `timeline.csv`, `peak-hour.svg` and `summary.json` are written and the
//! summary printed. `--compare` runs the same day again under an HPA-like
//! policy and puts both side by side.

pub mod live;
pub mod load;
pub mod profile;
pub mod report;
pub mod setup;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use usher_autoscaler::local::{self, LocalSettings};
use usher_autoscaler::telemetry::Metrics;
use usher_autoscaler::timeline::{self, ChartOptions, Timeline};
use usher_balancer::Balancer;

use self::live::{Sampler, SharedControl};
use self::load::LoadStats;
use self::profile::Profile;
use self::report::RunSummary;
use self::setup::Strategy;

/// The demo's options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Length of the day, e.g. `90s` or `40` (seconds). The lecture starts
    /// on a whole UTC minute (cron's resolution), so the baseline may add up
    /// to a minute.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Where `timeline.csv`, `peak-hour.svg`, `summary.json` and the log go.
    #[arg(long, default_value = "peak-hour-out")]
    pub out: PathBuf,
    /// Run the same day again under an HPA-like policy (15 s sync, no panic
    /// mode, no schedule, 300 s scale-down window) and compare.
    #[arg(long)]
    pub compare: bool,
    /// Seed of the pods' service times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Parses `--duration`: humantime (`90s`, `1m30s`) or whole seconds; 20 s
/// to 1 h.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s.trim()).map_err(|e| format!("`{s}`: {e}"))?,
    };
    if d < Duration::from_secs(20) || d > Duration::from_secs(3600) {
        return Err(format!("`{s}`: the day must last 20 s to 1 h"));
    }
    Ok(d)
}

/// Seconds of set-up (balancer, first pod's cold start) allowed for when
/// picking the lecture's minute.
const SETUP_ALLOWANCE: u64 = 10;

/// When the lecture of a run starts.
#[derive(Debug, Clone)]
enum Timing {
    /// The schedule's minute: the profile is fitted to it once set up.
    Minute(DateTime<Utc>),
    /// The same day as an earlier run.
    Same(Profile),
}

/// One run's results.
#[derive(Debug)]
struct RunOutput {
    profile: Profile,
    timeline: Timeline,
    summary: RunSummary,
    /// Stopped early (Ctrl-C).
    interrupted: bool,
}

/// Runs the demo; returns the runs' summaries.
pub async fn run(opts: Options) -> Result<Vec<RunSummary>, String> {
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| format!("creating {}: {e}", opts.out.display()))?;
    let log = opts.out.join("peak-hour.log");
    init_log(&log)?;
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let min_baseline = Profile::min_baseline(opts.duration);
    let prewarm_at = profile::next_minute(
        Utc::now(),
        Duration::from_secs(min_baseline + SETUP_ALLOWANCE),
    );
    println!(
        "peak-hour: a school day on 127.0.0.1 — the balancer, the autoscaler in local mode, lms-sim pods ({} workers, {} pages, {} cold start) and goose learners ({}–{} s think time)",
        setup::WORKERS,
        setup::SERVICE_TIME,
        setup::COLD_START,
        load::THINK_MIN.as_secs_f64(),
        load::THINK_MAX.as_secs_f64(),
    );
    println!(
        "  lecture: cron \"{}\" (UTC) pre-warms {} pods at {} UTC; its {} learners arrive {} s later; the surge brings {} unannounced",
        profile::daily_cron(prewarm_at),
        setup::LECTURE_FLOOR,
        prewarm_at.format("%H:%M:%S"),
        profile::LECTURE_USERS,
        profile::LEAD,
        profile::SURGE_USERS,
    );
    println!("  output: {} (log: {})", opts.out.display(), log.display());
    let mut outputs = Vec::new();
    let first = run_once(Strategy::Usher, &opts, &exe, Timing::Minute(prewarm_at)).await?;
    let again = opts.compare && !first.interrupted;
    let day = first.profile.clone();
    outputs.push(first);
    if again {
        outputs.push(run_once(Strategy::HpaLike, &opts, &exe, Timing::Same(day)).await?);
    }
    let timelines: Vec<Timeline> = outputs.iter().map(|o| o.timeline.clone()).collect();
    let csv = opts.out.join("timeline.csv");
    timeline::write_csv(&csv, &timelines).map_err(|e| format!("writing {}: {e}", csv.display()))?;
    let chart = opts.out.join("peak-hour.svg");
    let title = if outputs.len() > 1 {
        "Peak hour: Usher vs an HPA-like policy (offered load, replicas, p95)"
    } else {
        "Peak hour: offered load, replicas and p95 latency under Usher"
    };
    timeline::render_chart_with(
        &chart,
        title,
        &timelines,
        ChartOptions {
            slo_ms: Some(setup::SLO_P95_MS),
        },
    )?;
    let summaries: Vec<RunSummary> = outputs.iter().map(|o| o.summary.clone()).collect();
    let json = serde_json::json!({
        "profile": profile_json(&outputs[0].profile),
        "sloP95Ms": setup::SLO_P95_MS,
        "runs": summaries.iter().map(RunSummary::json).collect::<Vec<_>>(),
    });
    let summary_path = opts.out.join("summary.json");
    std::fs::write(
        &summary_path,
        serde_json::to_string_pretty(&json).expect("json serializes") + "\n",
    )
    .map_err(|e| format!("writing {}: {e}", summary_path.display()))?;
    println!();
    if let Some(o) = outputs.iter().find(|o| o.interrupted) {
        println!(
            "(stopped early: the {} run covers its first {} s of {})",
            o.summary.label,
            o.timeline.rows.len(),
            o.profile.total
        );
    }
    for s in &summaries {
        println!("{}", s.line());
        for f in &s.failures {
            println!("  failed: {f}");
        }
    }
    if summaries.len() > 1 {
        println!();
        print!("{}", report::table(&summaries));
    }
    println!(
        "wrote {}, {} and {}",
        csv.display(),
        chart.display(),
        summary_path.display()
    );
    Ok(summaries)
}

fn profile_json(p: &Profile) -> serde_json::Value {
    serde_json::json!({
        "prewarm": p.prewarm,
        "lecture": p.lecture,
        "lull": p.lull,
        "surge": p.surge,
        "decline": p.decline,
        "end": p.end,
        "total": p.total,
        "testPlan": p.test_plan(),
    })
}

/// Logs of the balancer, the autoscaler and goose go to `path`
/// (`USHER_LOG` sets the filter, `info` by default).
fn init_log(path: &Path) -> Result<(), String> {
    let file =
        std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("USHER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Already set (a second call in one process): keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

/// Runs the day once under `strategy`.
async fn run_once(
    strategy: Strategy,
    opts: &Options,
    exe: &Path,
    timing: Timing,
) -> Result<RunOutput, String> {
    let label = strategy.label();
    let dir = opts.out.join("runs").join(label);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let endpoints = dir.join("endpoints.json");
    write(&endpoints, "[]\n")?;
    let balancer_yaml = dir.join("balancer.yaml");
    write(&balancer_yaml, &setup::balancer_yaml(&endpoints))?;
    let balancer = Balancer::start(
        &balancer_yaml,
        usher_balancer::Options {
            watch_interval: None,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("starting the balancer: {e:#}"))?;
    let (public, admin) = match (balancer.listener_addr("public"), balancer.admin_addr()) {
        (Some(p), Some(a)) => (p, a),
        _ => return Err("the balancer has no public or admin listener".to_string()),
    };
    let prewarm_at = match &timing {
        Timing::Minute(at) => *at,
        Timing::Same(_) => Utc::now(),
    };
    // The policy needs only the schedule's minute and how long its floor
    // holds, which does not depend on the baseline.
    let provisional = Profile::new(opts.duration, Profile::min_baseline(opts.duration));
    let policy_path = dir.join("policy.yaml");
    write(
        &policy_path,
        &setup::policy_yaml(strategy, admin, &provisional, prewarm_at),
    )?;
    let policy = usher_autoscaler::policy::load(&policy_path).map_err(|e| e.to_string())?;
    let control = SharedControl::default();
    let (stop_scaler, scaler_stopped) = watch::channel(false);
    let settings = LocalSettings {
        command: setup::pod_command(exe, opts.seed),
        host: "127.0.0.1".to_string(),
        endpoints_file: endpoints.clone(),
        ready_path: "/healthz".to_string(),
        drain: Duration::from_secs(setup::DRAIN_SECS),
        initial: None,
        dry_run: false,
        history_file: None,
    };
    // Local mode runs on a thread of its own (its future is not `Send`).
    let on_tick = live::on_tick(&control);
    let scaler = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the autoscaler's runtime: {e}"))?
            .block_on(local::run(
                policy,
                settings,
                Metrics::new(),
                scaler_stopped,
                on_tick,
            ))
    });
    println!();
    println!(
        "== {label}: {} (balancer http://{public}, admin http://{admin}/metrics)",
        strategy.describe()
    );
    let day = async {
        wait_serving(public, &endpoints, Duration::from_secs(30)).await?;
        // The first pods' opcache warms up before the day starts.
        tokio::time::sleep(setup::WARMUP).await;
        let t0 = Instant::now();
        let profile = match &timing {
            Timing::Minute(at) => {
                let wait = (*at - Utc::now()).num_milliseconds() as f64 / 1000.0;
                if wait < 0.0 {
                    println!(
                        "  (the set-up took past the lecture's minute: its pre-warm has begun)"
                    );
                }
                Profile::new(opts.duration, wait.max(0.0).round() as u64)
            }
            Timing::Same(p) => p.clone(),
        };
        println!(
            "  the day: baseline from 0 s, pre-warm {} s, lecture {}–{} s, surge {}–{} s, decline {}–{} s, over at {} s; goose test plan \"{}\"",
            profile.prewarm,
            profile.lecture,
            profile.lull,
            profile.surge,
            profile.decline,
            profile.decline,
            profile.end,
            profile.total,
            profile.test_plan()
        );
        let stats = Arc::new(LoadStats::new(t0));
        let (stop_sampler, sampler_stopped) = watch::channel(false);
        let sampler = tokio::spawn(
            Sampler {
                metrics_url: format!("http://{admin}/metrics"),
                endpoints_file: endpoints.clone(),
                stats: stats.clone(),
                control: control.clone(),
                profile: profile.clone(),
                t0,
                scheduled: strategy == Strategy::Usher,
                print: true,
            }
            .run(sampler_stopped),
        );
        let goose = load::run(&format!("http://{public}"), &profile.test_plan(), &stats).await;
        let elapsed = t0.elapsed();
        // The last, partial second is left out.
        let _ = stop_sampler.send(true);
        let rows = sampler
            .await
            .map_err(|e| format!("the sampler failed: {e}"))?;
        goose.map_err(|e| format!("the load test failed: {e:?}"))?;
        let interrupted = elapsed.as_secs_f64() + 2.0 < profile.total as f64;
        Ok::<_, String>((profile, rows, stats, t0, interrupted))
    }
    .await;
    // Stop the autoscaler (it stops its pods), then the balancer.
    let _ = stop_scaler.send(true);
    let joined = tokio::task::spawn_blocking(move || scaler.join());
    match tokio::time::timeout(Duration::from_secs(60), joined).await {
        Ok(Ok(Ok(Ok(())))) => {}
        Ok(Ok(Ok(Err(e)))) => eprintln!("the autoscaler stopped with an error: {e}"),
        Ok(_) => eprintln!("the autoscaler's thread failed"),
        Err(_) => eprintln!("the autoscaler did not stop within 60 s"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), balancer.shutdown()).await;
    let (profile, rows, stats, t0, interrupted) = day?;
    let events = live::events_since(&control, t0);
    let summary = RunSummary::new(label, &profile, &rows, &events, &stats.totals());
    Ok(RunOutput {
        profile,
        timeline: Timeline {
            label: label.to_string(),
            rows,
        },
        summary,
        interrupted,
    })
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Waits until a pod is listed and a page answers through the balancer.
async fn wait_serving(
    public: SocketAddr,
    endpoints: &Path,
    within: Duration,
) -> Result<(), String> {
    let http: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{public}/")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let deadline = Instant::now() + within;
    loop {
        let listed = usher_balancer::discovery::file::read(endpoints)
            .is_ok_and(|v| v.iter().any(|e| !e.starting));
        if listed
            && let Ok(Ok(resp)) =
                tokio::time::timeout(Duration::from_secs(5), http.get(uri.clone())).await
            && resp.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no pod served through the balancer within {within:?} (see the log)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_seconds_or_humantime_within_bounds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("40s"), Ok(Duration::from_secs(40)));
        assert!(parse_duration("5s").is_err());
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
