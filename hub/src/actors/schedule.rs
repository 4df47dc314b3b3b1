//! When a time trigger is due: a five-field cron expression (UTC) or a fixed interval, parsed
//! once and asked for the next slot after an instant. Pure: no clock, no I/O.
//!
//! Cron fields are minute (0–59), hour (0–23), day of month (1–31), month (1–12) and day of week
//! (0–7, both 0 and 7 are Sunday), each `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or
//! a comma list of those; when both day fields are restricted, a day matching either is due (as
//! in every cron). Stored as `cron:<expr>` or `every:<ms>`.

use std::time::Duration;

/// The shortest interval a trigger may have.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every this many milliseconds, counted from the trigger's creation.
    Every(u64),
    /// A cron expression.
    Cron(Box<Cron>),
}

/// The sets a cron expression allows, one bit per value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    any_day: bool,
    any_weekday: bool,
}

fn field(text: &str, name: &str, low: u32, high: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("{name}: step {s:?} is not a number"))?;
                if step == 0 {
                    return Err(format!("{name}: a step of 0"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let number = |s: &str| -> Result<u32, String> {
            let n: u32 = s
                .parse()
                .map_err(|_| format!("{name}: {s:?} is not a number"))?;
            if n < low || n > high {
                return Err(format!("{name}: {n} is outside {low}-{high}"));
            }
            Ok(n)
        };
        let (from, to) = match range {
            "*" => (low, high),
            r => match r.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None if step > 1 => (number(r)?, high),
                None => {
                    let n = number(r)?;
                    (n, n)
                }
            },
        };
        if from > to {
            return Err(format!("{name}: range {from}-{to} runs backwards"));
        }
        let mut v = from;
        while v <= to {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Cron {
    /// Parses five fields.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "{text:?}: a cron expression has 5 fields (minute hour day-of-month month day-of-week), this has {}",
                fields.len()
            ));
        };
        let with = |e: String| format!("{text:?}: {e}");
        let mut weekdays = field(weekday, "day of week", 0, 7).map_err(with)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Self {
            text: fields.join(" "),
            minutes: field(minute, "minute", 0, 59).map_err(with)?,
            hours: field(hour, "hour", 0, 23).map_err(with)? as u32,
            days: field(day, "day of month", 1, 31).map_err(with)? as u32,
            months: field(month, "month", 1, 12).map_err(with)? as u16,
            weekdays: (weekdays & 0x7f) as u8,
            any_day: day == "*",
            any_weekday: weekday == "*",
        })
    }

    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let by_day = self.days & (1 << day) != 0;
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => by_day,
            (true, false) => by_weekday,
            (false, false) => by_day || by_weekday,
        }
    }

    /// The first minute strictly after `after_ms` that matches, within eight years (a day that
    /// never comes, like February 30, gives `None`).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        const MINUTE: i64 = 60_000;
        const DAY: i64 = 24 * 60 * MINUTE;
        let start = (after_ms.div_euclid(MINUTE) + 1) * MINUTE;
        let first_day = start.div_euclid(DAY);
        let minute_of_day = (start - first_day * DAY) / MINUTE;
        for day_index in first_day..first_day + 8 * 366 {
            let (_, month, day) = civil_from_days(day_index);
            // 1970-01-01 was a Thursday (4).
            let weekday = (day_index + 4).rem_euclid(7) as u32;
            if self.months & (1 << month) == 0 || !self.day_matches(day, weekday) {
                continue;
            }
            let from = if day_index == first_day {
                minute_of_day
            } else {
                0
            };
            for m in from..24 * 60 {
                let (hour, minute) = ((m / 60) as u32, (m % 60) as u32);
                if self.hours & (1 << hour) != 0 && self.minutes & (1 << minute) != 0 {
                    return Some(day_index * DAY + m * MINUTE);
                }
            }
        }
        None
    }
}

/// Year, month (1–12) and day (1–31) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Schedule {
    /// A cron expression.
    pub fn cron(text: &str) -> Result<Self, String> {
        Ok(Self::Cron(Box::new(Cron::parse(text)?)))
    }

    /// An interval (`5m`, `1h 30m`, `30s`): at least [`MIN_INTERVAL`].
    pub fn every(text: &str) -> Result<Self, String> {
        let every = humantime::parse_duration(text.trim())
            .map_err(|e| format!("{text:?} is not an interval (`30s`, `5m`, `1h`): {e}"))?;
        if every < MIN_INTERVAL {
            return Err(format!(
                "{text:?} is shorter than the shortest interval, {}",
                humantime::format_duration(MIN_INTERVAL)
            ));
        }
        Ok(Self::Every(
            u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
        ))
    }

    /// The stored form.
    pub fn stored(&self) -> String {
        match self {
            Self::Every(ms) => format!("every:{ms}"),
            Self::Cron(c) => format!("cron:{}", c.text),
        }
    }

    /// Parses the stored form.
    pub fn from_stored(text: &str) -> Result<Self, String> {
        if let Some(ms) = text.strip_prefix("every:") {
            let ms: u64 = ms
                .parse()
                .map_err(|_| format!("stored schedule {text:?}"))?;
            return Ok(Self::Every(ms.max(1)));
        }
        if let Some(expr) = text.strip_prefix("cron:") {
            return Self::cron(expr);
        }
        Err(format!(
            "stored schedule {text:?} is neither cron: nor every:"
        ))
    }

    /// What a person reads (`every 5m`, `cron 0 9 * * 1-5`).
    pub fn display(&self) -> String {
        match self {
            Self::Every(ms) => format!(
                "every {}",
                humantime::format_duration(Duration::from_millis(*ms))
            ),
            Self::Cron(c) => format!("cron {}", c.text),
        }
    }

    /// The first slot strictly after `after_ms`; for an interval, slots are `origin_ms + k ×
    /// interval`.
    pub fn next_after(&self, origin_ms: i64, after_ms: i64) -> Option<i64> {
        match self {
            Self::Every(ms) => {
                let every = i64::try_from(*ms).ok()?;
                if after_ms < origin_ms {
                    return Some(origin_ms);
                }
                let k = (after_ms - origin_ms) / every + 1;
                origin_ms.checked_add(k.checked_mul(every)?)
            }
            Self::Cron(c) => c.next_after(after_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC date and time.
    fn at(year: i64, month: u32, day: u32, hour: i64, minute: i64) -> i64 {
        // Days from civil (the inverse of civil_from_days).
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        ((days * 24 + hour) * 60 + minute) * 60_000
    }

    #[test]
    fn civil_dates_round_trip() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2026, 12, 4), (2100, 3, 1)] {
            let days = at(y, m, d, 0, 0) / 86_400_000;
            assert_eq!(civil_from_days(days), (y, m, d));
        }
    }

    #[test]
    fn cron_next_slots() {
        let now = at(2026, 12, 4, 10, 17); // a Friday
        let cases = [
            ("* * * * *", at(2026, 12, 4, 10, 18)),
            ("*/15 * * * *", at(2026, 12, 4, 10, 30)),
            ("0 9 * * *", at(2026, 12, 5, 9, 0)),
            ("0 9 * * 1-5", at(2026, 12, 7, 9, 0)),   // Monday
            ("30 10 * * 0", at(2026, 12, 6, 10, 30)), // Sunday
            ("30 10 * * 7", at(2026, 12, 6, 10, 30)), // Sunday as 7
            ("0 0 1 1 *", at(2027, 1, 1, 0, 0)),
            ("0 0 29 2 *", at(2028, 2, 29, 0, 0)),
            ("5,10 11 * * *", at(2026, 12, 4, 11, 5)),
            ("0 12 13 * 5", at(2026, 12, 4, 12, 0)), // either day field: Friday today
            ("0-10/5 10 * * *", at(2026, 12, 5, 10, 0)),
            ("20/20 10 * * *", at(2026, 12, 4, 10, 20)),
        ];
        for (expr, want) in cases {
            let cron = Cron::parse(expr).unwrap();
            assert_eq!(cron.next_after(now), Some(want), "{expr}");
        }
        // Strictly after: a slot exactly now is the next one's predecessor.
        let cron = Cron::parse("18 10 * * *").unwrap();
        assert_eq!(
            cron.next_after(at(2026, 12, 4, 10, 18)),
            Some(at(2026, 12, 5, 10, 18))
        );
        assert_eq!(Cron::parse("0 0 30 2 *").unwrap().next_after(now), None);
    }

    #[test]
    fn bad_cron_names_the_field() {
        let cases = [
            ("* * * *", "has 5 fields"),
            ("60 * * * *", "minute: 60 is outside 0-59"),
            ("* 24 * * *", "hour: 24 is outside 0-23"),
            ("* * 0 * *", "day of month: 0 is outside 1-31"),
            ("* * * 13 *", "month: 13 is outside 1-12"),
            ("* * * * 8", "day of week: 8 is outside 0-7"),
            ("*/0 * * * *", "a step of 0"),
            ("5-1 * * * *", "runs backwards"),
            ("x * * * *", "\"x\" is not a number"),
        ];
        for (expr, needle) in cases {
            let err = Cron::parse(expr).unwrap_err();
            assert!(err.contains(needle), "{expr}: {err}");
        }
    }

    #[test]
    fn intervals_and_stored_forms() {
        let every = Schedule::every("5m").unwrap();
        assert_eq!(every, Schedule::Every(300_000));
        assert_eq!(every.next_after(1_000, 0), Some(1_000));
        assert_eq!(every.next_after(1_000, 1_000), Some(301_000));
        assert_eq!(every.next_after(1_000, 301_001), Some(601_000));
        assert!(Schedule::every("500ms").unwrap_err().contains("shortest"));
        assert!(
            Schedule::every("soon")
                .unwrap_err()
                .contains("not an interval")
        );
        for s in [every, Schedule::cron("0  9 * * 1-5").unwrap()] {
            assert_eq!(Schedule::from_stored(&s.stored()).unwrap(), s);
        }
        assert_eq!(
            Schedule::cron("0  9 * * 1-5").unwrap().display(),
            "cron 0 9 * * 1-5"
        );
        assert!(Schedule::from_stored("weekly").is_err());
    }
}
