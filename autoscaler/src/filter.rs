//! The `decide` filter: JSON lines of observations in, JSON lines of
//! decisions out, through the same [`decide`] the controller runs, keeping
//! window state across lines.

use std::io::{BufRead, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::decide::{Decision, History, Observation, decide};
use crate::policy::Policy;

/// One input line.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObservationLine {
    /// Time of the observation (RFC 3339).
    pub now: DateTime<Utc>,
    /// Ready pods.
    pub ready_replicas: u32,
    /// Replicas currently requested.
    pub current_replicas: u32,
    /// Requests in flight (absent: metrics missing).
    #[serde(default)]
    pub in_flight: Option<f64>,
    /// Requests queued in the balancers.
    #[serde(default)]
    pub queued: Option<f64>,
    /// Request rate.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// 95th percentile latency in seconds.
    #[serde(default)]
    pub p95_seconds: Option<f64>,
    /// Some balancer replicas did not answer (no scale-down this tick).
    #[serde(default)]
    pub partial: bool,
    /// Forecast peak demand over the predictive lead time.
    #[serde(default)]
    pub forecast: Option<f64>,
}

impl ObservationLine {
    /// As an [`Observation`].
    pub fn observation(&self) -> Observation {
        Observation {
            ready_replicas: self.ready_replicas,
            current_replicas: self.current_replicas,
            in_flight: self.in_flight,
            queued: self.queued,
            requests_per_second: self.requests_per_second,
            p95: self
                .p95_seconds
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64),
            partial: self.partial,
            forecast: self.forecast,
        }
    }
}

/// One output line.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DecisionLine {
    /// The observation's time.
    pub now: DateTime<Utc>,
    /// Replicas to run.
    pub desired: u32,
    /// `stable` or `panic`.
    pub mode: String,
    /// Why.
    pub reason: String,
    /// Held back by a limit.
    pub limited: bool,
    /// Metrics were missing.
    pub metrics_missing: bool,
    /// Replicas the predictive forecast asks for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<u32>,
}

impl DecisionLine {
    /// A line for `d` at `now`.
    pub fn new(now: DateTime<Utc>, d: &Decision) -> Self {
        Self {
            now,
            desired: d.desired,
            mode: d.mode.as_str().to_string(),
            reason: d.reason.clone(),
            limited: d.limited,
            metrics_missing: d.metrics_missing,
            forecast: d.forecast,
        }
    }
}

/// Reads observation lines from `input` and writes decision lines to
/// `output`. Blank lines are skipped; a malformed line is an error naming
/// its number.
pub fn run(policy: &Policy, input: impl BufRead, mut output: impl Write) -> anyhow::Result<usize> {
    let mut history = History::default();
    let mut count = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let obs: ObservationLine = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("line {}: {e}; expected {{\"now\": \"2026-11-23T09:00:00Z\", \"readyReplicas\": 4, \"currentReplicas\": 4, \"inFlight\": 30, ...}}", i + 1))?;
        let d = decide(policy, &obs.observation(), &mut history, obs.now);
        serde_json::to_writer(&mut output, &DecisionLine::new(obs.now, &d))?;
        output.write_all(b"\n")?;
        output.flush()?;
        count += 1;
    }
    Ok(count)
}
