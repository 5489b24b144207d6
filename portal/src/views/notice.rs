//! The pages that only say why not: a refused request with its reason
//! code, in the page's language or in both.

use maud::{html, Markup};

use super::layout::page;
use crate::html::Lang;
use crate::reason::Reason;

fn title(lang: Lang) -> &'static str {
    lang.t("お知らせ", "Notice")
}

/// A refusal of the public pages (`/login`, `/me`): the reason's sentence
/// in the page's language and its code.
pub(crate) fn reason_page(lang: Lang, switch: &str, reason: Reason) -> Markup {
    let body = html! {
        div class="card notice error" role="alert" {
            p { (lang.reason(reason)) }
            p class="code" { (lang.t("理由コード", "Reason code")) ": " (reason.code()) }
        }
    };
    page(lang, title(lang), switch, body)
}

/// A refusal of a protected page: both sentences, Japanese first, the
/// code, and a link to the portal's home.
pub(crate) fn refused_page(lang: Lang, switch: &str, ja: &str, en: &str, code: &str) -> Markup {
    let body = html! {
        div class="card notice error" role="alert" {
            p lang="ja" { (ja) }
            p lang="en" { (en) }
            p class="code" { (lang.t("理由コード", "Reason code")) ": " (code) }
        }
        p { a href={ "/" (lang.query()) } { (lang.t("ポータルのトップへ", "Portal home")) } }
    };
    page(lang, title(lang), switch, body)
}
