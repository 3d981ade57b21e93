//! Admission: the first endpoint for a request, through the surge queue
//! when every endpoint is at `maxInFlightPerEndpoint`.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Response, StatusCode, header};

use super::body::local;
use super::upstream::ProxyBody;
use crate::endpoint::{EndpointState, InFlight};
use crate::queue::{Class, Displaced};
use crate::snapshot::{PoolLive, PoolRuntime, Rejection, SessionHome};

/// How often a new session waiting for starting pods looks again, besides
/// being woken when the endpoints change (a pod's first passing health
/// check does not rebuild the snapshot).
const PLACEMENT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

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

/// A new session waiting for starting pods: counted in the pool's
/// `births_waiting` and its wait observed when it ends.
struct HeldBirth<'a> {
    live: &'a PoolLive,
    started: Instant,
}

impl<'a> HeldBirth<'a> {
    fn start(live: &'a PoolLive) -> Self {
        live.births_waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        live.metrics.births_held.inc();
        Self {
            live,
            started: Instant::now(),
        }
    }
}

impl Drop for HeldBirth<'_> {
    fn drop(&mut self) {
        self.live
            .births_waiting
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.live
            .metrics
            .birth_hold
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Where placement sent a request that will create a sticky session.
#[derive(Debug)]
pub enum Born {
    /// On this endpoint (if it still has a slot; else it queues as
    /// [`Birth::Queued`]).
    At(Arc<EndpointState>),
    /// To the surge queue, whose dispatch places it when a home frees or a
    /// starting pod turns ready.
    Queued(Birth),
    /// Anywhere, as any request (every endpoint at its limit, no queue).
    Anywhere,
}

/// How a new session enters the surge queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Birth {
    /// Not a new session.
    No,
    /// Behind others, or every home with about the fewest sessions is full.
    Queued,
    /// Held for starting pods or a login surge's scale-out (counted in
    /// `session_births_held_total`).
    Held,
}

/// The home of a request that will create a sticky session (see
/// [`crate::balance::placement`]). While pods are starting and every ready
/// pod holds its share of sessions (or during a login surge), it waits for
/// them, at most `stickySessions.sessionPlacement.maxWait`: in the surge
/// queue when the pool has one, else here. After a wait here the pool's
/// current snapshot is returned too, as the endpoints have changed.
pub async fn place_session(pool: &PoolRuntime) -> (Born, Option<Arc<PoolRuntime>>) {
    let Some(st) = &pool.sticky else {
        return (Born::Anywhere, None);
    };
    let max_wait = st.settings.placement.max_wait;
    if pool.settings.queue.is_some() {
        let now = Instant::now();
        let queue = &pool.live.queue;
        let born = match pool.place_session(now, now, true, queue.births(), fastrand::u64(..)) {
            SessionHome::At(home) if !queue.has_waiters() => Born::At(home),
            SessionHome::At(_) => Born::Queued(Birth::Queued),
            SessionHome::Hold => Born::Queued(Birth::Held),
            SessionHome::Anywhere => Born::Anywhere,
        };
        return (born, None);
    }
    let started = Instant::now();
    let mut current: Option<Arc<PoolRuntime>> = None;
    let mut held: Option<HeldBirth<'_>> = None;
    loop {
        let rt = current.as_deref().unwrap_or(pool);
        let now = Instant::now();
        let waited = now.saturating_duration_since(started);
        // Only births held for starting pods count as waiting (a surge).
        let others = pool
            .live
            .births_waiting
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(u64::from(held.is_some()));
        match rt.place_session(now, started, waited < max_wait, others, fastrand::u64(..)) {
            SessionHome::At(home) => return (Born::At(home), current),
            SessionHome::Anywhere => return (Born::Anywhere, current),
            SessionHome::Hold => {
                if held.is_none() {
                    held = Some(HeldBirth::start(&pool.live));
                }
                let changed = pool.live.capacity.notified();
                let pause = max_wait.saturating_sub(waited).min(PLACEMENT_POLL);
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep(pause) => {}
                }
                current = pool.live.current.load_full();
            }
        }
    }
}

/// A reserved slot on an endpoint of `pool`, or the response to send instead.
///
/// A request `pinned` to an endpoint by its sticky session waits for a slot
/// on that endpoint: sessions do not bypass `maxInFlightPerEndpoint`. Its
/// `class` ranks it in the queue when the pool has session priority.
///
/// A new session that placement sent to the queue (`birth`) waits there for
/// its home; past `sessionPlacement.maxWait` the queue places it anywhere.
pub async fn admit(
    pool: &PoolRuntime,
    pinned: Option<&Arc<EndpointState>>,
    class: Class,
    birth: Birth,
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
            if birth == Birth::No
                && !queue.has_waiters()
                && let Some((_, guard)) = pool.reserve(now, &[])
            {
                return Ok(guard);
            }
            // A new session may wait for pods that are starting.
            let coming = birth != Birth::No && pool.starting(now) > 0;
            if !pool.has_available(now) && !coming {
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
    // Validation keeps `maxWait` below the queue timeout.
    let hold = pool
        .sticky
        .as_ref()
        .filter(|_| birth != Birth::No)
        .map(|st| st.settings.placement.max_wait)
        .filter(|w| !w.is_zero() && *w < settings.timeout);
    let outcome = match hold {
        // A new session may be held for a home: when the longest hold is
        // over, the queue must look again even if no slot frees meanwhile.
        Some(hold) => {
            let _held = (birth == Birth::Held).then(|| HeldBirth::start(&pool.live));
            match tokio::time::timeout(hold, &mut waiting.slot).await {
                Ok(done) => Ok(done),
                Err(_) => {
                    pool.live.slot_freed();
                    tokio::time::timeout(settings.timeout - hold, &mut waiting.slot).await
                }
            }
        }
        None => tokio::time::timeout(settings.timeout, &mut waiting.slot).await,
    };
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
