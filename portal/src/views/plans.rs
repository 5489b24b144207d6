//! `GET /plans`: submit a telework plan, my plans; for a section chief,
//! the department's plans waiting for a decision, the decided ones, and
//! the attendance report form.

use kakehashi_store::{Plan, PlanStatus, User};
use maud::{html, Markup};

use super::layout::page;
use super::parts::{csrf_input, who_line, Notice};
use crate::html::Lang;

/// The page title.
pub(crate) fn title(lang: Lang) -> &'static str {
    lang.t("テレワーク計画", "Telework plans")
}

/// Everything the page shows.
#[derive(Debug)]
pub(crate) struct Plans<'a> {
    pub(crate) user: &'a User,
    /// The session's CSRF token.
    pub(crate) csrf: &'a str,
    /// Whether to link to the officer pages.
    pub(crate) officer: bool,
    pub(crate) notice: Option<&'a Notice>,
    /// The submit form's date (`YYYY-MM-DD`).
    pub(crate) tomorrow: String,
    pub(crate) mine: Vec<PlanRow<'a>>,
    /// The section chief's part.
    pub(crate) chief: Option<Chief<'a>>,
}

/// One plan in a table.
#[derive(Debug)]
pub(crate) struct PlanRow<'a> {
    pub(crate) plan: &'a Plan,
    /// Whose plan, in the chief's tables.
    pub(crate) who: Option<String>,
    /// `HH:MM–HH:MM`.
    pub(crate) hours: String,
    /// Who decided, and when (local time).
    pub(crate) decided: Option<String>,
}

/// What a section chief sees of their department.
#[derive(Debug)]
pub(crate) struct Chief<'a> {
    pub(crate) dept: &'a str,
    pub(crate) waiting: Vec<PlanRow<'a>>,
    pub(crate) decided: Vec<PlanRow<'a>>,
    /// The attendance form's month (`YYYY-MM`).
    pub(crate) month: String,
}

fn status_label(lang: Lang, s: PlanStatus) -> &'static str {
    match s {
        PlanStatus::Submitted => lang.t("承認待ち", "waiting for approval"),
        PlanStatus::Approved => lang.t("承認", "approved"),
        PlanStatus::Rejected => lang.t("却下", "rejected"),
        _ => lang.t("その他", "other"),
    }
}

/// A plan's cells (the `<tr>` is the caller's, which may add a cell).
fn cells(lang: Lang, r: &PlanRow<'_>) -> Markup {
    let p = r.plan;
    html! {
        @if let Some(w) = &r.who {
            td { (w) }
        }
        td { (p.date) }
        td { (r.hours) }
        td { (p.place) }
        td class={ "plan-" (p.status.as_str()) } { (status_label(lang, p.status)) }
        td { (r.decided.as_deref().unwrap_or("-")) }
    }
}

/// The header row of a plan table.
fn head(lang: Lang, who: bool, decision: bool) -> Markup {
    html! {
        thead { tr {
            @if who {
                th { (lang.t("職員", "Person")) }
            }
            th { (lang.t("日付", "Date")) }
            th { (lang.t("時間", "Hours")) }
            th { (lang.t("場所", "Place")) }
            th { (lang.t("状態", "Status")) }
            th { (lang.t("判断者", "Decided by")) }
            @if decision {
                th { (lang.t("判断", "Decision")) }
            }
        } }
    }
}

/// The plans page; `switch` is the same page in the other language.
pub(crate) fn plans(lang: Lang, switch: &str, v: &Plans<'_>) -> Markup {
    let lq = lang.query();
    let body = html! {
        (who_line(lang, v.user, v.csrf))
        @if v.officer {
            p { a href={ "/officer" (lq) } { (lang.t("情報セキュリティ担当のページへ", "Security officer pages")) } }
        }
        @if let Some(n) = v.notice {
            (n)
        }
        p class="lead" {
            (lang.t(
                "在宅勤務などの計画を提出してください。所属長が承認した計画の時間内だけ、在宅から接続できます（ルールで計画が必要な場合）。",
                "Submit your telework plans. From home you can connect only inside the hours of a plan your section chief approved (where the rules require a plan)."
            ))
        }

        h2 { (lang.t("計画を提出する", "Submit a plan")) }
        form id="plan-form" class="card" method="post" action={ "/plans" (lq) } {
            (csrf_input(v.csrf))
            div class="form-grid" {
                label for="plan-date" { (lang.t("日付", "Date")) }
                input id="plan-date" name="date" type="date" required value=(v.tomorrow);
                label for="plan-start" { (lang.t("開始", "Start")) }
                input id="plan-start" name="start" type="time" required value="08:30";
                label for="plan-end" { (lang.t("終了", "End")) }
                input id="plan-end" name="end" type="time" required value="17:15";
                label for="plan-place" { (lang.t("勤務場所", "Place")) }
                input id="plan-place" name="place" type="text" required maxlength="80" value=(lang.t("自宅", "home"));
            }
            button type="submit" id="plan-submit" { (lang.t("提出", "Submit")) }
        }

        h2 { (lang.t("自分の計画", "My plans")) }
        @if v.mine.is_empty() {
            p class="muted" { (lang.t("提出した計画はありません。", "No plans yet.")) }
        } @else {
            table id="my-plans" {
                (head(lang, false, false))
                tbody {
                    @for r in &v.mine {
                        tr data-plan=(r.plan.id) { (cells(lang, r)) }
                    }
                }
            }
        }

        @if let Some(c) = &v.chief {
            (chief(lang, v.csrf, c))
        }
    };
    page(lang, title(lang), switch, body)
}

/// The section chief's part of the page.
fn chief(lang: Lang, csrf: &str, c: &Chief<'_>) -> Markup {
    let lq = lang.query();
    let reason_l = lang.t("理由（却下のときは必須）", "Reason (required to reject)");
    html! {
        h2 { (c.dept) " " (lang.t("の承認待ちの計画", ": plans waiting for your decision")) }
        @if c.waiting.is_empty() {
            p class="muted" id="no-waiting" { (lang.t("承認待ちの計画はありません。", "Nothing is waiting.")) }
        } @else {
            table id="waiting-plans" {
                (head(lang, true, true))
                tbody {
                    @for r in &c.waiting {
                        tr data-plan=(r.plan.id) {
                            (cells(lang, r))
                            td {
                                form method="post" action={ "/plans/decide" (lq) } class="row-form" {
                                    (csrf_input(csrf))
                                    input type="hidden" name="id" value=(r.plan.id);
                                    input name="reason" type="text" maxlength="500" aria-label=(reason_l) placeholder=(reason_l);
                                    button type="submit" name="decision" value="approve" class="small" { (lang.t("承認", "Approve")) }
                                    button type="submit" name="decision" value="reject" class="danger" { (lang.t("却下", "Reject")) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !c.decided.is_empty() {
            h2 { (lang.t("判断済みの計画", "Decided plans")) }
            table id="decided-plans" {
                (head(lang, true, false))
                tbody {
                    @for r in &c.decided {
                        tr data-plan=(r.plan.id) { (cells(lang, r)) }
                    }
                }
            }
        }
        (attendance_form(lang, &c.month))
    }
}

/// The chief's attendance report form (`GET /plans/attendance.csv`).
fn attendance_form(lang: Lang, month: &str) -> Markup {
    html! {
        h2 { (lang.t("勤務実績レポート", "Attendance report")) }
        form id="attendance-form" class="card" method="get" action="/plans/attendance.csv" {
            p class="muted" {
                (lang.t(
                    "所属の職員ごと・日ごとの最初の開始、最後の終了、接続時間を CSV で取得します。取得は監査ログに記録されます。",
                    "Per person per day in your department: first start, last end and connected time, as CSV. Downloads are recorded in the audit log."
                ))
            }
            div class="form-grid" {
                label for="attendance-month" { (lang.t("月", "Month")) }
                input id="attendance-month" name="month" type="month" required value=(month);
                label for="attendance-lang" { (lang.t("見出しの言語", "Header language")) }
                select id="attendance-lang" name="lang" {
                    option value="ja" selected[lang == Lang::Ja] { "日本語" }
                    option value="en" selected[lang == Lang::En] { "English" }
                }
                label for="attendance-bom" { (lang.t("Excel 用（BOM 付き）", "For Excel (byte order mark)")) }
                input id="attendance-bom" name="bom" type="checkbox" value="1" checked;
            }
            button type="submit" id="attendance-download" { (lang.t("CSV をダウンロード", "Download CSV")) }
        }
    }
}
