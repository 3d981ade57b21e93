//! Predictive pre-scaling: seasonal averaging. Demand is kept as one-minute
//! averages; the forecast for the next `leadTime` is, for each of the last
//! `weeks` weeks, the highest minute in the same weekday-and-time window one
//! week (two weeks, …) earlier, averaged over the weeks that have data, times
//! `1 + margin`. Taking the window's highest minute makes the floor rise
//! `leadTime` before a recurring peak starts, so pods are ready when it
//! comes; the result only ever raises the floor (it never scales down), like
//! AWS predictive scaling. Pure: no clock, no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

const MINUTE_MS: i64 = 60_000;
const WEEK_MS: i64 = 7 * 24 * 60 * MINUTE_MS;

/// One-minute demand averages, oldest first, bounded in age.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DemandHistory {
    /// Minute index (Unix ms / 60 000) → (sum, count).
    minutes: BTreeMap<i64, (f64, u32)>,
}

impl DemandHistory {
    /// Adds one observation of `demand` at `now`, forgetting minutes older
    /// than `keep`.
    pub fn record(&mut self, now: DateTime<Utc>, demand: f64, keep: Duration) {
        if !demand.is_finite() || demand < 0.0 {
            return;
        }
        let minute = now.timestamp_millis().div_euclid(MINUTE_MS);
        let entry = self.minutes.entry(minute).or_insert((0.0, 0));
        entry.0 += demand;
        entry.1 += 1;
        let keep_minutes = i64::try_from(keep.as_secs() / 60).unwrap_or(i64::MAX);
        let oldest = minute.saturating_sub(keep_minutes);
        while let Some((&first, _)) = self.minutes.first_key_value() {
            if first >= oldest {
                break;
            }
            self.minutes.remove(&first);
        }
    }

    /// Sets one minute's average directly (from a saved file or Prometheus).
    pub fn insert_minute(&mut self, minute_start: DateTime<Utc>, average: f64) {
        if average.is_finite() && average >= 0.0 {
            let minute = minute_start.timestamp_millis().div_euclid(MINUTE_MS);
            self.minutes.insert(minute, (average, 1));
        }
    }

    /// The minutes as `(minute start, average)`, oldest first.
    pub fn averages(&self) -> impl Iterator<Item = (DateTime<Utc>, f64)> + '_ {
        self.minutes.iter().filter_map(|(&m, &(sum, n))| {
            Some((
                DateTime::from_timestamp_millis(m * MINUTE_MS)?,
                sum / f64::from(n.max(1)),
            ))
        })
    }

    /// Number of minutes held.
    pub fn len(&self) -> usize {
        self.minutes.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty()
    }

    fn max_between(&self, from_ms: i64, to_ms: i64) -> Option<f64> {
        let from = from_ms.div_euclid(MINUTE_MS);
        let to = to_ms.div_euclid(MINUTE_MS);
        self.minutes
            .range(from..=to)
            .map(|(_, &(sum, n))| sum / f64::from(n.max(1)))
            .reduce(f64::max)
    }
}

/// A forecast of demand over the lead time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// Expected peak demand in the policy's unit, margin included.
    pub demand: f64,
    /// Past weeks that had data for the window.
    pub weeks_used: u32,
}

/// Forecasts the peak demand in `[now, now + lead]` from the same window in
/// each of the last `weeks` weeks; `None` when no week has data there.
pub fn forecast(
    history: &DemandHistory,
    now: DateTime<Utc>,
    lead: Duration,
    weeks: u32,
    margin: f64,
) -> Option<Forecast> {
    let now_ms = now.timestamp_millis();
    let lead_ms = i64::try_from(lead.as_millis()).unwrap_or(i64::MAX / 4);
    let peaks: Vec<f64> = (1..=i64::from(weeks))
        .filter_map(|k| {
            let start = now_ms - k * WEEK_MS;
            history.max_between(start, start + lead_ms)
        })
        .collect();
    if peaks.is_empty() {
        return None;
    }
    let mean = peaks.iter().sum::<f64>() / peaks.len() as f64;
    Some(Forecast {
        demand: mean * (1.0 + margin.max(0.0)),
        weeks_used: peaks.len() as u32,
    })
}

/// How long history must be kept for `weeks` weeks and a `lead` window.
pub fn retention(weeks: u32, lead: Duration) -> Duration {
    Duration::from_millis(u64::from(weeks) * WEEK_MS as u64) + lead + Duration::from_secs(120)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn monday(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, h, m, 0).unwrap()
    }

    fn week(k: i64) -> chrono::Duration {
        chrono::Duration::days(7 * k)
    }

    /// Synthetic seasonal data: a base of 10 with a daily 09:00–10:00 peak
    /// of `peak` (week-dependent), recorded every 10 s for `weeks` weeks.
    fn seasonal(weeks: i64, peak: impl Fn(i64) -> f64) -> DemandHistory {
        let mut h = DemandHistory::default();
        let start = monday(0, 0);
        for w in 0..weeks {
            for s in (0..7 * 24 * 3600).step_by(10) {
                let t = start + week(w) + chrono::Duration::seconds(s);
                let hour = (s / 3600) % 24;
                let d = if hour == 9 { peak(w) } else { 10.0 };
                h.record(t, d, retention(4, Duration::from_secs(600)));
            }
        }
        h
    }

    #[test]
    fn the_floor_rises_lead_time_before_a_recurring_peak() {
        let h = seasonal(2, |_| 100.0);
        let lead = Duration::from_secs(600);
        let third_monday = |hh, mm| monday(hh, mm) + week(2);
        // 08:40: the peak is 20 minutes away, beyond the lead time.
        let f = forecast(&h, third_monday(8, 40), lead, 2, 0.0).unwrap();
        assert_eq!(f.demand, 10.0);
        assert_eq!(f.weeks_used, 2);
        // 08:50: the peak starts within the lead time.
        let f = forecast(&h, third_monday(8, 50), lead, 2, 0.2).unwrap();
        assert!((f.demand - 120.0).abs() < 1e-9, "{f:?}");
        // Inside the peak and after it.
        assert_eq!(
            forecast(&h, third_monday(9, 30), lead, 2, 0.0)
                .unwrap()
                .demand,
            100.0
        );
        assert_eq!(
            forecast(&h, third_monday(10, 1), lead, 2, 0.0)
                .unwrap()
                .demand,
            10.0
        );
    }

    #[test]
    fn weeks_are_averaged_and_missing_weeks_are_skipped() {
        let h = seasonal(2, |w| if w == 0 { 60.0 } else { 100.0 });
        let at = monday(9, 0) + week(2);
        let lead = Duration::from_secs(60);
        assert_eq!(forecast(&h, at, lead, 2, 0.0).unwrap().demand, 80.0);
        // Only the last week asked for.
        assert_eq!(forecast(&h, at, lead, 1, 0.0).unwrap().demand, 100.0);
        // Three weeks asked, two exist: the two are averaged.
        let f = forecast(&h, at, lead, 3, 0.0).unwrap();
        assert_eq!((f.demand, f.weeks_used), (80.0, 2));
        // No history for that window at all.
        assert_eq!(forecast(&h, at + week(10), lead, 2, 0.0), None);
        assert_eq!(forecast(&DemandHistory::default(), at, lead, 2, 0.0), None);
    }

    #[test]
    fn history_is_bounded_and_minutes_average_their_samples() {
        let mut h = DemandHistory::default();
        let t = monday(12, 0);
        h.record(t, 10.0, Duration::from_secs(3600));
        h.record(
            t + chrono::Duration::seconds(30),
            30.0,
            Duration::from_secs(3600),
        );
        h.record(t, f64::NAN, Duration::from_secs(3600));
        assert_eq!(h.averages().collect::<Vec<_>>(), vec![(t, 20.0)]);
        h.record(
            t + chrono::Duration::hours(2),
            5.0,
            Duration::from_secs(3600),
        );
        assert_eq!(h.len(), 1, "the minute two hours back was dropped");
        let mut copy = DemandHistory::default();
        for (m, v) in h.averages() {
            copy.insert_minute(m, v);
        }
        assert_eq!(
            copy.averages().collect::<Vec<_>>(),
            h.averages().collect::<Vec<_>>()
        );
    }
}
