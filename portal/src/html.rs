//! The pages' frame and the text helpers every page uses: the language
//! (Japanese first, `?lang=en`), HTML escaping, the page layout with its
//! language switch and banner slot, the sign-in form, and names of device
//! classes and statuses.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kakehashi_store::{DeviceClass, DeviceStatus};

use crate::reason::Reason;

/// The page language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Ja,
    En,
}

impl Lang {
    pub(crate) fn from_query(q: Option<&str>) -> Lang {
        let lang = q.and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "lang")
                .map(|(_, v)| v.into_owned())
        });
        match lang.as_deref() {
            Some("en") => Lang::En,
            _ => Lang::Ja,
        }
    }

    pub(crate) fn t(self, ja: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::Ja => ja,
            Lang::En => en,
        }
    }

    pub(crate) fn code(self) -> &'static str {
        self.t("ja", "en")
    }

    /// `?lang=en` for English links, nothing for Japanese.
    pub(crate) fn query(self) -> &'static str {
        self.t("", "?lang=en")
    }

    pub(crate) fn reason(self, r: Reason) -> &'static str {
        self.t(r.ja(), r.en())
    }
}

/// Escapes text for HTML content and quoted attributes.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The same path and query in the other language.
pub(crate) fn switch_link(path: &str, query: Option<&str>, lang: Lang) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    if let Some(q) = query {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            if k != "lang" {
                ser.append_pair(&k, &v);
            }
        }
    }
    if lang == Lang::Ja {
        ser.append_pair("lang", "en");
    }
    let q = ser.finish();
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{q}")
    }
}

/// Where [`super::officer::bcp::bcp_banner`] puts the BCP banner on every page.
pub(crate) const BANNER_SLOT: &str = "<!--kakehashi:banner-->";

/// The page frame around `body`.
pub(crate) fn page(lang: Lang, title: &str, switch: &str, body: &str) -> String {
    let other = lang.t("English", "日本語");
    let other_code = lang.t("en", "ja");
    format!(
        r#"<!DOCTYPE html>
<html lang="{code}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{title} | {brand}</title>
<link rel="stylesheet" href="/assets/portal.css">
<script src="/assets/portal.js" defer></script>
</head>
<body>
<header class="band"><div class="wrap band-row">
<a class="brand" href="/{home_q}">{brand}</a>
<span class="band-sub">{sub}</span>
<a class="lang" href="{switch}" hreflang="{other_code}" lang="{other_code}">{other}</a>
</div></header>
{banner}
<main class="wrap">
<h1>{title}</h1>
{body}
</main>
<footer class="wrap foot">{foot}</footer>
</body>
</html>
"#,
        code = lang.code(),
        title = esc(title),
        banner = BANNER_SLOT,
        brand = lang.t("かけはし", "Kakehashi"),
        sub = lang.t("テレワーク接続ポータル", "Remote access portal"),
        home_q = lang.query(),
        switch = esc(switch),
        foot = lang.t(
            "このページは職員専用です。身に覚えのない操作や不審な点があれば、情報システム担当に連絡してください。",
            "This page is for staff only. If you notice anything unexpected, contact your IT department."
        ),
    )
}

pub(crate) fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Messages the script shows, in the page's language.
pub(crate) fn script_messages(lang: Lang) -> String {
    let m = |k: &str, ja: &'static str, en: &'static str| {
        format!(r#" data-msg-{k}="{}""#, esc(lang.t(ja, en)))
    };
    [
        m(
            "touch",
            "セキュリティキーに触れるか、生体認証・PINで本人確認をしてください…",
            "Touch your security key, or confirm with your fingerprint, face or PIN…",
        ),
        m(
            "cancelled",
            "本人確認が取り消されたか、時間切れになったか、この利用者IDに登録されたセキュリティキーではありませんでした。利用者IDを確かめ、登録したキーでもう一度お試しください。",
            "The verification was cancelled or timed out, or the key is not one enrolled for this user ID. Check the user ID and try again with your enrolled key.",
        ),
        m(
            "unsupported",
            "このブラウザーはセキュリティキー（WebAuthn）に対応していません。",
            "This browser does not support security keys (WebAuthn).",
        ),
        m(
            "failed",
            "処理に失敗しました。もう一度お試しください。",
            "Something went wrong. Please try again.",
        ),
        m(
            "enrolled",
            "登録しました。このセキュリティキーでログインできます。",
            "Enrolled. You can now sign in with this security key.",
        ),
        m(
            "redirecting",
            "本人確認ができました。パソコンのアプリに戻ります…",
            "Verified. Returning to the app on your computer…",
        ),
        m(
            "returned",
            "ログインが完了しました。このタブは閉じてかまいません。",
            "Sign-in complete. You may close this tab.",
        ),
    ]
    .concat()
}

/// The user-id form that runs a login ceremony; `mode` is `loopback` (the
/// laptop login, with `extra` data attributes) or `portal` (`/me`).
pub(crate) fn login_form(lang: Lang, mode: &str, extra: &str, submit: &str) -> String {
    format!(
        r#"<form id="login-form" class="card" data-portal="login" data-mode="{mode}" data-lang="{code}"{extra}{msgs}>
<label for="user">{user}</label>
<input id="user" name="user" autocomplete="username webauthn" required maxlength="64" pattern="[A-Za-z0-9._\-]+" spellcheck="false" autocapitalize="off">
<button type="submit">{submit}</button>
<p id="status" class="status" role="status" aria-live="polite" hidden></p>
</form>"#,
        code = lang.code(),
        msgs = script_messages(lang),
        user = lang.t("利用者ID", "User ID"),
    )
}

pub(crate) fn class_name(lang: Lang, c: DeviceClass) -> &'static str {
    match c {
        DeviceClass::Home => lang.t("在宅", "home"),
        DeviceClass::Mobile => lang.t("モバイル", "mobile"),
        DeviceClass::Satellite => lang.t("サテライト", "satellite office"),
        _ => lang.t("その他", "other"),
    }
}

pub(crate) fn status_name(lang: Lang, s: DeviceStatus) -> &'static str {
    match s {
        DeviceStatus::Active => lang.t("利用可", "active"),
        DeviceStatus::Blocked => lang.t("停止中", "blocked"),
        DeviceStatus::Lost => lang.t("紛失届出済み", "reported lost"),
        DeviceStatus::Revoked => lang.t("失効", "revoked"),
        _ => lang.t("その他", "other"),
    }
}
