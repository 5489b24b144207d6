//! BCP: declare and end BCP mode, and the banner every page carries while
//! a declaration is in force.

use super::*;

/// `GET /officer/bcp`
pub(crate) async fn bcp(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let title = lang.t("BCPモード", "BCP mode");
    match s.visitor(&headers, Need::Officer).await {
        Ok(v) => {
            let notice = done_notice(lang, q.as_deref());
            bcp_page(&s, &v, lang, q.as_deref(), notice, StatusCode::OK).await
        }
        Err(r) => get_refused(r, lang, "/officer/bcp", q.as_deref(), title),
    }
}

fn scope_name(lang: Lang, scope: &BcpScope) -> String {
    match scope {
        BcpScope::All => lang.t("全職員", "everyone").to_owned(),
        BcpScope::Department(d) => d.clone(),
    }
}

async fn bcp_page(
    s: &PortalState,
    v: &Visitor,
    lang: Lang,
    q: Option<&str>,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let title = lang.t("BCPモード", "BCP mode");
    let now = s.now();
    let (all, users) = match tokio::try_join!(s.store().list_bcp(), s.store().list_users()) {
        Ok(x) => x,
        Err(e) => return Refused::from(e).page(lang, "/officer/bcp", q),
    };
    let depts: BTreeSet<&str> = users.iter().map(|u| u.department.as_str()).collect();
    let mut out = officer_head(
        lang,
        v,
        "/officer/bcp",
        notice.as_ref(),
        lang.t(
            "大雪・感染症・災害などで出勤が難しいときに宣言します。ポリシーの bcp_default_relax に書かれた内容（既定: レベル1・2の在宅・モバイルで、計画の承認と勤務時間の制限を不要にする）だけを緩和し、期限が来ると自動的に終わります。レベル3の在宅と個人番号利用事務系は緩和されません。",
            "Declare it when people cannot come in (snow, pandemic, disaster). It relaxes only what the policy's bcp_default_relax says (by default: no approved plan and no hour window for levels 1 and 2 from home and mobile) and ends by itself at its expiry. Level 3 from home and the My Number segment are never relaxed."
        ),
    );
    // In force.
    let active: Vec<&Bcp> = all.iter().filter(|b| b.is_active(now)).collect();
    let _ = write!(out, "<h2>{}</h2>", lang.t("実施中の宣言", "In force"));
    if active.is_empty() {
        let _ = write!(
            out,
            r#"<p class="muted" id="bcp-none">{}</p>"#,
            lang.t(
                "実施中のBCP宣言はありません。",
                "No BCP declaration is in force."
            )
        );
    } else {
        let _ = write!(
            out,
            r#"<table id="bcp-active"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
            lang.t("対象", "Scope"),
            lang.t("理由", "Reason"),
            lang.t("期限", "Until"),
            lang.t("宣言者", "Declared by"),
            lang.t("終了", "End"),
        );
        for b in &active {
            let _ = write!(
                out,
                r#"<tr data-bcp="{id}"><td>{scope}</td><td>{reason}</td><td>{until}</td><td>{by}</td><td>
<form method="post" action="{action}" class="row-form">{csrf}<input type="hidden" name="id" value="{id}">
<input name="reason" type="text" required maxlength="{MAX_REASON_CHARS}" aria-label="{reason_l}" placeholder="{reason_l}">
<button type="submit" class="danger">{submit}</button></form></td></tr>"#,
                id = esc(&b.id),
                scope = esc(&scope_name(lang, &b.scope)),
                reason = esc(&b.reason),
                until = s.local_time(b.ends_at),
                by = esc(&b.declared_by),
                action = link("/officer/bcp/end", lang, &[]),
                csrf = csrf_input(v),
                reason_l = lang.t("終了の理由（必須）", "Why end it (required)"),
                submit = lang.t("今すぐ終了", "End now"),
            );
        }
        out.push_str("</tbody></table>");
    }

    // Declare.
    let tomorrow = s
        .local_now()
        .date()
        .next_day()
        .unwrap_or(s.local_now().date());
    let mut dept_options = String::new();
    for d in &depts {
        let _ = write!(dept_options, r#"<option value="{}">"#, esc(d));
    }
    let _ = write!(
        out,
        r#"<h2>{h}</h2>
<form id="bcp-declare" class="card" method="post" action="{action}">{csrf}
<fieldset class="plain"><legend>{scope_l}</legend>
<label class="inline-label"><input type="radio" name="scope" value="all" checked> {all}</label>
<label class="inline-label"><input type="radio" name="scope" value="dept"> {dept_only}</label>
<input id="bcp-dept" name="dept" type="text" maxlength="128" list="bcp-depts" aria-label="{dept_l}" placeholder="{dept_l}">
<datalist id="bcp-depts">{dept_options}</datalist>
</fieldset>
<label for="bcp-reason">{reason_l}</label>
<input id="bcp-reason" name="reason" type="text" required maxlength="{MAX_REASON_CHARS}" placeholder="{reason_ph}">
<label for="bcp-until-date">{until_l}</label>
<span class="datetime"><input id="bcp-until-date" name="until_date" type="date" required value="{until_date}"> <input id="bcp-until-time" name="until_time" type="time" required value="18:00" aria-label="{until_l}"></span>
<button type="submit" class="danger-strong">{submit}</button>
</form>"#,
        h = lang.t("BCPモードを宣言する", "Declare BCP mode"),
        action = link("/officer/bcp/declare", lang, &[]),
        csrf = csrf_input(v),
        scope_l = lang.t("対象", "Scope"),
        all = lang.t("全職員", "Everyone"),
        dept_only = lang.t("次の所属のみ:", "Only this department:"),
        dept_l = lang.t("所属", "Department"),
        reason_l = lang.t(
            "理由（必須・お知らせに表示され、監査ログに記録）",
            "Reason (required; shown in the banner and kept in the audit log)"
        ),
        reason_ph = lang.t("例: 大雪のため", "e.g. heavy snow"),
        until_l = lang.t(
            "終了日時（この時刻に自動で終了）",
            "Ends at (automatically)"
        ),
        until_date = ymd(tomorrow),
        submit = lang.t("BCPモードを宣言", "Declare BCP mode"),
    );

    // History.
    let past: Vec<&Bcp> = all.iter().filter(|b| !b.is_active(now)).take(50).collect();
    if !past.is_empty() {
        let _ = write!(
            out,
            r#"<h2>{}</h2><table id="bcp-history"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
            lang.t("過去の宣言", "Past declarations"),
            lang.t("対象", "Scope"),
            lang.t("理由", "Reason"),
            lang.t("期間", "Period"),
            lang.t("宣言者／終了者", "Declared / ended by"),
        );
        for b in past {
            let end = b.ended_at.unwrap_or(b.ends_at).min(b.ends_at);
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{} – {}</td><td>{} / {}</td></tr>",
                esc(&scope_name(lang, &b.scope)),
                esc(&b.reason),
                s.local_time(b.starts_at),
                s.local_time(end),
                esc(&b.declared_by),
                esc(b.ended_by.as_deref().unwrap_or(lang.t("期限", "expiry"))),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</div>");
    html(
        status,
        page(lang, title, &switch_link("/officer/bcp", q, lang), &out),
    )
}

/// `POST /officer/bcp/declare` form.
#[derive(Debug, Deserialize)]
pub(crate) struct DeclareForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    dept: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    until_date: String,
    #[serde(default)]
    until_time: String,
}

/// `POST /officer/bcp/declare`: as `bcp declare` (the relaxation is the
/// policy's `bcp_default_relax`).
pub(crate) async fn bcp_declare(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<DeclareForm>, FormRejection>,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let path = "/officer/bcp";
    let (v, f) = match s
        .accept_form(&headers, Need::Officer, form, (lang, path, q.as_deref()))
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    let fail = |n: Notice, status: StatusCode| {
        let (s, v, q) = (s.clone(), v.clone(), q.clone());
        async move { bcp_page(&s, &v, lang, q.as_deref(), Some(n), status).await }
    };
    let bad = |ja: &'static str, en: &'static str| Notice::Error(lang.t(ja, en).to_owned());
    let reason = match check_reason(lang, &f.reason, true) {
        Ok(r) => r,
        Err(n) => return fail(n, StatusCode::BAD_REQUEST).await,
    };
    let scope = match (f.scope.as_str(), f.dept.trim()) {
        ("all", _) => BcpScope::All,
        ("dept", d) if !d.is_empty() && d != "*" => BcpScope::Department(d.to_owned()),
        _ => {
            let n = bad(
                "対象の所属を入力してください。",
                "Enter the department it covers.",
            );
            return fail(n, StatusCode::BAD_REQUEST).await;
        }
    };
    let now = s.now();
    let until = match local_instant(&f.until_date, &f.until_time, s.offset()) {
        Some(t) if t.unix_timestamp() > now => t.unix_timestamp(),
        Some(_) => {
            let n = bad(
                "終了日時は現在より後にしてください。",
                "The end must be in the future.",
            );
            return fail(n, StatusCode::BAD_REQUEST).await;
        }
        None => {
            let n = bad("終了日時が正しくありません。", "The end time is not valid.");
            return fail(n, StatusCode::BAD_REQUEST).await;
        }
    };
    let policy = match s.store().current_policy().await {
        Ok(Some(d)) => match kakehashi_relay::admission::parse_policy(&d.text) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "The stored policy does not parse");
                return Refused::Internal.page(lang, path, q.as_deref());
            }
        },
        Ok(None) => {
            let n = bad(
                "ポリシーがまだ保存されていません（ゲートウェイを一度起動してください）。",
                "No policy saved yet (start the gateway once).",
            );
            return fail(n, StatusCode::CONFLICT).await;
        }
        Err(e) => return Refused::from(e).page(lang, path, q.as_deref()),
    };
    let relax = serde_json::to_value(&policy.bcp_default_relax).unwrap_or(Value::Null);
    let spec = BcpSpec {
        scope,
        reason: reason.clone(),
        relax: relax.clone(),
        starts_at: now,
        ends_at: until,
    };
    let subject = match &spec.scope {
        BcpScope::All => "all".to_owned(),
        BcpScope::Department(d) => d.clone(),
    };
    let a = Audit::new(now, v.actor(), "bcp.declare")
        .subject(&subject)
        .reason(&reason)
        .detail(
            json!({ "until": until, "relax": relax, "via": "portal", "source": ip.to_string() }),
        );
    match s.store().declare_bcp(&spec, a).await {
        Ok(b) => {
            info!(user = %v.user.id, bcp = %b.id, scope = %subject, until, "BCP declared from the portal");
            see_other(&link(path, lang, &[("done", "bcp.declare"), ("id", &b.id)]))
        }
        Err(e) => {
            let (st, n) = write_failed(lang, e);
            fail(n, st).await
        }
    }
}

/// `POST /officer/bcp/end` form.
#[derive(Debug, Deserialize)]
pub(crate) struct EndForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    reason: String,
}

/// `POST /officer/bcp/end`: as `bcp end --id`.
pub(crate) async fn bcp_end(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<EndForm>, FormRejection>,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let path = "/officer/bcp";
    let (v, f) = match s
        .accept_form(&headers, Need::Officer, form, (lang, path, q.as_deref()))
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    let fail = |n: Notice, status: StatusCode| {
        let (s, v, q) = (s.clone(), v.clone(), q.clone());
        async move { bcp_page(&s, &v, lang, q.as_deref(), Some(n), status).await }
    };
    let reason = match check_reason(lang, &f.reason, true) {
        Ok(r) => r,
        Err(n) => return fail(n, StatusCode::BAD_REQUEST).await,
    };
    let id = f.id.trim().to_owned();
    let a = Audit::new(s.now(), v.actor(), "bcp.end")
        .subject(&id)
        .reason(&reason)
        .detail(json!({ "via": "portal", "source": ip.to_string() }));
    match s.store().end_bcp(&id, a).await {
        Ok(_) => {
            info!(user = %v.user.id, bcp = %id, "BCP ended from the portal");
            see_other(&link(path, lang, &[("done", "bcp.end"), ("id", &id)]))
        }
        Err(e) => {
            let (st, n) = write_failed(lang, e);
            fail(n, st).await
        }
    }
}

/// The banner for the declarations in force, in the page's language.
fn banner_html(s: &PortalState, lang: Lang, active: &[Bcp]) -> String {
    let mut out =
        String::from(r#"<div id="bcp-banner" class="bcp-banner" role="status"><div class="wrap">"#);
    for b in active {
        let _ = write!(
            out,
            r#"<p><strong>{title}</strong> {scope_l}: {scope} ／ {reason_l}: {reason} ／ {until_l}: {until}{until_t}</p>"#,
            title = lang.t("BCPモード実施中", "BCP mode in force"),
            scope_l = lang.t("対象", "scope"),
            scope = esc(&scope_name(lang, &b.scope)),
            reason_l = lang.t("理由", "reason"),
            reason = esc(&b.reason),
            until_l = lang.t("期限", "until"),
            until = s.local_time(b.ends_at),
            until_t = lang.t(" まで", ""),
        );
    }
    out.push_str("</div></div>");
    out
}

/// Puts the BCP banner into every HTML page while a declaration is in
/// force (one store read per HTML page; other answers pass untouched).
pub(crate) async fn bcp_banner(
    State(s): State<PortalState>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let resp = next.run(req).await;
    let is_html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if !is_html {
        return resp;
    }
    let active = match s.store().active_bcp(s.now()).await {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => return resp,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "Cannot read BCP declarations for the banner");
            return resp;
        }
    };
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_PAGE).await {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "Cannot read a portal page to add the BCP banner");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let lang = if text.contains(r#"<html lang="en">"#) {
        Lang::En
    } else {
        Lang::Ja
    };
    let out = text.replacen(BANNER_SLOT, &banner_html(&s, lang, &active), 1);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

crate::access::csrf_forms!(DeclareForm, EndForm);
