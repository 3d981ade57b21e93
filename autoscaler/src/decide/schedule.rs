//! Schedule floors: each schedule holds `minReplicas` for `duration` after
//! every start its cron expression names, in its own time zone (so a 08:50
//! lecture stays 08:50 across daylight-saving changes).

use chrono::{DateTime, Utc};

use crate::policy::Schedule;

/// The highest floor of the schedules active at `now`, with its name.
pub fn active_floor(schedules: &[Schedule], now: DateTime<Utc>) -> Option<(u32, &str)> {
    schedules
        .iter()
        .filter(|s| is_active(s, now))
        .max_by_key(|s| s.min_replicas)
        .map(|s| (s.min_replicas, s.name.as_str()))
}

/// Whether a start of `s` lies in `(now - duration, now]`.
pub fn is_active(s: &Schedule, now: DateTime<Utc>) -> bool {
    let Ok(duration) = chrono::Duration::from_std(s.duration) else {
        return false;
    };
    let local_now = now.with_timezone(&s.time_zone);
    let window_start = local_now - duration;
    match s.cron.find_next_occurrence(&window_start, false) {
        Ok(start) => start <= local_now,
        Err(_) => false,
    }
}

/// The next start of `s` after `now` (for status and logs).
pub fn next_start(s: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    s.cron
        .find_next_occurrence(&now.with_timezone(&s.time_zone), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use std::time::Duration;

    fn schedule(cron: &str, tz: &str, minutes: u64, floor: u32) -> Schedule {
        Schedule {
            name: format!("{cron} {tz}"),
            pattern: cron.to_string(),
            cron: croner::Cron::from_str(cron).unwrap(),
            time_zone: tz.parse().unwrap(),
            duration: Duration::from_secs(minutes * 60),
            min_replicas: floor,
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn active_only_inside_the_window() {
        // Weekdays 08:50 Berlin for 2 h. 2026-11-23 is a Monday; Berlin is UTC+1 in November.
        let s = schedule("50 8 * * 1-5", "Europe/Berlin", 120, 20);
        assert!(!is_active(&s, utc("2026-11-23T07:49:59Z")));
        assert!(is_active(&s, utc("2026-11-23T07:50:00Z")));
        assert!(is_active(&s, utc("2026-11-23T09:49:59Z")));
        assert!(!is_active(&s, utc("2026-11-23T09:50:00Z")));
        // Saturday: no lecture.
        assert!(!is_active(&s, utc("2026-11-28T08:00:00Z")));
        assert_eq!(
            next_start(&s, utc("2026-11-28T08:00:00Z")),
            Some(utc("2026-11-30T07:50:00Z"))
        );
    }

    #[test]
    fn follows_local_time_across_a_dst_change() {
        // Berlin leaves summer time on 2026-10-25: 08:50 local is 06:50Z before, 07:50Z after.
        let s = schedule("50 8 * * *", "Europe/Berlin", 30, 10);
        assert!(
            is_active(&s, utc("2026-10-24T06:55:00Z")),
            "summer time: UTC+2"
        );
        assert!(!is_active(&s, utc("2026-10-24T07:55:00Z")));
        assert!(
            is_active(&s, utc("2026-10-26T07:55:00Z")),
            "winter time: UTC+1"
        );
        assert!(!is_active(&s, utc("2026-10-26T06:55:00Z")));
        // New York springs forward on 2026-03-08: 09:00 local is 14:00Z before, 13:00Z after.
        let ny = schedule("0 9 * * *", "America/New_York", 60, 5);
        assert!(is_active(&ny, utc("2026-03-07T14:30:00Z")));
        assert!(is_active(&ny, utc("2026-03-09T13:30:00Z")));
        assert!(!is_active(&ny, utc("2026-03-09T14:30:00Z")));
    }

    #[test]
    fn highest_floor_wins() {
        let a = schedule("0 9 * * *", "UTC", 60, 5);
        let b = schedule("30 9 * * *", "UTC", 60, 12);
        let list = [a, b];
        assert_eq!(
            active_floor(&list, utc("2026-11-23T09:10:00Z")).map(|f| f.0),
            Some(5)
        );
        assert_eq!(
            active_floor(&list, utc("2026-11-23T09:40:00Z")).map(|f| f.0),
            Some(12)
        );
        assert_eq!(
            active_floor(&list, utc("2026-11-23T10:20:00Z")).map(|f| f.0),
            Some(12)
        );
        assert_eq!(active_floor(&list, utc("2026-11-23T10:40:00Z")), None);
        assert_eq!(active_floor(&[], utc("2026-11-23T10:40:00Z")), None);
    }
}
