//! The peak-hour demo end to end, over real sockets on 127.0.0.1: the real
//! binary runs a short day (balancer, autoscaler in local mode, its own pod
//! processes, goose learners) into a temporary directory. It must exit 0,
//! print its summary, scale up for the surge (and pre-warm the lecture)
//! without one failed request, and leave a CSV and an SVG chart.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The day's length; the lecture's whole minute may add up to a minute.
const DURATION: &str = "30s";
/// Set-up, a baseline of up to 68 s, the 35 s day, shutdown, and slack.
const WITHIN: Duration = Duration::from_secs(300);
/// Pods the demo's schedule pre-warms for the lecture.
const LECTURE_FLOOR: u32 = 4;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A timeline row: the numeric columns by name.
struct Row {
    t: f64,
    errors: f64,
    replicas: u32,
}

fn rows(csv: &str, label: &str) -> Vec<Row> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
    };
    let (t, errors, replicas) = (col("t"), col("errors"), col("replicas"));
    assert_eq!(header.last(), Some(&"reason"), "the free text comes last");
    lines
        .map(|l| l.splitn(header.len(), ',').collect::<Vec<_>>())
        .filter(|f| f[0] == label)
        .map(|f| Row {
            t: f[t].parse().unwrap(),
            errors: f[errors].parse().unwrap(),
            replicas: f[replicas].parse().unwrap(),
        })
        .collect()
}

#[test]
fn a_short_day_prewarms_the_lecture_and_scales_up_for_the_surge_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_peak-hour"))
        .args(["--duration", DURATION, "--seed", "7", "--out"])
        .arg(&out)
        .env("COLUMNS", "140")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let output = || {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}\n--- log (last 40 lines) ---\n{}",
            std::fs::read_to_string(&stdout_path).unwrap_or_default(),
            std::fs::read_to_string(&stderr_path).unwrap_or_default(),
            std::fs::read_to_string(out.join("peak-hour.log"))
                .unwrap_or_default()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > WITHIN {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the demo did not finish within {WITHIN:?}\n{}", output());
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let took = started.elapsed();
    assert!(
        status.success(),
        "the demo exited with {status}\n{}",
        output()
    );
    let stdout = read(&stdout_path);
    let summary_line = stdout
        .lines()
        .find(|l| l.starts_with("summary: usher: "))
        .unwrap_or_else(|| panic!("no summary line\n{}", output()));
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("req/s") && l.contains("pods")),
        "no live line\n{}",
        output()
    );

    let summary: serde_json::Value =
        serde_json::from_str(&read(&out.join("summary.json"))).unwrap();
    let at = |key: &str| summary["profile"][key].as_f64().unwrap();
    let (lecture, surge, end) = (at("lecture"), at("surge"), at("end"));
    let run = &summary["runs"][0];
    assert_eq!(run["label"], "usher");
    assert_eq!(
        run["errors"],
        0,
        "failed requests: {}\n{}",
        run["failures"],
        output()
    );
    assert!(
        run["requests"].as_u64().unwrap() >= 100,
        "too few requests: {run}"
    );

    let csv = read(&out.join("timeline.csv"));
    let rows = rows(&csv, "usher");
    assert!(
        rows.len() as f64 >= end - 1.0,
        "{} rows for a day of {end} s",
        rows.len()
    );
    let errors: f64 = rows.iter().map(|r| r.errors).sum();
    assert_eq!(errors, 0.0, "the timeline counts failed requests\n{csv}");
    let replicas_at = |t: f64| rows.iter().rfind(|r| r.t <= t).map_or(0, |r| r.replicas);
    assert!(
        replicas_at(lecture) >= LECTURE_FLOOR,
        "the schedule did not pre-warm {LECTURE_FLOOR} pods before the lecture at {lecture} s\n{csv}"
    );
    let before_surge = replicas_at(surge);
    let peak_in_surge = rows
        .iter()
        .filter(|r| r.t >= surge && r.t < end)
        .map(|r| r.replicas)
        .max()
        .unwrap_or(0);
    assert!(
        peak_in_surge > 1 && peak_in_surge > before_surge,
        "no scale-up for the surge at {surge} s: {before_surge} pods before, at most {peak_in_surge} after\n{csv}"
    );

    let svg = read(&out.join("peak-hour.svg"));
    assert!(
        svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "not an SVG: {}",
        &svg[..svg.len().min(200)]
    );
    // Every pod was stopped and left the balancer's endpoints file.
    assert_eq!(read(&out.join("runs/usher/endpoints.json")).trim(), "[]");
    println!(
        "{summary_line}\n(lecture at {lecture} s, surge at {surge} s: {before_surge} → {peak_in_surge} pods; the demo took {took:.1?})"
    );
}
