//! Sample traces, deterministic per seed (`usher-autoscaler trace`).
//!
//! Every trace has slow drift (an AR(1) wobble, about ±7%) and per-row
//! noise (about ±5%) drawn from the seed; the shapes:
//!
//! - `weekday`: 10 h at one row per second from 08:00 (t = 0). A day
//!   envelope (60 req/s at 08:00, 150 by 10:00, a lunch dip to 100 at
//!   12:30, 140 in the afternoon, 70 by 18:00); every class start on the
//!   hour adds +120% over 90 s, decaying over ~10 min (a ramp, not a
//!   surge); a quiz opens at 14:20 (t = 22800): +200% within 5 s for
//!   20 min, the day's one surge.
//! - `exam-cliff`: 2 h at one row per second: 80 req/s, then at minute 60
//!   (t = 3600) a cliff to 800 req/s (10×) within 5 s, held for 35 min,
//!   back down to 80 over the following 10 min.
//! - `surprise-spike`: 1 h at one row per second: 100 req/s and one spike
//!   of 5–8× within 3 s, starting at a minute between 20 and 35, lasting
//!   3–6 min, falling back within 10 s (height, start and length from the
//!   seed; the file's first line says which).
//! - `daily-peak`: 2 weeks at one row per minute with RFC 3339 `time`
//!   stamps from Monday 2026-11-30 00:00 UTC: a diurnal curve (15 req/s at
//!   night, 120 by day; weekends half as busy by day), and every evening near 20:00
//!   (±15 min) a peak that no schedule names: 3× in the first minute, 5×
//!   (±20%) in the second, held 30–50 min, gone over 10 min.

use std::fmt::Write as _;
use std::str::FromStr;

use chrono::{DateTime, Duration, TimeZone, Utc};

/// The shapes `trace` can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A school day with class starts and one quiz.
    Weekday,
    /// A quiet hour, then an exam at 10×.
    ExamCliff,
    /// One short, unscheduled 5–8× spike.
    SurpriseSpike,
    /// Two weeks with a recurring evening peak.
    DailyPeak,
}

impl Kind {
    /// Every kind, by name.
    pub const ALL: [(&'static str, Kind); 4] = [
        ("weekday", Kind::Weekday),
        ("exam-cliff", Kind::ExamCliff),
        ("surprise-spike", Kind::SurpriseSpike),
        ("daily-peak", Kind::DailyPeak),
    ];

    /// The kind's name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("", |(n, _)| n)
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown trace kind `{s}`; one of {}", names.join(", "))
            })
    }
}

/// Monday 2026-11-30 00:00 UTC, where `daily-peak` starts.
pub fn daily_peak_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

/// Seeded noise: a slow wobble times per-row jitter.
struct Noise {
    rng: fastrand::Rng,
    wobble: f64,
}

impl Noise {
    fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            wobble: 0.0,
        }
    }

    fn gauss(&mut self) -> f64 {
        let u1 = 1.0 - self.rng.f64();
        let u2 = self.rng.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// The factor for the next row, `dt` seconds after the previous one.
    fn factor(&mut self, dt: f64) -> f64 {
        let keep = 0.99f64.powf(dt);
        self.wobble = keep * self.wobble + (1.0 - keep * keep).sqrt() * 0.07 * self.gauss();
        (1.0 + self.wobble + 0.05 * self.gauss()).max(0.0)
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.rng.f64()
    }
}

/// Linear interpolation through `(x, y)` knots in x order.
fn knots(points: &[(f64, f64)], x: f64) -> f64 {
    let mut prev = points[0];
    for &p in points {
        if x <= p.0 {
            let span = p.0 - prev.0;
            return if span <= 0.0 {
                p.1
            } else {
                prev.1 + (p.1 - prev.1) * (x - prev.0) / span
            };
        }
        prev = p;
    }
    prev.1
}

/// `0..1` over `rise` seconds from `dt = 0`.
fn ramp(dt: f64, rise: f64) -> f64 {
    (dt / rise).clamp(0.0, 1.0)
}

/// The CSV text of a trace of `kind`, with a `#` line saying what it holds.
pub fn generate(kind: Kind, seed: u64) -> String {
    let mut noise = Noise::new(seed);
    let mut out = String::new();
    match kind {
        Kind::Weekday => {
            let _ = writeln!(
                out,
                "# usher-autoscaler trace --kind weekday --seed {seed}: 08:00-18:00, class starts on the hour, a quiz at 14:20 (t=22800)"
            );
            out.push_str("t,rps\n");
            let day = [
                (0.0, 60.0),
                (1.0, 120.0),
                (2.0, 150.0),
                (4.0, 150.0),
                (4.5, 100.0),
                (5.5, 100.0),
                (6.0, 140.0),
                (8.0, 130.0),
                (9.0, 100.0),
                (10.0, 70.0),
            ];
            let quiz = 22_800.0;
            for t in 0..36_000u32 {
                let t = f64::from(t);
                let mut extra = 0.0;
                for k in 0..10 {
                    let dt = t - f64::from(k) * 3600.0;
                    if dt >= 0.0 {
                        extra += 1.2 * ramp(dt, 90.0) * (-(dt - 90.0).max(0.0) / 600.0).exp();
                    }
                }
                let dq = t - quiz;
                if (0.0..1200.0).contains(&dq) {
                    extra += 2.0 * ramp(dq + 1.0, 5.0);
                } else if (1200.0..1320.0).contains(&dq) {
                    extra += 2.0 * (1.0 - (dq - 1200.0) / 120.0);
                }
                let rate = knots(&day, t / 3600.0) * (1.0 + extra) * noise.factor(1.0);
                let _ = writeln!(out, "{t},{rate:.1}");
            }
        }
        Kind::ExamCliff => {
            let _ = writeln!(
                out,
                "# usher-autoscaler trace --kind exam-cliff --seed {seed}: 80 req/s, a cliff to 800 req/s at minute 60 (t=3600) for 35 min, down to 80 over 10 min"
            );
            out.push_str("t,rps\n");
            for t in 0..7200u32 {
                let t = f64::from(t);
                let level = if t < 3600.0 {
                    80.0
                } else if t < 5700.0 {
                    80.0 + 720.0 * ramp(t - 3600.0 + 1.0, 5.0)
                } else {
                    80.0 + 720.0 * (1.0 - ramp(t - 5700.0, 600.0))
                };
                let _ = writeln!(out, "{t},{:.1}", level * noise.factor(1.0));
            }
        }
        Kind::SurpriseSpike => {
            let start = (noise.uniform(20.0, 36.0).floor() * 60.0).min(35.0 * 60.0);
            let height = (noise.uniform(5.0, 8.0) * 10.0).round() / 10.0;
            let length = (noise.uniform(180.0, 360.0) / 10.0).round() * 10.0;
            let _ = writeln!(
                out,
                "# usher-autoscaler trace --kind surprise-spike --seed {seed}: 100 req/s, a {height}x spike at minute {} (t={start}) for {length} s",
                start / 60.0
            );
            out.push_str("t,rps\n");
            for t in 0..3600u32 {
                let t = f64::from(t);
                let dt = t - start;
                let up = if dt < length {
                    ramp(dt + 1.0, 3.0)
                } else {
                    1.0 - ramp(dt - length + 1.0, 10.0)
                };
                let rate = 100.0 * (1.0 + (height - 1.0) * up);
                let _ = writeln!(out, "{t},{:.1}", rate * noise.factor(1.0));
            }
        }
        Kind::DailyPeak => {
            let _ = writeln!(
                out,
                "# usher-autoscaler trace --kind daily-peak --seed {seed}: 2 weeks from Monday 2026-11-30, one row per minute, an evening peak near 20:00 UTC every day"
            );
            out.push_str("time,rps\n");
            let diurnal = [
                (0.0, 15.0),
                (6.0, 15.0),
                (8.0, 80.0),
                (10.0, 120.0),
                (17.0, 120.0),
                (19.0, 90.0),
                (22.0, 40.0),
                (24.0, 15.0),
            ];
            let start = daily_peak_start();
            for day in 0..14i64 {
                let weekend = day % 7 >= 5;
                let peak_at = 20.0 * 60.0 + noise.uniform(-15.0, 15.0).round();
                let height = 5.0 * noise.uniform(0.8, 1.2);
                let hold = noise.uniform(30.0, 50.0).round();
                for minute in 0..1440i64 {
                    let m = minute as f64;
                    let dm = m - peak_at;
                    let peak = if dm < 0.0 {
                        1.0
                    } else if dm < 1.0 {
                        3.0
                    } else if dm < hold {
                        height
                    } else {
                        1.0 + (height - 1.0) * (1.0 - ramp(dm - hold + 1.0, 10.0))
                    };
                    // Weekends halve the daytime load above the night's 15 req/s
                    // (so midnight has no step).
                    let day_scale = if weekend { 0.5 } else { 1.0 };
                    let rate = (15.0 + (knots(&diurnal, m / 60.0) - 15.0) * day_scale) * peak;
                    let at = start + Duration::minutes(day * 1440 + minute);
                    let _ = writeln!(
                        out,
                        "{},{:.1}",
                        at.format("%Y-%m-%dT%H:%M:%SZ"),
                        rate * noise.factor(60.0)
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{surge, trace};

    fn mean(xs: &[f64]) -> f64 {
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    #[test]
    fn deterministic_per_seed() {
        for (_, kind) in Kind::ALL {
            assert_eq!(generate(kind, 3), generate(kind, 3));
            assert_ne!(generate(kind, 3), generate(kind, 4));
        }
        assert_eq!("exam-cliff".parse::<Kind>(), Ok(Kind::ExamCliff));
        assert_eq!(Kind::DailyPeak.name(), "daily-peak");
        assert!("nope".parse::<Kind>().unwrap_err().contains("weekday"));
    }

    #[test]
    fn shapes_are_as_documented() {
        let exam = trace::parse(&generate(Kind::ExamCliff, 1)).unwrap();
        assert_eq!(exam.seconds(), 7200);
        let before = mean(&exam.rps[3000..3600]);
        let during = mean(&exam.rps[3700..5600]);
        assert!(
            (8.0..12.0).contains(&(during / before)),
            "{before} -> {during}"
        );
        assert_eq!(surge::onsets(&exam.rps), vec![3600]);

        let day = trace::parse(&generate(Kind::Weekday, 1)).unwrap();
        assert_eq!(day.seconds(), 36_000);
        let s = surge::onsets(&day.rps);
        assert!(
            s.len() == 1 && (22_800..22_806).contains(&s[0]),
            "only the quiz is a surge: {s:?}"
        );

        for seed in 1..6 {
            let spike = trace::parse(&generate(Kind::SurpriseSpike, seed)).unwrap();
            let s = surge::onsets(&spike.rps);
            assert_eq!(s.len(), 1, "seed {seed}: {s:?}");
            let top = mean(&spike.rps[s[0] as usize + 5..s[0] as usize + 150]);
            assert!((4.0..9.0).contains(&(top / 100.0)), "seed {seed}: {top}");
        }

        let weeks = trace::parse(&generate(Kind::DailyPeak, 1)).unwrap();
        assert_eq!(weeks.seconds(), 14 * 86_400);
        assert_eq!(weeks.start, Some(daily_peak_start()));
        assert_eq!(
            surge::onsets(&weeks.rps).len(),
            14,
            "one evening peak a day"
        );
    }
}
