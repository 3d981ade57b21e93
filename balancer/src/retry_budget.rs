//! Retry budget: retries in flight may be at most a percentage of the
//! requests in flight (with a floor), so retries cannot multiply an outage
//! (Envoy's `retry_budget`: 20% with a minimum concurrency of 3).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether one more retry may start.
pub fn allows(
    active_requests: u64,
    active_retries: u64,
    budget_percent: u32,
    min_concurrency: u32,
) -> bool {
    let limit = (active_requests * u64::from(budget_percent) / 100).max(u64::from(min_concurrency));
    active_retries < limit
}

/// A pool's live request and retry counts.
#[derive(Debug, Default)]
pub struct RetryBudget {
    active_requests: AtomicU64,
    active_retries: AtomicU64,
}

impl RetryBudget {
    /// Counts a request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> Active {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        Active {
            budget: self.clone(),
            retry: false,
        }
    }

    /// Counts a retry in flight until the guard drops, if the budget allows one.
    pub fn try_start_retry(
        self: &Arc<Self>,
        budget_percent: u32,
        min_concurrency: u32,
    ) -> Option<Active> {
        let requests = self.active_requests.load(Ordering::Relaxed);
        // Check and count in one step, so concurrent retries cannot overshoot.
        self.active_retries
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |retries| {
                allows(requests, retries, budget_percent, min_concurrency).then_some(retries + 1)
            })
            .ok()?;
        Some(Active {
            budget: self.clone(),
            retry: true,
        })
    }

    /// Requests in flight.
    pub fn active_requests(&self) -> u64 {
        self.active_requests.load(Ordering::Relaxed)
    }
}

/// Keeps a request or retry counted while alive.
#[derive(Debug)]
pub struct Active {
    budget: Arc<RetryBudget>,
    retry: bool,
}

impl Drop for Active {
    fn drop(&mut self) {
        let counter = if self.retry {
            &self.budget.active_retries
        } else {
            &self.budget.active_requests
        };
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_allows_min_concurrency() {
        assert!(allows(0, 0, 20, 3));
        assert!(allows(1, 2, 20, 3));
        assert!(!allows(1, 3, 20, 3));
    }

    #[test]
    fn percentage_above_the_floor() {
        assert!(allows(100, 19, 20, 3));
        assert!(!allows(100, 20, 20, 3));
        assert!(!allows(100, 0, 0, 0));
    }

    #[test]
    fn guards_count_and_release() {
        let b = Arc::new(RetryBudget::default());
        let reqs: Vec<_> = (0..10).map(|_| b.start_request()).collect();
        assert_eq!(b.active_requests(), 10);
        let r: Vec<_> = (0..3).filter_map(|_| b.try_start_retry(20, 3)).collect();
        assert_eq!(r.len(), 3);
        assert!(b.try_start_retry(20, 3).is_none());
        drop(r);
        assert!(b.try_start_retry(20, 3).is_some());
        drop(reqs);
        assert_eq!(b.active_requests(), 0);
    }
}
