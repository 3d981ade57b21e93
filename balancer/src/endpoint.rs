//! Live per-endpoint state, kept outside the config snapshot so that reloads
//! never reset in-flight counts, health or ejections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwapOption;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::config::{HealthCheck, OutlierDetection};
use crate::health::outlier::Outcome;
use crate::health::{HealthCounter, OutlierState, Transition};
use crate::metrics::{CODE_CLASSES, CheckLabels, EndpointClassLabels, EndpointLabels, Metrics};

/// An endpoint's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Takes new requests.
    Healthy,
    /// Failing active checks.
    Unhealthy,
    /// Ejected by passive outlier detection.
    Ejected,
    /// Removed from the config; finishing its in-flight requests.
    Draining,
}

impl HealthState {
    /// Every state, in label order.
    pub const ALL: [Self; 4] = [
        Self::Healthy,
        Self::Unhealthy,
        Self::Ejected,
        Self::Draining,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Ejected => "ejected",
            Self::Draining => "draining",
        }
    }

    /// Position in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The last active check of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// When it finished.
    pub at: std::time::SystemTime,
    /// Whether it passed.
    pub ok: bool,
    /// Status code, or the error.
    pub detail: String,
}

struct Health {
    counter: HealthCounter,
    outlier: OutlierState,
    last_check: Option<CheckResult>,
}

/// Cached metric handles of one endpoint.
struct EndpointMetrics {
    responses: [Counter; 5],
    latency: Histogram,
    connect_errors: Counter,
    upstream_errors: Counter,
    retries: Counter,
    ejections: Counter,
    checks_ok: Counter,
    checks_failed: Counter,
}

/// Live state of one endpoint of one pool.
pub struct EndpointState {
    pool: String,
    address: String,
    in_flight: AtomicU64,
    /// Fast-path copy of `health.counter.is_healthy()`.
    healthy: AtomicBool,
    /// Fast-path copy of "ejected right now" (cleared lazily when the time passes).
    ejected: AtomicBool,
    /// When draining began ([`clock`] nanos), 0 when not draining.
    draining_since: AtomicU64,
    /// How long a draining endpoint keeps its sticky sessions (nanos); 0 for
    /// pools without sticky sessions.
    sticky_hold: AtomicU64,
    /// When the slow-start ramp began ([`clock`] nanos), 0 when none.
    slow_start_since: AtomicU64,
    /// The pool's surge queue, told whenever a slot frees.
    queue_hook: ArcSwapOption<crate::snapshot::PoolLive>,
    /// Whether it has ever been healthy (a pod that never was is starting).
    ever_healthy: AtomicBool,
    /// When it first turned healthy ([`clock`] nanos), 0 when never.
    ready_at: AtomicU64,
    /// When this state was made (the endpoint was listed).
    listed_at: Instant,
    /// Live sticky sessions pinned to it (see [`crate::sessions`]).
    sessions: AtomicU64,
    /// New sessions sent to it whose response has not come back yet.
    births: AtomicU64,
    health: Mutex<Health>,
    metrics: EndpointMetrics,
}

/// A monotonic clock in nanoseconds since process start, plus one (so 0 can
/// mean "never"), for timestamps kept in atomics.
pub fn clock(now: Instant) -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| Instant::now() - std::time::Duration::from_secs(1));
    now.saturating_duration_since(base).as_nanos() as u64 + 1
}

fn since(stamp: u64, now: Instant) -> Option<std::time::Duration> {
    (stamp != 0).then(|| std::time::Duration::from_nanos(clock(now).saturating_sub(stamp)))
}

impl std::fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointState")
            .field("pool", &self.pool)
            .field("address", &self.address)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl EndpointState {
    fn new(pool: &str, address: &str, counter: HealthCounter, metrics: &Metrics) -> Self {
        let labels = EndpointLabels {
            pool: pool.to_string(),
            endpoint: address.to_string(),
        };
        let class = |code_class| EndpointClassLabels {
            pool: pool.to_string(),
            endpoint: address.to_string(),
            code_class,
        };
        let check = |result| CheckLabels {
            pool: pool.to_string(),
            endpoint: address.to_string(),
            result,
        };
        Self {
            pool: pool.to_string(),
            address: address.to_string(),
            in_flight: AtomicU64::new(0),
            healthy: AtomicBool::new(counter.is_healthy()),
            ejected: AtomicBool::new(false),
            draining_since: AtomicU64::new(0),
            sticky_hold: AtomicU64::new(0),
            slow_start_since: AtomicU64::new(0),
            queue_hook: ArcSwapOption::empty(),
            ever_healthy: AtomicBool::new(counter.is_healthy()),
            listed_at: Instant::now(),
            ready_at: AtomicU64::new(if counter.is_healthy() {
                clock(Instant::now())
            } else {
                0
            }),
            sessions: AtomicU64::new(0),
            births: AtomicU64::new(0),
            health: Mutex::new(Health {
                counter,
                outlier: OutlierState::default(),
                last_check: None,
            }),
            metrics: EndpointMetrics {
                responses: CODE_CLASSES
                    .map(|c| metrics.upstream_responses.get_or_create_owned(&class(c))),
                latency: metrics.upstream_latency.get_or_create_owned(&labels),
                connect_errors: metrics.connect_errors.get_or_create_owned(&labels),
                upstream_errors: metrics.upstream_errors.get_or_create_owned(&labels),
                retries: metrics.retries.get_or_create_owned(&labels),
                ejections: metrics.ejections.get_or_create_owned(&labels),
                checks_ok: metrics.health_checks.get_or_create_owned(&check("success")),
                checks_failed: metrics.health_checks.get_or_create_owned(&check("failure")),
            },
        }
    }

    fn lock(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pool name.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Requests (and upgraded connections) in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            birth: false,
        }
    }

    /// Counts a request in flight if fewer than `limit` are: the check and
    /// the increment are one atomic step, so a limit is never overshot.
    pub fn try_start_request(self: &Arc<Self>, limit: Option<u64>) -> Option<InFlight> {
        let Some(limit) = limit else {
            return Some(self.start_request());
        };
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight {
                endpoint: self.clone(),
                birth: false,
            })
    }

    /// Whether it is a pod that has not served yet (capacity that is
    /// coming): listed less than `grace` ago, never healthy, not draining.
    /// A pod that stays unready longer (crash-looping, stuck) is not.
    pub fn is_starting(&self, now: Instant, grace: std::time::Duration) -> bool {
        !self.ever_healthy.load(Ordering::Relaxed)
            && !self.is_draining()
            && now.saturating_duration_since(self.listed_at) < grace
    }

    /// Whether it first turned healthy after `since`.
    pub fn ready_after(&self, since: Instant) -> bool {
        self.ready_at.load(Ordering::Relaxed) > clock(since)
    }

    /// Live sticky sessions pinned to it.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Live sessions plus new sessions on their way to it: what placement
    /// weighs.
    pub fn session_load(&self) -> u64 {
        self.sessions() + self.births.load(Ordering::Relaxed)
    }

    /// Counts a session that began (or moved) here.
    pub(crate) fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a session that ended (idle past its horizon) or moved away.
    pub(crate) fn session_ended(&self) {
        let _ = self
            .sessions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Whether it may take a new request at `now`.
    pub fn is_available(&self, now: Instant) -> bool {
        !self.is_draining() && self.is_serving(now)
    }

    /// Whether it may serve a request pinned to it by a sticky session:
    /// healthy, not ejected, and either not draining or still within the
    /// pool's drain timeout.
    pub fn takes_sticky(&self, now: Instant) -> bool {
        if !self.is_serving(now) {
            return false;
        }
        match since(self.draining_since.load(Ordering::Relaxed), now) {
            None => true,
            Some(elapsed) => {
                elapsed.as_nanos() < u128::from(self.sticky_hold.load(Ordering::Relaxed))
            }
        }
    }

    /// Healthy and not ejected (draining or not).
    fn is_serving(&self, now: Instant) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        if self.ejected.load(Ordering::Relaxed) {
            let h = self.lock();
            if h.outlier.is_ejected(now) {
                return false;
            }
            drop(h);
            self.ejected.store(false, Ordering::Relaxed);
        }
        true
    }

    /// Whether it is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected.load(Ordering::Relaxed) && self.lock().outlier.is_ejected(now)
    }

    /// The state operators see.
    pub fn state(&self, now: Instant) -> HealthState {
        if self.is_draining() {
            HealthState::Draining
        } else if !self.healthy.load(Ordering::Relaxed) {
            HealthState::Unhealthy
        } else if self.is_ejected(now) {
            HealthState::Ejected
        } else {
            HealthState::Healthy
        }
    }

    /// Whether it is draining: removed from its pool or terminating.
    pub fn is_draining(&self) -> bool {
        self.draining_since.load(Ordering::Relaxed) != 0
    }

    /// Starts or ends draining; a drain already under way keeps its start time.
    pub fn set_draining(&self, draining: bool, now: Instant) {
        if draining {
            let _ = self.draining_since.compare_exchange(
                0,
                clock(now),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        } else {
            self.draining_since.store(0, Ordering::Relaxed);
        }
    }

    /// Sets how long sticky sessions may keep using it while it drains.
    pub fn set_sticky_hold(&self, hold: std::time::Duration) {
        self.sticky_hold
            .store(hold.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Whether a draining endpoint has served its time: nothing in flight and
    /// its sticky hold (if any) over.
    fn drained(&self, now: Instant) -> bool {
        let Some(elapsed) = since(self.draining_since.load(Ordering::Relaxed), now) else {
            return false;
        };
        self.in_flight() == 0
            && elapsed.as_nanos() >= u128::from(self.sticky_hold.load(Ordering::Relaxed))
    }

    /// Starts a slow-start ramp at `now`.
    pub fn start_slow_start(&self, now: Instant) {
        self.slow_start_since.store(clock(now), Ordering::Relaxed);
    }

    /// The weight factor of `settings`' ramp at `now` (1.0 when not ramping).
    pub fn slow_start_factor(
        &self,
        settings: Option<&crate::balance::slow_start::SlowStart>,
        now: Instant,
    ) -> f64 {
        let (Some(settings), stamp) = (settings, self.slow_start_since.load(Ordering::Relaxed))
        else {
            return 1.0;
        };
        match since(stamp, now) {
            None => 1.0,
            Some(elapsed) if elapsed >= settings.window => {
                self.slow_start_since.store(0, Ordering::Relaxed);
                1.0
            }
            Some(elapsed) => crate::balance::slow_start::factor(settings, now - elapsed, now),
        }
    }

    /// Tells `pool`'s surge queue whenever a slot frees (`None`: no queue).
    pub fn set_queue_hook(&self, pool: Option<Arc<crate::snapshot::PoolLive>>) {
        self.queue_hook.store(pool);
    }

    /// Records the outcome of a proxied request for outlier detection and
    /// metrics. `status` is `None` for a failure before any response
    /// (`connect` says whether it was a connect failure).
    /// Returns the ejection deadline if this outcome ejected the endpoint.
    pub fn record_outcome(
        &self,
        result: Result<u16, bool>,
        now: Instant,
        settings: &OutlierDetection,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Instant> {
        let ok = match result {
            Ok(status) => {
                self.metrics.responses[crate::metrics::class_index(status)].inc();
                status < 500
            }
            Err(connect) => {
                if connect {
                    self.metrics.connect_errors.inc();
                } else {
                    self.metrics.upstream_errors.inc();
                }
                false
            }
        };
        // Count the pool's ejections only when this failure reaches the
        // threshold, and never while holding this endpoint's lock.
        let reaching = !ok
            && settings.enabled
            && self.lock().outlier.consecutive_failures() + 1 >= settings.consecutive_5xx;
        let allowed = reaching && may_eject();
        match self.lock().outlier.record(ok, now, settings, allowed) {
            Outcome::Ejected(until) => {
                self.ejected.store(true, Ordering::Relaxed);
                self.metrics.ejections.inc();
                Some(until)
            }
            Outcome::Nothing | Outcome::CapReached => None,
        }
    }

    /// Records the response latency.
    pub fn observe_latency(&self, seconds: f64) {
        self.metrics.latency.observe(seconds);
    }

    /// Counts a retry caused by this endpoint's failure.
    pub fn count_retry(&self) {
        self.metrics.retries.inc();
    }

    /// Records an active check result; returns the transition it caused, and
    /// whether it ended an ejection. A passing check ends a passive ejection
    /// only when `ends_ejection` (the operator's choice): otherwise an
    /// ejection runs its course, so a pod whose `/healthz` passes while its
    /// pages fail stays out.
    pub fn record_check(
        &self,
        result: CheckResult,
        settings: &HealthCheck,
        ends_ejection: bool,
        now: Instant,
    ) -> (Option<Transition>, bool) {
        if result.ok {
            self.metrics.checks_ok.inc();
        } else {
            self.metrics.checks_failed.inc();
        }
        let mut h = self.lock();
        h.counter.set_thresholds(settings.rise, settings.fall);
        let transition = h.counter.record(result.ok);
        let unejected = result.ok && ends_ejection && h.outlier.uneject(now);
        if unejected {
            self.ejected.store(false, Ordering::Relaxed);
        }
        self.healthy
            .store(h.counter.is_healthy(), Ordering::Relaxed);
        if h.counter.is_healthy() && !self.ever_healthy.swap(true, Ordering::Relaxed) {
            self.ready_at.store(clock(now), Ordering::Relaxed);
        }
        h.last_check = Some(result);
        drop(h);
        // Envoy's rule: a host that comes back healthy ramps up again; one
        // that fails stops ramping.
        match transition {
            Some(Transition::Up) => self.start_slow_start(now),
            Some(Transition::Down) => self.slow_start_since.store(0, Ordering::Relaxed),
            None => {}
        }
        if transition == Some(Transition::Up) || unejected {
            self.notify_slot();
        }
        (transition, unejected)
    }

    /// The last active check, if any.
    pub fn last_check(&self) -> Option<CheckResult> {
        self.lock().last_check.clone()
    }

    /// Ejection deadline, if ejected at `now`.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.lock().outlier.ejected_until(now)
    }
}

/// Keeps an endpoint's in-flight count raised while alive.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<EndpointState>,
    /// It carries a new session: counted in the endpoint's session load too.
    birth: bool,
}

impl InFlight {
    /// The endpoint.
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }
}

impl InFlight {
    /// Counts the request as a new session on its way to the endpoint (in
    /// its session load) until it completes; idempotent.
    pub fn mark_birth(&mut self) {
        if !self.birth {
            self.birth = true;
            self.endpoint.births.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.birth {
            self.endpoint.births.fetch_sub(1, Ordering::Relaxed);
        }
        self.endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.endpoint.notify_slot();
    }
}

impl EndpointState {
    /// Lets the pool's queue hand the freed capacity to a waiting request.
    fn notify_slot(&self) {
        if let Some(pool) = self.queue_hook.load().as_ref() {
            pool.slot_freed();
        }
    }
}

/// Every endpoint's live state, keyed by (pool, address).
#[derive(Debug)]
pub struct Endpoints {
    map: Mutex<HashMap<(String, String), Arc<EndpointState>>>,
    metrics: Metrics,
}

impl Endpoints {
    /// An empty registry whose endpoints report to `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Arc<EndpointState>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of `address` in `pool`, created if new. A new endpoint with
    /// health checks waits for its first check unless `initial` (present at
    /// process start), and a new endpoint slow-starts unless `initial`.
    pub fn get_or_create(
        &self,
        pool: &str,
        address: &str,
        check: Option<&HealthCheck>,
        initial: bool,
    ) -> Arc<EndpointState> {
        let mut map = self.lock();
        if let Some(state) = map.get(&(pool.to_string(), address.to_string())) {
            return state.clone();
        }
        let counter = match check {
            Some(c) if !initial => HealthCounter::awaiting_first_check(c.rise, c.fall),
            Some(c) => HealthCounter::healthy(c.rise, c.fall),
            None => HealthCounter::healthy(1, 1),
        };
        let state = Arc::new(EndpointState::new(pool, address, counter, &self.metrics));
        if !initial {
            state.start_slow_start(Instant::now());
        }
        map.insert((pool.to_string(), address.to_string()), state.clone());
        state
    }

    /// Whether `address` of `pool` has live state (it was a member).
    pub fn contains(&self, pool: &str, address: &str) -> bool {
        self.lock()
            .contains_key(&(pool.to_string(), address.to_string()))
    }

    /// Marks every endpoint not in `keep` as draining: it takes no new
    /// requests and is forgotten once its in-flight requests finish (and, in
    /// a pool with sticky sessions, once its hold is over).
    pub fn retain(&self, keep: &[Arc<EndpointState>], now: Instant) {
        let map = self.lock();
        for state in map.values() {
            if !keep.iter().any(|k| Arc::ptr_eq(k, state)) {
                state.set_draining(true, now);
            }
        }
    }

    /// Every endpoint of `pool` (draining ones included).
    pub fn of_pool(&self, pool: &str) -> Vec<Arc<EndpointState>> {
        self.lock()
            .values()
            .filter(|s| s.pool() == pool)
            .cloned()
            .collect()
    }

    /// Forgets drained endpoints that no snapshot routes to (`keep`); returns how many.
    pub fn sweep(&self, keep: &[Arc<EndpointState>], now: Instant) -> usize {
        let mut map = self.lock();
        let gone: Vec<_> = map
            .iter()
            .filter(|(_, s)| s.drained(now) && !keep.iter().any(|k| Arc::ptr_eq(k, s)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &gone {
            map.remove(key);
            self.forget_metrics(&key.0, &key.1);
        }
        gone.len()
    }

    fn forget_metrics(&self, pool: &str, address: &str) {
        let labels = EndpointLabels {
            pool: pool.to_string(),
            endpoint: address.to_string(),
        };
        for c in CODE_CLASSES {
            self.metrics
                .upstream_responses
                .remove(&EndpointClassLabels {
                    pool: pool.to_string(),
                    endpoint: address.to_string(),
                    code_class: c,
                });
        }
        for result in ["success", "failure"] {
            self.metrics.health_checks.remove(&CheckLabels {
                pool: pool.to_string(),
                endpoint: address.to_string(),
                result,
            });
        }
        self.metrics.upstream_latency.remove(&labels);
        self.metrics.connect_errors.remove(&labels);
        self.metrics.upstream_errors.remove(&labels);
        self.metrics.retries.remove(&labels);
        self.metrics.ejections.remove(&labels);
    }

    /// Every endpoint, sorted by pool and address.
    pub fn all(&self) -> Vec<Arc<EndpointState>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| (a.pool(), a.address()).cmp(&(b.pool(), b.address())));
        all
    }
}
