//! Endpoint selection: pure pickers behind one small trait, one algorithm per file.
//!
//! A picker sees only the endpoints that may take a request now (healthy, not
//! ejected, not draining, not already tried) and their live load. It does no
//! I/O and keeps no state; the caller supplies `entropy` for tie-breaking and
//! random choices, so every decision is reproducible in tests.

mod least_conn;
mod p2c;
pub mod placement;
pub mod slow_start;

pub use least_conn::LeastConnections;
pub use p2c::PowerOfTwoChoices;

use std::cmp::Ordering;

use crate::config::Balance;

/// One selectable endpoint as the picker sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Effective weight (configured weight, possibly reduced by slow start); > 0.
    pub weight: f64,
    /// Requests (and upgraded connections) in flight to it.
    pub in_flight: u64,
}

impl Candidate {
    /// Compares load keys `in_flight / weight`: less is less loaded. An idle
    /// endpoint has key 0 whatever its weight (as HAProxy's leastconn), so
    /// ties are common at low load and are broken by weight (see
    /// [`LeastConnections`]), which honours weights when the pool is quiet.
    pub fn cmp_load(&self, other: &Self) -> Ordering {
        let mine = self.in_flight as f64 * other.weight;
        let theirs = other.in_flight as f64 * self.weight;
        mine.partial_cmp(&theirs).unwrap_or(Ordering::Equal)
    }
}

/// An endpoint-selection algorithm.
pub trait Picker: Send + Sync {
    /// Index of the chosen candidate, or `None` when there are none.
    fn pick(&self, candidates: &[Candidate], entropy: u64) -> Option<usize>;
}

/// The picker for a configured algorithm.
pub fn picker(balance: Balance) -> &'static dyn Picker {
    match balance {
        Balance::LeastConnections => &LeastConnections,
        Balance::PowerOfTwoChoices => &PowerOfTwoChoices,
    }
}
