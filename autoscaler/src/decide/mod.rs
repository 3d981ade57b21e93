//! The scaling decision: a pure function of the policy, the observations so
//! far (kept in [`History`]) and the time. No I/O, no clock: the controller,
//! the local scaler, `simulate` and the `decide` filter all call it.
//!
//! Order of steps, each named in the decision's reason:
//! 1. missing metrics hold the current replicas (never scale down blind);
//! 2. demand is averaged over the stable and panic windows (Knative KPA);
//! 3. panic mode starts when the panic-window need reaches `panicThreshold`
//!    times the ready pods, only ratchets up, and ends after a calm stable window;
//! 4. in stable mode a change within `tolerance` is ignored (HPA);
//! 5. schedule floors raise the result;
//! 6. HPA `behavior`: stabilization, then rate limits;
//! 7. `minReplicas`/`maxReplicas` clamp it.

pub mod behavior;
pub mod forecast;
pub mod schedule;
pub mod window;

use std::time::Duration;

use chrono::{DateTime, Utc};

use self::behavior::{Recommendations, ScaleEvents};
use self::window::Samples;
use crate::policy::{Policy, Target};

/// What the controller saw at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observation {
    /// Ready pods of the Deployment.
    pub ready_replicas: u32,
    /// Replicas the Deployment asks for now.
    pub current_replicas: u32,
    /// Requests in flight across balancer replicas (`None`: metrics missing).
    pub in_flight: Option<f64>,
    /// Requests waiting in the balancers' surge queues.
    pub queued: Option<f64>,
    /// Requests per second.
    pub requests_per_second: Option<f64>,
    /// 95th percentile latency.
    pub p95: Option<Duration>,
    /// Some balancer replicas did not answer: the demand may be higher
    /// than seen, so this tick may raise the replicas but not lower them.
    pub partial: bool,
    /// Forecast peak demand over the policy's predictive lead time, in the
    /// target's unit (`None`: no predictive block or no history yet).
    pub forecast: Option<f64>,
}

/// Stable or panic mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Normal decisions over the stable window.
    #[default]
    Stable,
    /// A surge: fast decisions over the panic window, never down.
    Panic,
}

impl Mode {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Panic => "panic",
        }
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Replicas to run.
    pub desired: u32,
    /// Mode after this tick.
    pub mode: Mode,
    /// Why, for logs, Events and status.
    pub reason: String,
    /// Whether a rate limit, stabilization or clamp held the result back
    /// (the HPA's `ScalingLimited`).
    pub limited: bool,
    /// Whether metrics were missing (the decision held).
    pub metrics_missing: bool,
    /// Replicas the forecast asks for as a floor (also in `forecastOnly`
    /// mode, where it is recorded but not applied).
    pub forecast: Option<u32>,
    /// Pods the demand needs now (the mode's window, before tolerance,
    /// floors, behaviour and min/max); `None` when metrics are missing. Above
    /// `maxReplicas` it means the policy is under-provisioned.
    pub needed: Option<u32>,
}

/// What `decide` remembers between ticks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    demand: Samples,
    recommendations: Recommendations,
    events: ScaleEvents,
    mode: Mode,
    /// Last time the panic condition held (ms).
    panic_seen_ms: Option<i64>,
    /// Highest panic-mode decision, which panic never goes below.
    panic_peak: u32,
}

impl History {
    /// The mode after the last decision.
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

/// The demand in the policy's unit and the per-pod target, if observed:
/// what the windows average and predictive history records.
pub fn demand(policy: &Policy, obs: &Observation) -> Option<(f64, f64)> {
    match policy.target {
        Target::InFlightPerPod(t) => Some((obs.in_flight? + obs.queued.unwrap_or(0.0), t)),
        Target::RequestsPerSecondPerPod(t) => Some((obs.requests_per_second?, t)),
        // Latency: the "demand" is pods needed = ready × p95 / objective, target 1 per pod.
        Target::LatencyP95(objective) => {
            let ratio = obs.p95?.as_secs_f64() / objective.as_secs_f64().max(1e-9);
            Some((f64::from(obs.ready_replicas.max(1)) * ratio, 1.0))
        }
    }
}

fn pods_for(demand: f64, per_pod: f64) -> u32 {
    let pods = (demand / per_pod - 1e-9).ceil();
    if pods.is_finite() {
        pods.clamp(0.0, f64::from(u32::MAX)) as u32
    } else {
        u32::MAX
    }
}

/// Decides the replicas for `obs` at `now`, updating `history`.
pub fn decide(
    policy: &Policy,
    obs: &Observation,
    history: &mut History,
    now: DateTime<Utc>,
) -> Decision {
    let now_ms = now.timestamp_millis();
    let current = obs.current_replicas;
    let ready = obs.ready_replicas.max(1);
    let surge = &policy.surge;
    let floor = schedule::active_floor(&policy.schedules, now);

    let Some((demand, per_pod)) = demand(policy, obs) else {
        // Never scale down on missing data; a schedule floor may still raise.
        let mut desired = current.max(policy.min_replicas);
        let mut reason = format!("metrics missing: holding {current} replicas");
        if let Some((f, name)) = floor.filter(|(f, _)| *f > desired) {
            desired = f;
            reason = format!("metrics missing; schedule `{name}` floor {f}");
        }
        let forecast = forecast_pods(policy, obs);
        if let (Some(f), Some(p)) = (forecast, &policy.predictive)
            && f > desired
            && !p.forecast_only
        {
            desired = f;
            reason = format!("metrics missing; forecast floor {f}");
        }
        let desired = desired.min(policy.max_replicas.max(current));
        history.events.record(
            now_ms,
            i64::from(desired) - i64::from(current),
            keep(policy),
        );
        return Decision {
            desired,
            mode: history.mode,
            reason,
            limited: false,
            metrics_missing: true,
            forecast,
            needed: None,
        };
    };

    history.demand.push(now_ms, demand, surge.stable_window);
    let stable_avg = history
        .demand
        .average(now_ms, surge.stable_window)
        .unwrap_or(demand);
    let panic_avg = history
        .demand
        .average(now_ms, surge.panic_window)
        .unwrap_or(demand);
    let want_stable = pods_for(stable_avg, per_pod);
    let want_panic = pods_for(panic_avg, per_pod);

    // Panic mode (KPA): enter at threshold, stay until a calm stable window.
    let surging = f64::from(want_panic) / f64::from(ready) >= surge.panic_threshold;
    if surging {
        history.panic_seen_ms = Some(now_ms);
    }
    let calm_for = history.panic_seen_ms.map(|t| now_ms - t);
    history.mode = match (history.mode, surging, calm_for) {
        (_, true, _) => Mode::Panic,
        (Mode::Panic, false, Some(calm)) if calm < surge.stable_window.as_millis() as i64 => {
            Mode::Panic
        }
        _ => Mode::Stable,
    };

    let needed = match history.mode {
        Mode::Panic => want_panic.max(want_stable),
        Mode::Stable => want_stable,
    };
    let unit = match policy.target {
        Target::InFlightPerPod(_) => "in flight+queued",
        Target::RequestsPerSecondPerPod(_) => "req/s",
        Target::LatencyP95(_) => "pods by p95 latency",
    };
    let (mut desired, mut reason) = match history.mode {
        Mode::Panic => {
            if history.panic_peak == 0 {
                history.panic_peak = current;
            }
            let want = want_panic
                .max(want_stable)
                .max(history.panic_peak)
                .max(current);
            history.panic_peak = want;
            (
                want,
                format!(
                    "panic: {:.0}s demand {panic_avg:.1} {unit} needs {want_panic} pods ({:.1}× {ready} ready); no scale-down while panicking",
                    surge.panic_window.as_secs_f64(),
                    f64::from(want_panic) / f64::from(ready)
                ),
            )
        }
        Mode::Stable => {
            history.panic_peak = 0;
            let load = stable_avg / (f64::from(ready) * per_pod);
            if (load - 1.0).abs() <= policy.tolerance && current > 0 {
                (
                    current,
                    format!(
                        "stable: load {:.0}% of target, within the {:.0}% tolerance",
                        load * 100.0,
                        policy.tolerance * 100.0
                    ),
                )
            } else {
                (
                    want_stable,
                    format!(
                        "stable: {:.0}s demand {stable_avg:.1} {unit} needs {want_stable} pods at {per_pod} per pod",
                        surge.stable_window.as_secs_f64()
                    ),
                )
            }
        }
    };

    if let Some((f, name)) = floor
        && desired < f
    {
        desired = f;
        reason = format!("{reason}; schedule `{name}` floor {f}");
    }

    // Predictive floor: raises only; `forecastOnly` records it.
    let forecast = forecast_pods(policy, obs);
    if let (Some(f), Some(p)) = (forecast, &policy.predictive)
        && desired < f
    {
        if p.forecast_only {
            reason = format!("{reason}; forecast would raise to {f} (forecastOnly)");
        } else {
            desired = f;
            reason = format!(
                "{reason}; forecast floor {f} ({}-week average peak of the next {})",
                p.weeks,
                humantime::format_duration(p.lead_time)
            );
        }
    }

    let mut limited = false;
    let stabilized = behavior::stabilize(
        &mut history.recommendations,
        &policy.behavior,
        now_ms,
        desired,
        current,
    );
    if stabilized != desired {
        limited = true;
        reason = format!("{reason}; stabilized at {stabilized} (recent recommendations)");
        desired = stabilized;
    }
    let (rated, why) =
        behavior::limit_rate(&history.events, &policy.behavior, now_ms, current, desired);
    if let Some(why) = why {
        limited = true;
        reason = format!("{reason}; {why} allows {rated}");
        desired = rated;
    }
    // Holds come after stabilization so that a held tick does not enter the
    // recommendations as if the policy had wanted the current size (which
    // would restart the scale-down window every time a balancer missed a
    // scrape).
    // A fresh history (a restarted autoscaler, or metrics back after a gap
    // of a whole stable window) has not seen a whole stable window: it does
    // not scale down yet (Knative starts in panic for this).
    if desired < current
        && history.demand.span(now_ms) + Duration::from_secs(1) < surge.stable_window
    {
        desired = current;
        reason = format!("{reason}; held: less than one stable window of data");
    }

    if desired < current && obs.partial {
        desired = current;
        reason = format!("{reason}; held: not every balancer answered, no scale-down");
    }

    let clamped = desired.clamp(policy.min_replicas, policy.max_replicas);
    if clamped != desired {
        limited = true;
        let bound = if clamped > desired {
            "minReplicas"
        } else {
            "maxReplicas"
        };
        reason = format!("{reason}; {bound} {clamped}");
        desired = clamped;
    }
    history.events.record(
        now_ms,
        i64::from(desired) - i64::from(current),
        keep(policy),
    );
    Decision {
        desired,
        mode: history.mode,
        reason,
        limited,
        metrics_missing: false,
        forecast,
        needed: Some(needed),
    }
}

/// The replicas the observation's forecast asks for, if predictive.
fn forecast_pods(policy: &Policy, obs: &Observation) -> Option<u32> {
    policy.predictive.as_ref()?;
    let per_pod = match policy.target {
        Target::InFlightPerPod(t) | Target::RequestsPerSecondPerPod(t) => t,
        Target::LatencyP95(_) => return None,
    };
    Some(pods_for(obs.forecast?, per_pod))
}

/// How long scale events matter: the longest rate-policy period.
fn keep(policy: &Policy) -> Duration {
    let b = &policy.behavior;
    b.scale_up
        .policies
        .iter()
        .chain(&b.scale_down.policies)
        .map(|p| p.period)
        .max()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
