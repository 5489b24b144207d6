//! Pieces several pages share: the notice of the last action, the hidden
//! CSRF field, "signed in as …" with its sign-out form, `<option>` lists,
//! and the names of device classes and statuses.

use kakehashi_store::{DeviceClass, DeviceStatus, User};
use maud::{html, Markup, Render};

use crate::html::Lang;

/// A message at the top of a page.
#[derive(Debug, Clone)]
pub(crate) enum Notice {
    Ok(String),
    Error(String),
}

impl Render for Notice {
    fn render(&self) -> Markup {
        let (class, role, text) = match self {
            Notice::Ok(t) => ("status ok", "status", t),
            Notice::Error(t) => ("status error", "alert", t),
        };
        html! { div id="notice" class=(class) role=(role) { (text) } }
    }
}

/// The hidden CSRF field every posting form carries.
pub(crate) fn csrf_input(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// "Signed in as …" with a sign-out button (the officer and plan pages).
pub(crate) fn who_line(lang: Lang, user: &User, csrf: &str) -> Markup {
    let roles: Vec<&str> = user.roles.iter().map(|r| r.as_str()).collect();
    html! {
        div class="who-line" {
            span {
                (lang.t("ログイン中:", "Signed in:")) " "
                strong { (user.name) } " "
                (lang.t("さん", "")) " "
                span class="muted" { "(" (user.id) " · " (user.department) " · " (roles.join(", ")) ")" }
            }
            form method="post" action={ "/me/logout" (lang.query()) } class="inline" {
                (csrf_input(csrf))
                button type="submit" class="secondary small" { (lang.t("ログアウト", "Sign out")) }
            }
        }
    }
}

/// `<option>`s of `(value, label)` with `selected` on `cur`.
pub(crate) fn options(list: &[(&str, &str)], cur: &str) -> Markup {
    html! {
        @for (value, label) in list {
            option value=(value) selected[*value == cur] { (label) }
        }
    }
}

/// A device class in words.
pub(crate) fn class_name(lang: Lang, c: DeviceClass) -> &'static str {
    match c {
        DeviceClass::Home => lang.t("在宅", "home"),
        DeviceClass::Mobile => lang.t("モバイル", "mobile"),
        DeviceClass::Satellite => lang.t("サテライト", "satellite office"),
        _ => lang.t("その他", "other"),
    }
}

/// A device status in words.
pub(crate) fn status_name(lang: Lang, s: DeviceStatus) -> &'static str {
    match s {
        DeviceStatus::Active => lang.t("利用可", "active"),
        DeviceStatus::Blocked => lang.t("停止中", "blocked"),
        DeviceStatus::Lost => lang.t("紛失届出済み", "reported lost"),
        DeviceStatus::Revoked => lang.t("失効", "revoked"),
        _ => lang.t("その他", "other"),
    }
}

/// What the portal script (`/assets/portal.js`) shows during a WebAuthn
/// ceremony, in the page's language; each goes in a `data-msg-*`
/// attribute of the form.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScriptMessages {
    pub(crate) touch: &'static str,
    pub(crate) cancelled: &'static str,
    pub(crate) unsupported: &'static str,
    pub(crate) failed: &'static str,
    pub(crate) enrolled: &'static str,
    pub(crate) redirecting: &'static str,
    pub(crate) returned: &'static str,
}

impl ScriptMessages {
    pub(crate) fn new(lang: Lang) -> Self {
        Self {
            touch: lang.t(
                "セキュリティキーに触れるか、生体認証・PINで本人確認をしてください…",
                "Touch your security key, or confirm with your fingerprint, face or PIN…",
            ),
            cancelled: lang.t(
                "本人確認が取り消されたか、時間切れになったか、この利用者IDに登録されたセキュリティキーではありませんでした。利用者IDを確かめ、登録したキーでもう一度お試しください。",
                "The verification was cancelled or timed out, or the key is not one enrolled for this user ID. Check the user ID and try again with your enrolled key.",
            ),
            unsupported: lang.t(
                "このブラウザーはセキュリティキー（WebAuthn）に対応していません。",
                "This browser does not support security keys (WebAuthn).",
            ),
            failed: lang.t(
                "処理に失敗しました。もう一度お試しください。",
                "Something went wrong. Please try again.",
            ),
            enrolled: lang.t(
                "登録しました。このセキュリティキーでログインできます。",
                "Enrolled. You can now sign in with this security key.",
            ),
            redirecting: lang.t(
                "本人確認ができました。パソコンのアプリに戻ります…",
                "Verified. Returning to the app on your computer…",
            ),
            returned: lang.t(
                "ログインが完了しました。このタブは閉じてかまいません。",
                "Sign-in complete. You may close this tab.",
            ),
        }
    }
}
