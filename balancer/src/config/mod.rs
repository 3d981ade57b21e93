//! Balancer configuration: the YAML file, validated into typed settings.
//!
//! [`load`] reads a file, parses it into [`raw::RawConfig`] (unknown keys are
//! errors), and validates it into a [`Config`]. Every failure is a
//! [`ConfigError`] naming the file, the field path and the fix.

pub mod raw;
pub mod units;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;

/// A validated balancer configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    /// Client-facing listeners.
    pub listeners: Vec<Listener>,
    /// The admin listener, if any.
    pub admin: Option<Admin>,
    /// Graceful shutdown settings.
    pub shutdown: Shutdown,
    /// Routes in match order.
    pub routes: Vec<Route>,
    /// Pools by name.
    pub pools: BTreeMap<String, Pool>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Most client connections at once over all listeners; derived from
    /// the open-file limit when `None`.
    pub max_connections: Option<usize>,
}

/// A client-facing listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Unique name.
    pub name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// TLS termination, if any.
    pub tls: Option<Tls>,
    /// Client-side limits.
    pub limits: Limits,
    /// Log one line per request.
    pub access_log: bool,
}

/// TLS termination settings with their loaded certificates.
#[derive(Debug, Clone)]
pub struct Tls {
    /// Certificates; the first is the default.
    pub certificates: Vec<Certificate>,
}

/// A certificate loaded from PEM files.
#[derive(Clone)]
pub struct Certificate {
    /// Certificate chain file.
    pub cert_file: PathBuf,
    /// Private key file.
    pub key_file: PathBuf,
    /// SNI names served (may start with `*.`), lower case.
    pub server_names: Vec<String>,
    /// The parsed chain and signing key.
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("server_names", &self.server_names)
            .finish_non_exhaustive()
    }
}

/// Client-side limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time allowed for a request's headers to arrive (slowloris guard).
    pub header_read_timeout: Duration,
    /// Largest request header block; larger ones get 431.
    pub max_header_bytes: usize,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: u64,
    /// A connection with no request in progress for this long is closed
    /// (HTTP/1 keep-alive and HTTP/2 alike).
    pub idle_timeout: Duration,
    /// Most connections open at once on the listener.
    pub max_connections: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_body_bytes: 256 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Address to bind.
    pub bind: SocketAddr,
    /// Bearer token for everything but `/healthz` and `/readyz`.
    pub token: Option<String>,
}

/// Graceful shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shutdown {
    /// Time in-flight requests and upgraded connections get to finish.
    pub drain_timeout: Duration,
    /// Time between turning not-ready and closing the listeners.
    pub delay: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(30),
            delay: Duration::ZERO,
        }
    }
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Host match; any host when `None`.
    pub host: Option<HostMatch>,
    /// Path prefix.
    pub path_prefix: String,
    /// Target pool.
    pub pool: String,
    /// Per-client rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Micro-cache.
    pub cache: Option<CacheSettings>,
}

/// A per-client-address token bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Tokens per second.
    pub requests_per_second: f64,
    /// Bucket size.
    pub burst: f64,
}

impl Eq for RateLimit {}

/// Micro-cache settings of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Longest time an entry is served.
    pub ttl: Duration,
    /// Most entries.
    pub max_entries: u64,
    /// Largest body kept.
    pub max_body_bytes: u64,
    /// Cookies that mark a session; requests carrying one bypass the cache.
    pub session_cookies: Vec<String>,
}

/// How a route matches the request host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Exactly this host (lower case, no port).
    Exact(String),
    /// `*.example.edu`: any host ending in `.example.edu` (stored with the dot).
    Suffix(String),
}

impl HostMatch {
    /// Whether `host` (lower case, port removed) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// The endpoint-selection algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Weighted least in-flight requests over the whole pool.
    #[default]
    LeastConnections,
    /// Weighted least in-flight requests between two random endpoints.
    PowerOfTwoChoices,
}

/// A pool of endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Pool name.
    pub name: String,
    /// Selection algorithm.
    pub balance: Balance,
    /// Static endpoints.
    pub endpoints: Vec<EndpointSpec>,
    /// Active health checks, if any.
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection.
    pub outlier_detection: OutlierDetection,
    /// Retry policy.
    pub retries: Retries,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Endpoint sources besides the static list.
    pub discovery: Discovery,
    /// Session affinity.
    pub sticky: Option<Sticky>,
    /// Weight ramp for new and recovered endpoints.
    pub slow_start: Option<crate::balance::slow_start::SlowStart>,
    /// Requests in flight per endpoint before new ones queue (or get 503).
    pub max_in_flight_per_endpoint: Option<u64>,
    /// The surge queue.
    pub queue: Option<QueueSettings>,
    /// Pool used while this one has no healthy endpoint.
    pub backup_pool: Option<String>,
    /// How long a removed or terminating endpoint keeps its sticky sessions.
    pub drain_timeout: Duration,
}

/// Dynamic endpoint sources.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Discovery {
    /// `endpoints.file`.
    pub file: Option<FileSource>,
    /// `endpoints.dns`.
    pub dns: Option<DnsSource>,
    /// `endpoints.kubernetes`.
    pub kubernetes: Option<KubernetesSource>,
}

/// `endpoints.file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSource {
    /// The file.
    pub path: PathBuf,
    /// Poll interval.
    pub interval: Duration,
}

/// `endpoints.dns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSource {
    /// Name with A/AAAA records.
    pub name: String,
    /// Port of every endpoint.
    pub port: u16,
    /// Resolve interval.
    pub interval: Duration,
    /// DNS servers; the system's when empty.
    pub nameservers: Vec<SocketAddr>,
}

/// `endpoints.kubernetes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSource {
    /// Service name.
    pub service: String,
    /// Namespace.
    pub namespace: String,
    /// Port.
    pub port: KubernetesPort,
}

/// A pod port number, or the name of a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubernetesPort {
    /// Pod port number.
    Number(u16),
    /// Service port name.
    Name(String),
}

/// Sticky sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct Sticky {
    /// The affinity cookie's name.
    pub cookie: String,
    /// Its lifetime.
    pub ttl: Duration,
    /// Affinity from this application cookie instead of our own.
    pub application_cookie: Option<String>,
    /// HMAC secret for endpoint ids; random per process when `None`.
    pub secret: Option<String>,
    /// Whether an established session may move to another pod.
    pub mobility: Mobility,
    /// `shared` mobility: the bounded-load factor (> 1).
    pub balance_factor: f64,
    /// Where new sessions are born.
    pub placement: SessionPlacement,
}

// Settings come from validated config: `balance_factor` is never NaN.
impl Eq for Sticky {}

/// Whether an established session may move between pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mobility {
    /// Sessions live on their pod (PHP file sessions): never moved while
    /// the pod serves.
    #[default]
    Local,
    /// Sessions live in a shared store (Redis, database): a session on a pod
    /// above `balanceFactor` times the average load moves to a lighter one.
    Shared,
}

/// Where new sessions are born.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPlacement {
    /// Longest a new session waits for a starting pod while every ready pod
    /// holds its share; zero never waits.
    pub max_wait: Duration,
    /// A session idle this long no longer counts on its pod.
    pub live_for: Duration,
    /// A pod still unready this long after it was listed (crash-looping,
    /// stuck) no longer counts as starting.
    pub starting_for: Duration,
}

impl Default for SessionPlacement {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(3),
            live_for: Duration::from_secs(10 * 60),
            starting_for: Duration::from_secs(2 * 60),
        }
    }
}

/// Surge queue settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Most requests waiting.
    pub max_length: usize,
    /// Longest wait.
    pub timeout: Duration,
    /// Established sticky sessions go first, and displace new sessions
    /// from a full queue.
    pub session_priority: bool,
}

/// An endpoint as configured or discovered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    /// `host:port`.
    pub address: String,
    /// Relative weight (1 to 1000).
    pub weight: u32,
    /// Terminating: takes no new sessions, keeps its sticky ones.
    pub draining: bool,
    /// Listed but not ready yet (a pod starting): takes no traffic, and
    /// counts as capacity coming for session placement.
    pub starting: bool,
}

/// The default endpoint weight.
pub const DEFAULT_WEIGHT: u32 = 100;

/// Active health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path requested with GET.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// Consecutive successes to go up.
    pub rise: u32,
    /// Consecutive failures to go down.
    pub fall: u32,
    /// Status codes that count as success.
    pub expect_status: RangeInclusive<u16>,
    /// Host header for checks; the endpoint address when `None`.
    pub host: Option<String>,
}

/// Passive outlier detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Whether it is on.
    pub enabled: bool,
    /// Consecutive failures (5xx, connect errors, timeouts) that eject.
    pub consecutive_5xx: u32,
    /// First ejection time, multiplied by the number of ejections.
    pub base_ejection_time: Duration,
    /// Cap on the ejection time.
    pub max_ejection_time: Duration,
    /// Most of the pool ejected at once, in percent; one endpoint always may be.
    pub max_ejection_percent: u32,
    /// Whether a passing active check ends an ejection early. Off by
    /// default: a pod can pass `/healthz` while its pages fail.
    pub active_check_ends_ejection: bool,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_5xx: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            active_check_ends_ejection: false,
        }
    }
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retries {
    /// Retries after the first try.
    pub attempts: u32,
    /// Retries in flight as a percentage of requests in flight.
    pub budget_percent: u32,
    /// Retries always allowed in flight.
    pub min_concurrency: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: 2,
            budget_percent: 20,
            min_concurrency: 3,
        }
    }
}

/// Upstream timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// From sending the request to receiving the response headers.
    pub response: Duration,
    /// Idle pooled connections are closed after this (keep it below the backends' keep-alive).
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(60),
            idle: Duration::from_secs(4),
        }
    }
}

/// A config error: which file, which field, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// Field path such as `pools.moodle.healthCheck.interval`; empty for the whole file.
    pub field: String,
    /// What is wrong, with a fix where one is known.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(
                f,
                "{}: field `{}`: {}",
                self.file.display(),
                self.field,
                self.problem
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// A validation failure before the file name is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path.
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl FieldError {
    /// A new error at `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn in_file(self, file: &Path) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            field: self.field,
            problem: self.problem,
        }
    }
}

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        field: String::new(),
        problem: format!("cannot read the file: {e}"),
    })?;
    from_str(&text, path)
}

/// Parses and validates config text; `path` names the file in errors and
/// anchors relative certificate paths.
pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw = parse_raw(text).map_err(|e| e.in_file(path))?;
    let base = path.parent().unwrap_or(Path::new("."));
    validate::config(raw, base, path).map_err(|e| e.in_file(path))
}

fn parse_raw(text: &str) -> Result<raw::RawConfig, FieldError> {
    let mut field = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            field = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let message = first_line(&e.to_string());
        // serde-saphyr usually starts its message with the position already.
        let location = e
            .location()
            .filter(|_| !message.contains("line "))
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        let field = if field == "." { String::new() } else { field };
        FieldError::new(field, format!("{message}{location}"))
    })
}

/// Checks a `host:port` endpoint address.
pub fn check_host_port(text: &str) -> Result<(), String> {
    validate::host_port(text, "").map_err(|e| e.problem)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}
