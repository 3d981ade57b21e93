//! The policy lab: plays a load trace through a pod model and through the
//! controller's own [`Runner`](crate::runner::Runner) and `decide()`, on
//! simulated time, for one or more policies side by side, optionally next
//! to an HPA-like and a KPA-like reference (`usher-autoscaler simulate`).
//!
//! - [`trace`]: the CSV format; [`generate`]: sample traces;
//! - [`arrivals`]: seeded Poisson arrivals; [`pods`]: the pod model;
//! - [`engine`]: one policy's run; [`reference`]: the reference policies;
//! - [`surge`]: surges in a trace; [`report`]: totals and the table.
//!
//! Timelines and charts are written with [`crate::timeline`].

pub mod arrivals;
pub mod engine;
pub mod generate;
pub mod pods;
pub mod reference;
pub mod report;
pub mod surge;
pub mod trace;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

pub use self::arrivals::Arrivals;
pub use self::engine::{Contender, Played, Setup};
pub use self::pods::PodModel;
pub use self::reference::reference_policies;
pub use self::trace::Trace;
use crate::policy::Policy;
use crate::timeline::{self, Timeline};

/// The simulated wall clock of `t = 0` when neither `--start` nor the
/// trace's `time` column sets one: Monday 2026-11-30 08:00 UTC.
pub fn default_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 8, 0, 0)
        .single()
        .unwrap_or_default()
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name of the trace, for the report and the chart's title.
    pub trace_name: String,
    /// The trace.
    pub trace: Trace,
    /// The policies, in table order.
    pub contenders: Vec<Contender>,
    /// Wall-clock time of `t = 0` (`None`: the trace's first `time`, else
    /// [`default_start`]).
    pub start: Option<DateTime<Utc>>,
    /// The pods.
    pub model: PodModel,
    /// Latency objective for the p95.
    pub slo: Duration,
    /// How requests are drawn from the rates.
    pub arrivals: Arrivals,
    /// Seed of every random draw.
    pub seed: u64,
    /// Pods at `t = 0` for every policy (`None`: per policy, see
    /// [`engine::initial_replicas`]).
    pub initial: Option<u32>,
    /// Seconds per timeline row (`None`: [`auto_step`]).
    pub timeline_step: Option<u64>,
}

/// The contenders for `policies` (labels, policies), plus the reference
/// policies derived from the first one when `compare` is set. Repeated
/// labels get `#2`, `#3`… appended.
pub fn contenders(policies: Vec<(String, Policy)>, compare: bool) -> Vec<Contender> {
    let references = match (compare, policies.first()) {
        (true, Some((_, first))) => reference_policies(first),
        _ => Vec::new(),
    };
    let mut out: Vec<Contender> = policies
        .into_iter()
        .map(|(label, p)| Contender::usher(label, p))
        .chain(
            references
                .into_iter()
                .map(|(label, policy, sync)| Contender {
                    label,
                    policy,
                    sync,
                }),
        )
        .collect();
    for i in 1..out.len() {
        let taken = out[..i].iter().filter(|c| c.label == out[i].label).count();
        if taken > 0 {
            out[i].label = format!("{}#{}", out[i].label, taken + 1);
        }
    }
    out
}

/// Seconds per timeline row for a trace of `seconds`: the smallest of 1,
/// 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15, 30 min, 1 h that keeps a
/// timeline within 10,000 rows.
pub fn auto_step(seconds: usize) -> u64 {
    const STEPS: [u64; 13] = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
    STEPS
        .into_iter()
        .find(|s| seconds as u64 / s <= 10_000)
        .unwrap_or(3600)
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was played, for the header.
    pub config: Config,
    /// The wall-clock start used.
    pub start: DateTime<Utc>,
    /// Surges in the trace (seconds).
    pub onsets: Vec<u64>,
    /// One result per contender, in order.
    pub played: Vec<Played>,
}

/// Plays every contender over the trace.
pub fn run(config: &Config) -> Report {
    run_with(config, &mut |_, _, _, _| {})
}

/// Decision callback of [`run_with`]: contender index, second, time, step.
pub type OnStep<'a> = &'a mut dyn FnMut(usize, u64, DateTime<Utc>, &crate::runner::Step);

/// [`run`], calling `on_step` after every decision of every contender.
pub fn run_with(config: &Config, on_step: OnStep<'_>) -> Report {
    let start = config
        .start
        .or(config.trace.start)
        .unwrap_or_else(default_start);
    let rps = &config.trace.rps;
    let arrivals = arrivals::draw(rps, config.arrivals, config.seed);
    let onsets = surge::onsets(rps);
    let setup = Setup {
        start,
        model: config.model,
        slo: config.slo,
        initial: config.initial,
        seed: config.seed,
        timeline_step: config
            .timeline_step
            .unwrap_or_else(|| auto_step(rps.len()))
            .max(1),
    };
    let played = config
        .contenders
        .iter()
        .enumerate()
        .map(|(i, c)| {
            engine::play(c, rps, &arrivals, &onsets, &setup, &mut |t, now, step| {
                on_step(i, t, now, step)
            })
        })
        .collect();
    Report {
        config: config.clone(),
        start,
        onsets,
        played,
    }
}

/// `h:mm:ss` since the start.
fn clock(t: u64) -> String {
    format!("{}:{:02}:{:02}", t / 3600, t % 3600 / 60, t % 60)
}

impl Report {
    /// What was played: trace, start, surges, pod model, objective.
    pub fn header(&self) -> String {
        let c = &self.config;
        let m = &c.model;
        let surges = match self.onsets.len() {
            0 => "no surge".to_string(),
            n @ 1..=5 => format!(
                "{n} surge(s) at {}",
                self.onsets
                    .iter()
                    .map(|&t| clock(t))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            n => format!("{n} surges"),
        };
        let step = self
            .played
            .first()
            .and_then(|p| match p.timeline.rows.as_slice() {
                [a, b, ..] => Some(b.t - a.t),
                _ => None,
            });
        format!(
            "trace {}: {} s from {} ({}), {surges}\n\
             pods: {:.0} req/s each ({:.0} workers x {}), cold start {}, queue timeout {}; \
             SLO: p95 <= {}; arrivals: {}, seed {}{}\n",
            c.trace_name,
            c.trace.seconds(),
            self.start
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.start.format("%A"),
            m.pod_rps,
            m.workers(),
            humantime::format_duration(m.service_time),
            humantime::format_duration(m.cold_start),
            humantime::format_duration(m.queue_timeout),
            humantime::format_duration(c.slo),
            match c.arrivals {
                Arrivals::Poisson => "Poisson",
                Arrivals::Exact => "exact",
            },
            c.seed,
            step.filter(|s| *s > 1.0)
                .map(|s| format!("; timeline every {s} s"))
                .unwrap_or_default(),
        )
    }

    /// The Markdown table, one row per contender.
    pub fn table(&self) -> String {
        let lines: Vec<report::Line<'_>> = self
            .config
            .contenders
            .iter()
            .zip(&self.played)
            .map(|(c, p)| report::Line {
                label: &c.label,
                sync: c.sync,
                summary: &p.summary,
            })
            .collect();
        report::table(&lines)
    }

    /// The timelines, one per contender.
    pub fn timelines(&self) -> Vec<Timeline> {
        self.played.iter().map(|p| p.timeline.clone()).collect()
    }

    /// Writes `timeline.csv` and `chart.svg` into `dir` (created if
    /// needed) and returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: cannot create the directory: {e}", dir.display()))?;
        let timelines = self.timelines();
        let csv = dir.join("timeline.csv");
        timeline::write_csv(&csv, &timelines).map_err(|e| format!("{}: {e}", csv.display()))?;
        let svg = dir.join("chart.svg");
        let labels: Vec<&str> = timelines.iter().map(|t| t.label.as_str()).collect();
        let title = format!(
            "{}: {} (SLO p95 <= {}, cold start {})",
            self.config.trace_name,
            labels.join(" vs "),
            humantime::format_duration(self.config.slo),
            humantime::format_duration(self.config.model.cold_start),
        );
        let options = timeline::ChartOptions {
            slo_ms: Some(self.config.slo.as_secs_f64() * 1000.0),
        };
        timeline::render_chart_with(&svg, &title, &timelines, options)
            .map_err(|e| format!("{}: {e}", svg.display()))?;
        Ok(vec![csv, svg])
    }
}

#[cfg(test)]
mod tests;
