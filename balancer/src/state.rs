//! State shared by listeners, the admin server, health checkers and reloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::endpoint::Endpoints;
use crate::metrics::Metrics;
use crate::snapshot::{Pools, Routes, Snapshot};

/// Everything the request path and the control tasks share.
pub struct Shared {
    /// The current routing snapshot.
    pub snapshot: ArcSwap<Snapshot>,
    /// Live endpoint state.
    pub endpoints: Arc<Endpoints>,
    /// Live pool state.
    pub pools: Pools,
    /// Live route state.
    pub routes: Routes,
    /// Metric families.
    pub metrics: Metrics,
    /// Whether `/readyz` says ready.
    ready: AtomicBool,
    /// Client connections and upgraded tunnels, awaited on drain.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown begins: stop accepting, drain connections.
    pub shutdown: CancellationToken,
    /// Client connections open on every listener, against `maxConnections`.
    pub connections: Arc<crate::connection::ConnLimit>,
    /// The global connection limit when the config sets none (from the
    /// open-file limit).
    pub default_max_connections: usize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// Shared state serving `snapshot`.
    pub fn new(
        snapshot: Snapshot,
        endpoints: Arc<Endpoints>,
        pools: Pools,
        routes: Routes,
        metrics: Metrics,
    ) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            endpoints,
            pools,
            routes,
            metrics,
            ready: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            connections: Arc::default(),
            default_max_connections: crate::connection::default_max_connections(1024),
        }
    }

    /// The global connection limit in force.
    pub fn max_connections(&self) -> usize {
        self.snapshot
            .load()
            .config
            .max_connections
            .unwrap_or(self.default_max_connections)
    }

    /// Whether the balancer is ready for traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Sets readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}
