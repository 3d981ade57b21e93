//! Passive outlier detection: consecutive failures eject an endpoint for a
//! time that grows with each ejection (Envoy's semantics).

use std::time::{Duration, Instant};

use crate::config::OutlierDetection;

/// Per-endpoint outlier state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutlierState {
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    last_ejection_end: Option<Instant>,
}

/// What one recorded outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing changed state.
    Nothing,
    /// The endpoint was ejected until the given instant.
    Ejected(Instant),
    /// The threshold was reached but the pool's ejection cap forbade it.
    CapReached,
}

impl OutlierState {
    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// When the current ejection ends, if ejected.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.ejected_until.filter(|&until| now < until)
    }

    /// Consecutive failures counted so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Ejections counted for the back-off multiplier.
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Records one request outcome. `may_eject` says whether the pool's
    /// `maxEjectionPercent` allows one more ejection now.
    pub fn record(
        &mut self,
        ok: bool,
        now: Instant,
        settings: &OutlierDetection,
        may_eject: bool,
    ) -> Outcome {
        self.expire(now, settings);
        if ok {
            self.consecutive_failures = 0;
            return Outcome::Nothing;
        }
        if !settings.enabled || self.is_ejected(now) {
            return Outcome::Nothing;
        }
        self.consecutive_failures += 1;
        if self.consecutive_failures < settings.consecutive_5xx {
            return Outcome::Nothing;
        }
        if !may_eject {
            return Outcome::CapReached;
        }
        self.consecutive_failures = 0;
        self.ejections += 1;
        let time = settings
            .base_ejection_time
            .saturating_mul(self.ejections)
            .min(settings.max_ejection_time);
        // Ejection times are bounded by validation; saturate all the same.
        let until = now
            .checked_add(time)
            .unwrap_or_else(|| now + Duration::from_secs(86_400));
        self.ejected_until = Some(until);
        Outcome::Ejected(until)
    }

    /// Ends an ejection early (a successful active check). Returns whether it was ejected.
    ///
    /// A passing check of an endpoint that is not ejected leaves its failure
    /// count alone: a check is not a successful request, and resetting the
    /// count would keep a pod whose `/healthz` passes but whose pages fail from
    /// ever being ejected at low traffic.
    pub fn uneject(&mut self, now: Instant) -> bool {
        let was = self.is_ejected(now);
        if was {
            self.ejected_until = None;
            self.last_ejection_end = Some(now);
            self.consecutive_failures = 0;
        }
        was
    }

    /// Clears the back-off multiplier once an endpoint has stayed in for
    /// `max_ejection_time` since its last ejection ended.
    fn expire(&mut self, now: Instant, settings: &OutlierDetection) {
        if let Some(until) = self.ejected_until
            && now >= until
        {
            self.ejected_until = None;
            self.last_ejection_end = Some(until);
        }
        if let Some(end) = self.last_ejection_end
            && now.saturating_duration_since(end)
                >= settings.max_ejection_time.max(Duration::from_secs(1))
        {
            self.ejections = 0;
            self.last_ejection_end = None;
        }
    }
}

/// Whether one more endpoint may be ejected from a pool of `total` with
/// `ejected` already out: at most `percent`%, but one always may.
pub fn may_eject(total: usize, ejected: usize, percent: u32) -> bool {
    ejected == 0 || (ejected + 1) * 100 <= total * percent as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OutlierDetection {
        OutlierDetection {
            enabled: true,
            consecutive_5xx: 3,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(100),
            max_ejection_percent: 10,
            active_check_ends_ejection: false,
        }
    }

    fn fail(s: &mut OutlierState, now: Instant, n: u32) -> Outcome {
        (0..n)
            .map(|_| s.record(false, now, &settings(), true))
            .last()
            .unwrap()
    }

    #[test]
    fn ejects_after_consecutive_failures() {
        let t0 = Instant::now();
        let mut s = OutlierState::default();
        assert_eq!(fail(&mut s, t0, 2), Outcome::Nothing);
        assert!(!s.is_ejected(t0));
        assert_eq!(
            s.record(false, t0, &settings(), true),
            Outcome::Ejected(t0 + Duration::from_secs(30))
        );
        assert!(s.is_ejected(t0 + Duration::from_secs(29)));
        assert!(!s.is_ejected(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut s = OutlierState::default();
        fail(&mut s, t0, 2);
        s.record(true, t0, &settings(), true);
        assert_eq!(fail(&mut s, t0, 2), Outcome::Nothing);
        assert_eq!(s.consecutive_failures(), 2);
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let t0 = Instant::now();
        let mut s = OutlierState::default();
        let mut now = t0;
        let mut times = Vec::new();
        for _ in 0..5 {
            match fail(&mut s, now, 3) {
                Outcome::Ejected(until) => {
                    times.push((until - now).as_secs());
                    now = until;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(times, [30, 60, 90, 100, 100]);
    }

    #[test]
    fn multiplier_resets_after_a_quiet_max_ejection_time() {
        let t0 = Instant::now();
        let mut s = OutlierState::default();
        let Outcome::Ejected(until) = fail(&mut s, t0, 3) else {
            panic!()
        };
        let later = until + Duration::from_secs(100);
        assert_eq!(
            fail(&mut s, later, 3),
            Outcome::Ejected(later + Duration::from_secs(30))
        );
        assert_eq!(s.ejections(), 1);
    }

    #[test]
    fn failures_while_ejected_do_not_extend() {
        let t0 = Instant::now();
        let mut s = OutlierState::default();
        fail(&mut s, t0, 3);
        assert_eq!(
            fail(&mut s, t0 + Duration::from_secs(1), 10),
            Outcome::Nothing
        );
        assert_eq!(s.ejected_until(t0), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn cap_blocks_ejection_and_keeps_counting() {
        let t0 = Instant::now();
        let mut s = OutlierState::default();
        for _ in 0..2 {
            s.record(false, t0, &settings(), false);
        }
        assert_eq!(s.record(false, t0, &settings(), false), Outcome::CapReached);
        assert!(!s.is_ejected(t0));
        assert_eq!(
            s.record(false, t0, &settings(), true),
            Outcome::Ejected(t0 + Duration::from_secs(30))
        );
    }

    #[test]
    fn disabled_never_ejects() {
        let t0 = Instant::now();
        let mut s = OutlierState::default();
        let off = OutlierDetection {
            enabled: false,
            ..settings()
        };
        for _ in 0..10 {
            assert_eq!(s.record(false, t0, &off, true), Outcome::Nothing);
        }
    }

    #[test]
    fn uneject_by_active_check() {
        let t0 = Instant::now();
        let mut s = OutlierState::default();
        fail(&mut s, t0, 3);
        assert!(s.uneject(t0 + Duration::from_secs(5)));
        assert!(!s.is_ejected(t0 + Duration::from_secs(5)));
        assert!(!s.uneject(t0 + Duration::from_secs(6)));
        // The multiplier is kept: the next ejection is longer.
        assert_eq!(
            fail(&mut s, t0 + Duration::from_secs(6), 3),
            Outcome::Ejected(t0 + Duration::from_secs(66))
        );
    }

    #[test]
    fn a_passing_check_keeps_the_failure_count_of_an_endpoint_in_service() {
        let t0 = Instant::now();
        let mut s = OutlierState::default();
        fail(&mut s, t0, 2);
        assert!(!s.uneject(t0));
        assert_eq!(s.consecutive_failures(), 2);
        assert_eq!(
            s.record(false, t0, &settings(), true),
            Outcome::Ejected(t0 + Duration::from_secs(30))
        );
    }

    #[test]
    fn ejection_cap() {
        assert!(may_eject(1, 0, 10), "one endpoint may always be ejected");
        assert!(may_eject(3, 0, 0));
        assert!(!may_eject(10, 1, 10));
        assert!(may_eject(10, 1, 20));
        assert!(!may_eject(10, 2, 20));
        assert!(may_eject(4, 3, 100));
        assert!(!may_eject(4, 4, 100));
    }

    #[test]
    fn an_ejection_time_past_the_clock_saturates() {
        let t0 = Instant::now();
        let huge = OutlierDetection {
            base_ejection_time: Duration::MAX,
            max_ejection_time: Duration::MAX,
            ..settings()
        };
        let mut s = OutlierState::default();
        let outcome = (0..3)
            .map(|_| s.record(false, t0, &huge, true))
            .last()
            .unwrap();
        assert_eq!(outcome, Outcome::Ejected(t0 + Duration::from_secs(86_400)));
    }
}
