//! When each rule runs next: its cron schedule (seconds first, UTC) plus a
//! fixed per-rule jitter.
//!
//! The next run is always computed from *now*, after the previous run has
//! finished: a run that outlasts its interval delays the next one instead of
//! stacking, and the runs missed while the daemon was down collapse into
//! the single next one.

use chrono::{DateTime, Utc};
use cron::Schedule;
use sha2::{Digest, Sha256};
use std::str::FromStr;
use std::time::Duration;

/// A rule's schedule.
#[derive(Debug, Clone)]
pub struct RuleSchedule {
    cron: Schedule,
    offset: chrono::Duration,
}

impl RuleSchedule {
    /// Parses `expr` (validated by `check`); the jitter offset is derived
    /// from the rule name, so every replica agrees on it.
    pub fn new(
        rule: &str,
        expr: &str,
        jitter: Duration,
    ) -> Result<RuleSchedule, cron::error::Error> {
        Ok(RuleSchedule {
            cron: Schedule::from_str(expr)?,
            offset: offset(rule, jitter),
        })
    }

    /// The first slot strictly after `after`, and when to start it (the slot
    /// plus the jitter offset). The slot is what replicas agree on.
    pub fn next(&self, after: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let slot = self.cron.after(&after).next()?;
        Some((slot, slot.checked_add_signed(self.offset)?))
    }

    /// The rule's period: the time between the first two slots strictly
    /// after `at` (None when the schedule has fewer than two left).
    pub fn interval(&self, at: DateTime<Utc>) -> Option<chrono::Duration> {
        let mut slots = self.cron.after(&at);
        let first = slots.next()?;
        let second = slots.next()?;
        Some(second - first)
    }
}

/// A fixed offset in `[0, jitter)` from the rule's name.
fn offset(rule: &str, jitter: Duration) -> chrono::Duration {
    // At most i64::MAX ms, so the offset fits a chrono::Duration (the
    // config allows far less; this only keeps an absurd jitter from panicking).
    let ms =
        u64::try_from(jitter.as_millis()).map_or(i64::MAX as u64, |ms| ms.min(i64::MAX as u64));
    if ms == 0 {
        return chrono::Duration::zero();
    }
    let digest = Sha256::digest(rule.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    chrono::Duration::milliseconds((u64::from_be_bytes(bytes) % ms) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, s).unwrap()
    }

    #[test]
    fn schedule_next_slot_is_strictly_after() {
        let s = RuleSchedule::new("r", "0 */15 * * * *", Duration::ZERO).unwrap();
        assert_eq!(s.next(at(10, 0, 0)).unwrap().0, at(10, 15, 0));
        assert_eq!(s.next(at(10, 14, 59)).unwrap().0, at(10, 15, 0));
    }

    #[test]
    fn schedule_missed_runs_collapse_into_one() {
        // Down from 10:00 to 13:07: the next slot after now is 13:15, once.
        let s = RuleSchedule::new("r", "0 */15 * * * *", Duration::ZERO).unwrap();
        assert_eq!(s.next(at(13, 7, 0)).unwrap().0, at(13, 15, 0));
    }

    #[test]
    fn schedule_jitter_is_stable_per_rule_and_bounded() {
        let j = Duration::from_secs(60);
        let a = RuleSchedule::new("session-logs-30d", "0 0 * * * *", j).unwrap();
        let b = RuleSchedule::new("telemetry-90d", "0 0 * * * *", j).unwrap();
        let (slot, start_a) = a.next(at(10, 0, 0)).unwrap();
        let (_, start_b) = b.next(at(10, 0, 0)).unwrap();
        assert_eq!(slot, at(11, 0, 0));
        assert!(start_a >= slot && start_a < slot + chrono::Duration::seconds(60));
        assert_ne!(start_a, start_b, "rules sharing a schedule are spread");
        assert_eq!(
            a.next(at(10, 0, 0)),
            RuleSchedule::new("session-logs-30d", "0 0 * * * *", j)
                .unwrap()
                .next(at(10, 0, 0))
        );
    }

    #[test]
    fn schedule_absurd_jitter_does_not_panic() {
        // Found by tests/integration/fuzz.rs: `slot + offset` overflowed.
        for secs in [u64::MAX, 1 << 62, 9_223_372_036_854_776] {
            let s = RuleSchedule::new("r", "* * * * * *", Duration::from_secs(secs)).unwrap();
            if let Some((slot, start)) = s.next(at(10, 0, 0)) {
                assert!(start >= slot);
            }
        }
    }

    #[test]
    fn schedule_interval_is_the_gap_between_two_slots() {
        let s = RuleSchedule::new("r", "0 */15 * * * *", Duration::from_secs(60)).unwrap();
        assert_eq!(
            s.interval(at(10, 7, 0)),
            Some(chrono::Duration::minutes(15))
        );
        let yearly = RuleSchedule::new("r", "0 0 0 1 1 *", Duration::ZERO).unwrap();
        let year = yearly.interval(at(10, 0, 0)).unwrap();
        assert!(year >= chrono::Duration::days(365) && year <= chrono::Duration::days(366));
        let once = RuleSchedule::new("r", "0 0 0 1 1 * 2027", Duration::ZERO).unwrap();
        assert_eq!(once.interval(at(10, 0, 0)), None, "a single slot left");
    }

    #[test]
    fn schedule_every_second_and_day_of_week() {
        let s = RuleSchedule::new("r", "* * * * * *", Duration::ZERO).unwrap();
        assert_eq!(s.next(at(10, 0, 0)).unwrap().0, at(10, 0, 1));
        // Mondays at 03:00; 2026-11-23 is a Monday.
        let s = RuleSchedule::new("r", "0 0 3 * * Mon", Duration::ZERO).unwrap();
        assert_eq!(
            s.next(at(4, 0, 0)).unwrap().0,
            Utc.with_ymd_and_hms(2026, 11, 30, 3, 0, 0).unwrap()
        );
    }
}
