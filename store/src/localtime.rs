//! The one time module of the store, the relay, the portal and the gateway's
//! command line: unix time ([`unix_now`], seconds as `i64`), local days and
//! times at the gateway's `[identity] utc_offset_hours`, and the one place
//! dates (`YYYY-MM-DD`, `YYYY-MM`), times of day (`HH:MM`) and RFC 3339
//! times are parsed and formatted (audit export, attendance report, plans,
//! the portal's forms, the policy's plan check).
//!
//! Parsers come in two forms: `anyhow::Result` with a message for a person
//! (command-line arguments, lines of an imported file), and `Option` for
//! callers that answer a failure their own way (a form field, a value the
//! store has already validated).

use std::ops::RangeInclusive;

use anyhow::{bail, Context as _};
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, UtcOffset};

/// The current time as unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix time of local midnight at the start of `date`.
pub fn local_midnight(date: Date, offset: UtcOffset) -> i64 {
    date.midnight().assume_offset(offset).unix_timestamp()
}

/// The local date of unix time `t`.
pub fn local_date(t: i64, offset: UtcOffset) -> Date {
    OffsetDateTime::from_unix_timestamp(t)
        .map(|d| d.to_offset(offset).date())
        .unwrap_or(Date::MIN)
}

/// The offset for `[identity] utc_offset_hours`.
pub fn utc_offset(secs: i32) -> UtcOffset {
    UtcOffset::from_whole_seconds(secs).unwrap_or(UtcOffset::UTC)
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> anyhow::Result<Date> {
    let bad = || format!("{s:?} is not a date (YYYY-MM-DD)");
    let mut it = s.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (it.next(), it.next(), it.next()) else {
        bail!(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        bail!(bad());
    }
    let y: i32 = y.parse().with_context(bad)?;
    let m: u8 = m.parse().with_context(bad)?;
    let d: u8 = d.parse().with_context(bad)?;
    Date::from_calendar_date(y, Month::try_from(m).with_context(bad)?, d).with_context(bad)
}

/// [`parse_date`] without the message.
pub fn parse_date_opt(s: &str) -> Option<Date> {
    parse_date(s).ok()
}

/// A date as `YYYY-MM-DD`.
pub fn ymd(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Minutes after midnight from hours and minutes: `None` unless it is a
/// time of day (`24:00`, the end of the day, included).
fn minutes(h: u16, m: u16) -> Option<u16> {
    let min = h.checked_mul(60)?.checked_add(m)?;
    (m < 60 && min <= 1440).then_some(min)
}

/// Parses a time of day as typed on a command line or found in an imported
/// file: `HH:MM` or `H:MM`, spaces around either number allowed, `24:00` for
/// the end of the day; minutes after midnight. Errors name `what`.
pub fn parse_hhmm(what: &str, s: &str) -> anyhow::Result<u16> {
    let (h, m) = s
        .split_once(':')
        .with_context(|| format!("{what} {s:?}: expected HH:MM"))?;
    let (h, m): (u16, u16) = (
        h.trim().parse().with_context(|| format!("{what} {s:?}"))?,
        m.trim().parse().with_context(|| format!("{what} {s:?}"))?,
    );
    minutes(h, m).with_context(|| format!("{what} {s:?} is not a time of day"))
}

/// Parses exactly `HH:MM` (two digits each, as a form's time field sends
/// it; spaces around the whole allowed), `24:00` for the end of the day;
/// minutes after midnight.
pub fn parse_hhmm_strict(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    minutes(h.parse().ok()?, m.parse().ok()?)
}

/// Minutes after midnight as `HH:MM`.
pub fn hhmm(min: u16) -> String {
    format!("{:02}:{:02}", min / 60, min % 60)
}

/// Parses `YYYY-MM` into its first and last day.
pub fn parse_month(s: &str) -> anyhow::Result<RangeInclusive<Date>> {
    let first = parse_date(&format!("{s}-01"))
        .with_context(|| format!("{s:?} is not a month (YYYY-MM)"))?;
    let last = Date::from_calendar_date(
        first.year(),
        first.month(),
        first.month().length(first.year()),
    )?;
    Ok(first..=last)
}

/// `at` as RFC 3339 at the offset (empty for a time out of range).
pub fn rfc3339(at: i64, utc_offset_secs: i32) -> String {
    OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| {
            t.to_offset(utc_offset(utc_offset_secs))
                .format(&Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Parses a time bound such as `--since`: RFC 3339, or a local date meaning
/// its midnight.
pub fn parse_instant(s: &str, utc_offset_secs: i32) -> anyhow::Result<i64> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let d = parse_date(s).with_context(|| {
        format!("{s:?} is neither RFC 3339 (2025-01-06T08:00:00+09:00) nor a date (2025-01-06)")
    })?;
    Ok(local_midnight(d, utc_offset(utc_offset_secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_day() {
        assert_eq!(parse_hhmm("start", "08:30").unwrap(), 510);
        assert_eq!(parse_hhmm("start", " 8 : 30").unwrap(), 510);
        assert_eq!(parse_hhmm("end", "24:00").unwrap(), 1440);
        for bad in ["24:01", "8.30", "08:60", "1093:00", "x:00"] {
            assert!(parse_hhmm("end", bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_hhmm("end", "25:00").unwrap_err().to_string(),
            "end \"25:00\" is not a time of day"
        );
        assert_eq!(parse_hhmm_strict("08:30"), Some(510));
        assert_eq!(parse_hhmm_strict(" 24:00 "), Some(1440));
        assert_eq!(parse_hhmm_strict("8:30"), None);
        assert_eq!(parse_hhmm_strict("24:01"), None);
        assert_eq!(hhmm(1035), "17:15");
        assert_eq!(hhmm(1440), "24:00");
    }

    #[test]
    fn dates() {
        let d = parse_date("2026-01-05").unwrap();
        assert_eq!(ymd(d), "2026-01-05");
        assert_eq!(parse_date_opt("2026-02-29"), None);
        assert_eq!(parse_date_opt("2026-1-05"), None);
        assert!(unix_now() > 1_700_000_000);
    }
}
