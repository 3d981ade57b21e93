//! Plays one policy over a trace: the pod model second by second and the
//! controller's own [`Runner`] (hence `decide()`, with its windows,
//! behaviour, schedules and forecast) once per sync period, on simulated
//! time.
//!
//! Second `t` covers `[t, t+1)`: its requests meet the pods ready in it.
//! Once per sync period the controller reads the balancer at the end of a
//! second (time `t + 1`) and decides; pods it adds are created then and
//! serve from `t + 1 + cold start`. A policy that syncs every second decides
//! at the end of every second; one with a longer period first decides at a
//! second drawn from the seed and the policy's label within its first
//! period (a controller started at an arbitrary moment), so a surge on a
//! round minute does not always meet it at its best phase. A reading
//! holds what a balancer scrape would: the in-flight and queue gauges at
//! that moment, the responses per second over the sync period, and the
//! p95 latency over the period (the request-weighted 95th percentile of
//! its seconds).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::pods::{PodModel, Pods, Second};
use super::report::Summary;
use super::surge;
use crate::decide::{Mode, schedule};
use crate::policy::Policy;
use crate::runner::{Replicas, Runner, Step};
use crate::source::Reading;
use crate::timeline::{Aggregator, Row, Timeline};

/// One policy to play, and how often it decides.
#[derive(Debug, Clone)]
pub struct Contender {
    /// Name in the table, CSV and chart.
    pub label: String,
    /// The policy.
    pub policy: Policy,
    /// Decision period (whole seconds, at least 1).
    pub sync: Duration,
}

impl Contender {
    /// An Usher policy, deciding every `metricsSource.interval` (rounded up
    /// to whole seconds) as the controller does.
    pub fn usher(label: impl Into<String>, policy: Policy) -> Self {
        let sync =
            Duration::from_secs(policy.metrics.interval.as_secs_f64().ceil().max(1.0) as u64);
        Self {
            label: label.into(),
            policy,
            sync,
        }
    }
}

/// What every policy of a run shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// Wall-clock time of `t = 0` (for schedules and forecasts).
    pub start: DateTime<Utc>,
    /// The pods.
    pub model: PodModel,
    /// The latency objective: a second whose p95 exceeds it is a violation.
    pub slo: Duration,
    /// Pods at `t = 0` (`None`: see [`initial_replicas`]).
    pub initial: Option<u32>,
    /// Seed for the decision phase of policies that sync less than every second.
    pub seed: u64,
    /// Seconds per timeline row (1: every second).
    pub timeline_step: u64,
}

/// One policy's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Played {
    /// Totals at one-second resolution.
    pub summary: Summary,
    /// Rows every `timeline_step` seconds.
    pub timeline: Timeline,
}

/// Called after each decision with the second, the simulated time and the
/// controller's step.
pub type OnDecision<'a> = &'a mut dyn FnMut(u64, DateTime<Utc>, &Step);

/// Pods at `t = 0`: enough to serve the first minute's average rate at
/// 70% of capacity, raised to a schedule floor active at the start, within
/// `minReplicas..=maxReplicas`. All of them are ready.
pub fn initial_replicas(
    policy: &Policy,
    rps: &[f64],
    model: &PodModel,
    start: DateTime<Utc>,
) -> u32 {
    let first = &rps[..rps.len().min(60)];
    let mean = first.iter().sum::<f64>() / first.len().max(1) as f64;
    let need = (mean / (model.pod_rps * 0.7))
        .ceil()
        .clamp(0.0, f64::from(u32::MAX)) as u32;
    let floor = schedule::active_floor(&policy.schedules, start).map_or(0, |(f, _)| f);
    need.max(floor).clamp(
        policy.min_replicas,
        policy.max_replicas.max(policy.min_replicas),
    )
}

/// Plays `contender` over the trace's `rps` (for the initial replicas)
/// with `arrivals` requests per second; `onsets` are the trace's surges.
pub fn play(
    contender: &Contender,
    rps: &[f64],
    arrivals: &[f64],
    onsets: &[u64],
    setup: &Setup,
    on_decision: OnDecision<'_>,
) -> Played {
    let policy = &contender.policy;
    let sync = contender.sync.as_secs().max(1);
    let phase = phase(&contender.label, sync, setup.seed);
    let initial = setup
        .initial
        .unwrap_or_else(|| initial_replicas(policy, rps, &setup.model, setup.start));
    let mut pods = Pods::new(setup.model, initial);
    let mut runner = Runner::new(policy.clone());
    let mut summary = Summary::default();
    let mut rows = Aggregator::new(setup.timeline_step as f64);
    let (mut desired, mut panic) = (initial, false);
    let mut period: Vec<Second> = Vec::with_capacity(sync as usize);
    for (t, &arriving) in (0u64..).zip(arrivals) {
        let second = pods.serve(t, arriving);
        let violation = summary.count(t, &second, setup.slo);
        period.push(second);
        let mut reason = String::new();
        if t % sync == phase {
            let now = setup.start + chrono::Duration::seconds(t as i64 + 1);
            let reading = read(&period);
            period.clear();
            let replicas = Replicas {
                current: second.replicas,
                ready: second.ready,
            };
            let step = runner.tick(Some(reading), replicas, now);
            if let Some(n) = step.scale_to {
                if n > second.replicas {
                    summary.scale_ups.push(t + 1);
                }
                summary.scale_events += 1;
                pods.scale_to(n, t + 1);
                runner.scaled(now, &step.decision.reason);
            }
            desired = step.decision.desired;
            panic = step.decision.mode == Mode::Panic;
            reason.clone_from(&step.decision.reason);
            on_decision(t, now, &step);
        }
        rows.push(Row {
            t: t as f64,
            offered_rps: second.arrivals,
            served_rps: second.served,
            errors: second.failed,
            p95_ms: second.p95.map(|d| d.as_secs_f64() * 1000.0),
            in_flight: second.in_service,
            queued: second.queued,
            replicas: second.replicas,
            ready: second.ready,
            desired,
            panic,
            violation,
            reason,
        });
    }
    summary.reactions = surge::reactions(onsets, &summary.scale_ups);
    Played {
        summary,
        timeline: Timeline {
            label: contender.label.clone(),
            rows: rows.finish(),
        },
    }
}

/// The second within each sync period at whose end `label` decides.
pub fn phase(label: &str, sync: u64, seed: u64) -> u64 {
    if sync <= 1 {
        return 0;
    }
    // FNV-1a of the label, so each policy of a run gets its own phase.
    let hash = label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    fastrand::Rng::with_seed(seed ^ hash).u64(0..sync)
}

/// What a scrape at the end of `period` reports.
fn read(period: &[Second]) -> Reading {
    let last = period.last().copied().unwrap_or_default();
    let n = period.len().max(1) as f64;
    let responses = period.iter().map(|s| s.served + s.failed).sum::<f64>() / n;
    Reading {
        in_flight: last.in_service,
        queued: last.queued,
        requests_per_second: Some(responses),
        p95: p95_of(period),
        answered: 1,
        asked: 1,
    }
}

/// The served-weighted 95th percentile of the seconds' p95s (the highest
/// if nothing was served).
fn p95_of(period: &[Second]) -> Option<Duration> {
    let mut seen: Vec<(Duration, f64)> = period
        .iter()
        .filter_map(|s| s.p95.map(|p| (p, s.served)))
        .collect();
    seen.sort_by_key(|(p, _)| *p);
    let total: f64 = seen.iter().map(|(_, w)| w).sum();
    if total <= 0.0 {
        return seen.last().map(|(p, _)| *p);
    }
    let mut acc = 0.0;
    for &(p, w) in &seen {
        acc += w;
        if acc >= 0.95 * total {
            return Some(p);
        }
    }
    seen.last().map(|(p, _)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(p95_ms: Option<u64>, served: f64) -> Second {
        Second {
            served,
            p95: p95_ms.map(Duration::from_millis),
            ..Second::default()
        }
    }

    #[test]
    fn the_period_p95_is_weighted_by_requests() {
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(p95_of(&[second(Some(100), 10.0)]), ms(100));
        // 96 requests at 100 ms and 4 at 900 ms: p95 is 100 ms.
        assert_eq!(
            p95_of(&[second(Some(900), 4.0), second(Some(100), 96.0)]),
            ms(100)
        );
        assert_eq!(
            p95_of(&[second(Some(900), 10.0), second(Some(100), 90.0)]),
            ms(900)
        );
        assert_eq!(
            p95_of(&[second(None, 0.0), second(Some(300), 0.0)]),
            ms(300)
        );
        assert_eq!(p95_of(&[second(None, 0.0)]), None);
    }

    #[test]
    fn a_reading_has_the_last_gauges_and_the_period_rate() {
        let mut a = second(Some(100), 10.0);
        a.failed = 2.0;
        let mut b = second(Some(100), 20.0);
        b.in_service = 4.0;
        b.queued = 3.0;
        let r = read(&[a, b]);
        assert_eq!((r.in_flight, r.queued), (4.0, 3.0));
        assert_eq!(r.requests_per_second, Some(16.0));
        assert!(r.complete());
    }
}
