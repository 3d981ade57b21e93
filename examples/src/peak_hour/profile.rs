//! The school day, compressed: how many learners are online second by
//! second, as a goose test plan, and when the scheduled lecture starts.
//!
//! A quiet baseline; a timetabled lecture (4× the baseline) which the
//! policy's `schedules` entry pre-warms; a short lull; an unscheduled surge
//! of 10× the baseline (a quiz deadline nobody put in the timetable); a
//! decline back to the baseline, long enough to see the scale-down; the end.
//!
//! Cron has minute resolution, so the lecture is pinned to a whole UTC
//! minute: the pre-warm floor starts on it and the lecture's learners
//! arrive [`LEAD`] later. The baseline lasts until then, so it is between
//! its minimum and a minute longer than that.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};

/// Learners online during the baseline (and the lull and the decline).
pub const BASE_USERS: usize = 5;
/// Learners online during the lecture.
pub const LECTURE_USERS: usize = 20;
/// Learners online during the surge: ten times the baseline.
pub const SURGE_USERS: usize = 50;
/// Seconds between the pre-warm floor starting (a whole minute) and the
/// lecture's learners arriving: a pod's cold start and then some, so the
/// pre-warmed pods are ready before the load.
pub const LEAD: u64 = 6;
/// Seconds a change in the number of learners takes (goose starts or stops
/// them evenly over it).
pub const RAMP: u64 = 2;
/// The default `--duration`, in seconds.
pub const DEFAULT_SECONDS: u64 = 90;

/// A part of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Few learners online.
    Baseline,
    /// The schedule's floor is up, the lecture has not started.
    PreWarm,
    /// The timetabled lecture.
    Lecture,
    /// Back to the baseline between the lecture and the surge.
    Lull,
    /// The unscheduled surge.
    Surge,
    /// Learners leave; the pods should follow.
    Decline,
    /// The last learners log off.
    End,
}

impl Phase {
    /// Lower-case name for the live line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::PreWarm => "pre-warm",
            Self::Lecture => "lecture",
            Self::Lull => "lull",
            Self::Surge => "surge",
            Self::Decline => "decline",
            Self::End => "end",
        }
    }
}

/// The profile's timing, in whole seconds since the load test's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// When the pre-warm floor starts (the schedule's whole minute).
    pub prewarm: u64,
    /// When the lecture's learners start arriving.
    pub lecture: u64,
    /// How long the lecture's learners stay once all arrived.
    pub lecture_hold: u64,
    /// When the lecture's learners start leaving.
    pub lull: u64,
    /// How long the lull lasts once they left.
    pub lull_hold: u64,
    /// When the surge's learners start arriving.
    pub surge: u64,
    /// How long the surge lasts once all arrived.
    pub surge_hold: u64,
    /// When the surge's learners start leaving.
    pub decline: u64,
    /// How long the surge's learners take to leave.
    pub decline_ramp: u64,
    /// How long the baseline then lasts.
    pub decline_hold: u64,
    /// When the last learners start logging off.
    pub end: u64,
    /// When the load test is over.
    pub total: u64,
}

/// Seconds `nominal × scale`, rounded, at least `min`.
fn scaled(nominal: f64, scale: f64, min: u64) -> u64 {
    ((nominal * scale).round() as u64).max(min)
}

impl Profile {
    /// The shortest baseline for a `duration`-long demo, in seconds.
    pub fn min_baseline(duration: Duration) -> u64 {
        scaled(15.0, duration.as_secs_f64() / 90.0, 8)
    }

    /// A profile for a `duration`-long demo whose pre-warm floor starts
    /// `prewarm` seconds after the load test's start (at least
    /// [`Profile::min_baseline`]).
    pub fn new(duration: Duration, prewarm: u64) -> Self {
        let s = duration.as_secs_f64() / DEFAULT_SECONDS as f64;
        let lecture = prewarm + LEAD;
        let lecture_hold = scaled(14.0, s, 4);
        let lull = lecture + RAMP + lecture_hold;
        let lull_hold = scaled(8.0, s, 3);
        let surge = lull + RAMP + lull_hold;
        let surge_hold = scaled(14.0, s, 6);
        let decline = surge + RAMP + surge_hold;
        let decline_ramp = scaled(4.0, s, 2);
        let decline_hold = scaled(26.0, s, 6);
        let end = decline + decline_ramp + decline_hold;
        Self {
            prewarm,
            lecture,
            lecture_hold,
            lull,
            lull_hold,
            surge,
            surge_hold,
            decline,
            decline_ramp,
            decline_hold,
            end,
            total: end + 1,
        }
    }

    /// How long the schedule's floor should hold: from the whole minute
    /// until the lecture's learners start leaving.
    pub fn floor_duration(&self) -> u64 {
        self.lull - self.prewarm
    }

    /// The part of the day at `t` seconds.
    pub fn phase_at(&self, t: f64) -> Phase {
        let at = |s: u64| t >= s as f64;
        if at(self.end) {
            Phase::End
        } else if at(self.decline) {
            Phase::Decline
        } else if at(self.surge) {
            Phase::Surge
        } else if at(self.lull) {
            Phase::Lull
        } else if at(self.lecture) {
            Phase::Lecture
        } else if at(self.prewarm) {
            Phase::PreWarm
        } else {
            Phase::Baseline
        }
    }

    /// The goose test plan (`users,time;users,time;…`): each step changes
    /// the number of users to `users` evenly over `time`, or holds it.
    pub fn test_plan(&self) -> String {
        let steps = [
            (BASE_USERS, RAMP),
            (BASE_USERS, self.lecture - RAMP),
            (LECTURE_USERS, RAMP),
            (LECTURE_USERS, self.lecture_hold),
            (BASE_USERS, RAMP),
            (BASE_USERS, self.lull_hold),
            (SURGE_USERS, RAMP),
            (SURGE_USERS, self.surge_hold),
            (BASE_USERS, self.decline_ramp),
            (BASE_USERS, self.decline_hold),
            (0, 1),
        ];
        steps
            .iter()
            .map(|(users, secs)| format!("{users},{secs}s"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// The first whole UTC minute at least `min_wait` after `now`.
pub fn next_minute(now: DateTime<Utc>, min_wait: Duration) -> DateTime<Utc> {
    let earliest = now + chrono::Duration::from_std(min_wait).unwrap_or_default();
    let floor = earliest
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(earliest);
    if floor == earliest {
        floor
    } else {
        floor + chrono::Duration::minutes(1)
    }
}

/// A daily cron expression (5 fields, UTC) for `at`'s hour and minute.
pub fn daily_cron(at: DateTime<Utc>) -> String {
    format!("{} {} * * *", at.minute(), at.hour())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_lecture_is_pinned_to_a_whole_minute_far_enough_away() {
        let min = Duration::from_secs(15);
        assert_eq!(
            next_minute(utc("2026-11-23T09:41:30.5Z"), min),
            utc("2026-11-23T09:42:00Z")
        );
        assert_eq!(
            next_minute(utc("2026-11-23T09:41:50Z"), min),
            utc("2026-11-23T09:43:00Z"),
            "10 s away is too close"
        );
        assert_eq!(
            next_minute(utc("2026-11-23T09:41:45Z"), min),
            utc("2026-11-23T09:42:00Z"),
            "exactly the minimum is fine"
        );
        assert_eq!(
            next_minute(utc("2026-11-23T23:59:50Z"), min),
            utc("2026-11-24T00:01:00Z")
        );
        assert_eq!(daily_cron(utc("2026-11-24T00:01:00Z")), "1 0 * * *");
        assert_eq!(daily_cron(utc("2026-11-23T09:42:00Z")), "42 9 * * *");
    }

    #[test]
    fn the_default_day_lasts_about_ninety_seconds_plus_the_wait() {
        let d = Duration::from_secs(90);
        assert_eq!(Profile::min_baseline(d), 15);
        let p = Profile::new(d, 15);
        assert_eq!(p.lecture, 21);
        assert_eq!((p.lull, p.surge, p.decline, p.end), (37, 47, 63, 93));
        assert_eq!(p.total, 94);
        assert_eq!(p.floor_duration(), 22);
        assert_eq!(
            p.test_plan(),
            "5,2s;5,19s;20,2s;20,14s;5,2s;5,8s;50,2s;50,14s;5,4s;5,26s;0,1s"
        );
        let plan_secs: u64 = p
            .test_plan()
            .split(';')
            .map(|s| s.split(',').nth(1).unwrap().trim_end_matches('s'))
            .map(|s| s.parse::<u64>().unwrap())
            .sum();
        assert_eq!(plan_secs, p.total, "the plan and the phases agree");
        assert_eq!(p.phase_at(0.0), Phase::Baseline);
        assert_eq!(p.phase_at(15.0), Phase::PreWarm);
        assert_eq!(p.phase_at(21.0), Phase::Lecture);
        assert_eq!(p.phase_at(47.5), Phase::Surge);
        assert_eq!(p.phase_at(63.0), Phase::Decline);
        assert_eq!(p.phase_at(93.0), Phase::End);
    }

    #[test]
    fn a_short_day_keeps_every_phase_long_enough_to_see() {
        let d = Duration::from_secs(30);
        assert_eq!(Profile::min_baseline(d), 8);
        let p = Profile::new(d, 8);
        assert!(p.lecture_hold >= 4 && p.lull_hold >= 3 && p.surge_hold >= 6);
        assert!(p.decline_hold >= 6);
        assert!(p.total < 60, "{p:?}");
    }
}
