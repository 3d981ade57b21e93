//! Slow start: a new or recovered endpoint's weight ramps up over a window
//! (Envoy's semantics), so a cold pod (empty opcache, JIT not warm) is not
//! flooded the moment it turns healthy.

use std::time::{Duration, Instant};

/// Slow-start settings of a pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    /// Length of the ramp.
    pub window: Duration,
    /// Shape of the ramp: 1.0 is linear; larger values ramp faster early on.
    pub aggression: f64,
    /// Floor of the weight during the ramp, as a fraction (0.1 = 10%).
    pub min_weight_fraction: f64,
}

// Settings come from validated config: never NaN.
impl Eq for SlowStart {}

impl Default for SlowStart {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            aggression: 1.0,
            min_weight_fraction: 0.1,
        }
    }
}

/// The weight factor at `now` for an endpoint whose ramp began at `since`:
/// `max(min_weight, (elapsed / window)^(1 / aggression))`, and 1.0 once the
/// window has passed. Elapsed time counts at least one second, as in Envoy.
pub fn factor(settings: &SlowStart, since: Instant, now: Instant) -> f64 {
    let window = settings.window.as_secs_f64();
    let elapsed = now.saturating_duration_since(since).as_secs_f64();
    if window <= 0.0 || elapsed >= window {
        return 1.0;
    }
    let time_factor = elapsed.max(1.0).min(window) / window;
    let aggression = if settings.aggression > 0.0 {
        settings.aggression
    } else {
        1.0
    };
    time_factor
        .powf(1.0 / aggression)
        .max(settings.min_weight_fraction)
        .min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &SlowStart, secs: f64) -> f64 {
        let t0 = Instant::now();
        factor(s, t0, t0 + Duration::from_secs_f64(secs))
    }

    #[test]
    fn linear_ramp_with_floor() {
        let s = SlowStart {
            window: Duration::from_secs(10),
            aggression: 1.0,
            min_weight_fraction: 0.1,
        };
        assert_eq!(at(&s, 0.0), 0.1);
        assert_eq!(
            at(&s, 0.5),
            0.1,
            "elapsed counts at least 1 s: 1/10 = floor"
        );
        assert!((at(&s, 5.0) - 0.5).abs() < 1e-9);
        assert!((at(&s, 9.0) - 0.9).abs() < 1e-9);
        assert_eq!(at(&s, 10.0), 1.0);
        assert_eq!(at(&s, 100.0), 1.0);
    }

    #[test]
    fn aggression_ramps_faster_early() {
        let s = SlowStart {
            window: Duration::from_secs(100),
            aggression: 2.0,
            min_weight_fraction: 0.0,
        };
        assert!((at(&s, 25.0) - 0.5).abs() < 1e-9, "sqrt(0.25)");
        let linear = SlowStart {
            aggression: 1.0,
            ..s
        };
        assert!(at(&s, 25.0) > at(&linear, 25.0));
    }

    #[test]
    fn monotonic_over_the_window() {
        let s = SlowStart::default();
        let mut last = 0.0;
        for i in 0..=300 {
            let f = at(&s, f64::from(i) / 10.0);
            assert!(f >= last && f <= 1.0);
            last = f;
        }
        assert_eq!(last, 1.0);
    }

    #[test]
    fn degenerate_settings() {
        let zero = SlowStart {
            window: Duration::ZERO,
            ..SlowStart::default()
        };
        assert_eq!(at(&zero, 0.0), 1.0);
        let bad = SlowStart {
            aggression: 0.0,
            window: Duration::from_secs(10),
            min_weight_fraction: 0.0,
        };
        assert!(
            (at(&bad, 5.0) - 0.5).abs() < 1e-9,
            "non-positive aggression acts as linear"
        );
    }
}
