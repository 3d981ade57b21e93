//! Reading the balancer's metrics: the Prometheus text of every balancer
//! replica, parsed with `prometheus-parse`, reduced to one pool's demand and
//! summed across replicas; request rates come from counter deltas.

use chrono::{DateTime, Utc};

/// One pool's demand as one balancer replica (or the sum of several) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PoolDemand {
    /// Requests and WebSockets in flight to the pool's endpoints.
    pub in_flight: f64,
    /// Requests waiting in the pool's surge queue.
    pub queued: f64,
    /// Responses sent to clients so far (a counter).
    pub responses_total: f64,
}

impl std::ops::Add for PoolDemand {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self {
            in_flight: self.in_flight + o.in_flight,
            queued: self.queued + o.queued,
            responses_total: self.responses_total + o.responses_total,
        }
    }
}

/// Reads `pool`'s demand from one `/metrics` document. A pool the balancer
/// does not know is an error (a policy naming the wrong pool must not read
/// as zero demand).
pub fn pool_demand(text: &str, pool: &str) -> Result<PoolDemand, String> {
    read_pool(text, pool).map(|(demand, _, _)| demand)
}

/// Cumulative latency histogram buckets: `(upper bound in seconds, count)`,
/// sorted by bound, summed over the pool's endpoints.
pub type Buckets = Vec<(f64, f64)>;

/// Live sticky sessions per endpoint address (`usher_balancer_endpoint_sessions`).
pub type Sessions = std::collections::BTreeMap<String, f64>;

/// Reads `pool`'s demand, its upstream latency histogram (summed over the
/// pool's endpoints) and its live sessions per endpoint from one `/metrics`
/// document.
pub fn read_pool(text: &str, pool: &str) -> Result<(PoolDemand, Buckets, Sessions), String> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("not Prometheus text: {e}"))?;
    let mut demand = PoolDemand::default();
    let mut buckets: Buckets = Vec::new();
    let mut sessions = Sessions::new();
    let mut seen = false;
    for s in scrape
        .samples
        .iter()
        .filter(|s| s.labels.get("pool") == Some(pool))
    {
        let value = match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h)
                if s.metric == "usher_balancer_upstream_response_duration_seconds" =>
            {
                for b in h {
                    add_bucket(&mut buckets, b.less_than, b.count);
                }
                continue;
            }
            _ => continue,
        };
        match s.metric.as_str() {
            "usher_balancer_pool_in_flight_requests" => {
                demand.in_flight += value;
                seen = true;
            }
            "usher_balancer_pool_queue_depth" => demand.queued += value,
            "usher_balancer_endpoint_sessions" => {
                if let Some(endpoint) = s.labels.get("endpoint") {
                    *sessions.entry(endpoint.to_string()).or_default() += value;
                }
            }
            "usher_balancer_pool_responses_total" | "usher_balancer_pool_responses" => {
                demand.responses_total += value;
                seen = true;
            }
            _ => {}
        }
    }
    if seen {
        Ok((demand, buckets, sessions))
    } else {
        Err(format!("the balancer reports no pool `{pool}`"))
    }
}

fn add_bucket(buckets: &mut Buckets, le: f64, count: f64) {
    match buckets.binary_search_by(|(b, _)| b.total_cmp(&le)) {
        Ok(i) => buckets[i].1 += count,
        Err(i) => buckets.insert(i, (le, count)),
    }
}

/// Adds histogram `b` into `into` bucket by bucket.
pub fn add_buckets(into: &mut Buckets, b: &Buckets) {
    for &(le, count) in b {
        add_bucket(into, le, count);
    }
}

/// The increase of a cumulative histogram between two readings; `None` when
/// a count went down (the balancer restarted or an endpoint was removed).
pub fn bucket_increase(before: &Buckets, now: &Buckets) -> Option<Buckets> {
    now.iter()
        .map(|&(le, count)| {
            let old = before
                .iter()
                .find(|(b, _)| b.total_cmp(&le).is_eq())
                .map_or(0.0, |(_, c)| *c);
            (count >= old).then_some((le, count - old))
        })
        .collect()
}

/// The `q` quantile of a cumulative histogram, interpolated linearly inside
/// the bucket like PromQL's `histogram_quantile`. `None` without
/// observations; the highest finite bound when the quantile falls in `+Inf`.
pub fn quantile(q: f64, buckets: &Buckets) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let span = count - lower.1;
            let within = if span > 0.0 {
                (rank - lower.1) / span
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// Turns a counter into a rate between successive readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateTracker {
    last: Option<(DateTime<Utc>, f64)>,
}

impl RateTracker {
    /// The per-second rate since the previous reading, if there was one. A
    /// counter that went down (a balancer restarted) restarts the rate.
    pub fn observe(&mut self, now: DateTime<Utc>, total: f64) -> Option<f64> {
        let previous = self.last.replace((now, total));
        let (then, before) = previous?;
        let seconds = (now - then).num_milliseconds() as f64 / 1000.0;
        if seconds <= 0.0 || total < before {
            return None;
        }
        Some((total - before) / seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const TEXT: &str = r#"# HELP usher_balancer_pool_responses Responses sent to clients.
# TYPE usher_balancer_pool_responses counter
usher_balancer_pool_responses_total{pool="moodle",code_class="2xx"} 120
usher_balancer_pool_responses_total{pool="moodle",code_class="5xx"} 3
usher_balancer_pool_responses_total{pool="canvas",code_class="2xx"} 7
# HELP usher_balancer_pool_queue_depth Requests waiting.
# TYPE usher_balancer_pool_queue_depth gauge
usher_balancer_pool_queue_depth{pool="moodle"} 4
# HELP usher_balancer_pool_in_flight_requests In flight.
# TYPE usher_balancer_pool_in_flight_requests gauge
usher_balancer_pool_in_flight_requests{pool="moodle"} 17
usher_balancer_pool_in_flight_requests{pool="canvas"} 2
# EOF
"#;

    #[test]
    fn reads_one_pool() {
        let d = pool_demand(TEXT, "moodle").unwrap();
        assert_eq!(
            d,
            PoolDemand {
                in_flight: 17.0,
                queued: 4.0,
                responses_total: 123.0
            }
        );
        let c = pool_demand(TEXT, "canvas").unwrap();
        assert_eq!(
            c,
            PoolDemand {
                in_flight: 2.0,
                queued: 0.0,
                responses_total: 7.0
            }
        );
        assert!(
            pool_demand(TEXT, "edx")
                .unwrap_err()
                .contains("no pool `edx`")
        );
        assert_eq!(
            d + c,
            PoolDemand {
                in_flight: 19.0,
                queued: 4.0,
                responses_total: 130.0
            }
        );
    }

    #[test]
    fn latency_quantiles_from_histogram_increases() {
        let text = "# TYPE usher_balancer_upstream_response_duration_seconds histogram
usher_balancer_upstream_response_duration_seconds_bucket{pool=\"moodle\",endpoint=\"a\",le=\"0.1\"} 50
usher_balancer_upstream_response_duration_seconds_bucket{pool=\"moodle\",endpoint=\"a\",le=\"0.5\"} 90
usher_balancer_upstream_response_duration_seconds_bucket{pool=\"moodle\",endpoint=\"a\",le=\"+Inf\"} 100
usher_balancer_upstream_response_duration_seconds_sum{pool=\"moodle\",endpoint=\"a\"} 20
usher_balancer_upstream_response_duration_seconds_count{pool=\"moodle\",endpoint=\"a\"} 100
usher_balancer_upstream_response_duration_seconds_bucket{pool=\"moodle\",endpoint=\"b\",le=\"0.1\"} 50
usher_balancer_upstream_response_duration_seconds_bucket{pool=\"moodle\",endpoint=\"b\",le=\"0.5\"} 100
usher_balancer_upstream_response_duration_seconds_bucket{pool=\"moodle\",endpoint=\"b\",le=\"+Inf\"} 100
usher_balancer_upstream_response_duration_seconds_sum{pool=\"moodle\",endpoint=\"b\"} 10
usher_balancer_upstream_response_duration_seconds_count{pool=\"moodle\",endpoint=\"b\"} 100
usher_balancer_pool_in_flight_requests{pool=\"moodle\"} 1
";
        let (_, b, _) = read_pool(text, "moodle").unwrap();
        assert_eq!(b, vec![(0.1, 100.0), (0.5, 190.0), (f64::INFINITY, 200.0)]);
        // Median: rank 100 falls at the top of the first bucket.
        assert_eq!(quantile(0.5, &b), Some(0.1));
        // p90: rank 180 is 80/90 of the way through (0.1, 0.5].
        let p90 = quantile(0.9, &b).unwrap();
        assert!((p90 - (0.1 + 0.4 * 80.0 / 90.0)).abs() < 1e-9, "{p90}");
        // p99 lands in +Inf: the highest finite bound.
        assert_eq!(quantile(0.99, &b), Some(0.5));

        let before = vec![(0.1, 90.0), (0.5, 100.0), (f64::INFINITY, 100.0)];
        let inc = bucket_increase(&before, &b).unwrap();
        assert_eq!(inc, vec![(0.1, 10.0), (0.5, 90.0), (f64::INFINITY, 100.0)]);
        assert!(
            bucket_increase(&b, &before).is_none(),
            "a reset is no increase"
        );
        assert_eq!(
            quantile(0.95, &vec![(0.1, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        let mut sum = before.clone();
        add_buckets(&mut sum, &inc);
        assert_eq!(sum, b);
    }

    #[test]
    fn rates_from_counters() {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap();
        let mut r = RateTracker::default();
        assert_eq!(r.observe(t0, 100.0), None);
        assert_eq!(
            r.observe(t0 + chrono::Duration::seconds(2), 160.0),
            Some(30.0)
        );
        assert_eq!(
            r.observe(t0 + chrono::Duration::seconds(3), 10.0),
            None,
            "a reset restarts"
        );
        assert_eq!(
            r.observe(t0 + chrono::Duration::seconds(4), 30.0),
            Some(20.0)
        );
    }
}
