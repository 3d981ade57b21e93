//! Timelines of a scaled service, second by second: load, latency,
//! replicas and the autoscaler's decisions. Written as one CSV
//! ([`write_csv`]) and drawn as an SVG chart of stacked panels on one time
//! axis ([`render_chart`]). The simulator writes them; so can anything else
//! that builds [`Row`]s (a live demo, a replayed incident).

mod chart;
mod csv;

pub use self::chart::{ChartOptions, render_chart, render_chart_with};
pub use self::csv::write_csv;

/// One moment (normally one second) of one timeline.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    /// Seconds since the start.
    pub t: f64,
    /// Requests per second arriving.
    pub offered_rps: f64,
    /// Requests per second answered successfully.
    pub served_rps: f64,
    /// Requests per second that failed (timed out in the queue, no pod).
    pub errors: f64,
    /// 95th percentile latency in milliseconds (`None`: no request).
    pub p95_ms: Option<f64>,
    /// Requests being served.
    pub in_flight: f64,
    /// Requests waiting for a pod.
    pub queued: f64,
    /// Pods asked for (`spec.replicas`), ready or not.
    pub replicas: u32,
    /// Pods serving.
    pub ready: u32,
    /// The autoscaler's last decision.
    pub desired: u32,
    /// Whether the autoscaler is in panic mode.
    pub panic: bool,
    /// Whether this moment broke the latency objective (or failed requests).
    pub violation: bool,
    /// The decision's reason, on rows where a decision was taken.
    pub reason: String,
}

/// One labelled series of rows (one policy, one run).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timeline {
    /// Name in the CSV's `label` column and the chart's legend.
    pub label: String,
    /// Rows in time order.
    pub rows: Vec<Row>,
}

/// Folds rows into buckets of `step` seconds, for long timelines: rates,
/// in-flight and queue are averaged; p95, replicas and desired take the
/// bucket's highest, ready its lowest; panic and violation are set if any
/// row had them; the reason is the last one of a row that scaled
/// (`desired != replicas`), else the last one. A bucket's `t` is its start.
/// With `step <= 1` rows pass through unchanged.
#[derive(Debug, Clone)]
pub struct Aggregator {
    step: f64,
    rows: Vec<Row>,
    open: Option<(Row, usize, bool)>,
}

impl Aggregator {
    /// Buckets of `step` seconds.
    pub fn new(step: f64) -> Self {
        Self {
            step,
            rows: Vec::new(),
            open: None,
        }
    }

    /// Adds the next row (rows must come in time order).
    pub fn push(&mut self, row: Row) {
        if self.step <= 1.0 {
            self.rows.push(row);
            return;
        }
        let start = (row.t / self.step).floor() * self.step;
        if let Some((acc, _, _)) = &self.open
            && acc.t != start
        {
            self.close();
        }
        let Some((acc, n, scaled)) = &mut self.open else {
            let scaled = !row.reason.is_empty() && row.desired != row.replicas;
            self.open = Some((Row { t: start, ..row }, 1, scaled));
            return;
        };
        *n += 1;
        acc.offered_rps += row.offered_rps;
        acc.served_rps += row.served_rps;
        acc.errors += row.errors;
        acc.in_flight += row.in_flight;
        acc.queued += row.queued;
        acc.p95_ms = match (acc.p95_ms, row.p95_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        acc.replicas = acc.replicas.max(row.replicas);
        acc.desired = acc.desired.max(row.desired);
        acc.ready = acc.ready.min(row.ready);
        acc.panic |= row.panic;
        acc.violation |= row.violation;
        if !row.reason.is_empty() {
            let row_scaled = row.desired != row.replicas;
            if row_scaled || !*scaled {
                acc.reason = row.reason;
                *scaled |= row_scaled;
            }
        }
    }

    fn close(&mut self) {
        if let Some((mut acc, n, _)) = self.open.take() {
            let n = n as f64;
            acc.offered_rps /= n;
            acc.served_rps /= n;
            acc.errors /= n;
            acc.in_flight /= n;
            acc.queued /= n;
            self.rows.push(acc);
        }
    }

    /// The folded rows.
    pub fn finish(mut self) -> Vec<Row> {
        self.close();
        self.rows
    }
}

/// `rows` folded into buckets of `step` seconds (see [`Aggregator`]).
pub fn downsample(rows: &[Row], step: f64) -> Vec<Row> {
    let mut agg = Aggregator::new(step);
    for r in rows {
        agg.push(r.clone());
    }
    agg.finish()
}

#[cfg(test)]
mod tests;
