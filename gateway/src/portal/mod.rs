//! The web portal: security-key enrollment, the laptop login that ends in
//! a loopback redirect with a one-time code, and "my devices and sessions".
//! Japanese first (`?lang=en` for English); every page and script is served
//! from here under a strict Content-Security-Policy.
//!
//! # Pages
//!
//! | route | what |
//! |---|---|
//! | `GET /enroll` | user id + one-time enrollment code → register a passkey (user verification required) |
//! | `GET /login?redirect_uri=…&state=…&code_challenge=…&code_challenge_method=S256[&device=…]` | opened by `kakehashi login`; WebAuthn, then the browser goes to `redirect_uri?code=…&state=…` |
//! | `GET /me` | sign in (WebAuthn) → devices, login tokens (with "sign out this device"), credentials |
//! | `POST /me/revoke` (form `token` = token hash hex) | revokes one of the user's tokens |
//! | `POST /me/logout` | ends the portal session |
//! | `GET /plans`, `POST /plans`, `POST /plans/decide` | telework plans: staff submit, their section chief decides ([`plans`]) |
//! | `GET /plans/attendance.csv?month=YYYY-MM&lang=ja&bom=1` | the attendance report of a chief's own department, audited ([`plans`]) |
//! | `GET /officer/…` and its forms | rules with a live what-if preview, desks, devices and lockouts (`POST /officer/users/unlock`), BCP; role `officer` only ([`officer`]) |
//! | `GET /ops`, `GET /ops/events`, `POST /ops/sessions/end` | the live ops dashboard (server-sent events) and ending a session; role `operator` only ([`dashboard`]) |
//!
//! While a BCP declaration is in force every page carries a banner saying
//! so. The officer and plan pages check the user's roles in the store on
//! every request and protect every POST with a per-session CSRF token and
//! an origin check ([`access`]).
//!
//! # JSON API (the pages' script and non-browser clients use the same calls)
//!
//! Bodies are JSON (`Content-Type: application/json`). WebAuthn structures
//! are webauthn-rs's serde forms (binary fields base64url without padding):
//! `options` is a `CreationChallengeResponse` / `RequestChallengeResponse`
//! (`{"publicKey": {…}}`), `credential` a `RegisterPublicKeyCredential` /
//! `PublicKeyCredential` as produced by webauthn-authenticator-rs.
//!
//! ```text
//! POST /api/enroll/start   {"user": ID, "code": ENROLLMENT_CODE}
//!                        → {"ceremony": C, "options": CreationChallengeResponse}
//! POST /api/enroll/finish  {"ceremony": C, "credential": RegisterPublicKeyCredential}
//!                        → {"enrolled": true, "user": ID, "attested": BOOL}
//! POST /api/login/start    {"user": ID}
//!                        → {"ceremony": C, "options": RequestChallengeResponse}
//! POST /api/login/finish   {"ceremony": C, "credential": PublicKeyCredential,
//!                           "redirect_uri": "http://127.0.0.1:PORT/PATH", "state": S,
//!                           "code_challenge": BASE64URL_SHA256, "code_challenge_method": "S256",
//!                           "device": DEVICE_ID (optional)}
//!                        → {"redirect": "http://127.0.0.1:PORT/PATH?code=CODE&state=S"}
//! POST /api/session/finish {"ceremony": C, "credential": PublicKeyCredential}
//!                        → {"redirect": "/me"} and a session cookie
//! ```
//!
//! `/api/enroll/start` checks the user, the lockouts and the code (looked
//! up, not spent); `/api/enroll/finish` verifies the authenticator's
//! response, then spends the code in the transaction that stores the
//! credential, so a failed ceremony leaves the code usable and two
//! ceremonies with one code enroll one credential. A ceremony id is good
//! for one finish within 5 minutes. `code_challenge_method`
//! may be omitted in `/api/login/finish` (only S256 exists). The one-time
//! code is 32 random bytes, base64url; the store keeps only
//! [`login_code_hash`] of it, with the PKCE challenge and the user, for
//! 120 seconds. Errors are
//! `{"error": CODE, "message_ja": …, "message_en": …[, "retry_after": SECS]}`
//! with a matching HTTP status (see [`Reason`]); `locked_out` is 429.
//!
//! # Brute force
//!
//! Bad enrollment codes count against `user:ID` and `enroll:IP`, failed
//! assertions against `user:ID` and `source:IP`, with the `[identity]`
//! rule; the counters are in the store, so they survive a restart.

mod access;
mod api;
mod dashboard;
mod memory;
mod officer;
#[cfg(test)]
mod officer_tests;
mod pages;
mod plans;
mod reason;
mod redirect;
mod serve;
#[cfg(test)]
mod tests;
mod throttle;

pub use reason::{Denial, Reason};
pub use serve::serve;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use kakehashi_store::{Hash256, LockoutRule, Store};
use tracing::debug;
use webauthn_rs::prelude::{
    AttestationCaList, AttestedPasskeyRegistration, PasskeyAuthentication, PasskeyRegistration,
    Webauthn, WebauthnBuilder,
};

use crate::config::{Config, PortalLimits};

/// How long a WebAuthn ceremony may take (also the browser's timeout).
const CEREMONY_SECS: i64 = 300;
/// How long a portal session lasts.
const SESSION_SECS: i64 = 1800;
/// How long a one-time login code is valid.
const LOGIN_CODE_SECS: i64 = 120;
/// Most ceremonies in progress at once.
const MAX_CEREMONIES: usize = 10_000;
/// Most ceremonies in progress for one user (a new one evicts the oldest):
/// a person retrying in several tabs, not a flood.
const CEREMONIES_PER_USER: usize = 8;
/// Most ceremonies in progress from one source address (a new one evicts
/// that address's oldest): an office NAT's morning, not a flood.
const CEREMONIES_PER_SOURCE: usize = 1000;
/// Most portal sessions at once.
const MAX_SESSIONS: usize = 10_000;
/// The audit throttle's window: one record in full per kind of refusal and
/// address, the rest as one summary.
const AUDIT_WINDOW_SECS: i64 = 60;
/// Largest request body.
const MAX_BODY: usize = 64 * 1024;

/// A ceremony between its start and finish calls.
enum Ceremony {
    Enroll {
        user: String,
        code_hash: Hash256,
        state: RegState,
    },
    Login {
        user: String,
        state: PasskeyAuthentication,
    },
    /// Options that look like a real login's, for a user id that cannot log
    /// in (unknown, or no security key): `login/start` answers alike for
    /// every id, and the finish fails as a wrong key would. `why` is kept
    /// for the audit log only.
    Decoy { user: String, why: &'static str },
}

enum RegState {
    Passkey(PasskeyRegistration),
    Attested(AttestedPasskeyRegistration),
}

/// A signed-in portal visitor.
#[derive(Clone)]
struct Session {
    user: String,
}

/// Everything the portal's handlers share. Cheap to clone.
#[derive(Clone)]
pub struct PortalState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    webauthn: Webauthn,
    /// The WebAuthn relying party id, for decoy login options.
    rp_id: String,
    /// `Some` when only attested authenticators from these CAs may enroll.
    attestation: Option<AttestationCaList>,
    /// The origin as browsers send it in `Origin` (`https://host[:port]`).
    origin: String,
    /// Cookies carry `Secure` and HSTS is sent (off only with `insecure_http`).
    secure: bool,
    rule: LockoutRule,
    utc_offset_secs: i32,
    ceremonies: memory::TtlMap<Ceremony>,
    sessions: memory::TtlMap<Session>,
    /// Connection caps and time-outs ([`serve`]).
    limits: PortalLimits,
    /// Time open connections get after shutdown (the gateway's grace).
    grace: Duration,
    /// API calls per source address.
    api_rate: throttle::RateLimiter,
    /// Refusals before login: one record per kind, address and minute.
    audit_throttle: throttle::AuditThrottle,
    /// Added to the wall clock (tests move time forward).
    clock_offset: AtomicI64,
    /// The ops dashboard's view of the gateway ([`dashboard`]).
    ops: dashboard::Ops,
}

impl std::fmt::Debug for PortalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalState")
            .field("origin", &self.inner.origin)
            .field("attested_only", &self.inner.attestation.is_some())
            .field("secure", &self.inner.secure)
            .finish_non_exhaustive()
    }
}

impl PortalState {
    /// Builds the portal from the gateway configuration (`[portal]` must be
    /// present) and an open store. Reads the attestation CA files.
    pub fn new(cfg: &Config, store: Store) -> anyhow::Result<Self> {
        let attestation = load_attestation_cas(&cfg.relay.identity.attestation_ca)?;
        Self::with_attestation(cfg, store, attestation)
    }

    /// As [`PortalState::new`], with the attestation CA list given directly.
    fn with_attestation(
        cfg: &Config,
        store: Store,
        attestation: Option<AttestationCaList>,
    ) -> anyhow::Result<Self> {
        let portal = cfg
            .portal
            .as_ref()
            .context("the portal needs a [portal] section")?;
        let webauthn = WebauthnBuilder::new(&portal.rp_id, &portal.origin)
            .context("invalid [portal] rp_id or origin for WebAuthn")?
            .rp_name("Kakehashi")
            .timeout(Duration::from_secs(CEREMONY_SECS as u64))
            .build()
            .context("invalid [portal] rp_id or origin for WebAuthn")?;
        let id = &cfg.relay.identity;
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1);
        let rule = LockoutRule {
            max_failures: id.max_failures.max(1),
            window_secs: secs(id.failure_window),
            lockout_secs: secs(id.lockout),
        };
        Ok(PortalState {
            inner: Arc::new(Inner {
                store,
                webauthn,
                rp_id: portal.rp_id.clone(),
                attestation,
                origin: portal.origin.origin().ascii_serialization(),
                secure: !portal.insecure_http,
                rule,
                utc_offset_secs: id.utc_offset_secs,
                ceremonies: memory::TtlMap::new(MAX_CEREMONIES),
                sessions: memory::TtlMap::new(MAX_SESSIONS),
                limits: portal.limits,
                grace: cfg.relay.shutdown_grace,
                api_rate: throttle::RateLimiter::new(
                    portal.limits.api_rate_per_source,
                    portal.limits.api_rate_per_source.saturating_mul(10),
                ),
                audit_throttle: throttle::AuditThrottle::new(AUDIT_WINDOW_SECS),
                clock_offset: AtomicI64::new(0),
                ops: dashboard::Ops::default(),
            }),
        })
    }

    /// The current time (unix seconds).
    fn now(&self) -> i64 {
        kakehashi_store::unix_now() + self.inner.clock_offset.load(Ordering::Relaxed)
    }

    /// Moves the portal's clock forward (tests).
    #[cfg(test)]
    fn advance_clock(&self, secs: i64) {
        self.inner.clock_offset.fetch_add(secs, Ordering::Relaxed);
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }
}

/// Reads the attestation CA PEM files; `None` when there are none.
fn load_attestation_cas(paths: &[std::path::PathBuf]) -> anyhow::Result<Option<AttestationCaList>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut list = AttestationCaList::default();
    for path in paths {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read attestation CA {}", path.display()))?;
        let one = AttestationCaList::try_from(pem.as_slice()).map_err(|e| {
            anyhow::anyhow!(
                "invalid attestation CA certificate {}: {e:?}",
                path.display()
            )
        })?;
        list.union(&one);
    }
    Ok(Some(list))
}

/// `N` random bytes, base64url without padding.
fn random_b64url<const N: usize>() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; N];
    // The system RNG failing is not recoverable; better to stop than to
    // hand out predictable ids.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random number generator failed");
    URL_SAFE_NO_PAD.encode(b)
}

/// The hash the store keeps for a one-time login code (the base64url text
/// in the redirect): SHA-256 of its ASCII bytes. The gateway's redeem
/// handler looks the code up with this.
pub fn login_code_hash(code: &str) -> Hash256 {
    Hash256::digest(code.as_bytes())
}

/// The enrollment code alphabet (Crockford base32: no I, L, O, U).
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in an enrollment code (80 bits).
const CODE_LEN: usize = 16;

/// A new one-time enrollment code for an officer to hand out, shown as
/// `XXXX-XXXX-XXXX-XXXX`, and the hash to store with
/// `Store::create_enrollment_code`.
pub fn new_enrollment_code() -> (String, Hash256) {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; CODE_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random number generator failed");
    // 256 is a multiple of 32, so `& 31` is uniform.
    let raw: String = b
        .iter()
        .map(|x| CODE_ALPHABET[usize::from(x & 31)] as char)
        .collect();
    let shown = raw
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("-");
    let hash = Hash256::digest(raw.as_bytes());
    (shown, hash)
}

/// The stored hash of an enrollment code as typed: case, spaces, hyphens,
/// full-width characters and the look-alikes O/I/L are forgiven. `None`
/// when it cannot be a code.
pub fn enrollment_code_hash(typed: &str) -> Option<Hash256> {
    let mut raw = String::with_capacity(CODE_LEN);
    for c in typed.chars() {
        // Full-width ASCII (IME input) to ASCII.
        let c = match u32::from(c) {
            0xFF01..=0xFF5E => char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c),
            _ => c,
        };
        let c = match c.to_ascii_uppercase() {
            ' ' | '-' | '\u{3000}' | '\u{30FC}' | '\u{2010}'..='\u{2015}' | '\u{2212}' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        if !c.is_ascii() || !CODE_ALPHABET.contains(&(c as u8)) || raw.len() >= CODE_LEN {
            return None;
        }
        raw.push(c);
    }
    (raw.len() == CODE_LEN).then(|| Hash256::digest(raw.as_bytes()))
}

/// The WebAuthn user handle for a user id: stable, derived, not the id itself.
fn user_handle(user: &str) -> webauthn_rs::prelude::Uuid {
    let d = Hash256::digest(format!("kakehashi-webauthn-user\0{user}"));
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.0[..16]);
    webauthn_rs::prelude::Uuid::from_bytes(b)
}

/// The peer address a request came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// The client's IP address (IPv4-mapped IPv6 folded to IPv4), from
/// [`serve`]'s connection info (or a plain `axum::serve` with
/// `ConnectInfo<SocketAddr>`); unspecified without either (in-process tests),
/// in which case every client shares one `source:` lockout counter.
struct Peer(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ext = &parts.extensions;
        let addr = ext
            .get::<ConnectInfo<PeerAddr>>()
            .map(|c| c.0 .0)
            .or_else(|| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
        let ip = addr
            .map(|a| a.ip().to_canonical())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Ok(Peer(ip))
    }
}

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
            debug!(method = %req.method(), path = %req.uri().path(), "Cross-origin request refused");
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
            get(officer::rules)
                .post(officer::rules_save)
                .layer(DefaultBodyLimit::max(officer::MAX_POLICY_BODY)),
        )
        .route(
            "/officer/rules/preview",
            post(officer::rules_preview).layer(DefaultBodyLimit::max(officer::MAX_POLICY_BODY)),
        )
        .route(
            "/officer/desks",
            get(officer::desks).post(officer::desks_set),
        )
        .route("/officer/devices", get(officer::devices))
        .route("/officer/devices/block", post(officer::devices_block))
        .route("/officer/devices/unblock", post(officer::devices_unblock))
        .route("/officer/users/unlock", post(officer::users_unlock))
        .route("/officer/bcp", get(officer::bcp))
        .route("/officer/bcp/declare", post(officer::bcp_declare))
        .route("/officer/bcp/end", post(officer::bcp_end))
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
            officer::bcp_banner,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), api_rate))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// A server-side TLS configuration for the portal: the gateway's
/// certificate and key, no client certificates, TLS 1.2 and 1.3, HTTP/1.1.
pub fn tls_config(cfg: &Config) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = kakehashi_transport::tls::load_certs(&cfg.relay.cert)?;
    let key = kakehashi_transport::tls::load_key(&cfg.relay.key)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(kakehashi_transport::tls::provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions unavailable")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("portal certificate and key do not match")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}
