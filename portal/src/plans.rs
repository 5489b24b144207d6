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
    check_reason, hhmm, link, parse_date, parse_hhmm, query_param, see_other, write_failed, ymd,
};
use crate::html::{switch_link, Lang};
use crate::state::{Peer, PortalState};
use crate::views;
use crate::views::parts::Notice;
use crate::views::plans::{Chief, PlanRow, Plans};
use kakehashi_store::attendance as report;
use kakehashi_store::localtime::parse_month;

/// Plans can be submitted this many days ahead at most.
const MAX_DAYS_AHEAD: i64 = 366;
/// Decided plans shown to a chief.
const RECENT_DECIDED: usize = 30;

fn title(lang: Lang) -> &'static str {
    views::plans::title(lang)
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
    match plans_body(s, v, lang, q, notice.as_ref()).await {
        Ok(page) => (status, page).into_response(),
        Err(e) => Refused::from(e).page(lang, "/plans", q),
    }
}

fn plan_row<'a>(s: &PortalState, p: &'a Plan, who: Option<String>) -> PlanRow<'a> {
    PlanRow {
        plan: p,
        who,
        hours: format!("{}–{}", hhmm(p.start_min), hhmm(p.end_min)),
        decided: match (&p.decided_by, p.decided_at) {
            (Some(b), Some(t)) => Some(format!("{b} ({})", s.local_time(t))),
            _ => None,
        },
    }
}

async fn plans_body(
    s: &PortalState,
    v: &Visitor,
    lang: Lang,
    q: Option<&str>,
    notice: Option<&Notice>,
) -> kakehashi_store::Result<maud::Markup> {
    let store = s.store();
    let mine = store.plans_for_user(&v.user.id).await?;
    let tomorrow = s
        .local_now()
        .date()
        .next_day()
        .unwrap_or(s.local_now().date());

    // The chief's part.
    let mut dept_plans = Vec::new();
    let mut people = BTreeMap::new();
    let chief = v.has(Role::Chief);
    if chief {
        let dept = &v.user.department;
        people = store
            .list_users_in(dept)
            .await?
            .into_iter()
            .map(|u| (u.id, u.name))
            .collect();
        dept_plans = store.plans_for_department(dept).await?;
    }
    let who = |p: &Plan| {
        Some(format!(
            "{} ({})",
            people.get(&p.user_id).map_or("", String::as_str),
            p.user_id
        ))
    };
    let others = |p: &&Plan| p.user_id != v.user.id;
    let chief = chief.then(|| {
        let now = s.local_now();
        Chief {
            dept: &v.user.department,
            waiting: dept_plans
                .iter()
                .filter(others)
                .filter(|p| p.status == PlanStatus::Submitted)
                .map(|p| plan_row(s, p, who(p)))
                .collect(),
            decided: dept_plans
                .iter()
                .filter(others)
                .filter(|p| p.status != PlanStatus::Submitted)
                .take(RECENT_DECIDED)
                .map(|p| plan_row(s, p, who(p)))
                .collect(),
            month: format!("{:04}-{:02}", now.year(), u8::from(now.month())),
        }
    });
    let view = Plans {
        user: &v.user,
        csrf: &v.csrf,
        officer: v.has(Role::Officer),
        notice,
        tomorrow: ymd(tomorrow),
        mine: mine.iter().take(60).map(|p| plan_row(s, p, None)).collect(),
        chief,
    };
    Ok(views::plans::plans(
        lang,
        &switch_link("/plans", q, lang),
        &view,
    ))
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
