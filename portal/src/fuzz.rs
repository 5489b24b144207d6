//! Entry point for the `portal_json` fuzz target: the bodies and query
//! strings the portal takes from anyone who can reach it, decoded into the
//! exact types its handlers use and put through the checks the handlers
//! make before they touch the store.

use std::sync::OnceLock;

use axum::extract::Query;
use axum::http::Uri;
use url::{Host, Url};
use webauthn_rs::prelude::{PasskeyRegistration, Webauthn, WebauthnBuilder};

use crate::api::{EnrollFinish, EnrollStart, LoginFinish, LoginStart, SessionFinish};
use crate::codes::{enrollment_code_hash, user_handle};
use crate::officer::rules::{preview, PreviewRequest};
use crate::redirect::LoginParams;

/// A relying party and a registration ceremony in progress, made once per
/// process: what `/api/enroll/finish` checks a credential against.
fn ceremony() -> &'static (Webauthn, PasskeyRegistration) {
    static C: OnceLock<(Webauthn, PasskeyRegistration)> = OnceLock::new();
    C.get_or_init(|| {
        let origin = Url::parse("http://localhost:8444").expect("a valid origin");
        let w = WebauthnBuilder::new("localhost", &origin)
            .and_then(|b| b.rp_name("Kakehashi").build())
            .expect("a valid relying party");
        let (_, state) = w
            .start_passkey_registration(user_handle("fuzz-user"), "fuzz-user", "fuzz-user", None)
            .expect("a registration starts");
        (w, state)
    })
}

/// What the handlers do with a login request (`GET /login?…` and
/// `POST /api/login/finish`): the parameters are checked, and a request
/// that passes is redirected to its loopback address with the code and the
/// state, and nothing else.
fn login_params(p: &LoginParams) {
    let Ok(login) = p.check() else {
        return;
    };
    let code = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5";
    let to = Url::parse(&login.redirect_with(code)).expect("the redirect is a URL");
    assert_eq!(to.scheme(), "http");
    assert!(matches!(to.host(), Some(Host::Ipv4(_) | Host::Ipv6(_))));
    assert!(login.loopback_ip().is_some_and(|ip| ip.is_loopback()));
    assert_eq!(to.port(), login.redirect.port());
    assert_eq!(to.path(), login.redirect.path());
    let pairs: Vec<(String, String)> = to.query_pairs().into_owned().collect();
    assert_eq!(
        pairs,
        [
            ("code".to_owned(), code.to_owned()),
            ("state".to_owned(), login.state.clone())
        ]
    );
    assert!(to.fragment().is_none() && to.username().is_empty());
}

/// What `enroll_start` and `login_start` check before the store: the user
/// id, and an enrollment code as typed. A code that is accepted is accepted
/// the same in lower case and with hyphens between its characters.
fn user_and_code(user: &str, code: Option<&str>) {
    let _ = kakehashi_store::validate_id("user", user);
    let Some(code) = code else {
        return;
    };
    if let Some(h) = enrollment_code_hash(code) {
        assert_eq!(enrollment_code_hash(&code.to_lowercase()), Some(h));
        let spaced: String = code.chars().flat_map(|c| [c, '-']).collect();
        assert_eq!(enrollment_code_hash(&spaced), Some(h));
    }
}

/// Entry point for the `portal_json` fuzz target.
///
/// Byte 0 picks what the rest is (modulo 7): the JSON body of
/// `POST /api/enroll/start`, `/api/enroll/finish`, `/api/login/start`,
/// `/api/login/finish`, `/api/session/finish` or `/officer/rules/preview`,
/// or the query string of `GET /login`. The bytes are decoded as axum
/// decodes them (`serde_json::from_slice`, `Query`) into the handler's own
/// type, then checked as the handler checks them before it reads the store:
/// the user id and enrollment code, the loopback redirect and PKCE
/// parameters (a request that passes is redirected to a loopback address
/// with exactly `code` and `state`), a registration credential against a
/// ceremony in progress (which it can never complete: the challenge is
/// random), and the rules page's what-if preview on the officer's text.
pub fn fuzz_feed(data: &[u8]) {
    let Some((&select, body)) = data.split_first() else {
        return;
    };
    match select % 7 {
        0 => {
            if let Ok(b) = serde_json::from_slice::<EnrollStart>(body) {
                user_and_code(&b.user, Some(&b.code));
            }
        }
        1 => {
            if let Ok(b) = serde_json::from_slice::<EnrollFinish>(body) {
                let (w, state) = ceremony();
                let r = w.finish_passkey_registration(&b.credential, state);
                assert!(r.is_err(), "a credential for another challenge registered");
            }
        }
        2 => {
            if let Ok(b) = serde_json::from_slice::<LoginStart>(body) {
                user_and_code(&b.user, None);
            }
        }
        3 => {
            if let Ok(b) = serde_json::from_slice::<LoginFinish>(body) {
                login_params(&LoginParams {
                    redirect_uri: Some(b.redirect_uri),
                    state: Some(b.state),
                    code_challenge: Some(b.code_challenge),
                    code_challenge_method: Some(
                        b.code_challenge_method.unwrap_or_else(|| "S256".into()),
                    ),
                    device: b.device,
                });
            }
        }
        4 => {
            // The rest of the handler is the store's and webauthn-rs's
            // assertion check, against a ceremony this id must name.
            let _ = serde_json::from_slice::<SessionFinish>(body);
        }
        5 => {
            if let Ok(b) = serde_json::from_slice::<PreviewRequest>(body) {
                let out = preview(&b.text, &b.what_if);
                let errors = out["errors"].as_u64().unwrap_or(0);
                // Rules and a decision only for a policy without errors.
                if errors > 0 {
                    assert!(out["rules"].is_null() && out["decision"].is_null());
                }
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(body) else {
                return;
            };
            if let Ok(uri) = format!("/login?{text}").parse::<Uri>() {
                if let Ok(Query(p)) = Query::<LoginParams>::try_from_uri(&uri) {
                    login_params(&p);
                }
            }
        }
    }
}
