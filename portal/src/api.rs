//! The JSON API: enrollment and login ceremonies (see the module docs for
//! the shapes).

use std::net::IpAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use kakehashi_store::{Audit, LockState, LockoutRule, NewCredential, NewLoginCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, error, info, warn};
use webauthn_rs::prelude::{
    Passkey, PublicKeyCredential, RegisterPublicKeyCredential, WebauthnError,
};

use super::reason::{Denial, Reason};
use super::redirect::LoginParams;
use crate::codes::{enrollment_code_hash, login_code_hash, random_b64url, user_handle};
use crate::state::{Peer, PortalState, CEREMONY_SECS, LOGIN_CODE_SECS, SESSION_SECS};
use crate::transient::{Ceremony, RegState};

type Result<T, E = Denial> = std::result::Result<T, E>;

/// `POST /api/enroll/start`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrollStart {
    pub(crate) user: String,
    pub(crate) code: String,
}

/// `POST /api/enroll/finish`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrollFinish {
    pub(crate) ceremony: String,
    pub(crate) credential: RegisterPublicKeyCredential,
}

/// `POST /api/login/start`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginStart {
    pub(crate) user: String,
}

/// `POST /api/login/finish`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginFinish {
    pub(crate) ceremony: String,
    pub(crate) credential: PublicKeyCredential,
    pub(crate) redirect_uri: String,
    pub(crate) state: String,
    pub(crate) code_challenge: String,
    #[serde(default)]
    pub(crate) code_challenge_method: Option<String>,
    #[serde(default)]
    pub(crate) device: Option<String>,
}

/// `POST /api/session/finish`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionFinish {
    pub(crate) ceremony: String,
    pub(crate) credential: PublicKeyCredential,
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T> {
    b.map(|Json(v)| v).map_err(|e| {
        debug!(error = %e, "Malformed portal request");
        Reason::BadRequest.into()
    })
}

/// The per-user counter: a short lock (backoff) only after failures from
/// several addresses, so no one address can lock a person out for long.
pub(crate) fn user_key(user: &str) -> String {
    format!("user:{user}")
}

/// The counter of one user at one address: the full lock. Staff behind one
/// NAT do not share it (it names the user), and an attacker elsewhere locks
/// only their own address out of that user.
pub(crate) fn pair_key(user: &str, ip: IpAddr) -> String {
    format!("pair:{user}@{ip}")
}

/// The lockout keys of `user` at `ip`: `[pair, user]`.
fn lock_keys(user: &str, ip: IpAddr) -> [String; 2] {
    [pair_key(user, ip), user_key(user)]
}

/// A credential id as written to the audit log and shown on `/me`.
pub(crate) fn cred_label(id: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(id)
}

fn valid_user_id(user: &str) -> Result<()> {
    kakehashi_store::validate_id("user", user).map_err(|_| Reason::BadRequest.into())
}

fn webauthn_internal(e: WebauthnError) -> Denial {
    error!(error = %e, "WebAuthn ceremony could not start");
    Reason::Internal.into()
}

impl PortalState {
    /// Refuses (and audits the refusal) when any of `keys` is locked.
    async fn check_locks(
        &self,
        keys: &[String],
        action: &str,
        subject: &str,
        ip: IpAddr,
    ) -> Result<()> {
        let now = self.now();
        for key in keys {
            if let Some(until) = self.store().is_locked(key, now).await? {
                debug!(user = subject, source = %ip, "Refused while locked out");
                self.audit_refusal(
                    Audit::new(now, "portal", action)
                        .subject(subject)
                        .reason(Reason::LockedOut.code())
                        .detail(json!({ "source": ip.to_string(), "key": key })),
                    ip,
                )
                .await;
                return Err(Denial::locked(until - now));
            }
        }
        Ok(())
    }

    /// Appends an audit record that has no change of its own (a refusal).
    pub(crate) async fn audit(&self, audit: Audit) {
        if let Err(e) = self.store().append_audit(audit).await {
            error!(error = %format!("{e:#}"), "Cannot write the portal audit record");
        }
    }

    /// Audits a refusal that anyone can cause before login: the first of a
    /// kind (action, reason) from an address in a minute is written in
    /// full, the rest of that minute as one `audit.suppressed` summary
    /// (count and up to 20 subjects), so a flood cannot fill the log.
    pub(crate) async fn audit_refusal(&self, audit: Audit, ip: IpAddr) {
        let key = format!("{}|{}|{}", audit.action, audit.reason, ip);
        match self
            .inner
            .audit_throttle
            .admit(&key, &audit.subject, audit.at)
        {
            super::throttle::Admit::Suppress => {}
            super::throttle::Admit::Write { flushed } => {
                if let Some(s) = flushed {
                    self.audit(suppressed_record(&s)).await;
                }
                self.audit(audit).await;
            }
        }
    }

    /// Writes the summaries of finished throttle windows (all of them when
    /// `all`, at shutdown).
    pub(crate) async fn flush_audit_throttle(&self, all: bool) {
        for s in self.inner.audit_throttle.take_finished(self.now(), all) {
            self.audit(suppressed_record(&s)).await;
        }
    }

    /// Counts one failure against the `[pair, user]` keys (the audit record
    /// is written in the same transaction) and answers `reason`, or
    /// `locked_out` when this failure locked a key (a cloned credential
    /// keeps its own reason). The pair key takes the configured rule; the
    /// user key a backoff: four times the failures (so from several
    /// addresses) for at most a minute.
    async fn fail(&self, keys: &[String; 2], audit: Audit, reason: Reason) -> Denial {
        let now = audit.at;
        let rule: LockoutRule = self.inner.rule;
        let backoff = LockoutRule {
            max_failures: rule.max_failures.saturating_mul(4),
            window_secs: rule.window_secs,
            lockout_secs: rule.lockout_secs.min(60),
        };
        let pairs: Vec<(&str, LockoutRule)> =
            vec![(keys[0].as_str(), rule), (keys[1].as_str(), backoff)];
        match self.store().record_failures(&pairs, audit).await {
            Ok(states) => {
                let until = states
                    .iter()
                    .filter_map(|s| match s {
                        LockState::Locked { until } => Some(*until),
                        _ => None,
                    })
                    .max();
                match until {
                    Some(until) => {
                        warn!(keys = ?keys, until, "Portal lockout");
                        if reason == Reason::CredentialCloned {
                            reason.into()
                        } else {
                            Denial::locked(until - now)
                        }
                    }
                    None => reason.into(),
                }
            }
            Err(e) => e.into(),
        }
    }

    /// Checks an assertion against the ceremony started by
    /// `/api/login/start`, updates the credential's counter and returns the
    /// user. `purpose` is `loopback` or `portal` (for the audit).
    async fn authenticate(
        &self,
        ip: IpAddr,
        ceremony: &str,
        credential: &PublicKeyCredential,
        purpose: &str,
        device: Option<&str>,
    ) -> Result<String> {
        let now = self.now();
        let taken = self.take_ceremony(ceremony).await?;
        if let Some(Ceremony::Decoy { user, why }) = &taken {
            // Refused as a key that is not the user's would be, without a
            // lockout count (nobody's credential was presented).
            info!(user, source = %ip, why, "Assertion for a login that cannot succeed");
            self.audit_refusal(
                Audit::new(now, "portal", "login.failed")
                    .subject(user)
                    .reason(Reason::LoginUnavailable.code())
                    .detail(json!({ "source": ip.to_string(), "purpose": purpose, "device": device, "detail": why })),
                ip,
            )
            .await;
            return Err(Reason::AssertionInvalid.into());
        }
        let Some(Ceremony::Login { user, state }) = taken else {
            debug!(source = %ip, "Login finish without a live ceremony");
            self.audit_refusal(
                Audit::new(now, "portal", "login.failed")
                    .reason(Reason::CeremonyExpired.code())
                    .detail(json!({ "source": ip.to_string(), "purpose": purpose })),
                ip,
            )
            .await;
            return Err(Reason::CeremonyExpired.into());
        };
        let keys = lock_keys(&user, ip);
        self.check_locks(&keys, "login.failed", &user, ip).await?;
        let failed = |reason: Reason, extra: Value| {
            Audit::new(now, "portal", "login.failed")
                .subject(&user)
                .reason(reason.code())
                .detail(json!({
                    "source": ip.to_string(),
                    "purpose": purpose,
                    "device": device,
                    "detail": extra,
                }))
        };
        // Only an assertion that presents one of this user's registered
        // credentials counts towards a lockout: anyone can send garbage for
        // any user id, and that must not lock the person out.
        let presented = self
            .store()
            .get_credential(credential.raw_id.as_slice())
            .await?;
        if presented.as_ref().is_none_or(|c| c.user_id != user) {
            info!(user, source = %ip, "Assertion with a credential that is not the user's");
            self.audit_refusal(
                failed(
                    Reason::AssertionInvalid,
                    json!("not a credential of this user"),
                ),
                ip,
            )
            .await;
            return Err(Reason::AssertionInvalid.into());
        }
        let result = match self
            .inner
            .webauthn
            .finish_passkey_authentication(credential, &state)
        {
            Ok(r) => r,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                return Err(self
                    .cloned(
                        &keys,
                        &user,
                        ip,
                        failed(Reason::CredentialCloned, Value::Null),
                    )
                    .await);
            }
            Err(e) => {
                let reason = match e {
                    WebauthnError::InvalidRPOrigin | WebauthnError::CredentialCrossOrigin => {
                        Reason::OriginMismatch
                    }
                    _ => Reason::AssertionInvalid,
                };
                info!(user, source = %ip, reason = reason.code(), error = %e, "Assertion refused");
                if reason == Reason::OriginMismatch {
                    let origin = client_origin(credential.response.client_data_json.as_ref());
                    self.origin_refused(&origin, "/api/login/finish");
                }
                let audit = failed(reason, json!({ "webauthn": e.to_string() }));
                return Err(self.fail(&keys, audit, reason).await);
            }
        };
        let cred_id = result.cred_id().as_slice();
        let stored = match self.store().get_credential(cred_id).await? {
            Some(c) if c.user_id == user => c,
            _ => {
                let audit = failed(Reason::AssertionInvalid, json!("unknown credential"));
                return Err(self.fail(&keys, audit, Reason::AssertionInvalid).await);
            }
        };
        // webauthn-rs compares with the counter at the ceremony's start; the
        // stored counter may have moved on since (the genuine key used in
        // between), so compare again with the latest.
        if self.inner.attestation.is_some() && !stored.attested {
            // Registered before attested keys were required: its holder is
            // told to enroll an approved key.
            self.audit_refusal(failed(Reason::AttestationRequired, Value::Null), ip)
                .await;
            return Err(Reason::AttestationRequired.into());
        }
        let counter = result.counter();
        if (counter > 0 || stored.counter > 0) && counter <= stored.counter {
            let audit = failed(
                Reason::CredentialCloned,
                json!({
                    "credential": cred_label(cred_id),
                    "stored_counter": stored.counter,
                    "presented_counter": counter,
                }),
            );
            return Err(self.cloned(&keys, &user, ip, audit).await);
        }
        match self.store().get_user(&user).await? {
            Some(u) if !u.disabled => {}
            _ => {
                self.audit_refusal(failed(Reason::UserDisabled, Value::Null), ip)
                    .await;
                return Err(Reason::UserDisabled.into());
            }
        }
        if self.inner.attestation.is_some() && !stored.attested {
            self.audit(failed(Reason::AttestationRequired, Value::Null))
                .await;
            return Err(Reason::AttestationRequired.into());
        }
        let mut passkey: Passkey = serde_json::from_str(&stored.passkey).map_err(|e| {
            error!(user, error = %e, "Stored passkey does not parse");
            Denial::from(Reason::Internal)
        })?;
        passkey.update_credential(&result);
        let passkey_json = serde_json::to_string(&passkey).map_err(|e| {
            error!(user, error = %e, "Passkey does not serialise");
            Denial::from(Reason::Internal)
        })?;
        let saved = self
            .store()
            .update_credential(
                cred_id,
                counter,
                &passkey_json,
                Audit::new(now, user.as_str(), "login")
                    .subject(&user)
                    .detail(json!({
                        "source": ip.to_string(),
                        "purpose": purpose,
                        "device": device,
                        "credential": cred_label(cred_id),
                        "counter": counter,
                    })),
            )
            .await;
        match saved {
            Ok(()) => {}
            // Another assertion with this counter was saved since the check
            // above: the store refuses atomically what the check missed.
            Err(kakehashi_store::Error::CounterRegression { stored, presented }) => {
                let audit = failed(
                    Reason::CredentialCloned,
                    json!({
                        "credential": cred_label(cred_id),
                        "stored_counter": stored,
                        "presented_counter": presented,
                    }),
                );
                return Err(self.cloned(&keys, &user, ip, audit).await);
            }
            Err(e) => return Err(e.into()),
        }
        // A success clears this user's counters at this address (not other
        // addresses': an attack elsewhere keeps its own lock).
        let clear: Vec<&str> = keys.iter().map(String::as_str).collect();
        if let Err(e) = self.store().clear_failures(&clear, now).await {
            warn!(user, error = %format!("{e:#}"), "Cannot clear the lockout counters after a login");
        }
        info!(user, source = %ip, purpose, device, "Security key login");
        Ok(user)
    }

    /// Answers a refused enrollment code (`Expired`, `AlreadyUsed`) with its
    /// reason and audits it; any other store error is internal.
    async fn code_refused(
        &self,
        e: kakehashi_store::Error,
        failed: impl FnOnce(Reason) -> Audit,
    ) -> Denial {
        let reason = match e {
            kakehashi_store::Error::Expired { .. } => Reason::EnrollCodeExpired,
            kakehashi_store::Error::AlreadyUsed { .. } => Reason::EnrollCodeUsed,
            e => return e.into(),
        };
        self.audit(failed(reason)).await;
        reason.into()
    }

    /// A signature counter that went backwards: refuse, count, audit, alert.
    async fn cloned(&self, keys: &[String; 2], user: &str, ip: IpAddr, audit: Audit) -> Denial {
        error!(
            user,
            source = %ip,
            detail = %audit.detail,
            "Cloned security key suspected: its signature counter went backwards; login refused"
        );
        self.fail(keys, audit, Reason::CredentialCloned).await
    }
}

/// The audit record summarising refusals the throttle counted.
fn suppressed_record(s: &super::throttle::Suppressed) -> Audit {
    let mut parts = s.key.splitn(3, '|');
    let action = parts.next().unwrap_or("");
    let reason = parts.next().unwrap_or("");
    let source = parts.next().unwrap_or("");
    Audit::new(s.to, "portal", "audit.suppressed")
        .reason(reason)
        .detail(json!({
            "action": action,
            "source": source,
            "count": s.count,
            "from": s.from,
            "to": s.to,
            "subjects": s.subjects,
        }))
}

/// `POST /api/enroll/start {user, code}`
pub(crate) async fn enroll_start(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    b: Result<Json<EnrollStart>, JsonRejection>,
) -> Result<Json<Value>> {
    let req = body(b)?;
    valid_user_id(&req.user)?;
    let now = s.now();
    let keys = lock_keys(&req.user, ip);
    s.check_locks(&keys, "enroll.failed", &req.user, ip).await?;
    let failed = |reason: Reason| {
        Audit::new(now, "portal", "enroll.failed")
            .subject(&req.user)
            .reason(reason.code())
            .detail(json!({ "source": ip.to_string() }))
    };
    let Some(code_hash) = enrollment_code_hash(&req.code) else {
        let r = Reason::EnrollCodeInvalid;
        return Err(s.fail(&keys, failed(r), r).await);
    };
    // The code is checked before anything about the user is told: without
    // the user's valid code, an unknown, disabled or enrolled id all get
    // `enroll_code_invalid`. Looked up, not spent: the code is spent with the
    // credential's insert in `enroll_finish`, so a ceremony that fails does
    // not burn it.
    let user = s.store().get_user(&req.user).await?;
    let owner = match s.store().enrollment_code_user(&code_hash, now).await {
        Ok(owner) => Some(owner),
        Err(kakehashi_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(s.code_refused(e, failed).await),
    };
    let user = match user {
        Some(u) if owner.as_deref() == Some(u.id.as_str()) => u,
        Some(_) => {
            let r = Reason::EnrollCodeInvalid;
            return Err(s.fail(&keys, failed(r), r).await);
        }
        None => {
            // No counter for ids that do not exist (a mistyped id must not
            // lock anyone out); the API rate per address bounds guessing.
            let r = Reason::EnrollCodeInvalid;
            s.audit_refusal(failed(r), ip).await;
            return Err(r.into());
        }
    };
    if user.disabled {
        s.audit_refusal(failed(Reason::UserDisabled), ip).await;
        return Err(Reason::UserDisabled.into());
    }
    let exclude: Vec<_> = s
        .store()
        .credentials_for_user(&user.id)
        .await?
        .into_iter()
        .map(|c| c.cred_id)
        .collect();
    let handle = user_handle(&user.id);
    let (options, state) = match &s.inner.attestation {
        None => {
            let (o, st) = s
                .inner
                .webauthn
                .start_passkey_registration(handle, &user.id, &user.name, Some(exclude))
                .map_err(webauthn_internal)?;
            (o, RegState::Passkey(st))
        }
        Some(cas) => {
            let (o, st) = s
                .inner
                .webauthn
                .start_attested_passkey_registration(
                    handle,
                    &user.id,
                    &user.name,
                    Some(exclude),
                    cas.clone(),
                    None,
                )
                .map_err(webauthn_internal)?;
            (o, RegState::Attested(st))
        }
    };
    let ceremony = s
        .put_ceremony(
            &Ceremony::Enroll {
                user: user.id.clone(),
                code_hash,
                state,
            },
            ip,
        )
        .await?;
    info!(user = %user.id, source = %ip, "Enrollment started");
    Ok(Json(json!({ "ceremony": ceremony, "options": options })))
}

/// Login options for a user id that cannot log in, shaped like a real
/// login's: the same settings, and one or two credential ids of a usual
/// length derived from the id with a key kept in memory, so asking twice
/// gives the same answer, as it does for a real user.
fn decoy_options(s: &PortalState, user: &str) -> Result<Value> {
    use ring::hmac;
    static KEY: std::sync::OnceLock<hmac::Key> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .expect("system random source")
    });
    let tag = |part: &str| hmac::sign(key, format!("decoy\0{user}\0{part}").as_bytes());
    let seed = tag("shape");
    let seed = seed.as_ref();
    let count = 1 + usize::from(seed[0] % 4 == 0);
    let allow: Vec<Value> = (0..count)
        .map(|i| {
            let len = [16, 32, 48, 64][usize::from(seed[1 + i] % 4)];
            let mut id = Vec::with_capacity(64);
            for half in 0..2 {
                id.extend_from_slice(tag(&format!("id{i}.{half}")).as_ref());
            }
            id.truncate(len);
            json!({ "type": "public-key", "id": URL_SAFE_NO_PAD.encode(id) })
        })
        .collect();
    // As webauthn-rs builds a passkey login's options (a test compares the two).
    Ok(json!({
        "publicKey": {
            "challenge": random_b64url::<32>(),
            "timeout": CEREMONY_SECS * 1000,
            "rpId": s.inner.rp_id,
            "allowCredentials": allow,
            "userVerification": "required",
        }
    }))
}

/// The origin a browser wrote into a ceremony's client data (what it
/// showed in its address bar), for the log.
fn client_origin(client_data_json: &[u8]) -> String {
    serde_json::from_slice::<Value>(client_data_json)
        .ok()
        .and_then(|v| v["origin"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "(unreadable client data)".into())
}

/// Maps a registration error to a reason.
fn registration_reason(e: &WebauthnError, attested_only: bool) -> Reason {
    match e {
        WebauthnError::InvalidRPOrigin | WebauthnError::CredentialCrossOrigin => {
            Reason::OriginMismatch
        }
        WebauthnError::CredentialAlreadyExists | WebauthnError::CredentialExcludedFromRequest => {
            Reason::CredentialExists
        }
        _ if attested_only
            && (format!("{e:?}").starts_with("Attestation")
                || matches!(
                    e,
                    WebauthnError::MissingAttestationCredentialData
                        | WebauthnError::CredentialMayNotBeHardwareBound
                        | WebauthnError::AuthenticatorDataMissingExtension
                        | WebauthnError::InvalidExtensions
                )) =>
        {
            Reason::AttestationRequired
        }
        _ => Reason::RegistrationFailed,
    }
}

/// `POST /api/enroll/finish {ceremony, credential}`
pub(crate) async fn enroll_finish(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    b: Result<Json<EnrollFinish>, JsonRejection>,
) -> Result<Json<Value>> {
    let req = body(b)?;
    let now = s.now();
    let Some(Ceremony::Enroll {
        user,
        code_hash,
        state,
    }) = s.take_ceremony(&req.ceremony).await?
    else {
        s.audit_refusal(
            Audit::new(now, "portal", "enroll.failed")
                .reason(Reason::CeremonyExpired.code())
                .detail(json!({ "source": ip.to_string() })),
            ip,
        )
        .await;
        return Err(Reason::CeremonyExpired.into());
    };
    let keys = lock_keys(&user, ip);
    s.check_locks(&keys, "enroll.failed", &user, ip).await?;
    let failed = |reason: Reason, extra: Value| {
        Audit::new(now, "portal", "enroll.failed")
            .subject(&user)
            .reason(reason.code())
            .detail(json!({ "source": ip.to_string(), "detail": extra }))
    };

    let attested_only = matches!(state, RegState::Attested(_));
    let registered = match &state {
        RegState::Passkey(st) => s
            .inner
            .webauthn
            .finish_passkey_registration(&req.credential, st)
            .map(|p| (p, false)),
        RegState::Attested(st) => s
            .inner
            .webauthn
            .finish_attested_passkey_registration(&req.credential, st)
            .map(|p| (Passkey::from(p), true)),
    };
    let (passkey, attested) = match registered {
        Ok(r) => r,
        Err(e) => {
            let reason = registration_reason(&e, attested_only);
            info!(user, source = %ip, reason = reason.code(), error = %e, "Enrollment refused");
            if reason == Reason::OriginMismatch {
                let origin = client_origin(req.credential.response.client_data_json.as_ref());
                s.origin_refused(&origin, "/api/enroll/finish");
            }
            s.audit(failed(reason, json!({ "webauthn": e.to_string() })))
                .await;
            return Err(reason.into());
        }
    };

    let cred_id = passkey.cred_id().clone();
    let passkey_json = serde_json::to_string(&passkey).map_err(|e| {
        error!(user, error = %e, "Passkey does not serialise");
        Denial::from(Reason::Internal)
    })?;
    // The registration's signature counter (usually 0), so the first login
    // is compared with the right value.
    let counter = serde_json::from_str::<Value>(&passkey_json)
        .ok()
        .and_then(|v| v["cred"]["counter"].as_u64())
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(0);
    // The code is spent in the transaction that stores the credential: of
    // two finishes with the same code only the first enrolls, and a
    // refused credential leaves the code usable.
    let added = s
        .store()
        .enroll_credential(
            &code_hash,
            &NewCredential {
                cred_id: cred_id.clone(),
                user_id: user.clone(),
                passkey: passkey_json,
                counter,
                attested,
            },
            Audit::new(now, user.as_str(), "enroll")
                .subject(&user)
                .detail(json!({
                    "source": ip.to_string(),
                    "credential": cred_label(&cred_id),
                    "attested": attested,
                })),
        )
        .await;
    match added {
        Ok(_) => {}
        Err(kakehashi_store::Error::AlreadyExists { .. }) => {
            s.audit(failed(Reason::CredentialExists, Value::Null)).await;
            return Err(Reason::CredentialExists.into());
        }
        Err(kakehashi_store::Error::NotFound { .. }) => {
            let r = Reason::EnrollCodeInvalid;
            return Err(s.fail(&keys, failed(r, Value::Null), r).await);
        }
        Err(e) => return Err(s.code_refused(e, |r| failed(r, Value::Null)).await),
    }
    info!(user, source = %ip, attested, "Security key enrolled");
    Ok(Json(
        json!({ "enrolled": true, "user": user, "attested": attested }),
    ))
}

/// `POST /api/login/start {user}`
pub(crate) async fn login_start(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    b: Result<Json<LoginStart>, JsonRejection>,
) -> Result<Json<Value>> {
    let req = body(b)?;
    valid_user_id(&req.user)?;
    let keys = lock_keys(&req.user, ip);
    s.check_locks(&keys, "login.failed", &req.user, ip).await?;
    // Whether the id exists, is disabled or has a security key is not told
    // here: an unknown or unenrolled id gets decoy options shaped like a real
    // login's (the finish then fails as a wrong key would, and the audit log
    // keeps the real reason); a disabled user or a key no longer accepted
    // (attested-only) is told after a valid assertion, to its holder only.
    let user = s.store().get_user(&req.user).await?;
    let creds = match &user {
        Some(u) => s.store().credentials_for_user(&u.id).await?,
        None => Vec::new(),
    };
    let passkeys: Vec<Passkey> = creds
        .into_iter()
        .filter_map(|c| match serde_json::from_str::<Passkey>(&c.passkey) {
            Ok(p) => Some(p),
            Err(e) => {
                error!(user = %req.user, error = %e, "Stored passkey does not parse; skipped");
                None
            }
        })
        .collect();
    let user = match user {
        Some(u) if !passkeys.is_empty() => u,
        other => {
            let why = if other.is_none() {
                "no such user"
            } else {
                "no security key"
            };
            let options = decoy_options(&s, &req.user)?;
            let ceremony = s
                .put_ceremony(
                    &Ceremony::Decoy {
                        user: req.user.clone(),
                        why: why.to_owned(),
                    },
                    ip,
                )
                .await?;
            debug!(user = %req.user, source = %ip, why, "Login started with decoy options");
            return Ok(Json(json!({ "ceremony": ceremony, "options": options })));
        }
    };
    let (mut options, state) = s
        .inner
        .webauthn
        .start_passkey_authentication(&passkeys)
        .map_err(webauthn_internal)?;
    // Transports are hints the browser does without (a security key still
    // works), and the decoys could not match every authenticator's.
    for c in &mut options.public_key.allow_credentials {
        c.transports = None;
    }
    let ceremony = s
        .put_ceremony(
            &Ceremony::Login {
                user: user.id.clone(),
                state,
            },
            ip,
        )
        .await?;
    debug!(user = %user.id, source = %ip, "Login started");
    Ok(Json(json!({ "ceremony": ceremony, "options": options })))
}

/// `POST /api/login/finish {ceremony, credential, redirect_uri, state, code_challenge, …}`
pub(crate) async fn login_finish(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    b: Result<Json<LoginFinish>, JsonRejection>,
) -> Result<Json<Value>> {
    let req = body(b)?;
    let now = s.now();
    let params = LoginParams {
        redirect_uri: Some(req.redirect_uri),
        state: Some(req.state),
        code_challenge: Some(req.code_challenge),
        code_challenge_method: Some(req.code_challenge_method.unwrap_or_else(|| "S256".into())),
        device: req.device,
    };
    let login = match params.check() {
        Ok(l) => l,
        Err(r) => {
            debug!(source = %ip, reason = r.code(), "Login request refused");
            s.audit_refusal(
                Audit::new(now, "portal", "login.failed")
                    .reason(r.code())
                    .detail(json!({ "source": ip.to_string() })),
                ip,
            )
            .await;
            return Err(r.into());
        }
    };
    let device = login.device.as_str();
    let user = s
        .authenticate(ip, &req.ceremony, &req.credential, "loopback", Some(device))
        .await?;
    let code = random_b64url::<32>();
    let expires_at = now + LOGIN_CODE_SECS;
    s.store()
        .create_login_code(
            &NewLoginCode {
                code_hash: login_code_hash(&code),
                user_id: user.clone(),
                pkce_challenge: login.code_challenge.clone(),
                device_id: device.to_owned(),
                expires_at,
            },
            Audit::new(now, user.as_str(), "login.code")
                .subject(&user)
                .detail(json!({
                    "source": ip.to_string(),
                    "device": device,
                    "expires_at": expires_at,
                })),
        )
        .await?;
    info!(user, device, loopback = ?login.loopback_ip(), "Login code issued");
    Ok(Json(json!({ "redirect": login.redirect_with(&code) })))
}

/// `POST /api/session/finish {ceremony, credential}`: signs in to `/me`.
pub(crate) async fn session_finish(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    b: Result<Json<SessionFinish>, JsonRejection>,
) -> Result<Response> {
    let req = body(b)?;
    let user = s
        .authenticate(ip, &req.ceremony, &req.credential, "portal", None)
        .await?;
    let id = s.new_session(&user).await?;
    let cookie = s.session_cookie(&id, SESSION_SECS);
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "redirect": "/me" })),
    )
        .into_response())
}
