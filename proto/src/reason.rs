//! Stable reason codes for every refusal, each with a Japanese and an English
//! sentence that the client prints and the audit log keeps.

use serde::{Deserialize, Serialize};

/// Why a session was refused or ended. The code strings are stable: log
/// searches, alert rules and other programs rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The desk's agent has no live tunnel to this gateway.
    DeskOffline,
    /// The gateway holds its configured maximum of sessions.
    CapacityFull,
    /// The peer broke the protocol (bad frame, wrong message, too large).
    ProtocolError,
    /// The peer did not finish a step in time.
    Timeout,
    /// The certificate is valid but of the wrong kind for this listener.
    WrongCertificateKind,
    /// The ticket's signature does not verify.
    TicketInvalid,
    /// The ticket is outside its validity window.
    TicketExpired,
    /// The ticket was already used.
    TicketReplayed,
    /// The ticket names another desk.
    TicketWrongDesk,
    /// The agent could not reach the desk's local service.
    TargetUnreachable,
    /// The gateway is shutting down.
    ShuttingDown,
    /// An internal error; details are in the gateway log.
    Internal,
    /// Our certificate was revoked by the CA (laptop reported lost, desk retired…).
    CertRevoked,
    /// Our certificate has expired (or is not yet valid).
    CertExpired,
    /// The peer does not know the CA that issued our certificate.
    CertUnknownCa,
    /// The peer refused our certificate for another reason.
    CertRejected,
    /// The gateway's certificate is not one we trust.
    GatewayUntrusted,
    /// The laptop has not logged in (run `kakehashi login`).
    LoginRequired,
    /// The login token belongs to another laptop (or to this laptop's
    /// certificate before it was renewed).
    TokenOtherDevice,
    /// The login token has expired.
    TokenExpired,
    /// The login token was revoked (logout or an administrator).
    TokenRevoked,
    /// The user account is disabled.
    UserDisabled,
    /// The laptop is blocked, lost or revoked in the gateway's records.
    DeviceBlocked,
    /// The one-time login code is unknown, used, expired or its PKCE verifier does not match.
    LoginCodeInvalid,
    /// The one-time login code was issued for another laptop: only the laptop
    /// whose `kakehashi login` asked for it may redeem it (a phished link).
    LoginCodeOtherDevice,
    /// Too many failed attempts; locked out for a while.
    LockedOut,
    /// The gateway could not be reached on any transport.
    GatewayUnreachable,
    /// The session's controls restrict something, but the RDP connection uses
    /// security the desk agent cannot inspect (standard RDP security, an
    /// unknown protocol), so it was refused.
    RdpUninspectable,
    /// The desk id is not registered at the gateway.
    DeskUnknown,
    /// The gateway cannot evaluate the access policy (no store configured).
    PolicyUnavailable,
    /// The session reached its maximum duration.
    SessionTimeLimit,
    /// An operator ended the session.
    EndedByOperator,
    /// The session had no input from the laptop for the idle timeout of its rule.
    SessionIdle,
    /// The session's controls restrict something, but the desk's agent does not
    /// enforce controls (its RDP filter is off) and the desk is not registered
    /// as a non-RDP service, so it was refused.
    DeskNotEnforcing,
    /// A certificate revocation list in force is past its `nextUpdate` and
    /// the grace period: revocations since may be missing, so the connection
    /// fails closed until the CA's current CRL is installed.
    CrlStale,
    /// The gateway cannot reach its database (PostgreSQL down or
    /// unreachable): new sessions are refused (fail closed) while live ones
    /// go on.
    StoreUnavailable,
    /// The laptop's certificate lends it to one person (a personal laptop,
    /// `kakehashi-pki issue device --user`) and someone else logged in on it.
    DeviceOtherUser,
    /// The gateway is stopping on purpose (a restart, an update): it takes no
    /// new sessions while its live ones end. Laptops and agents move to
    /// another gateway of the cluster; it is not a refusal by policy.
    Restarting,
    /// The gateway's budget of bytes in flight has no room for another
    /// session (`[relay.limits] memory_budget_mib`): it refuses new sessions
    /// early rather than take sessions it could then not carry. Sessions in
    /// progress go on; another gateway of the cluster may have room.
    GatewayBusy,
}

impl Reason {
    /// Every reason, for docs and tests.
    pub const ALL: &'static [Reason] = &[
        Reason::DeskOffline,
        Reason::CapacityFull,
        Reason::ProtocolError,
        Reason::Timeout,
        Reason::WrongCertificateKind,
        Reason::TicketInvalid,
        Reason::TicketExpired,
        Reason::TicketReplayed,
        Reason::TicketWrongDesk,
        Reason::TargetUnreachable,
        Reason::ShuttingDown,
        Reason::Internal,
        Reason::CertRevoked,
        Reason::CertExpired,
        Reason::CertUnknownCa,
        Reason::CertRejected,
        Reason::GatewayUntrusted,
        Reason::LoginRequired,
        Reason::TokenOtherDevice,
        Reason::TokenExpired,
        Reason::TokenRevoked,
        Reason::UserDisabled,
        Reason::DeviceBlocked,
        Reason::LoginCodeInvalid,
        Reason::LoginCodeOtherDevice,
        Reason::LockedOut,
        Reason::GatewayUnreachable,
        Reason::RdpUninspectable,
        Reason::DeskUnknown,
        Reason::PolicyUnavailable,
        Reason::SessionTimeLimit,
        Reason::EndedByOperator,
        Reason::SessionIdle,
        Reason::DeskNotEnforcing,
        Reason::CrlStale,
        Reason::StoreUnavailable,
        Reason::DeviceOtherUser,
        Reason::Restarting,
        Reason::GatewayBusy,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::DeskOffline => "desk_offline",
            Reason::CapacityFull => "capacity_full",
            Reason::ProtocolError => "protocol_error",
            Reason::Timeout => "timeout",
            Reason::WrongCertificateKind => "wrong_certificate_kind",
            Reason::TicketInvalid => "ticket_invalid",
            Reason::TicketExpired => "ticket_expired",
            Reason::TicketReplayed => "ticket_replayed",
            Reason::TicketWrongDesk => "ticket_wrong_desk",
            Reason::TargetUnreachable => "target_unreachable",
            Reason::ShuttingDown => "shutting_down",
            Reason::Internal => "internal_error",
            Reason::CertRevoked => "certificate_revoked",
            Reason::CertExpired => "certificate_expired",
            Reason::CertUnknownCa => "certificate_unknown_ca",
            Reason::CertRejected => "certificate_rejected",
            Reason::GatewayUntrusted => "gateway_untrusted",
            Reason::LoginRequired => "login_required",
            Reason::TokenOtherDevice => "token_other_device",
            Reason::TokenExpired => "token_expired",
            Reason::TokenRevoked => "token_revoked",
            Reason::UserDisabled => "user_disabled",
            Reason::DeviceBlocked => "device_blocked",
            Reason::LoginCodeInvalid => "login_code_invalid",
            Reason::LoginCodeOtherDevice => "login_code_other_device",
            Reason::LockedOut => "locked_out",
            Reason::GatewayUnreachable => "gateway_unreachable",
            Reason::RdpUninspectable => "rdp_uninspectable",
            Reason::DeskUnknown => "desk_unknown",
            Reason::PolicyUnavailable => "policy_unavailable",
            Reason::SessionTimeLimit => "session_time_limit",
            Reason::EndedByOperator => "ended_by_operator",
            Reason::SessionIdle => "session_idle",
            Reason::DeskNotEnforcing => "desk_not_enforcing",
            Reason::CrlStale => "crl_stale",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::DeviceOtherUser => "device_other_user",
            Reason::Restarting => "restarting",
            Reason::GatewayBusy => "gateway_busy",
        }
    }

    /// The Japanese sentence shown to the person.
    pub fn ja(self) -> &'static str {
        match self {
            Reason::DeskOffline => "接続先のデスクPCがオンラインではありません。デスクPCの電源とエージェントの稼働を確認してください。",
            Reason::CapacityFull => "ゲートウェイの同時接続数が上限に達しています。しばらくしてから再接続してください。",
            Reason::ProtocolError => "通信内容が不正なため接続を終了しました。",
            Reason::Timeout => "応答が時間内に得られなかったため接続を終了しました。",
            Reason::WrongCertificateKind => "この接続口では使用できない証明書です。",
            Reason::TicketInvalid => "セッションチケットの署名が不正です。",
            Reason::TicketExpired => "セッションチケットの有効期限が切れています。",
            Reason::TicketReplayed => "セッションチケットは既に使用されています。",
            Reason::TicketWrongDesk => "セッションチケットの接続先が一致しません。",
            Reason::TargetUnreachable => "デスクPCのリモートデスクトップサービスに接続できません。",
            Reason::ShuttingDown => "ゲートウェイが停止処理中です。しばらくしてから再接続してください。",
            Reason::Internal => "ゲートウェイ内部のエラーです。管理者に連絡してください。",
            Reason::CertRevoked => "この端末(またはデスクPC)の証明書は失効しています。情報システム担当に連絡してください。",
            Reason::CertExpired => "証明書の有効期限が切れています(または端末の時刻が正しくありません)。情報システム担当に連絡してください。",
            Reason::CertUnknownCa => "証明書の発行元がゲートウェイに登録されていません。正しい設定ファイルか確認してください。",
            Reason::CertRejected => "ゲートウェイが証明書を受け付けませんでした。情報システム担当に連絡してください。",
            Reason::GatewayUntrusted => "接続先のゲートウェイの証明書を確認できません。接続を中止しました。",
            Reason::LoginRequired => "ログインしていません。`kakehashi login` でログインしてください。",
            Reason::TokenOtherDevice => "このログイン情報は別の端末のもの、またはこの端末の更新前の証明書のものです。この端末で `kakehashi login` を実行してください。",
            Reason::TokenExpired => "ログインの有効期限が切れました。もう一度 `kakehashi login` を実行してください。",
            Reason::TokenRevoked => "ログインは取り消されています。もう一度 `kakehashi login` を実行してください。",
            Reason::UserDisabled => "このユーザーは利用停止されています。情報システム担当に連絡してください。",
            Reason::DeviceBlocked => "この端末は利用停止されています。情報システム担当に連絡してください。",
            Reason::LoginCodeInvalid => "ログインコードが無効です(期限切れ・使用済み)。もう一度 `kakehashi login` を実行してください。",
            Reason::LoginCodeOtherDevice => "このログインコードは別の端末のために発行されたものです。この端末で `kakehashi login` を実行してください。身に覚えのないログイン画面を開いた場合は情報セキュリティ担当に連絡してください。",
            Reason::LockedOut => "失敗が続いたため、一定時間ログインできません。しばらくしてから再度お試しください。",
            Reason::GatewayUnreachable => "ゲートウェイに接続できません。ネットワーク接続を確認してください。",
            Reason::RdpUninspectable => "この接続ではリモートデスクトップの通信内容を検査できないため、接続を拒否しました(標準RDPセキュリティは使用できません)。RDPクライアントのセキュリティ設定をTLSまたはNLAにしてください。",
            Reason::DeskUnknown => "指定されたデスクPCはゲートウェイに登録されていません。デスクIDを確認してください。",
            Reason::PolicyUnavailable => "アクセス制御ポリシーを評価できないため、接続を拒否しました。管理者に連絡してください。",
            Reason::SessionTimeLimit => "接続時間の上限に達したため、セッションを終了しました。",
            Reason::EndedByOperator => "運用担当者がセッションを終了しました。",
            Reason::SessionIdle => "一定時間操作がなかったため、セッションを終了しました。",
            Reason::DeskNotEnforcing => "デスクPCのエージェントが利用制限（クリップボード・ドライブ・プリンター等）を強制していないため、接続を拒否しました。情報システム担当に連絡してください。",
            Reason::CrlStale => "証明書失効リスト(CRL)の有効期限が切れているため、接続を拒否しました。情報システム担当に連絡してください。",
            Reason::Restarting => "このゲートウェイは再起動中のため、新しい接続を受け付けていません。別のゲートウェイから接続してください(クライアントが自動で切り替えます)。",
            Reason::StoreUnavailable => "ゲートウェイがデータベースに接続できないため、新しい接続を受け付けられません。接続中のセッションは続きます。しばらくしてから再接続してください。",
            Reason::DeviceOtherUser => "この端末は別の職員に貸与された個人用端末です。自分に貸与された端末でログインしてください。",
            Reason::GatewayBusy => "ゲートウェイが混み合っているため、新しい接続を受け付けられません。接続中のセッションは続きます。しばらくしてから再接続してください(ゲートウェイが複数ある場合、クライアントは別のゲートウェイを試します)。",
        }
    }

    /// The English sentence shown to the person.
    pub fn en(self) -> &'static str {
        match self {
            Reason::DeskOffline => "The desk PC is not online. Check that it is powered on and its agent is running.",
            Reason::CapacityFull => "The gateway has reached its session limit. Please reconnect in a few minutes.",
            Reason::ProtocolError => "The connection was closed because of a protocol error.",
            Reason::Timeout => "The connection was closed because a peer did not answer in time.",
            Reason::WrongCertificateKind => "This certificate cannot be used on this listener.",
            Reason::TicketInvalid => "The session ticket's signature is not valid.",
            Reason::TicketExpired => "The session ticket has expired.",
            Reason::TicketReplayed => "The session ticket was already used.",
            Reason::TicketWrongDesk => "The session ticket is for another desk.",
            Reason::TargetUnreachable => "The desk PC's remote desktop service cannot be reached.",
            Reason::ShuttingDown => "The gateway is shutting down. Please reconnect in a moment.",
            Reason::Internal => "Internal gateway error. Please contact your administrator.",
            Reason::CertRevoked => "This certificate has been revoked. Please contact IT.",
            Reason::CertExpired => "The certificate has expired (or this computer's clock is wrong). Please contact IT.",
            Reason::CertUnknownCa => "The certificate was issued by a CA this gateway does not know. Check the configuration file.",
            Reason::CertRejected => "The gateway did not accept the certificate. Please contact IT.",
            Reason::GatewayUntrusted => "The gateway's certificate could not be verified. The connection was stopped.",
            Reason::LoginRequired => "You are not logged in. Run `kakehashi login` first.",
            Reason::TokenOtherDevice => "This login was made on another laptop, or with this laptop's certificate before it was renewed. Run `kakehashi login` on this laptop.",
            Reason::TokenExpired => "Your login has expired. Run `kakehashi login` again.",
            Reason::TokenRevoked => "Your login was revoked. Run `kakehashi login` again.",
            Reason::UserDisabled => "This user account is disabled. Please contact IT.",
            Reason::DeviceBlocked => "This laptop has been blocked. Please contact IT.",
            Reason::LoginCodeInvalid => "The login code is not valid (expired or already used). Run `kakehashi login` again.",
            Reason::LoginCodeOtherDevice => "This login code was issued for another laptop. Run `kakehashi login` on this laptop. If you opened a login page you did not expect, tell your security officer.",
            Reason::LockedOut => "Too many failed attempts. Please wait and try again later.",
            Reason::GatewayUnreachable => "The gateway cannot be reached. Check the network connection.",
            Reason::RdpUninspectable => "The connection was refused because its remote desktop traffic cannot be inspected (standard RDP security is not allowed). Set the RDP client to TLS or NLA security.",
            Reason::DeskUnknown => "The desk is not registered at the gateway. Check the desk id.",
            Reason::PolicyUnavailable => "The access policy cannot be evaluated, so the connection was refused. Contact your administrator.",
            Reason::SessionTimeLimit => "The session reached its time limit and was ended.",
            Reason::EndedByOperator => "An operator ended the session.",
            Reason::SessionIdle => "The session was ended after a period without input.",
            Reason::DeskNotEnforcing => "The connection was refused because the desk PC's agent does not enforce the session's restrictions (clipboard, drives, printers and so on). Please contact IT.",
            Reason::CrlStale => "The connection was refused because the certificate revocation list (CRL) has expired. Please contact IT.",
            Reason::Restarting => "This gateway is restarting and takes no new sessions. Connect through another gateway (the client does so by itself).",
            Reason::StoreUnavailable => "The gateway cannot reach its database, so it cannot accept new sessions; sessions in progress continue. Please reconnect in a few minutes.",
            Reason::DeviceOtherUser => "This laptop is lent personally to another member of staff. Log in on the laptop lent to you.",
            Reason::GatewayBusy => "The gateway is too busy to take a new session; sessions in progress continue. Please reconnect in a few minutes (with several gateways, the client tries another one).",
        }
    }

    /// Look a reason up by its code.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A reason with a stable code and one sentence each in Japanese and
/// English: the gateway's ([`Reason`]), the access policy's denials and the
/// portal's answers all implement it, so code that reports, counts or
/// looks up reasons is written once over all of them.
pub trait ReasonText: Copy + 'static {
    /// Every reason of this kind.
    const ALL: &'static [Self];
    /// The stable code (logs, metrics labels, the audit log, the wire).
    fn code(self) -> &'static str;
    /// The Japanese sentence.
    fn ja(self) -> &'static str;
    /// The English sentence.
    fn en(self) -> &'static str;
    /// The reason of this kind whose code is `code`.
    fn parse(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }
}

/// Implements [`ReasonText`] for an enum with inherent `ALL`, `code`, `ja`
/// and `en` (every reason enum of the workspace has them).
#[macro_export]
macro_rules! impl_reason_text {
    ($t:ty) => {
        impl $crate::reason::ReasonText for $t {
            const ALL: &'static [Self] = <$t>::ALL;
            fn code(self) -> &'static str {
                <$t>::code(self)
            }
            fn ja(self) -> &'static str {
                <$t>::ja(self)
            }
            fn en(self) -> &'static str {
                <$t>::en(self)
            }
        }
    };
}

impl_reason_text!(Reason);

/// A refusal on the wire: code plus both sentences, so a client older than
/// the gateway still prints something meaningful for a new code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Stable reason code.
    pub code: String,
    /// Japanese sentence.
    pub ja: String,
    /// English sentence.
    pub en: String,
    /// Optional detail for logs (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// With `restarting` to an agent: come back at a random moment within
    /// this many milliseconds after the usual pause, so that a gateway's
    /// whole fleet does not dial it in the same instant. The gateway sizes
    /// it to its agents ([`MAX_RETURN_WITHIN_MS`] at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_within_ms: Option<u32>,
}

/// The longest `return_within_ms` an agent honours (a larger one is cut to
/// this): one minute, so that a wrong setting cannot keep desks away for long.
pub const MAX_RETURN_WITHIN_MS: u32 = 60_000;

impl Refusal {
    /// The refusal for a known reason of any kind.
    pub fn new(reason: impl ReasonText) -> Self {
        Self {
            code: reason.code().into(),
            ja: reason.ja().into(),
            en: reason.en().into(),
            detail: None,
            return_within_ms: None,
        }
    }

    /// When this is a gateway's notice that it stops on purpose
    /// (`restarting`, or `shutting_down` from an older gateway): the window
    /// over which to spread the return ([`Refusal::return_within`]).
    pub fn restart_notice(&self) -> Option<std::time::Duration> {
        (self.is(Reason::Restarting) || self.is(Reason::ShuttingDown)).then(|| self.return_within())
    }

    /// How long after its pause an agent may take to come back (see
    /// [`Refusal::return_within_ms`]), at most [`MAX_RETURN_WITHIN_MS`].
    pub fn return_within(&self) -> std::time::Duration {
        let ms = self.return_within_ms.unwrap_or(0).min(MAX_RETURN_WITHIN_MS);
        std::time::Duration::from_millis(u64::from(ms))
    }

    /// Whether this is a refusal for `reason`.
    pub fn is(&self, reason: impl ReasonText) -> bool {
        self.code == reason.code()
    }

    /// Add a detail, cut to at most 512 bytes (on a character boundary).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        let mut d: String = detail.into();
        let mut cut = d.len().min(512);
        while !d.is_char_boundary(cut) {
            cut -= 1;
        }
        d.truncate(cut);
        self.detail = Some(d);
        self
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {} / {}", self.code, self.ja, self.en)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The restart notice's return window: absent (an older gateway) is no
    /// spreading, and a window past the most an agent honours is cut to it.
    #[test]
    fn the_return_window_is_optional_and_capped() {
        let old: Refusal =
            serde_json::from_str(r#"{"code":"restarting","ja":"再起動中","en":"Restarting."}"#)
                .unwrap();
        assert_eq!(old.return_within(), std::time::Duration::ZERO);
        let mut r = Refusal::new(Reason::Restarting);
        r.return_within_ms = Some(10_000);
        let back: Refusal = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.return_within(), std::time::Duration::from_secs(10));
        r.return_within_ms = Some(u32::MAX);
        assert_eq!(r.return_within(), std::time::Duration::from_secs(60));
        // Not sent when unset: an older agent sees the frame it knows.
        let plain = serde_json::to_string(&Refusal::new(Reason::Restarting)).unwrap();
        assert!(!plain.contains("return_within_ms"), "{plain}");
        // A notice: restarting, or shutting_down from an older gateway.
        assert_eq!(
            Refusal::new(Reason::ShuttingDown).restart_notice(),
            Some(std::time::Duration::ZERO)
        );
        assert_eq!(Refusal::new(Reason::DeskOffline).restart_notice(), None);
    }

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "duplicate {}", r.code());
            assert_eq!(Reason::from_code(r.code()), Some(*r));
            assert!(!r.ja().is_ascii(), "{} has no Japanese sentence", r.code());
            assert!(r.en().ends_with('.'));
        }
    }

    #[test]
    fn long_detail_is_cut_on_a_character_boundary() {
        // Found by fuzz/messages: a 3-byte character across byte 512 panicked.
        let r =
            Refusal::new(Reason::ProtocolError).with_detail(format!("x{}", "デスク".repeat(200)));
        let d = r.detail.unwrap();
        assert_eq!(d.len(), 511);
        assert!(d.ends_with('ス'));
    }
}
