//! Keys and sections of older versions of a file, and where they are now.

use toml::{Table, Value};

use crate::duration::fmt_duration;

/// A key or a section of an older version of a file, and its new place.
/// Sections are dotted paths (`relay.limits`).
#[derive(Debug, Clone, Copy)]
pub struct Renamed {
    /// Old section, and old key (empty for a whole section).
    old: (&'static str, &'static str),
    /// New section, and new key (empty for a whole section).
    new: (&'static str, &'static str),
    /// For a number that became a duration: the old key's unit (`s`, `ms`,
    /// `h`), so `N` is shown as `"N<unit>"`.
    unit: Option<&'static str>,
    /// A valid value for the new key: a duration (`10s`) when `unit` is
    /// set, else TOML (`"authpriv"` with its quotes).
    example: &'static str,
}

impl Renamed {
    /// Section `old` is now `new`, with the same keys except those listed
    /// on their own (with `old` as their old section).
    pub const fn section(old: &'static str, new: &'static str) -> Self {
        Self {
            old: (old, ""),
            new: (new, ""),
            unit: None,
            example: "",
        }
    }

    /// `[old.0] old.1` is now `[new.0] new.1`; `example` is a valid value
    /// for it, as TOML.
    pub const fn key(
        old: (&'static str, &'static str),
        new: (&'static str, &'static str),
        example: &'static str,
    ) -> Self {
        Self {
            old,
            new,
            unit: None,
            example,
        }
    }

    /// `[old.0] old.1`, a number of `unit`s (`s`, `ms`, `h`), is now the
    /// duration `[new.0] new.1`; `example` is a valid duration (`10s`).
    pub const fn duration(
        old: (&'static str, &'static str),
        new: (&'static str, &'static str),
        unit: &'static str,
        example: &'static str,
    ) -> Self {
        Self {
            old,
            new,
            unit: Some(unit),
            example,
        }
    }

    fn is_section(&self) -> bool {
        self.old.1.is_empty()
    }

    /// `[section] old = N is now [new] key = "N<unit>"`, `section` being
    /// where the old key was found.
    fn describe(&self, section: &str, value: &Value) -> String {
        let (old, (new_section, new_key)) = (self.old.1, self.new);
        match (self.unit, value) {
            (Some(unit), Value::Integer(n)) => {
                // 900 seconds are shown as "15min".
                let now = humantime::parse_duration(&format!("{n}{unit}"))
                    .map_or_else(|_| format!("{n}{unit}"), fmt_duration);
                format!("[{section}] {old} = {n} is now [{new_section}] {new_key} = \"{now}\"")
            }
            (Some(_), _) => format!(
                "[{section}] {old} is now [{new_section}] {new_key} = \"{}\"",
                self.example
            ),
            (None, _) => format!(
                "[{section}] {old} is now [{new_section}] {new_key} = {}",
                self.example
            ),
        }
    }
}

/// The table at a dotted path (`relay.limits`), if there is one.
fn table_at<'a>(root: &'a Table, path: &str) -> Option<&'a Table> {
    path.split('.')
        .try_fold(root, |t, name| t.get(name).and_then(Value::as_table))
}

/// One line per old key or section found in `root`, in the order of
/// `renamed`.
pub(crate) fn find(root: &Table, renamed: &[Renamed]) -> Vec<String> {
    let mut out = Vec::new();
    for moved in renamed.iter().filter(|r| r.is_section()) {
        let Some(t) = table_at(root, moved.old.0) else {
            continue;
        };
        let (old, new) = (moved.old.0, moved.new.0);
        out.push(format!("[{old}] is now [{new}]"));
        for (key, value) in t {
            if let Some(r) = renamed
                .iter()
                .find(|r| !r.is_section() && r.old == (old, key.as_str()))
            {
                out.push(r.describe(old, value));
            }
        }
    }
    for r in renamed.iter().filter(|r| !r.is_section()) {
        let moved = renamed.iter().any(|m| m.is_section() && m.old.0 == r.old.0);
        // In its old section (unless that whole section moved: done above),
        // and under its old name in the new section (a file half changed).
        let mut places = vec![];
        if !moved {
            places.push(r.old.0);
        }
        if r.new.0 != r.old.0 || moved {
            places.push(r.new.0);
        }
        for section in places {
            if let Some(value) = table_at(root, section).and_then(|t| t.get(r.old.1)) {
                out.push(r.describe(section, value));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENAMED: &[Renamed] = &[
        Renamed::section("limits", "relay.limits"),
        Renamed::duration(
            ("limits", "keepalive_secs"),
            ("relay.limits", "keepalive"),
            "s",
            "10s",
        ),
        Renamed::duration(("tls", "crl_grace_hours"), ("tls", "crl_grace"), "h", "72h"),
        Renamed::key(("audit", "syslog_queue"), ("syslog", "queue"), "10000"),
    ];

    fn found(text: &str) -> Vec<String> {
        find(&toml::from_str(text).unwrap(), RENAMED)
    }

    #[test]
    fn old_keys_are_named_with_their_new_place_and_value() {
        assert_eq!(
            found(
                "[limits]\nkeepalive_secs = 120\nmax_sessions = 5\n[tls]\ncrl_grace_hours = 24\n"
            ),
            [
                "[limits] is now [relay.limits]",
                "[limits] keepalive_secs = 120 is now [relay.limits] keepalive = \"2min\"",
                "[tls] crl_grace_hours = 24 is now [tls] crl_grace = \"24h\"",
            ]
        );
    }

    #[test]
    fn half_changed_files_and_odd_values_are_caught_too() {
        assert_eq!(
            found("[relay.limits]\nkeepalive_secs = \"x\"\n[audit]\nsyslog_queue = 5\n[limits]\n"),
            [
                "[limits] is now [relay.limits]",
                "[relay.limits] keepalive_secs is now [relay.limits] keepalive = \"10s\"",
                "[audit] syslog_queue is now [syslog] queue = 10000",
            ]
        );
    }

    #[test]
    fn a_current_file_has_none() {
        assert!(
            found("[relay.limits]\nkeepalive = \"10s\"\n[tls]\ncrl_grace = \"72h\"\n").is_empty()
        );
    }

    #[test]
    fn parse_reports_every_old_key_before_unknown_fields() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct File {
            tls: Option<Table>,
        }
        let e = crate::parse::<File>(
            "[tls]\ncrl_grace_hours = 72\n[limits]\nkeepalive_secs = 10\n",
            RENAMED,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("[limits] keepalive_secs = 10 is now [relay.limits] keepalive = \"10s\"\n  [tls] crl_grace_hours = 72 is now [tls] crl_grace = \"72h\""), "{e}");
        assert!(crate::parse::<File>("[tls]\n", RENAMED).is_ok());
        let e = crate::parse::<File>("[tls]\n[other]\n", RENAMED)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `other`"), "{e}");
    }
}
