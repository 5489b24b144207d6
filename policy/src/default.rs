//! The shipped default policy: the table and notes of DESIGN.md section 5.

use time::UtcOffset;

use crate::rules::{BcpRelax, Clipboard, Controls, Effect, Hours, Policy, Rule, WorkHours};
use crate::vocab::{Level, TerminalClass};

const DEFAULT_TOML: &str = include_str!("default_policy.toml");

/// The default policy as a commented TOML file (Japanese and English) an
/// officer can start from. It parses to [`Policy::default`].
pub fn default_policy_toml() -> &'static str {
    DEFAULT_TOML
}

impl Default for Policy {
    /// DESIGN.md section 5:
    ///
    /// | level | home | mobile | satellite office |
    /// |---|---|---|---|
    /// | 3 | deny | deny | allow, step-up; clipboard to-remote; printer |
    /// | 2 | work hours + approved plan; clipboard to-remote | work hours; clipboard to-remote | clipboard both; printer |
    /// | 1 | work hours + approved plan; clipboard both | work hours; clipboard both | clipboard both; printer |
    ///
    /// Never drive or USB; ports, audio and smartcard (not in the table) off.
    /// Work hours 08:30–17:15 Mon–Fri, +09:00. MFA up to 600 minutes. The
    /// default BCP relaxation waives plan and hours for levels 1–2 from home
    /// and mobile.
    fn default() -> Self {
        use Level::*;
        use TerminalClass::*;
        let allow =
            |id: &str, desc: &str, level: Level, class: TerminalClass, clipboard: Clipboard| {
                let mut r = Rule::new(id, Effect::Allow, &[level], &[class]);
                r.description = desc.into();
                r.mfa_max_age_mins = Some(600);
                r.controls = Controls {
                    clipboard,
                    printer: class == Satellite,
                    ..Controls::default()
                };
                match class {
                    Home => r.require_plan = true,
                    Mobile => {}
                    Satellite => r.hours = Hours::Always,
                }
                r
            };
        let mut l3 = allow(
            "l3-satellite",
            "機密性3 サテライトオフィス / level 3 from a satellite office",
            L3,
            Satellite,
            Clipboard::ToRemote,
        );
        l3.step_up = true;
        let mut l3_deny = Rule::new("l3-home-mobile", Effect::Deny, &[L3], &[Home, Mobile]);
        l3_deny.description =
            "機密性3 在宅・モバイル不可 / level 3 never from home or mobile".into();
        Policy {
            rules: vec![
                l3,
                l3_deny,
                allow(
                    "l2-home",
                    "機密性2 在宅 / level 2 from home",
                    L2,
                    Home,
                    Clipboard::ToRemote,
                ),
                allow(
                    "l2-mobile",
                    "機密性2 モバイル / level 2 mobile",
                    L2,
                    Mobile,
                    Clipboard::ToRemote,
                ),
                allow(
                    "l2-satellite",
                    "機密性2 サテライトオフィス / level 2 from a satellite office",
                    L2,
                    Satellite,
                    Clipboard::Both,
                ),
                allow(
                    "l1-home",
                    "機密性1 在宅 / level 1 from home",
                    L1,
                    Home,
                    Clipboard::Both,
                ),
                allow(
                    "l1-mobile",
                    "機密性1 モバイル / level 1 mobile",
                    L1,
                    Mobile,
                    Clipboard::Both,
                ),
                allow(
                    "l1-satellite",
                    "機密性1 サテライトオフィス / level 1 from a satellite office",
                    L1,
                    Satellite,
                    Clipboard::Both,
                ),
            ],
            work_hours: WorkHours::default(),
            timezone: UtcOffset::from_whole_seconds(9 * 3600).unwrap_or(UtcOffset::UTC),
            bcp_default_relax: BcpRelax {
                plan: true,
                hours: true,
                levels: vec![L1, L2],
                classes: vec![Home, Mobile],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::check;

    #[test]
    fn commented_default_toml_parses_to_default_policy() {
        let parsed = Policy::from_toml(default_policy_toml()).unwrap();
        assert_eq!(parsed, Policy::default());
        assert!(
            check(default_policy_toml()).is_empty(),
            "{:?}",
            check(default_policy_toml())
        );
        assert_eq!(parsed.timezone.whole_hours(), 9);
    }

    #[test]
    fn default_policy_round_trips_through_export() {
        let p = Policy::default();
        let text = p.to_toml().unwrap();
        assert_eq!(Policy::from_toml(&text).unwrap(), p, "{text}");
        assert!(p.validate().is_ok());
    }

    #[test]
    fn default_toml_is_bilingual_and_commented() {
        let t = default_policy_toml();
        assert!(
            t.lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .count()
                > 40
        );
        assert!(t.contains("機密性") && t.contains("Level 3"));
    }
}
