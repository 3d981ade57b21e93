//! Live sticky sessions of a pool: which endpoint each session is pinned to,
//! and how many live sessions each endpoint holds. A session is live while
//! it made a request within `sessionPlacement.liveFor`.
//!
//! The counts predict each pod's future load, which is what placement of
//! new sessions weighs ([`crate::balance::placement`]); they are exported as
//! `usher_balancer_endpoint_sessions`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::endpoint::EndpointState;

/// Most sessions tracked per pool; beyond it the least recently used are
/// forgotten (they keep their pod: the cookie still names it; they only
/// stop counting).
const MAX_SESSIONS: u64 = 500_000;

/// Expires a session once idle for the pool's current `liveFor`, read at
/// every access, so a reload's new horizon applies without a rebuild.
struct IdleFor(Arc<AtomicU64>);

impl IdleFor {
    fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

impl Expiry<String, Arc<EndpointState>> for IdleFor {
    fn expire_after_create(
        &self,
        _key: &String,
        _value: &Arc<EndpointState>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(self.get())
    }

    fn expire_after_read(
        &self,
        _key: &String,
        _value: &Arc<EndpointState>,
        _read_at: Instant,
        _duration_until_expiry: Option<Duration>,
        _last_modified_at: Instant,
    ) -> Option<Duration> {
        Some(self.get())
    }

    fn expire_after_update(
        &self,
        _key: &String,
        _value: &Arc<EndpointState>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.get())
    }
}

/// Session key → the endpoint it is pinned to, counted on the endpoint.
pub struct SessionTable {
    map: moka::sync::Cache<String, Arc<EndpointState>>,
    live_for: Arc<AtomicU64>,
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field(
                "live_for",
                &Duration::from_nanos(self.live_for.load(Ordering::Relaxed)),
            )
            .finish_non_exhaustive()
    }
}

/// What recording a request of a session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// The session was already live on this endpoint.
    Same,
    /// The session is new (or had gone idle past the horizon).
    New,
    /// The session was live on another endpoint and moved here.
    Moved,
}

impl SessionTable {
    /// A table whose sessions stay live for `live_for` after their last request.
    pub fn new(live_for: Duration) -> Self {
        let live_for = Arc::new(AtomicU64::new(live_for.as_nanos() as u64));
        let map = moka::sync::Cache::builder()
            .max_capacity(MAX_SESSIONS)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .expire_after(IdleFor(live_for.clone()))
            // Any removal (idle, replaced by a move, capacity, logout)
            // ends the session on the endpoint it was counted on.
            .eviction_listener(|_key, endpoint: Arc<EndpointState>, _cause| {
                endpoint.session_ended();
            })
            .build();
        Self { map, live_for }
    }

    /// Applies a reloaded horizon (from the next access of each session).
    pub fn set_live_for(&self, live_for: Duration) {
        self.live_for
            .store(live_for.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Records a request of session `key` served by `endpoint`.
    pub fn touch(&self, key: &str, endpoint: &Arc<EndpointState>) -> Touch {
        match self.map.get(key) {
            Some(current) if Arc::ptr_eq(&current, endpoint) => Touch::Same,
            found => {
                endpoint.session_started();
                self.map.insert(key.to_string(), endpoint.clone());
                if found.is_some() {
                    Touch::Moved
                } else {
                    Touch::New
                }
            }
        }
    }

    /// Ends session `key` (the application logged it out).
    pub fn end(&self, key: &str) {
        self.map.invalidate(key);
    }

    /// Ends sessions idle past the horizon now (the pool updater calls it
    /// every second, so counts are exact to within a second).
    pub fn sweep(&self) {
        self.map.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoints;
    use crate::metrics::Metrics;

    fn two() -> (Arc<EndpointState>, Arc<EndpointState>) {
        let all = Endpoints::new(Metrics::default());
        (
            all.get_or_create("p", "127.0.0.1:1", None, true),
            all.get_or_create("p", "127.0.0.1:2", None, true),
        )
    }

    #[test]
    fn counts_follow_births_moves_and_logouts() {
        let (a, b) = two();
        let t = SessionTable::new(Duration::from_secs(60));
        assert_eq!(t.touch("s1", &a), Touch::New);
        assert_eq!(t.touch("s1", &a), Touch::Same);
        assert_eq!(t.touch("s2", &a), Touch::New);
        assert_eq!((a.sessions(), b.sessions()), (2, 0));
        assert_eq!(t.touch("s1", &b), Touch::Moved);
        t.sweep();
        assert_eq!((a.sessions(), b.sessions()), (1, 1));
        t.end("s2");
        t.sweep();
        assert_eq!((a.sessions(), b.sessions()), (0, 1));
    }

    #[test]
    fn idle_sessions_stop_counting() {
        let (a, _) = two();
        let t = SessionTable::new(Duration::from_millis(50));
        t.touch("s1", &a);
        t.touch("s2", &a);
        assert_eq!(a.sessions(), 2);
        // moka's timer wheel expires entries to within about a second.
        std::thread::sleep(Duration::from_millis(1300));
        t.sweep();
        assert_eq!(a.sessions(), 0, "both idle past the horizon");
        assert_eq!(t.touch("s1", &a), Touch::New, "back after idling: new");
        assert_eq!(a.sessions(), 1);
    }

    #[test]
    fn a_longer_horizon_applies_on_the_next_access() {
        let (a, _) = two();
        let t = SessionTable::new(Duration::from_millis(50));
        t.touch("s1", &a);
        t.set_live_for(Duration::from_secs(60));
        assert_eq!(t.touch("s1", &a), Touch::Same);
        std::thread::sleep(Duration::from_millis(1300));
        t.sweep();
        assert_eq!(a.sessions(), 1);
    }
}
