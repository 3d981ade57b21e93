//! Admission: the first endpoint for a request, through the surge queue
//! when every endpoint is at `maxInFlightPerEndpoint`.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Response, StatusCode, header};

use super::body::local;
use super::upstream::ProxyBody;
use crate::endpoint::{EndpointState, InFlight};
use crate::queue::{Class, Displaced};
use crate::snapshot::{PoolRuntime, Rejection};

/// A 503 that tells clients to come back soon.
pub fn unavailable(message: &str) -> Response<ProxyBody> {
    let mut resp = local(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The 503 for a pool without a healthy endpoint.
pub fn no_healthy_endpoint(pool: &PoolRuntime) -> Response<ProxyBody> {
    unavailable(&format!(
        "usher: no healthy endpoint in pool `{}`; try again shortly",
        pool.settings.name
    ))
}

fn reject(pool: &PoolRuntime, why: Rejection, message: &str) -> Response<ProxyBody> {
    pool.live.metrics.queue_rejected[why as usize].inc();
    unavailable(&format!(
        "usher: pool `{}` {message}; try again shortly",
        pool.settings.name
    ))
}

/// Counts a request in the queue-depth gauge and observes its wait when
/// dropped, also when the client goes away while waiting.
struct WaitMetrics {
    depth: prometheus_client::metrics::gauge::Gauge,
    wait: prometheus_client::metrics::histogram::Histogram,
    started: Instant,
}

impl WaitMetrics {
    fn start(pool: &PoolRuntime) -> Self {
        let m = &pool.live.metrics;
        m.queue_depth.inc();
        Self {
            depth: m.queue_depth.clone(),
            wait: m.queue_wait.clone(),
            started: Instant::now(),
        }
    }
}

impl Drop for WaitMetrics {
    fn drop(&mut self) {
        self.depth.dec();
        self.wait.observe(self.started.elapsed().as_secs_f64());
    }
}

/// A reserved slot on an endpoint of `pool`, or the response to send instead.
///
/// A request `pinned` to an endpoint by its sticky session waits for a slot
/// on that endpoint: sessions do not bypass `maxInFlightPerEndpoint`. Its
/// `class` ranks it in the queue when the pool has session priority.
pub async fn admit(
    pool: &PoolRuntime,
    pinned: Option<&Arc<EndpointState>>,
    class: Class,
) -> Result<InFlight, Response<ProxyBody>> {
    let now = Instant::now();
    let queue = &pool.live.queue;
    let limit = pool.settings.max_in_flight_per_endpoint;
    match pinned {
        // Its own pod: no need to queue behind requests for other pods.
        Some(state) => {
            if let Some(guard) = state.try_start_request(limit) {
                return Ok(guard);
            }
        }
        // FIFO: while others wait, newcomers queue behind them.
        None => {
            if !queue.has_waiters()
                && let Some((_, guard)) = pool.reserve(now, &[])
            {
                return Ok(guard);
            }
            if !pool.has_available(now) {
                return Err(no_healthy_endpoint(pool));
            }
        }
    }
    let Some(settings) = &pool.settings.queue else {
        return Err(reject(pool, Rejection::AtCapacity, "is at capacity"));
    };
    let Some(mut waiting) = queue.enqueue(
        settings.max_length,
        class,
        pinned.cloned(),
        settings.session_priority,
    ) else {
        return Err(reject(
            pool,
            Rejection::Full,
            "is at capacity and its queue is full",
        ));
    };
    pool.live.metrics.queued[class as usize].inc();
    let _waiting_metrics = WaitMetrics::start(pool);
    // A slot may have freed between the reservation attempt and enqueueing.
    pool.live.slot_freed();
    let outcome = tokio::time::timeout(settings.timeout, &mut waiting.slot).await;
    drop(waiting);
    match outcome {
        Ok(Ok(Ok(guard))) => Ok(guard),
        Ok(Ok(Err(Displaced))) => Err(reject(
            pool,
            Rejection::Displaced,
            "is at capacity and serves established sessions first",
        )),
        Ok(Err(_)) => Err(no_healthy_endpoint(pool)),
        Err(_) => Err(reject(
            pool,
            Rejection::Timeout,
            "is at capacity (queue timeout)",
        )),
    }
}
