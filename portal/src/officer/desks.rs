//! デスク: each desk's confidentiality level, segment and service.

use super::*;

/// `GET /officer/desks`
pub(crate) async fn desks(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let title = lang.t("デスク（機密性レベル）", "Desks (confidentiality levels)");
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
    let title = lang.t("デスク（機密性レベル）", "Desks (confidentiality levels)");
    let desks = match s.store().list_desks().await {
        Ok(d) => d,
        Err(e) => return Refused::from(e).page(lang, "/officer/desks", q),
    };
    let mut out = officer_head(
        lang,
        v,
        "/officer/desks",
        notice.as_ref(),
        lang.t(
            "接続先のデスクPCごとの機密性レベルとネットワークです。変更すると、接続中のセッションも1秒以内に再判定されます。個人番号利用事務系のデスクには、どのルールでも接続できません。種別「RDP以外」のデスクへの接続では利用制限が強制されず、監査ログにそのように記録されます。",
            "Each desk PC's confidentiality level and network segment. A change re-decides live sessions within a second. Desks in the My Number segment are never reachable, whatever the rules. Sessions to a desk of service \"not RDP\" are admitted without enforcing their controls, and audited so."
        ),
    );
    if desks.is_empty() {
        let _ = write!(
            out,
            r#"<p class="muted">{}</p>"#,
            lang.t(
                "登録されたデスクはありません（kakehashi-gateway admin desk add で登録します）。",
                "No desks yet (register them with kakehashi-gateway admin desk add)."
            )
        );
    } else {
        let _ = write!(
            out,
            r#"<table id="desks"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
            lang.t("デスク", "Desk"),
            lang.t("レベル", "Level"),
            lang.t("ネットワーク", "Segment"),
            lang.t("種別", "Service"),
            lang.t("所属", "Department"),
            lang.t("利用者", "Owners"),
            lang.t("変更", "Change"),
        );
        for d in &desks {
            let owners: Vec<&str> = d.owners.iter().map(String::as_str).collect();
            let fid = format!("desk-{}", d.id);
            let _ = write!(
                out,
                r#"<tr data-desk="{id}" data-service="{service}"><td>{id}</td><td class="level-{lv}">{lv}</td><td>{seg}</td><td>{service_name}</td><td>{dept}</td><td>{owners}</td><td>
<form method="post" action="{action}" class="row-form">{csrf}<input type="hidden" name="id" value="{id}">
<select name="level" aria-label="{level_l}">{levels}</select>
<select name="segment" aria-label="{seg_l}">{segs}</select>
<select name="service" aria-label="{service_l}">{services}</select>
<input name="reason" type="text" required maxlength="{MAX_REASON_CHARS}" aria-label="{reason_l}" placeholder="{reason_l}" id="{fid}-reason">
<button type="submit" class="small">{submit}</button></form></td></tr>"#,
                id = esc(&d.id),
                lv = d.level,
                seg = segment_name(lang, d.segment),
                service = d.service.as_str(),
                service_name = service_name(lang, d.service),
                dept = esc(&d.department),
                owners = esc(&owners.join(", ")),
                action = link("/officer/desks", lang, &[]),
                csrf = csrf_input(v),
                level_l = lang.t("機密性レベル", "Confidentiality level"),
                levels = options(&[("1", "1"), ("2", "2"), ("3", "3")], &d.level.to_string()),
                seg_l = lang.t("ネットワーク", "Segment"),
                segs = options(
                    &[
                        ("lgwan", lang.t("LGWAN接続系", "LGWAN")),
                        ("internet", lang.t("インターネット接続系", "internet")),
                        ("mynumber", lang.t("個人番号利用事務系", "My Number")),
                    ],
                    d.segment.as_str()
                ),
                service_l = lang.t("種別", "Service"),
                services = options(
                    &[
                        ("rdp", service_name(lang, DeskService::Rdp)),
                        ("other", service_name(lang, DeskService::Other)),
                    ],
                    d.service.as_str()
                ),
                reason_l = lang.t("理由（必須）", "Reason (required)"),
                submit = lang.t("変更", "Change"),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</div>");
    html(
        status,
        page(lang, title, &switch_link("/officer/desks", q, lang), &out),
    )
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
