//! The public pages' handlers (Japanese first, `?lang=en` for English;
//! the HTML is in [`crate::views`]), the portal session cookie, and the
//! embedded script and style sheet.

use axum::extract::{Form, Query, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};
use kakehashi_store::{Audit, Hash256};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::api::cred_label;
use super::reason::Reason;
use super::redirect::LoginParams;
use crate::html::{switch_link, Lang};
use crate::state::{Peer, PortalState};
use crate::transient::Session;
use crate::views;

const SCRIPT: &str = include_str!("assets/portal.js");
const STYLE: &str = include_str!("assets/portal.css");

fn error_page(lang: Lang, path: &str, query: Option<&str>, reason: Reason) -> Response {
    let page = views::notice::reason_page(lang, &switch_link(path, query, lang), reason);
    (reason.status(), page).into_response()
}

/// `GET /`
pub(crate) async fn index(RawQuery(q): RawQuery) -> Response {
    let lang = Lang::from_query(q.as_deref());
    views::home::home(lang, &switch_link("/", q.as_deref(), lang)).into_response()
}

/// `GET /enroll`
pub(crate) async fn enroll(RawQuery(q): RawQuery) -> Response {
    let lang = Lang::from_query(q.as_deref());
    views::enroll::enroll(lang, &switch_link("/enroll", q.as_deref(), lang)).into_response()
}

/// `GET /login?redirect_uri=…&state=…&code_challenge=…&code_challenge_method=S256[&device=…]`
pub(crate) async fn login(RawQuery(q): RawQuery) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let params: LoginParams = q.as_deref().and_then(parse_login_query).unwrap_or_default();
    let req = match params.check() {
        Ok(r) => r,
        Err(reason) => return error_page(lang, "/login", q.as_deref(), reason),
    };
    let view = views::login::Loopback {
        redirect_uri: req.redirect.as_str(),
        state: &req.state,
        code_challenge: &req.code_challenge,
        device: &req.device,
    };
    views::login::login(lang, &switch_link("/login", q.as_deref(), lang), view).into_response()
}

/// Parses the login query: repeated keys are refused (ambiguous).
fn parse_login_query(q: &str) -> Option<LoginParams> {
    let mut p = LoginParams::default();
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        let slot = match &*k {
            "redirect_uri" => &mut p.redirect_uri,
            "state" => &mut p.state,
            "code_challenge" => &mut p.code_challenge,
            "code_challenge_method" => &mut p.code_challenge_method,
            "device" => &mut p.device,
            _ => continue,
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(v.into_owned());
    }
    Some(p)
}

impl PortalState {
    fn cookie_name(&self) -> &'static str {
        if self.inner.secure {
            "__Host-kakehashi-session"
        } else {
            "kakehashi-session"
        }
    }

    /// The `Set-Cookie` value for a session id (`max_age` 0 clears it).
    pub(crate) fn session_cookie(&self, id: &str, max_age: i64) -> String {
        let secure = if self.inner.secure { "; Secure" } else { "" };
        format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
            self.cookie_name()
        )
    }

    /// The session id from the request's cookies.
    pub(super) fn session_id(&self, headers: &HeaderMap) -> Option<String> {
        let name = self.cookie_name();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }

    /// The signed-in visitor's session id and session, if any. A store
    /// error counts as signed out (logged): fail closed.
    async fn signed_in(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = self.session_id(headers)?;
        match self.session(&id).await {
            Ok(session) => session.map(|s| (id, s)),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "Cannot read the portal session; treated as signed out");
                None
            }
        }
    }

    /// `YYYY-MM-DD HH:MM` in the configured local time.
    pub(super) fn local_time(&self, t: i64) -> String {
        let offset = time::UtcOffset::from_whole_seconds(self.inner.utc_offset_secs)
            .unwrap_or(time::UtcOffset::UTC);
        match time::OffsetDateTime::from_unix_timestamp(t) {
            Ok(dt) => {
                let dt = dt.to_offset(offset);
                format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}",
                    dt.year(),
                    u8::from(dt.month()),
                    dt.day(),
                    dt.hour(),
                    dt.minute()
                )
            }
            Err(_) => "-".to_owned(),
        }
    }
}

/// `GET /me`
pub(crate) async fn me(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let switch = switch_link("/me", q.as_deref(), lang);
    let Some((_, Session { user, csrf })) = s.signed_in(&headers).await else {
        let title = views::me::title(lang);
        return views::sign_in::sign_in_page(lang, title, &switch, None).into_response();
    };
    match me_page(&s, lang, &switch, &user, &csrf).await {
        Ok(page) => page.into_response(),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "Cannot render /me");
            error_page(lang, "/me", q.as_deref(), Reason::Internal)
        }
    }
}

async fn me_page(
    s: &PortalState,
    lang: Lang,
    switch: &str,
    user_id: &str,
    csrf: &str,
) -> kakehashi_store::Result<maud::Markup> {
    use views::me::{Key, Me, SignIn, SignInState};
    let store = s.store();
    let now = s.now();
    let user = store.get_user(user_id).await?;
    let devices = store.devices_loaned_to(user_id).await?;
    let tokens = store.login_tokens_for_user(user_id).await?;
    let creds = store.credentials_for_user(user_id).await?;
    let sign_ins = tokens
        .iter()
        .map(|t| SignIn {
            device: t.device_id.clone(),
            issued: s.local_time(t.issued_at),
            expires: s.local_time(t.expires_at),
            state: match t.revoked_at {
                Some(_) => SignInState::SignedOut,
                None if t.expires_at <= now => SignInState::Expired,
                None => SignInState::Live,
            },
            token_hash: t.token_hash.to_hex(),
        })
        .collect();
    let keys = creds
        .iter()
        .map(|c| Key {
            label: cred_label(&c.cred_id),
            registered: s.local_time(c.created),
            last_used: c.last_used.map(|t| s.local_time(t)),
            attested: c.attested,
        })
        .collect();
    let view = Me {
        csrf,
        user: user.as_ref(),
        devices: &devices,
        sign_ins,
        keys,
    };
    Ok(views::me::me(lang, switch, &view))
}

/// The form of `POST /me/revoke`.
#[derive(Debug, Deserialize)]
pub(crate) struct RevokeForm {
    #[serde(default)]
    csrf: String,
    token: String,
}

/// The form of `POST /me/logout`.
#[derive(Debug, Deserialize)]
pub(crate) struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

impl PortalState {
    /// Whether `presented` is the CSRF token of `session`, the request's.
    fn csrf_ok(&self, headers: &HeaderMap, session: &Session, presented: &str) -> bool {
        // As the staff forms: the portal's origin (or, without an `Origin`
        // header, `Sec-Fetch-Site: same-origin`) and the session's token.
        self.same_origin(headers) && super::access::csrf_matches(&session.csrf, presented)
    }
}

/// `?lang=` on form posts.
#[derive(Debug, Deserialize)]
pub(crate) struct LangParam {
    lang: Option<String>,
}

impl LangParam {
    fn lang(&self) -> Lang {
        match self.lang.as_deref() {
            Some("en") => Lang::En,
            _ => Lang::Ja,
        }
    }
}

/// `POST /me/revoke` (form `token` = the token hash in hex).
pub(crate) async fn revoke(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    Query(lp): Query<LangParam>,
    headers: HeaderMap,
    form: Result<Form<RevokeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let lang = lp.lang();
    let q = (lang == Lang::En).then_some("lang=en");
    let Some((_, session)) = s.signed_in(&headers).await else {
        return error_page(lang, "/me", q, Reason::SessionRequired);
    };
    let Ok(Form(form)) = form else {
        return error_page(lang, "/me", q, Reason::BadRequest);
    };
    if !s.csrf_ok(&headers, &session, &form.csrf) {
        let user = &session.user;
        tracing::info!(user, "Sign-out of a device refused: CSRF token");
        return error_page(lang, "/me", q, Reason::OriginMismatch);
    }
    let user = session.user;
    let Ok(hash) = Hash256::from_hex(&form.token) else {
        return error_page(lang, "/me", q, Reason::BadRequest);
    };
    let token = match s.store().get_login_token(&hash).await {
        Ok(Some(t)) if t.user_id == user => t,
        Ok(_) => return error_page(lang, "/me", q, Reason::NotFound),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "Cannot read a login token");
            return error_page(lang, "/me", q, Reason::Internal);
        }
    };
    let audit = Audit::new(s.now(), user.as_str(), "token.revoke")
        .subject(&token.device_id)
        .reason("user_signout")
        .detail(json!({
            "user": user,
            "token": &hash.to_hex()[..12],
            "source": ip.to_string(),
            "via": "portal",
        }));
    match s.store().revoke_login_token(&hash, audit).await {
        Ok(_) => {
            info!(user, device = %token.device_id, "Device signed out from the portal");
            Redirect::to(&format!("/me{}", lang.query())).into_response()
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "Cannot revoke a login token");
            error_page(lang, "/me", q, Reason::Internal)
        }
    }
}

/// `POST /me/logout`
pub(crate) async fn logout(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    Query(lp): Query<LangParam>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if let Some((id, session)) = s.signed_in(&headers).await {
        if !s.csrf_ok(&headers, &session, &csrf) {
            let lang = lp.lang();
            let q = (lang == Lang::En).then_some("lang=en");
            tracing::info!("Portal sign-out refused: CSRF token");
            return error_page(lang, "/me", q, Reason::OriginMismatch);
        }
        if let Err(e) = s.end_session(&id).await {
            tracing::error!(error = %format!("{e:#}"), "Cannot end the portal session in the store");
            return error_page(lp.lang(), "/me", None, Reason::Internal);
        }
        s.audit(
            Audit::new(s.now(), session.user.as_str(), "portal.logout")
                .subject(&session.user)
                .detail(json!({ "source": ip.to_string() })),
        )
        .await;
    }
    (
        [(header::SET_COOKIE, s.session_cookie("", 0))],
        Redirect::to(&format!("/me{}", lp.lang().query())),
    )
        .into_response()
}

/// `GET /assets/portal.js`
pub(crate) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// `GET /assets/portal.css`
pub(crate) async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
        .into_response()
}

/// Anything else.
pub(crate) async fn not_found(RawQuery(q): RawQuery) -> Response {
    let lang = Lang::from_query(q.as_deref());
    error_page(lang, "/", None, Reason::NotFound)
}
