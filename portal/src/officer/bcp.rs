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
    let title = crate::views::officer_bcp::title(lang);
    match s.visitor(&headers, Need::Officer).await {
        Ok(v) => {
            let notice = done_notice(lang, q.as_deref());
            bcp_page(&s, &v, lang, q.as_deref(), notice, StatusCode::OK).await
        }
        Err(r) => get_refused(r, lang, "/officer/bcp", q.as_deref(), title),
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
    use crate::views::officer_bcp::{Active, BcpPage, Past};
    let now = s.now();
    let (all, users) = match tokio::try_join!(s.store().list_bcp(), s.store().list_users()) {
        Ok(x) => x,
        Err(e) => return Refused::from(e).page(lang, "/officer/bcp", q),
    };
    let depts: BTreeSet<&str> = users.iter().map(|u| u.department.as_str()).collect();
    let tomorrow = s
        .local_now()
        .date()
        .next_day()
        .unwrap_or(s.local_now().date());
    let view = BcpPage {
        head: view_head(v, "/officer/bcp", notice.as_ref()),
        active: all
            .iter()
            .filter(|b| b.is_active(now))
            .map(|b| Active {
                bcp: b,
                until: s.local_time(b.ends_at),
            })
            .collect(),
        depts: depts.into_iter().collect(),
        tomorrow: ymd(tomorrow),
        past: all
            .iter()
            .filter(|b| !b.is_active(now))
            .take(50)
            .map(|b| Past {
                bcp: b,
                from: s.local_time(b.starts_at),
                to: s.local_time(b.ended_at.unwrap_or(b.ends_at).min(b.ends_at)),
            })
            .collect(),
    };
    let page = crate::views::officer_bcp::bcp(lang, &switch_link("/officer/bcp", q, lang), &view);
    (status, page).into_response()
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
    let active: Vec<(&Bcp, String)> = active
        .iter()
        .map(|b| (b, s.local_time(b.ends_at)))
        .collect();
    let banner = crate::views::bcp_banner::banner(lang, &active).into_string();
    let out = text.replacen(BANNER_SLOT, &banner, 1);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

crate::access::csrf_forms!(DeclareForm, EndForm);
