//! The rule side of the model: what a security officer writes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{UtcOffset, Weekday};

pub use kakehashi_proto::{Clipboard, Controls};

use crate::vocab::{Level, TerminalClass};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Allow, subject to the rule's conditions.
    Allow,
    /// Deny (reason `level_not_permitted`).
    Deny,
}

/// When an allow rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hours {
    /// Inside the policy's work hours only; the session ends at the end of the
    /// window (no overtime). The default: what is not stated is restricted.
    #[default]
    WorkHours,
    /// At any time.
    Always,
}

/// Who may open a desk under a rule, besides what the rule itself checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeskAccess {
    /// The desk's registered owners only (default). No role bypasses this.
    #[default]
    Owners,
    /// Owners, and anyone whose department is the desk's department.
    Department,
}

/// Day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Day {
    /// Monday to Friday.
    pub const WEEKDAYS: [Day; 5] = [Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri];
    /// Every day, Monday first.
    pub const ALL: [Day; 7] = [
        Day::Mon,
        Day::Tue,
        Day::Wed,
        Day::Thu,
        Day::Fri,
        Day::Sat,
        Day::Sun,
    ];
}

impl Day {
    /// Lowercase three-letter name, as in policy files.
    pub const fn as_str(self) -> &'static str {
        match self {
            Day::Mon => "mon",
            Day::Tue => "tue",
            Day::Wed => "wed",
            Day::Thu => "thu",
            Day::Fri => "fri",
            Day::Sat => "sat",
            Day::Sun => "sun",
        }
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Weekday> for Day {
    fn from(w: Weekday) -> Day {
        match w {
            Weekday::Monday => Day::Mon,
            Weekday::Tuesday => Day::Tue,
            Weekday::Wednesday => Day::Wed,
            Weekday::Thursday => Day::Thu,
            Weekday::Friday => Day::Fri,
            Weekday::Saturday => Day::Sat,
            Weekday::Sunday => Day::Sun,
        }
    }
}

/// A local time of day with minute precision, `00:00` to `24:00`.
/// Written `"HH:MM"` in policy files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    /// Midnight at the start of the day.
    pub const MIDNIGHT: TimeOfDay = TimeOfDay(0);
    /// Midnight at the end of the day.
    pub const END_OF_DAY: TimeOfDay = TimeOfDay(1440);

    /// `hour:minute`; `None` unless `00:00 ..= 24:00`.
    pub const fn hm(hour: u16, minute: u16) -> Option<TimeOfDay> {
        if minute < 60 && (hour < 24 || (hour == 24 && minute == 0)) {
            Some(TimeOfDay(hour * 60 + minute))
        } else {
            None
        }
    }

    /// Minutes after midnight (0 ..= 1440).
    pub const fn minutes(self) -> u16 {
        self.0
    }
}

impl FromStr for TimeOfDay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid time of day {s:?}: expected \"HH:MM\" from 00:00 to 24:00");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let h: u16 = h.parse().map_err(|_| bad())?;
        let m: u16 = m.parse().map_err(|_| bad())?;
        TimeOfDay::hm(h, m).ok_or_else(bad)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The work-hour window: `[start, end)` local time on the listed days.
///
/// `start` is inside, `end` is outside: with 08:30–17:15, a request at 08:30
/// is allowed and one at 17:15 is refused; sessions end at 17:15.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkHours {
    /// Working days.
    pub days: Vec<Day>,
    /// Start (inclusive).
    pub start: TimeOfDay,
    /// End (exclusive).
    pub end: TimeOfDay,
}

impl Default for WorkHours {
    /// 08:30–17:15, Monday to Friday.
    fn default() -> Self {
        WorkHours {
            days: Day::WEEKDAYS.to_vec(),
            start: TimeOfDay(8 * 60 + 30),
            end: TimeOfDay(17 * 60 + 15),
        }
    }
}

impl WorkHours {
    /// Is `minute` (after local midnight) on `day` inside the window?
    pub fn contains(&self, day: Day, minute: u16) -> bool {
        self.days.contains(&day) && self.start.0 <= minute && minute < self.end.0
    }
}

/// What a BCP declaration relaxes. It never relaxes level 3 from home and
/// never the My Number segment, whatever is listed here.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BcpRelax {
    /// Waive the approved-plan requirement.
    pub plan: bool,
    /// Waive the work-hour window.
    pub hours: bool,
    /// Only for desks of these levels.
    pub levels: Vec<Level>,
    /// Only from these terminal classes.
    pub classes: Vec<TerminalClass>,
}

impl BcpRelax {
    /// Does it apply to `level` from `class`? Never for level 3 from home.
    pub fn covers(&self, level: Level, class: TerminalClass) -> bool {
        !(level == Level::L3 && class == TerminalClass::Home)
            && self.levels.contains(&level)
            && self.classes.contains(&class)
    }
}

/// One access rule. Rules are evaluated in order; the first whose levels,
/// classes and (optional) departments match the request decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Stable id: ASCII letters, digits, `-`, `_`, `.`; at most 64 bytes.
    pub id: String,
    /// Free text for officers.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Desk confidentiality levels the rule matches.
    pub levels: Vec<Level>,
    /// Terminal classes the rule matches.
    pub classes: Vec<TerminalClass>,
    /// Desk departments the rule matches; `None` matches every department.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub departments: Option<Vec<String>>,
    /// Allow or deny.
    pub effect: Effect,
    /// Hour window (allow rules).
    #[serde(default)]
    pub hours: Hours,
    /// An approved plan for today covering the time is required (allow rules).
    #[serde(default)]
    pub require_plan: bool,
    /// Oldest accepted multi-factor authentication, minutes; `None`: no limit
    /// beyond the login token's own lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_max_age_mins: Option<u32>,
    /// A WebAuthn assertion made for the session is required.
    #[serde(default)]
    pub step_up: bool,
    /// Longest session, minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_mins: Option<u32>,
    /// Idle timeout, minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_mins: Option<u32>,
    /// Who besides the owners may open the desk.
    #[serde(default)]
    pub desk_access: DeskAccess,
    /// Session controls (allow rules). Missing fields are off.
    #[serde(default, with = "strict_controls")]
    pub controls: Controls,
}

impl Rule {
    /// A rule with the safe defaults: work hours, no plan, no MFA limit, no
    /// step-up, owners only, every redirection off.
    pub fn new(
        id: impl Into<String>,
        effect: Effect,
        levels: &[Level],
        classes: &[TerminalClass],
    ) -> Rule {
        Rule {
            id: id.into(),
            description: String::new(),
            levels: levels.to_vec(),
            classes: classes.to_vec(),
            departments: None,
            effect,
            hours: Hours::WorkHours,
            require_plan: false,
            mfa_max_age_mins: None,
            step_up: false,
            max_duration_mins: None,
            idle_timeout_mins: None,
            desk_access: DeskAccess::Owners,
            controls: Controls::default(),
        }
    }

    /// Does the rule match a desk of `level` and `department` from `class`?
    pub fn matches(&self, level: Level, class: TerminalClass, department: &str) -> bool {
        self.levels.contains(&level)
            && self.classes.contains(&class)
            && self
                .departments
                .as_ref()
                .is_none_or(|d| d.iter().any(|d| d == department))
    }
}

/// A whole policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Rules, first match wins; no match denies.
    pub rules: Vec<Rule>,
    /// The work-hour window.
    pub work_hours: WorkHours,
    /// Fixed UTC offset of local time (Asia/Tokyo is +09:00, no DST).
    pub timezone: UtcOffset,
    /// What a BCP declaration relaxes unless the officer says otherwise.
    pub bcp_default_relax: BcpRelax,
}

/// Parse a fixed offset: `+09:00`, `-05:30`, `Z`, `UTC` or `Asia/Tokyo`.
pub fn parse_timezone(s: &str) -> Result<UtcOffset, String> {
    let bad = || {
        format!("invalid timezone {s:?}: expected a fixed offset such as \"+09:00\" (or \"Asia/Tokyo\", \"UTC\")")
    };
    match s {
        "Z" | "UTC" => return Ok(UtcOffset::UTC),
        "Asia/Tokyo" | "JST" => return UtcOffset::from_hms(9, 0, 0).map_err(|_| bad()),
        _ => {}
    }
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1i8, &s[1..]),
        Some(b'-') => (-1i8, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    UtcOffset::from_hms(sign * h, sign * m, 0).map_err(|_| bad())
}

/// Format an offset as `+HH:MM`.
pub fn format_timezone(tz: UtcOffset) -> String {
    let (h, m, _) = tz.as_hms();
    let sign = if tz.is_negative() { '-' } else { '+' };
    format!("{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
}

/// Serde for [`Controls`] that refuses unknown fields: a typo such as
/// `printr = true` must be an error, not a silently ignored line.
mod strict_controls {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    #[derive(Default)]
    struct Strict {
        clipboard: Clipboard,
        drive: bool,
        printer: bool,
        ports: bool,
        usb: bool,
        audio: bool,
        smartcard: bool,
    }

    pub(super) fn serialize<S: Serializer>(c: &Controls, s: S) -> Result<S::Ok, S::Error> {
        c.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Controls, D::Error> {
        let s = Strict::deserialize(d)?;
        Ok(Controls {
            clipboard: s.clipboard,
            drive: s.drive,
            printer: s.printer,
            ports: s.ports,
            usb: s.usb,
            audio: s.audio,
            smartcard: s.smartcard,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_of_day_parses_and_prints() {
        assert_eq!("08:30".parse::<TimeOfDay>().unwrap().minutes(), 510);
        assert_eq!("24:00".parse::<TimeOfDay>().unwrap(), TimeOfDay::END_OF_DAY);
        for bad in ["8:30", "24:01", "12:60", "aa:bb", "", "08:30:00"] {
            assert!(bad.parse::<TimeOfDay>().is_err(), "{bad}");
        }
        assert_eq!(TimeOfDay::hm(17, 15).unwrap().to_string(), "17:15");
    }

    #[test]
    fn timezones() {
        assert_eq!(parse_timezone("+09:00").unwrap().whole_hours(), 9);
        assert_eq!(parse_timezone("Asia/Tokyo").unwrap().whole_hours(), 9);
        assert_eq!(format_timezone(parse_timezone("-05:30").unwrap()), "-05:30");
        assert_eq!(format_timezone(UtcOffset::UTC), "+00:00");
        for bad in ["+9", "09:00", "+24:00", "Europe/Paris", ""] {
            assert!(parse_timezone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bcp_never_covers_level_3_from_home() {
        let r = BcpRelax {
            plan: true,
            hours: true,
            levels: Level::ALL.to_vec(),
            classes: TerminalClass::ALL.to_vec(),
        };
        assert!(!r.covers(Level::L3, TerminalClass::Home));
        assert!(r.covers(Level::L3, TerminalClass::Mobile));
    }
}
