//! The immutable routing snapshot published through `ArcSwap`, and the live
//! per-pool and per-route state (retry budget, connection pool, surge queue,
//! affinity table, rate limiter, micro-cache) that outlives snapshots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::balance::{self, Candidate, Picker};
use crate::cache::MicroCache;
use crate::config::{Config, EndpointSpec, Pool, Route, Sticky, Timeouts};
use crate::endpoint::{EndpointState, Endpoints, InFlight};
use crate::metrics::{
    CODE_CLASSES, CacheLabels, FailoverLabels, Metrics, PoolClassLabels, PoolLabels,
    PoolReasonLabels, SessionClassLabels,
};
use crate::proxy::upstream::{self, UpstreamClient};
use crate::queue::SurgeQueue;
use crate::ratelimit::Limiter;
use crate::retry_budget::RetryBudget;
use crate::sticky::StickySecret;

/// One endpoint of a pool in a snapshot.
#[derive(Debug, Clone)]
pub struct Member {
    /// Live state (shared with every snapshot that has this endpoint).
    pub state: Arc<EndpointState>,
    /// Configured weight.
    pub weight: u32,
}

/// Sticky-session data of a pool in one snapshot.
#[derive(Debug)]
pub struct StickyRuntime {
    /// Settings.
    pub settings: Sticky,
    /// Signs endpoint ids.
    pub secret: StickySecret,
    /// Endpoint by cookie id, draining endpoints included.
    pub by_id: HashMap<String, Arc<EndpointState>>,
    /// Endpoint by cookie id under the secret a rotation replaced, and
    /// until when those ids are accepted.
    pub by_previous_id: Option<(HashMap<String, Arc<EndpointState>>, Instant)>,
}

impl StickyRuntime {
    /// The endpoint a cookie id names, under the current secret or, within
    /// one cookie lifetime of a rotation, the previous one.
    pub fn endpoint(&self, id: &str, now: Instant) -> Option<&Arc<EndpointState>> {
        self.by_id.get(id).or_else(|| {
            self.by_previous_id
                .as_ref()
                .filter(|(_, until)| now < *until)
                .and_then(|(ids, _)| ids.get(id))
        })
    }
}

/// A pool as routed by one snapshot.
pub struct PoolRuntime {
    /// Settings.
    pub settings: Pool,
    /// Endpoints (draining ones included; they take no new sessions).
    pub members: Vec<Member>,
    /// The selection algorithm.
    pub picker: &'static dyn Picker,
    /// Live state shared across snapshots.
    pub live: Arc<PoolLive>,
    /// Sticky sessions, when on.
    pub sticky: Option<StickyRuntime>,
    /// Index of the backup pool in the snapshot.
    pub backup: Option<usize>,
    /// When each endpoint listed as starting by discovery (not a member
    /// yet) was first listed so.
    pub starting_listed: Vec<Instant>,
}

/// Where a new session goes ([`PoolRuntime::place_session`]).
#[derive(Debug)]
pub enum SessionHome {
    /// Born on this endpoint.
    At(Arc<EndpointState>),
    /// Wait for pods that are starting.
    Hold,
    /// No endpoint below its limit: placed as any request is.
    Anywhere,
}

impl std::fmt::Debug for PoolRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolRuntime")
            .field("name", &self.settings.name)
            .field("members", &self.members.len())
            .finish()
    }
}

impl PoolRuntime {
    /// Picks an endpoint that takes new requests, is not in `exclude` and is
    /// below `maxInFlightPerEndpoint`. Weights are scaled by slow start.
    pub fn pick(&self, now: Instant, exclude: &[usize], entropy: u64) -> Option<usize> {
        let limit = self.settings.max_in_flight_per_endpoint;
        let slow_start = self.settings.slow_start.as_ref();
        let mut index = Vec::with_capacity(self.members.len());
        let mut candidates = Vec::with_capacity(self.members.len());
        for (i, m) in self.members.iter().enumerate() {
            if exclude.contains(&i) || !m.state.is_available(now) {
                continue;
            }
            let in_flight = m.state.in_flight();
            if limit.is_some_and(|l| in_flight >= l) {
                continue;
            }
            index.push(i);
            candidates.push(Candidate {
                weight: f64::from(m.weight) * m.state.slow_start_factor(slow_start, now),
                in_flight,
            });
        }
        self.picker.pick(&candidates, entropy).map(|c| index[c])
    }

    /// Picks an endpoint and counts the request on it, respecting
    /// `maxInFlightPerEndpoint` atomically.
    pub fn reserve(&self, now: Instant, exclude: &[usize]) -> Option<(usize, InFlight)> {
        let limit = self.settings.max_in_flight_per_endpoint;
        // Another request may take the last slot between the pick and the
        // reservation; a few tries settle it.
        for _ in 0..4 {
            let idx = self.pick(now, exclude, fastrand::u64(..))?;
            if let Some(guard) = self.members[idx].state.try_start_request(limit) {
                return Some((idx, guard));
            }
        }
        None
    }

    /// Pods on their way at `now`: listed as starting, or members never
    /// healthy yet, for at most `sessionPlacement.startingFor` since listed.
    pub fn starting(&self, now: Instant) -> usize {
        let grace = self.sticky.as_ref().map_or(
            crate::config::SessionPlacement::default().starting_for,
            |s| s.settings.placement.starting_for,
        );
        self.starting_listed
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < grace)
            .count()
            + self
                .members
                .iter()
                .filter(|m| m.state.is_starting(now, grace))
                .count()
    }

    /// Where a request that will create a session goes: by live sessions
    /// (in-flight requests breaking ties) among available endpoints below
    /// the in-flight limit ([`balance::placement`]); `Hold` while pods are
    /// starting and every ready one holds its share, during a login surge,
    /// or while the pods with the fewest sessions are full, when
    /// `may_hold`. `waiting` other new sessions are waiting; the session
    /// began waiting at `since` (pods ready since are the capacity it
    /// waited for).
    pub fn place_session(
        &self,
        now: Instant,
        since: Instant,
        may_hold: bool,
        waiting: u64,
        entropy: u64,
    ) -> SessionHome {
        let limit = self.settings.max_in_flight_per_endpoint;
        let mut index = Vec::with_capacity(self.members.len());
        let mut homes = Vec::with_capacity(self.members.len());
        for (i, m) in self.members.iter().enumerate() {
            if !m.state.is_available(now) {
                continue;
            }
            let in_flight = m.state.in_flight();
            index.push(i);
            homes.push(balance::placement::Home {
                weight: f64::from(m.weight),
                sessions: m.state.session_load(),
                in_flight,
                open: limit.is_none_or(|l| in_flight < l),
                fresh: m.state.ready_after(since),
            });
        }
        let max_wait = self
            .sticky
            .as_ref()
            .map_or(Duration::ZERO, |s| s.settings.placement.max_wait);
        let patience = balance::placement::Patience {
            may_hold: may_hold && !max_wait.is_zero(),
            surge_window: self.live.surge_window(homes.len(), waiting, max_wait, now),
        };
        match balance::placement::place(&homes, self.starting(now), waiting, patience, entropy) {
            Some(balance::placement::Placement::Hold) => SessionHome::Hold,
            Some(balance::placement::Placement::At(h)) => {
                SessionHome::At(self.members[index[h]].state.clone())
            }
            None => SessionHome::Anywhere,
        }
    }

    /// The endpoint a session leaving the overloaded `from` goes to: the
    /// least loaded other one (by in-flight requests, slow start included),
    /// if it is lighter than `from` even after taking this request.
    pub fn relief_for(
        &self,
        now: Instant,
        from: &Arc<EndpointState>,
    ) -> Option<Arc<EndpointState>> {
        let exclude: Vec<usize> = self.index_of(from).into_iter().collect();
        let to = &self.members[self.pick(now, &exclude, fastrand::u64(..))?].state;
        (to.in_flight() + 1 < from.in_flight()).then(|| to.clone())
    }

    /// Whether an established session on `pinned` should move elsewhere
    /// (`mobility: shared`): its pod is above the bounded load.
    pub fn overloaded(&self, pinned: &EndpointState, factor: f64, now: Instant) -> bool {
        let (mut total, mut available) = (0, 0);
        for m in &self.members {
            if m.state.is_available(now) {
                total += m.state.in_flight();
                available += 1;
            }
        }
        balance::placement::overloaded(pinned.in_flight(), total, available, factor)
    }

    /// Whether any endpoint takes new requests (limits aside).
    pub fn has_available(&self, now: Instant) -> bool {
        self.members.iter().any(|m| m.state.is_available(now))
    }

    /// The member index of `state`.
    pub fn index_of(&self, state: &Arc<EndpointState>) -> Option<usize> {
        self.members
            .iter()
            .position(|m| Arc::ptr_eq(&m.state, state))
    }

    /// Whether one more endpoint may be ejected now.
    pub fn may_eject(&self, now: Instant) -> bool {
        let ejected = self
            .members
            .iter()
            .filter(|m| m.state.is_ejected(now))
            .count();
        crate::health::outlier::may_eject(
            self.members.len(),
            ejected,
            self.settings.outlier_detection.max_ejection_percent,
        )
    }
}

/// Metric handles of a pool.
pub struct PoolMetrics {
    /// Responses to clients by status class.
    pub responses: [Counter; 5],
    /// Requests waiting in the surge queue.
    pub queue_depth: Gauge,
    /// Time spent waiting in the queue.
    pub queue_wait: Histogram,
    /// Requests turned away: `full`, `timeout`, `at_capacity`.
    pub queue_rejected: [Counter; 4],
    /// Requests that entered the queue, by [`crate::queue::Class`].
    pub queued: [Counter; 2],
    /// 1 while traffic goes to the backup pool.
    pub using_backup: Gauge,
    /// Switches to the backup pool and back.
    pub failovers: [Counter; 2],
    /// Requests refused by a route's rate limit.
    pub rate_limited: Counter,
    /// Micro-cache lookups: hit, miss, collapsed, bypass.
    pub cache: [Counter; 4],
    /// Retries by cause: index [`RetryCause`].
    pub retries: [Counter; 2],
    /// New sessions that waited for starting pods.
    pub births_held: Counter,
    /// How long they waited.
    pub birth_hold: Histogram,
    /// Established sessions moved off an overloaded pod (`mobility: shared`).
    pub sessions_moved: Counter,
    /// Pods starting (listed, not ready yet; see [`PoolRuntime::starting`]).
    pub starting: Gauge,
}

/// Why a request was sent again: index into [`PoolMetrics::retries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// It never reached an endpoint (connect failure, or a pooled connection
    /// that closed before the request was written).
    NotSent = 0,
    /// The connection failed after sending, before any response byte.
    Reset = 1,
}

/// Why a request found no place: index into [`PoolMetrics::queue_rejected`].
#[derive(Debug, Clone, Copy)]
pub enum Rejection {
    /// The queue was full.
    Full = 0,
    /// It waited past the queue timeout.
    Timeout = 1,
    /// Every endpoint was at its limit and the pool has no queue.
    AtCapacity = 2,
    /// A new session gave its place to an established one.
    Displaced = 3,
}

/// Micro-cache lookup results: index into [`PoolMetrics::cache`].
#[derive(Debug, Clone, Copy)]
pub enum CacheResult {
    /// Served from the cache.
    Hit = 0,
    /// Fetched from upstream (and stored if allowed).
    Miss = 1,
    /// Waited for another request's fetch of the same key.
    Collapsed = 2,
    /// Not cacheable (session, method, directives).
    Bypass = 3,
}

/// Per-pool state that survives reloads.
pub struct PoolLive {
    /// Pool name.
    pub name: String,
    /// In-flight requests and retries, for the retry budget.
    pub budget: Arc<RetryBudget>,
    /// Requests waiting for a slot.
    pub queue: Arc<SurgeQueue>,
    /// The pool in the current snapshot (for the queue's dispatch).
    pub current: ArcSwapOption<PoolRuntime>,
    /// Application-cookie value → endpoint address, learned from responses.
    pub learned: moka::sync::Cache<String, String>,
    /// Live sessions per endpoint.
    pub sessions: crate::sessions::SessionTable,
    /// New sessions waiting for starting pods now.
    pub births_waiting: std::sync::atomic::AtomicU64,
    /// Woken when the endpoints change (a starting pod may be ready).
    pub capacity: tokio::sync::Notify,
    /// When the current login surge began ([`crate::endpoint::clock`]), 0
    /// when none.
    surge_since: std::sync::atomic::AtomicU64,
    /// When each address listed as starting was first seen so.
    starting_seen: Mutex<HashMap<String, Instant>>,
    /// Whether traffic currently goes to the backup pool.
    on_backup: AtomicBool,
    /// Metric handles.
    pub metrics: PoolMetrics,
    client: Mutex<(Timeouts, UpstreamClient, UpstreamClient)>,
}

impl PoolLive {
    /// The upstream client for the current timeouts: pooled connections
    /// for requests that may be sent twice, a new connection for the others
    /// (see [`upstream::fresh_client`]).
    pub fn client(&self, idempotent: bool) -> UpstreamClient {
        let clients = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if idempotent {
            clients.1.clone()
        } else {
            clients.2.clone()
        }
    }

    /// Counts a response sent to a client.
    pub fn count_response(&self, status: u16) {
        self.metrics.responses[crate::metrics::class_index(status)].inc();
    }

    /// A slot freed (or capacity appeared): hand it to the oldest waiter.
    pub fn slot_freed(&self) {
        if !self.queue.has_waiters() {
            return;
        }
        let Some(pool) = self.current.load_full() else {
            return;
        };
        let now = Instant::now();
        let limit = pool.settings.max_in_flight_per_endpoint;
        let max_wait = pool.sticky.as_ref().map(|s| s.settings.placement.max_wait);
        self.queue
            .dispatch(|want| match (want.target, want.class, max_wait) {
                (Some(pinned), _, _) if pinned.takes_sticky(now) => pinned.try_start_request(limit),
                // A new session in a sticky pool is born where the capacity is,
                // and may wait for pods that are starting.
                (None, crate::queue::Class::New, Some(max_wait)) => {
                    let may_hold = now.saturating_duration_since(want.since) < max_wait;
                    match pool.place_session(
                        now,
                        want.since,
                        may_hold,
                        want.other_births,
                        fastrand::u64(..),
                    ) {
                        SessionHome::At(home) => home.try_start_request(limit).map(|mut g| {
                            g.mark_birth();
                            g
                        }),
                        SessionHome::Hold => None,
                        SessionHome::Anywhere => pool.reserve(now, &[]).map(|(_, guard)| guard),
                    }
                }
                // Its pod is gone or unhealthy: the session moves anyway.
                _ => pool.reserve(now, &[]).map(|(_, guard)| guard),
            });
    }

    /// Whether a login surge (`waiting` new sessions over `ready` pods)
    /// may still wait for a scale-out at `now`: for `max_wait` from the
    /// surge's start. A surge ends when no new session waits, so a steady
    /// stream of logins waits at most once.
    pub fn surge_window(
        &self,
        ready: usize,
        waiting: u64,
        max_wait: Duration,
        now: Instant,
    ) -> bool {
        let since = &self.surge_since;
        if !balance::placement::is_surge(ready, waiting) {
            if waiting == 0 {
                since.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let stamp = crate::endpoint::clock(now);
        let began = match since.compare_exchange(0, stamp, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => stamp,
            Err(began) => began,
        };
        Duration::from_nanos(stamp.saturating_sub(began)) < max_wait
    }

    /// The first-listed times of the addresses listed as starting now
    /// (others are forgotten).
    fn starting_since(&self, addresses: &[&str], now: Instant) -> Vec<Instant> {
        let mut seen = self.starting_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|a, _| addresses.contains(&a.as_str()));
        addresses
            .iter()
            .map(|a| *seen.entry((*a).to_string()).or_insert(now))
            .collect()
    }

    /// Whether traffic currently goes to the backup pool.
    pub fn is_on_backup(&self) -> bool {
        self.on_backup.load(Ordering::Relaxed)
    }

    /// Records whether the backup pool is in use; logs and counts changes.
    pub fn set_on_backup(&self, on: bool, backup: &str) {
        if self.on_backup.swap(on, Ordering::Relaxed) == on {
            return;
        }
        self.metrics.using_backup.set(i64::from(on));
        self.metrics.failovers[usize::from(!on)].inc();
        if on {
            tracing::warn!(pool = %self.name, %backup, "no healthy endpoint: failing over to the backup pool");
        } else {
            tracing::info!(pool = %self.name, %backup, "primary pool healthy again: traffic returns from the backup pool");
        }
    }
}

/// Live pool state by name.
pub struct Pools {
    map: Mutex<HashMap<String, Arc<PoolLive>>>,
    metrics: Metrics,
}

impl Pools {
    /// An empty set.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Live state for `pool`, with an upstream client matching its timeouts.
    pub fn get_or_create(&self, pool: &Pool) -> Arc<PoolLive> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = map.get(&pool.name) {
            let mut client = live.client.lock().unwrap_or_else(|p| p.into_inner());
            if client.0 != pool.timeouts {
                *client = (
                    pool.timeouts.clone(),
                    upstream::client(&pool.timeouts),
                    upstream::fresh_client(&pool.timeouts),
                );
            }
            return live.clone();
        }
        let m = &self.metrics;
        let labels = PoolLabels {
            pool: pool.name.clone(),
        };
        let reason = |reason| {
            m.queue_rejected.get_or_create_owned(&PoolReasonLabels {
                pool: pool.name.clone(),
                reason,
            })
        };
        let live = Arc::new(PoolLive {
            name: pool.name.clone(),
            budget: Arc::default(),
            queue: Arc::default(),
            current: ArcSwapOption::empty(),
            learned: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
            // Its horizon is set from the config by every snapshot build.
            sessions: crate::sessions::SessionTable::new(
                crate::config::SessionPlacement::default().live_for,
            ),
            births_waiting: std::sync::atomic::AtomicU64::new(0),
            capacity: tokio::sync::Notify::new(),
            surge_since: std::sync::atomic::AtomicU64::new(0),
            starting_seen: Mutex::default(),
            on_backup: AtomicBool::new(false),
            metrics: PoolMetrics {
                responses: CODE_CLASSES.map(|c| {
                    m.pool_responses.get_or_create_owned(&PoolClassLabels {
                        pool: pool.name.clone(),
                        code_class: c,
                    })
                }),
                queue_depth: m.queue_depth.get_or_create_owned(&labels),
                queue_wait: m.queue_wait.get_or_create_owned(&labels),
                queue_rejected: [
                    reason("full"),
                    reason("timeout"),
                    reason("at_capacity"),
                    reason("displaced"),
                ],
                queued: ["established", "new"].map(|class| {
                    m.queued.get_or_create_owned(&SessionClassLabels {
                        pool: pool.name.clone(),
                        class,
                    })
                }),
                using_backup: m.using_backup.get_or_create_owned(&labels),
                failovers: ["backup", "primary"].map(|to| {
                    m.failovers.get_or_create_owned(&FailoverLabels {
                        pool: pool.name.clone(),
                        to,
                    })
                }),
                rate_limited: m.rate_limited.get_or_create_owned(&labels),
                cache: ["hit", "miss", "collapsed", "bypass"].map(|r| {
                    m.cache_lookups.get_or_create_owned(&CacheLabels {
                        pool: pool.name.clone(),
                        result: r,
                    })
                }),
                retries: ["not_sent", "reset"].map(|r| {
                    m.pool_retries.get_or_create_owned(&PoolReasonLabels {
                        pool: pool.name.clone(),
                        reason: r,
                    })
                }),
                births_held: m.births_held.get_or_create_owned(&labels),
                birth_hold: m.birth_hold.get_or_create_owned(&labels),
                sessions_moved: m.sessions_moved.get_or_create_owned(&labels),
                starting: m.starting_endpoints.get_or_create_owned(&labels),
            },
            client: Mutex::new((
                pool.timeouts.clone(),
                upstream::client(&pool.timeouts),
                upstream::fresh_client(&pool.timeouts),
            )),
        });
        map.insert(pool.name.clone(), live.clone());
        live
    }

    /// Every pool's live state.
    pub fn all(&self) -> Vec<Arc<PoolLive>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Per-route state that survives reloads: the rate limiter and the micro-cache.
pub struct RouteLive {
    /// Token buckets by client address.
    pub limiter: Option<Limiter>,
    /// The micro-cache.
    pub cache: Option<MicroCache>,
}

/// Live route state, keyed by what identifies a route (host, prefix, pool)
/// and rebuilt when its settings change.
#[derive(Default)]
pub struct Routes {
    map: Mutex<HashMap<String, (Route, Arc<RouteLive>)>>,
}

impl Routes {
    fn get_or_create(&self, route: &Route) -> Arc<RouteLive> {
        let key = format!(
            "{}|{}|{}",
            route
                .host
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            route.path_prefix,
            route.pool
        );
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, live)) = map.get(&key)
            && known == route
        {
            return live.clone();
        }
        let live = Arc::new(RouteLive {
            limiter: route.rate_limit.as_ref().map(Limiter::new),
            cache: route.cache.as_ref().map(MicroCache::new),
        });
        map.insert(key, (route.clone(), live.clone()));
        live
    }
}

/// An immutable view of the config with live state attached.
#[derive(Debug)]
pub struct Snapshot {
    /// The config it was built from.
    pub config: Arc<Config>,
    /// Routes in match order, each with its pool's index.
    pub routes: Vec<(Route, usize)>,
    /// Live state of each route, by route index.
    pub route_live: Vec<Arc<RouteLive>>,
    /// Pools.
    pub pools: Vec<Arc<PoolRuntime>>,
}

impl std::fmt::Debug for RouteLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLive").finish_non_exhaustive()
    }
}

/// What a snapshot is built from besides the config.
pub struct Inputs<'a> {
    /// Live endpoint state.
    pub endpoints: &'a Endpoints,
    /// Live pool state.
    pub pools: &'a Pools,
    /// Live route state.
    pub routes: &'a Routes,
    /// Endpoints of each pool, from every discovery source.
    pub endpoint_lists: &'a dyn Fn(&str) -> Vec<EndpointSpec>,
    /// Whether a pool's endpoints count as present at start (no slow start,
    /// no wait for a first health check).
    pub initial: &'a dyn Fn(&str) -> bool,
    /// Per-pool sticky secrets (random ones persist across reloads; a
    /// rotated one stays accepted for a cookie lifetime).
    pub secrets: &'a dyn Fn(&str, &crate::config::Sticky) -> crate::sticky::Keys,
}

impl Snapshot {
    /// Builds a snapshot, reusing live state for endpoints, pools and routes
    /// that already exist.
    pub fn build(config: Arc<Config>, inputs: &Inputs<'_>) -> Self {
        let now = Instant::now();
        let names: Vec<&String> = config.pools.keys().collect();
        let mut runtimes = Vec::with_capacity(config.pools.len());
        for (name, pool) in &config.pools {
            let initial = (inputs.initial)(name);
            let live = inputs.pools.get_or_create(pool);
            let (starting, listed): (Vec<EndpointSpec>, Vec<EndpointSpec>) =
                (inputs.endpoint_lists)(name)
                    .into_iter()
                    .partition(|e| e.starting);
            // A pod that served before and is not ready now (failing its
            // readiness probe) is not capacity on its way.
            let starting: Vec<&str> = starting
                .iter()
                .filter(|e| !inputs.endpoints.contains(name, &e.address))
                .map(|e| e.address.as_str())
                .collect();
            let starting_listed = live.starting_since(&starting, now);
            if let Some(st) = &pool.sticky {
                live.sessions.set_live_for(st.placement.live_for);
            }
            let members: Vec<Member> = listed
                .into_iter()
                .map(|e| {
                    let state = inputs.endpoints.get_or_create(
                        name,
                        &e.address,
                        pool.health_check.as_ref(),
                        initial,
                    );
                    state.set_draining(e.draining, now);
                    Member {
                        state,
                        weight: e.weight,
                    }
                })
                .collect();
            let hold = if pool.sticky.is_some() {
                pool.drain_timeout
            } else {
                Duration::ZERO
            };
            let pool_states = inputs.endpoints.of_pool(name);
            for s in &pool_states {
                s.set_sticky_hold(hold);
                s.set_queue_hook(pool.max_in_flight_per_endpoint.map(|_| live.clone()));
            }
            let sticky = pool.sticky.as_ref().map(|settings| {
                let keys = (inputs.secrets)(name, settings);
                let ids = |secret: &StickySecret| {
                    pool_states
                        .iter()
                        .map(|s| (secret.endpoint_id(name, s.address()), s.clone()))
                        .collect::<HashMap<_, _>>()
                };
                StickyRuntime {
                    settings: settings.clone(),
                    by_id: ids(&keys.current),
                    by_previous_id: keys.previous.map(|(old, until)| (ids(&old), until)),
                    secret: keys.current,
                }
            });
            let backup = pool
                .backup_pool
                .as_ref()
                .and_then(|b| names.iter().position(|n| *n == b));
            runtimes.push(Arc::new(PoolRuntime {
                settings: pool.clone(),
                members,
                picker: balance::picker(pool.balance),
                live,
                sticky,
                backup,
                starting_listed,
            }));
        }
        for rt in &runtimes {
            rt.live.current.store(Some(rt.clone()));
            rt.live.metrics.starting.set(rt.starting(now) as i64);
        }
        let index: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let routes: Vec<(Route, usize)> = config
            .routes
            .iter()
            .map(|r| (r.clone(), index[r.pool.as_str()]))
            .collect();
        let route_live = config
            .routes
            .iter()
            .map(|r| inputs.routes.get_or_create(r))
            .collect();
        Self {
            config,
            routes,
            route_live,
            pools: runtimes,
        }
    }

    /// Every endpoint state the snapshot routes to.
    pub fn members(&self) -> Vec<Arc<EndpointState>> {
        self.pools
            .iter()
            .flat_map(|p| p.members.iter().map(|m| m.state.clone()))
            .collect()
    }

    /// The route index and pool serving `host` (lower case, no port) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<(usize, &Arc<PoolRuntime>)> {
        self.routes
            .iter()
            .position(|(r, _)| {
                r.host.as_ref().is_none_or(|h| h.matches(host)) && path.starts_with(&r.path_prefix)
            })
            .map(|i| (i, &self.pools[self.routes[i].1]))
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Arc<PoolRuntime>> {
        self.pools.iter().find(|p| p.settings.name == name)
    }
}
