//! Reference policies for `simulate --compare`: how a stock Kubernetes HPA
//! and a stock Knative KPA would scale the same Deployment, expressed as
//! Usher policies so they run through the same `decide()`.

use std::time::Duration;

use crate::policy::{Behavior, Policy, RateKind, RatePolicy, Rules, Select, Surge};

/// Knative's default sync: the autoscaler decides every 2 s.
pub const KPA_TICK: Duration = Duration::from_secs(2);
/// The HPA's default sync period (`--horizontal-pod-autoscaler-sync-period`).
pub const HPA_SYNC: Duration = Duration::from_secs(15);

/// `hpa-like` and `kpa-like`, each with its decision period, built from
/// `base`: same scale target, pool, per-pod target and min/max replicas;
/// no schedules and no forecast (neither has them).
///
/// - `hpa-like`: decides every 15 s on the current reading (a 15 s
///   window holds just the newest sample, as the HPA reads its metric once
///   per sync), tolerance 0.1, the HPA's default `behavior` (up:
///   max(100%, 4 pods) per 15 s; down: 300 s stabilization, then 100% per
///   15 s), no panic mode.
/// - `kpa-like`: decides every 2 s; 60 s stable and 6 s panic windows,
///   panic at 200%, never down while panicking; no tolerance, no
///   stabilization; up to 1000× and down to half the pods per tick
///   (Knative's max scale-up and scale-down rates).
pub fn reference_policies(base: &Policy) -> Vec<(String, Policy, Duration)> {
    let derive = |name: &str, sync: Duration| {
        let mut p = base.clone();
        p.name = name.to_string();
        p.schedules.clear();
        p.predictive = None;
        p.metrics.interval = sync;
        p.metrics.stale_after = p.metrics.stale_after.max(sync * 3);
        p
    };

    let mut hpa = derive("hpa-like", HPA_SYNC);
    hpa.tolerance = 0.1;
    hpa.behavior = Behavior::hpa_defaults();
    hpa.surge = Surge {
        stable_window: HPA_SYNC,
        panic_window: HPA_SYNC,
        panic_threshold: f64::MAX,
    };

    let mut kpa = derive("kpa-like", KPA_TICK);
    kpa.tolerance = 0.0;
    kpa.surge = Surge {
        stable_window: Duration::from_secs(60),
        panic_window: Duration::from_secs(6),
        panic_threshold: 2.0,
    };
    let per_tick = |kind, value| Rules {
        stabilization: Duration::ZERO,
        select: Select::Max,
        policies: vec![RatePolicy {
            kind,
            value,
            period: KPA_TICK,
        }],
    };
    kpa.behavior = Behavior {
        // 1000× the pods: +99,900%.
        scale_up: per_tick(RateKind::Percent, 99_900),
        scale_down: per_tick(RateKind::Percent, 50),
    };

    vec![
        ("hpa-like".into(), hpa, HPA_SYNC),
        ("kpa-like".into(), kpa, KPA_TICK),
    ]
}
