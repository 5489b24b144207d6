//! Durations written with their unit, and their range checks.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

use crate::error::Error;

/// Valid durations, for error messages.
const UNITS: &str = "\"250ms\", \"10s\", \"15min\" or \"72h\"";

/// A duration with its unit (`"250ms"`, `"10s"`, `"1m 30s"`, `"15min"`,
/// `"72h"`, `"7d"`; `humantime`'s syntax, where `m` is minutes and `M`
/// months), for `#[serde(deserialize_with = "kakehashi_config::duration")]`.
/// A bare number is refused: its unit is not obvious, and keys that used to
/// take one (`keepalive_secs = 10`) took different units.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// [`duration`] for an `Option<Duration>` field (with `#[serde(default)]`).
pub fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

struct DurationVisitor;

impl DurationVisitor {
    fn bare_number<E: de::Error>(n: impl fmt::Display) -> E {
        E::custom(format!(
            "a duration needs its unit: write \"{n}s\" for {n} seconds (or \"{n}ms\", \"{n}min\", \"{n}h\")"
        ))
    }
}

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a duration with its unit, such as {UNITS}")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
        humantime::parse_duration(s).map_err(|e| {
            E::custom(format!(
                "{s:?} is not a duration ({e}); write a number and a unit, such as {UNITS}"
            ))
        })
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
        Err(Self::bare_number(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
        Err(Self::bare_number(n))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
        Err(Self::bare_number(n))
    }
}

/// A duration as a configuration file would say it, in the largest unit
/// that shows it exactly: `"250ms"`, `"10s"`, `"15min"`, `"72h"`.
pub fn fmt_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return humantime::format_duration(d).to_string();
    }
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}min", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

/// A duration key, for range checks whose errors name it and show a valid
/// value.
#[derive(Debug, Clone, Copy)]
pub struct DurationKey {
    /// The section, dotted (`relay.limits`).
    pub section: &'static str,
    /// The key (`handshake_timeout`).
    pub key: &'static str,
    /// A valid value, usually the default (`10s`).
    pub example: &'static str,
}

impl DurationKey {
    /// `[section] key`, with `example` as a valid value.
    pub const fn new(section: &'static str, key: &'static str, example: &'static str) -> Self {
        Self {
            section,
            key,
            example,
        }
    }

    /// `value`, if it is at least `min`.
    pub fn at_least(self, value: Duration, min: Duration) -> Result<Duration, Error> {
        if value < min {
            return Err(self.out_of_range(value, format!("at least \"{}\"", fmt_duration(min))));
        }
        Ok(value)
    }

    /// `value`, if it is between `min` and `max` (both allowed).
    pub fn between(self, value: Duration, min: Duration, max: Duration) -> Result<Duration, Error> {
        if value < min || value > max {
            return Err(self.out_of_range(
                value,
                format!(
                    "between \"{}\" and \"{}\"",
                    fmt_duration(min),
                    fmt_duration(max)
                ),
            ));
        }
        Ok(value)
    }

    fn out_of_range(self, value: Duration, range: String) -> Error {
        Error::OutOfRange {
            section: self.section,
            key: self.key,
            value: fmt_duration(value),
            range,
            example: self.example,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct File {
        #[serde(deserialize_with = "duration")]
        d: Duration,
        #[serde(default, deserialize_with = "optional_duration")]
        o: Option<Duration>,
    }

    fn parse(text: &str) -> Result<File, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn durations_take_their_unit() {
        for (text, want) in [
            ("250ms", Duration::from_millis(250)),
            ("10s", Duration::from_secs(10)),
            ("1m 30s", Duration::from_secs(90)),
            ("15min", Duration::from_secs(900)),
            ("72h", Duration::from_secs(72 * 3600)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("1.5s", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
        ] {
            let f = parse(&format!("d = \"{text}\"")).unwrap();
            assert_eq!(f.d, want, "{text}");
            assert_eq!(f.o, None);
        }
        let f = parse("d = \"1s\"\no = \"2s\"").unwrap();
        assert_eq!(f.o, Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_bare_number_is_refused_with_its_unit_shown() {
        let e = parse("d = 10").unwrap_err();
        assert!(e.contains("write \"10s\" for 10 seconds"), "{e}");
        // The line and the key are in the message.
        assert!(e.contains("line 1") && e.contains("d = 10"), "{e}");
        let e = parse("d = \"1s\"\no = 2.5").unwrap_err();
        assert!(e.contains("\"2.5s\""), "{e}");
    }

    #[test]
    fn a_wrong_duration_names_the_units() {
        for bad in ["10", "ten seconds", "10 parsecs", "", "-1s"] {
            let e = parse(&format!("d = \"{bad}\"")).unwrap_err();
            assert!(
                e.contains("is not a duration") && e.contains("\"10s\""),
                "{bad}: {e}"
            );
        }
        let e = parse("d = true").unwrap_err();
        assert!(e.contains("a duration with its unit"), "{e}");
    }

    #[test]
    fn durations_are_shown_in_their_largest_exact_unit() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(900), "15min"),
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_micros(1), "1us"),
        ] {
            assert_eq!(fmt_duration(d), want);
            assert_eq!(
                humantime::parse_duration(want).unwrap(),
                d,
                "{want} reads back"
            );
        }
    }

    #[test]
    fn range_checks_name_the_key_and_a_valid_value() {
        let k = DurationKey::new("relay.limits", "handshake_timeout", "10s");
        let s = Duration::from_secs;
        assert_eq!(k.at_least(s(1), s(1)).unwrap(), s(1));
        let e = k.at_least(Duration::ZERO, s(1)).unwrap_err().to_string();
        assert_eq!(
            e,
            "[relay.limits] handshake_timeout = \"0s\" is out of range: it must be at least \"1s\" (for example handshake_timeout = \"10s\")"
        );
        let k = DurationKey::new("policy", "watch", "250ms");
        assert!(k.between(s(5), Duration::from_millis(50), s(5)).is_ok());
        let e = k
            .between(s(6), Duration::from_millis(50), s(5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("between \"50ms\" and \"5s\""), "{e}");
    }
}
