//! デスク: each desk's confidentiality level, segment and service.

use super::*;

/// `GET /officer/desks`
pub(crate) async fn desks(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let title = crate::views::officer_desks::title(lang);
    match s.visitor(&headers, Need::Officer).await {
        Ok(v) => {
            let notice = done_notice(lang, q.as_deref());
            desks_page(&s, &v, lang, q.as_deref(), notice, StatusCode::OK).await
        }
        Err(r) => get_refused(r, lang, "/officer/desks", q.as_deref(), title),
    }
}

async fn desks_page(
    s: &PortalState,
    v: &Visitor,
    lang: Lang,
    q: Option<&str>,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let desks = match s.store().list_desks().await {
        Ok(d) => d,
        Err(e) => return Refused::from(e).page(lang, "/officer/desks", q),
    };
    let page = crate::views::officer_desks::desks(
        lang,
        &switch_link("/officer/desks", q, lang),
        view_head(v, "/officer/desks", notice.as_ref()),
        &desks,
    );
    (status, page).into_response()
}

/// `POST /officer/desks` form.
#[derive(Debug, Deserialize)]
pub(crate) struct DeskForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    level: String,
    #[serde(default)]
    segment: String,
    /// `rdp` or `other`; absent: unchanged.
    #[serde(default)]
    service: String,
    #[serde(default)]
    reason: String,
}

/// `POST /officer/desks`: change a desk's level, segment and service (`desk.set`).
pub(crate) async fn desks_set(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<DeskForm>, FormRejection>,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let path = "/officer/desks";
    let (v, f) = match s
        .accept_form(&headers, Need::Officer, form, (lang, path, q.as_deref()))
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    let fail = |n: Notice, status: StatusCode| {
        let (s, v, q) = (s.clone(), v.clone(), q.clone());
        async move { desks_page(&s, &v, lang, q.as_deref(), Some(n), status).await }
    };
    let reason = match check_reason(lang, &f.reason, true) {
        Ok(r) => r,
        Err(n) => return fail(n, StatusCode::BAD_REQUEST).await,
    };
    // The CLI's checks: level 1..=3, a known segment.
    let level = match f.level.trim().parse::<u8>() {
        Ok(l) if (1..=3).contains(&l) => l,
        _ => {
            let n = Notice::Error(
                lang.t(
                    "機密性レベルは 1、2、3 のいずれかです。",
                    "The level must be 1, 2 or 3.",
                )
                .into(),
            );
            return fail(n, StatusCode::BAD_REQUEST).await;
        }
    };
    let Ok(segment) = f.segment.trim().parse::<Segment>() else {
        let n = Notice::Error(
            lang.t(
                "ネットワークは lgwan、internet、mynumber のいずれかです。",
                "The segment must be lgwan, internet or mynumber.",
            )
            .into(),
        );
        return fail(n, StatusCode::BAD_REQUEST).await;
    };
    let service = match f.service.trim() {
        "" => None,
        v => match v.parse::<DeskService>() {
            Ok(v) => Some(v),
            Err(_) => {
                let n = Notice::Error(
                    lang.t(
                        "種別は rdp、other のいずれかです。",
                        "The service must be rdp or other.",
                    )
                    .into(),
                );
                return fail(n, StatusCode::BAD_REQUEST).await;
            }
        },
    };
    let mut d = match s.store().get_desk(f.id.trim()).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            let (st, n) = write_failed(lang, kakehashi_store::Error::NotFound { what: "desk" });
            return fail(n, st).await;
        }
        Err(e) => return Refused::from(e).page(lang, path, q.as_deref()),
    };
    let service = service.unwrap_or(d.service);
    if d.level == level && d.segment == segment && d.service == service {
        let n = Notice::Error(lang.t("変更がありません。", "Nothing to change.").into());
        return fail(n, StatusCode::OK).await;
    }
    let before = json!(d);
    d.level = level;
    d.segment = segment;
    d.service = service;
    let audit = Audit::new(s.now(), v.actor(), "desk.set")
        .subject(&d.id)
        .reason(&reason)
        .detail(json!({ "before": before, "after": d, "via": "portal", "source": ip.to_string() }));
    match s.store().set_desk(&d, audit).await {
        Ok(()) => {
            info!(user = %v.user.id, desk = %d.id, level, segment = %segment, service = %service, "Desk changed from the portal");
            see_other(&link(path, lang, &[("done", "desk.set"), ("id", &d.id)]))
        }
        Err(e) => {
            let (st, n) = write_failed(lang, e);
            fail(n, st).await
        }
    }
}

// ------------------------------------------------------------ devices

crate::access::csrf_forms!(DeskForm);
