//! Local mode: the "Deployment" is a set of local processes. Scaling up
//! starts copies of a command with a free port in place of `{port}`, waits
//! for each to pass its readiness check, then lists it in the balancer's
//! `endpoints.file`. Scaling down removes an endpoint from the file first,
//! waits for the drain time, then stops the process. A copy that exits by
//! itself is replaced, as a ReplicaSet would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::policy::{Policy, SourceKind};
use crate::runner::{Replicas, Runner};
use crate::source::Reader;
use crate::telemetry::Metrics;

/// How local copies are run.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// The command and its arguments; `{port}` and `{index}` are replaced.
    pub command: Vec<String>,
    /// Host the copies listen on (written into the endpoints file).
    pub host: String,
    /// The balancer's endpoints file, written atomically.
    pub endpoints_file: PathBuf,
    /// Readiness path, GET must answer 2xx.
    pub ready_path: String,
    /// Time between removing an endpoint and stopping its process; at least
    /// the balancer's file poll interval plus its longest request.
    pub drain: Duration,
    /// Copies at start (`None`: the policy's `minReplicas`).
    pub initial: Option<u32>,
    /// Compute and log, never start or stop copies beyond the initial ones.
    pub dry_run: bool,
    /// Where predictive history is kept across restarts (CSV of minute
    /// start and average demand), if the policy is predictive.
    pub history_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Draining { until: Instant },
}

#[derive(Debug)]
struct Copy {
    index: u64,
    port: u16,
    child: Child,
    state: State,
}

/// The set of local copies.
#[derive(Debug)]
pub struct LocalTarget {
    settings: LocalSettings,
    copies: Vec<Copy>,
    want: u32,
    next_index: u64,
    http: Client<HttpConnector, Empty<Bytes>>,
    written: Option<Vec<serde_json::Value>>,
    /// Live sticky sessions per endpoint address, as the balancer last said.
    sessions: crate::scrape::Sessions,
}

/// Picks a free loopback port.
fn free_port(host: &str) -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind((host, 0))?;
    Ok(l.local_addr()?.port())
}

impl LocalTarget {
    /// A target with no copies yet.
    pub fn new(settings: LocalSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        Self {
            settings,
            copies: Vec::new(),
            want: 0,
            next_index: 0,
            http: Client::builder(TokioExecutor::new()).build(connector),
            written: None,
            sessions: crate::scrape::Sessions::new(),
        }
    }

    /// Records the live sticky sessions per endpoint the balancer reported,
    /// so a scale-down stops the copies holding the fewest.
    pub fn note_sessions(&mut self, sessions: crate::scrape::Sessions) {
        self.sessions = sessions;
    }

    /// Replicas as the controller sees them: copies asked for, and ready.
    pub fn replicas(&self) -> Replicas {
        Replicas {
            current: self.want,
            ready: self
                .copies
                .iter()
                .filter(|c| c.state == State::Ready)
                .count() as u32,
        }
    }

    /// Whether a copy is starting or draining (worth polling soon).
    pub fn changing(&self) -> bool {
        self.copies.iter().any(|c| c.state != State::Ready)
    }

    /// The ports of the ready copies, in start order.
    pub fn ready_ports(&self) -> Vec<u16> {
        self.copies
            .iter()
            .filter(|c| c.state == State::Ready)
            .map(|c| c.port)
            .collect()
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let port = free_port(&self.settings.host)?;
        let index = self.next_index;
        self.next_index += 1;
        let args: Vec<String> = self
            .settings
            .command
            .iter()
            .map(|a| {
                a.replace("{port}", &port.to_string())
                    .replace("{index}", &index.to_string())
            })
            .collect();
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| std::io::Error::other("no command to run"))?;
        let child = Command::new(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| std::io::Error::other(format!("starting `{program}`: {e}")))?;
        tracing::info!(index, port, "started a copy");
        self.copies.push(Copy {
            index,
            port,
            child,
            state: State::Starting,
        });
        Ok(())
    }

    /// Sets the number of copies. New copies start at once and join the
    /// file when ready; surplus copies (not-ready first, then newest) leave
    /// the file now and stop after the drain time.
    pub async fn scale_to(&mut self, n: u32) -> std::io::Result<()> {
        self.want = n;
        self.converge().await
    }

    async fn converge(&mut self) -> std::io::Result<()> {
        let live = |c: &Copy| !matches!(c.state, State::Draining { .. });
        let mut live_count = self.copies.iter().filter(|c| live(c)).count() as u32;
        while live_count < self.want {
            self.spawn()?;
            live_count += 1;
        }
        while live_count > self.want {
            // Not-ready copies go first, then those holding the fewest live
            // sessions (their learners would be logged out), then the newest.
            let host = &self.settings.host;
            let sessions = &self.sessions;
            let held = |c: &Copy| {
                sessions
                    .get(&format!("{host}:{}", c.port))
                    .map_or(0, |n| n.round() as u64)
            };
            let victim = self
                .copies
                .iter_mut()
                .filter(|c| live(c))
                .min_by_key(|c| {
                    (
                        c.state != State::Starting,
                        held(c),
                        std::cmp::Reverse(c.index),
                    )
                })
                .expect("a live copy exists");
            victim.state = State::Draining {
                until: Instant::now() + self.settings.drain,
            };
            tracing::info!(
                index = victim.index,
                port = victim.port,
                sessions = held(victim),
                "draining a copy"
            );
            live_count -= 1;
        }
        self.write_endpoints().await
    }

    /// Checks readiness of starting copies, replaces copies that exited,
    /// stops drained ones, and rewrites the endpoints file when it changed.
    pub async fn poll(&mut self) -> std::io::Result<()> {
        let now = Instant::now();
        let mut i = 0;
        while i < self.copies.len() {
            let exited = self.copies[i].child.try_wait()?.is_some();
            match self.copies[i].state {
                State::Draining { until } if exited || now >= until => {
                    let mut copy = self.copies.remove(i);
                    stop(&mut copy.child).await;
                    tracing::info!(
                        index = copy.index,
                        port = copy.port,
                        "stopped a drained copy"
                    );
                    continue;
                }
                _ if exited => {
                    let copy = self.copies.remove(i);
                    tracing::warn!(
                        index = copy.index,
                        port = copy.port,
                        "a copy exited; replacing it"
                    );
                    continue;
                }
                State::Starting => {
                    let url = format!(
                        "http://{}:{}{}",
                        self.settings.host, self.copies[i].port, self.settings.ready_path
                    );
                    if self.check(&url).await {
                        self.copies[i].state = State::Ready;
                        tracing::info!(
                            index = self.copies[i].index,
                            port = self.copies[i].port,
                            "a copy is ready"
                        );
                    }
                }
                _ => {}
            }
            i += 1;
        }
        self.converge().await
    }

    async fn check(&self, url: &str) -> bool {
        let Ok(uri) = url.parse::<http::Uri>() else {
            return false;
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), self.http.get(uri)).await,
            Ok(Ok(r)) if r.status().is_success()
        )
    }

    /// Writes the ready copies, and the starting ones marked `starting`, to
    /// the endpoints file through a temporary file and a rename, so the
    /// balancer never reads half a file. Starting copies take no traffic;
    /// the balancer may hold new sticky sessions for them
    /// (`stickySessions.sessionPlacement`).
    async fn write_endpoints(&mut self) -> std::io::Result<()> {
        let list: Vec<serde_json::Value> = self
            .copies
            .iter()
            .filter_map(|c| {
                let address = format!("{}:{}", self.settings.host, c.port);
                match c.state {
                    State::Ready => Some(serde_json::Value::String(address)),
                    State::Starting => {
                        Some(serde_json::json!({"address": address, "starting": true}))
                    }
                    State::Draining { .. } => None,
                }
            })
            .collect();
        if self.written.as_ref() == Some(&list) {
            return Ok(());
        }
        write_atomically(
            &self.settings.endpoints_file,
            &serde_json::to_string_pretty(&list).expect("values serialize"),
        )?;
        self.written = Some(list);
        Ok(())
    }

    /// Stops every copy (at exit): out of the file first, then TERM.
    pub async fn shutdown(&mut self) {
        self.want = 0;
        for c in &mut self.copies {
            c.state = State::Draining {
                until: Instant::now(),
            };
        }
        let _ = self.write_endpoints().await;
        for c in &mut self.copies {
            stop(&mut c.child).await;
        }
        self.copies.clear();
    }
}

/// Writes `text` to `path` through a temporary file in the same directory.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// TERM, then KILL after 5 s.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// The balancer metrics URLs a local policy reads.
pub fn urls_of(policy: &Policy) -> Result<Vec<String>, String> {
    match &policy.metrics.kind {
        SourceKind::Urls(u) => Ok(u.clone()),
        SourceKind::Prometheus { .. } => Ok(Vec::new()),
        SourceKind::Pods { .. } => Err(
            "local mode cannot find pods; set spec.metricsSource.urls to the balancer's admin /metrics URL"
                .to_string(),
        ),
    }
}

/// Called after every local tick with the step and the replicas after it.
pub type OnTick = Arc<dyn Fn(&crate::runner::Step, Replicas) + Send + Sync>;

/// Runs `policy` against local copies until `shutdown`, calling `on_tick`
/// after every tick (for the demo's live line).
pub async fn run(
    policy: Policy,
    settings: LocalSettings,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    on_tick: OnTick,
) -> Result<(), String> {
    let urls = urls_of(&policy)?;
    let key = format!("local/{}", policy.name);
    let dry_run = settings.dry_run;
    // History is kept only for a predictive policy.
    let history_file = policy
        .predictive
        .as_ref()
        .and(settings.history_file.clone());
    metrics.set_dry_run(dry_run);
    metrics.set_leader(true);
    let initial = settings.initial.unwrap_or(policy.min_replicas);
    let mut target = LocalTarget::new(settings);
    target
        .scale_to(initial)
        .await
        .map_err(|e| format!("starting the first copies: {e}"))?;
    let mut runner = Runner::new(policy.clone());
    if let Some(path) = &history_file {
        match load_history(path, runner.demand_history_mut()) {
            Ok(n) => {
                tracing::info!(path = %path.display(), minutes = n, "loaded predictive history")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "no predictive history loaded")
            }
        }
    }
    let mut saved_at = Instant::now();
    let mut reader = Reader::for_policy(&policy);
    let interval = policy.metrics.interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Copies starting or draining are looked at every 100 ms, so a ready
    // copy joins the balancer (and a drained one stops) without waiting for
    // the next decision tick.
    let mut housekeeping = tokio::time::interval(Duration::from_millis(100));
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = housekeeping.tick(), if target.changing() => {
                if let Err(e) = target.poll().await {
                    tracing::error!(error = %e, "managing local copies failed");
                }
                continue;
            }
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let started = std::time::Instant::now();
        if let Err(e) = target.poll().await {
            tracing::error!(error = %e, "managing local copies failed");
        }
        let now = chrono::Utc::now();
        let outcome = reader
            .read(Ok(urls.clone()), policy.metrics.timeout, now)
            .await;
        if !outcome.errors.is_empty() {
            metrics.scrape_errors(&key, outcome.errors.len());
            tracing::warn!(errors = ?outcome.errors, "reading the balancer failed");
        }
        if outcome.reading.is_some() {
            target.note_sessions(outcome.sessions.clone());
        }
        let replicas = target.replicas();
        let step = runner.tick(outcome.reading, replicas, now);
        metrics.tick(
            &key,
            (policy.min_replicas, policy.max_replicas),
            replicas,
            &step,
            started.elapsed().as_secs_f64(),
        );
        if let Some(to) = step.scale_to {
            let reason = &step.decision.reason;
            if dry_run {
                tracing::info!(from = replicas.current, to, %reason, "dry-run: would scale");
            } else {
                tracing::info!(from = replicas.current, to, mode = step.decision.mode.as_str(), %reason, "scaling");
                match target.scale_to(to).await {
                    Ok(()) => {
                        runner.scaled(now, reason);
                        metrics.scaled(&key, replicas.current, to);
                    }
                    Err(e) => tracing::error!(error = %e, "scaling local copies failed"),
                }
            }
        }
        on_tick(&step, target.replicas());
        if let Some(path) = &history_file
            && saved_at.elapsed() >= Duration::from_secs(60)
        {
            saved_at = Instant::now();
            if let Err(e) = save_history(path, runner.demand_history()) {
                tracing::warn!(path = %path.display(), error = %e, "could not save predictive history");
            }
        }
    }
    if let Some(path) = &history_file
        && let Err(e) = save_history(path, runner.demand_history())
    {
        tracing::warn!(path = %path.display(), error = %e, "could not save predictive history");
    }
    target.shutdown().await;
    Ok(())
}

/// Reads a history file (`minute,demand` CSV with an RFC 3339 minute) into
/// `history`; returns the minutes read. A missing file is an empty history.
pub fn load_history(
    path: &Path,
    history: &mut crate::decide::forecast::DemandHistory,
) -> Result<usize, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.to_string()),
    };
    let mut n = 0;
    for (i, line) in text.lines().enumerate().skip(1) {
        let (t, v) = line
            .split_once(',')
            .ok_or_else(|| format!("line {}: expected `minute,demand`", i + 1))?;
        let t =
            chrono::DateTime::parse_from_rfc3339(t).map_err(|e| format!("line {}: {e}", i + 1))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        history.insert_minute(t.with_timezone(&chrono::Utc), v);
        n += 1;
    }
    Ok(n)
}

/// Writes `history` to `path` atomically, as `load_history` reads it.
pub fn save_history(
    path: &Path,
    history: &crate::decide::forecast::DemandHistory,
) -> std::io::Result<()> {
    let mut text = String::from("minute,demand\n");
    for (t, v) in history.averages() {
        text.push_str(&format!(
            "{},{v:.3}\n",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    write_atomically(path, &text)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::decide::forecast::DemandHistory;

    #[test]
    fn history_files_round_trip_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.csv");
        let mut empty = DemandHistory::default();
        assert_eq!(
            load_history(&path, &mut empty),
            Ok(0),
            "a missing file is empty"
        );
        let mut h = DemandHistory::default();
        let t = chrono::Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap();
        for m in 0..5 {
            h.insert_minute(t + chrono::Duration::minutes(m), 10.0 * m as f64);
        }
        save_history(&path, &h).unwrap();
        let mut back = DemandHistory::default();
        assert_eq!(load_history(&path, &mut back), Ok(5));
        assert_eq!(back, h);
        std::fs::write(&path, "minute,demand\n2026-11-30T09:00:00Z,1\nnonsense\n").unwrap();
        let err = load_history(&path, &mut DemandHistory::default()).unwrap_err();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn endpoint_files_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoints.json");
        write_atomically(&path, "[\"127.0.0.1:1\"]").unwrap();
        write_atomically(&path, "[\"127.0.0.1:2\"]").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[\"127.0.0.1:2\"]");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "a temporary file was left behind");
    }
}
