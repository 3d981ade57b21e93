//! The config file as written: serde structs that mirror the YAML exactly.
//!
//! Every struct denies unknown fields so a typo is an error, not a silently
//! ignored key. Values stay as written (durations and sizes are strings) and
//! are checked and converted in [`super::validate`].

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole balancer config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    /// Client-facing listeners.
    pub listeners: Vec<RawListener>,
    /// The admin listener (metrics, health, status).
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    /// Graceful shutdown settings.
    #[serde(default)]
    pub shutdown: Option<RawShutdown>,
    /// Routes, matched in order.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Pools of endpoints by name.
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
    /// Most client connections open at once over all listeners; from the
    /// open-file limit when absent.
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// Networks (CIDR) of proxies in front of the balancer whose
    /// `X-Forwarded-For` is believed when finding the client address.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// One client-facing listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawListener {
    /// A unique name, used in logs and metrics.
    pub name: String,
    /// `ip:port` to bind.
    pub bind: String,
    /// TLS termination; plain HTTP when absent.
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Request limits and timeouts on the client side.
    #[serde(default)]
    pub limits: Option<RawLimits>,
    /// Log one line per request (target `usher::access`).
    #[serde(default)]
    pub access_log: Option<bool>,
}

/// TLS settings of a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTls {
    /// Certificates; the first one is the default when SNI matches none.
    pub certificates: Vec<RawCertificate>,
}

/// One certificate and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCertificate {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: String,
    /// PEM file with the private key.
    pub key_file: String,
    /// SNI names this certificate serves; taken from the certificate when absent.
    #[serde(default)]
    pub server_names: Option<Vec<String>>,
}

/// Client-side limits of a listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawLimits {
    /// Time allowed to receive a request's headers.
    #[serde(default)]
    pub header_read_timeout: Option<String>,
    /// Largest request header block.
    #[serde(default)]
    pub max_header_bytes: Option<RawSize>,
    /// Largest request body.
    #[serde(default)]
    pub max_body_bytes: Option<RawSize>,
    /// Close a connection with no request in progress for this long.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Most connections open at once on this listener.
    #[serde(default)]
    pub max_connections: Option<u64>,
}

/// A byte size: a plain number of bytes or a string such as `64KiB`.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a number of bytes or a size such as 64KiB or 10MiB"
)]
pub enum RawSize {
    /// Bytes as a number.
    Bytes(u64),
    /// A size with a unit suffix.
    Text(String),
}

/// The admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAdmin {
    /// `ip:port` to bind.
    pub bind: String,
    /// Bearer token required on everything but `/healthz` and `/readyz`.
    #[serde(default)]
    pub token: Option<String>,
}

/// Graceful shutdown.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawShutdown {
    /// How long in-flight requests and upgraded connections may take to finish.
    #[serde(default)]
    pub drain_timeout: Option<String>,
    /// Delay between turning not-ready and closing the listeners.
    #[serde(default)]
    pub delay: Option<String>,
}

/// A route: which requests go to which pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRoute {
    /// Host to match (`lms.example.edu` or `*.example.edu`); any host when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix to match; `/` when absent.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The pool that serves matching requests.
    pub pool: String,
    /// Per-client-address token bucket.
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    /// Micro-cache for anonymous GETs.
    #[serde(default)]
    pub cache: Option<RawCache>,
}

/// A per-client rate limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRateLimit {
    /// Sustained requests per second per client address.
    pub requests_per_second: f64,
    /// Requests a client may send at once; `requestsPerSecond` when absent.
    #[serde(default)]
    pub burst: Option<f64>,
}

/// Micro-cache settings of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCache {
    /// Longest time a response is served from the cache.
    pub ttl: String,
    /// Most responses kept.
    #[serde(default)]
    pub max_entries: Option<u64>,
    /// Largest response body kept.
    #[serde(default)]
    pub max_body_bytes: Option<RawSize>,
    /// Cookies that mark a logged-in learner; their requests bypass the cache.
    #[serde(default)]
    pub session_cookies: Option<Vec<String>>,
}

/// A pool of interchangeable endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPool {
    /// `leastConnections` (default) or `powerOfTwoChoices`.
    #[serde(default)]
    pub balance: Option<String>,
    /// Where the endpoints come from.
    pub endpoints: RawEndpoints,
    /// Active HTTP health checks; none when absent.
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    /// Passive outlier detection.
    #[serde(default)]
    pub outlier_detection: Option<RawOutlierDetection>,
    /// Retries of failed idempotent requests.
    #[serde(default)]
    pub retries: Option<RawRetries>,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: Option<RawTimeouts>,
    /// Session affinity.
    #[serde(default)]
    pub sticky_sessions: Option<RawSticky>,
    /// Weight ramp for new and recovered endpoints.
    #[serde(default)]
    pub slow_start: Option<RawSlowStart>,
    /// Requests in flight per endpoint before new ones queue.
    #[serde(default)]
    pub max_in_flight_per_endpoint: Option<u64>,
    /// The surge queue (needs `maxInFlightPerEndpoint`).
    #[serde(default)]
    pub queue: Option<RawQueue>,
    /// Pool used while this one has no healthy endpoint.
    #[serde(default)]
    pub backup_pool: Option<String>,
    /// How long a removed or terminating endpoint keeps its sticky sessions.
    #[serde(default)]
    pub drain_timeout: Option<String>,
}

/// Sticky-session settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSticky {
    /// Name of the affinity cookie the balancer sets.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Lifetime of that cookie.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Derive affinity from this application cookie instead of setting one.
    #[serde(default)]
    pub application_cookie: Option<String>,
    /// Secret that signs endpoint ids; share it between balancer replicas.
    #[serde(default)]
    pub secret: Option<String>,
    /// File holding the secret (e.g. a mounted Kubernetes Secret).
    #[serde(default)]
    pub secret_file: Option<String>,
    /// `local` (default: sessions live on the pod, never moved) or `shared`
    /// (the LMS keeps sessions in a shared store, so one may move).
    #[serde(default)]
    pub mobility: Option<String>,
    /// `shared` mobility: a pod above this many times the pool's average
    /// load gives its sessions away (HAProxy's `hash-balance-factor` / 100).
    #[serde(default)]
    pub balance_factor: Option<f64>,
    /// Where new sessions are born.
    #[serde(default)]
    pub session_placement: Option<RawSessionPlacement>,
}

/// Where new sessions are born.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSessionPlacement {
    /// Longest a new session waits for a starting pod (`0s`: never).
    #[serde(default)]
    pub max_wait: Option<String>,
    /// A session idle this long no longer counts on its pod.
    #[serde(default)]
    pub live_for: Option<String>,
    /// A pod unready this long after it was listed is no longer waited for.
    #[serde(default)]
    pub starting_for: Option<String>,
}

/// Slow-start settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSlowStart {
    /// Length of the ramp.
    pub window: String,
    /// 1.0 is linear; larger ramps faster early.
    #[serde(default)]
    pub aggression: Option<f64>,
    /// Weight floor during the ramp, in percent.
    #[serde(default)]
    pub min_weight_percent: Option<f64>,
}

/// Surge queue settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawQueue {
    /// Most requests waiting.
    pub max_length: u64,
    /// Longest wait before 503.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Serve established sticky sessions before new ones when the queue is
    /// full (default true).
    #[serde(default)]
    pub session_priority: Option<bool>,
}

/// Endpoint sources of a pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEndpoints {
    /// A fixed list.
    #[serde(default, rename = "static")]
    pub static_list: Vec<RawEndpoint>,
    /// A YAML or JSON file of endpoints, re-read on change.
    #[serde(default)]
    pub file: Option<RawFileSource>,
    /// A DNS name resolved every interval.
    #[serde(default)]
    pub dns: Option<RawDnsSource>,
    /// A Kubernetes Service's EndpointSlices.
    #[serde(default)]
    pub kubernetes: Option<RawKubernetesSource>,
}

/// `endpoints.file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFileSource {
    /// The file (relative to the config file).
    pub path: String,
    /// How often it is checked for changes.
    #[serde(default)]
    pub interval: Option<String>,
}

/// `endpoints.dns`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDnsSource {
    /// Name with A/AAAA records.
    pub name: String,
    /// Port of every endpoint.
    pub port: u16,
    /// How often it is resolved.
    #[serde(default)]
    pub interval: Option<String>,
    /// DNS servers (`ip:port`); the system's when absent.
    #[serde(default)]
    pub nameservers: Vec<String>,
}

/// `endpoints.kubernetes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawKubernetesSource {
    /// Service name.
    pub service: String,
    /// Namespace; `default` when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Pod port number, or the Service port's name.
    pub port: RawPort,
}

/// A port number or name.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a port number or a port name")]
pub enum RawPort {
    /// Number.
    Number(u16),
    /// Name.
    Name(String),
}

/// One static endpoint: `host:port`, or an object with a weight.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a `host:port` string or an object {address, weight}"
)]
pub enum RawEndpoint {
    /// `host:port`.
    Address(String),
    /// Address with options.
    Detailed(RawEndpointDetail),
}

/// An endpoint written as an object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEndpointDetail {
    /// `host:port`.
    pub address: String,
    /// Relative weight, 1 to 1000; 100 when absent.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// Active health check settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHealthCheck {
    /// Path requested with GET.
    #[serde(default)]
    pub path: Option<String>,
    /// Time between checks.
    #[serde(default)]
    pub interval: Option<String>,
    /// Time allowed for one check.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Consecutive successes that bring an endpoint up.
    #[serde(default)]
    pub rise: Option<u32>,
    /// Consecutive failures that take an endpoint down.
    #[serde(default)]
    pub fall: Option<u32>,
    /// Expected status: a code (`200`) or a range (`200-399`).
    #[serde(default)]
    pub expect_status: Option<RawStatus>,
    /// Host header sent with checks; the endpoint address when absent.
    #[serde(default)]
    pub host: Option<String>,
}

/// An expected status code or range.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a status code such as 200 or a range such as \"200-399\""
)]
pub enum RawStatus {
    /// One code.
    Code(u16),
    /// `low-high`.
    Range(String),
}

/// Passive outlier detection settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawOutlierDetection {
    /// Turn passive ejection off with `false`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Consecutive 5xx responses or connect failures that eject an endpoint.
    #[serde(default, rename = "consecutive5xx")]
    pub consecutive_5xx: Option<u32>,
    /// First ejection time; multiplied by the number of ejections.
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// Cap on the ejection time.
    #[serde(default)]
    pub max_ejection_time: Option<String>,
    /// Most of the pool that may be ejected at once, in percent (one endpoint always may).
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
    /// Let a passing active health check end an ejection early (default false).
    #[serde(default)]
    pub active_check_ends_ejection: Option<bool>,
}

/// Retry settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRetries {
    /// Retries after the first try (0 turns retries off).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Retries in flight may be at most this percentage of requests in flight.
    #[serde(default)]
    pub budget_percent: Option<u32>,
    /// Retries always allowed in flight, whatever the percentage says.
    #[serde(default)]
    pub min_concurrency: Option<u32>,
}

/// Upstream timeouts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTimeouts {
    /// TCP connect.
    #[serde(default)]
    pub connect: Option<String>,
    /// From sending the request to the response headers.
    #[serde(default)]
    pub response: Option<String>,
    /// How long an idle pooled upstream connection is kept.
    #[serde(default)]
    pub idle: Option<String>,
}
