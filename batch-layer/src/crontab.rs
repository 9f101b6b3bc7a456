//! Cron expressions as crontab(5) writes them, for `batch-layer schedule --cron`.
//!
//! Five fields, `minute hour day-of-month month day-of-week`, each `*`, a number, a range
//! `a-b`, a step `*/n` or `a-b/n` or `a/n`, or a comma list of those; months and weekdays also
//! by their English names (`jan`, `mon-fri`); Sunday is 0 or 7. `@yearly` (`@annually`),
//! `@monthly`, `@weekly`, `@daily` (`@midnight`) and `@hourly` stand for their five fields. A
//! sixth field in front gives seconds (`*/20 * * * * *`), for tests and sub-minute schedules.
//! As in Vixie cron, when both day fields are restricted (neither starts with `*`) a day matches
//! if either does: `0 0 13 * fri` runs on the 13th and on every Friday.
//!
//! Times are read in a time zone (`batch.cron_timezone`). A local time that a daylight-saving
//! change skips is skipped; one that it repeats runs once, at its first occurrence.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cron expression `{expr}`: {problem}")]
pub struct ParseCronError {
    pub expr: String,
    pub problem: String,
}

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Whether each day field starts with `*` (then the two combine with "and", else "or").
    day_of_month_star: bool,
    day_of_week_star: bool,
    zone: Tz,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// How far ahead a next tick is looked for: 28 years hold every weekday of every date, so a
/// schedule with no tick in them (`0 0 30 feb *`) has none at all.
const HORIZON_DAYS: i64 = 28 * 366;

impl CronSchedule {
    /// Parses `expr`, whose times are read in `zone`.
    pub fn parse(expr: &str, zone: Tz) -> Result<CronSchedule, ParseCronError> {
        let problem = |problem: String| ParseCronError {
            expr: expr.to_string(),
            problem,
        };
        let expanded = match expr.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(problem(format!("unknown shorthand `{other}`")));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(problem(format!(
                    "{n} fields; crontab has 5 (minute hour day-of-month month day-of-week), or 6 with seconds first"
                )));
            }
        };
        let field = |text: &str, name: &str, min: u32, max: u32, names: &[&str]| {
            parse_field(text, min, max, names).map_err(|p| problem(format!("{name}: {p}")))
        };
        let mut days_of_week = field(rest[4], "day of week", 0, 7, &WEEKDAYS)?;
        // 7 is Sunday too.
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        Ok(CronSchedule {
            seconds: field(seconds, "second", 0, 59, &[])?,
            minutes: field(rest[0], "minute", 0, 59, &[])?,
            hours: field(rest[1], "hour", 0, 23, &[])?,
            days_of_month: field(rest[2], "day of month", 1, 31, &[])?,
            months: field(rest[3], "month", 1, 12, &MONTHS)?,
            days_of_week,
            day_of_month_star: rest[2].starts_with('*'),
            day_of_week_star: rest[4].starts_with('*'),
            zone,
        })
    }

    fn runs_on(&self, date: NaiveDate) -> bool {
        if !has(self.months, date.month()) {
            return false;
        }
        let by_month_day = has(self.days_of_month, date.day());
        let by_week_day = has(self.days_of_week, date.weekday().num_days_from_sunday());
        if self.day_of_month_star || self.day_of_week_star {
            by_month_day && by_week_day
        } else {
            by_month_day || by_week_day
        }
    }

    /// The first tick strictly after `after`; `None` if the schedule never ticks.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.with_timezone(&self.zone).date_naive();
        for day in 0..HORIZON_DAYS {
            let date = start + Duration::days(day);
            if !self.runs_on(date) {
                continue;
            }
            for hour in ones(self.hours) {
                for minute in ones(self.minutes) {
                    for second in ones(self.seconds) {
                        let Some(local) = date.and_hms_opt(hour, minute, second) else {
                            continue;
                        };
                        // `earliest`: a repeated local time runs at its first occurrence; a
                        // skipped one does not exist and is passed over.
                        let Some(at) = self.zone.from_local_datetime(&local).earliest() else {
                            continue;
                        };
                        let at = at.with_timezone(&Utc);
                        if at > after {
                            return Some(at);
                        }
                    }
                }
            }
        }
        None
    }
}

fn has(set: u64, value: u32) -> bool {
    set & (1 << value) != 0
}

fn ones(set: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |v| has(set, *v))
}

/// One field: a comma list of `*`, `v`, `a-b`, each optionally `/step`.
fn parse_field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |word: &str| -> Result<u32, String> {
        let lower = word.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names count from 1, weekday names from 0 (Sunday).
            return Ok(i as u32 + u32::from(min == 1));
        }
        let v: u32 = word
            .parse()
            .map_err(|_| format!("`{word}` is not a number or a name"))?;
        if v < min || v > max {
            return Err(format!("{v} is outside {min}-{max}"));
        }
        Ok(v)
    };
    let mut set = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("step `{step}` is not a positive number"))?;
                (range, step)
            }
            None => (item, 1),
        };
        let (low, high) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `a/n` runs from a to the end, as Vixie cron reads it.
                None if item.contains('/') => (value(range)?, max),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        if low > high {
            return Err(format!("range `{range}` runs backwards"));
        }
        for v in (low..=high).step_by(step as usize) {
            set |= 1 << v;
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str) -> String {
        CronSchedule::parse(expr, Tz::UTC)
            .unwrap()
            .next_after(utc(after))
            .unwrap()
            .to_rfc3339()
    }

    #[test]
    fn weekdays_are_monday_to_friday_and_sunday_is_0_or_7() {
        // 2026-11-29 is a Sunday.
        assert_eq!(
            next("0 2 * * 1-5", "2026-11-28T03:00:00Z"),
            "2026-11-30T02:00:00+00:00",
            "Saturday and Sunday are not weekdays"
        );
        assert_eq!(
            next("0 2 * * 1-5", "2026-12-04T02:00:00Z"),
            "2026-12-07T02:00:00+00:00",
            "after Friday's run comes Monday's"
        );
        assert_eq!(
            next("0 2 * * mon-fri", "2026-11-28T03:00:00Z"),
            "2026-11-30T02:00:00+00:00"
        );
        for sunday in ["0", "7", "sun", "SUN"] {
            assert_eq!(
                next(&format!("30 4 * * {sunday}"), "2026-11-24T00:00:00Z"),
                "2026-11-29T04:30:00+00:00",
                "{sunday}"
            );
        }
        assert_eq!(
            next("0 0 * * 6,0", "2026-11-27T12:00:00Z"),
            "2026-11-28T00:00:00+00:00"
        );
    }

    #[test]
    fn both_day_fields_restricted_means_either() {
        // The 13th, or any Friday: from Saturday 2026-11-28, Friday 2026-12-04 comes first...
        assert_eq!(
            next("0 0 13 * 5", "2026-11-28T00:00:00Z"),
            "2026-12-04T00:00:00+00:00"
        );
        // ...and from Saturday 2026-12-05, Friday the 11th before Sunday the 13th.
        assert_eq!(
            next("0 0 13 * 5", "2026-12-05T00:00:00Z"),
            "2026-12-11T00:00:00+00:00"
        );
        // With `*` in one day field, the other alone decides.
        assert_eq!(
            next("0 0 13 * *", "2026-12-05T00:00:00Z"),
            "2026-12-13T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 */2 * 5", "2026-11-28T00:00:00Z"),
            "2026-12-11T00:00:00+00:00",
            "a day-of-month starting with * combines with `and`: odd days that are Fridays"
        );
    }

    #[test]
    fn shorthands_steps_names_and_seconds() {
        assert_eq!(
            next("@daily", "2026-11-28T00:00:00Z"),
            "2026-11-29T00:00:00+00:00"
        );
        assert_eq!(
            next("@hourly", "2026-11-28T10:15:00Z"),
            "2026-11-28T11:00:00+00:00"
        );
        assert_eq!(
            next("@weekly", "2026-11-28T00:00:00Z"),
            "2026-11-29T00:00:00+00:00"
        );
        assert_eq!(
            next("@yearly", "2026-11-28T00:00:00Z"),
            "2027-01-01T00:00:00+00:00"
        );
        assert_eq!(
            next("*/5 * * * *", "2026-11-28T10:07:30Z"),
            "2026-11-28T10:10:00+00:00"
        );
        assert_eq!(
            next("10/20 * * * *", "2026-11-28T10:31:00Z"),
            "2026-11-28T10:50:00+00:00"
        );
        assert_eq!(
            next("0 9 1 jan,JUL *", "2026-11-28T00:00:00Z"),
            "2027-01-01T09:00:00+00:00"
        );
        assert_eq!(
            next("*/20 * * * * *", "2026-11-28T10:00:05Z"),
            "2026-11-28T10:00:20+00:00"
        );
        assert_eq!(
            CronSchedule::parse("0 0 30 feb *", Tz::UTC)
                .unwrap()
                .next_after(utc("2026-01-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn times_are_read_in_the_zone() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let at_two = CronSchedule::parse("0 2 * * *", berlin).unwrap();
        // Winter: Berlin is UTC+1.
        assert_eq!(
            at_two.next_after(utc("2026-11-28T12:00:00Z")).unwrap(),
            utc("2026-11-29T01:00:00Z")
        );
        // 2027-03-28 02:00 does not exist in Berlin (clocks go 02:00 -> 03:00): skipped.
        assert_eq!(
            at_two.next_after(utc("2027-03-27T12:00:00Z")).unwrap(),
            utc("2027-03-29T00:00:00Z")
        );
        // 2026-10-25 02:30 happens twice: it runs once, at the first (UTC+2).
        let half_past = CronSchedule::parse("30 2 * * *", berlin).unwrap();
        let first = half_past.next_after(utc("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        assert_eq!(
            half_past.next_after(first).unwrap(),
            utc("2026-10-26T01:30:00Z")
        );
    }

    #[test]
    fn mistakes_are_refused_with_what_is_wrong() {
        for (expr, says) in [
            ("every minute", "fields"),
            ("0 0 * * 8", "day of week: 8 is outside 0-7"),
            ("61 * * * *", "minute: 61 is outside 0-59"),
            ("0 0 0 * *", "day of month: 0 is outside 1-31"),
            ("0 0 * 13 *", "month: 13 is outside 1-12"),
            ("*/0 * * * *", "step"),
            ("0 5-2 * * *", "backwards"),
            ("0 0 * * funday", "not a number or a name"),
            ("@often", "unknown shorthand"),
            ("0 0 0 1 1 * 2027", "7 fields"),
        ] {
            let err = CronSchedule::parse(expr, Tz::UTC).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains(expr), "{expr}: {err}");
        }
    }
}
