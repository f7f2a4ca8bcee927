//! Retention durations (`keep`, `min_keep`) and plain timeouts.
//!
//! The contract defines `keep` as a sum of `s, m, h, d, w, mo, y` parts and a
//! cutoff as `now - keep` in UTC calendar arithmetic, applied the way
//! PostgreSQL applies `timestamptz - interval` in UTC: the month count
//! (years × 12 + months) first, with month-end clamping, then weeks and days,
//! then hours, minutes and seconds. The grammar is ours (the contract's), so it
//! is parsed here rather than by a general-purpose duration crate that would
//! accept forms (`1 month`, `P1M`, fractions) the contract does not define.

use chrono::{DateTime, Duration, Months, Utc};
use std::fmt;

/// A calendar-aware retention duration such as `30d` or `1y6mo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Keep {
    /// Years × 12 + months.
    pub months: u32,
    /// Weeks × 7 + days.
    pub days: u32,
    /// Hours, minutes and seconds, in seconds.
    pub seconds: u64,
}

/// Why a duration string was rejected; rendered next to the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    /// Nothing was written.
    Empty,
    #[error("expected a number at `{0}`")]
    /// A unit without a number before it.
    MissingNumber(String),
    #[error("`{0}` has no unit")]
    /// A number without a unit after it.
    MissingUnit(String),
    #[error("unknown unit `{0}`")]
    /// A unit outside s, m, h, d, w, mo, y.
    UnknownUnit(String),
    #[error("unit `{0}` appears twice")]
    /// The same unit twice.
    RepeatedUnit(String),
    #[error("duration is too large")]
    /// Beyond a thousand years.
    TooLarge,
    #[error("calendar units (`mo`, `y`) are not allowed here")]
    /// Months or years where a fixed duration is needed.
    CalendarUnit,
}

impl DurationError {
    /// A sentence telling the user how to write a valid duration.
    pub fn help(&self) -> &'static str {
        match self {
            DurationError::CalendarUnit => "use s, m, h, d or w here, e.g. \"30s\" or \"5m\"",
            _ => {
                "write a number followed by a unit: s, m (minutes), h, d, w, mo (months), y; \
                 parts can be combined, e.g. \"30d\", \"1y6mo\", \"1h30m\""
            }
        }
    }
}

// Far beyond any retention promise, small enough that no arithmetic overflows.
const MAX_MONTHS: u64 = 12 * 1000;
const MAX_DAYS: u64 = 366 * 1000;
const MAX_SECONDS: u64 = 86_400 * 366 * 1000;

impl Keep {
    /// Parses the contract's duration grammar, e.g. `"0s"`, `"30d"`, `"1y6mo"`.
    pub fn parse(text: &str) -> Result<Keep, DurationError> {
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(DurationError::Empty);
        }
        let (mut months, mut days, mut seconds) = (0u64, 0u64, 0u64);
        let mut seen: Vec<&str> = Vec::new();
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return Err(DurationError::MissingNumber(rest.to_string()));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| DurationError::TooLarge)?;
            rest = &rest[digits..];
            let unit_len = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .len();
            if unit_len == 0 {
                return Err(DurationError::MissingUnit(format!("{n}")));
            }
            let unit = &rest[..unit_len];
            rest = rest[unit_len..].trim_start();
            if seen.contains(&unit) {
                return Err(DurationError::RepeatedUnit(unit.to_string()));
            }
            let add = |acc: u64, factor: u64| {
                n.checked_mul(factor)
                    .and_then(|v| acc.checked_add(v))
                    .ok_or(DurationError::TooLarge)
            };
            match unit {
                "y" => months = add(months, 12)?,
                "mo" => months = add(months, 1)?,
                "w" => days = add(days, 7)?,
                "d" => days = add(days, 1)?,
                "h" => seconds = add(seconds, 3600)?,
                "m" => seconds = add(seconds, 60)?,
                "s" => seconds = add(seconds, 1)?,
                other => return Err(DurationError::UnknownUnit(other.to_string())),
            }
            seen.push(unit);
        }
        if months > MAX_MONTHS || days > MAX_DAYS || seconds > MAX_SECONDS {
            return Err(DurationError::TooLarge);
        }
        Ok(Keep {
            months: months as u32,
            days: days as u32,
            seconds,
        })
    }

    /// The cutoff for a run at `now`: `now - self`, month count first (clamped
    /// to the month's end), then days, then seconds.
    pub fn cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        now.checked_sub_months(Months::new(self.months))?
            .checked_sub_signed(Duration::days(i64::from(self.days)))?
            .checked_sub_signed(Duration::seconds(i64::try_from(self.seconds).ok()?))
    }

    /// True when `self` keeps data for less time than `other` at some instant:
    /// its cutoff lies after `other`'s. Calendar units make a plain comparison
    /// wrong (`365d` is shorter than `1y` only in leap years), so both are
    /// evaluated at every month end and month start of a four-year cycle.
    pub fn is_shorter_than(&self, other: &Keep) -> bool {
        reference_instants().any(|at| match (self.cutoff(at), other.cutoff(at)) {
            (Some(mine), Some(theirs)) => mine > theirs,
            _ => false,
        })
    }

    /// The duration as a PostgreSQL interval literal (for display and checks).
    pub fn as_interval(&self) -> String {
        format!(
            "{} mons {} days {} secs",
            self.months, self.days, self.seconds
        )
    }
}

fn reference_instants() -> impl Iterator<Item = DateTime<Utc>> {
    use chrono::TimeZone;
    (2024..2028).flat_map(|year| {
        (1..=12).flat_map(move |month| {
            let first = Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single();
            let last = first
                .and_then(|f| f.checked_add_months(Months::new(1)))
                .map(|next| next - Duration::seconds(1));
            [first, last].into_iter().flatten()
        })
    })
}

impl Keep {
    /// The period in words, as a promise reads: `1 year 6 months`,
    /// `30 days`, `1 minute`.
    pub fn in_words(&self) -> String {
        let (y, mo) = (self.months / 12, self.months % 12);
        let (h, rem) = (self.seconds / 3600, self.seconds % 3600);
        let (m, s) = (rem / 60, rem % 60);
        let mut parts = Vec::new();
        for (n, unit) in [
            (u64::from(y), "year"),
            (u64::from(mo), "month"),
            (u64::from(self.days), "day"),
            (h, "hour"),
            (m, "minute"),
            (s, "second"),
        ] {
            match n {
                0 => {}
                1 => parts.push(format!("1 {unit}")),
                n => parts.push(format!("{n} {unit}s")),
            }
        }
        if parts.is_empty() {
            "nothing (expires at once)".to_string()
        } else {
            parts.join(" ")
        }
    }

    /// True for a period of whole minutes under an hour: what `1m` meant
    /// as "one month" would look like.
    pub fn is_minutes_under_an_hour(&self) -> bool {
        self.months == 0
            && self.days == 0
            && self.seconds > 0
            && self.seconds < 3600
            && self.seconds.is_multiple_of(60)
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let (y, mo) = (self.months / 12, self.months % 12);
        let (h, rem) = (self.seconds / 3600, self.seconds % 3600);
        let (m, s) = (rem / 60, rem % 60);
        for (n, unit) in [
            (u64::from(y), "y"),
            (u64::from(mo), "mo"),
            (u64::from(self.days), "d"),
            (h, "h"),
            (m, "m"),
            (s, "s"),
        ] {
            if n > 0 {
                parts.push(format!("{n}{unit}"));
            }
        }
        if parts.is_empty() {
            f.write_str("0s")
        } else {
            f.write_str(&parts.concat())
        }
    }
}

/// A plain (non-calendar) duration such as a timeout: `30s`, `5m`.
pub fn parse_fixed(text: &str) -> Result<std::time::Duration, DurationError> {
    let keep = Keep::parse(text)?;
    if keep.months > 0 {
        return Err(DurationError::CalendarUnit);
    }
    Ok(std::time::Duration::from_secs(
        u64::from(keep.days) * 86_400 + keep.seconds,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn duration_parses_every_unit() {
        assert_eq!(
            Keep::parse("0s").unwrap(),
            Keep {
                months: 0,
                days: 0,
                seconds: 0
            }
        );
        assert_eq!(Keep::parse("30d").unwrap().days, 30);
        assert_eq!(Keep::parse("2w").unwrap().days, 14);
        assert_eq!(Keep::parse("1y6mo").unwrap().months, 18);
        assert_eq!(Keep::parse("1h30m").unwrap().seconds, 5400);
        assert_eq!(Keep::parse("10m").unwrap().seconds, 600);
        assert_eq!(
            Keep::parse("1y 2w 3h").unwrap(),
            Keep {
                months: 12,
                days: 14,
                seconds: 10800
            }
        );
    }

    #[test]
    fn duration_rejects_bad_input() {
        assert_eq!(Keep::parse(""), Err(DurationError::Empty));
        assert_eq!(
            Keep::parse("30"),
            Err(DurationError::MissingUnit("30".into()))
        );
        assert_eq!(
            Keep::parse("d"),
            Err(DurationError::MissingNumber("d".into()))
        );
        assert_eq!(
            Keep::parse("3days"),
            Err(DurationError::UnknownUnit("days".into()))
        );
        assert_eq!(
            Keep::parse("1d2d"),
            Err(DurationError::RepeatedUnit("d".into()))
        );
        assert_eq!(
            Keep::parse("-1d"),
            Err(DurationError::MissingNumber("-1d".into()))
        );
        assert_eq!(
            Keep::parse("99999999999999999999d"),
            Err(DurationError::TooLarge)
        );
        assert_eq!(parse_fixed("1mo"), Err(DurationError::CalendarUnit));
    }

    #[test]
    fn cutoff_clamps_month_end() {
        let keep = Keep::parse("1mo").unwrap();
        assert_eq!(
            keep.cutoff(at(2026, 3, 31, 12, 0, 0)),
            Some(at(2026, 2, 28, 12, 0, 0))
        );
        assert_eq!(
            keep.cutoff(at(2024, 3, 31, 0, 0, 0)),
            Some(at(2024, 2, 29, 0, 0, 0))
        );
    }

    #[test]
    fn cutoff_leap_day_plus_one_year() {
        // 2025-02-28 minus one year lands on 2024-02-28; 2025-03-01 on 2024-03-01.
        let keep = Keep::parse("1y").unwrap();
        assert_eq!(
            keep.cutoff(at(2025, 2, 28, 0, 0, 0)),
            Some(at(2024, 2, 28, 0, 0, 0))
        );
        assert_eq!(
            keep.cutoff(at(2025, 3, 1, 0, 0, 0)),
            Some(at(2024, 3, 1, 0, 0, 0))
        );
        // From a leap day: 2028-02-29 - 1y = 2027-02-28 (clamped).
        assert_eq!(
            keep.cutoff(at(2028, 2, 29, 6, 0, 0)),
            Some(at(2027, 2, 28, 6, 0, 0))
        );
    }

    #[test]
    fn cutoff_applies_months_then_days_then_time() {
        // 2026-03-31 - (1mo 1d) = (2026-02-28) - 1d = 2026-02-27, not 2026-02-28.
        let keep = Keep::parse("1mo1d").unwrap();
        assert_eq!(
            keep.cutoff(at(2026, 3, 31, 0, 0, 0)),
            Some(at(2026, 2, 27, 0, 0, 0))
        );
        let keep = Keep::parse("1d1h").unwrap();
        assert_eq!(
            keep.cutoff(at(2026, 3, 1, 0, 30, 0)),
            Some(at(2026, 2, 27, 23, 30, 0))
        );
    }

    #[test]
    fn shorter_than_is_calendar_aware() {
        let year = Keep::parse("1y").unwrap();
        assert!(Keep::parse("365d").unwrap().is_shorter_than(&year));
        assert!(!Keep::parse("366d").unwrap().is_shorter_than(&year));
        assert!(!Keep::parse("12mo").unwrap().is_shorter_than(&year));
        assert!(!year.is_shorter_than(&Keep::parse("12mo").unwrap()));
        assert!(Keep::parse("2y")
            .unwrap()
            .is_shorter_than(&Keep::parse("10y").unwrap()));
    }

    #[test]
    fn display_round_trips() {
        for text in ["0s", "30d", "1y6mo", "1h30m", "10y", "14d"] {
            let keep = Keep::parse(text).unwrap();
            assert_eq!(Keep::parse(&keep.to_string()).unwrap(), keep);
        }
    }
}

#[cfg(test)]
mod words_tests {
    use super::Keep;

    #[test]
    fn keep_in_words_reads_like_the_promise() {
        let k = |months, days, seconds| Keep {
            months,
            days,
            seconds,
        };
        assert_eq!(k(18, 0, 0).in_words(), "1 year 6 months");
        assert_eq!(k(0, 30, 0).in_words(), "30 days");
        assert_eq!(k(0, 0, 60).in_words(), "1 minute");
        assert_eq!(k(0, 0, 3600).in_words(), "1 hour");
        assert!(k(0, 0, 60).is_minutes_under_an_hour());
        assert!(!k(1, 0, 0).is_minutes_under_an_hour());
        assert!(!k(0, 0, 3600).is_minutes_under_an_hour());
        assert!(!k(0, 0, 90).is_minutes_under_an_hour());
    }
}
