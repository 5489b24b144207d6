//! Portal tests: real WebAuthn ceremonies with webauthn-authenticator-rs
//! software authenticators against the router in process, a temporary
//! SQLite store, and one run of `serve` over TLS and plain HTTP.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use kakehashi_store::{
    unix_now, Audit, AuditRecord, DeviceClass, DeviceSpec, Hash256, NewLoginToken, NewUser, Store,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::ServiceExt as _;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs::prelude::{
    AttestationCaList, AttestationCaListBuilder, CreationChallengeResponse,
    RequestChallengeResponse, Url,
};

use super::*;
use crate::codes::*;
use crate::state::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::path::PathBuf;
use std::time::Duration;

const ORIGIN: &str = "https://portal.example.test";
const USER: &str = "yamada";
const IP_A: [u8; 4] = [192, 0, 2, 10];
const IP_B: [u8; 4] = [192, 0, 2, 20];
/// RFC 7636 appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const REDIRECT: &str = "http://127.0.0.1:53682/callback";

/// The portal's settings as a gateway with `[identity] max_failures = 3`,
/// `failure_window = "5min"`, `lockout = "60s"` (and the given
/// attestation CAs) would give it.
fn config(attestation_ca: Vec<PathBuf>, tls: Option<(&Path, &Path)>) -> PortalConfig {
    let mut c = PortalConfig::for_tests(ORIGIN);
    if let Some((cert, key)) = tls {
        c.cert = cert.to_path_buf();
        c.key = key.to_path_buf();
    }
    c.identity.max_failures = 3;
    c.identity.failure_window = Duration::from_secs(300);
    c.identity.lockout = Duration::from_secs(60);
    c.identity.attestation_ca = attestation_ca;
    c
}

struct Harness {
    _dir: tempfile::TempDir,
    cfg: PortalConfig,
    store: Store,
    state: PortalState,
    app: Router,
    origin: Url,
}

impl Harness {
    async fn new() -> Self {
        Self::with(|_| config(Vec::new(), None), None).await
    }

    async fn with(
        make_config: impl FnOnce(&Path) -> PortalConfig,
        attestation: Option<AttestationCaList>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = make_config(dir.path());
        let store = Store::open(dir.path().join("store.db").to_str().unwrap())
            .await
            .unwrap();
        let state = match attestation {
            None => PortalState::new(&cfg, store.clone(), None).unwrap(),
            Some(list) => {
                PortalState::with_attestation(&cfg, store.clone(), None, Some(list)).unwrap()
            }
        };
        let app = router(state.clone());
        store
            .add_user(
                &NewUser {
                    id: USER.into(),
                    name: "山田 太郎".into(),
                    department: "総務課".into(),
                    roles: BTreeSet::new(),
                },
                Audit::new(unix_now(), "cli:test", "user.add").subject(USER),
            )
            .await
            .unwrap();
        Harness {
            _dir: dir,
            cfg,
            store,
            state,
            app,
            origin: Url::parse(ORIGIN).unwrap(),
        }
    }

    /// A second portal on the same store (a gateway restart).
    fn restarted(&self) -> (PortalState, Router) {
        let state = PortalState::new(&self.cfg, self.store.clone(), None).unwrap();
        let app = router(state.clone());
        (state, app)
    }

    async fn add_user(&self, id: &str) {
        self.store
            .add_user(
                &NewUser {
                    id: id.into(),
                    name: "佐藤 花子".into(),
                    department: "税務課".into(),
                    roles: BTreeSet::new(),
                },
                Audit::new(unix_now(), "cli:test", "user.add").subject(id),
            )
            .await
            .unwrap();
    }

    /// Issues an enrollment code valid for `secs`.
    async fn code(&self, user: &str, secs: i64) -> String {
        let (code, hash) = new_enrollment_code();
        let now = unix_now();
        self.store
            .create_enrollment_code(
                &hash,
                user,
                now + secs,
                Audit::new(now, "cli:test", "enroll.code").subject(user),
            )
            .await
            .unwrap();
        code
    }

    async fn audit(&self) -> Vec<AuditRecord> {
        self.store.audit_page(0, 10_000).await.unwrap()
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    text: String,
}

async fn send(app: &Router, req: Request<Body>, ip: [u8; 4]) -> Answer {
    let mut req = req;
    req.extensions_mut()
        .insert(ConnectInfo(PeerAddr(SocketAddr::from((ip, 40_000)))));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        json,
        text,
    }
}

async fn post(app: &Router, path: &str, body: Value, ip: [u8; 4]) -> Answer {
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(app, req, ip).await
}

async fn get(app: &Router, path: &str, cookie: Option<&str>) -> Answer {
    let mut req = Request::builder().method(Method::GET).uri(path);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    send(app, req.body(Body::empty()).unwrap(), IP_A).await
}

fn assert_refused(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(a.json["error"], code, "{}", a.text);
    assert!(a.json["message_ja"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(a.json["message_en"].as_str().is_some_and(|m| !m.is_empty()));
}

async fn enroll_on(
    app: &Router,
    auth: &mut impl WebauthnAuthenticator,
    origin: &Url,
    user: &str,
    code: &str,
    ip: [u8; 4],
) -> Answer {
    let start = post(
        app,
        "/api/enroll/start",
        json!({ "user": user, "code": code }),
        ip,
    )
    .await;
    if start.status != StatusCode::OK {
        return start;
    }
    let options: CreationChallengeResponse =
        serde_json::from_value(start.json["options"].clone()).unwrap();
    let cred = auth.do_registration(origin.clone(), options).unwrap();
    post(
        app,
        "/api/enroll/finish",
        json!({ "ceremony": start.json["ceremony"], "credential": cred }),
        ip,
    )
    .await
}

async fn enroll(h: &Harness, auth: &mut impl WebauthnAuthenticator, code: &str) -> Answer {
    enroll_on(&h.app, auth, &h.origin, USER, code, IP_A).await
}

/// `/api/login/start`; returns the ceremony id and options.
async fn login_start(app: &Router, user: &str, ip: [u8; 4]) -> (String, RequestChallengeResponse) {
    let a = post(app, "/api/login/start", json!({ "user": user }), ip).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    (
        a.json["ceremony"].as_str().unwrap().to_owned(),
        serde_json::from_value(a.json["options"].clone()).unwrap(),
    )
}

fn finish_body(ceremony: &str, credential: &impl serde::Serialize) -> Value {
    json!({
        "ceremony": ceremony,
        "credential": credential,
        "redirect_uri": REDIRECT,
        "state": "state-1234567",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        "device": "PC-0001",
    })
}

/// A whole loopback login with `auth` at `origin`.
async fn login_on(
    app: &Router,
    auth: &mut impl WebauthnAuthenticator,
    origin: &Url,
    ip: [u8; 4],
) -> Answer {
    let (ceremony, options) = login_start(app, USER, ip).await;
    let cred = auth.do_authentication(origin.clone(), options).unwrap();
    post(app, "/api/login/finish", finish_body(&ceremony, &cred), ip).await
}

async fn login(h: &Harness, auth: &mut impl WebauthnAuthenticator) -> Answer {
    login_on(&h.app, auth, &h.origin, IP_A).await
}

#[tokio::test]
async fn enroll_then_login_gives_a_one_time_pkce_code() {
    let h = Harness::new().await;
    let code = h.code(USER, 3600).await;
    let mut key = SoftPasskey::new(true);
    let a = enroll(&h, &mut key, &code).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["enrolled"], true);
    assert_eq!(a.json["attested"], false);
    let creds = h.store.credentials_for_user(USER).await.unwrap();
    assert_eq!(creds.len(), 1);

    let a = login(&h, &mut key).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let redirect = Url::parse(a.json["redirect"].as_str().unwrap()).unwrap();
    assert_eq!(redirect.host_str(), Some("127.0.0.1"));
    assert_eq!(redirect.port(), Some(53682));
    assert_eq!(redirect.path(), "/callback");
    let q: std::collections::HashMap<_, _> = redirect.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "state-1234567");
    let login_code = q["code"].clone();
    assert_eq!(URL_SAFE_NO_PAD.decode(&login_code).unwrap().len(), 32);

    // What the gateway's redeem handler does over mutual TLS.
    let redeem = || Audit::new(unix_now(), "gateway:test", "login.redeem").subject(USER);
    let c = h
        .store
        .consume_login_code(&login_code_hash(&login_code), redeem())
        .await
        .unwrap();
    assert_eq!(c.user_id, USER);
    assert_eq!(
        c.device_id.as_deref(),
        Some("PC-0001"),
        "bound to the laptop that asked"
    );
    assert!(c.pkce_matches(VERIFIER));
    assert!(!c.pkce_matches("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj"));
    assert!(c.expires_at - c.created <= LOGIN_CODE_SECS);
    let again = h
        .store
        .consume_login_code(&login_code_hash(&login_code), redeem())
        .await;
    assert!(
        matches!(again, Err(kakehashi_store::Error::AlreadyUsed { .. })),
        "{again:?}"
    );

    // The audit log has the story and no secrets.
    let log = h.audit().await;
    let actions: Vec<&str> = log.iter().map(|r| r.action.as_str()).collect();
    for want in ["enroll", "login", "login.code"] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let login_rec = log.iter().find(|r| r.action == "login.code").unwrap();
    assert!(login_rec.detail.contains("PC-0001"));
    let raw_code: String = code.chars().filter(|c| *c != '-').collect();
    for r in &log {
        let all = format!("{} {} {} {}", r.actor, r.subject, r.reason, r.detail);
        for secret in [login_code.as_str(), &code, &raw_code, VERIFIER, CHALLENGE] {
            assert!(
                !all.contains(secret),
                "secret in audit record {}: {all}",
                r.seq
            );
        }
    }
    assert!(h.store.verify_audit().await.unwrap().is_intact());
}

#[tokio::test]
async fn wrong_origin_is_refused() {
    let h = Harness::new().await;
    let code = h.code(USER, 3600).await;
    let mut key = SoftPasskey::new(true);
    // The same site on another port, and a subdomain: both are acceptable
    // to the authenticator (the RP id is a suffix) but are not our origin.
    let other_port = Url::parse("https://portal.example.test:8443").unwrap();
    let subdomain = Url::parse("https://evil.portal.example.test").unwrap();

    let a = enroll_on(&h.app, &mut key, &other_port, USER, &code, IP_A).await;
    assert_refused(&a, StatusCode::FORBIDDEN, "origin_mismatch");
    // The code was not spent by the refused registration.
    let a = enroll(&h, &mut key, &code).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    for origin in [&other_port, &subdomain] {
        let a = login_on(&h.app, &mut key, origin, IP_A).await;
        assert_refused(&a, StatusCode::FORBIDDEN, "origin_mismatch");
    }
    let a = login(&h, &mut key).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let log = h.audit().await;
    assert!(log
        .iter()
        .any(|r| r.action == "login.failed" && r.reason == "origin_mismatch"));
    assert!(log
        .iter()
        .any(|r| r.action == "enroll.failed" && r.reason == "origin_mismatch"));
}

#[tokio::test]
async fn replayed_assertion_is_refused() {
    let h = Harness::new().await;
    let code = h.code(USER, 3600).await;
    let mut key = SoftPasskey::new(true);
    assert_eq!(enroll(&h, &mut key, &code).await.status, StatusCode::OK);

    let (ceremony, options) = login_start(&h.app, USER, IP_A).await;
    let cred = key.do_authentication(h.origin.clone(), options).unwrap();
    let body = finish_body(&ceremony, &cred);
    let a = post(&h.app, "/api/login/finish", body.clone(), IP_A).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // The same request again: the ceremony is spent.
    let a = post(&h.app, "/api/login/finish", body, IP_A).await;
    assert_refused(&a, StatusCode::GONE, "ceremony_expired");

    // The captured assertion against a new ceremony: wrong challenge.
    let (ceremony2, _) = login_start(&h.app, USER, IP_A).await;
    let a = post(
        &h.app,
        "/api/login/finish",
        finish_body(&ceremony2, &cred),
        IP_A,
    )
    .await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "assertion_invalid");

    // And as a portal session.
    let (ceremony3, _) = login_start(&h.app, USER, IP_A).await;
    let a = post(
        &h.app,
        "/api/session/finish",
        json!({ "ceremony": ceremony3, "credential": cred }),
        IP_A,
    )
    .await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "assertion_invalid");
}

#[tokio::test]
async fn cloned_credential_is_refused_and_audited() {
    let h = Harness::new().await;
    let code = h.code(USER, 3600).await;
    let (mut key, _ca) = SoftToken::new(true).unwrap();
    let a = enroll(&h, &mut key, &code).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // A ceremony started before the genuine key moves on, and a copy of
    // the authenticator's state at that point.
    let (stale, stale_options) = login_start(&h.app, USER, IP_A).await;
    let mut clone = SoftToken::from_cbor(&key.to_cbor().unwrap()).unwrap();

    for _ in 0..2 {
        let a = login(&h, &mut key).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    let stored = h.store.credentials_for_user(USER).await.unwrap()[0].counter;
    assert_eq!(stored, 2);

    // The copy (counter 1) on a fresh ceremony: webauthn-rs sees it.
    let a = login(&h, &mut clone).await;
    assert_refused(&a, StatusCode::FORBIDDEN, "credential_cloned");

    // The copy (counter 2) on the stale ceremony, whose state still says 0:
    // the portal's own check against the stored counter sees it.
    let cred = clone
        .do_authentication(h.origin.clone(), stale_options)
        .unwrap();
    let a = post(
        &h.app,
        "/api/login/finish",
        finish_body(&stale, &cred),
        IP_B,
    )
    .await;
    assert_refused(&a, StatusCode::FORBIDDEN, "credential_cloned");

    let log = h.audit().await;
    let cloned: Vec<_> = log
        .iter()
        .filter(|r| r.action == "login.failed" && r.reason == "credential_cloned")
        .collect();
    assert_eq!(cloned.len(), 2, "{log:#?}");
    assert!(
        cloned[1].detail.contains("\"stored_counter\":2"),
        "{}",
        cloned[1].detail
    );
    // The genuine key still works and the counter never went backwards.
    let a = login(&h, &mut key).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        h.store.credentials_for_user(USER).await.unwrap()[0].counter,
        3
    );
}

#[tokio::test]
async fn expired_enrollment_code_is_refused() {
    let h = Harness::new().await;
    let code = h.code(USER, 60).await;
    h.state.advance_clock(120);
    let a = enroll(&h, &mut SoftPasskey::new(true), &code).await;
    assert_refused(&a, StatusCode::GONE, "enroll_code_expired");
    assert!(h.store.credentials_for_user(USER).await.unwrap().is_empty());
    assert!(h
        .audit()
        .await
        .iter()
        .any(|r| r.action == "enroll.failed" && r.reason == "enroll_code_expired"));
}

#[tokio::test]
async fn reused_enrollment_code_is_refused() {
    let h = Harness::new().await;
    let code = h.code(USER, 3600).await;
    // Typed the way people type it: lower case, spaces for hyphens.
    let typed = code.to_lowercase().replace('-', " ");
    let a = enroll(&h, &mut SoftPasskey::new(true), &typed).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = enroll(&h, &mut SoftPasskey::new(true), &code).await;
    assert_refused(&a, StatusCode::GONE, "enroll_code_used");

    // Two ceremonies with one code: only the first finish enrolls.
    let code = h.code(USER, 3600).await;
    let mut first = SoftPasskey::new(true);
    let mut second = SoftPasskey::new(true);
    let s1 = post(
        &h.app,
        "/api/enroll/start",
        json!({ "user": USER, "code": code }),
        IP_A,
    )
    .await;
    let s2 = post(
        &h.app,
        "/api/enroll/start",
        json!({ "user": USER, "code": code }),
        IP_A,
    )
    .await;
    let c1 = first
        .do_registration(
            h.origin.clone(),
            serde_json::from_value(s1.json["options"].clone()).unwrap(),
        )
        .unwrap();
    let c2 = second
        .do_registration(
            h.origin.clone(),
            serde_json::from_value(s2.json["options"].clone()).unwrap(),
        )
        .unwrap();
    // Both finishes at once: the store spends the code with the insert, so
    // exactly one enrolls.
    let (f1, f2) = tokio::join!(
        post(
            &h.app,
            "/api/enroll/finish",
            json!({ "ceremony": s1.json["ceremony"], "credential": c1 }),
            IP_A,
        ),
        post(
            &h.app,
            "/api/enroll/finish",
            json!({ "ceremony": s2.json["ceremony"], "credential": c2 }),
            IP_A,
        )
    );
    let (won, lost) = if f1.status == StatusCode::OK {
        (f1, f2)
    } else {
        (f2, f1)
    };
    assert_eq!(won.status, StatusCode::OK, "{}", won.text);
    assert_refused(&lost, StatusCode::GONE, "enroll_code_used");
    assert_eq!(h.store.credentials_for_user(USER).await.unwrap().len(), 2);
    // A spent code is refused when the ceremony starts.
    let a = post(
        &h.app,
        "/api/enroll/start",
        json!({ "user": USER, "code": code }),
        IP_A,
    )
    .await;
    assert_refused(&a, StatusCode::GONE, "enroll_code_used");
}

#[tokio::test]
async fn enrollment_start_does_not_spend_the_code() {
    let h = Harness::new().await;
    let code = h.code(USER, 3600).await;
    // Ceremonies started and abandoned (the person cancelled the browser's
    // prompt) leave the code as it was.
    for _ in 0..3 {
        let a = post(
            &h.app,
            "/api/enroll/start",
            json!({ "user": USER, "code": code }),
            IP_A,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    assert!(!h.audit().await.iter().any(|r| r.action == "enroll"));
    let a = enroll(&h, &mut SoftPasskey::new(true), &code).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let enrolled: Vec<_> = h
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "enroll")
        .collect();
    assert_eq!(
        enrolled.len(),
        1,
        "one record for the code and the credential"
    );
}

#[tokio::test]
async fn wrong_enrollment_code_is_refused_and_counted() {
    let h = Harness::new().await;
    h.add_user("sato").await;
    let (unknown, _) = new_enrollment_code();
    let a = enroll(&h, &mut SoftPasskey::new(true), &unknown).await;
    assert_refused(&a, StatusCode::FORBIDDEN, "enroll_code_invalid");
    // Another user's code does not enroll this user.
    let satos = h.code("sato", 3600).await;
    let a = enroll(&h, &mut SoftPasskey::new(true), &satos).await;
    assert_refused(&a, StatusCode::FORBIDDEN, "enroll_code_invalid");
    assert!(h.store.credentials_for_user(USER).await.unwrap().is_empty());
    assert!(h
        .store
        .credentials_for_user("sato")
        .await
        .unwrap()
        .is_empty());
    // The third failure for this user locks it.
    let a = enroll(&h, &mut SoftPasskey::new(true), &unknown).await;
    assert_refused(&a, StatusCode::TOO_MANY_REQUESTS, "locked_out");
    let failed = h
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "enroll.failed" && r.reason == "enroll_code_invalid")
        .count();
    assert_eq!(failed, 3);
}

#[tokio::test]
async fn attested_only_policy_refuses_a_software_key() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = kakehashi_pki::CaDir::init(
        &ca_dir.path().join("ca"),
        &kakehashi_pki::InitOptions::default(),
    )
    .unwrap();
    let ca_pem = ca.ca_cert_path();
    let h = Harness::with(|_| config(vec![ca_pem.clone()], None), None).await;
    let code = h.code(USER, 3600).await;

    let a = enroll(&h, &mut SoftPasskey::new(true), &code).await;
    assert_refused(&a, StatusCode::FORBIDDEN, "attestation_required");
    // An attesting key from a CA not on the list is refused too.
    let (mut token, _its_ca) = SoftToken::new(true).unwrap();
    let a = enroll(&h, &mut token, &code).await;
    assert_refused(&a, StatusCode::FORBIDDEN, "attestation_required");
    assert!(h.store.credentials_for_user(USER).await.unwrap().is_empty());
    assert!(h
        .audit()
        .await
        .iter()
        .any(|r| r.action == "enroll.failed" && r.reason == "attestation_required"));
}

#[tokio::test]
async fn attested_key_from_a_listed_ca_enrolls_and_unattested_keys_cannot_log_in() {
    let (mut token, token_ca) = SoftToken::new(true).unwrap();
    let mut b = AttestationCaListBuilder::new();
    b.insert_device_x509(
        token_ca,
        webauthn_authenticator_rs::softtoken::AAGUID,
        "software test token".into(),
        Default::default(),
    )
    .unwrap();
    let list = b.build();
    let h = Harness::with(|_| config(Vec::new(), None), Some(list)).await;
    let code = h.code(USER, 3600).await;
    let a = enroll(&h, &mut token, &code).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["attested"], true);
    let a = login(&h, &mut token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // A user who enrolled a plain passkey before the policy changed.
    h.add_user("sato").await;
    let plain = PortalState::new(&h.cfg, h.store.clone(), None).unwrap();
    let plain_app = router(plain);
    let code = h.code("sato", 3600).await;
    let mut plain_key = SoftPasskey::new(true);
    let a = enroll_on(&plain_app, &mut plain_key, &h.origin, "sato", &code, IP_A).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    // The start tells nobody; the holder of the key learns why after using it.
    let (ceremony, options) = login_start(&h.app, "sato", IP_A).await;
    let cred = plain_key
        .do_authentication(h.origin.clone(), options)
        .unwrap();
    let a = post(
        &h.app,
        "/api/login/finish",
        finish_body(&ceremony, &cred),
        IP_A,
    )
    .await;
    assert_refused(&a, StatusCode::FORBIDDEN, "attestation_required");
}

#[tokio::test]
async fn login_start_answers_alike_for_unknown_unenrolled_disabled_and_enrolled_ids() {
    let h = Harness::new().await;
    let mut key = SoftPasskey::new(true);
    let code = h.code(USER, 3600).await;
    assert_eq!(enroll(&h, &mut key, &code).await.status, StatusCode::OK);
    h.add_user("not-enrolled").await;
    h.add_user("disabled").await;
    let mut other = SoftPasskey::new(true);
    let code = h.code("disabled", 3600).await;
    let a = enroll_on(&h.app, &mut other, &h.origin, "disabled", &code, IP_A).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    h.store
        .set_user_disabled(
            "disabled",
            true,
            Audit::new(unix_now(), "test", "user.disable"),
        )
        .await
        .unwrap();

    // Every id gets 200 and options of one shape: same keys, settings and
    // credential entry fields; only the challenge and the ids differ.
    let shape = |v: &Value| {
        let mut v = v.clone();
        let pk = v["publicKey"].as_object_mut().unwrap();
        assert_eq!(
            pk["challenge"].as_str().unwrap().len(),
            43,
            "32-byte challenge"
        );
        pk.remove("challenge");
        let creds = pk.remove("allowCredentials").unwrap();
        let creds = creds.as_array().unwrap();
        assert!(!creds.is_empty());
        let fields: Vec<Vec<String>> = creds
            .iter()
            .map(|c| {
                let c = c.as_object().unwrap();
                assert_eq!(c["type"], "public-key");
                c.keys().cloned().collect()
            })
            .collect();
        (v, fields[0].clone())
    };
    let start = |user: &'static str| {
        let app = h.app.clone();
        async move {
            let a = post(&app, "/api/login/start", json!({ "user": user }), IP_A).await;
            assert_eq!(a.status, StatusCode::OK, "{user}: {}", a.text);
            a.json
        }
    };
    let real = start(USER).await;
    let (real_shape, real_fields) = shape(&real["options"]);
    for user in ["no-such-user", "not-enrolled", "disabled"] {
        let j = start(user).await;
        let (s, fields) = shape(&j["options"]);
        assert_eq!(s, real_shape, "{user}");
        assert_eq!(fields, real_fields, "{user}");
        // The same id twice: the same credential ids, as for a real user.
        let again = start(user).await;
        assert_eq!(
            j["options"]["publicKey"]["allowCredentials"],
            again["options"]["publicKey"]["allowCredentials"],
            "{user}"
        );
    }
    // A decoy's finish fails like a wrong key (no lockout count); the audit
    // log keeps why.
    let (ceremony, _) = login_start(&h.app, "no-such-user", IP_A).await;
    let (real_ceremony, options) = login_start(&h.app, USER, IP_A).await;
    let cred = key.do_authentication(h.origin.clone(), options).unwrap();
    let a = post(
        &h.app,
        "/api/login/finish",
        finish_body(&ceremony, &cred),
        IP_A,
    )
    .await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "assertion_invalid");
    let log = h.audit().await;
    assert!(
        log.iter().any(|r| r.action == "login.failed"
            && r.subject == "no-such-user"
            && r.reason == "login_unavailable"),
        "{log:?}"
    );
    // The disabled user, with their own key, is told after the assertion.
    let (ceremony, options) = login_start(&h.app, "disabled", IP_A).await;
    let cred = other.do_authentication(h.origin.clone(), options).unwrap();
    let a = post(
        &h.app,
        "/api/login/finish",
        finish_body(&ceremony, &cred),
        IP_A,
    )
    .await;
    assert_refused(&a, StatusCode::FORBIDDEN, "user_disabled");
    // The enrolled user still logs in.
    drop(real_ceremony);
    let a = login(&h, &mut key).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

#[tokio::test]
async fn lockout_is_per_user_and_address_survives_restart_and_ends() {
    let h = Harness::new().await;
    let code = h.code(USER, 3600).await;
    let mut key = SoftPasskey::new(true);
    assert_eq!(enroll(&h, &mut key, &code).await.status, StatusCode::OK);
    let wrong = Url::parse("https://portal.example.test:8443").unwrap();

    // Garbage assertions (no credential of this user) from an attacker's
    // address count against no one, however many.
    let attacker = [198, 51, 100, 66];
    for _ in 0..10 {
        let (ceremony, _) = login_start(&h.app, USER, attacker).await;
        let bogus = json!({
            "id": "AAAA", "rawId": "AAAA", "type": "public-key", "extensions": {},
            "response": {"authenticatorData": "AAAA", "clientDataJSON": "AAAA", "signature": "AAAA"}
        });
        let a = post(
            &h.app,
            "/api/login/finish",
            finish_body(&ceremony, &bogus),
            attacker,
        )
        .await;
        assert_refused(&a, StatusCode::UNAUTHORIZED, "assertion_invalid");
    }
    assert!(h
        .store
        .active_lockouts(unix_now())
        .await
        .unwrap()
        .is_empty());

    // Failures that present the user's real key (here: at the wrong
    // origin) lock the user *at that address*.
    for i in 0..3 {
        let a = login_on(&h.app, &mut key, &wrong, IP_A).await;
        if i < 2 {
            assert_refused(&a, StatusCode::FORBIDDEN, "origin_mismatch");
        } else {
            assert_refused(&a, StatusCode::TOO_MANY_REQUESTS, "locked_out");
            assert!(a.headers.contains_key(header::RETRY_AFTER));
        }
    }
    let a = post(&h.app, "/api/login/start", json!({ "user": USER }), IP_A).await;
    assert_refused(&a, StatusCode::TOO_MANY_REQUESTS, "locked_out");
    assert!(a.json["retry_after"]
        .as_i64()
        .is_some_and(|s| s > 0 && s <= 60));

    // A restarted gateway reads the same counters.
    let (state, app) = h.restarted();
    let a = post(&app, "/api/login/start", json!({ "user": USER }), IP_A).await;
    assert_refused(&a, StatusCode::TOO_MANY_REQUESTS, "locked_out");

    // The person at their own address is not locked out.
    let a = login_on(&app, &mut key, &h.origin, IP_B).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // An officer's unlock lifts the lock at once (audited).
    let n = h
        .store
        .unlock_user(
            USER,
            Audit::new(unix_now(), "officer", "user.unlock").subject(USER),
        )
        .await
        .unwrap();
    assert!(n >= 1);
    let a = login_on(&app, &mut key, &h.origin, IP_A).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // Locked again from IP_A; the lock ends by itself after lockout_secs.
    for _ in 0..3 {
        login_on(&app, &mut key, &wrong, IP_A).await;
    }
    let a = post(&app, "/api/login/start", json!({ "user": USER }), IP_A).await;
    assert_refused(&a, StatusCode::TOO_MANY_REQUESTS, "locked_out");
    state.advance_clock(61);
    let a = login_on(&app, &mut key, &h.origin, IP_A).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    // And a success clears the counter at that address.
    assert!(h
        .store
        .active_lockouts(unix_now() + 61)
        .await
        .unwrap()
        .is_empty());
    let log = h.audit().await;
    assert!(log
        .iter()
        .any(|r| r.action == "login.failed" && r.reason == "locked_out"));
}

#[tokio::test]
async fn bad_enrollment_codes_lock_only_that_user_at_that_address() {
    let h = Harness::new().await;
    h.add_user("sato").await;
    let good = h.code("sato", 3600).await;
    // Mistyped ids that do not exist count against no one: the same
    // answer as a wrong code, and the address is not locked.
    for user in ["ghost1", "ghost2", "ghost3", "ghost4"] {
        let a = post(
            &h.app,
            "/api/enroll/start",
            json!({ "user": user, "code": "AAAA-BBBB-CCCC-DDDD" }),
            IP_A,
        )
        .await;
        assert_refused(&a, StatusCode::FORBIDDEN, "enroll_code_invalid");
    }
    let a = enroll_on(
        &h.app,
        &mut SoftPasskey::new(true),
        &h.origin,
        "sato",
        &good,
        IP_A,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // Bad codes for one user from several addresses: one each, no lock.
    for ip in [[198, 51, 100, 1], [198, 51, 100, 2], [198, 51, 100, 3]] {
        let a = post(
            &h.app,
            "/api/enroll/start",
            json!({ "user": USER, "code": "nope" }),
            ip,
        )
        .await;
        assert_eq!(a.json["error"], "enroll_code_invalid", "{}", a.text);
    }
    // Three from one address lock that user at that address only.
    for i in 0..3 {
        let a = post(
            &h.app,
            "/api/enroll/start",
            json!({ "user": USER, "code": "nope" }),
            [203, 0, 113, 9],
        )
        .await;
        let want = if i < 2 {
            "enroll_code_invalid"
        } else {
            "locked_out"
        };
        assert_eq!(a.json["error"], want, "{}", a.text);
    }
    let code = h.code(USER, 3600).await;
    let a = post(
        &h.app,
        "/api/enroll/start",
        json!({ "user": USER, "code": code }),
        [203, 0, 113, 9],
    )
    .await;
    assert_refused(&a, StatusCode::TOO_MANY_REQUESTS, "locked_out");
    let a = post(
        &h.app,
        "/api/enroll/start",
        json!({ "user": USER, "code": code }),
        IP_B,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    h.state.advance_clock(61);
    let a = post(
        &h.app,
        "/api/enroll/start",
        json!({ "user": USER, "code": code }),
        [203, 0, 113, 9],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

#[tokio::test]
async fn login_request_is_checked_strictly() {
    let h = Harness::new().await;
    let code = h.code(USER, 3600).await;
    let mut key = SoftPasskey::new(true);
    assert_eq!(enroll(&h, &mut key, &code).await.status, StatusCode::OK);
    let (ceremony, options) = login_start(&h.app, USER, IP_A).await;
    let cred = key.do_authentication(h.origin.clone(), options).unwrap();
    for (field, value, reason) in [
        (
            "redirect_uri",
            "http://localhost:53682/callback",
            "redirect_invalid",
        ),
        (
            "redirect_uri",
            "https://evil.example/callback",
            "redirect_invalid",
        ),
        ("code_challenge_method", "plain", "pkce_invalid"),
        ("code_challenge", "", "pkce_invalid"),
        ("state", "", "login_request_invalid"),
    ] {
        let mut body = finish_body(&ceremony, &cred);
        body[field] = json!(value);
        let a = post(&h.app, "/api/login/finish", body, IP_A).await;
        assert_refused(&a, StatusCode::BAD_REQUEST, reason);
    }
    // The checks ran before the ceremony: it is still good.
    let a = post(
        &h.app,
        "/api/login/finish",
        finish_body(&ceremony, &cred),
        IP_A,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // An unknown id is not told apart from a real one (decoy options).
    let a = post(
        &h.app,
        "/api/login/start",
        json!({ "user": "nobody" }),
        IP_A,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = post(&h.app, "/api/login/start", json!({ "user": "a b" }), IP_A).await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = post(
        &h.app,
        "/api/login/start",
        json!({ "user": USER, "extra": 1 }),
        IP_A,
    )
    .await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn pages_render_with_strict_headers() {
    let h = Harness::new().await;
    let a = get(&h.app, "/enroll", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text.contains("<html lang=\"ja\">"));
    assert!(a.text.contains("登録コード"));
    let csp = a.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert_eq!(a.headers["referrer-policy"], "same-origin");
    assert!(a.headers.contains_key("strict-transport-security"));
    assert!(!a.text.contains("<script>"), "no inline script");

    let a = get(&h.app, "/enroll?lang=en", None).await;
    assert!(a.text.contains("<html lang=\"en\">") && a.text.contains("Enrollment code"));
    assert!(
        a.text.contains("href=\"/enroll\""),
        "switch back to Japanese"
    );

    let q = format!(
        "/login?redirect_uri={}&state=state-1234567&code_challenge={CHALLENGE}&code_challenge_method=S256&device=PC-0001",
        url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
    );
    let a = get(&h.app, &q, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a
        .text
        .contains("data-redirect-uri=\"http://127.0.0.1:53682/callback\""));
    assert!(a.text.contains("PC-0001"));
    assert!(
        a.text.contains("lang=en"),
        "switch link keeps the parameters"
    );

    let a = get(
        &h.app,
        "/login?redirect_uri=http%3A%2F%2Flocalhost%3A1%2Fcb&state=state-1234567",
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.text.contains("redirect_invalid"));
    let a = get(&h.app, &format!("{q}&state=again"), None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "repeated parameter");

    let js = get(&h.app, "/assets/portal.js", None).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.text.contains("navigator.credentials.create"));
    assert_eq!(
        get(&h.app, "/assets/portal.css", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&h.app, "/nope", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&h.app, "/", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn me_page_lists_devices_and_signs_a_device_out() {
    let h = Harness::new().await;
    let code = h.code(USER, 3600).await;
    let mut key = SoftPasskey::new(true);
    assert_eq!(enroll(&h, &mut key, &code).await.status, StatusCode::OK);
    let now = unix_now();
    h.store
        .upsert_device(
            &DeviceSpec {
                id: "PC-0001".into(),
                class: DeviceClass::Home,
                loaned_to: Some(USER.into()),
                cert_serial: Some("01ab".into()),
            },
            Audit::new(now, "cli:test", "device.add").subject("PC-0001"),
        )
        .await
        .unwrap();
    let token_hash = Hash256::digest(b"a login token");
    h.store
        .create_login_token(
            &NewLoginToken {
                token_hash,
                user_id: USER.into(),
                device_id: "PC-0001".into(),
                cert_serial: "01ab".into(),
                expires_at: now + 3600,
            },
            Audit::new(now, USER, "token.issue").subject("PC-0001"),
        )
        .await
        .unwrap();

    let a = get(&h.app, "/me", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text.contains("data-mode=\"portal\""));
    assert!(!a.text.contains("PC-0001"));

    let (ceremony, options) = login_start(&h.app, USER, IP_A).await;
    let cred = key.do_authentication(h.origin.clone(), options).unwrap();
    let a = post(
        &h.app,
        "/api/session/finish",
        json!({ "ceremony": ceremony, "credential": cred }),
        IP_A,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let set_cookie = a.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    for attr in [
        "__Host-kakehashi-session=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let a = get(&h.app, "/me", Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text.contains("PC-0001") && a.text.contains("山田 太郎"));
    assert!(a.text.contains(&token_hash.to_hex()));
    // Every form on the page carries the session's CSRF token.
    let csrf = a
        .text
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(
        a.text.matches(r#"name="csrf""#).count(),
        2,
        "logout and revoke"
    );

    let revoke_with = |origin: Option<&str>, cookie: Option<&str>, csrf: &str| {
        let mut r = Request::builder()
            .method(Method::POST)
            .uri("/me/revoke")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            r = r.header(header::ORIGIN, o);
        }
        if let Some(c) = cookie {
            r = r.header(header::COOKIE, c);
        }
        r.body(Body::from(format!(
            "csrf={csrf}&token={}",
            token_hash.to_hex()
        )))
        .unwrap()
    };
    let revoke = |origin: Option<&str>, cookie: Option<&str>| revoke_with(origin, cookie, &csrf);
    let a = send(
        &h.app,
        revoke(Some("https://evil.example"), Some(&cookie)),
        IP_A,
    )
    .await;
    assert_refused(&a, StatusCode::FORBIDDEN, "origin_mismatch");
    let a = send(&h.app, revoke(Some(ORIGIN), None), IP_A).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // A forged form (right origin and cookie, no or a wrong token): refused.
    for forged in ["", "AAAA"] {
        let a = send(
            &h.app,
            revoke_with(Some(ORIGIN), Some(&cookie), forged),
            IP_A,
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{forged:?}: {}", a.text);
    }
    assert!(h
        .store
        .get_login_token(&token_hash)
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_none());

    let a = send(&h.app, revoke(Some(ORIGIN), Some(&cookie)), IP_A).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    assert!(h
        .store
        .get_login_token(&token_hash)
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert!(h
        .audit()
        .await
        .iter()
        .any(|r| r.action == "token.revoke" && r.subject == "PC-0001" && r.actor == USER));

    // Signing out of the portal ends the session; a forged sign-out does not.
    let out = |csrf: &str| {
        Request::builder()
            .method(Method::POST)
            .uri("/me/logout")
            .header(header::ORIGIN, ORIGIN)
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={csrf}")))
            .unwrap()
    };
    assert_eq!(
        send(&h.app, out("nope"), IP_A).await.status,
        StatusCode::FORBIDDEN
    );
    assert!(get(&h.app, "/me", Some(&cookie))
        .await
        .text
        .contains("PC-0001"));
    assert_eq!(
        send(&h.app, out(&csrf), IP_A).await.status,
        StatusCode::SEE_OTHER
    );
    let a = get(&h.app, "/me", Some(&cookie)).await;
    assert!(a.text.contains("data-mode=\"portal\""));
}

#[test]
fn enrollment_codes_normalise() {
    let (code, hash) = new_enrollment_code();
    assert_eq!(code.len(), 19);
    assert_eq!(enrollment_code_hash(&code), Some(hash));
    assert_eq!(enrollment_code_hash(&code.to_lowercase()), Some(hash));
    assert_eq!(enrollment_code_hash(&code.replace('-', "  ")), Some(hash));
    let full_width: String = code
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                char::from_u32(u32::from(c) + 0xFEE0).unwrap()
            } else {
                'ー'
            }
        })
        .collect();
    assert_eq!(enrollment_code_hash(&full_width), Some(hash));
    assert_eq!(
        enrollment_code_hash("O0IL-1111-0000-2222"),
        enrollment_code_hash("0011-1111-0000-2222")
    );
    assert_eq!(enrollment_code_hash("short"), None);
    assert_eq!(enrollment_code_hash("UUUU-UUUU-UUUU-UUUU"), None);
    assert_eq!(enrollment_code_hash(&format!("{code}-A")), None);
}

/// A tiny HTTP/1.1 exchange over any stream.
async fn http_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    request: &str,
) -> String {
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn serve_over_tls_and_plain_http() {
    let ca_dir = tempfile::tempdir().unwrap();
    let mut ca = kakehashi_pki::CaDir::init(
        &ca_dir.path().join("ca"),
        &kakehashi_pki::InitOptions::default(),
    )
    .unwrap();
    let issued = ca
        .issue(&kakehashi_pki::IssueRequest::new(
            kakehashi_pki::Subject::Gateway {
                name: "portal.example.test".into(),
                ips: vec![],
            },
        ))
        .unwrap();
    let h = Harness::with(
        |_| config(Vec::new(), Some((&issued.cert_path, &issued.key_path))),
        None,
    )
    .await;
    let tls = tls_config(&h.cfg).unwrap();

    // HTTPS.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = kakehashi_transport::Shutdown::new();
    let server = tokio::spawn(serve(h.state.clone(), listener, Some(tls), stop.clone()));
    let roots = kakehashi_transport::tls::roots(
        &kakehashi_transport::tls::load_certs(&ca.ca_cert_path()).unwrap(),
    )
    .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(kakehashi_transport::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls_stream = connector
        .connect(
            kakehashi_transport::tls::server_name("portal.example.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let resp = http_exchange(
        tls_stream,
        "GET /enroll HTTP/1.1\r\nHost: portal.example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("strict-transport-security"));
    // A client that never finishes its handshake does not block others.
    let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    stop.stop(Duration::from_secs(5)).await;
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();

    // Plain HTTP (insecure_http): the peer address reaches the audit log.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = kakehashi_transport::Shutdown::new();
    let server = tokio::spawn(serve(h.state.clone(), listener, None, stop.clone()));
    let body = r#"{"user":"yamada","code":"not-a-code"}"#;
    let req = format!(
        "POST /api/enroll/start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = http_exchange(tokio::net::TcpStream::connect(addr).await.unwrap(), &req).await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("enroll_code_invalid"));
    let log = h.audit().await;
    let rec = log
        .iter()
        .rev()
        .find(|r| r.action == "enroll.failed")
        .unwrap();
    assert!(
        rec.detail.contains("\"source\":\"127.0.0.1\""),
        "{}",
        rec.detail
    );
    stop.stop(Duration::from_secs(5)).await;
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

/// Chromium refuses a ceremony without user verification on its own side;
/// the server must refuse such an assertion too (a modified browser or a
/// script sends what it likes).
#[tokio::test]
async fn an_assertion_without_user_verification_is_refused_by_the_server() {
    let h = Harness::new().await;
    let code = h.code(USER, 3600).await;
    let mut key = SoftPasskey::new(true);
    assert_eq!(enroll(&h, &mut key, &code).await.status, StatusCode::OK);
    let (ceremony, options) = login_start(&h.app, USER, IP_A).await;
    // The authenticator is told verification is not needed, so its
    // assertion carries no UV flag; the server asked for it.
    let mut o = serde_json::to_value(&options).unwrap();
    assert_eq!(o["publicKey"]["userVerification"], "required");
    o["publicKey"]["userVerification"] = json!("discouraged");
    let options: RequestChallengeResponse = serde_json::from_value(o).unwrap();
    let cred = key.do_authentication(h.origin.clone(), options).unwrap();
    let a = post(
        &h.app,
        "/api/login/finish",
        finish_body(&ceremony, &cred),
        IP_A,
    )
    .await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "assertion_invalid");
    assert!(a.json.get("redirect").is_none());
}

/// Two gateways on one store (issue 18 item 4): an enrollment and a login
/// started on one portal finish on the other, each ceremony once across
/// both; a portal session made on one is signed in on the other with the
/// same CSRF token, and signing out on either ends it on both. The store
/// keeps only hashes of the ids.
#[tokio::test]
async fn a_ceremony_or_portal_session_started_on_one_gateway_goes_on_on_another() {
    let h = Harness::new().await;
    let (_gw2, app2) = h.restarted();
    let code = h.code(USER, 3600).await;
    let mut key = SoftPasskey::new(true);

    // Enrollment: start on gateway 1, finish on gateway 2.
    let start = post(
        &h.app,
        "/api/enroll/start",
        json!({ "user": USER, "code": code }),
        IP_A,
    )
    .await;
    assert_eq!(start.status, StatusCode::OK, "{}", start.text);
    let options: CreationChallengeResponse =
        serde_json::from_value(start.json["options"].clone()).unwrap();
    let cred = key.do_registration(h.origin.clone(), options).unwrap();
    let body = json!({ "ceremony": start.json["ceremony"], "credential": cred });
    let a = post(&app2, "/api/enroll/finish", body.clone(), IP_A).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["enrolled"], true);
    let a = post(&h.app, "/api/enroll/finish", body, IP_A).await;
    assert_refused(&a, StatusCode::GONE, "ceremony_expired");

    // Login: start on gateway 2, finish on gateway 1; the same assertion
    // again on gateway 2 finds no ceremony.
    let (ceremony, options) = login_start(&app2, USER, IP_A).await;
    let cred = key.do_authentication(h.origin.clone(), options).unwrap();
    let a = post(
        &h.app,
        "/api/login/finish",
        finish_body(&ceremony, &cred),
        IP_A,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.json["redirect"].as_str().unwrap().contains("code="));
    let a = post(
        &app2,
        "/api/login/finish",
        finish_body(&ceremony, &cred),
        IP_A,
    )
    .await;
    assert_refused(&a, StatusCode::GONE, "ceremony_expired");
    // The store holds the ceremony's hash (in the database or its
    // write-ahead log), never its id.
    let files: Vec<Vec<u8>> = ["store.db", "store.db-wal"]
        .iter()
        .filter_map(|f| std::fs::read(h._dir.path().join(f)).ok())
        .collect();
    let holds = |needle: &[u8]| {
        files
            .iter()
            .any(|raw| raw.windows(needle.len()).any(|w| w == needle))
    };
    assert!(
        holds(Hash256::digest(&ceremony).as_bytes()),
        "the hash was stored"
    );
    assert!(
        !holds(ceremony.as_bytes()),
        "ceremony id stored in the clear"
    );

    // A portal session made on gateway 1 is signed in on gateway 2.
    let (ceremony, options) = login_start(&h.app, USER, IP_A).await;
    let cred = key.do_authentication(h.origin.clone(), options).unwrap();
    let a = post(
        &h.app,
        "/api/session/finish",
        json!({ "ceremony": ceremony, "credential": cred }),
        IP_A,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let set_cookie = a.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf_on = |text: &str| {
        text.split(r#"name="csrf" value=""#)
            .nth(1)
            .and_then(|t| t.split('"').next())
            .unwrap()
            .to_owned()
    };
    let one = get(&h.app, "/me", Some(&cookie)).await;
    let two = get(&app2, "/me", Some(&cookie)).await;
    assert!(two.text.contains("山田 太郎"), "{}", two.text);
    assert_eq!(csrf_on(&one.text), csrf_on(&two.text), "one CSRF token");
    // Signed out on gateway 2 with the token gateway 1's page carried:
    // signed out on both.
    let out = Request::builder()
        .method(Method::POST)
        .uri("/me/logout")
        .header(header::ORIGIN, ORIGIN)
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={}", csrf_on(&one.text))))
        .unwrap();
    assert_eq!(send(&app2, out, IP_A).await.status, StatusCode::SEE_OTHER);
    for app in [&h.app, &app2] {
        let a = get(app, "/me", Some(&cookie)).await;
        assert!(a.text.contains("data-mode=\"portal\""), "signed out");
    }
}
