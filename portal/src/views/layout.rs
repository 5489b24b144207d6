//! The frame of every page: head (style sheet and script from `/assets`),
//! the band with the language switch, the BCP banner slot, the title and
//! the footer.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::html::Lang;

/// Where the BCP banner middleware puts the banner on every page (an HTML
/// comment, replaced by [`super::bcp_banner::banner`] while a declaration
/// is in force).
pub(crate) const BANNER_SLOT: &str = "<!--kakehashi:banner-->";

/// The page frame around `body`; `switch` is the same page in the other
/// language.
pub(crate) fn page(lang: Lang, title: &str, switch: &str, body: Markup) -> Markup {
    let brand = lang.t("かけはし", "Kakehashi");
    let other_code = lang.t("en", "ja");
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " | " (brand) }
                link rel="stylesheet" href="/assets/portal.css";
                script src="/assets/portal.js" defer {}
            }
            body {
                header class="band" {
                    div class="wrap band-row" {
                        a class="brand" href={ "/" (lang.query()) } { (brand) }
                        span class="band-sub" { (lang.t("テレワーク接続ポータル", "Remote access portal")) }
                        a class="lang" href=(switch) hreflang=(other_code) lang=(other_code) {
                            (lang.t("English", "日本語"))
                        }
                    }
                }
                // A constant comment, no data: the banner middleware's marker.
                (PreEscaped(BANNER_SLOT))
                main class="wrap" {
                    h1 { (title) }
                    (body)
                }
                footer class="wrap foot" {
                    (lang.t(
                        "このページは職員専用です。身に覚えのない操作や不審な点があれば、情報システム担当に連絡してください。",
                        "This page is for staff only. If you notice anything unexpected, contact your IT department."
                    ))
                }
            }
        }
    }
}
