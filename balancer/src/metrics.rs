//! Prometheus metrics, all prefixed `usher_balancer_`.
//!
//! Counters and histograms live in families whose per-endpoint handles are
//! cached in each endpoint's live state, so the request path never looks up
//! labels. Gauges of live state (in-flight, health) are read at scrape time
//! by [`LiveCollector`].

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::endpoint::{EndpointState, Endpoints};

/// Labels of a per-endpoint metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Pool name.
    pub pool: String,
    /// Endpoint `host:port`.
    pub endpoint: String,
}

/// Labels of a per-endpoint metric by status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointClassLabels {
    /// Pool name.
    pub pool: String,
    /// Endpoint `host:port`.
    pub endpoint: String,
    /// `1xx` to `5xx`.
    pub code_class: &'static str,
}

/// Labels of a per-pool metric by status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolClassLabels {
    /// Pool name (`none` when no route matched).
    pub pool: String,
    /// `1xx` to `5xx`.
    pub code_class: &'static str,
}

/// Labels of a per-pool metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool name.
    pub pool: String,
}

/// Labels of a per-pool metric with a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolReasonLabels {
    /// Pool name.
    pub pool: String,
    /// Why.
    pub reason: &'static str,
}

/// Labels of a per-pool metric by session class (`established`, `new`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionClassLabels {
    /// Pool name.
    pub pool: String,
    /// `established` (a sticky session) or `new`.
    pub class: &'static str,
}

/// Labels of a failover counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    /// Pool name.
    pub pool: String,
    /// `backup` or `primary`: where traffic went.
    pub to: &'static str,
}

/// Labels of a micro-cache counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// Pool name.
    pub pool: String,
    /// `hit`, `miss`, `collapsed` or `bypass`.
    pub result: &'static str,
}

/// Labels with a result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Labels of a health-check counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// Pool name.
    pub pool: String,
    /// Endpoint `host:port`.
    pub endpoint: String,
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Labels of a per-listener metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: String,
}

/// Status classes in label form, indexed by `status / 100 - 1`.
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The class index of a status code.
pub fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric family of the balancer.
#[derive(Clone)]
pub struct Metrics {
    /// Upstream responses by endpoint and status class.
    pub upstream_responses: Family<EndpointClassLabels, Counter>,
    /// Responses sent to clients by pool and status class, local errors included.
    pub pool_responses: Family<PoolClassLabels, Counter>,
    /// Time from sending a request upstream to its response headers.
    pub upstream_latency: HistogramFamily<EndpointLabels>,
    /// Upstream connect failures.
    pub connect_errors: Family<EndpointLabels, Counter>,
    /// Upstream failures other than connect errors (resets, timeouts).
    pub upstream_errors: Family<EndpointLabels, Counter>,
    /// Retries sent, by the endpoint that failed.
    pub retries: Family<EndpointLabels, Counter>,
    /// Retries refused by the budget.
    pub retries_budget_exhausted: Family<PoolLabels, Counter>,
    /// Retries by pool and cause (`not_sent`, `reset`).
    pub pool_retries: Family<PoolReasonLabels, Counter>,
    /// Passive ejections.
    pub ejections: Family<EndpointLabels, Counter>,
    /// Active health-check results.
    pub health_checks: Family<CheckLabels, Counter>,
    /// Config reloads by result.
    pub config_reloads: Family<ResultLabels, Counter>,
    /// 1 if the last reload attempt succeeded.
    pub config_last_reload_successful: Gauge,
    /// Unix time of the last successful (re)load.
    pub config_last_reload_success_timestamp: Gauge,
    /// Open client connections per listener.
    pub downstream_connections: Family<ListenerLabels, Gauge>,
    /// Accepted client connections per listener.
    pub downstream_connections_total: Family<ListenerLabels, Counter>,
    /// Failed TLS handshakes per listener.
    pub tls_handshake_errors: Family<ListenerLabels, Counter>,
    /// Requests waiting in a pool's surge queue.
    pub queue_depth: Family<PoolLabels, Gauge>,
    /// Time requests waited in the surge queue.
    pub queue_wait: HistogramFamily<PoolLabels>,
    /// Requests turned away by admission control.
    pub queue_rejected: Family<PoolReasonLabels, Counter>,
    /// Requests that entered the surge queue, by session class.
    pub queued: Family<SessionClassLabels, Counter>,
    /// 1 while a pool's traffic goes to its backup pool.
    pub using_backup: Family<PoolLabels, Gauge>,
    /// Switches to the backup pool and back.
    pub failovers: Family<FailoverLabels, Counter>,
    /// Requests refused by a route's rate limit (429).
    pub rate_limited: Family<PoolLabels, Counter>,
    /// Micro-cache lookups by result.
    pub cache_lookups: Family<CacheLabels, Counter>,
    /// New sessions that waited for starting pods.
    pub births_held: Family<PoolLabels, Counter>,
    /// Time new sessions waited for starting pods.
    pub birth_hold: HistogramFamily<PoolLabels>,
    /// Sessions moved off an overloaded pod (`mobility: shared`).
    pub sessions_moved: Family<PoolLabels, Counter>,
    /// Pods listed as starting.
    pub starting_endpoints: Family<PoolLabels, Gauge>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            upstream_responses: Family::default(),
            pool_responses: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            connect_errors: Family::default(),
            upstream_errors: Family::default(),
            retries: Family::default(),
            retries_budget_exhausted: Family::default(),
            pool_retries: Family::default(),
            ejections: Family::default(),
            health_checks: Family::default(),
            config_reloads: Family::default(),
            config_last_reload_successful: Gauge::default(),
            config_last_reload_success_timestamp: Gauge::default(),
            downstream_connections: Family::default(),
            downstream_connections_total: Family::default(),
            tls_handshake_errors: Family::default(),
            queue_depth: Family::default(),
            queue_wait: Family::new_with_constructor(latency_histogram),
            queue_rejected: Family::default(),
            queued: Family::default(),
            using_backup: Family::default(),
            failovers: Family::default(),
            rate_limited: Family::default(),
            cache_lookups: Family::default(),
            births_held: Family::default(),
            birth_hold: Family::new_with_constructor(latency_histogram),
            sessions_moved: Family::default(),
            starting_endpoints: Family::default(),
        }
    }
}

impl Metrics {
    /// A registry exposing these families and the live endpoint gauges.
    pub fn registry(&self, endpoints: Arc<Endpoints>) -> Registry {
        let mut r = Registry::with_prefix("usher_balancer");
        r.register(
            "upstream_responses",
            "Upstream responses by endpoint and status class",
            self.upstream_responses.clone(),
        );
        r.register("pool_responses", "Responses sent to clients by pool and status class, including locally generated 502/503/504", self.pool_responses.clone());
        r.register(
            "upstream_response_duration_seconds",
            "Time from sending a request upstream to receiving its response headers",
            self.upstream_latency.clone(),
        );
        r.register(
            "upstream_connect_errors",
            "Failed upstream connection attempts",
            self.connect_errors.clone(),
        );
        r.register(
            "upstream_errors",
            "Upstream failures after connecting: resets, premature closes, response timeouts",
            self.upstream_errors.clone(),
        );
        r.register(
            "retries",
            "Retries sent after a failure of this endpoint",
            self.retries.clone(),
        );
        r.register(
            "retry_budget_exhausted",
            "Retries refused because the pool's retry budget was spent",
            self.retries_budget_exhausted.clone(),
        );
        r.register(
            "pool_retries",
            "Retries by pool and cause: not_sent (the request never reached an endpoint: connect failure or a connection closed before it was written; any method, outside the budget) or reset (the connection failed before any response byte; idempotent requests, within the budget)",
            self.pool_retries.clone(),
        );
        r.register(
            "ejections",
            "Passive outlier ejections",
            self.ejections.clone(),
        );
        r.register(
            "health_checks",
            "Active health check results",
            self.health_checks.clone(),
        );
        r.register(
            "config_reloads",
            "Config reload attempts by result",
            self.config_reloads.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 if the last config reload attempt succeeded, else 0",
            self.config_last_reload_successful.clone(),
        );
        r.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load",
            self.config_last_reload_success_timestamp.clone(),
        );
        r.register(
            "downstream_connections",
            "Open client connections",
            self.downstream_connections.clone(),
        );
        r.register(
            "downstream_connections_accepted",
            "Accepted client connections",
            self.downstream_connections_total.clone(),
        );
        r.register(
            "tls_handshake_errors",
            "Failed TLS handshakes",
            self.tls_handshake_errors.clone(),
        );
        r.register(
            "pool_queue_depth",
            "Requests waiting in the pool's surge queue",
            self.queue_depth.clone(),
        );
        r.register(
            "pool_queue_wait_seconds",
            "Time requests waited in the surge queue before being sent or refused",
            self.queue_wait.clone(),
        );
        r.register("pool_queue_rejected", "Requests refused by admission control: queue full, queue timeout, every endpoint at its limit without a queue, or a new session displaced by an established one", self.queue_rejected.clone());
        r.register(
            "pool_queued",
            "Requests that entered the surge queue, by session class: established (a sticky session) or new",
            self.queued.clone(),
        );
        r.register(
            "pool_using_backup",
            "1 while the pool has no healthy endpoint and its traffic goes to the backup pool",
            self.using_backup.clone(),
        );
        r.register(
            "pool_failovers",
            "Switches of a pool's traffic to its backup pool and back",
            self.failovers.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused with 429 by a route's per-client rate limit",
            self.rate_limited.clone(),
        );
        r.register(
            "cache_lookups",
            "Micro-cache lookups: hit, miss, collapsed (waited for a concurrent miss), bypass",
            self.cache_lookups.clone(),
        );
        r.register(
            "session_births_held",
            "New sticky sessions that waited for starting pods because every ready pod held its share of sessions",
            self.births_held.clone(),
        );
        r.register(
            "session_birth_hold_seconds",
            "Time new sticky sessions waited for starting pods",
            self.birth_hold.clone(),
        );
        r.register(
            "sessions_moved",
            "Established sessions moved off a pod above the bounded load (stickySessions.mobility: shared)",
            self.sessions_moved.clone(),
        );
        r.register(
            "pool_starting_endpoints",
            "Pods on their way: listed by discovery as starting, or added and never healthy yet, for at most stickySessions.sessionPlacement.startingFor",
            self.starting_endpoints.clone(),
        );
        r.register_collector(Box::new(LiveCollector { endpoints }));
        r
    }
}

/// Encodes a registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// Reads live endpoint state at scrape time. Its descriptor names have no
/// `usher_balancer_` prefix: the registry adds it to collectors too.
#[derive(Debug)]
pub struct LiveCollector {
    endpoints: Arc<Endpoints>,
}

/// Labels of an endpoint state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    pool: String,
    endpoint: String,
    state: &'static str,
}

/// Labels of a pool state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolStateLabels {
    pool: String,
    state: &'static str,
}

/// Encodes one gauge per endpoint, labelled with its pool and address.
fn endpoint_gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    states: &[Arc<EndpointState>],
    value: fn(&EndpointState) -> u64,
) -> Result<(), fmt::Error> {
    let mut e = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for s in states {
        let labels = EndpointLabels {
            pool: s.pool().to_string(),
            endpoint: s.address().to_string(),
        };
        ConstGauge::new(value(s) as i64).encode(e.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let states: Vec<Arc<EndpointState>> = self.endpoints.all();
        let now = std::time::Instant::now();

        endpoint_gauge(
            &mut encoder,
            "in_flight_requests",
            "Requests and upgraded connections in flight to an endpoint",
            &states,
            EndpointState::in_flight,
        )?;
        endpoint_gauge(
            &mut encoder,
            "endpoint_sessions",
            "Live sticky sessions pinned to an endpoint (a request within stickySessions.sessionPlacement.liveFor)",
            &states,
            EndpointState::sessions,
        )?;

        let mut pools: Vec<(&str, i64, [i64; 4])> = Vec::new();
        for s in &states {
            let state = s.state(now);
            let idx = state.index();
            match pools.iter_mut().find(|(p, _, _)| *p == s.pool()) {
                Some((_, inflight, counts)) => {
                    *inflight += s.in_flight() as i64;
                    counts[idx] += 1;
                }
                None => {
                    let mut counts = [0; 4];
                    counts[idx] = 1;
                    pools.push((s.pool(), s.in_flight() as i64, counts));
                }
            }
        }

        {
            let mut e2 = encoder.encode_descriptor(
                "pool_in_flight_requests",
                "Requests and upgraded connections in flight to a pool",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (pool, inflight, _) in &pools {
                ConstGauge::new(*inflight).encode(e2.encode_family(&PoolLabels {
                    pool: pool.to_string(),
                })?)?;
            }
        }

        {
            let mut e3 = encoder.encode_descriptor(
                "endpoint_state",
                "1 for the endpoint's current state: healthy, unhealthy, ejected or draining",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for s in &states {
                let current = s.state(now);
                for st in crate::endpoint::HealthState::ALL {
                    let labels = StateLabels {
                        pool: s.pool().to_string(),
                        endpoint: s.address().to_string(),
                        state: st.as_str(),
                    };
                    ConstGauge::new(i64::from(st == current)).encode(e3.encode_family(&labels)?)?;
                }
            }
        }

        let mut e4 = encoder.encode_descriptor(
            "pool_endpoints",
            "Endpoints of a pool by state",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (pool, _, counts) in &pools {
            for st in crate::endpoint::HealthState::ALL {
                let labels = PoolStateLabels {
                    pool: pool.to_string(),
                    state: st.as_str(),
                };
                ConstGauge::new(counts[st.index()]).encode(e4.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_gauges_carry_the_prefix_once() {
        let metrics = Metrics::default();
        let endpoints = Arc::new(Endpoints::new(metrics.clone()));
        endpoints.get_or_create("web", "127.0.0.1:9001", None, true);
        let text = encode(&metrics.registry(endpoints));
        for name in [
            "usher_balancer_in_flight_requests{",
            "usher_balancer_pool_in_flight_requests{",
            "usher_balancer_endpoint_state{",
            "usher_balancer_pool_endpoints{",
        ] {
            assert!(text.lines().any(|l| l.starts_with(name)), "{name}\n{text}");
        }
        assert!(!text.contains("usher_balancer_usher_balancer_"), "{text}");
    }
}
