//! The banner every page carries while a BCP declaration is in force (the
//! middleware puts it in the frame's banner slot).

use kakehashi_store::Bcp;
use maud::{html, Markup};

use super::officer_bcp::scope_name;
use crate::html::Lang;

/// The banner for the declarations in force, each with its end (local
/// time), in the page's language.
pub(crate) fn banner(lang: Lang, active: &[(&Bcp, String)]) -> Markup {
    html! {
        div id="bcp-banner" class="bcp-banner" role="status" {
            div class="wrap" {
                @for (b, until) in active {
                    p {
                        strong { (lang.t("BCPモード実施中", "BCP mode in force")) } " "
                        (lang.t("対象", "scope")) ": " (scope_name(lang, &b.scope))
                        " ／ " (lang.t("理由", "reason")) ": " (b.reason)
                        " ／ " (lang.t("期限", "until")) ": " (until) (lang.t(" まで", ""))
                    }
                }
            }
        }
    }
}
