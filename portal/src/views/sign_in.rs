//! The user-id form that runs a login ceremony (the portal script does the
//! WebAuthn part), and the sign-in page a protected page shows to a
//! visitor without a portal session.

use maud::{html, Markup};

use super::layout::page;
use super::parts::ScriptMessages;
use crate::html::Lang;

/// What the login ceremony is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode<'a> {
    /// The laptop login (`kakehashi login`): the browser goes to the
    /// loopback `redirect_uri` with a one-time code.
    Loopback {
        redirect_uri: &'a str,
        state: &'a str,
        code_challenge: &'a str,
        device: &'a str,
    },
    /// A portal session; then the browser goes to `next` (default `/me`).
    Portal { next: Option<&'a str> },
}

/// The login form (`#login-form`); `submit` is the button's text.
pub(crate) fn form(lang: Lang, mode: Mode<'_>, submit: &str) -> Markup {
    let (data_mode, loopback, next) = match mode {
        Mode::Loopback {
            redirect_uri,
            state,
            code_challenge,
            device,
        } => (
            "loopback",
            Some((redirect_uri, state, code_challenge, device)),
            None,
        ),
        Mode::Portal { next } => ("portal", None, next),
    };
    let m = ScriptMessages::new(lang);
    html! {
        form id="login-form" class="card" data-portal="login" data-mode=(data_mode) data-lang=(lang.code())
            data-redirect-uri=[loopback.map(|l| l.0)]
            data-state=[loopback.map(|l| l.1)]
            data-code-challenge=[loopback.map(|l| l.2)]
            data-device=[loopback.map(|l| l.3)]
            data-next=[next]
            data-msg-touch=(m.touch)
            data-msg-cancelled=(m.cancelled)
            data-msg-unsupported=(m.unsupported)
            data-msg-failed=(m.failed)
            data-msg-enrolled=(m.enrolled)
            data-msg-redirecting=(m.redirecting)
            data-msg-returned=(m.returned)
        {
            label for="user" { (lang.t("利用者ID", "User ID")) }
            input id="user" name="user" autocomplete="username webauthn" required maxlength="64"
                pattern="[A-Za-z0-9._\\-]+" spellcheck="false" autocapitalize="off";
            " "
            button type="submit" { (submit) }
            p id="status" class="status" role="status" aria-live="polite" hidden {}
        }
    }
}

/// A page that needs a portal session, to a visitor without one: its
/// title and a sign-in form that comes back to `next`.
pub(crate) fn sign_in_page(lang: Lang, title: &str, switch: &str, next: Option<&str>) -> Markup {
    let body = html! {
        p class="lead" {
            (lang.t(
                "利用者IDを入力し、セキュリティキーで本人確認をしてください。",
                "Enter your user ID and verify with your security key."
            ))
        }
        (form(lang, Mode::Portal { next }, lang.t("本人確認して表示", "Verify and show")))
    };
    page(lang, title, switch, body)
}
