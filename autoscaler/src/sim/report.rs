//! What a run cost and how it served, per policy, and the table that puts
//! the policies side by side.

use std::fmt::Write as _;
use std::time::Duration;

use super::pods::Second;

/// Totals of one policy's run, counted at full (one-second) resolution.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    /// Seconds whose p95 latency exceeded the objective or that had
    /// failed requests.
    pub violation_seconds: u64,
    /// Requests that failed (queue timeout or no ready pod).
    pub failed_requests: f64,
    /// Sum over seconds of the pods asked for, ready or not (the cost).
    pub pod_seconds: u64,
    /// Most pods asked for at once.
    pub peak_replicas: u32,
    /// Decisions that changed the replicas.
    pub scale_events: u64,
    /// Decision times (seconds since the start) that raised the replicas.
    pub scale_ups: Vec<u64>,
    /// Per surge in the trace: seconds from its start to the first
    /// scale-up (`None`: none within 10 minutes, before the next surge).
    pub reactions: Vec<Option<u64>>,
    /// Violation seconds per simulated day (day 0 first).
    pub daily_violations: Vec<u64>,
}

impl Summary {
    /// Counts simulated second `t`; returns whether it broke the objective.
    pub fn count(&mut self, t: u64, s: &Second, slo: Duration) -> bool {
        let violation = s.failed > 0.0 || s.p95.is_some_and(|p| p > slo);
        self.violation_seconds += u64::from(violation);
        let day = (t / 86_400) as usize;
        if self.daily_violations.len() <= day {
            self.daily_violations.resize(day + 1, 0);
        }
        self.daily_violations[day] += u64::from(violation);
        self.failed_requests += s.failed;
        self.pod_seconds += u64::from(s.replicas);
        self.peak_replicas = self.peak_replicas.max(s.replicas);
        violation
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    /// Policy label.
    pub label: &'a str,
    /// Decision period.
    pub sync: Duration,
    /// Its totals.
    pub summary: &'a Summary,
}

/// Column titles of [`table`].
pub const COLUMNS: [&str; 8] = [
    "policy",
    "sync",
    "SLO-violation s",
    "failed requests",
    "pod-seconds",
    "peak replicas",
    "scale events",
    "first scale after surge",
];

/// A Markdown table, one row per policy.
pub fn table(lines: &[Line<'_>]) -> String {
    let cells: Vec<[String; 8]> = lines
        .iter()
        .map(|l| {
            let s = l.summary;
            [
                l.label.to_string(),
                humantime::format_duration(l.sync).to_string(),
                s.violation_seconds.to_string(),
                format!("{:.0}", s.failed_requests),
                s.pod_seconds.to_string(),
                s.peak_replicas.to_string(),
                s.scale_events.to_string(),
                reactions(&s.reactions),
            ]
        })
        .collect();
    let mut widths = COLUMNS.map(|c| c.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    // Text columns left-aligned, numbers right-aligned.
    let left = |i: usize| i == 0 || i == COLUMNS.len() - 1;
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = (usize, String)>| {
        out.push('|');
        for (i, c) in cells {
            let pad = widths[i] - c.chars().count();
            if left(i) {
                let _ = write!(out, " {c}{} |", " ".repeat(pad));
            } else {
                let _ = write!(out, " {}{c} |", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(&mut COLUMNS.iter().map(|c| c.to_string()).enumerate());
    line(&mut widths.iter().enumerate().map(|(i, w)| {
        let rule = if left(i) {
            "-".repeat(*w)
        } else {
            format!("{}:", "-".repeat(w - 1))
        };
        (i, rule)
    }));
    for row in cells {
        line(&mut row.into_iter().enumerate());
    }
    out
}

/// `2s`, `1s, 16s`, or for many surges `14 surges: median 2s, max 16s`;
/// `-` where no scale-up followed; `no surge` for a trace without any.
fn reactions(r: &[Option<u64>]) -> String {
    let one = |x: &Option<u64>| x.map_or("-".to_string(), |s| format!("{s}s"));
    match r.len() {
        0 => "no surge".into(),
        1..=4 => r.iter().map(one).collect::<Vec<_>>().join(", "),
        n => {
            let mut seen: Vec<u64> = r.iter().flatten().copied().collect();
            seen.sort_unstable();
            let missed = n - seen.len();
            let mut s = format!("{n} surges");
            if let Some(max) = seen.last() {
                let _ = write!(s, ": median {}s, max {max}s", seen[seen.len() / 2]);
            }
            if missed > 0 {
                let _ = write!(s, ", {missed} without");
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_seconds() {
        let mut s = Summary::default();
        let slo = Duration::from_millis(500);
        let second = |p95: u64, failed: f64, replicas: u32| Second {
            p95: Some(Duration::from_millis(p95)),
            failed,
            replicas,
            ..Second::default()
        };
        assert!(!s.count(0, &second(500, 0.0, 3), slo));
        assert!(s.count(1, &second(501, 0.0, 5), slo));
        assert!(s.count(86_400, &second(100, 2.0, 4), slo));
        assert_eq!(s.violation_seconds, 2);
        assert_eq!(s.failed_requests, 2.0);
        assert_eq!(s.pod_seconds, 12);
        assert_eq!(s.peak_replicas, 5);
        assert_eq!(s.daily_violations, vec![1, 1]);
    }

    #[test]
    fn table_aligns_and_summarises_surges() {
        let a = Summary {
            violation_seconds: 12,
            pod_seconds: 3600,
            peak_replicas: 9,
            scale_events: 3,
            reactions: vec![Some(1), None],
            ..Summary::default()
        };
        let b = Summary {
            reactions: vec![Some(3), Some(1), Some(15), None, Some(2)],
            ..Summary::default()
        };
        let t = table(&[
            Line {
                label: "usher",
                sync: Duration::from_secs(1),
                summary: &a,
            },
            Line {
                label: "hpa-like",
                sync: Duration::from_secs(15),
                summary: &b,
            },
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
        assert!(lines[2].starts_with("| usher    |   1s |"), "{t}");
        assert!(lines[2].contains("| 1s, -   "), "{t}");
        assert!(
            lines[3].contains("5 surges: median 3s, max 15s, 1 without"),
            "{t}"
        );
        assert_eq!(reactions(&[]), "no surge");
    }
}
