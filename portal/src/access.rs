//! Who may use the officer and plan pages, and the CSRF protection of
//! their forms.
//!
//! - The signed-in user comes from the portal session cookie; their roles
//!   and `disabled` flag are read from the store on every request, so a
//!   role taken away (or a user disabled) counts at the next click. Deny by
//!   default: a page names the roles it admits, nothing else gets in.
//! - Every POST carries a per-session token (a hidden field, or `csrf` in
//!   a JSON body): HMAC-SHA256 of the session id under a key drawn at
//!   process start, compared in constant time (`ring::hmac::verify`). The
//!   request must also come from the portal's own origin (`Origin`, or
//!   `Sec-Fetch-Site: same-origin` when a browser sends no `Origin`); the
//!   router's guard already refuses a foreign `Origin`, this refuses a
//!   missing one too. The session cookie itself is `SameSite=Strict`.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kakehashi_store::{Role, User};
use subtle::ConstantTimeEq as _;

use crate::html::{switch_link, Lang};
use crate::state::PortalState;
use crate::views;

/// What a page asks of its visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// The security officer role.
    Officer,
    /// Someone who works and files telework plans: staff or chief.
    PlanUser,
    /// A section chief.
    Chief,
    /// The operator role (the ops dashboard).
    Operator,
    /// A section chief downloading their department's attendance report.
    ChiefReport,
}

impl Need {
    fn admits(self, u: &User) -> bool {
        match self {
            Need::Officer => u.has_role(Role::Officer),
            Need::PlanUser => u.has_role(Role::Staff) || u.has_role(Role::Chief),
            Need::Chief | Need::ChiefReport => u.has_role(Role::Chief),
            Need::Operator => u.has_role(Role::Operator),
        }
    }

    fn ja(self) -> &'static str {
        match self {
            Need::Officer => "このページは情報セキュリティ担当（officer）の役割を持つ職員だけが利用できます。",
            Need::PlanUser => "このページは職員（staff）または所属長（chief）の役割を持つ利用者だけが利用できます。",
            Need::Chief => "テレワーク計画の承認・却下は所属長（chief）の役割を持つ職員だけが行えます。",
            Need::Operator => "このページは運用担当（operator）の役割を持つ職員だけが利用できます。",
            Need::ChiefReport => "勤務実績レポートは所属長（chief）の役割を持つ職員だけが、自分の所属の分を取得できます。",
        }
    }

    fn en(self) -> &'static str {
        match self {
            Need::Officer => "This page is only for staff with the security officer role.",
            Need::PlanUser => "This page is only for users with the staff or section chief role.",
            Need::Chief => "Only section chiefs can approve or reject telework plans.",
            Need::Operator => "This page is only for staff with the operator role.",
            Need::ChiefReport => {
                "Only section chiefs can download the attendance report, for their own department."
            }
        }
    }
}

/// A signed-in, enabled user admitted to the page.
#[derive(Debug, Clone)]
pub(crate) struct Visitor {
    /// The user, as the store has them now.
    pub(crate) user: User,
    /// The CSRF token for this session's forms.
    pub(crate) csrf: String,
}

impl Visitor {
    /// The audit actor for what this visitor does: `user:<id>`.
    pub(crate) fn actor(&self) -> String {
        format!("user:{}", self.user.id)
    }

    /// Whether the visitor also has `role`.
    pub(crate) fn has(&self, role: Role) -> bool {
        self.user.has_role(role)
    }
}

/// Why a request to a protected page was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not signed in, or the portal session expired.
    SignIn,
    /// Signed in without the role (or disabled).
    Role(Need),
    /// The CSRF token or the origin is missing or wrong.
    Csrf,
    /// The form is malformed or too large.
    BadRequest,
    /// The store failed (details in the log).
    Internal,
}

impl Refused {
    /// The stable code.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Refused::SignIn => "session_required",
            Refused::Role(_) => "role_required",
            Refused::Csrf => "csrf_invalid",
            Refused::BadRequest => "bad_request",
            Refused::Internal => "internal",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refused::SignIn => StatusCode::UNAUTHORIZED,
            Refused::Role(_) | Refused::Csrf => StatusCode::FORBIDDEN,
            Refused::BadRequest => StatusCode::BAD_REQUEST,
            Refused::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn ja(self) -> &'static str {
        match self {
            Refused::SignIn => "ログインしてください。",
            Refused::Role(n) => n.ja(),
            Refused::Csrf => "フォームの有効期限が切れたか、このポータル以外から送信された要求です。ページを開き直してからやり直してください。",
            Refused::BadRequest => "送信された内容の形式が正しくないか、大きすぎます。",
            Refused::Internal => "内部エラーが発生しました。時間をおいてやり直し、解決しない場合は担当者に連絡してください。",
        }
    }

    fn en(self) -> &'static str {
        match self {
            Refused::SignIn => "Please sign in.",
            Refused::Role(n) => n.en(),
            Refused::Csrf => "The form has expired, or the request did not come from this portal. Reload the page and try again.",
            Refused::BadRequest => "The submitted form is malformed or too large.",
            Refused::Internal => "An internal error occurred. Try again later; if it persists, contact the officer.",
        }
    }

    /// As a page: both sentences, Japanese first.
    pub(crate) fn page(self, lang: Lang, path: &str, query: Option<&str>) -> Response {
        let switch = switch_link(path, query, lang);
        let page = views::notice::refused_page(lang, &switch, self.ja(), self.en(), self.code());
        (self.status(), page).into_response()
    }

    /// As JSON: `{"error": CODE, "message_ja": …, "message_en": …}`.
    pub(crate) fn json(self) -> Response {
        (
            self.status(),
            Json(serde_json::json!({
                "error": self.code(),
                "message_ja": self.ja(),
                "message_en": self.en(),
            })),
        )
            .into_response()
    }
}

impl From<kakehashi_store::Error> for Refused {
    fn from(e: kakehashi_store::Error) -> Self {
        tracing::error!(error = %format!("{e:#}"), "Portal store read failed");
        Refused::Internal
    }
}

/// Whether `presented` is the session's CSRF token `expected` (a random
/// value kept with the session in the store, so the same on every gateway;
/// compared in constant time).
pub(super) fn csrf_matches(expected: &str, presented: &str) -> bool {
    let presented = presented.trim();
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

impl PortalState {
    /// The signed-in user if `need` admits them.
    pub(crate) async fn visitor(
        &self,
        headers: &HeaderMap,
        need: Need,
    ) -> Result<Visitor, Refused> {
        let session_id = self.session_id(headers).ok_or(Refused::SignIn)?;
        let session = self.session(&session_id).await?.ok_or(Refused::SignIn)?;
        let user = self
            .store()
            .get_user(&session.user)
            .await?
            .ok_or(Refused::SignIn)?;
        if user.disabled || !need.admits(&user) {
            return Err(Refused::Role(need));
        }
        Ok(Visitor {
            user,
            csrf: session.csrf,
        })
    }

    /// [`PortalState::visitor`] for a POST: also the origin and the CSRF
    /// token `presented`.
    pub(crate) async fn poster(
        &self,
        headers: &HeaderMap,
        need: Need,
        presented: &str,
    ) -> Result<Visitor, Refused> {
        let v = self.visitor(headers, need).await?;
        if !self.same_origin(headers) || !csrf_matches(&v.csrf, presented) {
            tracing::info!(user = %v.user.id, "Portal form refused: CSRF token or origin");
            return Err(Refused::Csrf);
        }
        Ok(v)
    }

    /// The start of every form POST: a well-formed form from a visitor with
    /// `need` whose CSRF token and origin check out; else the refusal page
    /// for `path`.
    pub(crate) async fn accept_form<F: CsrfForm>(
        &self,
        headers: &HeaderMap,
        need: Need,
        form: Result<axum::Form<F>, axum::extract::rejection::FormRejection>,
        (lang, path, q): (Lang, &str, Option<&str>),
    ) -> Result<(Visitor, F), Response> {
        let Ok(axum::Form(f)) = form else {
            return Err(Refused::BadRequest.page(lang, path, q));
        };
        match self.poster(headers, need, f.csrf()).await {
            Ok(v) => Ok((v, f)),
            Err(r) => Err(r.page(lang, path, q)),
        }
    }

    /// `Origin` is the portal's; without one (some browsers omit it on
    /// same-origin requests), `Sec-Fetch-Site` must say same-origin.
    pub(super) fn same_origin(&self, headers: &HeaderMap) -> bool {
        match headers.get(header::ORIGIN) {
            Some(o) => o.as_bytes() == self.inner.origin.as_bytes(),
            None => headers
                .get("sec-fetch-site")
                .is_some_and(|v| v.as_bytes() == b"same-origin"),
        }
    }
}

/// A GET refused with [`Refused::SignIn`]: the page's title and a sign-in
/// form that comes back to `path`; anything else as [`Refused::page`].
pub(crate) fn get_refused(
    r: Refused,
    lang: Lang,
    path: &str,
    query: Option<&str>,
    title: &str,
) -> Response {
    if r != Refused::SignIn {
        return r.page(lang, path, query);
    }
    let next = match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    };
    let switch = switch_link(path, query, lang);
    views::sign_in::sign_in_page(lang, title, &switch, Some(&next)).into_response()
}

/// A posted form that carries the page's CSRF token (field `csrf`).
pub(crate) trait CsrfForm {
    /// The token as posted.
    fn csrf(&self) -> &str;
}

/// `impl CsrfForm` for forms with a `csrf: String` field.
macro_rules! csrf_forms {
    ($($t:ty),+ $(,)?) => {
        $(impl $crate::access::CsrfForm for $t {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        })+
    };
}
pub(crate) use csrf_forms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_are_checked_exactly() {
        let a = crate::codes::random_b64url::<32>();
        assert!(csrf_matches(&a, &a));
        assert!(csrf_matches(&a, &format!(" {a}\n")), "form whitespace");
        assert!(!csrf_matches(&a, ""));
        assert!(
            !csrf_matches("", ""),
            "a session without a token matches nothing"
        );
        assert!(!csrf_matches(&a, &a[1..]));
        let mut wrong = a.clone();
        wrong.replace_range(0..1, if a.starts_with('A') { "B" } else { "A" });
        assert!(!csrf_matches(&a, &wrong));
    }
}
