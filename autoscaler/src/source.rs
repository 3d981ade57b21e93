//! Reading the balancers: scrape every replica's `/metrics` concurrently
//! and sum one pool's demand, or ask a Prometheus server. Rates and latency
//! quantiles come from counter and histogram increases per replica, so a
//! replica joining or leaving does not read as a burst.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::scrape::{self, Buckets, PoolDemand, RateTracker};

/// One tick's view of a pool across its balancer replicas.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reading {
    /// Requests in flight to the pool, summed.
    pub in_flight: f64,
    /// Requests in the pool's surge queues, summed.
    pub queued: f64,
    /// Responses per second, summed (`None` until two readings exist).
    pub requests_per_second: Option<f64>,
    /// 95th percentile upstream latency since the previous reading.
    pub p95: Option<Duration>,
    /// Replicas that answered.
    pub answered: usize,
    /// Replicas asked.
    pub asked: usize,
}

impl Reading {
    /// Whether every replica answered; an incomplete reading may raise the
    /// replicas but never lowers them.
    pub fn complete(&self) -> bool {
        self.answered == self.asked && self.asked > 0
    }
}

/// Why a reading failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// There is nothing to scrape (no ready balancer pods).
    #[error("no balancer replica to read: {0}")]
    NoReplicas(String),
    /// Every replica failed; the first error.
    #[error("no balancer replica answered: {0}")]
    AllFailed(String),
    /// The Prometheus server failed or answered something unexpected.
    #[error("prometheus: {0}")]
    Prometheus(String),
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A plain-HTTP client for scraping.
fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// GETs `url` within `timeout` and returns the body as text.
async fn get_text(client: &HttpClient, url: &str, timeout: Duration) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let fetch = async {
        let response = client.get(uri).await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: reading the body: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{url}: HTTP {status}"));
        }
        String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: the body is not UTF-8"))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

/// Per-replica memory for rates and latency increases.
#[derive(Debug, Default)]
struct ReplicaState {
    rate: RateTracker,
    buckets: Option<Buckets>,
    seen: bool,
}

/// Scrapes balancer replicas for one pool and keeps the per-replica state
/// that turns counters into rates.
#[derive(Debug)]
pub struct Scraper {
    client: HttpClient,
    pool: String,
    replicas: HashMap<String, ReplicaState>,
    /// Live sessions per endpoint at the last read, summed over replicas.
    sessions: scrape::Sessions,
}

impl Scraper {
    /// A scraper for `pool`.
    pub fn new(pool: &str) -> Self {
        Self {
            client: http_client(),
            pool: pool.to_string(),
            replicas: HashMap::new(),
            sessions: scrape::Sessions::new(),
        }
    }

    /// Scrapes `urls` concurrently and sums what answered. Per-replica
    /// errors come back beside the reading so they can be counted.
    pub async fn read(
        &mut self,
        urls: &[String],
        timeout: Duration,
        now: DateTime<Utc>,
    ) -> (Result<Reading, SourceError>, Vec<String>) {
        if urls.is_empty() {
            return (
                Err(SourceError::NoReplicas("no URL to scrape".to_string())),
                Vec::new(),
            );
        }
        let pool = self.pool.clone();
        let fetched = join_all(urls.iter().map(|url| {
            let client = self.client.clone();
            let pool = pool.clone();
            async move {
                let text = get_text(&client, url, timeout).await?;
                scrape::read_pool(&text, &pool).map_err(|e| format!("{url}: {e}"))
            }
        }))
        .await;
        let mut reading = Reading {
            asked: urls.len(),
            ..Reading::default()
        };
        let mut errors = Vec::new();
        let mut rps = Some(0.0);
        let mut latency: Option<Buckets> = None;
        for state in self.replicas.values_mut() {
            state.seen = false;
        }
        self.sessions.clear();
        for (url, result) in urls.iter().zip(fetched) {
            let (demand, buckets, sessions): (PoolDemand, Buckets, scrape::Sessions) = match result
            {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            reading.answered += 1;
            for (endpoint, n) in sessions {
                *self.sessions.entry(endpoint).or_default() += n;
            }
            reading.in_flight += demand.in_flight;
            reading.queued += demand.queued;
            let state = self.replicas.entry(url.clone()).or_default();
            state.seen = true;
            // A replica without a rate yet (new, or restarted) makes the
            // total unknown rather than low.
            rps = match (rps, state.rate.observe(now, demand.responses_total)) {
                (Some(total), Some(r)) => Some(total + r),
                _ => None,
            };
            if let Some(before) = state.buckets.replace(buckets.clone())
                && let Some(increase) = scrape::bucket_increase(&before, &buckets)
            {
                scrape::add_buckets(latency.get_or_insert_with(Vec::new), &increase);
            }
        }
        self.replicas.retain(|_, s| s.seen);
        if reading.answered == 0 {
            let first = errors.first().cloned().unwrap_or_default();
            return (Err(SourceError::AllFailed(first)), errors);
        }
        reading.requests_per_second = rps;
        reading.p95 = latency
            .map(|b| Duration::from_secs_f64(scrape::quantile(0.95, &b).unwrap_or(0.0).max(0.0)));
        (Ok(reading), errors)
    }
}

/// Reads a pool's demand from a Prometheus server's HTTP API.
#[derive(Debug, Clone)]
pub struct PrometheusSource {
    client: HttpClient,
    base: String,
    selector: String,
}

impl PrometheusSource {
    /// A source querying `base` (e.g. `http://prometheus:9090`) for `pool`,
    /// adding `matchers` (e.g. `namespace="lms"`) to every selector.
    pub fn new(base: &str, pool: &str, matchers: Option<&str>) -> Self {
        Self {
            client: http_client(),
            base: base.trim_end_matches('/').to_string(),
            selector: pool_selector(pool, matchers),
        }
    }

    /// The PromQL queries, in the order of [`Reading`]'s fields.
    pub fn queries(&self) -> [String; 4] {
        let s = &self.selector;
        [
            format!("sum(usher_balancer_pool_in_flight_requests{{{s}}})"),
            format!("sum(usher_balancer_pool_queue_depth{{{s}}})"),
            format!("sum(rate(usher_balancer_pool_responses_total{{{s}}}[1m]))"),
            format!(
                "histogram_quantile(0.95, sum by (le) (rate(usher_balancer_upstream_response_duration_seconds_bucket{{{s}}}[1m])))"
            ),
        ]
    }

    async fn scalar(&self, query: &str, timeout: Duration) -> Result<Option<f64>, SourceError> {
        let url = format!("{}/api/v1/query?query={}", self.base, percent_encode(query));
        let text = get_text(&self.client, &url, timeout)
            .await
            .map_err(SourceError::Prometheus)?;
        parse_instant_scalar(&text).map_err(SourceError::Prometheus)
    }

    /// Asks the four queries. In-flight must be present (the pool exists);
    /// the others may be empty.
    pub async fn read(&self, timeout: Duration) -> Result<Reading, SourceError> {
        let [in_flight, queued, rate, p95] = self.queries();
        let (in_flight, queued, rate, p95) = tokio::try_join!(
            self.scalar(&in_flight, timeout),
            self.scalar(&queued, timeout),
            self.scalar(&rate, timeout),
            self.scalar(&p95, timeout),
        )?;
        let in_flight = in_flight.ok_or_else(|| {
            SourceError::Prometheus(format!(
                "no series usher_balancer_pool_in_flight_requests{{{}}}",
                self.selector
            ))
        })?;
        Ok(Reading {
            in_flight,
            queued: queued.unwrap_or(0.0),
            requests_per_second: rate,
            p95: p95
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(Duration::from_secs_f64),
            answered: 1,
            asked: 1,
        })
    }
}

/// A policy's metrics reader: direct scrapes or Prometheus.
#[derive(Debug)]
pub enum Reader {
    /// Scrape balancer replicas.
    Scrape(Scraper),
    /// Ask Prometheus.
    Prometheus(PrometheusSource),
}

/// What one read produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOutcome {
    /// The reading, or `None` when it failed.
    pub reading: Option<Reading>,
    /// Per-replica or query errors, for the scrape-error metric and logs.
    pub errors: Vec<String>,
    /// Live sticky sessions per endpoint address, summed over the replicas
    /// that answered (empty from Prometheus, or for a pool without them).
    pub sessions: scrape::Sessions,
}

impl Reader {
    /// The reader a policy's `metricsSource` asks for.
    pub fn for_policy(policy: &crate::policy::Policy) -> Self {
        match &policy.metrics.kind {
            crate::policy::SourceKind::Prometheus { url, matchers } => Self::Prometheus(
                PrometheusSource::new(url, &policy.pool, matchers.as_deref()),
            ),
            _ => Self::Scrape(Scraper::new(&policy.pool)),
        }
    }

    /// Reads once. `urls` are the balancer replicas to scrape (ignored by
    /// Prometheus); `Err` says why there are none.
    pub async fn read(
        &mut self,
        urls: Result<Vec<String>, String>,
        timeout: Duration,
        now: DateTime<Utc>,
    ) -> ReadOutcome {
        match self {
            Self::Prometheus(p) => match p.read(timeout).await {
                Ok(r) => ReadOutcome {
                    reading: Some(r),
                    errors: Vec::new(),
                    sessions: scrape::Sessions::new(),
                },
                Err(e) => ReadOutcome {
                    reading: None,
                    errors: vec![e.to_string()],
                    sessions: scrape::Sessions::new(),
                },
            },
            Self::Scrape(s) => {
                let urls = match urls {
                    Ok(u) => u,
                    Err(e) => {
                        return ReadOutcome {
                            reading: None,
                            errors: vec![SourceError::NoReplicas(e).to_string()],
                            sessions: scrape::Sessions::new(),
                        };
                    }
                };
                let (result, mut errors) = s.read(&urls, timeout, now).await;
                let sessions = s.sessions.clone();
                match result {
                    Ok(r) => ReadOutcome {
                        reading: Some(r),
                        errors,
                        sessions,
                    },
                    Err(e) => {
                        if errors.is_empty() {
                            errors.push(e.to_string());
                        }
                        ReadOutcome {
                            reading: None,
                            errors,
                            sessions,
                        }
                    }
                }
            }
        }
    }
}

/// The label matchers of `pool`'s series: `pool="…"` (escaped), then
/// `matchers` as given.
fn pool_selector(pool: &str, matchers: Option<&str>) -> String {
    let mut s = format!(
        "pool=\"{}\"",
        pool.replace('\\', "\\\\").replace('"', "\\\"")
    );
    if let Some(m) = matchers {
        s.push(',');
        s.push_str(m);
    }
    s
}

/// The PromQL for a policy's demand in its target's unit (`None` for a
/// latency target), as predictive history.
pub fn demand_query(policy: &crate::policy::Policy, matchers: Option<&str>) -> Option<String> {
    let s = pool_selector(&policy.pool, matchers);
    match policy.target {
        crate::policy::Target::InFlightPerPod(_) => Some(format!(
            "sum(usher_balancer_pool_in_flight_requests{{{s}}}) + (sum(usher_balancer_pool_queue_depth{{{s}}}) or vector(0))"
        )),
        crate::policy::Target::RequestsPerSecondPerPod(_) => Some(format!(
            "sum(rate(usher_balancer_pool_responses_total{{{s}}}[1m]))"
        )),
        crate::policy::Target::LatencyP95(_) => None,
    }
}

/// Reads `query` over `[start, end]` at one point a minute from Prometheus
/// (`/api/v1/query_range`), a week per request (Prometheus caps a range at
/// 11,000 points).
pub async fn query_range_minutes(
    base: &str,
    query: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    timeout: Duration,
) -> Result<Vec<(DateTime<Utc>, f64)>, String> {
    let client = http_client();
    let mut out = Vec::new();
    let mut from = start;
    while from < end {
        let to = (from + chrono::Duration::days(7)).min(end);
        let url = format!(
            "{}/api/v1/query_range?query={}&start={}&end={}&step=60",
            base.trim_end_matches('/'),
            percent_encode(query),
            from.timestamp(),
            to.timestamp()
        );
        let text = get_text(&client, &url, timeout).await?;
        out.extend(parse_range(&text)?);
        from = to + chrono::Duration::seconds(60);
    }
    Ok(out)
}

/// Reads the first series of a range-vector answer.
pub fn parse_range(text: &str) -> Result<Vec<(DateTime<Utc>, f64)>, String> {
    let result = query_result(text)?;
    let Some(series) = result.first() else {
        return Ok(Vec::new());
    };
    let values = series["values"]
        .as_array()
        .ok_or("a series without values")?;
    Ok(values
        .iter()
        .filter_map(|p| {
            let t = p[0].as_f64()?;
            let v: f64 = p[1].as_str()?.parse().ok()?;
            let at = DateTime::from_timestamp_millis((t * 1000.0) as i64)?;
            v.is_finite().then_some((at, v))
        })
        .collect())
}

/// Percent-encodes a query parameter value.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `data.result` list of a successful Prometheus API answer.
fn query_result(text: &str) -> Result<Vec<serde_json::Value>, String> {
    let mut v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "query failed: {}",
            v["error"].as_str().unwrap_or("no error message")
        ));
    }
    match v["data"]["result"].take() {
        serde_json::Value::Array(list) => Ok(list),
        _ => Err("the answer has no data.result list".to_string()),
    }
}

/// Reads the one value of an instant-vector answer (`None` when empty).
pub fn parse_instant_scalar(text: &str) -> Result<Option<f64>, String> {
    let result = query_result(text)?;
    let Some(first) = result.first() else {
        return Ok(None);
    };
    let value = first["value"][1]
        .as_str()
        .ok_or("a sample without a value")?;
    match value {
        "NaN" => Ok(None),
        v => v
            .parse::<f64>()
            .map(Some)
            .map_err(|e| format!("`{v}` is not a number: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answers_are_read() {
        let one = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"42.5"]}]}}"#;
        assert_eq!(parse_instant_scalar(one), Ok(Some(42.5)));
        let none = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_instant_scalar(none), Ok(None));
        let nan = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert_eq!(parse_instant_scalar(nan), Ok(None));
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(
            parse_instant_scalar(bad)
                .unwrap_err()
                .contains("parse error")
        );
        assert!(parse_instant_scalar("<html>").is_err());
    }

    #[test]
    fn range_answers_are_read() {
        let text = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1700000000,"3"],[1700000060,"NaN"],[1700000120,"5.5"]]}]}}"#;
        let points = parse_range(text).unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].0.timestamp(), 1_700_000_000);
        assert_eq!(points[1].1, 5.5);
        let empty = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(parse_range(empty).unwrap(), vec![]);
    }

    #[test]
    fn queries_select_the_pool_and_extra_matchers() {
        let p = PrometheusSource::new("http://prom:9090/", "moodle", Some("namespace=\"lms\""));
        let q = p.queries();
        assert_eq!(
            q[0],
            "sum(usher_balancer_pool_in_flight_requests{pool=\"moodle\",namespace=\"lms\"})"
        );
        assert!(q[2].starts_with("sum(rate(usher_balancer_pool_responses_total{"));
        assert!(q[3].starts_with("histogram_quantile(0.95, sum by (le) (rate("));
        assert_eq!(percent_encode("a{b=\"c\"} d"), "a%7Bb%3D%22c%22%7D%20d");
    }
}
