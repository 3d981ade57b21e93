//! Time-windowed samples: averages over the last N seconds.

use std::collections::VecDeque;
use std::time::Duration;

/// Samples `(time in ms, value)`, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    items: VecDeque<(i64, f64)>,
    /// When the data began: the first sample, or the first after a gap
    /// that left no sample within `keep`.
    since_ms: Option<i64>,
}

impl Samples {
    /// Adds a sample and drops those older than `keep` before `now_ms`.
    pub fn push(&mut self, now_ms: i64, value: f64, keep: Duration) {
        let horizon = now_ms - keep.as_millis() as i64;
        // A gap is a newest sample older than the horizon; one exactly at it
        // (a sync period as long as the window) is continuous data.
        if self.items.back().is_none_or(|(t, _)| *t < horizon) {
            self.since_ms = Some(now_ms);
        }
        while self.items.front().is_some_and(|(t, _)| *t <= horizon) {
            self.items.pop_front();
        }
        self.items.push_back((now_ms, value));
    }

    /// Average of the samples in `(now_ms - window, now_ms]`, if any.
    pub fn average(&self, now_ms: i64, window: Duration) -> Option<f64> {
        let from = now_ms - window.as_millis() as i64;
        let (sum, n) = self
            .items
            .iter()
            .rev()
            .take_while(|(t, _)| *t > from)
            .fold((0.0, 0usize), |(s, n), (_, v)| (s + v, n + 1));
        (n > 0).then(|| sum / n as f64)
    }

    /// How long the data has run without a gap as long as `keep`, up to
    /// `now_ms`. Not bounded by `keep`: the retained samples alone never
    /// reach back a whole `keep` (the one at the horizon is dropped), so
    /// they cannot tell a full window from one tick short of it.
    pub fn span(&self, now_ms: i64) -> Duration {
        self.since_ms
            .map(|t| Duration::from_millis((now_ms - t).max(0) as u64))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_over_the_window_only() {
        let mut s = Samples::default();
        let keep = Duration::from_secs(60);
        for i in 0..10 {
            s.push(i * 1000, i as f64, keep);
        }
        assert_eq!(
            s.average(9000, Duration::from_secs(3)),
            Some((7.0 + 8.0 + 9.0) / 3.0)
        );
        assert_eq!(s.average(9000, Duration::from_secs(60)), Some(4.5));
        assert_eq!(s.average(30_000, Duration::from_secs(3)), None);
        assert_eq!(s.span(9000), Duration::from_secs(9));
    }

    #[test]
    fn a_sync_period_as_long_as_the_window_is_continuous_data() {
        let mut s = Samples::default();
        let keep = Duration::from_secs(60);
        for i in 0..5 {
            s.push(i * 60_000, 1.0, keep);
        }
        assert_eq!(s.span(240_000), Duration::from_secs(240));
        // A real gap (longer than the window) restarts the span.
        s.push(240_000 + 61_000, 1.0, keep);
        assert_eq!(s.span(301_000), Duration::ZERO);
    }

    #[test]
    fn old_samples_are_dropped() {
        let mut s = Samples::default();
        let keep = Duration::from_secs(5);
        for i in 0..20 {
            s.push(i * 1000, 1.0, keep);
        }
        assert_eq!(s.items.len(), 5);
        assert_eq!(s.items.front().map(|i| i.0), Some(15_000));
        // The data reaches back to the first sample, not just the kept ones.
        assert_eq!(s.span(19_000), Duration::from_secs(19));
        // A gap of a whole `keep` starts the data over.
        s.push(30_000, 1.0, keep);
        assert_eq!(s.items.len(), 1);
        assert_eq!(s.span(31_000), Duration::from_secs(1));
        // A shorter gap does not.
        s.push(34_000, 1.0, keep);
        assert_eq!(s.span(34_000), Duration::from_secs(4));
    }
}
