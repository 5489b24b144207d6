//! 端末: block and unblock laptops, and lift login lockouts.

use super::*;
use crate::views::officer_devices::Lock;

/// `GET /officer/devices`
pub(crate) async fn devices(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let title = crate::views::officer_devices::title(lang);
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
    let list = match s.store().list_devices().await {
        Ok(d) => d,
        Err(e) => return Refused::from(e).page(lang, "/officer/devices", q),
    };
    let locks = locks(s).await;
    let page = crate::views::officer_devices::devices(
        lang,
        &switch_link("/officer/devices", q, lang),
        view_head(v, "/officer/devices", notice.as_ref()),
        &list,
        locks.as_deref(),
    );
    (status, page).into_response()
}

/// The portal lockouts in force (none when they cannot be read: the page
/// goes without them).
async fn locks(s: &PortalState) -> Option<Vec<Lock>> {
    let now = s.now();
    let locks = match s.store().active_lockouts(now).await {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "Cannot list lockouts");
            return None;
        }
    };
    let rows = locks
        .iter()
        .filter_map(|(key, until)| {
            let (user, from) = match key.split_once(':') {
                Some(("pair", rest)) => {
                    let (u, ip) = rest.rsplit_once('@')?;
                    (u, Some(ip.to_owned()))
                }
                Some(("user", u)) => (u, None),
                _ => return None,
            };
            Some(Lock {
                user: user.to_owned(),
                from,
                minutes: (until - now + 59) / 60,
            })
        })
        .collect();
    Some(rows)
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
