//! `GET /officer/bcp`: the declarations in force (each with an end form),
//! the declare form, and the past declarations.

use kakehashi_store::{Bcp, BcpScope};
use maud::{html, Markup};

use super::officer::{officer_page, row_reason, Head, MAX_REASON_CHARS};
use super::parts::csrf_input;
use crate::html::Lang;

/// The page title.
pub(crate) fn title(lang: Lang) -> &'static str {
    lang.t("BCPモード", "BCP mode")
}

/// Whom a declaration covers, in words.
pub(crate) fn scope_name(lang: Lang, scope: &BcpScope) -> &str {
    match scope {
        BcpScope::All => lang.t("全職員", "everyone"),
        BcpScope::Department(d) => d,
    }
}

/// A declaration in force.
#[derive(Debug)]
pub(crate) struct Active<'a> {
    pub(crate) bcp: &'a Bcp,
    /// Its end, local time.
    pub(crate) until: String,
}

/// A declaration that ended.
#[derive(Debug)]
pub(crate) struct Past<'a> {
    pub(crate) bcp: &'a Bcp,
    /// Local time.
    pub(crate) from: String,
    /// When it ended or expired, local time.
    pub(crate) to: String,
}

/// Everything the page shows.
#[derive(Debug)]
pub(crate) struct BcpPage<'a> {
    pub(crate) head: Head<'a>,
    pub(crate) active: Vec<Active<'a>>,
    /// The departments to suggest in the declare form.
    pub(crate) depts: Vec<&'a str>,
    /// The declare form's end date (`YYYY-MM-DD`).
    pub(crate) tomorrow: String,
    pub(crate) past: Vec<Past<'a>>,
}

/// The BCP page; `switch` is the same page in the other language.
pub(crate) fn bcp(lang: Lang, switch: &str, v: &BcpPage<'_>) -> Markup {
    let lead = lang.t(
        "大雪・感染症・災害などで出勤が難しいときに宣言します。ポリシーの bcp_default_relax に書かれた内容（既定: レベル1・2の在宅・モバイルで、計画の承認と勤務時間の制限を不要にする）だけを緩和し、期限が来ると自動的に終わります。レベル3の在宅と個人番号利用事務系は緩和されません。",
        "Declare it when people cannot come in (snow, pandemic, disaster). It relaxes only what the policy's bcp_default_relax says (by default: no approved plan and no hour window for levels 1 and 2 from home and mobile) and ends by itself at its expiry. Level 3 from home and the My Number segment are never relaxed.",
    );
    let content = html! {
        h2 { (lang.t("実施中の宣言", "In force")) }
        @if v.active.is_empty() {
            p class="muted" id="bcp-none" {
                (lang.t("実施中のBCP宣言はありません。", "No BCP declaration is in force."))
            }
        } @else {
            table id="bcp-active" {
                thead { tr {
                    th { (lang.t("対象", "Scope")) }
                    th { (lang.t("理由", "Reason")) }
                    th { (lang.t("期限", "Until")) }
                    th { (lang.t("宣言者", "Declared by")) }
                    th { (lang.t("終了", "End")) }
                } }
                tbody {
                    @for a in &v.active {
                        tr data-bcp=(a.bcp.id) {
                            td { (scope_name(lang, &a.bcp.scope)) }
                            td { (a.bcp.reason) }
                            td { (a.until) }
                            td { (a.bcp.declared_by) }
                            td {
                                form method="post" action={ "/officer/bcp/end" (lang.query()) } class="row-form" {
                                    (csrf_input(v.head.csrf))
                                    input type="hidden" name="id" value=(a.bcp.id);
                                    (row_reason(lang.t("終了の理由（必須）", "Why end it (required)")))
                                    button type="submit" class="danger" { (lang.t("今すぐ終了", "End now")) }
                                }
                            }
                        }
                    }
                }
            }
        }
        (declare_form(lang, v))
        @if !v.past.is_empty() {
            h2 { (lang.t("過去の宣言", "Past declarations")) }
            table id="bcp-history" {
                thead { tr {
                    th { (lang.t("対象", "Scope")) }
                    th { (lang.t("理由", "Reason")) }
                    th { (lang.t("期間", "Period")) }
                    th { (lang.t("宣言者／終了者", "Declared / ended by")) }
                } }
                tbody {
                    @for p in &v.past {
                        tr {
                            td { (scope_name(lang, &p.bcp.scope)) }
                            td { (p.bcp.reason) }
                            td { (p.from) " – " (p.to) }
                            td {
                                (p.bcp.declared_by) " / "
                                (p.bcp.ended_by.as_deref().unwrap_or(lang.t("期限", "expiry")))
                            }
                        }
                    }
                }
            }
        }
    };
    officer_page(lang, title(lang), switch, v.head, lead, content)
}

fn declare_form(lang: Lang, v: &BcpPage<'_>) -> Markup {
    let dept_l = lang.t("所属", "Department");
    let until_l = lang.t(
        "終了日時（この時刻に自動で終了）",
        "Ends at (automatically)",
    );
    html! {
        h2 { (lang.t("BCPモードを宣言する", "Declare BCP mode")) }
        form id="bcp-declare" class="card" method="post" action={ "/officer/bcp/declare" (lang.query()) } {
            (csrf_input(v.head.csrf))
            fieldset class="plain" {
                legend { (lang.t("対象", "Scope")) }
                label class="inline-label" {
                    input type="radio" name="scope" value="all" checked;
                    " " (lang.t("全職員", "Everyone"))
                }
                " "
                label class="inline-label" {
                    input type="radio" name="scope" value="dept";
                    " " (lang.t("次の所属のみ:", "Only this department:"))
                }
                " "
                input id="bcp-dept" name="dept" type="text" maxlength="128" list="bcp-depts" aria-label=(dept_l) placeholder=(dept_l);
                " "
                datalist id="bcp-depts" {
                    @for d in &v.depts {
                        option value=(d) {}
                    }
                }
            }
            label for="bcp-reason" {
                (lang.t(
                    "理由（必須・お知らせに表示され、監査ログに記録）",
                    "Reason (required; shown in the banner and kept in the audit log)"
                ))
            }
            input id="bcp-reason" name="reason" type="text" required maxlength=(MAX_REASON_CHARS)
                placeholder=(lang.t("例: 大雪のため", "e.g. heavy snow"));
            label for="bcp-until-date" { (until_l) }
            span class="datetime" {
                input id="bcp-until-date" name="until_date" type="date" required value=(v.tomorrow);
                " "
                input id="bcp-until-time" name="until_time" type="time" required value="18:00" aria-label=(until_l);
            }
            " "
            button type="submit" class="danger-strong" { (lang.t("BCPモードを宣言", "Declare BCP mode")) }
        }
    }
}
