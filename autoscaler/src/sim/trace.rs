//! Load traces: a CSV of request rates over time, expanded to one value
//! per simulated second.
//!
//! The header names a time column, `t` (seconds, counted from the first
//! row) or `time` (RFC 3339 timestamps), and an `rps` column; other
//! columns are ignored, as are blank lines and lines starting with `#`.
//! Rows need not be one second apart: a row's rate holds until the next
//! row, and the last row holds as long as the step before it (one second
//! for a single row). Each simulated second gets the time-weighted average
//! of the rates over it.

use std::path::Path;

use chrono::{DateTime, Utc};

/// The longest trace simulated (60 days at one tick per second).
pub const MAX_SECONDS: usize = 60 * 86_400;

/// A trace expanded to one rate per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Requests per second offered in each second from `t = 0`.
    pub rps: Vec<f64>,
    /// The wall-clock time of the first row, when the trace has a `time`
    /// column.
    pub start: Option<DateTime<Utc>>,
    /// Data rows read.
    pub rows: usize,
}

impl Trace {
    /// A trace from one rate per second.
    pub fn from_rates(rps: Vec<f64>) -> Self {
        let rows = rps.len();
        Self {
            rps,
            start: None,
            rows,
        }
    }

    /// Seconds covered.
    pub fn seconds(&self) -> usize {
        self.rps.len()
    }
}

/// Reads and expands a trace file; errors name the file and line.
pub fn load(path: &Path) -> Result<Trace, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the trace: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

enum TimeColumn {
    Seconds(usize),
    Rfc3339(usize),
}

/// Parses and expands a trace.
pub fn parse(text: &str) -> Result<Trace, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let (_, header) = lines
        .next()
        .ok_or("the trace is empty; expected a header `t,rps` and one row per second")?;
    let names: Vec<String> = header
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_ascii_lowercase())
        .collect();
    let find = |name: &str| names.iter().position(|c| c == name);
    let time = match (find("t"), find("time")) {
        (Some(i), _) => TimeColumn::Seconds(i),
        (None, Some(i)) => TimeColumn::Rfc3339(i),
        (None, None) => {
            return Err(format!(
                "line 1: the header `{header}` has no `t` (seconds) or `time` (RFC 3339) column"
            ));
        }
    };
    let rps_col =
        find("rps").ok_or_else(|| format!("the header `{header}` has no `rps` column"))?;

    let mut points: Vec<(f64, f64)> = Vec::new();
    let mut first_time: Option<DateTime<Utc>> = None;
    for (n, line) in lines {
        let cells: Vec<&str> = line
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        let cell = |i: usize| {
            cells
                .get(i)
                .copied()
                .ok_or_else(|| format!("line {n}: expected {} columns", names.len()))
        };
        let t = match time {
            TimeColumn::Seconds(i) => {
                let s = cell(i)?;
                s.parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite())
                    .ok_or_else(|| format!("line {n}: t `{s}` is not a number of seconds"))?
            }
            TimeColumn::Rfc3339(i) => {
                let s = cell(i)?;
                let at = DateTime::parse_from_rfc3339(s)
                    .map_err(|e| {
                        format!("line {n}: time `{s}` is not RFC 3339 (2026-11-30T08:00:00Z): {e}")
                    })?
                    .with_timezone(&Utc);
                let first = *first_time.get_or_insert(at);
                (at - first).num_milliseconds() as f64 / 1000.0
            }
        };
        let s = cell(rps_col)?;
        let rps = s
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite() && *r >= 0.0)
            .ok_or_else(|| format!("line {n}: rps `{s}` is not a rate ≥ 0"))?;
        if let Some(&(prev, _)) = points.last()
            && t <= prev
        {
            return Err(format!(
                "line {n}: time goes backwards or repeats ({t} s after {prev} s); rows must be in time order"
            ));
        }
        points.push((t, rps));
    }
    if points.is_empty() {
        return Err("the trace has a header but no rows".into());
    }
    let rows = points.len();
    Ok(Trace {
        rps: expand(&points)?,
        start: first_time,
        rows,
    })
}

/// One time-weighted average rate per second of the step function the
/// points describe, counted from the first point.
fn expand(points: &[(f64, f64)]) -> Result<Vec<f64>, String> {
    let t0 = points[0].0;
    let last_step = match points {
        [.., (a, _), (b, _)] => b - a,
        _ => 1.0,
    };
    let end = points[points.len() - 1].0 + last_step - t0;
    let seconds = end.ceil() as usize;
    if seconds > MAX_SECONDS {
        return Err(format!(
            "the trace covers {seconds} s; at most {MAX_SECONDS} s (60 days) can be simulated"
        ));
    }
    let mut out = vec![0.0; seconds];
    for (i, &(t, rps)) in points.iter().enumerate() {
        let from = t - t0;
        let to = points.get(i + 1).map_or(end, |p| p.0 - t0);
        let mut s = from.floor() as usize;
        while (s as f64) < to && s < seconds {
            let overlap = to.min(s as f64 + 1.0) - from.max(s as f64);
            out[s] += rps * overlap;
            s += 1;
        }
    }
    // The last second may be partly covered: average over what it covers.
    let tail = end - (seconds as f64 - 1.0);
    if let Some(last) = out.last_mut()
        && tail > 0.0
        && tail < 1.0
    {
        *last /= tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_second() {
        let t = parse("t,rps\n0,10\n1,20\n2,30\n").unwrap();
        assert_eq!(t.rps, vec![10.0, 20.0, 30.0]);
        assert_eq!((t.rows, t.start), (3, None));
    }

    #[test]
    fn rows_hold_until_the_next_and_the_last_holds_one_step() {
        let t = parse("# comment\nt,rps,note\n0,10,a\n\n10,20,b\n20,5,c\n").unwrap();
        assert_eq!(t.seconds(), 30);
        assert_eq!(t.rps[0], 10.0);
        assert_eq!(t.rps[9], 10.0);
        assert_eq!(t.rps[10], 20.0);
        assert_eq!(t.rps[29], 5.0);
    }

    #[test]
    fn fractional_rows_are_averaged_per_second() {
        let t = parse("t,rps\n0,10\n0.5,30\n1,0\n1.5,0\n").unwrap();
        assert_eq!(t.rps, vec![20.0, 0.0]);
        let t = parse("t,rps\n5,1\n6,2\n").unwrap();
        assert_eq!(t.rps, vec![1.0, 2.0], "t counts from the first row");
    }

    #[test]
    fn time_column_sets_the_start() {
        let t = parse("time,rps\n2026-11-30T00:00:00Z,1\n2026-11-30T00:01:00Z,2\n").unwrap();
        assert_eq!(t.seconds(), 120);
        assert_eq!(t.rps[59], 1.0);
        assert_eq!(t.rps[60], 2.0);
        assert_eq!(
            t.start,
            Some(
                DateTime::parse_from_rfc3339("2026-11-30T00:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc)
            )
        );
    }

    #[test]
    fn errors_name_the_line() {
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("x,rps\n0,1\n").unwrap_err().contains("no `t`"));
        assert!(parse("t,y\n0,1\n").unwrap_err().contains("no `rps`"));
        assert!(parse("t,rps\n0,1\n0,2\n").unwrap_err().contains("line 3"));
        assert!(parse("t,rps\n0,-1\n").unwrap_err().contains("line 2"));
        assert!(
            parse("time,rps\nyesterday,1\n")
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!(parse("t,rps\n").unwrap_err().contains("no rows"));
    }
}
