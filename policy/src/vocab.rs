//! The words that rules and requests share: confidentiality levels, terminal
//! classes, network segments, device statuses and roles.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Confidentiality level (機密性レベル) of the information on a desk PC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "u8")]
pub enum Level {
    /// Level 1: public information.
    L1 = 1,
    /// Level 2: not secret, not yet for publication.
    L2 = 2,
    /// Level 3: equivalent to secret documents (residents' data, HR, bids…).
    L3 = 3,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::L1, Level::L2, Level::L3];

    /// The level as a number (1, 2 or 3).
    pub const fn number(self) -> u8 {
        self as u8
    }
}

impl TryFrom<i64> for Level {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match n {
            1 => Ok(Level::L1),
            2 => Ok(Level::L2),
            3 => Ok(Level::L3),
            _ => Err(format!(
                "unknown confidentiality level {n}: expected 1, 2 or 3"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than `try_from`, so that the error is raised while
        // the value's own deserializer runs and carries the value's span.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Level;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a confidentiality level 1, 2 or 3")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Level, E> {
                Level::try_from(n).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Level, E> {
                Level::try_from(i64::try_from(n).unwrap_or(i64::MAX)).map_err(E::custom)
            }
        }
        d.deserialize_i64(V)
    }
}

impl From<Level> for u8 {
    fn from(l: Level) -> u8 {
        l.number()
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let n: i64 = s
            .trim()
            .parse()
            .map_err(|_| format!("unknown confidentiality level {s:?}: expected 1, 2 or 3"))?;
        Level::try_from(n)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, $ja:literal; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable lowercase name used in files, CLIs and logs.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// The Japanese name.
            pub const fn ja(self) -> &'static str {
                match self { $($name::$variant => $ja,)+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim() {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " {:?}: expected one of {}"),
                        other,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// Where the terminal is used; written into the device certificate when IT
    /// issues the laptop. (The pki crate has its own type; the gateway maps it.)
    TerminalClass, "terminal class" {
        /// Home (在宅勤務).
        Home = "home", "在宅";
        /// On the move (モバイルワーク).
        Mobile = "mobile", "モバイル";
        /// Satellite office (サテライトオフィス): office-grade physical security.
        Satellite = "satellite", "サテライトオフィス";
    }
}

named_enum! {
    /// Network segment of the desk PC (三層分離).
    Segment, "network segment" {
        /// LGWAN-connected (LGWAN接続系): daily administrative work.
        Lgwan = "lgwan", "LGWAN接続系";
        /// Internet-connected (インターネット接続系).
        Internet = "internet", "インターネット接続系";
        /// My Number systems (個人番号利用事務系): never reachable remotely.
        Mynumber = "mynumber", "個人番号利用事務系";
    }
}

named_enum! {
    /// Status of a terminal in the gateway's store.
    DeviceStatus, "device status" {
        /// In use.
        Active = "active", "利用中";
        /// Blocked by an officer.
        Blocked = "blocked", "利用停止";
        /// Reported lost or stolen.
        Lost = "lost", "紛失";
        /// Certificate revoked.
        Revoked = "revoked", "失効";
    }
}

named_enum! {
    /// Role of a person. Roles grant no access to desks: officers cannot
    /// bypass desk ownership.
    Role, "role" {
        /// Staff (職員).
        Staff = "staff", "職員";
        /// Section chief (所属長): approves telework plans.
        Chief = "chief", "所属長";
        /// Security officer (情報セキュリティ担当).
        Officer = "officer", "情報セキュリティ担当";
        /// Operator (運用担当).
        Operator = "operator", "運用担当";
    }
}
