//! A simulated LMS pod (Moodle-like) for tests, demos and benchmarks; the
//! `lms-sim` binary and the peak-hour demo's pods run it.
//!
//! - A worker pool of `--workers` (php-fpm's `pm.max_children`): each request
//!   holds a worker for its service time; more requests queue, up to
//!   `--backlog` (php-fpm's `listen.backlog`), beyond which they get 503.
//! - Service times are drawn from `--distribution` (`fixed`, `exponential`
//!   or `lognormal`) around `--service-time`.
//! - A cold start: `/healthz` fails for `--cold-start`, and for `--warmup`
//!   after that service times are `--warmup-factor` times longer, easing to
//!   normal (an empty opcache).
//! - `/login` sets a `MoodleSession` cookie and `/logout` expires it; `/`,
//!   `/course/view`, `/quiz/attempt` serve pages; `/stats` reports counters
//!   as JSON.
//! - `--pod-local-sessions`: sessions live in this process only, as PHP's
//!   file sessions do on a Moodle pod. Every page starts a session when the
//!   request has none; a session cookie this pod never issued (the learner
//!   was sent to another pod) logs the learner out: a new session is
//!   started, counted as `lost`, and the response says `x-session: lost`
//!   (`new` and `resumed` otherwise).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, SET_COOKIE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// `lms-sim`'s command-line options.
#[derive(Debug, Clone, Parser)]
#[command(about = "A simulated LMS pod with a worker pool, cold start and sessions")]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Shorthand for `--listen 127.0.0.1:PORT`.
    #[arg(long)]
    pub port: Option<u16>,
    /// Name reported in responses.
    #[arg(long, default_value = "lms-sim")]
    pub name: String,
    /// Worker processes (requests served at once).
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Requests allowed to wait for a worker; more get 503.
    #[arg(long, default_value_t = 512)]
    pub backlog: usize,
    /// Mean service time of a page.
    #[arg(long, default_value = "40ms", value_parser = humantime::parse_duration)]
    pub service_time: Duration,
    /// Shape of the service time distribution.
    #[arg(long, value_enum, default_value_t = Distribution::Lognormal)]
    pub distribution: Distribution,
    /// `/healthz` fails this long after start.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub cold_start: Duration,
    /// After the cold start, service times ease from `--warmup-factor` times
    /// longer to normal over this long.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Slow-down at the start of the warm-up.
    #[arg(long, default_value_t = 3.0)]
    pub warmup_factor: f64,
    /// Seed of the service-time draws (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Exit when the process that started this one exits (no orphaned pods
    /// when a demo is killed).
    #[arg(long)]
    pub exit_with_parent: bool,
    /// Keep sessions in this process only (PHP file sessions): a learner
    /// sent to another pod is logged out.
    #[arg(long)]
    pub pod_local_sessions: bool,
}

impl Args {
    /// The address to bind: `--port` wins over `--listen`.
    pub fn bind_addr(&self) -> SocketAddr {
        match self.port {
            Some(port) => SocketAddr::from(([127, 0, 0, 1], port)),
            None => self.listen,
        }
    }
}

/// Service time distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// Always the mean.
    Fixed,
    /// Exponential with the given mean.
    Exponential,
    /// Log-normal with the given mean and σ = 0.5 (a long right tail, like real pages).
    Lognormal,
}

struct Sim {
    args: Args,
    started: Instant,
    workers: Semaphore,
    waiting: AtomicU64,
    busy: AtomicU64,
    max_busy: AtomicU64,
    served: AtomicU64,
    rejected: AtomicU64,
    sessions: AtomicU64,
    /// Sessions lost: a cookie this pod never issued (`--pod-local-sessions`).
    lost: AtomicU64,
    /// Session ids this pod issued (`--pod-local-sessions`).
    local: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Sim {
    /// A new session id (recorded when sessions are pod-local).
    fn new_session(&self) -> String {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}{n:x}", fastrand::u64(..));
        if self.args.pod_local_sessions {
            self.local
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone());
        }
        id
    }

    /// For `--pod-local-sessions`: the session a page continues or starts,
    /// and how (`resumed`, `new`, `lost`).
    fn local_session(&self, path: &str, cookie: Option<&str>) -> (Option<String>, &'static str) {
        if path == "/logout" {
            if let Some(c) = cookie {
                self.local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(c);
            }
            return (None, "ended");
        }
        let known = cookie.is_some_and(|c| {
            self.local
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(c)
        });
        match (cookie, known) {
            (Some(_), true) if path != "/login" => (None, "resumed"),
            (Some(old), true) => {
                // A login regenerates the id (as PHP does); the old one goes.
                self.local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(old);
                (Some(self.new_session()), "new")
            }
            (Some(_), false) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                (Some(self.new_session()), "lost")
            }
            _ => (Some(self.new_session()), "new"),
        }
    }
    fn warm(&self) -> bool {
        self.started.elapsed() >= self.args.cold_start
    }

    /// The service time of the next page.
    fn service_time(&self) -> Duration {
        let mean = self.args.service_time.as_secs_f64();
        let base = match self.args.distribution {
            Distribution::Fixed => mean,
            Distribution::Exponential => -mean * (1.0 - fastrand::f64()).ln(),
            Distribution::Lognormal => {
                // Box–Muller normal, then exp; μ chosen so the mean is `mean`.
                let sigma = 0.5;
                let z = (-2.0 * (1.0 - fastrand::f64()).ln()).sqrt()
                    * (std::f64::consts::TAU * fastrand::f64()).cos();
                (mean.max(1e-9).ln() - sigma * sigma / 2.0 + sigma * z).exp()
            }
        };
        let since_warm = self
            .started
            .elapsed()
            .saturating_sub(self.args.cold_start)
            .as_secs_f64();
        let warmup = self.args.warmup.as_secs_f64();
        let factor = if warmup > 0.0 && since_warm < warmup {
            1.0 + (self.args.warmup_factor - 1.0).max(0.0) * (1.0 - since_warm / warmup)
        } else {
            1.0
        };
        Duration::from_secs_f64((base * factor).min(60.0))
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.args.name,
            "warm": self.warm(),
            "workers": self.args.workers,
            "busy": self.busy.load(Ordering::Relaxed),
            "maxBusy": self.max_busy.load(Ordering::Relaxed),
            "waiting": self.waiting.load(Ordering::Relaxed),
            "served": self.served.load(Ordering::Relaxed),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "sessions": self.sessions.load(Ordering::Relaxed),
            "lost": self.lost.load(Ordering::Relaxed),
        })
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/healthz" => {
                return if self.warm() {
                    text(StatusCode::OK, "ok\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                };
            }
            "/stats" => {
                let mut r = text(StatusCode::OK, &self.stats().to_string());
                r.headers_mut()
                    .insert(CONTENT_TYPE, "application/json".parse().expect("static"));
                return r;
            }
            "/" | "/login" | "/logout" | "/course/view" | "/course/view.php" | "/quiz/attempt"
            | "/quiz/attempt.php" => {}
            _ => return text(StatusCode::NOT_FOUND, "no such page\n"),
        }
        let cookie =
            usher_balancer::sticky::find_cookie(req.headers(), "MoodleSession").map(str::to_string);
        // A posted form (quiz answers) is read before a worker takes it, as
        // the web server does.
        if req.into_body().collect().await.is_err() {
            return text(StatusCode::BAD_REQUEST, "incomplete body\n");
        }
        // Wait for a worker, as php-fpm's listen queue does.
        if self.waiting.load(Ordering::Relaxed) as usize >= self.args.backlog {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return text(StatusCode::SERVICE_UNAVAILABLE, "backlog full\n");
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = self.workers.acquire().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let Ok(_permit) = permit else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        };
        let busy = self.busy.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_busy.fetch_max(busy, Ordering::Relaxed);
        tokio::time::sleep(self.service_time()).await;
        self.busy.fetch_sub(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        let mut resp = text(StatusCode::OK, &format!("{} {path}\n", self.args.name));
        let logout = "MoodleSession=deleted; Path=/; Max-Age=0; HttpOnly".to_string();
        let set = if self.args.pod_local_sessions {
            let (id, how) = self.local_session(&path, cookie.as_deref());
            resp.headers_mut()
                .insert("x-session", HeaderValue::from_static(how));
            match (id, how) {
                (Some(id), _) => Some(format!("MoodleSession={id}; Path=/; HttpOnly")),
                (None, "ended") => Some(logout),
                (None, _) => None,
            }
        } else {
            match path.as_str() {
                "/login" => Some(format!(
                    "MoodleSession={}; Path=/; HttpOnly",
                    self.new_session()
                )),
                "/logout" => Some(logout),
                _ => None,
            }
        };
        if let Some(cookie) = set {
            resp.headers_mut()
                .insert(SET_COOKIE, cookie.parse().expect("hex cookie"));
        }
        resp
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

/// Runs a pod on a current-thread runtime until it fails (or its parent
/// exits, with `--exit-with-parent`).
pub fn run(args: Args) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

/// Serves `args` on the current runtime. Prints
/// `lms-sim NAME listening on ADDR` once bound (tests read the address).
pub async fn serve(args: Args) -> std::io::Result<()> {
    if let Some(seed) = args.seed {
        fastrand::seed(seed);
    }
    let listener = TcpListener::bind(args.bind_addr()).await?;
    if args.exit_with_parent {
        tokio::spawn(exit_with_parent());
    }
    let sim = Arc::new(Sim {
        workers: Semaphore::new(args.workers.max(1)),
        args,
        started: Instant::now(),
        waiting: AtomicU64::new(0),
        busy: AtomicU64::new(0),
        max_busy: AtomicU64::new(0),
        served: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        sessions: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        local: std::sync::Mutex::default(),
    });
    // Tests and the local scaler read the address from this line.
    println!(
        "lms-sim {} listening on {}",
        sim.args.name,
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let sim = sim.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let sim = sim.clone();
                async move { Ok::<_, Infallible>(sim.handle(req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Exits the process once its parent is gone (it was re-parented).
async fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(0);
        }
    }
}
