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
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("not Prometheus text: {e}"))?;
    let mut demand = PoolDemand::default();
    let mut seen = false;
    for s in scrape
        .samples
        .iter()
        .filter(|s| s.labels.get("pool") == Some(pool))
    {
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        match s.metric.as_str() {
            "usher_balancer_pool_in_flight_requests" => {
                demand.in_flight += value;
                seen = true;
            }
            "usher_balancer_pool_queue_depth" => demand.queued += value,
            "usher_balancer_pool_responses_total" | "usher_balancer_pool_responses" => {
                demand.responses_total += value;
                seen = true;
            }
            _ => {}
        }
    }
    if seen {
        Ok(demand)
    } else {
        Err(format!("the balancer reports no pool `{pool}`"))
    }
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
