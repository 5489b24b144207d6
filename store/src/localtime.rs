//! Local days and times at the gateway's `[identity] utc_offset_hours`: the
//! one place dates (`YYYY-MM-DD`, `YYYY-MM`) and RFC 3339 times are parsed
//! and formatted for the audit export, the attendance report and the portal.

use std::ops::RangeInclusive;

use anyhow::{bail, Context as _};
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, UtcOffset};

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

/// The offset for `[identity] utc_offset_secs`.
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
