//! The Kubernetes HPA's `behavior`, as plain functions: stabilization over
//! past recommendations, then rate limits over past scale events.

use std::collections::VecDeque;
use std::time::Duration;

use crate::policy::{Behavior, RateKind, Rules, Select};

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// Past recommendations `(time ms, replicas)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recommendations {
    items: VecDeque<(i64, u32)>,
}

/// Past replica changes `(time ms, delta)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScaleEvents {
    items: VecDeque<(i64, i64)>,
}

impl ScaleEvents {
    /// Records a change of `delta` replicas at `now_ms`.
    pub fn record(&mut self, now_ms: i64, delta: i64, keep: Duration) {
        if delta != 0 {
            self.items.push_back((now_ms, delta));
        }
        while self
            .items
            .front()
            .is_some_and(|(t, _)| *t <= now_ms - ms(keep))
        {
            self.items.pop_front();
        }
    }

    fn added_within(&self, now_ms: i64, period: Duration) -> i64 {
        self.items
            .iter()
            .filter(|(t, d)| *t > now_ms - ms(period) && *d > 0)
            .map(|(_, d)| d)
            .sum()
    }

    fn removed_within(&self, now_ms: i64, period: Duration) -> i64 {
        self.items
            .iter()
            .filter(|(t, d)| *t > now_ms - ms(period) && *d < 0)
            .map(|(_, d)| -d)
            .sum()
    }
}

/// HPA stabilization: a scale-up goes only as high as the lowest
/// recommendation in the scale-up window, a scale-down only as low as the
/// highest recommendation in the scale-down window.
pub fn stabilize(
    recs: &mut Recommendations,
    behavior: &Behavior,
    now_ms: i64,
    recommendation: u32,
    current: u32,
) -> u32 {
    let up_window = ms(behavior.scale_up.stabilization);
    let down_window = ms(behavior.scale_down.stabilization);
    recs.items.push_back((now_ms, recommendation));
    let keep = up_window.max(down_window);
    while recs.items.front().is_some_and(|(t, _)| *t < now_ms - keep) {
        recs.items.pop_front();
    }
    let mut up = recommendation;
    let mut down = recommendation;
    for &(t, r) in &recs.items {
        if t >= now_ms - up_window {
            up = up.min(r);
        }
        if t >= now_ms - down_window {
            down = down.max(r);
        }
    }
    // up <= recommendation <= down: both windows hold this recommendation.
    current.clamp(up, down)
}

/// The rate limit in force for a move from `current` to `desired`, and a
/// description of the policy that limited it (if one did).
pub fn limit_rate(
    events: &ScaleEvents,
    behavior: &Behavior,
    now_ms: i64,
    current: u32,
    desired: u32,
) -> (u32, Option<String>) {
    if desired > current {
        let limit = up_limit(&behavior.scale_up, events, now_ms, current);
        if desired > limit {
            return (
                limit.max(current),
                Some(describe("scale-up", &behavior.scale_up)),
            );
        }
    } else if desired < current {
        let limit = down_limit(&behavior.scale_down, events, now_ms, current);
        if desired < limit {
            return (
                limit.min(current),
                Some(describe("scale-down", &behavior.scale_down)),
            );
        }
    }
    (desired, None)
}

fn describe(direction: &str, rules: &Rules) -> String {
    if rules.select == Select::Disabled {
        return format!("{direction} is disabled");
    }
    let list: Vec<String> = rules
        .policies
        .iter()
        .map(|p| {
            let unit = if p.kind == RateKind::Percent {
                "%"
            } else {
                " pods"
            };
            format!("{}{unit}/{}s", p.value, p.period.as_secs())
        })
        .collect();
    format!(
        "{direction} rate limit ({:?} of {})",
        rules.select,
        list.join(", ")
    )
}

fn up_limit(rules: &Rules, events: &ScaleEvents, now_ms: i64, current: u32) -> u32 {
    if rules.select == Select::Disabled {
        return current;
    }
    let limits = rules.policies.iter().map(|p| {
        let start = (i64::from(current) - events.added_within(now_ms, p.period)).max(0) as f64;
        match p.kind {
            RateKind::Pods => start + f64::from(p.value),
            RateKind::Percent => (start * (1.0 + f64::from(p.value) / 100.0)).ceil(),
        }
    });
    let limit = match rules.select {
        Select::Min => limits.fold(f64::INFINITY, f64::min),
        _ => limits.fold(0.0, f64::max),
    };
    limit.min(f64::from(u32::MAX)) as u32
}

fn down_limit(rules: &Rules, events: &ScaleEvents, now_ms: i64, current: u32) -> u32 {
    if rules.select == Select::Disabled {
        return current;
    }
    let limits = rules.policies.iter().map(|p| {
        let start = (i64::from(current) + events.removed_within(now_ms, p.period)) as f64;
        match p.kind {
            RateKind::Pods => (start - f64::from(p.value)).max(0.0),
            RateKind::Percent => (start * (1.0 - f64::from(p.value) / 100.0)).ceil().max(0.0),
        }
    });
    let limit = match rules.select {
        Select::Min => limits.fold(0.0, f64::max),
        _ => limits.fold(f64::INFINITY, f64::min),
    };
    limit.min(f64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RatePolicy;

    fn secs(s: i64) -> i64 {
        s * 1000
    }

    #[test]
    fn hpa_default_scale_up_is_max_of_100_percent_and_4_pods_per_15s() {
        let b = Behavior::hpa_defaults();
        let events = ScaleEvents::default();
        assert_eq!(
            limit_rate(&events, &b, 0, 2, 100).0,
            6,
            "2 pods: +4 beats +100%"
        );
        assert_eq!(
            limit_rate(&events, &b, 0, 10, 100).0,
            20,
            "10 pods: +100% beats +4"
        );
        assert_eq!(limit_rate(&events, &b, 0, 10, 15), (15, None));
    }

    #[test]
    fn scale_events_in_the_period_count_against_the_limit() {
        let b = Behavior::hpa_defaults();
        let mut events = ScaleEvents::default();
        events.record(secs(0), 4, Duration::from_secs(600));
        // At t=5 s we are at 6 after +4 at t=0: period start was 2 → limit max(2+4, 4) = 6.
        assert_eq!(limit_rate(&events, &b, secs(5), 6, 100).0, 6);
        // After the 15 s period the start is 6 again → 12.
        assert_eq!(limit_rate(&events, &b, secs(16), 6, 100).0, 12);
    }

    #[test]
    fn scale_down_percent_and_pods_with_select() {
        let mut b = Behavior::hpa_defaults();
        let events = ScaleEvents::default();
        assert_eq!(
            limit_rate(&events, &b, 0, 10, 1).0,
            1,
            "100% per 15s allows any scale-down"
        );
        b.scale_down.policies = vec![
            RatePolicy {
                kind: RateKind::Percent,
                value: 50,
                period: Duration::from_secs(60),
            },
            RatePolicy {
                kind: RateKind::Pods,
                value: 2,
                period: Duration::from_secs(60),
            },
        ];
        let (r, why) = limit_rate(&events, &b, 0, 10, 1);
        assert_eq!(r, 5, "Max picks the policy allowing most change: -50%");
        assert!(why.unwrap().contains("scale-down rate limit"));
        b.scale_down.select = Select::Min;
        assert_eq!(limit_rate(&events, &b, 0, 10, 1).0, 8, "Min: -2 pods");
        b.scale_down.select = Select::Disabled;
        assert_eq!(limit_rate(&events, &b, 0, 10, 1).0, 10);
    }

    #[test]
    fn up_policies_with_min_and_disabled() {
        let mut b = Behavior::hpa_defaults();
        let events = ScaleEvents::default();
        b.scale_up.select = Select::Min;
        assert_eq!(
            limit_rate(&events, &b, 0, 10, 100).0,
            14,
            "Min of +100% and +4"
        );
        b.scale_up.select = Select::Disabled;
        let (r, why) = limit_rate(&events, &b, 0, 10, 100);
        assert_eq!(r, 10);
        assert!(why.unwrap().contains("disabled"));
    }

    #[test]
    fn stabilization_keeps_the_highest_recent_recommendation_for_scale_down() {
        let b = Behavior::hpa_defaults();
        let mut recs = Recommendations::default();
        assert_eq!(stabilize(&mut recs, &b, secs(0), 10, 10), 10);
        assert_eq!(
            stabilize(&mut recs, &b, secs(60), 4, 10),
            10,
            "10 is within 300 s"
        );
        assert_eq!(stabilize(&mut recs, &b, secs(299), 3, 10), 10);
        assert_eq!(
            stabilize(&mut recs, &b, secs(301), 3, 10),
            4,
            "the 10 left the window; 4 (t=60) is the max"
        );
        assert_eq!(stabilize(&mut recs, &b, secs(400), 3, 4), 3);
    }

    #[test]
    fn stabilization_window_on_scale_up() {
        let mut b = Behavior::hpa_defaults();
        b.scale_up.stabilization = Duration::from_secs(30);
        let mut recs = Recommendations::default();
        assert_eq!(stabilize(&mut recs, &b, secs(0), 5, 5), 5);
        assert_eq!(
            stabilize(&mut recs, &b, secs(10), 20, 5),
            5,
            "lowest in 30 s is 5"
        );
        assert_eq!(stabilize(&mut recs, &b, secs(31), 20, 5), 20);
        // Scale-up from zero stabilization: immediate.
        let mut recs = Recommendations::default();
        assert_eq!(
            stabilize(&mut recs, &Behavior::hpa_defaults(), secs(0), 9, 2),
            9
        );
    }
}
