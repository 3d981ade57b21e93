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
}

/// Endpoint sources of a pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEndpoints {
    /// A fixed list.
    #[serde(default, rename = "static")]
    pub static_list: Vec<RawEndpoint>,
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
