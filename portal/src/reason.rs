//! Why the portal refused something: a stable reason code, an HTTP status,
//! and one sentence in Japanese and one in English.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A refusal reason. The code ([`Reason::code`]) is stable: clients and
/// tests match on it, the audit log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The request body or a parameter is malformed.
    BadRequest,
    /// The enrollment code does not exist, is malformed, or is not this user's.
    EnrollCodeInvalid,
    /// The enrollment code has expired.
    EnrollCodeExpired,
    /// The enrollment code was already used.
    EnrollCodeUsed,
    /// Too many failures for this user or source address.
    LockedOut,
    /// Only attested hardware authenticators are accepted, and this one is not.
    AttestationRequired,
    /// The authenticator's registration response did not verify.
    RegistrationFailed,
    /// The credential is already registered.
    CredentialExists,
    /// The user is disabled.
    UserDisabled,
    /// Unknown user, or a user without a registered credential.
    LoginUnavailable,
    /// The ceremony id is unknown, expired or already used (a replay).
    CeremonyExpired,
    /// The assertion did not verify (bad signature, challenge, user verification…).
    AssertionInvalid,
    /// The browser-reported origin is not the portal's.
    OriginMismatch,
    /// The signature counter went backwards: a cloned credential.
    CredentialCloned,
    /// The loopback `redirect_uri` is not `http://127.0.0.1:PORT/…` or `http://[::1]:PORT/…`.
    RedirectInvalid,
    /// The PKCE parameters are missing or not S256.
    PkceInvalid,
    /// `state` or `device` is missing or malformed.
    LoginRequestInvalid,
    /// The page needs a portal session (sign in first).
    SessionRequired,
    /// No such page or record.
    NotFound,
    /// Too many ceremonies or sessions in progress.
    Busy,
    /// Too many requests from this address in a short time.
    RateLimited,
    /// Something failed inside the gateway (details in its log).
    Internal,
}

impl Reason {
    /// Every reason.
    pub const ALL: &'static [Reason] = &[
        Reason::BadRequest,
        Reason::EnrollCodeInvalid,
        Reason::EnrollCodeExpired,
        Reason::EnrollCodeUsed,
        Reason::LockedOut,
        Reason::AttestationRequired,
        Reason::RegistrationFailed,
        Reason::CredentialExists,
        Reason::UserDisabled,
        Reason::LoginUnavailable,
        Reason::CeremonyExpired,
        Reason::AssertionInvalid,
        Reason::OriginMismatch,
        Reason::CredentialCloned,
        Reason::RedirectInvalid,
        Reason::PkceInvalid,
        Reason::LoginRequestInvalid,
        Reason::SessionRequired,
        Reason::NotFound,
        Reason::Busy,
        Reason::RateLimited,
        Reason::Internal,
    ];

    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::EnrollCodeInvalid => "enroll_code_invalid",
            Reason::EnrollCodeExpired => "enroll_code_expired",
            Reason::EnrollCodeUsed => "enroll_code_used",
            Reason::LockedOut => "locked_out",
            Reason::AttestationRequired => "attestation_required",
            Reason::RegistrationFailed => "registration_failed",
            Reason::CredentialExists => "credential_exists",
            Reason::UserDisabled => "user_disabled",
            Reason::LoginUnavailable => "login_unavailable",
            Reason::CeremonyExpired => "ceremony_expired",
            Reason::AssertionInvalid => "assertion_invalid",
            Reason::OriginMismatch => "origin_mismatch",
            Reason::CredentialCloned => "credential_cloned",
            Reason::RedirectInvalid => "redirect_invalid",
            Reason::PkceInvalid => "pkce_invalid",
            Reason::LoginRequestInvalid => "login_request_invalid",
            Reason::SessionRequired => "session_required",
            Reason::NotFound => "not_found",
            Reason::Busy => "busy",
            Reason::RateLimited => "rate_limited",
            Reason::Internal => "internal",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::BadRequest
            | Reason::RegistrationFailed
            | Reason::RedirectInvalid
            | Reason::PkceInvalid
            | Reason::LoginRequestInvalid => StatusCode::BAD_REQUEST,
            Reason::AssertionInvalid | Reason::SessionRequired => StatusCode::UNAUTHORIZED,
            Reason::EnrollCodeInvalid
            | Reason::AttestationRequired
            | Reason::UserDisabled
            | Reason::OriginMismatch
            | Reason::CredentialCloned => StatusCode::FORBIDDEN,
            Reason::LoginUnavailable | Reason::NotFound => StatusCode::NOT_FOUND,
            Reason::CredentialExists => StatusCode::CONFLICT,
            Reason::EnrollCodeExpired | Reason::EnrollCodeUsed | Reason::CeremonyExpired => {
                StatusCode::GONE
            }
            Reason::LockedOut => StatusCode::TOO_MANY_REQUESTS,
            Reason::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The sentence in Japanese.
    pub fn ja(self) -> &'static str {
        match self {
            Reason::BadRequest => "入力の形式が正しくありません。",
            Reason::EnrollCodeInvalid => "登録コードが正しくありません。担当者から受け取った利用者IDと登録コードを確かめてください。",
            Reason::EnrollCodeExpired => "登録コードの有効期限が切れています。担当者に新しい登録コードの発行を依頼してください。",
            Reason::EnrollCodeUsed => "この登録コードは既に使われています。担当者に新しい登録コードの発行を依頼してください。",
            Reason::LockedOut => "失敗が続いたため、一時的にロックしています。しばらく待ってからやり直してください。",
            Reason::AttestationRequired => "この認証器は利用できません。組織が認めたセキュリティキーを使ってください。",
            Reason::RegistrationFailed => "セキュリティキーの登録に失敗しました。もう一度お試しください。",
            Reason::CredentialExists => "このセキュリティキーは既に登録されています。",
            Reason::UserDisabled => "この利用者IDは停止されています。担当者に連絡してください。",
            Reason::LoginUnavailable => "この利用者IDではログインできません。IDを確かめるか、先にセキュリティキーを登録してください。",
            Reason::CeremonyExpired => "この手続きは期限切れか、既に完了しています。最初からやり直してください。",
            Reason::AssertionInvalid => "セキュリティキーによる本人確認に失敗しました。",
            Reason::OriginMismatch => "アクセス元のアドレスが正しくありません。正しいポータルのアドレスを開いてください。",
            Reason::CredentialCloned => "セキュリティキーの複製が疑われるため拒否しました。直ちに担当者に連絡してください。",
            Reason::RedirectInvalid => "ログイン要求の戻り先が正しくありません。kakehashi login からやり直してください。",
            Reason::PkceInvalid => "ログイン要求の検証情報（PKCE）が正しくありません。kakehashi login からやり直してください。",
            Reason::LoginRequestInvalid => "ログイン要求が正しくありません。kakehashi login からやり直してください。",
            Reason::SessionRequired => "ログインしてください。",
            Reason::NotFound => "見つかりません。",
            Reason::Busy => "混み合っています。しばらくしてからやり直してください。",
            Reason::RateLimited => "このネットワークからの要求が短時間に多すぎます。少し待ってからやり直してください。",
            Reason::Internal => "内部エラーが発生しました。時間をおいてやり直し、解決しない場合は担当者に連絡してください。",
        }
    }

    /// The sentence in English.
    pub fn en(self) -> &'static str {
        match self {
            Reason::BadRequest => "The request is malformed.",
            Reason::EnrollCodeInvalid => "The enrollment code is not valid. Check the user ID and the code you were given.",
            Reason::EnrollCodeExpired => "The enrollment code has expired. Ask the officer for a new one.",
            Reason::EnrollCodeUsed => "This enrollment code has already been used. Ask the officer for a new one.",
            Reason::LockedOut => "Too many failed attempts: temporarily locked. Wait a while and try again.",
            Reason::AttestationRequired => "This authenticator is not accepted. Use a security key approved by your organisation.",
            Reason::RegistrationFailed => "Registering the security key failed. Please try again.",
            Reason::CredentialExists => "This security key is already registered.",
            Reason::UserDisabled => "This user ID is disabled. Contact the officer.",
            Reason::LoginUnavailable => "Cannot sign in with this user ID. Check the ID, or enroll a security key first.",
            Reason::CeremonyExpired => "This attempt has expired or was already completed. Please start again.",
            Reason::AssertionInvalid => "Verification with the security key failed.",
            Reason::OriginMismatch => "The request did not come from the portal's address. Open the portal at its correct address.",
            Reason::CredentialCloned => "Refused: this security key may have been cloned. Contact the officer immediately.",
            Reason::RedirectInvalid => "The login request's return address is not valid. Start again with `kakehashi login`.",
            Reason::PkceInvalid => "The login request's PKCE parameters are not valid. Start again with `kakehashi login`.",
            Reason::LoginRequestInvalid => "The login request is not valid. Start again with `kakehashi login`.",
            Reason::SessionRequired => "Please sign in.",
            Reason::NotFound => "Not found.",
            Reason::Busy => "The portal is busy. Please try again shortly.",
            Reason::RateLimited => "Too many requests from this network in a short time. Wait a moment and try again.",
            Reason::Internal => "An internal error occurred. Try again later; if it persists, contact the officer.",
        }
    }
}

kakehashi_proto::impl_reason_text!(Reason);

/// A refusal as an HTTP answer:
/// `{"error": CODE, "message_ja": …, "message_en": …}` (plus
/// `"retry_after": SECONDS` and a `Retry-After` header for `locked_out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    /// Why.
    pub reason: Reason,
    /// Seconds until a lockout ends.
    pub retry_after: Option<i64>,
}

impl Denial {
    /// A lockout ending in `secs` seconds.
    pub fn locked(secs: i64) -> Self {
        Denial {
            reason: Reason::LockedOut,
            retry_after: Some(secs.max(1)),
        }
    }

    /// Over the rate for `secs` seconds.
    pub fn rate_limited(secs: i64) -> Self {
        Denial {
            reason: Reason::RateLimited,
            retry_after: Some(secs.max(1)),
        }
    }
}

impl From<Reason> for Denial {
    fn from(reason: Reason) -> Self {
        Denial {
            reason,
            retry_after: None,
        }
    }
}

impl From<kakehashi_store::Error> for Denial {
    fn from(e: kakehashi_store::Error) -> Self {
        tracing::error!(error = %format!("{e:#}"), "Portal store operation failed");
        Reason::Internal.into()
    }
}

impl IntoResponse for Denial {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "error": self.reason.code(),
            "message_ja": self.reason.ja(),
            "message_en": self.reason.en(),
        });
        if let Some(secs) = self.retry_after {
            body["retry_after"] = secs.into();
        }
        let mut resp = (self.reason.status(), Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_proto::reason::ReasonText;

    #[test]
    fn codes_are_unique_and_round_trip_with_both_sentences() {
        let mut seen = std::collections::HashSet::new();
        for &r in Reason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            assert_eq!(<Reason as ReasonText>::parse(r.code()), Some(r));
            assert!(!r.ja().is_empty() && !r.en().is_empty(), "{}", r.code());
        }
        assert_eq!(<Reason as ReasonText>::parse("no_such_code"), None);
    }
}
