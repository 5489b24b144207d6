//! `GET /login?…`: the page `kakehashi login` opens; the login form, and
//! the laptop the code will be for.

use maud::{html, Markup};

use super::layout::page;
use super::sign_in::{form, Mode};
use crate::html::Lang;

/// What the laptop asked for, checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loopback<'a> {
    pub(crate) redirect_uri: &'a str,
    pub(crate) state: &'a str,
    pub(crate) code_challenge: &'a str,
    /// The laptop's asset number.
    pub(crate) device: &'a str,
}

/// The laptop login page.
pub(crate) fn login(lang: Lang, switch: &str, req: Loopback<'_>) -> Markup {
    let mode = Mode::Loopback {
        redirect_uri: req.redirect_uri,
        state: req.state,
        code_challenge: req.code_challenge,
        device: req.device,
    };
    let body = html! {
        p class="lead" {
            (lang.t(
                "パソコンのアプリ（kakehashi login）から開かれたページです。利用者IDを入力し、セキュリティキーで本人確認をしてください。",
                "This page was opened by the app on your computer (`kakehashi login`). Enter your user ID and verify with your security key."
            ))
        }
        // The laptop this login is for, in words the person checks against
        // the asset label on the laptop in front of them: a phishing link
        // names the victim's laptop, and the code it yields works only on
        // that laptop.
        p class="device" {
            (lang.t("このログインはノートPC「", "This sign-in is for the laptop “"))
            strong { (req.device) }
            (lang.t("」のためのものです。", "”."))
        }
        p class="hint" {
            (lang.t(
                "お使いのノートPCの管理番号（シールの番号）と同じか確かめてください。違う場合は操作せずにこのページを閉じ、情報セキュリティ担当に連絡してください。",
                "Check that this is the asset number on the label of the laptop you are using. If it is not, close this page without doing anything and tell your security officer."
            ))
        }
        (form(lang, mode, lang.t("本人確認してログイン", "Verify and sign in")))
        p class="hint" {
            (lang.t(
                "自分で「kakehashi login」を実行していないのにこのページが開いた場合は、操作せずに閉じてください。",
                "If you did not run `kakehashi login` yourself, close this page without doing anything."
            ))
        }
    };
    page(lang, lang.t("ログイン", "Sign in"), switch, body)
}
