//! What a run comes to: the summary line, the comparison table and
//! `summary.json`, computed from the timeline rows, the scale events and
//! the learners' totals.

use usher_autoscaler::timeline::Row;

use super::load::Totals;
use super::profile::Profile;

/// A change of the replicas asked for, in seconds since the load's start.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleEvent {
    /// Seconds since the load test started (negative: during the set-up).
    pub t: f64,
    /// Replicas before.
    pub from: u32,
    /// Replicas after.
    pub to: u32,
    /// The decision's reason.
    pub reason: String,
}

/// One run's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The policy's label.
    pub label: String,
    /// Requests the learners sent and got an answer to (or a failure).
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// 95th percentile latency over the whole run, as the learners saw it.
    pub p95_ms: Option<f64>,
    /// The same during the lecture (its learners arriving until leaving).
    pub lecture_p95_ms: Option<f64>,
    /// The same during the surge.
    pub surge_p95_ms: Option<f64>,
    /// Most replicas asked for at once.
    pub peak_replicas: u32,
    /// Replicas asked for, summed over the seconds of the run.
    pub pod_seconds: f64,
    /// Seconds whose p95 broke the objective or that had a failed request.
    pub violation_seconds: u32,
    /// Seconds in panic mode.
    pub panic_seconds: u32,
    /// Seconds from the lecture's start to the first scale-up for it
    /// (negative: pre-warmed ahead of it); `None`: none.
    pub lecture_first_up_s: Option<f64>,
    /// Ready pods when the lecture's learners arrived.
    pub ready_at_lecture: u32,
    /// Seconds from the surge's start to the first scale-up after it.
    pub surge_first_up_s: Option<f64>,
    /// Replicas asked for at the end.
    pub final_replicas: u32,
    /// The first failures, described.
    pub failures: Vec<String>,
}

/// The `q` quantile (0–1) of `values` (nearest rank); `None` if empty.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// The `q` quantile of the latencies of requests that finished in
/// `[from, until)` seconds.
fn percentile_between(samples: &[(f64, f64)], from: f64, until: f64, q: f64) -> Option<f64> {
    let v: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < until)
        .map(|(_, ms)| *ms)
        .collect();
    percentile(&v, q)
}

/// The first scale-up at or after `from` and before `until`, in seconds
/// relative to `origin`.
fn first_up(events: &[ScaleEvent], from: f64, until: f64, origin: f64) -> Option<f64> {
    events
        .iter()
        .find(|e| e.to > e.from && e.t >= from && e.t < until)
        .map(|e| e.t - origin)
}

impl RunSummary {
    /// Figures of one run.
    pub fn new(
        label: &str,
        profile: &Profile,
        rows: &[Row],
        events: &[ScaleEvent],
        totals: &Totals,
    ) -> Self {
        let lecture = profile.lecture as f64;
        let ready_at_lecture = rows.iter().find(|r| r.t >= lecture).map_or(0, |r| r.ready);
        Self {
            label: label.to_string(),
            requests: totals.ok + totals.failed,
            errors: totals.failed,
            p95_ms: percentile(
                &totals.samples.iter().map(|s| s.1).collect::<Vec<_>>(),
                0.95,
            ),
            lecture_p95_ms: percentile_between(&totals.samples, lecture, profile.lull as f64, 0.95),
            surge_p95_ms: percentile_between(
                &totals.samples,
                profile.surge as f64,
                profile.decline as f64,
                0.95,
            ),
            peak_replicas: rows.iter().map(|r| r.replicas).max().unwrap_or(0),
            pod_seconds: rows.iter().map(|r| f64::from(r.replicas)).sum(),
            violation_seconds: rows.iter().filter(|r| r.violation).count() as u32,
            panic_seconds: rows.iter().filter(|r| r.panic).count() as u32,
            lecture_first_up_s: first_up(
                events,
                profile.prewarm as f64 - 1.0,
                profile.surge as f64,
                lecture,
            ),
            ready_at_lecture,
            surge_first_up_s: first_up(
                events,
                profile.surge as f64,
                profile.end as f64,
                profile.surge as f64,
            ),
            final_replicas: rows.last().map_or(0, |r| r.replicas),
            failures: totals.failures.clone(),
        }
    }

    /// How the lecture went, in words.
    pub fn lecture_words(&self) -> String {
        match self.lecture_first_up_s {
            Some(s) if s <= 0.0 => format!(
                "pre-warmed {:.0} s ahead, {} pods ready when it started",
                -s, self.ready_at_lecture
            ),
            Some(s) => format!(
                "first scale-up {s:.1} s after it started ({} pods ready then)",
                self.ready_at_lecture
            ),
            None => format!(
                "no scale-up ({} pods ready when it started)",
                self.ready_at_lecture
            ),
        }
    }

    /// How the surge went, in words.
    pub fn surge_words(&self) -> String {
        match self.surge_first_up_s {
            Some(s) => format!("first scale-up {s:.1} s after it started"),
            None => "no scale-up".to_string(),
        }
    }

    /// The one-line summary (`summary: …`).
    pub fn line(&self) -> String {
        format!(
            "summary: {}: {} requests, {} errors, p95 {}, peak {} pods, {:.0} pod-seconds, {} s over the objective; lecture: p95 {}, {}; surge: p95 {}, {}",
            self.label,
            self.requests,
            self.errors,
            ms(self.p95_ms),
            self.peak_replicas,
            self.pod_seconds,
            self.violation_seconds,
            ms(self.lecture_p95_ms),
            self.lecture_words(),
            ms(self.surge_p95_ms),
            self.surge_words()
        )
    }

    /// As JSON, for scripts and the test.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "label": self.label,
            "requests": self.requests,
            "errors": self.errors,
            "p95Ms": self.p95_ms,
            "lectureP95Ms": self.lecture_p95_ms,
            "surgeP95Ms": self.surge_p95_ms,
            "peakReplicas": self.peak_replicas,
            "podSeconds": self.pod_seconds,
            "violationSeconds": self.violation_seconds,
            "panicSeconds": self.panic_seconds,
            "lectureFirstScaleUpSeconds": self.lecture_first_up_s,
            "readyAtLecture": self.ready_at_lecture,
            "surgeFirstScaleUpSeconds": self.surge_first_up_s,
            "finalReplicas": self.final_replicas,
            "failures": self.failures,
        })
    }
}

/// A latency for people: `612 ms`, `1.3 s`, or `–`.
pub fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".to_string(),
        Some(v) if v >= 1000.0 => format!("{:.1} s", v / 1000.0),
        Some(v) => format!("{v:.0} ms"),
    }
}

/// Seconds relative to an event, signed: `-5.0 s`, `+1.2 s`, or `never`.
fn rel(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_string(), |s| format!("{s:+.1} s"))
}

/// The runs side by side.
pub fn table(runs: &[RunSummary]) -> String {
    let header = [
        "policy",
        "requests",
        "errors",
        "p95",
        "s > SLO",
        "peak pods",
        "pod-s",
        "lecture p95",
        "lecture: 1st up",
        "ready at lecture",
        "surge p95",
        "surge: 1st up",
        "pods at end",
    ];
    let rows: Vec<[String; 13]> = runs
        .iter()
        .map(|r| {
            [
                r.label.clone(),
                r.requests.to_string(),
                r.errors.to_string(),
                ms(r.p95_ms),
                r.violation_seconds.to_string(),
                r.peak_replicas.to_string(),
                format!("{:.0}", r.pod_seconds),
                ms(r.lecture_p95_ms),
                rel(r.lecture_first_up_s),
                r.ready_at_lecture.to_string(),
                ms(r.surge_p95_ms),
                rel(r.surge_first_up_s),
                r.final_replicas.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    // A Markdown table, as `usher-autoscaler simulate` prints: the policy
    // left, the figures right-aligned.
    let right = |i: usize| i > 0;
    let cell = |i: usize, c: &str| {
        let pad = " ".repeat(widths[i].saturating_sub(c.chars().count()));
        if right(i) {
            format!("{pad}{c}")
        } else {
            format!("{c}{pad}")
        }
    };
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut out = line(header.iter().enumerate().map(|(i, h)| cell(i, h)).collect());
    out += &line(
        (0..header.len())
            .map(|i| {
                let dashes = "-".repeat(widths[i].max(3));
                if right(i) {
                    format!("{}:", &dashes[1..])
                } else {
                    dashes
                }
            })
            .collect(),
    );
    for r in &rows {
        out += &line(r.iter().enumerate().map(|(i, c)| cell(i, c)).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.95), Some(95.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&[], 0.95), None);
    }

    fn row(t: u32, replicas: u32, ready: u32) -> Row {
        Row {
            t: f64::from(t),
            replicas,
            ready,
            desired: replicas,
            ..Row::default()
        }
    }

    #[test]
    fn a_run_is_summed_up() {
        let profile = Profile::new(Duration::from_secs(90), 15);
        let mut rows: Vec<Row> = (0..profile.total as u32).map(|t| row(t, 1, 1)).collect();
        for r in &mut rows[16..40] {
            r.replicas = 4;
            r.ready = if r.t >= 19.0 { 4 } else { 1 };
        }
        rows[50].violation = true;
        rows[50].panic = true;
        let events = vec![
            ScaleEvent {
                t: -2.0,
                from: 0,
                to: 1,
                reason: "start".into(),
            },
            ScaleEvent {
                t: 15.3,
                from: 1,
                to: 4,
                reason: "schedule".into(),
            },
            ScaleEvent {
                t: 48.5,
                from: 2,
                to: 9,
                reason: "panic".into(),
            },
        ];
        let totals = Totals {
            ok: 99,
            failed: 1,
            // One request a second, 1 ms slower each second.
            samples: (1..=100).map(|t| (f64::from(t), f64::from(t))).collect(),
            failures: vec!["quiz: 503".into()],
        };
        let s = RunSummary::new("usher", &profile, &rows, &events, &totals);
        assert_eq!((s.requests, s.errors, s.p95_ms), (100, 1, Some(95.0)));
        // Lecture: 21..37 s; surge: 47..63 s.
        assert_eq!(s.lecture_p95_ms, Some(36.0));
        assert_eq!(s.surge_p95_ms, Some(62.0));
        assert_eq!(s.peak_replicas, 4);
        assert_eq!(s.pod_seconds, 94.0 + 24.0 * 3.0);
        assert_eq!((s.violation_seconds, s.panic_seconds), (1, 1));
        assert_eq!(s.lecture_first_up_s, Some(15.3 - 21.0));
        assert_eq!(s.ready_at_lecture, 4);
        assert_eq!(s.surge_first_up_s, Some(1.5));
        assert!(
            s.line()
                .starts_with("summary: usher: 100 requests, 1 errors")
        );
        assert!(
            s.lecture_words().starts_with("pre-warmed 6 s ahead"),
            "{}",
            s.lecture_words()
        );
        let t = table(&[s.clone(), s]);
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(t.starts_with("| policy |"), "{t}");
        assert!(t.contains("-5.7 s") && t.contains("+1.5 s"), "{t}");
    }
}
