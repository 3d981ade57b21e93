//! The policy lab (`usher-autoscaler simulate`): determinism, the reference
//! policies' documented limits, panic timing, the `decide` filter against
//! the controller's loop, and the command end to end.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use usher_autoscaler::decide::{Mode, Observation};
use usher_autoscaler::filter::{self, DecisionLine};
use usher_autoscaler::policy::{self, Policy};
use usher_autoscaler::runner::{Replicas, Runner, Step};
use usher_autoscaler::sim::{self, Arrivals, Config, Contender, PodModel, Trace};
use usher_autoscaler::source::Reading;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn exam_day() -> Policy {
    policy::load(&repo().join("examples/policies/exam-day.yaml")).unwrap()
}

/// A policy with Usher's defaults (1 s sync, 60 s / 6 s windows, panic at 2×).
fn usher_policy() -> Policy {
    policy::from_str(
        "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata: {name: usher}
spec:
  scaleTargetRef: {kind: Deployment, name: web}
  pool: web
  minReplicas: 2
  maxReplicas: 200
  target: {inFlightPerPod: 8}
  metricsSource: {urls: ['http://127.0.0.1:9901/metrics']}
",
    )
    .unwrap()
}

/// `low` req/s, `high` from `up` to `down`, `low` again until `end`.
fn step_trace(low: f64, high: f64, up: usize, down: usize, end: usize) -> Trace {
    Trace::from_rates(
        (0..end)
            .map(|t| if (up..down).contains(&t) { high } else { low })
            .collect(),
    )
}

fn config(trace: Trace, contenders: Vec<Contender>, arrivals: Arrivals, seed: u64) -> Config {
    Config {
        trace_name: "test".into(),
        trace,
        contenders,
        start: Some(Utc.with_ymd_and_hms(2026, 11, 30, 14, 0, 0).unwrap()),
        model: PodModel::default(),
        slo: Duration::from_millis(500),
        arrivals,
        seed,
        initial: None,
        timeline_step: Some(1),
    }
}

#[test]
fn simulate_is_deterministic_for_a_seed() {
    let trace = sim::trace::load(&repo().join("examples/traces/surprise-spike.csv")).unwrap();
    let run = |seed: u64| {
        let c = config(
            trace.clone(),
            sim::contenders(vec![("exam".into(), exam_day())], true),
            Arrivals::Poisson,
            seed,
        );
        let report = sim::run(&c);
        let dir = tempfile::tempdir().unwrap();
        report.write(dir.path()).unwrap();
        let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
        (
            format!("{}{}", report.header(), report.table()),
            read("timeline.csv"),
            read("chart.svg"),
        )
    };
    let (a, b) = (run(7), run(7));
    assert_eq!(a.0, b.0, "the report differs between two runs");
    assert!(a.1 == b.1, "timeline.csv differs between two runs");
    assert!(a.2 == b.2, "chart.svg differs between two runs");
    // The seed matters: other arrivals, another timeline.
    assert!(run(8).1 != a.1, "the seed changed nothing");
}

#[test]
fn hpa_like_keeps_the_hpa_step_limits() {
    let refs = sim::reference_policies(&usher_policy());
    let (label, policy, sync) = refs.into_iter().next().unwrap();
    assert_eq!(label, "hpa-like");
    // 100 req/s, then 20× for 15 min, then back.
    let (up, down) = (600, 1500);
    let c = config(
        step_trace(100.0, 2000.0, up, down, 2400),
        vec![Contender {
            label,
            policy,
            sync,
        }],
        Arrivals::Exact,
        1,
    );
    let report = sim::run(&c);
    let replicas: Vec<u32> = report.played[0]
        .timeline
        .rows
        .iter()
        .map(|r| r.replicas)
        .collect();
    assert_eq!(replicas.len(), 2400);
    // Up: at most max(+100%, +4 pods) over any 15 s.
    let mut at_limit = 0;
    for t in 15..replicas.len() {
        let (before, now) = (replicas[t - 15], replicas[t]);
        let limit = (2 * before).max(before + 4);
        assert!(
            now <= limit,
            "{before} -> {now} pods within 15 s at t={t}, over the HPA's max(100%, 4 pods)"
        );
        at_limit += usize::from(now == limit);
    }
    assert!(at_limit >= 2, "the step never pushed against the limit");
    let peak = replicas[down - 1];
    assert!(peak >= 50, "20× load should need many pods: {peak}");
    // Down: nothing for the 300 s stabilization window after the drop, then down.
    for (t, &r) in replicas.iter().enumerate().take(down + 301).skip(down) {
        assert!(
            r >= peak,
            "scaled down to {r} at t={t}, {} s after the load dropped",
            t - down
        );
    }
    assert!(
        replicas[down + 301..].iter().any(|&r| r < peak),
        "never scaled down after the window"
    );
}

#[test]
fn panic_reacts_at_the_first_decision_after_a_step() {
    let step_at = 600u64;
    let c = config(
        step_trace(100.0, 1000.0, step_at as usize, 900, 1200),
        vec![Contender::usher("usher", usher_policy())],
        Arrivals::Exact,
        1,
    );
    let mut decisions: Vec<(u64, u32, Mode)> = Vec::new();
    sim::run_with(&c, &mut |_, t, _, step| {
        decisions.push((t, step.decision.desired, step.decision.mode))
    });
    let first = decisions
        .iter()
        .position(|(t, _, _)| *t >= step_at)
        .unwrap();
    let (t, desired, mode) = decisions[first];
    let (_, before, mode_before) = decisions[first - 1];
    assert_eq!(t, step_at, "Usher decides every second");
    assert_eq!(mode_before, Mode::Stable);
    assert_eq!(
        mode,
        Mode::Panic,
        "no panic at the first decision after the step"
    );
    assert!(
        desired > before,
        "desired {before} -> {desired} at the first decision after the step"
    );
}

/// The JSON line the filter reads for what the controller observed.
fn line(now: DateTime<Utc>, o: &Observation) -> String {
    serde_json::json!({
        "now": now,
        "readyReplicas": o.ready_replicas,
        "currentReplicas": o.current_replicas,
        "inFlight": o.in_flight,
        "queued": o.queued,
        "requestsPerSecond": o.requests_per_second,
        "p95Seconds": o.p95.map(|p| p.as_secs_f64()),
        "partial": o.partial,
    })
    .to_string()
}

#[test]
fn the_decide_filter_decides_like_the_controller_loop() {
    // Readings and replicas as the simulator's controller saw them.
    let trace = sim::trace::load(&repo().join("examples/traces/exam-cliff.csv")).unwrap();
    let policy = exam_day();
    let c = config(
        trace,
        vec![Contender::usher("exam", policy.clone())],
        Arrivals::Poisson,
        3,
    );
    let mut seen: Vec<(DateTime<Utc>, Observation)> = Vec::new();
    sim::run_with(&c, &mut |_, _, now, step: &Step| {
        seen.push((now, step.observation))
    });
    assert_eq!(seen.len(), 7200);

    // Replay the readings through a fresh controller loop that scales its
    // own target (every pod ready at once), with failed reads (reused until
    // stale, then missing) and incomplete readings mixed in.
    let mut runner = Runner::new(policy.clone());
    let mut current = seen[0].1.current_replicas;
    let mut steps: Vec<(DateTime<Utc>, Step)> = Vec::new();
    for (i, (now, o)) in seen.iter().enumerate() {
        let reading = Reading {
            in_flight: o.in_flight.unwrap(),
            queued: o.queued.unwrap(),
            requests_per_second: o.requests_per_second,
            p95: o.p95,
            // Only before the surge: each incomplete reading holds the
            // replicas and enters the 300 s stabilization window as a
            // recommendation, so one every 97 s would block scale-down.
            answered: if i % 97 == 5 && i < 3000 { 1 } else { 2 },
            asked: 2,
        };
        let failed = (3605..3608).contains(&i) || (5000..5012).contains(&i) || i % 251 == 7;
        let replicas = Replicas {
            current,
            ready: current,
        };
        let step = runner.tick((!failed).then_some(reading), replicas, *now);
        if let Some(n) = step.scale_to {
            current = n;
            runner.scaled(*now, &step.decision.reason);
        }
        steps.push((*now, step));
    }
    assert!(steps.iter().any(|(_, s)| s.stale), "no stale tick tested");
    assert!(steps.iter().any(|(_, s)| s.observation.partial));
    assert!(steps.iter().any(|(_, s)| s.decision.mode == Mode::Panic));
    assert!(
        steps
            .iter()
            .any(|(_, s)| s.decision.desired < s.observation.current_replicas)
    );

    let input: String = steps
        .iter()
        .map(|(now, s)| line(*now, &s.observation) + "\n")
        .collect();
    let mut output = Vec::new();
    let n = filter::run(&policy, BufReader::new(input.as_bytes()), &mut output).unwrap();
    assert_eq!(n, steps.len());
    let lines: Vec<DecisionLine> = String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, ((now, step), got)) in steps.iter().zip(&lines).enumerate() {
        let d = &step.decision;
        assert_eq!(got.now, *now, "line {i}");
        assert_eq!(got.desired, d.desired, "line {i}: {}", d.reason);
        assert_eq!(got.mode, d.mode.as_str(), "line {i}");
        assert_eq!(got.metrics_missing, d.metrics_missing, "line {i}");
        assert_eq!(got.limited, d.limited, "line {i}");
        // The loop names the balancers that answered; the filter has no count.
        let reason = if step.observation.partial && !step.stale {
            format!("{} (1 of 2 balancer replicas answered)", got.reason)
        } else {
            got.reason.clone()
        };
        assert_eq!(reason, d.reason, "line {i}");
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_usher-autoscaler")
}

/// Splits a CSV line into fields (RFC 4180 quotes).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            (c, _) => out.last_mut().unwrap().push(c),
        }
    }
    out
}

#[test]
fn simulate_compare_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .current_dir(repo())
        .args([
            "simulate",
            "--compare",
            "--policy",
            "examples/policies/exam-day.yaml",
            "--trace",
            "examples/traces/exam-cliff.csv",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One table, three rows.
    let row = |label: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {label} ")))
            .unwrap_or_else(|| panic!("no row for {label} in\n{stdout}"));
        line.split('|').map(|c| c.trim().to_string()).collect()
    };
    let header = row("policy");
    let col = header.iter().position(|c| c == "SLO-violation s").unwrap();
    let violations = |label: &str| -> u64 { row(label)[col].parse().unwrap() };
    let (usher, hpa, _kpa) = (
        violations("moodle-exam-day"),
        violations("hpa-like"),
        violations("kpa-like"),
    );
    assert!(
        usher < hpa,
        "Usher's policy broke the SLO for {usher} s, hpa-like for {hpa} s\n{stdout}"
    );
    assert!(stdout.contains("1 surge(s) at 1:00:00"), "{stdout}");

    // The timeline: a header, then 7,200 rows per policy of 14 fields.
    let csv = std::fs::read_to_string(dir.path().join("timeline.csv")).unwrap();
    let mut lines = csv.lines();
    let head = fields(lines.next().unwrap());
    assert_eq!(head.len(), 14);
    assert_eq!(head[0], "label");
    let mut per_label = std::collections::BTreeMap::<String, usize>::new();
    for l in lines {
        let f = fields(l);
        assert_eq!(f.len(), 14, "{l}");
        f[1].parse::<f64>().unwrap();
        f[8].parse::<u32>().unwrap();
        *per_label.entry(f[0].clone()).or_default() += 1;
    }
    assert_eq!(
        per_label.into_iter().collect::<Vec<_>>(),
        [
            ("hpa-like".to_string(), 7200),
            ("kpa-like".to_string(), 7200),
            ("moodle-exam-day".to_string(), 7200)
        ]
    );

    // The chart: an SVG document naming every policy.
    let svg = std::fs::read_to_string(dir.path().join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
    for label in ["moodle-exam-day", "hpa-like", "kpa-like"] {
        assert!(svg.contains(label), "the chart does not name {label}");
    }
}

#[test]
fn the_sample_traces_are_what_trace_generates() {
    for kind in ["weekday", "exam-cliff", "surprise-spike", "daily-peak"] {
        let out = Command::new(bin())
            .args(["trace", "--kind", kind, "--seed", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = std::fs::read(repo().join(format!("examples/traces/{kind}.csv"))).unwrap();
        assert!(
            out.stdout == file,
            "examples/traces/{kind}.csv is not `trace --kind {kind} --seed 1`"
        );
    }
    let out = Command::new(bin())
        .args(["trace", "--kind", "tuesday"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exam-cliff"));
}

/// The daily-peak trace (two weeks, an unscheduled evening peak every day)
/// through the same policy with and without `predictive`: in week two the
/// forecast, learnt from week one, pre-scales before each peak and removes
/// most violation seconds; week one, with no history yet, is the same.
#[test]
fn predictive_removes_most_of_the_second_weeks_violations_on_a_recurring_peak() {
    let text = std::fs::read_to_string(repo().join("examples/traces/daily-peak.csv")).unwrap();
    let trace = sim::trace::parse(&text).unwrap();
    let base = "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata: {name: NAME}
spec:
  scaleTargetRef: {kind: Deployment, name: moodle}
  pool: moodle
  minReplicas: 4
  maxReplicas: 80
  target: {inFlightPerPod: 8}
  metricsSource: {urls: ['http://127.0.0.1:9901/metrics']}
";
    let reactive = policy::from_str(&base.replace("NAME", "reactive")).unwrap();
    let predictive = policy::from_str(&format!(
        "{}  predictive: {{leadTime: 30m, weeks: 1, margin: 0.2}}\n",
        base.replace("NAME", "predictive")
    ))
    .unwrap();
    let mut cfg = config(
        trace,
        vec![
            Contender::usher("reactive", reactive),
            Contender::usher("predictive", predictive),
        ],
        Arrivals::Poisson,
        1,
    );
    cfg.start = None; // the trace's own clock: Monday 2026-11-30 00:00 UTC
    let report = sim::run(&cfg);
    let week = |p: &sim::engine::Played, w: usize| -> u64 {
        p.summary.daily_violations.iter().skip(7 * w).take(7).sum()
    };
    let (r, p) = (&report.played[0], &report.played[1]);
    println!(
        "violation seconds: reactive {} + {}, predictive {} + {}",
        week(r, 0),
        week(r, 1),
        week(p, 0),
        week(p, 1)
    );
    assert!(
        week(r, 1) >= 50,
        "the trace's peaks must hurt a reactive policy: {}",
        week(r, 1)
    );
    assert_eq!(
        week(p, 0),
        week(r, 0),
        "week one has no history: the two must match"
    );
    assert!(
        week(p, 1) * 4 <= week(r, 1),
        "predictive left {} of reactive's {} violation seconds in week two",
        week(p, 1),
        week(r, 1)
    );
}
