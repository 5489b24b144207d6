//! `GET /officer/desks`: each desk's confidentiality level, segment and
//! service, each with its change form.

use kakehashi_store::{Desk, DeskService, Segment};
use maud::{html, Markup};

use super::officer::{officer_page, Head, MAX_REASON_CHARS};
use super::parts::{csrf_input, options};
use crate::html::Lang;

/// The page title.
pub(crate) fn title(lang: Lang) -> &'static str {
    lang.t("デスク（機密性レベル）", "Desks (confidentiality levels)")
}

fn service_name(lang: Lang, s: DeskService) -> &'static str {
    match s {
        DeskService::Rdp => lang.t("RDP（利用制限を強制）", "RDP (controls enforced)"),
        _ => lang.t(
            "RDP以外（制限は強制されない）",
            "not RDP (controls not enforced)",
        ),
    }
}

fn segment_name(lang: Lang, s: Segment) -> &'static str {
    match s {
        Segment::Lgwan => lang.t("LGWAN接続系", "LGWAN"),
        Segment::Internet => lang.t("インターネット接続系", "internet"),
        Segment::Mynumber => lang.t("個人番号利用事務系", "My Number"),
        _ => lang.t("その他", "other"),
    }
}

/// The desks page; `switch` is the same page in the other language.
pub(crate) fn desks(lang: Lang, switch: &str, head: Head<'_>, desks: &[Desk]) -> Markup {
    let lead = lang.t(
        "接続先のデスクPCごとの機密性レベルとネットワークです。変更すると、接続中のセッションも1秒以内に再判定されます。個人番号利用事務系のデスクには、どのルールでも接続できません。種別「RDP以外」のデスクへの接続では利用制限が強制されず、監査ログにそのように記録されます。",
        "Each desk PC's confidentiality level and network segment. A change re-decides live sessions within a second. Desks in the My Number segment are never reachable, whatever the rules. Sessions to a desk of service \"not RDP\" are admitted without enforcing their controls, and audited so.",
    );
    let content = html! {
        @if desks.is_empty() {
            p class="muted" {
                (lang.t(
                    "登録されたデスクはありません（kakehashi-gateway admin desk add で登録します）。",
                    "No desks yet (register them with kakehashi-gateway admin desk add)."
                ))
            }
        } @else {
            table id="desks" {
                thead { tr {
                    th { (lang.t("デスク", "Desk")) }
                    th { (lang.t("レベル", "Level")) }
                    th { (lang.t("ネットワーク", "Segment")) }
                    th { (lang.t("種別", "Service")) }
                    th { (lang.t("所属", "Department")) }
                    th { (lang.t("利用者", "Owners")) }
                    th { (lang.t("変更", "Change")) }
                } }
                tbody {
                    @for d in desks {
                        (row(lang, head.csrf, d))
                    }
                }
            }
        }
    };
    officer_page(lang, title(lang), switch, head, lead, content)
}

fn row(lang: Lang, csrf: &str, d: &Desk) -> Markup {
    let level_l = lang.t("機密性レベル", "Confidentiality level");
    let seg_l = lang.t("ネットワーク", "Segment");
    let service_l = lang.t("種別", "Service");
    let reason_l = lang.t("理由（必須）", "Reason (required)");
    let segments = [
        ("lgwan", lang.t("LGWAN接続系", "LGWAN")),
        ("internet", lang.t("インターネット接続系", "internet")),
        ("mynumber", lang.t("個人番号利用事務系", "My Number")),
    ];
    let owners: Vec<&str> = d.owners.iter().map(String::as_str).collect();
    let services = [
        ("rdp", service_name(lang, DeskService::Rdp)),
        ("other", service_name(lang, DeskService::Other)),
    ];
    html! {
        tr data-desk=(d.id) data-service=(d.service.as_str()) {
            td { (d.id) }
            td class={ "level-" (d.level) } { (d.level) }
            td { (segment_name(lang, d.segment)) }
            td { (service_name(lang, d.service)) }
            td { (d.department) }
            td { (owners.join(", ")) }
            td {
                form method="post" action={ "/officer/desks" (lang.query()) } class="row-form" {
                    (csrf_input(csrf))
                    input type="hidden" name="id" value=(d.id);
                    select name="level" aria-label=(level_l) {
                        (options(&[("1", "1"), ("2", "2"), ("3", "3")], &d.level.to_string()))
                    }
                    select name="segment" aria-label=(seg_l) { (options(&segments, d.segment.as_str())) }
                    select name="service" aria-label=(service_l) { (options(&services, d.service.as_str())) }
                    input name="reason" type="text" required maxlength=(MAX_REASON_CHARS)
                        aria-label=(reason_l) placeholder=(reason_l) id={ "desk-" (d.id) "-reason" };
                    button type="submit" class="small" { (lang.t("変更", "Change")) }
                }
            }
        }
    }
}
