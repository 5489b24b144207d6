//! `GET /`: the portal's menu.

use maud::{html, Markup};

use super::layout::page;
use crate::html::Lang;

/// The menu page.
pub(crate) fn home(lang: Lang, switch: &str) -> Markup {
    let lq = lang.query();
    let item = |path: &str, name: &str, what: &str| {
        html! {
            li { a class="card link" href={ (path) (lq) } { strong { (name) } span { (what) } } }
        }
    };
    let body = html! {
        p class="lead" {
            (lang.t(
                "職場のパソコンに自宅などから安全に接続するためのポータルです。",
                "The portal for connecting safely to your office PC from home or elsewhere."
            ))
        }
        ul class="menu" {
            (item(
                "/enroll",
                lang.t("セキュリティキーの登録", "Enroll a security key"),
                lang.t(
                    "担当者から受け取った登録コードで、セキュリティキーや生体認証を登録します。",
                    "Register a security key or biometric sign-in with the code the officer gave you."
                ),
            ))
            (item(
                "/me",
                lang.t("自分の端末とログイン", "My devices and sessions"),
                lang.t(
                    "貸与端末、ログイン中の端末、登録済みのキーを確認し、端末をサインアウトできます。",
                    "See your loaned devices, signed-in devices and keys; sign a device out."
                ),
            ))
            (item(
                "/plans",
                lang.t("テレワーク計画", "Telework plans"),
                lang.t(
                    "在宅勤務などの計画を提出し、承認状況を確認します。所属長はここで承認します。",
                    "Submit telework plans and see whether they are approved; section chiefs approve them here."
                ),
            ))
            (item(
                "/officer",
                lang.t("情報セキュリティ担当", "Security officer"),
                lang.t(
                    "接続ルール、デスクの機密性レベル、端末の利用停止、BCPモード（担当者のみ）。",
                    "Access rules, desk confidentiality levels, device blocks, BCP mode (officers only)."
                ),
            ))
        }
        p class="hint" {
            (lang.t(
                "パソコンからのログインは、アプリの「kakehashi login」から始めてください。",
                "To sign in on your laptop, start with `kakehashi login` in the app."
            ))
        }
    };
    page(lang, lang.t("ポータル", "Portal"), switch, body)
}
