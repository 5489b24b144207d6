//! The portal's routes, and what every answer passes through: the origin
//! check on writes, the API rate per source, the security headers.

use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tracing::debug;

use crate::config::PortalConfig;
use crate::reason::{Denial, Reason};
use crate::state::{Peer, PortalState, MAX_BODY};
use crate::{api, dashboard, officer, pages, plans};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Refuses cross-origin writes and adds the security headers to every answer.
async fn guard(
    axum::extract::State(state): axum::extract::State<PortalState>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let h = req.headers();
        let origin_ok = h
            .get(header::ORIGIN)
            .is_none_or(|o| o.as_bytes() == state.inner.origin.as_bytes());
        let site_ok = h
            .get("sec-fetch-site")
            .is_none_or(|s| s == "same-origin" || s == "none");
        if !origin_ok || !site_ok {
            match h.get(header::ORIGIN).filter(|_| !origin_ok) {
                Some(o) => {
                    state.origin_refused(&String::from_utf8_lossy(o.as_bytes()), req.uri().path())
                }
                None => {
                    debug!(method = %req.method(), path = %req.uri().path(), "Cross-site request refused")
                }
            }
            let mut resp = Denial::from(Reason::OriginMismatch).into_response();
            security_headers(&state, &mut resp);
            return resp;
        }
    }
    let mut resp = next.run(req).await;
    security_headers(&state, &mut resp);
    resp
}

/// Refuses API calls over the per-address rate before any work is done:
/// `rate_limited` (429 with `Retry-After`), audited through the throttle.
async fn api_rate(
    axum::extract::State(state): axum::extract::State<PortalState>,
    Peer(ip): Peer,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    if req.uri().path().starts_with("/api/") {
        if let Err(wait) = state.inner.api_rate.check(ip) {
            let wait = i64::try_from(wait).unwrap_or(i64::MAX);
            state
                .audit_refusal(
                    kakehashi_store::Audit::new(state.now(), "portal", "portal.request")
                        .reason(Reason::RateLimited.code())
                        .detail(serde_json::json!({
                            "source": ip.to_string(),
                            "path": req.uri().path(),
                        })),
                    ip,
                )
                .await;
            return Denial::rate_limited(wait).into_response();
        }
    }
    next.run(req).await
}

fn security_headers(state: &PortalState, resp: &mut Response) {
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, "content-security-policy", CSP);
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    // The login URL carries state and the PKCE challenge, the redirect a code:
    // no Referer to any other origin. (Not `no-referrer`: under it browsers
    // send `Origin: null` on the portal's own form posts, which `guard` and
    // the officer pages' CSRF check refuse.)
    set(h, "referrer-policy", "same-origin");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "cross-origin-resource-policy", "same-origin");
    set(
        h,
        "permissions-policy",
        "publickey-credentials-create=(self), publickey-credentials-get=(self)",
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    if state.inner.secure {
        set(h, "strict-transport-security", "max-age=31536000");
    }
}

/// The portal's routes, for [`serve`] and for in-process tests.
pub fn router(state: PortalState) -> Router {
    Router::new()
        .route("/", get(pages::index))
        .route("/enroll", get(pages::enroll))
        .route("/login", get(pages::login))
        .route("/me", get(pages::me))
        .route("/me/revoke", post(pages::revoke))
        .route("/me/logout", post(pages::logout))
        .route("/assets/portal.js", get(pages::script))
        .route("/assets/portal.css", get(pages::style))
        .route("/assets/officer.js", get(officer::script))
        .route("/officer", get(officer::home))
        .route(
            "/officer/rules",
            get(officer::rules::rules)
                .post(officer::rules::rules_save)
                .layer(DefaultBodyLimit::max(officer::MAX_POLICY_BODY)),
        )
        .route(
            "/officer/rules/preview",
            post(officer::rules::rules_preview)
                .layer(DefaultBodyLimit::max(officer::MAX_POLICY_BODY)),
        )
        .route(
            "/officer/desks",
            get(officer::desks::desks).post(officer::desks::desks_set),
        )
        .route("/officer/devices", get(officer::devices::devices))
        .route(
            "/officer/devices/block",
            post(officer::devices::devices_block),
        )
        .route(
            "/officer/devices/unblock",
            post(officer::devices::devices_unblock),
        )
        .route(
            "/officer/users/unlock",
            post(officer::devices::users_unlock),
        )
        .route("/officer/bcp", get(officer::bcp::bcp))
        .route("/officer/bcp/declare", post(officer::bcp::bcp_declare))
        .route("/officer/bcp/end", post(officer::bcp::bcp_end))
        .route("/ops", get(dashboard::show))
        .route("/ops/events", get(dashboard::events))
        .route("/ops/sessions/end", post(dashboard::end_session))
        .route("/assets/ops.js", get(dashboard::script))
        .route("/assets/ops.css", get(dashboard::style))
        .route("/plans", get(plans::plans).post(plans::submit))
        .route("/plans/decide", post(plans::decide))
        .route("/plans/attendance.csv", get(plans::attendance_csv))
        .route("/api/enroll/start", post(api::enroll_start))
        .route("/api/enroll/finish", post(api::enroll_finish))
        .route("/api/login/start", post(api::login_start))
        .route("/api/login/finish", post(api::login_finish))
        .route("/api/session/finish", post(api::session_finish))
        .fallback(pages::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            officer::bcp::bcp_banner,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), api_rate))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// A server-side TLS configuration for the portal: its certificate and key,
/// no client certificates, TLS 1.2 and 1.3, HTTP/1.1.
pub fn tls_config(cfg: &PortalConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = kakehashi_transport::tls::load_certs(&cfg.cert)?;
    let key = kakehashi_transport::tls::load_key(&cfg.key)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(kakehashi_transport::tls::provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions unavailable")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("portal certificate and key do not match")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}
