//! 端末: block and unblock laptops, and lift login lockouts.

use super::*;

/// `GET /officer/devices`
pub(crate) async fn devices(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let title = lang.t("端末（利用停止）", "Devices (block)");
    match s.visitor(&headers, Need::Officer).await {
        Ok(v) => {
            let notice = done_notice(lang, q.as_deref());
            devices_page(&s, &v, lang, q.as_deref(), notice, StatusCode::OK).await
        }
        Err(r) => get_refused(r, lang, "/officer/devices", q.as_deref(), title),
    }
}

async fn devices_page(
    s: &PortalState,
    v: &Visitor,
    lang: Lang,
    q: Option<&str>,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let title = lang.t("端末（利用停止）", "Devices (block)");
    let list = match s.store().list_devices().await {
        Ok(d) => d,
        Err(e) => return Refused::from(e).page(lang, "/officer/devices", q),
    };
    let mut out = officer_head(
        lang,
        v,
        "/officer/devices",
        notice.as_ref(),
        lang.t(
            "貸与端末の一覧です。利用停止にすると、その端末のログインはすべて失効し、接続中のセッションは1秒以内に終了します。紛失・盗難のときは、証明書の失効（kakehashi-pki revoke）も行ってください。",
            "The loaned devices. Blocking one revokes all its logins and ends its live sessions within a second. For a lost or stolen device, also revoke its certificate (kakehashi-pki revoke)."
        ),
    );
    if list.is_empty() {
        let _ = write!(
            out,
            r#"<p class="muted">{}</p>"#,
            lang.t(
                "登録された端末はありません（初回ログイン時に登録されます）。",
                "No devices yet (a device registers at its first login)."
            )
        );
    } else {
        let _ = write!(
            out,
            r#"<table id="devices"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
            lang.t("端末", "Device"),
            lang.t("区分", "Class"),
            lang.t("状態", "Status"),
            lang.t("貸与先", "Loaned to"),
            lang.t("操作", "Action"),
        );
        let action_block = link("/officer/devices/block", lang, &[]);
        let action_unblock = link("/officer/devices/unblock", lang, &[]);
        for d in &list {
            let action = match d.status {
                DeviceStatus::Active => format!(
                    r#"<form method="post" action="{action_block}" class="row-form">{csrf}<input type="hidden" name="id" value="{id}">
<select name="status" aria-label="{st_l}">{sts}</select>
<input name="reason" type="text" required maxlength="{MAX_REASON_CHARS}" aria-label="{reason_l}" placeholder="{reason_l}">
<button type="submit" class="danger">{submit}</button></form>"#,
                    csrf = csrf_input(v),
                    id = esc(&d.id),
                    st_l = lang.t("状態", "Status"),
                    sts = options(
                        &[
                            ("blocked", lang.t("利用停止", "blocked")),
                            ("lost", lang.t("紛失届出", "reported lost")),
                        ],
                        "blocked"
                    ),
                    reason_l = lang.t("理由（必須）", "Reason (required)"),
                    submit = lang.t("利用停止", "Block"),
                ),
                DeviceStatus::Blocked | DeviceStatus::Lost => format!(
                    r#"<form method="post" action="{action_unblock}" class="row-form">{csrf}<input type="hidden" name="id" value="{id}">
<input name="reason" type="text" required maxlength="{MAX_REASON_CHARS}" aria-label="{reason_l}" placeholder="{reason_l}">
<button type="submit" class="small">{submit}</button></form>"#,
                    csrf = csrf_input(v),
                    id = esc(&d.id),
                    reason_l = lang.t("理由（必須）", "Reason (required)"),
                    submit = lang.t("利用再開", "Unblock"),
                ),
                // A revoked certificate is not undone here.
                _ => format!(
                    r#"<span class="muted">{}</span>"#,
                    lang.t("証明書失効済み", "certificate revoked")
                ),
            };
            let _ = write!(
                out,
                r#"<tr data-device="{id}"><td>{id}</td><td>{class}</td><td class="st-{st}">{st_name}</td><td>{loan}</td><td>{action}</td></tr>"#,
                id = esc(&d.id),
                class = class_name(lang, d.class),
                st = d.status.as_str(),
                st_name = status_name(lang, d.status),
                loan = esc(d.loaned_to.as_deref().unwrap_or("-")),
            );
        }
        out.push_str("</tbody></table>");
    }
    locks_section(s, v, lang, &mut out).await;
    out.push_str("</div>");
    html(
        status,
        page(lang, title, &switch_link("/officer/devices", q, lang), &out),
    )
}

/// The portal lockouts in force, each with an unlock form (on the devices page).
async fn locks_section(s: &PortalState, v: &Visitor, lang: Lang, out: &mut String) {
    let now = s.now();
    let locks = match s.store().active_lockouts(now).await {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "Cannot list lockouts");
            return;
        }
    };
    let _ = write!(
        out,
        r#"<h2>{}</h2><p class="muted">{}</p>"#,
        lang.t("ロック中の利用者", "Locked-out users"),
        lang.t(
            "ログインの失敗が続いてロックされている利用者と接続元です。本人の失敗と確かめたうえで解除してください（解除は監査ログに残ります）。",
            "Users (and the addresses) locked after repeated failed sign-ins. Unlock after checking with the person that the failures were theirs (the unlock is audited)."
        ),
    );
    if locks.is_empty() {
        let _ = write!(
            out,
            r#"<p class="muted" id="no-locks">{}</p>"#,
            lang.t("ロック中の利用者はいません。", "No one is locked out.")
        );
        return;
    }
    let _ = write!(
        out,
        r#"<table id="locks"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
        lang.t("利用者", "User"),
        lang.t("接続元", "From"),
        lang.t("解除まで", "Lock ends in"),
        lang.t("操作", "Action"),
    );
    let action = link("/officer/users/unlock", lang, &[]);
    for (key, until) in &locks {
        let (user, from) = match key.split_once(':') {
            Some(("pair", rest)) => match rest.rsplit_once('@') {
                Some((u, ip)) => (u, ip),
                None => continue,
            },
            Some(("user", u)) => (
                u,
                lang.t("全体（複数の接続元）", "everywhere (several addresses)"),
            ),
            _ => continue,
        };
        let _ = write!(
            out,
            r#"<tr data-lock-user="{uid}"><td>{uid}</td><td>{from}</td><td>{mins} {min_l}</td><td><form method="post" action="{action}" class="row-form">{csrf}<input type="hidden" name="id" value="{uid}">
<input name="reason" type="text" required maxlength="{MAX_REASON_CHARS}" aria-label="{reason_l}" placeholder="{reason_l}">
<button type="submit" class="small">{submit}</button></form></td></tr>"#,
            uid = esc(user),
            from = esc(from),
            mins = (until - now + 59) / 60,
            min_l = lang.t("分", "min"),
            csrf = csrf_input(v),
            reason_l = lang.t("理由（必須）", "Reason (required)"),
            submit = lang.t("ロック解除", "Unlock"),
        );
    }
    out.push_str("</tbody></table>");
}

/// `POST /officer/users/unlock` form.
#[derive(Debug, Deserialize)]
pub(crate) struct UnlockForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    reason: String,
}

/// `POST /officer/users/unlock`: as `admin user unlock` (`user.unlock`):
/// clears every failure counter of the user.
pub(crate) async fn users_unlock(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<UnlockForm>, FormRejection>,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let path = "/officer/devices";
    let (v, f) = match s
        .accept_form(&headers, Need::Officer, form, (lang, path, q.as_deref()))
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    let reason = match check_reason(lang, &f.reason, true) {
        Ok(r) => r,
        Err(n) => {
            return devices_page(&s, &v, lang, q.as_deref(), Some(n), StatusCode::BAD_REQUEST).await
        }
    };
    let id = f.id.trim().to_owned();
    let a = Audit::new(s.now(), v.actor(), "user.unlock")
        .subject(&id)
        .reason(&reason)
        .detail(json!({ "via": "portal", "source": ip.to_string() }));
    match s.store().unlock_user(&id, a).await {
        Ok(n) => {
            info!(user = %v.user.id, unlocked = %id, counters = n, "User unlocked from the portal");
            see_other(&link(path, lang, &[("done", "user.unlock"), ("id", &id)]))
        }
        Err(e) => {
            let (st, n) = write_failed(lang, e);
            devices_page(&s, &v, lang, q.as_deref(), Some(n), st).await
        }
    }
}

/// `POST /officer/devices/block|unblock` form.
#[derive(Debug, Deserialize)]
pub(crate) struct DeviceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    reason: String,
}

/// `POST /officer/devices/block`: as `admin device block` (`device.block`,
/// then every login token of the device revoked).
pub(crate) async fn devices_block(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<DeviceForm>, FormRejection>,
) -> Response {
    device_change(s, ip, q, headers, form, true).await
}

/// `POST /officer/devices/unblock`: as `admin device unblock`.
pub(crate) async fn devices_unblock(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<DeviceForm>, FormRejection>,
) -> Response {
    device_change(s, ip, q, headers, form, false).await
}

async fn device_change(
    s: PortalState,
    ip: std::net::IpAddr,
    q: Option<String>,
    headers: HeaderMap,
    form: Result<Form<DeviceForm>, FormRejection>,
    block: bool,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let path = "/officer/devices";
    let (v, f) = match s
        .accept_form(&headers, Need::Officer, form, (lang, path, q.as_deref()))
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    let fail = |n: Notice, status: StatusCode| {
        let (s, v, q) = (s.clone(), v.clone(), q.clone());
        async move { devices_page(&s, &v, lang, q.as_deref(), Some(n), status).await }
    };
    let reason = match check_reason(lang, &f.reason, true) {
        Ok(r) => r,
        Err(n) => return fail(n, StatusCode::BAD_REQUEST).await,
    };
    let id = f.id.trim().to_owned();
    let device = match s.store().get_device(&id).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            let (st, n) = write_failed(lang, kakehashi_store::Error::NotFound { what: "device" });
            return fail(n, st).await;
        }
        Err(e) => return Refused::from(e).page(lang, path, q.as_deref()),
    };
    let now = s.now();
    let actor = v.actor();
    if block {
        let status = match f.status.trim() {
            "" | "blocked" => DeviceStatus::Blocked,
            "lost" => DeviceStatus::Lost,
            _ => {
                let n = Notice::Error(
                    lang.t(
                        "状態は「利用停止」か「紛失届出」を選んでください。",
                        "Choose blocked or reported lost.",
                    )
                    .into(),
                );
                return fail(n, StatusCode::BAD_REQUEST).await;
            }
        };
        if device.status != DeviceStatus::Active {
            let n = Notice::Error(
                lang.t(
                    "この端末は既に利用停止中です。",
                    "This device is already blocked.",
                )
                .into(),
            );
            return fail(n, StatusCode::CONFLICT).await;
        }
        let a = Audit::new(now, &actor, "device.block")
            .subject(&id)
            .reason(&reason)
            .detail(
                json!({ "status": status.as_str(), "via": "portal", "source": ip.to_string() }),
            );
        if let Err(e) = s.store().set_device_status(&id, status, a).await {
            let (st, n) = write_failed(lang, e);
            return fail(n, st).await;
        }
        let a = Audit::new(now, &actor, "token.revoke_all")
            .subject(&id)
            .reason("device_blocked");
        let n = match s.store().revoke_login_tokens_for_device(&id, a).await {
            Ok(n) => n,
            Err(e) => {
                let (st, n) = write_failed(lang, e);
                return fail(n, st).await;
            }
        };
        info!(user = %v.user.id, device = %id, status = %status, tokens = n, "Device blocked from the portal");
        see_other(&link(
            path,
            lang,
            &[("done", "device.block"), ("id", &id), ("n", &n.to_string())],
        ))
    } else {
        if !matches!(device.status, DeviceStatus::Blocked | DeviceStatus::Lost) {
            let n = Notice::Error(
                lang.t(
                    "この端末は利用停止中ではありません（証明書失効済みの端末は再開できません）。",
                    "This device is not blocked (a device whose certificate was revoked cannot be unblocked).",
                )
                .into(),
            );
            return fail(n, StatusCode::CONFLICT).await;
        }
        let a = Audit::new(now, &actor, "device.unblock")
            .subject(&id)
            .reason(&reason)
            .detail(json!({ "via": "portal", "source": ip.to_string() }));
        if let Err(e) = s
            .store()
            .set_device_status(&id, DeviceStatus::Active, a)
            .await
        {
            let (st, n) = write_failed(lang, e);
            return fail(n, st).await;
        }
        info!(user = %v.user.id, device = %id, "Device unblocked from the portal");
        see_other(&link(
            path,
            lang,
            &[("done", "device.unblock"), ("id", &id)],
        ))
    }
}

// ------------------------------------------------------------ BCP

crate::access::csrf_forms!(DeviceForm, UnlockForm);
