//! One policy's control loop state, without I/O: a tick takes what was read
//! (or that reading failed) and the target's replicas, and says what to do.
//! The Kubernetes controller and the local scaler both drive it.

use chrono::{DateTime, Utc};

use crate::decide::forecast::{self, DemandHistory};
use crate::decide::{Decision, History, Mode, Observation, decide, demand};
use crate::policy::Policy;
use crate::source::Reading;

/// The scale target's replicas as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replicas {
    /// Replicas asked for (`spec.replicas`).
    pub current: u32,
    /// Ready pods (`status.readyReplicas`).
    pub ready: u32,
}

/// The outcome of one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The decision, reason included.
    pub decision: Decision,
    /// What `decide` was given.
    pub observation: Observation,
    /// `Some(n)` when the target must be scaled to `n`.
    pub scale_to: Option<u32>,
    /// Whether the metrics were missing or stale (the replicas were held).
    pub stale: bool,
}

/// One policy's loop state: the decision history, the last good reading
/// and the last scale.
#[derive(Debug, Clone)]
pub struct Runner {
    policy: Policy,
    history: History,
    last_reading: Option<(DateTime<Utc>, Reading)>,
    last_scale: Option<(DateTime<Utc>, String)>,
    last_step: Option<Step>,
    demand_history: DemandHistory,
}

impl Runner {
    /// A fresh loop for `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            history: History::default(),
            last_reading: None,
            last_scale: None,
            last_step: None,
            demand_history: DemandHistory::default(),
        }
    }

    /// Past demand kept for predictive pre-scaling.
    pub fn demand_history(&self) -> &DemandHistory {
        &self.demand_history
    }

    /// Past demand, for loading a saved history or a Prometheus backfill.
    pub fn demand_history_mut(&mut self) -> &mut DemandHistory {
        &mut self.demand_history
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy (an edited CRD or file), keeping the windows
    /// unless the policy now scales something else.
    pub fn set_policy(&mut self, policy: Policy) {
        if policy.target_ref != self.policy.target_ref
            || policy.pool != self.policy.pool
            || policy.target != self.policy.target
        {
            *self = Self::new(policy);
        } else {
            self.policy = policy;
        }
    }

    /// The mode after the last tick.
    pub fn mode(&self) -> Mode {
        self.history.mode()
    }

    /// The last tick's outcome.
    pub fn last_step(&self) -> Option<&Step> {
        self.last_step.as_ref()
    }

    /// When and why the target was last scaled.
    pub fn last_scale(&self) -> Option<&(DateTime<Utc>, String)> {
        self.last_scale.as_ref()
    }

    /// Records that the target was scaled as `step` asked.
    pub fn scaled(&mut self, now: DateTime<Utc>, reason: &str) {
        self.last_scale = Some((now, reason.to_string()));
    }

    /// One tick. `reading` is `None` when this tick's read failed; the last
    /// good reading stands in until it is older than the policy's
    /// `staleAfter`, then the replicas are held.
    pub fn tick(
        &mut self,
        reading: Option<Reading>,
        replicas: Replicas,
        now: DateTime<Utc>,
    ) -> Step {
        if let Some(r) = reading {
            self.last_reading = Some((now, r));
        }
        let stale_after = chrono::Duration::from_std(self.policy.metrics.stale_after)
            .unwrap_or(chrono::Duration::MAX);
        let fresh = self
            .last_reading
            .filter(|(at, _)| now - *at <= stale_after)
            .map(|(_, r)| r);
        let mut observation = Observation {
            ready_replicas: replicas.ready,
            current_replicas: replicas.current,
            in_flight: fresh.map(|r| r.in_flight),
            queued: fresh.map(|r| r.queued),
            requests_per_second: fresh.and_then(|r| r.requests_per_second),
            p95: fresh.and_then(|r| r.p95),
            partial: fresh.is_some_and(|r| !r.complete()),
            forecast: None,
        };
        if let Some(p) = &self.policy.predictive {
            if let Some((d, _)) = demand(&self.policy, &observation) {
                let keep = forecast::retention(p.weeks, p.lead_time);
                self.demand_history.record(now, d, keep);
            }
            observation.forecast =
                forecast::forecast(&self.demand_history, now, p.lead_time, p.weeks, p.margin)
                    .map(|f| f.demand);
        }
        let mut decision = decide(&self.policy, &observation, &mut self.history, now);
        if let Some(r) = fresh.filter(|r| !r.complete()) {
            decision.reason = format!(
                "{} ({} of {} balancer replicas answered)",
                decision.reason, r.answered, r.asked
            );
        }
        let step = Step {
            scale_to: (decision.desired != replicas.current).then_some(decision.desired),
            stale: fresh.is_none(),
            decision,
            observation,
        };
        self.last_step = Some(step.clone());
        step
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;

    fn policy() -> Policy {
        crate::policy::from_str(
            "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata: {name: p}
spec:
  scaleTargetRef: {kind: Deployment, name: web}
  pool: web
  minReplicas: 1
  maxReplicas: 10
  target: {inFlightPerPod: 10}
  surge: {stableWindow: 10s, panicWindow: 2s}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 0}
  metricsSource: {urls: ['http://127.0.0.1:9901/metrics'], interval: 1s, staleAfter: 3s}
",
        )
        .unwrap()
    }

    fn reading(in_flight: f64, answered: usize, asked: usize) -> Reading {
        Reading {
            in_flight,
            answered,
            asked,
            ..Reading::default()
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    #[test]
    fn a_surge_asks_to_scale_and_a_steady_target_does_not() {
        let mut r = Runner::new(policy());
        let two = Replicas {
            current: 2,
            ready: 2,
        };
        let step = r.tick(Some(reading(20.0, 1, 1)), two, at(0));
        assert_eq!(step.scale_to, None, "{}", step.decision.reason);
        let step = r.tick(Some(reading(80.0, 1, 1)), two, at(1));
        assert_eq!(step.scale_to, Some(step.decision.desired));
        assert!(step.decision.desired >= 5, "{}", step.decision.reason);
        assert_eq!(step.decision.mode, Mode::Panic);
        assert!(!step.stale);
    }

    #[test]
    fn a_failed_read_reuses_the_last_one_until_it_is_stale_then_holds() {
        let mut r = Runner::new(policy());
        let three = Replicas {
            current: 3,
            ready: 3,
        };
        for s in 0..12 {
            r.tick(Some(reading(30.0, 1, 1)), three, at(s));
        }
        let step = r.tick(None, three, at(14));
        assert!(!step.stale, "3s old is not stale yet");
        assert_eq!(step.observation.in_flight, Some(30.0));
        let step = r.tick(None, three, at(16));
        assert!(step.stale);
        assert_eq!(step.observation.in_flight, None);
        assert_eq!(step.scale_to, None, "{}", step.decision.reason);
        assert!(step.decision.metrics_missing);
    }

    #[test]
    fn an_incomplete_reading_raises_but_never_lowers() {
        let mut r = Runner::new(policy());
        let four = Replicas {
            current: 4,
            ready: 4,
        };
        for s in 0..12 {
            r.tick(Some(reading(40.0, 2, 2)), four, at(s));
        }
        // One of two balancers is silent and the other reports little load:
        // that is not evidence of low demand.
        for s in 12..30 {
            let step = r.tick(Some(reading(5.0, 1, 2)), four, at(s));
            assert_eq!(step.scale_to, None, "{}", step.decision.reason);
        }
        let reason = &r.last_step().unwrap().decision.reason;
        assert!(
            reason.contains("no scale-down") && reason.contains("1 of 2"),
            "{reason}"
        );
        // Higher demand from the one that answers still scales up.
        let step = r.tick(Some(reading(200.0, 1, 2)), four, at(30));
        let mut n = step.scale_to.expect("a scale-up");
        assert!(n > 4, "{}", step.decision.reason);
        // With both answering, low demand scales down once the windows pass.
        let mut lowest = n;
        for s in 31..80 {
            let now = Replicas {
                current: n,
                ready: n,
            };
            if let Some(to) = r.tick(Some(reading(5.0, 2, 2)), now, at(s)).scale_to {
                n = to;
                lowest = lowest.min(to);
            }
        }
        assert!(lowest < 4, "never scaled down below 4: {lowest}");
    }

    #[test]
    fn an_edited_policy_keeps_the_windows_a_new_target_resets_them() {
        let mut r = Runner::new(policy());
        let two = Replicas {
            current: 2,
            ready: 2,
        };
        r.tick(Some(reading(20.0, 1, 1)), two, at(0));
        let mut edited = policy();
        edited.max_replicas = 20;
        r.set_policy(edited);
        assert!(r.last_step().is_some());
        assert_eq!(r.policy().max_replicas, 20);
        let mut other = policy();
        other.target_ref.name = "other".into();
        r.set_policy(other);
        assert!(r.last_step().is_none());
        assert_eq!(r.policy().metrics.interval, Duration::from_secs(1));
    }
}

#[cfg(test)]
mod predictive_tests {
    use chrono::TimeZone;

    use super::*;

    /// A runner with a predictive policy, fed a daily 09:00–10:00 peak for a
    /// week, pre-scales on the next week's Monday ahead of 09:00, and a
    /// forecastOnly runner fed the same data scales exactly like one without
    /// predictive.
    #[test]
    fn history_from_the_loop_drives_the_forecast() {
        let text = |extra: &str| {
            format!(
                "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata: {{name: p}}
spec:
  scaleTargetRef: {{kind: Deployment, name: web}}
  pool: web
  minReplicas: 1
  maxReplicas: 50
  target: {{inFlightPerPod: 10}}
  metricsSource: {{urls: ['http://127.0.0.1:9901/metrics']}}
{extra}"
            )
        };
        let on = crate::policy::from_str(&text(
            "  predictive: {leadTime: 10m, weeks: 1, margin: 0}\n",
        ))
        .unwrap();
        let only = crate::policy::from_str(&text(
            "  predictive: {leadTime: 10m, weeks: 1, forecastOnly: true}\n",
        ))
        .unwrap();
        let off = crate::policy::from_str(&text("")).unwrap();
        let mut runners = [Runner::new(on), Runner::new(only), Runner::new(off)];
        let start = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
        let reading = |d: f64| Reading {
            in_flight: d,
            answered: 1,
            asked: 1,
            ..Reading::default()
        };
        // One week of history at one tick per 30 s (enough for minute buckets).
        for r in &mut runners {
            for s in (0..7 * 24 * 3600).step_by(30) {
                let t = start + chrono::Duration::seconds(s);
                let d = if (s / 3600) % 24 == 9 { 200.0 } else { 20.0 };
                r.tick(
                    Some(reading(d)),
                    Replicas {
                        current: 2,
                        ready: 2,
                    },
                    t,
                );
            }
        }
        // Next Monday 08:55, load still quiet.
        let t = start + chrono::Duration::days(7) + chrono::Duration::minutes(8 * 60 + 55);
        let two = Replicas {
            current: 2,
            ready: 2,
        };
        let steps: Vec<Step> = runners
            .iter_mut()
            .map(|r| r.tick(Some(reading(20.0)), two, t))
            .collect();
        assert_eq!(steps[0].scale_to, Some(20), "{}", steps[0].decision.reason);
        assert_eq!(steps[0].decision.forecast, Some(20));
        assert_eq!(steps[1].decision.forecast, Some(22), "10% default margin");
        assert_eq!(
            steps[1].scale_to, steps[2].scale_to,
            "forecastOnly changed the decision"
        );
        assert_eq!(steps[1].decision.desired, steps[2].decision.desired);
        assert_eq!(steps[2].decision.forecast, None);
        // History is bounded to a week plus the lead time (and a margin).
        let kept = runners[0].demand_history().len();
        assert!(
            (9_000..=7 * 24 * 60 + 13).contains(&kept),
            "{kept} minutes kept"
        );
    }
}
