use super::*;
use crate::policy::{Behavior, from_str};

fn policy(name: &str) -> Policy {
    from_str(&format!(
        "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata: {{name: {name}}}
spec:
  scaleTargetRef: {{kind: Deployment, name: web}}
  pool: web
  minReplicas: 2
  maxReplicas: 30
  target: {{inFlightPerPod: 8}}
  schedules:
    - {{name: morning, cron: '0 8 * * *', timeZone: UTC, duration: 1h, minReplicas: 10}}
  metricsSource: {{urls: ['http://127.0.0.1:9901/metrics'], interval: 2500ms}}
"
    ))
    .unwrap()
}

#[test]
fn contenders_add_the_references_and_unique_labels() {
    let c = contenders(
        vec![("a".into(), policy("a")), ("a".into(), policy("a"))],
        true,
    );
    let labels: Vec<&str> = c.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(labels, ["a", "a#2", "hpa-like", "kpa-like"]);
    assert_eq!(
        c[0].sync,
        Duration::from_secs(3),
        "2.5 s rounds up to whole ticks"
    );
    assert_eq!(c[2].sync, Duration::from_secs(15));
    assert_eq!(c[3].sync, Duration::from_secs(2));
    assert_eq!(contenders(vec![("a".into(), policy("a"))], false).len(), 1);
}

#[test]
fn references_keep_target_and_bounds_and_drop_schedules() {
    let base = policy("p");
    let refs = reference_policies(&base);
    assert_eq!(refs.len(), 2);
    for (name, p, sync) in &refs {
        assert_eq!(&p.name, name);
        assert_eq!(p.target, base.target);
        assert_eq!((p.min_replicas, p.max_replicas), (2, 30));
        assert_eq!(p.target_ref, base.target_ref);
        assert!(p.schedules.is_empty());
        assert_eq!(p.metrics.interval, *sync);
    }
    let hpa = &refs[0].1;
    assert_eq!(hpa.behavior, Behavior::hpa_defaults());
    assert_eq!(hpa.tolerance, 0.1);
    assert!(hpa.surge.panic_threshold > 1e300, "no panic mode");
    let kpa = &refs[1].1;
    assert_eq!(kpa.surge.panic_threshold, 2.0);
    assert_eq!(kpa.surge.panic_window, Duration::from_secs(6));
    assert_eq!(kpa.behavior.scale_down.stabilization, Duration::ZERO);
}

#[test]
fn timeline_step_keeps_timelines_short() {
    assert_eq!(auto_step(7200), 1);
    assert_eq!(auto_step(10_000), 1);
    assert_eq!(auto_step(36_000), 5);
    assert_eq!(auto_step(14 * 86_400), 300);
}

#[test]
fn the_start_comes_from_the_flag_then_the_trace_then_the_default() {
    let config = |start, trace_start| Config {
        trace_name: "t".into(),
        trace: Trace {
            start: trace_start,
            ..Trace::from_rates(vec![10.0; 30])
        },
        contenders: contenders(vec![("p".into(), policy("p"))], false),
        start,
        model: PodModel::default(),
        slo: Duration::from_millis(500),
        arrivals: Arrivals::Exact,
        seed: 1,
        initial: None,
        timeline_step: None,
    };
    let at = |h| Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap();
    assert_eq!(run(&config(None, None)).start, default_start());
    assert_eq!(run(&config(None, Some(at(3)))).start, at(3));
    assert_eq!(run(&config(Some(at(5)), Some(at(3)))).start, at(5));
    // The default start, Monday 08:00 UTC, is inside the `morning`
    // schedule: the run starts at its floor of 10 pods.
    let r = run(&config(None, None));
    assert_eq!(r.played[0].timeline.rows[0].replicas, 10);
    assert!(
        r.header().contains("2026-11-30T08:00:00Z (Monday)"),
        "{}",
        r.header()
    );
    // At 05:00 no floor: enough for 10 req/s at 70% of 50 req/s, raised to min 2.
    assert_eq!(
        run(&config(Some(at(5)), None)).played[0].timeline.rows[0].replicas,
        2
    );
}
