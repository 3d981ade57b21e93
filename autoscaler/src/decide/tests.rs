//! `decide()` over synthetic observation sequences, one tick per second.

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::policy;

fn policy(extra: &str) -> Policy {
    let text = format!(
        "apiVersion: usher.dev/v1alpha1\nkind: ScalingPolicy\nmetadata: {{name: moodle}}\nspec:\n  scaleTargetRef: {{kind: Deployment, name: moodle}}\n  pool: moodle\n  minReplicas: 2\n  maxReplicas: 50\n  target: {{inFlightPerPod: 10}}\n{extra}"
    );
    policy::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

fn at(s: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(s)
}

fn obs(replicas: u32, in_flight: f64) -> Observation {
    Observation {
        ready_replicas: replicas,
        current_replicas: replicas,
        in_flight: Some(in_flight),
        queued: Some(0.0),
        requests_per_second: Some(0.0),
        p95: None,
        partial: false,
        forecast: None,
    }
}

/// Runs `ticks` seconds of a load function, applying each decision at once
/// (pods ready immediately); returns the decisions.
fn run(
    p: &Policy,
    h: &mut History,
    start: i64,
    ticks: i64,
    replicas: &mut u32,
    load: impl Fn(i64) -> f64,
) -> Vec<Decision> {
    (start..start + ticks)
        .map(|t| {
            let d = decide(p, &obs(*replicas, load(t)), h, at(t));
            *replicas = d.desired;
            d
        })
        .collect()
}

#[test]
fn steady_load_holds_steady() {
    let p = policy("");
    let mut h = History::default();
    let mut r = 4;
    let ds = run(&p, &mut h, 0, 300, &mut r, |t| 40.0 + (t % 3) as f64);
    assert!(
        ds.iter().all(|d| d.desired == 4),
        "{:?}",
        ds.iter().map(|d| d.desired).collect::<Vec<_>>()
    );
    assert!(ds.iter().all(|d| d.mode == Mode::Stable));
    assert!(ds.last().unwrap().reason.contains("tolerance"));
}

#[test]
fn step_surge_panics_within_one_tick() {
    let p = policy("");
    let mut h = History::default();
    let mut r = 4;
    run(&p, &mut h, 0, 120, &mut r, |_| 40.0);
    assert_eq!(r, 4);
    // 10× the load arrives at t=120.
    let d = decide(&p, &obs(r, 400.0), &mut h, at(120));
    assert_eq!(d.mode, Mode::Panic, "{}", d.reason);
    assert!(
        d.desired > 4,
        "scales on the very first surge tick: {}",
        d.reason
    );
    assert!(d.reason.starts_with("panic"), "{}", d.reason);
}

#[test]
fn panic_never_scales_down_and_ends_after_a_calm_stable_window() {
    let p = policy("");
    let mut h = History::default();
    let mut r = 4;
    run(&p, &mut h, 0, 120, &mut r, |_| 40.0);
    let surge = run(&p, &mut h, 120, 20, &mut r, |_| 400.0);
    let peak = surge.iter().map(|d| d.desired).max().unwrap();
    assert!(peak >= 40, "{peak}");
    // Demand drops back. The panic condition last held early in the surge
    // (once scaled, the need is no longer 2× the ready pods); panic mode then
    // lasts one stable window (60 s) from that tick and never scales down.
    let calm = run(&p, &mut h, 140, 120, &mut r, |_| 40.0);
    let panic_ticks = calm.iter().take_while(|d| d.mode == Mode::Panic).count();
    assert!(
        (35..=60).contains(&panic_ticks),
        "panic lasted {panic_ticks} s after the drop"
    );
    assert!(calm[..panic_ticks].iter().all(|d| d.desired >= peak));
    assert!(calm[panic_ticks..].iter().all(|d| d.mode == Mode::Stable));
    // Back in stable mode the scale-down still waits for the stabilization window.
    assert!(
        calm.iter().all(|d| d.desired >= peak),
        "{:?}",
        calm.iter().map(|d| d.desired).collect::<Vec<_>>()
    );
}

#[test]
fn decay_does_not_scale_down_inside_the_stabilization_window() {
    let p = policy("  surge: {panicThreshold: 100}\n"); // no panic: test stabilization alone
    let mut h = History::default();
    let mut r = 4;
    run(&p, &mut h, 0, 120, &mut r, |_| 200.0);
    assert_eq!(r, 20);
    let t_drop = 120;
    let ds = run(&p, &mut h, t_drop, 400, &mut r, |_| 40.0);
    let first_down = ds.iter().position(|d| d.desired < 20).map(|i| i as i64);
    // Recommendations of 20 persist for 300 s after the drop plus the 60 s averaging lag.
    assert!(
        first_down.is_some_and(|i| i >= 300),
        "first scale-down after {first_down:?} s"
    );
    assert!(ds.iter().take(300).all(|d| d.desired == 20));
    assert!(
        ds[10].limited && ds[10].reason.contains("stabilized"),
        "{}",
        ds[10].reason
    );
    assert_eq!(r, 4, "ends at the demand's need");
    // The steps follow the 60 s average's decline, 300 s late, and never go back up.
    assert!(ds.windows(2).all(|w| w[1].desired <= w[0].desired));
}

#[test]
fn scale_down_rate_limit_applies_after_a_sudden_drop() {
    // No averaging lag (1 s windows) and no stabilization: the default
    // scale-down limit of 50% per 30 s shapes the descent: 20 → 10 → 5 → 4.
    let p = policy(
        "  surge: {panicThreshold: 100, stableWindow: 1s, panicWindow: 1s}\n  behavior:\n    scaleDown: {stabilizationWindowSeconds: 0}\n",
    );
    let mut h = History::default();
    let mut r = 20;
    run(&p, &mut h, 0, 5, &mut r, |_| 200.0);
    let ds = run(&p, &mut h, 5, 100, &mut r, |_| 40.0);
    let downs: Vec<u32> = ds
        .windows(2)
        .filter(|w| w[1].desired < w[0].desired)
        .map(|w| w[1].desired)
        .collect();
    let first = ds[0].desired;
    assert_eq!(first, 10, "{}", ds[0].reason);
    assert_eq!(downs, [5, 4]);
    assert!(
        ds[0].limited && ds[0].reason.contains("scale-down rate limit"),
        "{}",
        ds[0].reason
    );
}

#[test]
fn hpa_pods_policy_limits_scale_up() {
    let p = policy(
        "  surge: {panicThreshold: 100}\n  behavior:\n    scaleUp:\n      policies: [{type: Pods, value: 2, periodSeconds: 10}]\n",
    );
    let mut h = History::default();
    let mut r = 2;
    let ds = run(&p, &mut h, 0, 25, &mut r, |_| 200.0);
    assert_eq!(ds[0].desired, 4);
    assert!(
        ds[0].limited && ds[0].reason.contains("2 pods/10s"),
        "{}",
        ds[0].reason
    );
    assert_eq!(ds[9].desired, 4, "no more within the period");
    assert_eq!(ds[10].desired, 6);
    assert_eq!(ds[20].desired, 8);
}

#[test]
fn hpa_percent_policy_limits_scale_up() {
    let p = policy(
        "  surge: {panicThreshold: 100}\n  behavior:\n    scaleUp:\n      policies: [{type: Percent, value: 50, periodSeconds: 5}]\n",
    );
    let mut h = History::default();
    let mut r = 4;
    let ds = run(&p, &mut h, 0, 11, &mut r, |_| 200.0);
    assert_eq!(ds[0].desired, 6);
    assert_eq!(ds[5].desired, 9);
    assert_eq!(ds[10].desired, 14);
}

#[test]
fn hpa_select_min_and_disabled() {
    let min = policy(
        "  surge: {panicThreshold: 100}\n  behavior:\n    scaleUp:\n      selectPolicy: Min\n      policies: [{type: Percent, value: 100, periodSeconds: 15}, {type: Pods, value: 1, periodSeconds: 15}]\n",
    );
    let mut h = History::default();
    let mut r = 4;
    assert_eq!(run(&min, &mut h, 0, 1, &mut r, |_| 200.0)[0].desired, 5);
    let off = policy(
        "  surge: {panicThreshold: 100}\n  behavior:\n    scaleDown: {selectPolicy: Disabled}\n",
    );
    let mut h = History::default();
    let mut r = 20;
    let ds = run(&off, &mut h, 0, 700, &mut r, |_| 20.0);
    assert!(ds.iter().all(|d| d.desired == 20), "scale-down disabled");
}

#[test]
fn hpa_stabilization_window_on_scale_up() {
    let p = policy(
        "  surge: {panicThreshold: 100}\n  behavior:\n    scaleUp: {stabilizationWindowSeconds: 30}\n",
    );
    let mut h = History::default();
    let mut r = 4;
    run(&p, &mut h, 0, 70, &mut r, |_| 40.0);
    let ds = run(&p, &mut h, 70, 40, &mut r, |_| 80.0);
    let first_up = ds.iter().position(|d| d.desired > 4).unwrap();
    assert!(
        first_up >= 29,
        "held until the 30 s window passed: {first_up}"
    );
}

#[test]
fn schedule_floor_applies_across_a_dst_change() {
    // A lecture at 08:50 Berlin time, every day, 1 h, floor 12.
    let p = policy(
        "  schedules:\n    - {name: lecture, cron: \"50 8 * * *\", timeZone: Europe/Berlin, duration: 1h, minReplicas: 12}\n",
    );
    for (day, utc_hour) in [(24, 6), (26, 7)] {
        // 2026-10-24 is summer time (UTC+2), 2026-10-26 winter time (UTC+1).
        let start = Utc
            .with_ymd_and_hms(2026, 10, day, utc_hour, 50, 0)
            .unwrap();
        let mut h = History::default();
        let before = decide(
            &p,
            &obs(2, 5.0),
            &mut h,
            start - chrono::Duration::seconds(1),
        );
        assert_eq!(before.desired, 2, "day {day}: {}", before.reason);
        let d = decide(&p, &obs(2, 5.0), &mut h, start);
        assert_eq!(d.desired, 12, "day {day}: {}", d.reason);
        assert!(d.reason.contains("schedule `lecture` floor 12"));
    }
}

#[test]
fn schedule_floor_releases_through_stabilization() {
    let p = policy(
        "  schedules:\n    - {name: exam, cron: \"0 12 * * *\", duration: 2m, minReplicas: 10}\n",
    );
    let mut h = History::default();
    let mut r = 2;
    let ds = run(&p, &mut h, 0, 500, &mut r, |_| 5.0);
    assert_eq!(ds[0].desired, 10);
    assert!(ds[119].desired == 10);
    // After the floor ends (t=120) the scale-down waits for the 300 s window.
    assert!(ds[200].desired == 10 && ds[200].limited);
    assert!(ds[499].desired < 10);
}

#[test]
fn missing_metrics_hold_and_never_scale_down() {
    let p = policy("");
    let mut h = History::default();
    let mut missing = obs(8, 0.0);
    missing.in_flight = None;
    let d = decide(&p, &missing, &mut h, at(0));
    assert_eq!(d.desired, 8);
    assert!(d.metrics_missing && d.reason.contains("metrics missing"));
    // A schedule floor still raises.
    let p = policy("  schedules:\n    - {cron: \"0 12 * * *\", duration: 10m, minReplicas: 20}\n");
    let d = decide(&p, &missing, &mut History::default(), at(0));
    assert_eq!(d.desired, 20, "{}", d.reason);
}

#[test]
fn clamps_to_min_and_max() {
    let p = policy("");
    let mut h = History::default();
    let mut r = 2;
    let ds = run(&p, &mut h, 0, 30, &mut r, |_| 10_000.0);
    assert_eq!(r, 50);
    assert!(
        ds.last().unwrap().reason.contains("maxReplicas 50"),
        "{}",
        ds.last().unwrap().reason
    );
    let mut h = History::default();
    let d = decide(&p, &obs(1, 0.0), &mut h, at(0));
    assert_eq!(d.desired, 2);
    assert!(d.limited && d.reason.contains("minReplicas 2"));
}

#[test]
fn a_fresh_history_does_not_scale_down() {
    let p = policy("");
    let mut h = History::default();
    let d = decide(&p, &obs(10, 5.0), &mut h, at(0));
    assert_eq!(d.desired, 10, "{}", d.reason);
    assert!(d.reason.contains("less than one stable window"));
}

#[test]
fn requests_per_second_and_latency_targets() {
    let rps = policy("").clone();
    let rps = Policy {
        target: crate::policy::Target::RequestsPerSecondPerPod(20.0),
        ..rps
    };
    let mut o = obs(4, 0.0);
    o.requests_per_second = Some(200.0);
    let d = decide(&rps, &o, &mut History::default(), at(0));
    assert_eq!(d.desired, 10, "{}", d.reason);
    let lat = Policy {
        target: crate::policy::Target::LatencyP95(Duration::from_millis(200)),
        ..rps
    };
    let mut o = obs(4, 0.0);
    o.p95 = Some(Duration::from_millis(400));
    let d = decide(&lat, &o, &mut History::default(), at(0));
    assert_eq!(d.desired, 8, "{}", d.reason);
    o.p95 = None;
    assert!(decide(&lat, &o, &mut History::default(), at(0)).metrics_missing);
}

#[test]
fn queued_requests_count_as_demand() {
    let p = policy("");
    let mut o = obs(4, 40.0);
    o.queued = Some(160.0);
    let d = decide(&p, &o, &mut History::default(), at(0));
    assert_eq!(d.desired, 20, "{}", d.reason);
}

#[test]
fn partial_metrics_may_raise_but_never_lower() {
    let p = policy("");
    let mut h = History::default();
    for s in 0..70 {
        decide(&p, &obs(4, 40.0), &mut h, at(s));
    }
    let mut o = obs(4, 5.0);
    o.partial = true;
    for s in 70..500 {
        let d = decide(&p, &o, &mut h, at(s));
        assert_eq!(d.desired, 4, "at {s}: {}", d.reason);
    }
    let d = decide(&p, &o, &mut h, at(500));
    assert!(d.reason.contains("no scale-down"), "{}", d.reason);
    o.in_flight = Some(400.0);
    let d = decide(&p, &o, &mut h, at(501));
    assert!(d.desired > 4, "{}", d.reason);
}

#[test]
fn ticks_a_few_ms_off_the_second_still_scale_down() {
    // Real ticks are never exactly 1 s apart. Once a whole stable window has
    // been seen, the "less than one stable window of data" hold must never
    // fire again: a spurious hold records the current replicas as a
    // recommendation and so restarts the scale-down stabilization window.
    let p = policy("");
    let mut h = History::default();
    let mut r = 20;
    // Up to 4 ms early or late, in a fixed pseudo-random pattern.
    let jittered = |s: i64| at(s) + chrono::Duration::milliseconds((s * 7919) % 9 - 4);
    let mut lowest = r;
    for s in 0..900 {
        let load = if s < 120 { 200.0 } else { 30.0 };
        let d = decide(&p, &obs(r, load), &mut h, jittered(s));
        if s >= 60 {
            assert!(
                !d.reason.contains("less than one stable window"),
                "at {s}: {}",
                d.reason
            );
        }
        r = d.desired;
        lowest = lowest.min(r);
    }
    assert_eq!(lowest, 3, "30 in flight at 10 per pod needs 3 pods");
}

#[test]
fn a_forecast_raises_the_floor_and_forecast_only_changes_nothing() {
    let p = policy("  predictive: {leadTime: 10m}\n");
    let mut h = History::default();
    for s in 0..70 {
        decide(&p, &obs(4, 40.0), &mut h, at(s));
    }
    let mut o = obs(4, 40.0);
    o.forecast = Some(200.0);
    let d = decide(&p, &o, &mut h, at(70));
    assert_eq!(d.desired, 20, "{}", d.reason);
    assert_eq!(d.forecast, Some(20));
    assert!(d.reason.contains("forecast floor 20"), "{}", d.reason);

    // forecastOnly: the same forecast is reported and not applied.
    let only = policy("  predictive: {leadTime: 10m, forecastOnly: true}\n");
    let mut h = History::default();
    for s in 0..70 {
        let d = decide(&only, &obs(4, 40.0), &mut h, at(s));
        assert_eq!(d.desired, 4);
    }
    let d = decide(&only, &o, &mut h, at(70));
    assert_eq!((d.desired, d.forecast), (4, Some(20)), "{}", d.reason);
    assert!(d.reason.contains("forecastOnly"), "{}", d.reason);
}

#[test]
fn a_low_forecast_never_scales_down_and_missing_metrics_still_prewarm() {
    let p = policy("  predictive: {}\n");
    let mut h = History::default();
    for s in 0..70 {
        decide(&p, &obs(10, 100.0), &mut h, at(s));
    }
    let mut o = obs(10, 100.0);
    o.forecast = Some(5.0);
    let d = decide(&p, &o, &mut h, at(70));
    assert_eq!(d.desired, 10, "{}", d.reason);
    assert_eq!(d.forecast, Some(1));
    // Metrics missing: hold, but a forecast peak still raises the floor.
    let mut missing = obs(10, 0.0);
    missing.in_flight = None;
    missing.forecast = Some(300.0);
    let d = decide(&p, &missing, &mut h, at(71));
    assert!(d.metrics_missing);
    assert_eq!(d.desired, 30, "{}", d.reason);
}
