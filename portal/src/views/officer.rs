//! The frame the security officer's pages share inside the page frame:
//! who is signed in, the tabs, the notice of the last action and the
//! page's lead paragraph; and the reason (理由) field of their forms.

use kakehashi_store::User;
use maud::{html, Markup};

use super::layout::page;
use super::parts::{who_line, Notice};
use crate::html::Lang;

/// Longest reason (理由), in characters (the handlers check the same).
pub(crate) const MAX_REASON_CHARS: usize = 500;

/// The top of an officer page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head<'a> {
    pub(crate) user: &'a User,
    /// The session's CSRF token.
    pub(crate) csrf: &'a str,
    /// The page's own path: its tab is the current one.
    pub(crate) path: &'a str,
    pub(crate) notice: Option<&'a Notice>,
}

/// An officer page: `head`, then `lead`, then `content`.
pub(crate) fn officer_page(
    lang: Lang,
    title: &str,
    switch: &str,
    head: Head<'_>,
    lead: &str,
    content: Markup,
) -> Markup {
    let body = html! {
        div class="officer-wide" {
            (who_line(lang, head.user, head.csrf))
            (nav(lang, head.path))
            @if let Some(n) = head.notice {
                (n)
            }
            p class="lead" { (lead) }
            (content)
        }
    };
    page(lang, title, switch, body)
}

/// The officer pages' tabs.
fn nav(lang: Lang, current: &str) -> Markup {
    let tabs = [
        ("/officer/rules", "ルール", "Rules"),
        ("/officer/desks", "デスク", "Desks"),
        ("/officer/devices", "端末", "Devices"),
        ("/officer/bcp", "BCP", "BCP"),
        ("/plans", "テレワーク計画", "Telework plans"),
    ];
    html! {
        nav class="tabs" aria-label=(lang.t("情報セキュリティ担当のメニュー", "Security officer menu")) {
            @for (path, ja, en) in tabs {
                a href={ (path) (lang.query()) } aria-current=[(path == current).then_some("page")] {
                    (lang.t(ja, en))
                }
            }
        }
    }
}

/// A row form's required reason field.
pub(crate) fn row_reason(label: &str) -> Markup {
    html! {
        input name="reason" type="text" required maxlength=(MAX_REASON_CHARS) aria-label=(label) placeholder=(label);
    }
}
