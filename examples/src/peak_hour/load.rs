//! The learners: a goose load test. Each learner logs in (the LMS sets its
//! `MoodleSession` cookie, which the balancer follows), views a course,
//! attempts a quiz, logs out, and starts again, thinking between pages. The
//! number of learners follows the day's [`Profile`](super::profile::Profile)
//! as a goose test plan, so the load ends by itself.
//!
//! Every page is counted here as the learner saw it (latency includes the
//! balancer's surge queue), second by second, for the timeline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goose::config::GooseConfiguration;
use goose::metrics::GooseMetrics;
use goose::prelude::*;

/// Think time between two pages: at least this…
pub const THINK_MIN: Duration = Duration::from_millis(1000);
/// …and at most this (uniform).
pub const THINK_MAX: Duration = Duration::from_millis(2000);
/// Failures described in the summary at most.
const MAX_FAILURES: usize = 10;

/// Pages seen in one second.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// Requests sent.
    pub started: u64,
    /// Requests answered with 2xx/3xx.
    pub ok: u64,
    /// Requests that failed (an error status, a transport error, a body cut short).
    pub failed: u64,
    /// Latencies of the requests that finished, in milliseconds.
    pub latencies_ms: Vec<f64>,
}

#[derive(Debug, Default)]
struct Inner {
    window: Window,
    ok: u64,
    failed: u64,
    samples: Vec<(f64, f64)>,
    failures: Vec<String>,
}

/// What the learners saw, shared by every goose user.
#[derive(Debug)]
pub struct LoadStats {
    origin: Instant,
    inner: Mutex<Inner>,
}

/// Totals over a whole run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Requests answered with 2xx/3xx.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Every request that finished: (seconds since the origin when it
    /// finished, latency in milliseconds).
    pub samples: Vec<(f64, f64)>,
    /// The first failures, described.
    pub failures: Vec<String>,
}

impl LoadStats {
    /// Counts from `origin` on (the load test's start).
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request sent.
    pub fn sent(&self) {
        self.lock().window.started += 1;
    }

    /// Counts a request finished after `latency`; `failure` describes it if
    /// it failed.
    pub fn finished(&self, latency: Duration, failure: Option<String>) {
        let ms = latency.as_secs_f64() * 1000.0;
        let at = self.origin.elapsed().as_secs_f64();
        let mut inner = self.lock();
        inner.window.latencies_ms.push(ms);
        inner.samples.push((at, ms));
        match failure {
            None => {
                inner.window.ok += 1;
                inner.ok += 1;
            }
            Some(what) => {
                inner.window.failed += 1;
                inner.failed += 1;
                if inner.failures.len() < MAX_FAILURES {
                    inner.failures.push(what);
                }
            }
        }
    }

    /// The pages since the last call.
    pub fn take_window(&self) -> Window {
        std::mem::take(&mut self.lock().window)
    }

    /// Totals so far.
    pub fn totals(&self) -> Totals {
        let inner = self.lock();
        Totals {
            ok: inner.ok,
            failed: inner.failed,
            samples: inner.samples.clone(),
            failures: inner.failures.clone(),
        }
    }
}

/// The pages of a learner's visit, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Login,
    Course,
    Quiz,
    Logout,
}

impl Page {
    const ALL: [Page; 4] = [Page::Login, Page::Course, Page::Quiz, Page::Logout];

    fn name(self) -> &'static str {
        match self {
            Page::Login => "login",
            Page::Course => "view course",
            Page::Quiz => "attempt quiz",
            Page::Logout => "logout",
        }
    }
}

/// A boxed transaction future borrowing its user.
type Visit<'r> = Pin<Box<dyn Future<Output = TransactionResult> + Send + 'r>>;

/// Lets the closure's higher-ranked signature be inferred.
fn transaction_fn<F>(f: F) -> TransactionFunction
where
    F: for<'r> Fn(&'r mut GooseUser) -> Visit<'r> + Send + Sync + 'static,
{
    Arc::new(f)
}

async fn visit(user: &mut GooseUser, stats: &LoadStats, page: Page) -> TransactionResult {
    // Learners spread over a few courses and quizzes.
    let course = user.weighted_users_index % 7 + 1;
    let started = Instant::now();
    stats.sent();
    let sent = match page {
        Page::Login => user.get("/login").await,
        Page::Course => user.get(&format!("/course/view?id={course}")).await,
        Page::Quiz => {
            let path = format!("/quiz/attempt?cmid={course}");
            user.post(&path, "q1=b&q2=true&finishattempt=1").await
        }
        Page::Logout => user.get("/logout").await,
    };
    let failure = match sent {
        Err(e) => Some(format!("{}: {e}", page.name())),
        Ok(goose) => match goose.response {
            Err(e) => Some(format!("{}: {e}", page.name())),
            Ok(resp) => {
                let status = resp.status();
                match resp.bytes().await {
                    Err(e) => Some(format!("{}: {status}, body: {e}", page.name())),
                    Ok(_) if status.is_success() || status.is_redirection() => None,
                    Ok(body) => Some(format!(
                        "{}: {status} {}",
                        page.name(),
                        String::from_utf8_lossy(&body).trim()
                    )),
                }
            }
        },
    };
    stats.finished(started.elapsed(), failure);
    Ok(())
}

/// The learners' scenario, counting into `stats`.
pub fn scenario(stats: &Arc<LoadStats>) -> Result<Scenario, GooseError> {
    let mut scenario = Scenario::new("learner").set_wait_time(THINK_MIN, THINK_MAX)?;
    for (i, page) in Page::ALL.into_iter().enumerate() {
        let stats = stats.clone();
        let function = transaction_fn(move |user| {
            let stats = stats.clone();
            Box::pin(async move { visit(user, &stats, page).await })
        });
        scenario = scenario.register_transaction(
            Transaction::new(function)
                .set_name(page.name())
                .set_sequence(i + 1),
        );
    }
    Ok(scenario)
}

/// Runs the load test against `host` (`http://127.0.0.1:PORT`) along
/// `test_plan`, counting into `stats`. Goose prints nothing of its own but
/// one "N users hatched." line; its log goes to the demo's log.
pub async fn run(
    host: &str,
    test_plan: &str,
    stats: &Arc<LoadStats>,
) -> Result<GooseMetrics, GooseError> {
    let config = GooseConfiguration::default();
    GooseAttack::initialize_with_config(config)?
        .register_scenario(scenario(stats)?)
        .set_default(GooseDefault::Host, host)?
        .set_default(GooseDefault::TestPlan, test_plan)?
        .set_default(GooseDefault::Quiet, 1)?
        .set_default(GooseDefault::NoPrintMetrics, true)?
        .set_default(GooseDefault::NoErrorSummary, true)?
        .set_default(GooseDefault::NoTelnet, true)?
        .set_default(GooseDefault::NoWebSocket, true)?
        .set_default(GooseDefault::NoGzip, true)?
        .set_default(GooseDefault::Timeout, "60")?
        .execute()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_taken_and_totals_kept() {
        let stats = LoadStats::new(Instant::now());
        stats.sent();
        stats.sent();
        stats.finished(Duration::from_millis(100), None);
        stats.finished(Duration::from_millis(300), Some("quiz: 503".into()));
        let w = stats.take_window();
        assert_eq!((w.started, w.ok, w.failed), (2, 1, 1));
        assert_eq!(w.latencies_ms, vec![100.0, 300.0]);
        assert_eq!(stats.take_window(), Window::default());
        let t = stats.totals();
        assert_eq!((t.ok, t.failed), (1, 1));
        assert_eq!(t.failures, vec!["quiz: 503".to_string()]);
        let ms: Vec<f64> = t.samples.iter().map(|s| s.1).collect();
        assert_eq!(ms, vec![100.0, 300.0]);
        assert!(t.samples.iter().all(|s| s.0 >= 0.0 && s.0 < 60.0));
    }
}
