//! The `usher-autoscaler` binary: `check` and the `decide` filter.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::{TimeZone, Utc};
use usher_autoscaler::decide::{History, decide};
use usher_autoscaler::filter::{DecisionLine, ObservationLine};
use usher_autoscaler::policy;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_usher-autoscaler")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

#[test]
fn check_accepts_the_examples_and_rejects_with_the_field() {
    let out = Command::new(bin())
        .arg("check")
        .args(
            [
                "exam-day.yaml",
                "steady-weekday.yaml",
                "enrolment-week.yaml",
            ]
            .map(|f| examples().join(f)),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.contains(": OK: ")).count(),
        3,
        "{text}"
    );
    assert!(text.contains("moodle-exam-day scales Deployment moodle from pool `moodle`, 4 to 80 replicas, 1 schedule(s)"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let good = std::fs::read_to_string(examples().join("exam-day.yaml")).unwrap();
    std::fs::write(&bad, good.replace("Europe/Berlin", "Europe/Atlantis")).unwrap();
    let out = Command::new(bin())
        .args(["check"])
        .arg(&bad)
        .arg(examples().join("exam-day.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml: field `spec.schedules[0].timeZone`"),
        "{err}"
    );
    assert!(err.contains("not an IANA time zone"), "{err}");
}

/// A surge, a lull and missing metrics, one observation per second.
fn observations() -> Vec<ObservationLine> {
    // Afternoon: outside the exam pre-warm, so the surge meets 4 pods.
    let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap();
    let mut replicas = 4;
    let policy = policy::load(&examples().join("exam-day.yaml")).unwrap();
    let mut history = History::default();
    (0..400)
        .map(|i| {
            let in_flight = match i {
                0..100 => 20.0,
                100..160 => 400.0,
                300..310 => f64::NAN,
                _ => 30.0,
            };
            let line = ObservationLine {
                now: t0 + chrono::Duration::seconds(i),
                ready_replicas: replicas,
                current_replicas: replicas,
                in_flight: (!in_flight.is_nan()).then_some(in_flight),
                queued: Some(0.0),
                requests_per_second: Some(50.0),
                p95_seconds: Some(0.1),
                partial: false,
                forecast: None,
            };
            // Apply each decision, as the controller would, to shape the next line.
            replicas = decide(&policy, &line.observation(), &mut history, line.now).desired;
            line
        })
        .collect()
}

#[test]
fn decide_filter_equals_the_controllers_decisions() {
    let policy_path = examples().join("exam-day.yaml");
    let lines = observations();
    let mut child = Command::new(bin())
        .args(["decide", "--policy"])
        .arg(&policy_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in &lines {
            writeln!(stdin, "{}", serde_json::to_string(l).unwrap()).unwrap();
        }
        writeln!(stdin).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let got: Vec<DecisionLine> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let policy = policy::load(&policy_path).unwrap();
    let mut history = History::default();
    let want: Vec<DecisionLine> = lines
        .iter()
        .map(|l| {
            DecisionLine::new(
                l.now,
                &decide(&policy, &l.observation(), &mut history, l.now),
            )
        })
        .collect();
    assert_eq!(got.len(), 400);
    assert_eq!(got, want);
    // The sequence exercised what it meant to.
    assert!(got.iter().any(|d| d.mode == "panic"));
    assert!(got[300..310].iter().all(|d| d.metrics_missing));
    assert!(got.iter().map(|d| d.desired).max().unwrap() > 30);
}

#[test]
fn decide_filter_rejects_a_malformed_line_by_number() {
    let mut child = Command::new(bin())
        .args(["decide", "--policy"])
        .arg(examples().join("exam-day.yaml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"now\":\"2026-11-23T09:00:00Z\",\"readyReplicas\":2,\"currentReplicas\":2,\"inFlight\":1}\n{\"now\": 5}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2:"));
}
