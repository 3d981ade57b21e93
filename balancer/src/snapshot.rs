//! The immutable routing snapshot published through `ArcSwap`, and the live
//! per-pool state (retry budget, connection pool) that outlives snapshots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use crate::balance::{self, Candidate, Picker};
use crate::config::{Config, Pool, Route, Timeouts};
use crate::endpoint::{EndpointState, Endpoints};
use crate::metrics::{CODE_CLASSES, Metrics, PoolClassLabels};
use crate::proxy::upstream::{self, UpstreamClient};
use crate::retry_budget::RetryBudget;

/// One endpoint of a pool in a snapshot.
#[derive(Debug, Clone)]
pub struct Member {
    /// Live state (shared with every snapshot that has this endpoint).
    pub state: Arc<EndpointState>,
    /// Configured weight.
    pub weight: u32,
}

/// A pool as routed by one snapshot.
pub struct PoolRuntime {
    /// Settings.
    pub settings: Pool,
    /// Endpoints.
    pub members: Vec<Member>,
    /// The selection algorithm.
    pub picker: &'static dyn Picker,
    /// Live state shared across snapshots.
    pub live: Arc<PoolLive>,
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
    /// Picks an available endpoint not in `exclude`.
    pub fn pick(&self, now: Instant, exclude: &[usize], entropy: u64) -> Option<usize> {
        let mut index = Vec::with_capacity(self.members.len());
        let mut candidates = Vec::with_capacity(self.members.len());
        for (i, m) in self.members.iter().enumerate() {
            if exclude.contains(&i) || !m.state.is_available(now) {
                continue;
            }
            index.push(i);
            candidates.push(Candidate {
                weight: f64::from(m.weight),
                in_flight: m.state.in_flight(),
            });
        }
        self.picker.pick(&candidates, entropy).map(|c| index[c])
    }

    /// Whether one more endpoint may be ejected now.
    pub fn may_eject(&self, now: Instant) -> bool {
        let states: Vec<_> = self.members.iter().map(|m| m.state.clone()).collect();
        crate::endpoint::pool_may_eject(
            &states,
            self.settings.outlier_detection.max_ejection_percent,
            now,
        )
    }
}

/// Per-pool state that survives reloads.
pub struct PoolLive {
    /// In-flight requests and retries, for the retry budget.
    pub budget: Arc<RetryBudget>,
    /// Responses to clients by status class.
    pub responses: [Counter; 5],
    client: Mutex<(Timeouts, UpstreamClient)>,
}

impl PoolLive {
    /// The upstream client for the current timeouts.
    pub fn client(&self) -> UpstreamClient {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Counts a response sent to a client.
    pub fn count_response(&self, status: u16) {
        self.responses[crate::metrics::class_index(status)].inc();
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
                *client = (pool.timeouts.clone(), upstream::client(&pool.timeouts));
            }
            return live.clone();
        }
        let live = Arc::new(PoolLive {
            budget: Arc::default(),
            responses: CODE_CLASSES.map(|c| {
                self.metrics
                    .pool_responses
                    .get_or_create_owned(&PoolClassLabels {
                        pool: pool.name.clone(),
                        code_class: c,
                    })
            }),
            client: Mutex::new((pool.timeouts.clone(), upstream::client(&pool.timeouts))),
        });
        map.insert(pool.name.clone(), live.clone());
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
    /// Pools.
    pub pools: Vec<PoolRuntime>,
}

impl Snapshot {
    /// Builds a snapshot, reusing live state for endpoints and pools that
    /// already exist. `initial` marks the process start (endpoints start healthy).
    pub fn build(config: Arc<Config>, endpoints: &Endpoints, pools: &Pools, initial: bool) -> Self {
        let mut runtimes = Vec::with_capacity(config.pools.len());
        let mut by_name = HashMap::new();
        for (name, pool) in &config.pools {
            let members = pool
                .endpoints
                .iter()
                .map(|e| Member {
                    state: endpoints.get_or_create(
                        name,
                        &e.address,
                        pool.health_check.as_ref(),
                        initial,
                    ),
                    weight: e.weight,
                })
                .collect();
            by_name.insert(name.clone(), runtimes.len());
            runtimes.push(PoolRuntime {
                settings: pool.clone(),
                members,
                picker: balance::picker(pool.balance),
                live: pools.get_or_create(pool),
            });
        }
        let routes = config
            .routes
            .iter()
            .map(|r| (r.clone(), by_name[&r.pool]))
            .collect();
        Self {
            config,
            routes,
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

    /// The pool serving `host` (lower case, no port) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&PoolRuntime> {
        self.routes
            .iter()
            .find(|(r, _)| {
                r.host.as_ref().is_none_or(|h| h.matches(host)) && path.starts_with(&r.path_prefix)
            })
            .map(|(_, i)| &self.pools[*i])
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&PoolRuntime> {
        self.pools.iter().find(|p| p.settings.name == name)
    }
}
