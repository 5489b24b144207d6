//! Stable reason codes for every policy denial, each with a Japanese and an
//! English sentence (Japanese first).

use std::fmt;

/// Why the policy refused a session. The code strings are stable: audit
/// records, metrics labels, alert rules and the officer pages rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReasonCode {
    /// The desk is in the My Number segment, which is never reachable remotely.
    SegmentMynumber,
    /// The terminal was blocked by an officer.
    DeviceBlocked,
    /// The terminal was reported lost or stolen.
    DeviceLost,
    /// The terminal's certificate was revoked.
    DeviceRevoked,
    /// The person is not an owner of the desk and no rule opens it to them.
    NotDeskOwner,
    /// No rule matches the desk's level and the terminal class (deny by default).
    NoRule,
    /// The first matching rule denies this level from this terminal class.
    LevelNotPermitted,
    /// Outside the work-hour window of the matching rule.
    OutsideHours,
    /// The rule needs an approved telework plan and there is none for today.
    PlanRequired,
    /// Today's telework plan has not been approved by the section chief.
    PlanNotApproved,
    /// The approved plan is for another day.
    PlanOtherDay,
    /// Today's approved plan does not cover the time of the request.
    PlanOutsideWindow,
    /// The rule needs a multi-factor login and there is none.
    MfaRequired,
    /// The multi-factor login is older than the rule accepts.
    MfaTooOld,
    /// The rule needs a WebAuthn assertion made for this session (step-up).
    StepUpRequired,
}

impl ReasonCode {
    /// The refusal the laptop gets: code, both sentences, and the deciding
    /// rule (if any) as `rule <id>` in the detail.
    pub fn refusal(self, rule: Option<&str>) -> kakehashi_proto::reason::Refusal {
        let r = kakehashi_proto::reason::Refusal::new(self);
        match rule {
            Some(rule) => r.with_detail(format!("rule {rule}")),
            None => r,
        }
    }

    /// Every reason code, in evaluation order.
    pub const ALL: &'static [ReasonCode] = &[
        ReasonCode::SegmentMynumber,
        ReasonCode::DeviceBlocked,
        ReasonCode::DeviceLost,
        ReasonCode::DeviceRevoked,
        ReasonCode::NotDeskOwner,
        ReasonCode::NoRule,
        ReasonCode::LevelNotPermitted,
        ReasonCode::OutsideHours,
        ReasonCode::PlanRequired,
        ReasonCode::PlanNotApproved,
        ReasonCode::PlanOtherDay,
        ReasonCode::PlanOutsideWindow,
        ReasonCode::StepUpRequired,
        ReasonCode::MfaRequired,
        ReasonCode::MfaTooOld,
    ];

    /// The stable code.
    pub const fn code(self) -> &'static str {
        match self {
            ReasonCode::SegmentMynumber => "segment_mynumber",
            ReasonCode::DeviceBlocked => "device_blocked",
            ReasonCode::DeviceLost => "device_lost",
            ReasonCode::DeviceRevoked => "device_revoked",
            ReasonCode::NotDeskOwner => "not_desk_owner",
            ReasonCode::NoRule => "no_rule",
            ReasonCode::LevelNotPermitted => "level_not_permitted",
            ReasonCode::OutsideHours => "outside_hours",
            ReasonCode::PlanRequired => "plan_required",
            ReasonCode::PlanNotApproved => "plan_not_approved",
            ReasonCode::PlanOtherDay => "plan_other_day",
            ReasonCode::PlanOutsideWindow => "plan_outside_window",
            ReasonCode::MfaRequired => "mfa_required",
            ReasonCode::MfaTooOld => "mfa_too_old",
            ReasonCode::StepUpRequired => "step_up_required",
        }
    }

    /// The Japanese sentence shown to the person.
    pub const fn ja(self) -> &'static str {
        match self {
            ReasonCode::SegmentMynumber => "個人番号利用事務系のデスクPCには、どの場所からも遠隔接続できません。",
            ReasonCode::DeviceBlocked => "この端末は情報セキュリティ担当により利用停止されています。",
            ReasonCode::DeviceLost => "この端末は紛失・盗難の届出がされているため利用できません。",
            ReasonCode::DeviceRevoked => "この端末の証明書は失効しています。情報システム担当に連絡してください。",
            ReasonCode::NotDeskOwner => "このデスクPCの利用者として登録されていません。",
            ReasonCode::NoRule => "このデスクPCの機密性レベルとこの端末区分の組み合わせを許可するルールがありません。",
            ReasonCode::LevelNotPermitted => "このデスクPCの機密性レベルでは、この端末区分(在宅・モバイル等)からの接続は認められていません。",
            ReasonCode::OutsideHours => "勤務時間外のため接続できません。",
            ReasonCode::PlanRequired => "承認された本日の在宅勤務計画がないため接続できません。",
            ReasonCode::PlanNotApproved => "本日の在宅勤務計画が所属長に承認されていません。",
            ReasonCode::PlanOtherDay => "承認された在宅勤務計画は別の日のものです。",
            ReasonCode::PlanOutsideWindow => "現在の時刻は承認された在宅勤務計画の時間外です。",
            ReasonCode::MfaRequired => "多要素認証によるログインが必要です。",
            ReasonCode::MfaTooOld => "ログインから時間が経過しています。もう一度ログインしてください。",
            ReasonCode::StepUpRequired => "機密性レベル3のデスクPCへの接続には、接続ごとのセキュリティキー等による再認証が必要です。`kakehashi login` をもう一度実行し、5分以内に接続してください。",
        }
    }

    /// The English sentence shown to the person.
    pub const fn en(self) -> &'static str {
        match self {
            ReasonCode::SegmentMynumber => "Desks in the My Number segment can never be reached remotely.",
            ReasonCode::DeviceBlocked => "This terminal has been blocked by the security officer.",
            ReasonCode::DeviceLost => "This terminal was reported lost or stolen and cannot be used.",
            ReasonCode::DeviceRevoked => "This terminal's certificate has been revoked. Please contact IT.",
            ReasonCode::NotDeskOwner => "You are not registered as a user of this desk PC.",
            ReasonCode::NoRule => "No rule allows this desk's confidentiality level from this kind of terminal.",
            ReasonCode::LevelNotPermitted => "This desk's confidentiality level may not be reached from this kind of terminal (home, mobile…).",
            ReasonCode::OutsideHours => "Connections are not allowed outside work hours.",
            ReasonCode::PlanRequired => "There is no approved telework plan for today.",
            ReasonCode::PlanNotApproved => "Today's telework plan has not been approved by your section chief.",
            ReasonCode::PlanOtherDay => "Your approved telework plan is for another day.",
            ReasonCode::PlanOutsideWindow => "The current time is outside the hours of your approved telework plan.",
            ReasonCode::MfaRequired => "A multi-factor login is required.",
            ReasonCode::MfaTooOld => "Your login is too old. Please log in again.",
            ReasonCode::StepUpRequired => "Level-3 desks need a fresh security-key (WebAuthn) confirmation for each session. Run `kakehashi login` again and connect within 5 minutes.",
        }
    }

    /// Look a reason up by its code.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

kakehashi_proto::impl_reason_text!(ReasonCode);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_stable_and_round_trip() {
        let mut seen = HashSet::new();
        for r in ReasonCode::ALL {
            assert!(seen.insert(r.code()), "duplicate {r}");
            assert_eq!(ReasonCode::from_code(r.code()), Some(*r));
            assert!(r
                .code()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(!r.ja().is_ascii() && r.ja().ends_with('。'), "{r}: ja");
            assert!(r.en().is_ascii() || r.en().contains('…'), "{r}: en");
            assert!(r.en().ends_with('.'), "{r}: en");
        }
        assert_eq!(seen.len(), 15);
    }
}
