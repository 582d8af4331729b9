//! Five-field cron schedules (minute hour day-of-month month day-of-week),
//! in UTC, with `*`, `a-b`, `*/n`, `a-b/n`, lists, and `@hourly`, `@daily`,
//! `@weekly`, `@monthly`. As in cron, when both day fields are restricted a
//! day matches if either does.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

/// A parsed schedule.
#[derive(Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn field(s: &str, lo: u32, hi: u32, what: &str) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut restricted = true;
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st.parse().map_err(|_| format!("{what}: `{st}` is not a step"))?;
                if st == 0 {
                    return Err(format!("{what}: a step of 0"));
                }
                (r, st)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            if step == 1 {
                restricted = false;
            }
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = a.parse().map_err(|_| format!("{what}: `{a}` is not a number"))?;
            let b = b.parse().map_err(|_| format!("{what}: `{b}` is not a number"))?;
            (a, b)
        } else {
            let a = range.parse().map_err(|_| format!("{what}: `{range}` is not a number"))?;
            (a, if step > 1 { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{what}: `{part}` is outside {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, restricted))
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let [mi, h, d, mo, wd] = parts.as_slice() else {
            return Err(format!(
                "`{text}` has {} fields; expected five (minute hour day month weekday), e.g. \"0 2 * * *\"",
                parts.len()
            ));
        };
        let (minutes, _) = field(mi, 0, 59, "minute")?;
        let (hours, _) = field(h, 0, 23, "hour")?;
        let (days, days_restricted) = field(d, 1, 31, "day of month")?;
        let (months, _) = field(mo, 1, 12, "month")?;
        let (mut weekdays, weekdays_restricted) = field(wd, 0, 7, "day of week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        // Restricted to days of the month alone, a schedule fires only if one
        // of its months has one of its days (`0 0 31 2 *` never does).
        if days_restricted && !weekdays_restricted {
            let longest = |m: u32| match m {
                2 => 29,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let possible = (1..=12).filter(|m| months & (1 << m) != 0).any(|m| days.trailing_zeros() <= longest(m));
            if !possible {
                return Err(format!(
                    "`{text}` never fires: none of its months has that day of the month; pick a day the month has (1-28 exist in every month)"
                ));
            }
        }
        Ok(Schedule {
            text: text.trim().to_string(),
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_restricted,
            weekdays_restricted,
        })
    }

    /// Whether the schedule fires in the minute of `t`.
    pub fn matches(&self, t: DateTime<Utc>) -> bool {
        let bit = |set: u64, v: u32| set & (1 << v) != 0;
        let day = bit(self.days, t.day());
        let weekday = bit(self.weekdays, t.weekday().num_days_from_sunday());
        let day_ok = match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            (true, false) => day,
            (false, true) => weekday,
            (false, false) => true,
        };
        bit(self.minutes, t.minute()) && bit(self.hours, t.hour()) && bit(self.months, t.month()) && day_ok
    }

    /// The first minute strictly after `t` the schedule fires in, within
    /// about four years.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut m = t.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        for _ in 0..(4 * 366 * 24 * 60) {
            if self.matches(m) {
                return Some(m);
            }
            // Skip whole hours and days that cannot match.
            if self.hours & (1 << m.hour()) == 0 {
                m = m.with_minute(0)? + Duration::hours(1);
                continue;
            }
            m += Duration::minutes(1);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn the_plans_schedules() {
        let daily = Schedule::parse("0 2 * * *").unwrap();
        assert_eq!(daily.next_after(at(2026, 11, 26, 10, 0)), Some(at(2026, 11, 27, 2, 0)));
        let weekly = Schedule::parse("0 3 * * 0").unwrap();
        // 2026-11-29 is a Sunday.
        assert_eq!(weekly.next_after(at(2026, 11, 26, 10, 0)), Some(at(2026, 11, 29, 3, 0)));
        assert_eq!(
            Schedule::parse("0 3 * * 7").unwrap().next_after(at(2026, 11, 26, 10, 0)),
            Some(at(2026, 11, 29, 3, 0))
        );
        let every15 = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(every15.next_after(at(2026, 11, 26, 10, 14)), Some(at(2026, 11, 26, 10, 15)));
        assert_eq!(every15.next_after(at(2026, 11, 26, 10, 15)), Some(at(2026, 11, 26, 10, 30)));
        assert_eq!(Schedule::parse("@hourly").unwrap().next_after(at(2026, 1, 1, 0, 0)), Some(at(2026, 1, 1, 1, 0)));
        let feb29 = Schedule::parse("0 0 29 2 *").unwrap();
        assert_eq!(feb29.next_after(at(2026, 3, 1, 0, 0)), Some(at(2028, 2, 29, 0, 0)));
        // Both day fields restricted: either matches.
        let either = Schedule::parse("0 0 1 * 1").unwrap();
        assert_eq!(either.next_after(at(2026, 11, 26, 10, 0)), Some(at(2026, 11, 30, 0, 0)));
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(Schedule::parse("0 2 * *").unwrap_err().contains("five"));
        assert!(Schedule::parse("60 * * * *").unwrap_err().contains("minute"));
        assert!(Schedule::parse("* 25 * * *").unwrap_err().contains("hour"));
        assert!(Schedule::parse("*/0 * * * *").unwrap_err().contains("step"));
        assert!(Schedule::parse("a * * * *").unwrap_err().contains("not a number"));
        assert!(Schedule::parse("5-1 * * * *").is_err());
        for never in ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 30-31 2 *"] {
            assert!(Schedule::parse(never).unwrap_err().contains("never fires"), "{never}");
        }
        // Every schedule that parses fires within the search window.
        for fires in ["0 0 29 2 *", "0 0 31 1-12 *", "0 0 31 2 1", "0 0 31 2,3 *"] {
            let s = Schedule::parse(fires).unwrap();
            assert!(s.next_after(at(2026, 3, 1, 0, 0)).is_some(), "{fires}");
        }
    }
}
