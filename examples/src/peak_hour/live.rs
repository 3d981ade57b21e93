//! Second by second: what the learners saw, what the balancer holds, what
//! the autoscaler decided. Each second becomes one timeline row and one
//! live line.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use usher_autoscaler::decide::Mode;
use usher_autoscaler::runner::{Replicas, Step};
use usher_autoscaler::timeline::Row;

use super::load::LoadStats;
use super::profile::{Phase, Profile};
use super::report::{ScaleEvent, percentile};
use super::setup::{POOL, SLO_P95_MS};

/// A scale decision as it happened.
#[derive(Debug, Clone)]
struct Event {
    at: Instant,
    from: u32,
    to: u32,
    reason: String,
}

/// The autoscaler's side, kept by its `on_tick` callback.
#[derive(Debug, Default)]
pub struct Control {
    replicas: Replicas,
    desired: u32,
    panic: bool,
    reason: String,
    decided: Option<Instant>,
    ticks: u64,
    events: Vec<Event>,
}

/// [`Control`] shared between the autoscaler's callback and the sampler.
pub type SharedControl = Arc<Mutex<Control>>;

fn lock(c: &SharedControl) -> std::sync::MutexGuard<'_, Control> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// The callback for `usher_autoscaler::local::run`.
pub fn on_tick(control: &SharedControl) -> usher_autoscaler::local::OnTick {
    let control = control.clone();
    Arc::new(move |step: &Step, replicas: Replicas| {
        let mut c = lock(&control);
        if let Some(to) = step.scale_to {
            c.events.push(Event {
                at: Instant::now(),
                from: step.observation.current_replicas,
                to,
                reason: step.decision.reason.clone(),
            });
        }
        c.replicas = replicas;
        c.desired = step.decision.desired;
        c.panic = step.decision.mode == Mode::Panic;
        c.reason = step.decision.reason.clone();
        c.decided = Some(Instant::now());
        c.ticks += 1;
    })
}

/// The scale events, in seconds since `t0`.
pub fn events_since(control: &SharedControl, t0: Instant) -> Vec<ScaleEvent> {
    lock(control)
        .events
        .iter()
        .map(|e| ScaleEvent {
            t: if e.at >= t0 {
                (e.at - t0).as_secs_f64()
            } else {
                -(t0 - e.at).as_secs_f64()
            },
            from: e.from,
            to: e.to,
            reason: e.reason.clone(),
        })
        .collect()
}

/// The sum of a metric's samples carrying `pool="POOL"`, from Prometheus text.
pub fn pool_gauge(text: &str, name: &str) -> Option<f64> {
    let label = format!("pool=\"{POOL}\"");
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = labels.split_once('}') else {
            continue;
        };
        if !labels.split(',').any(|l| l == label) {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Ready endpoints listed in the autoscaler's endpoints file (starting
/// pods are listed too, marked as such).
fn listed(path: &std::path::Path) -> u32 {
    usher_balancer::discovery::file::read(path)
        .map_or(0, |v| v.iter().filter(|e| !e.starting).count() as u32)
}

/// The fewest and most live sticky sessions on one of the pool's endpoints
/// that hold any, from the balancer's `usher_balancer_endpoint_sessions`.
pub fn session_spread(text: &str) -> Option<(u64, u64)> {
    let label = format!("pool=\"{POOL}\"");
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("usher_balancer_endpoint_sessions{"))
        .filter(|rest| {
            rest.split('}')
                .next()
                .is_some_and(|ls| ls.split(',').any(|l| l == label))
        })
        .filter_map(|rest| rest.rsplit(' ').next()?.parse().ok())
        .collect();
    Some((*counts.iter().min()?, *counts.iter().max()?))
}

/// One live line, cut to `width` characters. `sessions` is the spread of
/// live sticky sessions over the pods (where new sessions were born).
pub fn live_line(
    row: &Row,
    sessions: Option<(u64, u64)>,
    phase: Phase,
    reason: &str,
    width: usize,
) -> String {
    let p95 = row
        .p95_ms
        .map_or_else(|| "    –".to_string(), |v| format!("{v:>5.0}"));
    let pods = format!("{}/{}", row.replicas, row.ready);
    let sessions = sessions.map_or_else(
        || "     –".to_string(),
        |(min, max)| format!("{:>6}", format!("{min}–{max}")),
    );
    let line = format!(
        "{:>4}s {:<8} {:>5.1} req/s  p95 {p95} ms  err {:>2}  in-flight {:>3}  queued {:>3}  pods {pods:<5} sessions/pod {sessions}  {reason}",
        row.t as u64,
        phase.as_str(),
        row.served_rps + row.errors,
        row.errors,
        row.in_flight,
        row.queued,
    );
    truncate(line.trim_end(), width)
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The terminal's width (`COLUMNS`), 160 when unknown.
pub fn width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|w| *w >= 60)
        .unwrap_or(160)
}

/// What the sampler reads.
pub struct Sampler {
    /// The balancer's admin `/metrics`.
    pub metrics_url: String,
    /// The autoscaler's endpoints file.
    pub endpoints_file: PathBuf,
    /// The learners' counts.
    pub stats: Arc<LoadStats>,
    /// The autoscaler's decisions.
    pub control: SharedControl,
    /// The day's timing.
    pub profile: Profile,
    /// When the load test started.
    pub t0: Instant,
    /// Whether the policy pre-warms the lecture.
    pub scheduled: bool,
    /// Print a live line each second.
    pub print: bool,
}

impl Sampler {
    /// Takes one row per second from `t0` until `stop` turns true, printing
    /// a live line for each; returns the rows.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Vec<Row> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(300)));
        let http: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let uri: Option<hyper::Uri> = self.metrics_url.parse().ok();
        let mut rows = Vec::new();
        let mut ticks_seen = lock(&self.control).ticks;
        let width = width();
        let mut phase = None;
        let mut second = 0u64;
        loop {
            let next = self.t0 + Duration::from_secs(second + 1);
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = stop.changed() => break,
            }
            let window = self.stats.take_window();
            let text = match &uri {
                Some(uri) => read(&http, uri.clone()).await,
                None => None,
            };
            let gauge = |name: &str| {
                text.as_deref()
                    .and_then(|t| pool_gauge(t, name))
                    .unwrap_or(0.0)
            };
            let (replicas, desired, panic, reason, decided, ticks) = {
                let c = lock(&self.control);
                (
                    c.replicas,
                    c.desired,
                    c.panic,
                    c.reason.clone(),
                    c.decided,
                    c.ticks,
                )
            };
            let p95_ms = percentile(&window.latencies_ms, 0.95);
            let errors = window.failed as f64;
            let row = Row {
                t: second as f64,
                offered_rps: window.started as f64,
                served_rps: window.ok as f64,
                errors,
                p95_ms,
                in_flight: gauge("usher_balancer_pool_in_flight_requests"),
                queued: gauge("usher_balancer_pool_queue_depth"),
                replicas: replicas.current,
                ready: listed(&self.endpoints_file),
                desired,
                panic,
                violation: errors > 0.0 || p95_ms.is_some_and(|p| p > SLO_P95_MS),
                reason: if ticks != ticks_seen {
                    reason.clone()
                } else {
                    String::new()
                },
            };
            ticks_seen = ticks;
            let now = self.profile.phase_at(second as f64);
            if self.print {
                if phase != Some(now) {
                    println!("{}", banner(now, &self.profile, self.scheduled));
                    phase = Some(now);
                }
                // A slow loop's (15 s) last decision says how old it is.
                let shown = match decided.map(|d| d.elapsed().as_secs_f64()) {
                    Some(age) if age >= 1.5 => format!("[{age:.0} s ago] {reason}"),
                    _ => reason.clone(),
                };
                let sessions = text.as_deref().and_then(session_spread);
                println!("{}", live_line(&row, sessions, now, &shown, width));
            }
            rows.push(row);
            second += 1;
        }
        rows
    }
}

/// The line announcing a part of the day.
fn banner(phase: Phase, p: &Profile, scheduled: bool) -> String {
    let what = match phase {
        Phase::Baseline => format!("{} learners online", super::profile::BASE_USERS),
        Phase::PreWarm if scheduled => {
            "the lecture's schedule starts: pre-warm before anyone arrives".to_string()
        }
        Phase::PreWarm => "the lecture's minute: this policy has no schedule".to_string(),
        Phase::Lecture => format!(
            "the timetabled lecture: {} learners",
            super::profile::LECTURE_USERS
        ),
        Phase::Lull => "the lecture ends".to_string(),
        Phase::Surge => format!(
            "an unscheduled surge: {} learners (10× the baseline)",
            super::profile::SURGE_USERS
        ),
        Phase::Decline => "learners leave: the pods should follow".to_string(),
        Phase::End => "the last learners log off".to_string(),
    };
    let at = match phase {
        Phase::Baseline => 0,
        Phase::PreWarm => p.prewarm,
        Phase::Lecture => p.lecture,
        Phase::Lull => p.lull,
        Phase::Surge => p.surge,
        Phase::Decline => p.decline,
        Phase::End => p.end,
    };
    format!("── {at:>3}s {}: {what}", phase.as_str())
}

async fn read(http: &Client<HttpConnector, Empty<Bytes>>, uri: hyper::Uri) -> Option<String> {
    let resp = tokio::time::timeout(Duration::from_millis(500), http.get(uri))
        .await
        .ok()?
        .ok()?;
    let body = tokio::time::timeout(Duration::from_millis(500), resp.into_body().collect())
        .await
        .ok()?
        .ok()?;
    String::from_utf8(body.to_bytes().to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_gauges_are_read_from_prometheus_text() {
        let text = "# TYPE usher_balancer_pool_queue_depth gauge\n\
usher_balancer_pool_queue_depth{pool=\"moodle\"} 7\n\
usher_balancer_pool_queue_depth{pool=\"maintenance\"} 3\n\
usher_balancer_pool_in_flight_requests{pool=\"moodle\"} 12\n\
usher_balancer_pool_in_flight_requests_other{pool=\"moodle\"} 99\n";
        assert_eq!(
            pool_gauge(text, "usher_balancer_pool_queue_depth"),
            Some(7.0)
        );
        assert_eq!(
            pool_gauge(text, "usher_balancer_pool_in_flight_requests"),
            Some(12.0)
        );
        assert_eq!(pool_gauge(text, "usher_balancer_nothing"), None);
    }

    #[test]
    fn live_lines_fit_the_terminal() {
        let row = Row {
            t: 42.0,
            served_rps: 38.0,
            errors: 0.0,
            p95_ms: Some(612.4),
            in_flight: 14.0,
            queued: 3.0,
            replicas: 9,
            ready: 6,
            panic: true,
            ..Row::default()
        };
        let reason = "panic: 2s demand 23.0 in flight+queued needs 12 pods (3.8× 6 ready); no scale-down while panicking";
        let line = live_line(&row, Some((6, 7)), Phase::Surge, reason, 120);
        assert_eq!(line.chars().count(), 120, "{line}");
        assert!(line.ends_with('…'));
        assert!(
            line.starts_with(
                "  42s surge     38.0 req/s  p95   612 ms  err  0  in-flight  14  queued   3  pods 9/6   sessions/pod    6–7  panic: 2s"
            ),
            "{line}"
        );
        let short = live_line(&Row::default(), None, Phase::Baseline, "", 200);
        assert!(short.contains("p95     – ms"), "{short}");
        assert!(short.contains("sessions/pod      –"), "{short}");
    }

    #[test]
    fn session_spread_is_read_from_prometheus_text() {
        let text = format!(
            "usher_balancer_endpoint_sessions{{pool=\"{POOL}\",endpoint=\"a\"}} 7\n\
             usher_balancer_endpoint_sessions{{pool=\"{POOL}\",endpoint=\"b\"}} 5\n\
             usher_balancer_endpoint_sessions{{pool=\"other\",endpoint=\"c\"}} 90\n"
        );
        assert_eq!(session_spread(&text), Some((5, 7)));
        assert_eq!(session_spread(""), None);
    }
}
