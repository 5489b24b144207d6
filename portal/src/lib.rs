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
//! Every page is a maud template in [`views`], one file per page, which
//! escapes whatever it splices in; the handlers check the visitor and read
//! the store, then hand the view plain data.
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

#![warn(missing_docs, unreachable_pub, clippy::cast_possible_truncation)]

mod access;
mod api;
mod codes;
pub mod config;
mod dashboard;
mod fuzz;
mod html;
mod officer;
#[cfg(test)]
mod officer_tests;
mod ops;
mod pages;
mod plans;
mod reason;
mod redirect;
mod router;
mod serve;
mod state;
#[cfg(test)]
mod tests;
mod throttle;
mod transient;
mod views;

pub use fuzz::fuzz_feed;
pub use reason::{Denial, Reason};
pub use serve::serve;

pub use codes::{enrollment_code_hash, login_code_hash, new_enrollment_code};
pub use config::{PortalConfig, PortalLimits};
pub use router::{router, tls_config};
pub use state::PortalState;
