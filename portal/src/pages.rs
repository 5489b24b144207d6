//! Server-rendered pages (Japanese first, `?lang=en` for English), the
//! portal session cookie, and the embedded script and style sheet.

use axum::extract::{Form, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use kakehashi_store::{Audit, Hash256};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::api::cred_label;
use super::reason::Reason;
use super::redirect::LoginParams;
use crate::html::{
    class_name, esc, html, login_form, page, script_messages, status_name, switch_link, Lang,
};
use crate::state::{Peer, PortalState};

const SCRIPT: &str = include_str!("assets/portal.js");
const STYLE: &str = include_str!("assets/portal.css");

fn error_page(lang: Lang, path: &str, query: Option<&str>, reason: Reason) -> Response {
    let body = format!(
        r#"<div class="card notice error" role="alert"><p>{}</p><p class="code">{}: {}</p></div>"#,
        esc(lang.reason(reason)),
        lang.t("理由コード", "Reason code"),
        reason.code()
    );
    let title = lang.t("お知らせ", "Notice");
    html(
        reason.status(),
        page(lang, title, &switch_link(path, query, lang), &body),
    )
}

/// `GET /`
pub(crate) async fn index(RawQuery(q): RawQuery) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let lq = lang.query();
    let body = format!(
        r#"<p class="lead">{lead}</p>
<ul class="menu">
<li><a class="card link" href="/enroll{lq}"><strong>{enroll}</strong><span>{enroll_d}</span></a></li>
<li><a class="card link" href="/me{lq}"><strong>{me}</strong><span>{me_d}</span></a></li>
<li><a class="card link" href="/plans{lq}"><strong>{plans}</strong><span>{plans_d}</span></a></li>
<li><a class="card link" href="/officer{lq}"><strong>{officer}</strong><span>{officer_d}</span></a></li>
</ul>
<p class="hint">{hint}</p>"#,
        lead = lang.t(
            "職場のパソコンに自宅などから安全に接続するためのポータルです。",
            "The portal for connecting safely to your office PC from home or elsewhere."
        ),
        enroll = lang.t("セキュリティキーの登録", "Enroll a security key"),
        enroll_d = lang.t(
            "担当者から受け取った登録コードで、セキュリティキーや生体認証を登録します。",
            "Register a security key or biometric sign-in with the code the officer gave you."
        ),
        me = lang.t("自分の端末とログイン", "My devices and sessions"),
        me_d = lang.t(
            "貸与端末、ログイン中の端末、登録済みのキーを確認し、端末をサインアウトできます。",
            "See your loaned devices, signed-in devices and keys; sign a device out."
        ),
        plans = lang.t("テレワーク計画", "Telework plans"),
        plans_d = lang.t(
            "在宅勤務などの計画を提出し、承認状況を確認します。所属長はここで承認します。",
            "Submit telework plans and see whether they are approved; section chiefs approve them here."
        ),
        officer = lang.t("情報セキュリティ担当", "Security officer"),
        officer_d = lang.t(
            "接続ルール、デスクの機密性レベル、端末の利用停止、BCPモード（担当者のみ）。",
            "Access rules, desk confidentiality levels, device blocks, BCP mode (officers only)."
        ),
        hint = lang.t(
            "パソコンからのログインは、アプリの「kakehashi login」から始めてください。",
            "To sign in on your laptop, start with `kakehashi login` in the app."
        ),
    );
    let title = lang.t("ポータル", "Portal");
    html(
        StatusCode::OK,
        page(lang, title, &switch_link("/", q.as_deref(), lang), &body),
    )
}

/// `GET /enroll`
pub(crate) async fn enroll(RawQuery(q): RawQuery) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let body = format!(
        r#"<p class="lead">{lead}</p>
<form id="enroll-form" class="card" data-portal="enroll" data-lang="{code}"{msgs}>
<label for="user">{user}</label>
<input id="user" name="user" autocomplete="username" required maxlength="64" pattern="[A-Za-z0-9._\-]+" spellcheck="false" autocapitalize="off">
<label for="code">{code_l}</label>
<input id="code" name="code" autocomplete="one-time-code" required maxlength="40" placeholder="XXXX-XXXX-XXXX-XXXX" spellcheck="false" autocapitalize="characters">
<p class="field-hint">{code_h}</p>
<button type="submit">{submit}</button>
<p id="status" class="status" role="status" aria-live="polite" hidden></p>
</form>
<ol class="steps"><li>{s1}</li><li>{s2}</li><li>{s3}</li></ol>"#,
        code = lang.code(),
        msgs = script_messages(lang),
        lead = lang.t(
            "担当者から受け取った利用者IDと登録コードを入力し、セキュリティキー（または Windows Hello などの生体認証）を登録します。",
            "Enter your user ID and the enrollment code the officer gave you, then register your security key (or Windows Hello and similar)."
        ),
        user = lang.t("利用者ID", "User ID"),
        code_l = lang.t("登録コード", "Enrollment code"),
        code_h = lang.t(
            "登録コードは一度だけ使えます。有効期限があります。",
            "The code works once and expires."
        ),
        submit = lang.t("セキュリティキーを登録する", "Register security key"),
        s1 = lang.t("ボタンを押すと、ブラウザーが本人確認を求めます。", "After you press the button, the browser asks you to verify."),
        s2 = lang.t("セキュリティキーに触れるか、PIN・指紋・顔で確認します。", "Touch the key, or confirm with PIN, fingerprint or face."),
        s3 = lang.t("「登録しました」と表示されたら完了です。", "When “Enrolled” appears, you are done."),
    );
    let title = lang.t("セキュリティキーの登録", "Enroll a security key");
    html(
        StatusCode::OK,
        page(
            lang,
            title,
            &switch_link("/enroll", q.as_deref(), lang),
            &body,
        ),
    )
}

/// `GET /login?redirect_uri=…&state=…&code_challenge=…&code_challenge_method=S256[&device=…]`
pub(crate) async fn login(RawQuery(q): RawQuery) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let params: LoginParams = q.as_deref().and_then(parse_login_query).unwrap_or_default();
    let req = match params.check() {
        Ok(r) => r,
        Err(reason) => return error_page(lang, "/login", q.as_deref(), reason),
    };
    let attr = |k: &str, v: &str| format!(r#" data-{k}="{}""#, esc(v));
    let extra = [
        attr("redirect-uri", req.redirect.as_str()),
        attr("state", &req.state),
        attr("code-challenge", &req.code_challenge),
        attr("device", &req.device),
    ]
    .concat();
    // The laptop this login is for, in words the person checks against the
    // asset label on the laptop in front of them: a phishing link names the
    // victim's laptop, and the code it yields works only on that laptop.
    let device = format!(
        r#"<p class="device">{before}<strong>{id}</strong>{after}</p>
<p class="hint">{check}</p>"#,
        before = lang.t("このログインはノートPC「", "This sign-in is for the laptop “"),
        id = esc(&req.device),
        after = lang.t("」のためのものです。", "”."),
        check = lang.t(
            "お使いのノートPCの管理番号（シールの番号）と同じか確かめてください。違う場合は操作せずにこのページを閉じ、情報セキュリティ担当に連絡してください。",
            "Check that this is the asset number on the label of the laptop you are using. If it is not, close this page without doing anything and tell your security officer."
        ),
    );
    let body = format!(
        r#"<p class="lead">{lead}</p>
{device}
{form}
<p class="hint">{hint}</p>"#,
        lead = lang.t(
            "パソコンのアプリ（kakehashi login）から開かれたページです。利用者IDを入力し、セキュリティキーで本人確認をしてください。",
            "This page was opened by the app on your computer (`kakehashi login`). Enter your user ID and verify with your security key."
        ),
        form = login_form(
            lang,
            "loopback",
            &extra,
            lang.t("本人確認してログイン", "Verify and sign in")
        ),
        hint = lang.t(
            "自分で「kakehashi login」を実行していないのにこのページが開いた場合は、操作せずに閉じてください。",
            "If you did not run `kakehashi login` yourself, close this page without doing anything."
        ),
    );
    let title = lang.t("ログイン", "Sign in");
    html(
        StatusCode::OK,
        page(
            lang,
            title,
            &switch_link("/login", q.as_deref(), lang),
            &body,
        ),
    )
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

    /// The signed-in user, if any.
    fn session_user(&self, headers: &HeaderMap) -> Option<String> {
        let id = self.session_id(headers)?;
        self.inner.sessions.get(&id, self.now()).map(|s| s.user)
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
    let title = lang.t("自分の端末とログイン", "My devices and sessions");
    let Some(user) = s.session_user(&headers) else {
        let body = format!(
            r#"<p class="lead">{lead}</p>
{form}"#,
            lead = lang.t(
                "利用者IDを入力し、セキュリティキーで本人確認をしてください。",
                "Enter your user ID and verify with your security key."
            ),
            form = login_form(
                lang,
                "portal",
                "",
                lang.t("本人確認して表示", "Verify and show")
            ),
        );
        return html(StatusCode::OK, page(lang, title, &switch, &body));
    };
    let csrf = s
        .session_id(&headers)
        .map(|id| super::access::csrf_token(&id))
        .unwrap_or_default();
    match me_body(&s, lang, &user, &csrf).await {
        Ok(body) => html(StatusCode::OK, page(lang, title, &switch, &body)),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "Cannot render /me");
            error_page(lang, "/me", q.as_deref(), Reason::Internal)
        }
    }
}

async fn me_body(
    s: &PortalState,
    lang: Lang,
    user_id: &str,
    csrf: &str,
) -> kakehashi_store::Result<String> {
    let csrf = format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf));
    let store = s.store();
    let now = s.now();
    let user = store.get_user(user_id).await?;
    let devices = store.devices_loaned_to(user_id).await?;
    let tokens = store.login_tokens_for_user(user_id).await?;
    let creds = store.credentials_for_user(user_id).await?;
    let lq = lang.query();
    let mut out = String::new();
    if let Some(u) = &user {
        out.push_str(&format!(
            r#"<div class="card who"><p><strong>{}</strong> {} <span class="muted">({} · {})</span></p>
<form method="post" action="/me/logout{lq}" class="inline">{csrf}<button type="submit" class="secondary">{}</button></form></div>"#,
            esc(&u.name),
            lang.t("さん", ""),
            esc(&u.id),
            esc(&u.department),
            lang.t("ポータルからログアウト", "Sign out of the portal"),
        ));
    }

    out.push_str(&format!(
        "<h2>{}</h2>",
        lang.t("貸与端末", "Loaned devices")
    ));
    if devices.is_empty() {
        out.push_str(&format!(
            r#"<p class="muted">{}</p>"#,
            lang.t("貸与端末はありません。", "No devices are loaned to you.")
        ));
    } else {
        out.push_str(&format!(
            "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
            lang.t("端末", "Device"),
            lang.t("種別", "Class"),
            lang.t("状態", "Status"),
        ));
        for d in &devices {
            out.push_str(&format!(
                r#"<tr><td>{}</td><td>{}</td><td class="st-{}">{}</td></tr>"#,
                esc(&d.id),
                class_name(lang, d.class),
                d.status.as_str(),
                status_name(lang, d.status),
            ));
        }
        out.push_str("</tbody></table>");
    }

    out.push_str(&format!(
        "<h2>{}</h2>",
        lang.t("ログイン（端末ごと）", "Sign-ins (per device)")
    ));
    if tokens.is_empty() {
        out.push_str(&format!(
            r#"<p class="muted">{}</p>"#,
            lang.t("ログインの記録はありません。", "No sign-ins yet.")
        ));
    } else {
        out.push_str(&format!(
            "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr></thead><tbody>",
            lang.t("端末", "Device"),
            lang.t("ログイン日時", "Signed in"),
            lang.t("有効期限", "Expires"),
            lang.t("状態", "State"),
        ));
        for t in &tokens {
            let (state, live) = match t.revoked_at {
                Some(_) => (lang.t("サインアウト済み", "signed out"), false),
                None if t.expires_at <= now => (lang.t("期限切れ", "expired"), false),
                None => (lang.t("有効", "active"), true),
            };
            let action = if live {
                format!(
                    r#"<form method="post" action="/me/revoke{lq}" class="inline">{csrf}<input type="hidden" name="token" value="{}"><button type="submit" class="danger">{}</button></form>"#,
                    t.token_hash.to_hex(),
                    lang.t("この端末をサインアウト", "Sign out this device"),
                )
            } else {
                String::new()
            };
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&t.device_id),
                s.local_time(t.issued_at),
                s.local_time(t.expires_at),
                state,
                action,
            ));
        }
        out.push_str("</tbody></table>");
    }

    out.push_str(&format!(
        "<h2>{}</h2>",
        lang.t("登録済みのセキュリティキー", "Registered security keys")
    ));
    if creds.is_empty() {
        out.push_str(&format!(
            r#"<p class="muted">{}</p>"#,
            lang.t("登録されたキーはありません。", "No keys registered.")
        ));
    } else {
        out.push_str(&format!(
            "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
            lang.t("キーID", "Key ID"),
            lang.t("登録日時", "Registered"),
            lang.t("最終使用", "Last used"),
            lang.t("種類", "Kind"),
        ));
        for c in &creds {
            let label = cred_label(&c.cred_id);
            let short: String = label.chars().take(12).collect();
            out.push_str(&format!(
                r#"<tr><td><code title="{}">{}…</code></td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&label),
                esc(&short),
                s.local_time(c.created),
                c.last_used
                    .map(|t| s.local_time(t))
                    .unwrap_or_else(|| "-".into()),
                if c.attested {
                    lang.t("認定ハードウェアキー", "attested hardware key")
                } else {
                    lang.t("一般", "standard")
                },
            ));
        }
        out.push_str("</tbody></table>");
    }
    Ok(out)
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
    /// Whether `presented` is the CSRF token of the request's portal session.
    fn csrf_ok(&self, headers: &HeaderMap, presented: &str) -> bool {
        // As the staff forms: the portal's origin (or, without an `Origin`
        // header, `Sec-Fetch-Site: same-origin`) and the session's token.
        self.same_origin(headers)
            && self
                .session_id(headers)
                .is_some_and(|id| super::access::csrf_matches(&id, presented))
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
    let Some(user) = s.session_user(&headers) else {
        return error_page(lang, "/me", q, Reason::SessionRequired);
    };
    let Ok(Form(form)) = form else {
        return error_page(lang, "/me", q, Reason::BadRequest);
    };
    if !s.csrf_ok(&headers, &form.csrf) {
        tracing::info!(user, "Sign-out of a device refused: CSRF token");
        return error_page(lang, "/me", q, Reason::OriginMismatch);
    }
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
    if s.session_id(&headers).is_some() && !s.csrf_ok(&headers, &csrf) {
        let lang = lp.lang();
        let q = (lang == Lang::En).then_some("lang=en");
        tracing::info!("Portal sign-out refused: CSRF token");
        return error_page(lang, "/me", q, Reason::OriginMismatch);
    }
    if let Some(id) = s.session_id(&headers) {
        if let Some(sess) = s.inner.sessions.get(&id, s.now()) {
            s.audit(
                Audit::new(s.now(), sess.user.as_str(), "portal.logout")
                    .subject(&sess.user)
                    .detail(json!({ "source": ip.to_string() })),
            )
            .await;
        }
        s.inner.sessions.remove(&id);
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
