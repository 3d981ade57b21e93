//! Active health: `rise` consecutive successes bring an endpoint up, `fall`
//! consecutive failures take it down.

/// A change of an endpoint's active-check state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The endpoint became healthy.
    Up,
    /// The endpoint became unhealthy.
    Down,
}

/// Counts consecutive check results against rise/fall thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCounter {
    rise: u32,
    fall: u32,
    healthy: bool,
    /// Results in a row that disagree with the current state.
    streak: u32,
    /// A new endpoint waits for its first check; one success brings it up.
    awaiting_first: bool,
}

impl HealthCounter {
    /// A counter for an endpoint already considered healthy (present at start-up).
    pub fn healthy(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy: true,
            streak: 0,
            awaiting_first: false,
        }
    }

    /// A counter for an endpoint added while running: down until its first
    /// check passes, so traffic never reaches a pod that has not answered yet.
    pub fn awaiting_first_check(rise: u32, fall: u32) -> Self {
        Self {
            healthy: false,
            awaiting_first: true,
            ..Self::healthy(rise, fall)
        }
    }

    /// Whether the endpoint is up.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Changes the thresholds (config reload) without losing the state.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Records one check result; returns the transition it caused, if any.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = match (ok, self.awaiting_first) {
            (true, true) => 1,
            (true, false) => self.rise,
            (false, _) => self.fall,
        };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.awaiting_first = false;
        self.healthy = ok;
        Some(if ok { Transition::Up } else { Transition::Down })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(counter: &mut HealthCounter, results: &[bool]) -> Vec<Option<Transition>> {
        results.iter().map(|&ok| counter.record(ok)).collect()
    }

    #[test]
    fn goes_down_after_fall_failures_in_a_row() {
        let mut c = HealthCounter::healthy(2, 3);
        assert_eq!(run(&mut c, &[false, false]), [None, None]);
        assert!(c.is_healthy());
        assert_eq!(c.record(false), Some(Transition::Down));
        assert!(!c.is_healthy());
        assert_eq!(c.record(false), None);
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut c = HealthCounter::healthy(2, 3);
        assert_eq!(run(&mut c, &[false, false, true, false, false]), [None; 5]);
        assert!(c.is_healthy());
    }

    #[test]
    fn comes_up_after_rise_successes_in_a_row() {
        let mut c = HealthCounter::healthy(2, 1);
        assert_eq!(c.record(false), Some(Transition::Down));
        assert_eq!(run(&mut c, &[true, false, true]), [None; 3]);
        assert_eq!(c.record(true), Some(Transition::Up));
        assert!(c.is_healthy());
    }

    #[test]
    fn new_endpoint_needs_one_success_then_normal_thresholds() {
        let mut c = HealthCounter::awaiting_first_check(3, 2);
        assert!(!c.is_healthy());
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), Some(Transition::Up));
        assert_eq!(run(&mut c, &[false]), [None]);
        assert_eq!(c.record(false), Some(Transition::Down));
        assert_eq!(run(&mut c, &[true, true]), [None, None]);
        assert_eq!(c.record(true), Some(Transition::Up));
    }

    #[test]
    fn thresholds_change_without_losing_state() {
        let mut c = HealthCounter::healthy(2, 5);
        run(&mut c, &[false, false]);
        c.set_thresholds(2, 3);
        assert_eq!(c.record(false), Some(Transition::Down));
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut c = HealthCounter::healthy(0, 0);
        assert_eq!(c.record(false), Some(Transition::Down));
        assert_eq!(c.record(true), Some(Transition::Up));
    }
}
