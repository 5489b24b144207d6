//! Telework plans on the portal: staff submit a plan (date, hours, place)
//! and see its status; a section chief (role `chief`) approves or rejects
//! the submitted plans of their own department. Audited as the CLI does
//! (`plan.submit`, `plan.approve`, `plan.reject`) with actor `user:<id>`;
//! an approval or rejection counts for live sessions within a second (the
//! gateway re-decides on every `plan.` audit record).
//!
//! | route | what |
//! |---|---|
//! | `GET /plans` | submit form, my plans; for chiefs, the department's plans waiting for a decision |
//! | `POST /plans` | form `csrf, date, start, end, place` |
//! | `POST /plans/decide` | form `csrf, id, decision=approve|reject, reason` (chief; reason required to reject) |
//! | `GET /plans/attendance.csv?month=YYYY-MM&lang=ja|en&bom=1` | the chief's own department's attendance report (`report.attendance`, audited) |
//!
//! A chief decides only plans of people in their own department, and never
//! their own plan (it goes to the chief above them, or to HR's CSV import).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use kakehashi_store::{Audit, Plan, PlanSpec, PlanStatus, Role};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::access::{get_refused, Need, Refused, Visitor};
use super::officer::{
    check_reason, csrf_input, hhmm, link, parse_date, parse_hhmm, query_param, see_other, who_line,
    write_failed, ymd, Notice,
};
use crate::html::{esc, html, page, switch_link, Lang};
use crate::state::{Peer, PortalState};
use kakehashi_store::attendance as report;
use kakehashi_store::localtime::parse_month;

/// Plans can be submitted this many days ahead at most.
const MAX_DAYS_AHEAD: i64 = 366;
/// Decided plans shown to a chief.
const RECENT_DECIDED: usize = 30;

fn title(lang: Lang) -> &'static str {
    lang.t("テレワーク計画", "Telework plans")
}

fn status_label(lang: Lang, s: PlanStatus) -> &'static str {
    match s {
        PlanStatus::Submitted => lang.t("承認待ち", "waiting for approval"),
        PlanStatus::Approved => lang.t("承認", "approved"),
        PlanStatus::Rejected => lang.t("却下", "rejected"),
        _ => lang.t("その他", "other"),
    }
}

/// `GET /plans`
pub(crate) async fn plans(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    match s.visitor(&headers, Need::PlanUser).await {
        Ok(v) => {
            let notice = match query_param(q.as_deref(), "done").as_deref() {
                Some("plan.submit") => Some(Notice::Ok(
                    lang.t(
                        "計画を提出しました。所属長の承認を待っています。",
                        "Plan submitted. It now waits for your section chief.",
                    )
                    .into(),
                )),
                Some("plan.approve") => Some(Notice::Ok(
                    lang.t("計画を承認しました。", "Plan approved.").into(),
                )),
                Some("plan.reject") => Some(Notice::Ok(
                    lang.t("計画を却下しました。", "Plan rejected.").into(),
                )),
                _ => None,
            };
            plans_page(&s, &v, lang, q.as_deref(), notice, StatusCode::OK).await
        }
        Err(r) => get_refused(r, lang, "/plans", q.as_deref(), title(lang)),
    }
}

async fn plans_page(
    s: &PortalState,
    v: &Visitor,
    lang: Lang,
    q: Option<&str>,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    match plans_body(s, v, lang, notice).await {
        Ok(body) => html(
            status,
            page(lang, title(lang), &switch_link("/plans", q, lang), &body),
        ),
        Err(e) => Refused::from(e).page(lang, "/plans", q),
    }
}

fn plan_row(s: &PortalState, lang: Lang, p: &Plan, who: Option<&str>) -> String {
    let who = who.map_or(String::new(), |w| format!("<td>{}</td>", esc(w)));
    format!(
        r#"<tr data-plan="{id}">{who}<td>{date}</td><td>{start}–{end}</td><td>{place}</td><td class="plan-{st}">{st_l}</td><td>{by}</td>"#,
        id = esc(&p.id),
        date = esc(&p.date),
        start = hhmm(p.start_min),
        end = hhmm(p.end_min),
        place = esc(&p.place),
        st = p.status.as_str(),
        st_l = status_label(lang, p.status),
        by = match (&p.decided_by, p.decided_at) {
            (Some(b), Some(t)) => format!("{} ({})", esc(b), s.local_time(t)),
            _ => "-".into(),
        },
    )
}

async fn plans_body(
    s: &PortalState,
    v: &Visitor,
    lang: Lang,
    notice: Option<Notice>,
) -> kakehashi_store::Result<String> {
    let store = s.store();
    let mine = store.plans_for_user(&v.user.id).await?;
    let mut out = String::new();
    out.push_str(&who_line(lang, v));
    if v.has(Role::Officer) {
        let _ = write!(
            out,
            r#"<p><a href="/officer{}">{}</a></p>"#,
            lang.query(),
            lang.t("情報セキュリティ担当のページへ", "Security officer pages")
        );
    }
    if let Some(n) = &notice {
        out.push_str(&n.html());
    }
    let _ = write!(
        out,
        r#"<p class="lead">{}</p>"#,
        lang.t(
            "在宅勤務などの計画を提出してください。所属長が承認した計画の時間内だけ、在宅から接続できます（ルールで計画が必要な場合）。",
            "Submit your telework plans. From home you can connect only inside the hours of a plan your section chief approved (where the rules require a plan)."
        )
    );

    // Submit.
    let tomorrow = s
        .local_now()
        .date()
        .next_day()
        .unwrap_or(s.local_now().date());
    let _ = write!(
        out,
        r#"<h2>{h}</h2>
<form id="plan-form" class="card" method="post" action="{action}">{csrf}
<div class="form-grid">
<label for="plan-date">{date_l}</label><input id="plan-date" name="date" type="date" required value="{date}">
<label for="plan-start">{start_l}</label><input id="plan-start" name="start" type="time" required value="08:30">
<label for="plan-end">{end_l}</label><input id="plan-end" name="end" type="time" required value="17:15">
<label for="plan-place">{place_l}</label><input id="plan-place" name="place" type="text" required maxlength="80" value="{place}">
</div>
<button type="submit" id="plan-submit">{submit}</button>
</form>"#,
        h = lang.t("計画を提出する", "Submit a plan"),
        action = link("/plans", lang, &[]),
        csrf = csrf_input(v),
        date_l = lang.t("日付", "Date"),
        date = ymd(tomorrow),
        start_l = lang.t("開始", "Start"),
        end_l = lang.t("終了", "End"),
        place_l = lang.t("勤務場所", "Place"),
        place = lang.t("自宅", "home"),
        submit = lang.t("提出", "Submit"),
    );

    // Mine.
    let _ = write!(out, "<h2>{}</h2>", lang.t("自分の計画", "My plans"));
    if mine.is_empty() {
        let _ = write!(
            out,
            r#"<p class="muted">{}</p>"#,
            lang.t("提出した計画はありません。", "No plans yet.")
        );
    } else {
        let _ = write!(
            out,
            r#"<table id="my-plans"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
            lang.t("日付", "Date"),
            lang.t("時間", "Hours"),
            lang.t("場所", "Place"),
            lang.t("状態", "Status"),
            lang.t("判断者", "Decided by"),
        );
        for p in mine.iter().take(60) {
            out.push_str(&plan_row(s, lang, p, None));
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
    }

    // The chief's part.
    if v.has(Role::Chief) {
        let dept = &v.user.department;
        let people: BTreeMap<String, String> = store
            .list_users_in(dept)
            .await?
            .into_iter()
            .map(|u| (u.id, u.name))
            .collect();
        let plans = store.plans_for_department(dept).await?;
        let others = |p: &&Plan| p.user_id != v.user.id;
        let waiting: Vec<&Plan> = plans
            .iter()
            .filter(others)
            .filter(|p| p.status == PlanStatus::Submitted)
            .collect();
        let who = |p: &Plan| {
            format!(
                "{} ({})",
                people.get(&p.user_id).map_or("", String::as_str),
                p.user_id
            )
        };
        let _ = write!(
            out,
            "<h2>{} {}</h2>",
            esc(dept),
            lang.t("の承認待ちの計画", ": plans waiting for your decision")
        );
        if waiting.is_empty() {
            let _ = write!(
                out,
                r#"<p class="muted" id="no-waiting">{}</p>"#,
                lang.t("承認待ちの計画はありません。", "Nothing is waiting.")
            );
        } else {
            let _ = write!(
                out,
                r#"<table id="waiting-plans"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
                lang.t("職員", "Person"),
                lang.t("日付", "Date"),
                lang.t("時間", "Hours"),
                lang.t("場所", "Place"),
                lang.t("状態", "Status"),
                lang.t("判断者", "Decided by"),
                lang.t("判断", "Decision"),
            );
            for p in waiting {
                out.push_str(&plan_row(s, lang, p, Some(&who(p))));
                let _ = write!(
                    out,
                    r#"<td><form method="post" action="{action}" class="row-form">{csrf}<input type="hidden" name="id" value="{id}">
<input name="reason" type="text" maxlength="500" aria-label="{reason_l}" placeholder="{reason_l}">
<button type="submit" name="decision" value="approve" class="small">{approve}</button>
<button type="submit" name="decision" value="reject" class="danger">{reject}</button></form></td></tr>"#,
                    action = link("/plans/decide", lang, &[]),
                    csrf = csrf_input(v),
                    id = esc(&p.id),
                    reason_l = lang.t("理由（却下のときは必須）", "Reason (required to reject)"),
                    approve = lang.t("承認", "Approve"),
                    reject = lang.t("却下", "Reject"),
                );
            }
            out.push_str("</tbody></table>");
        }
        let decided: Vec<&Plan> = plans
            .iter()
            .filter(others)
            .filter(|p| p.status != PlanStatus::Submitted)
            .take(RECENT_DECIDED)
            .collect();
        if !decided.is_empty() {
            let _ = write!(
                out,
                r#"<h2>{}</h2><table id="decided-plans"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
                lang.t("判断済みの計画", "Decided plans"),
                lang.t("職員", "Person"),
                lang.t("日付", "Date"),
                lang.t("時間", "Hours"),
                lang.t("場所", "Place"),
                lang.t("状態", "Status"),
                lang.t("判断者", "Decided by"),
            );
            for p in decided {
                out.push_str(&plan_row(s, lang, p, Some(&who(p))));
                out.push_str("</tr>");
            }
            out.push_str("</tbody></table>");
        }
        out.push_str(&attendance_form(s, lang));
    }
    Ok(out)
}

/// `POST /plans` form.
#[derive(Debug, Deserialize)]
pub(crate) struct SubmitForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    date: String,
    #[serde(default)]
    start: String,
    #[serde(default)]
    end: String,
    #[serde(default)]
    place: String,
}

/// `POST /plans`: submit a plan for oneself (`plan.submit`).
pub(crate) async fn submit(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<SubmitForm>, FormRejection>,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let (v, f) = match s
        .accept_form(
            &headers,
            Need::PlanUser,
            form,
            (lang, "/plans", q.as_deref()),
        )
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    let fail = |n: Notice, status: StatusCode| {
        let (s, v, q) = (s.clone(), v.clone(), q.clone());
        async move { plans_page(&s, &v, lang, q.as_deref(), Some(n), status).await }
    };
    let bad = |ja: &'static str, en: &'static str| Notice::Error(lang.t(ja, en).to_owned());
    let today = s.local_now().date();
    let Some(date) = parse_date(&f.date) else {
        return fail(
            bad("日付が正しくありません。", "The date is not valid."),
            StatusCode::BAD_REQUEST,
        )
        .await;
    };
    if date < today || (date - today).whole_days() > MAX_DAYS_AHEAD {
        return fail(
            bad(
                "日付は今日から1年以内にしてください。",
                "The date must be between today and a year from now.",
            ),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let (Some(start), Some(end)) = (parse_hhmm(&f.start), parse_hhmm(&f.end)) else {
        return fail(
            bad("時刻が正しくありません。", "The times are not valid."),
            StatusCode::BAD_REQUEST,
        )
        .await;
    };
    if start >= end {
        return fail(
            bad(
                "開始は終了より前にしてください。",
                "The start must be before the end.",
            ),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let place = f.place.trim();
    if place.is_empty() || place.chars().count() > 80 || place.chars().any(char::is_control) {
        return fail(
            bad(
                "勤務場所を80文字以内で入力してください。",
                "Enter the place (at most 80 characters).",
            ),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let spec = PlanSpec {
        user_id: v.user.id.clone(),
        date: ymd(date),
        start_min: start,
        end_min: end,
        place: place.to_owned(),
    };
    let a = Audit::new(s.now(), v.actor(), "plan.submit")
        .subject(&v.user.id)
        .detail(json!({
            "date": spec.date, "start": hhmm(start), "end": hhmm(end), "place": spec.place,
            "via": "portal", "source": ip.to_string(),
        }));
    match s.store().submit_plan(&spec, a).await {
        Ok(p) => {
            info!(user = %v.user.id, plan = %p.id, date = %p.date, "Telework plan submitted from the portal");
            see_other(&link("/plans", lang, &[("done", "plan.submit")]))
        }
        Err(e) => {
            let (st, n) = write_failed(lang, e);
            fail(n, st).await
        }
    }
}

/// `POST /plans/decide` form.
#[derive(Debug, Deserialize)]
pub(crate) struct DecideForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    reason: String,
}

/// `POST /plans/decide`: a chief approves or rejects a plan of their department.
pub(crate) async fn decide(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<DecideForm>, FormRejection>,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let (v, f) = match s
        .accept_form(&headers, Need::Chief, form, (lang, "/plans", q.as_deref()))
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    let fail = |n: Notice, status: StatusCode| {
        let (s, v, q) = (s.clone(), v.clone(), q.clone());
        async move { plans_page(&s, &v, lang, q.as_deref(), Some(n), status).await }
    };
    let bad = |ja: &'static str, en: &'static str| Notice::Error(lang.t(ja, en).to_owned());
    let approve = match f.decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => {
            return fail(
                bad("承認か却下を選んでください。", "Choose approve or reject."),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
    };
    let reason = match check_reason(lang, &f.reason, !approve) {
        Ok(r) => r,
        Err(n) => return fail(n, StatusCode::BAD_REQUEST).await,
    };
    let plan = match s.store().get_plan(f.id.trim()).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            let (st, n) = write_failed(lang, kakehashi_store::Error::NotFound { what: "plan" });
            return fail(n, st).await;
        }
        Err(e) => return Refused::from(e).page(lang, "/plans", q.as_deref()),
    };
    // Only plans of one's own department, never one's own.
    let owner_dept = match s.store().get_user(&plan.user_id).await {
        Ok(u) => u.map(|u| u.department),
        Err(e) => return Refused::from(e).page(lang, "/plans", q.as_deref()),
    };
    if owner_dept.as_deref() != Some(v.user.department.as_str()) {
        return fail(
            bad(
                "この計画はあなたの所属の職員のものではないため、判断できません。",
                "This plan is not from your department: you cannot decide it.",
            ),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    if plan.user_id == v.user.id {
        return fail(
            bad(
                "自分の計画は自分で承認できません。上位の所属長に依頼してください。",
                "You cannot decide your own plan: ask the chief above you.",
            ),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    let action = if approve {
        "plan.approve"
    } else {
        "plan.reject"
    };
    let a = Audit::new(s.now(), v.actor(), action)
        .subject(&plan.id)
        .reason(&reason)
        .detail(json!({
            "user": plan.user_id, "date": plan.date, "via": "portal", "source": ip.to_string(),
        }));
    match s.store().decide_plan(&plan.id, approve, a).await {
        Ok(p) => {
            info!(user = %v.user.id, plan = %p.id, status = %p.status, "Telework plan decided from the portal");
            see_other(&link("/plans", lang, &[("done", action)]))
        }
        Err(e) => {
            let (st, n) = write_failed(lang, e);
            fail(n, st).await
        }
    }
}

/// The chief's attendance report form (`GET /plans/attendance.csv`).
fn attendance_form(s: &PortalState, lang: Lang) -> String {
    let now = s.local_now();
    let month = format!("{:04}-{:02}", now.year(), u8::from(now.month()));
    let (ja, en) = match lang {
        Lang::Ja => (" selected", ""),
        Lang::En => ("", " selected"),
    };
    format!(
        r#"<h2>{h}</h2>
<form id="attendance-form" class="card" method="get" action="/plans/attendance.csv">
<p class="muted">{lead}</p>
<div class="form-grid">
<label for="attendance-month">{month_l}</label><input id="attendance-month" name="month" type="month" required value="{month}">
<label for="attendance-lang">{lang_l}</label><select id="attendance-lang" name="lang"><option value="ja"{ja}>日本語</option><option value="en"{en}>English</option></select>
<label for="attendance-bom">{bom_l}</label><input id="attendance-bom" name="bom" type="checkbox" value="1" checked>
</div>
<button type="submit" id="attendance-download">{submit}</button>
</form>"#,
        h = lang.t("勤務実績レポート", "Attendance report"),
        lead = lang.t(
            "所属の職員ごと・日ごとの最初の開始、最後の終了、接続時間を CSV で取得します。取得は監査ログに記録されます。",
            "Per person per day in your department: first start, last end and connected time, as CSV. Downloads are recorded in the audit log."
        ),
        month_l = lang.t("月", "Month"),
        lang_l = lang.t("見出しの言語", "Header language"),
        bom_l = lang.t("Excel 用（BOM 付き）", "For Excel (byte order mark)"),
        submit = lang.t("CSV をダウンロード", "Download CSV"),
    )
}

/// `attendance-<dept>-YYYY-MM.csv` as a `Content-Disposition` value: an
/// ASCII `filename` (other characters as `_`) and, for the real
/// department name, an RFC 5987 `filename*`.
pub(super) fn attendance_disposition(dept: &str, month: &str) -> String {
    let mut safe = String::new();
    for c in dept.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            safe.push(c);
        } else if !safe.ends_with('_') {
            safe.push('_');
        }
    }
    let safe = safe.trim_matches('_');
    let safe = if safe.is_empty() { "dept" } else { safe };
    let mut out = format!(r#"attachment; filename="attendance-{safe}-{month}.csv""#);
    if safe != dept {
        let mut enc = String::new();
        for b in format!("attendance-{dept}-{month}.csv").bytes() {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                enc.push(char::from(b));
            } else {
                let _ = write!(enc, "%{b:02X}");
            }
        }
        let _ = write!(out, "; filename*=UTF-8''{enc}");
    }
    out
}

/// `GET /plans/attendance.csv?month=YYYY-MM[&lang=ja|en][&bom=1]`: the
/// attendance report of the chief's own department, as the CLI's
/// `report attendance --dept` writes it; audited as `report.attendance`.
/// A `dept` other than the chief's own is refused.
pub(crate) async fn attendance_csv(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    const PATH: &str = "/plans/attendance.csv";
    let lang = Lang::from_query(q.as_deref());
    let v = match s.visitor(&headers, Need::ChiefReport).await {
        Ok(v) => v,
        Err(r) => return get_refused(r, lang, PATH, q.as_deref(), title(lang)),
    };
    let fail = |n: Notice, status: StatusCode| {
        let (s, v, q) = (s.clone(), v.clone(), q.clone());
        async move { plans_page(&s, &v, lang, q.as_deref(), Some(n), status).await }
    };
    let dept = v.user.department.clone();
    if query_param(q.as_deref(), "dept").is_some_and(|d| d != dept) {
        return fail(
            Notice::Error(
                lang.t(
                    "勤務実績レポートは自分の所属の分だけ取得できます。",
                    "You can download the attendance report of your own department only.",
                )
                .into(),
            ),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    let month = query_param(q.as_deref(), "month").unwrap_or_default();
    let Ok(days) = parse_month(month.trim()) else {
        return fail(
            Notice::Error(
                lang.t(
                    "月が正しくありません。YYYY-MM の形式（例: 2025-01）で指定してください。",
                    "The month is not valid: give it as YYYY-MM (for example 2025-01).",
                )
                .into(),
            ),
            StatusCode::BAD_REQUEST,
        )
        .await;
    };
    let first = *days.start();
    let month = format!("{:04}-{:02}", first.year(), u8::from(first.month()));
    let csv_lang = match lang {
        Lang::Ja => report::Lang::Ja,
        Lang::En => report::Lang::En,
    };
    let bom = matches!(
        query_param(q.as_deref(), "bom").as_deref(),
        Some("1" | "on" | "true")
    );
    let offset = s.offset();
    let rows = match report::people(s.store(), Some(&dept)).await {
        Ok(people) => {
            report::read_rows(s.store(), &people, days, offset, s.now(), Some(&dept)).await
        }
        Err(e) => Err(e),
    };
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return Refused::from(e).page(lang, PATH, q.as_deref()),
    };
    let mut body = Vec::new();
    if let Err(e) = report::write_csv(&rows, offset, csv_lang, bom, &mut body) {
        tracing::error!(error = %e, "Attendance CSV could not be written");
        return Refused::Internal.page(lang, PATH, q.as_deref());
    }
    // Personal data leaves the gateway: record who took it before it goes.
    let a = Audit::new(s.now(), v.actor(), "report.attendance")
        .subject(&dept)
        .detail(json!({
            "month": month, "rows": rows.len(), "lang": lang.code(), "bom": bom,
            "via": "portal", "source": ip.to_string(),
        }));
    if let Err(e) = s.store().append_audit(a).await {
        return Refused::from(e).page(lang, PATH, q.as_deref());
    }
    info!(user = %v.user.id, dept = %dept, month = %month, rows = rows.len(), "Attendance report downloaded from the portal");
    let disposition = attendance_disposition(&dept, &month);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition)
                    .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
            ),
        ],
        body,
    )
        .into_response()
}

super::access::csrf_forms!(SubmitForm, DecideForm);
