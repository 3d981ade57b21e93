//! Timelines as one CSV file (RFC 4180), a `label` column first.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::{Row, Timeline};

/// The CSV header.
pub(super) const HEADER: &str = "label,t,offered_rps,served_rps,errors,p95_ms,in_flight,queued,replicas,ready,desired,panic,violation,reason";

/// Writes every timeline's rows to one CSV at `path`, timeline after
/// timeline. Numbers have at most three decimals; an absent p95 and an
/// empty reason are empty fields; booleans are `0`/`1`.
pub fn write_csv(path: &Path, timelines: &[Timeline]) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    out.write_all(HEADER.as_bytes())?;
    out.write_all(b"\n")?;
    let mut line = String::new();
    for timeline in timelines {
        let label = quote(&timeline.label);
        for row in &timeline.rows {
            line.clear();
            format_row(&mut line, &label, row);
            out.write_all(line.as_bytes())?;
        }
    }
    out.flush()
}

fn format_row(line: &mut String, label: &str, r: &Row) {
    let _ = writeln!(
        line,
        "{label},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        num(r.t),
        num(r.offered_rps),
        num(r.served_rps),
        num(r.errors),
        r.p95_ms.map(num).unwrap_or_default(),
        num(r.in_flight),
        num(r.queued),
        r.replicas,
        r.ready,
        r.desired,
        u8::from(r.panic),
        u8::from(r.violation),
        quote(&r.reason)
    );
}

/// A number with at most three decimals and no trailing zeros.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return String::new();
    }
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// A field, quoted when it holds a comma, a quote or a line break.
fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_quoting() {
        assert_eq!(num(12.0), "12");
        assert_eq!(num(0.1234), "0.123");
        assert_eq!(num(-0.0001), "0");
        assert_eq!(num(2.5), "2.5");
        assert_eq!(quote("a, b"), "\"a, b\"");
        assert_eq!(quote("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(quote("plain"), "plain");
    }
}
