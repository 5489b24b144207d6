//! Logins on the terminal listener: redeeming the portal's one-time code for
//! a token bound to the laptop's certificate, logging out, and checking the
//! token on every session request. Every outcome is audited with its reason;
//! tokens and codes never reach a log (only their SHA-256 is stored).

use std::time::Duration;

use base64::Engine as _;
use kakehashi_proto::message::{LoginResult, Logout, RedeemLogin, Secret};
use kakehashi_proto::{Reason, Refusal};
use kakehashi_store::{
    Audit, DeviceSpec, DeviceStatus, Error as StoreError, Hash256, NewLoginToken, Store,
};
use ring::rand::SecureRandom as _;
use serde_json::json;
use tracing::{info, warn};

/// The laptop on the other end of a terminal connection.
#[derive(Debug, Clone)]
pub struct Laptop {
    /// Device id from the certificate.
    pub device: String,
    /// Terminal class from the certificate.
    pub class: kakehashi_pki::TerminalClass,
    /// Serial of the certificate presented on this connection.
    pub serial: String,
    /// The person the certificate lends the laptop to (`kakehashi-pki issue
    /// device --user`): a personal laptop only they may log in on. `None`
    /// for a laptop shared by a team.
    pub cert_user: Option<String>,
    /// Peer address, for the audit log.
    pub peer: String,
}

/// Who a valid token says is at the laptop.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// User id.
    pub user: String,
    /// When the WebAuthn login happened (unix seconds), for MFA age.
    pub login_at: i64,
}

/// End of the token's life: `lifetime` from now, but never past the next
/// local midnight ("at most one working day").
pub fn token_expiry(now: i64, lifetime: Duration, utc_offset_secs: i32) -> i64 {
    let local = now + i64::from(utc_offset_secs);
    let next_midnight_local = (local.div_euclid(86_400) + 1) * 86_400;
    let midnight = next_midnight_local - i64::from(utc_offset_secs);
    (now + lifetime.as_secs() as i64).min(midnight)
}

fn new_token() -> String {
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random source");
    format!(
        "khs1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// The refusal for a laptop an officer blocked, or marked lost or revoked,
/// with the policy's reason code for that status; `None` when it is active.
fn device_refusal(status: DeviceStatus) -> Option<Refusal> {
    let status = status.as_str().parse::<kakehashi_policy::DeviceStatus>();
    match status {
        Ok(s) => kakehashi_policy::device_reason(s).map(|r| r.refusal(None)),
        // A status the policy does not know: refuse, never admit.
        Err(_) => Some(Refusal::new(Reason::DeviceBlocked)),
    }
}

fn store_failure(e: &StoreError) -> Reason {
    if e.is_unavailable() {
        warn!(error = %e, "Store unreachable during login handling; refusing");
        return Reason::StoreUnavailable;
    }
    warn!(error = %e, "Store error during login handling");
    Reason::Internal
}

async fn audit(store: &Store, a: Audit) {
    if let Err(e) = store.append_audit(a).await {
        warn!(error = %e, "Cannot write the audit record");
    }
}

/// Redeem a one-time code: PKCE, expiry and single use are checked by the
/// store and here; the token is bound to this laptop's device id and
/// certificate serial.
pub async fn redeem(
    store: &Store,
    laptop: &Laptop,
    req: &RedeemLogin,
    lifetime: Duration,
    utc_offset_secs: i32,
) -> Result<LoginResult, Refusal> {
    let now = kakehashi_store::unix_now();
    let code_hash = Hash256::digest(req.code.expose());
    let denied = |reason: &str, user: Option<&str>| {
        Audit::new(now, format!("device:{}", laptop.device), "login.redeem")
            .subject(user.unwrap_or("-"))
            .reason(reason)
            .detail(json!({ "device": laptop.device, "peer": laptop.peer, "result": "denied" }))
    };
    let code = match store
        .consume_login_code(
            &code_hash,
            Audit::new(
                now,
                format!("device:{}", laptop.device),
                "login.code.consume",
            ),
        )
        .await
    {
        Ok(c) => c,
        Err(
            StoreError::NotFound { .. }
            | StoreError::AlreadyUsed { .. }
            | StoreError::Expired { .. },
        ) => {
            audit(store, denied(Reason::LoginCodeInvalid.code(), None)).await;
            return Err(Refusal::new(Reason::LoginCodeInvalid));
        }
        Err(e) => return Err(Refusal::new(store_failure(&e))),
    };
    if !code.pkce_matches(req.code_verifier.expose()) {
        audit(
            store,
            denied(Reason::LoginCodeInvalid.code(), Some(&code.user_id)),
        )
        .await;
        return Err(Refusal::new(Reason::LoginCodeInvalid));
    }
    // The code is bound to the laptop whose `kakehashi login` asked for it:
    // a code phished with a link naming another laptop is spent here and
    // gives this laptop nothing.
    if code.device_id.as_deref() != Some(laptop.device.as_str()) {
        warn!(
            user = %code.user_id,
            device = %laptop.device,
            code_device = ?code.device_id,
            "Login code redeemed by a laptop it was not issued for; refused"
        );
        let a = denied(Reason::LoginCodeOtherDevice.code(), Some(&code.user_id)).detail(json!({
            "device": laptop.device,
            "peer": laptop.peer,
            "code_device": code.device_id,
            "result": "denied",
        }));
        audit(store, a).await;
        return Err(Refusal::new(Reason::LoginCodeOtherDevice));
    }
    // A personal laptop (its certificate names the person it is lent to)
    // takes only that person's login: a colleague's enrolled key on it is
    // refused, not just noted.
    if let Some(owner) = laptop.cert_user.as_deref().filter(|o| *o != code.user_id) {
        warn!(
            user = %code.user_id,
            device = %laptop.device,
            cert_user = owner,
            "Login on a personal laptop lent to someone else; refused"
        );
        let a = denied(Reason::DeviceOtherUser.code(), Some(&code.user_id)).detail(json!({
            "device": laptop.device,
            "peer": laptop.peer,
            "cert_user": owner,
            "result": "denied",
        }));
        audit(store, a).await;
        return Err(Refusal::new(Reason::DeviceOtherUser));
    }
    match store.get_user(&code.user_id).await {
        Ok(Some(u)) if !u.disabled => {}
        Ok(_) => {
            audit(
                store,
                denied(Reason::UserDisabled.code(), Some(&code.user_id)),
            )
            .await;
            return Err(Refusal::new(Reason::UserDisabled));
        }
        Err(e) => return Err(Refusal::new(store_failure(&e))),
    }
    // The device is known from its certificate; register it on first sight
    // (status active), and refuse one that an officer blocked.
    let device = match store.get_device(&laptop.device).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            let spec = DeviceSpec {
                id: laptop.device.clone(),
                class: laptop
                    .class
                    .as_str()
                    .parse()
                    .map_err(|e| Refusal::new(store_failure(&e)))?,
                loaned_to: Some(code.user_id.clone()),
                cert_serial: Some(laptop.serial.clone()),
            };
            let a = Audit::new(now, "gateway", "device.register")
                .subject(&laptop.device)
                .detail(json!({ "class": laptop.class.as_str(), "serial": laptop.serial, "first_user": code.user_id }));
            store
                .upsert_device(&spec, a)
                .await
                .map_err(|e| Refusal::new(store_failure(&e)))?
        }
        Err(e) => return Err(Refusal::new(store_failure(&e))),
    };
    if let Some(why) = device_refusal(device.status) {
        audit(store, denied(&why.code, Some(&code.user_id))).await;
        return Err(why);
    }
    // Allowed (the person authenticated on this very laptop), but a laptop
    // loaned to someone else is worth an officer's look.
    if let Some(loaned) = device.loaned_to.as_deref().filter(|l| *l != code.user_id) {
        warn!(user = %code.user_id, device = %laptop.device, loaned_to = loaned, "Login on a laptop loaned to someone else");
        let a = Audit::new(now, "gateway", "login.device_not_loaned")
            .subject(&code.user_id)
            .detail(json!({ "device": laptop.device, "loaned_to": loaned, "peer": laptop.peer }));
        audit(store, a).await;
    }
    let token = new_token();
    let expires_at = token_expiry(now, lifetime, utc_offset_secs);
    let t = NewLoginToken {
        token_hash: Hash256::digest(&token),
        user_id: code.user_id.clone(),
        device_id: laptop.device.clone(),
        cert_serial: laptop.serial.clone(),
        expires_at,
    };
    let a = Audit::new(now, format!("user:{}", code.user_id), "login")
        .subject(&code.user_id)
        .detail(json!({ "device": laptop.device, "serial": laptop.serial, "peer": laptop.peer, "expires_at": expires_at }));
    store
        .create_login_token(&t, a)
        .await
        .map_err(|e| Refusal::new(store_failure(&e)))?;
    info!(user = %code.user_id, device = %laptop.device, expires_at, "Login token issued");
    Ok(LoginResult {
        token: Secret(token),
        user: code.user_id,
        expires_at: expires_at as u64,
    })
}

/// Revoke a token presented by the laptop it is bound to.
pub async fn logout(store: &Store, laptop: &Laptop, req: &Logout) -> Result<(), Reason> {
    let now = kakehashi_store::unix_now();
    let hash = Hash256::digest(req.token.expose());
    let t = match store.get_login_token(&hash).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(Reason::LoginRequired),
        Err(e) => return Err(store_failure(&e)),
    };
    if t.device_id != laptop.device {
        return Err(Reason::TokenOtherDevice);
    }
    let a = Audit::new(now, format!("user:{}", t.user_id), "logout")
        .subject(&t.user_id)
        .detail(json!({ "device": laptop.device }));
    store
        .revoke_login_token(&hash, a)
        .await
        .map_err(|e| store_failure(&e))?;
    info!(user = %t.user_id, device = %laptop.device, "Logged out");
    Ok(())
}

/// Check the token of a session request: present, valid, bound to this
/// laptop's device *and* certificate, the user enabled. Whether the device
/// may be used is the policy's to decide next (`device_blocked`,
/// `device_lost`, `device_revoked`).
pub async fn check(
    store: &Store,
    laptop: &Laptop,
    token: Option<&Secret>,
) -> Result<LoggedIn, Reason> {
    let now = kakehashi_store::unix_now();
    let token = token.ok_or(Reason::LoginRequired)?;
    let t = match store
        .valid_login_token(&Hash256::digest(token.expose()), now)
        .await
    {
        Ok(t) => t,
        Err(StoreError::NotFound { .. }) => return Err(Reason::LoginRequired),
        Err(StoreError::Expired { .. }) => return Err(Reason::TokenExpired),
        Err(StoreError::Revoked { .. }) => return Err(Reason::TokenRevoked),
        Err(e) => return Err(store_failure(&e)),
    };
    if t.device_id != laptop.device || t.cert_serial != laptop.serial {
        return Err(Reason::TokenOtherDevice);
    }
    match store.get_user(&t.user_id).await {
        Ok(Some(u)) if !u.disabled => {}
        Ok(_) => return Err(Reason::UserDisabled),
        Err(e) => return Err(store_failure(&e)),
    }
    // The device's status (blocked, lost, revoked) is the policy's first
    // check after the segment, with its own reason code (`device_lost`…).
    Ok(LoggedIn {
        user: t.user_id,
        login_at: t.issued_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_end_at_local_midnight_at_the_latest() {
        let jst = 9 * 3600;
        // 2026-11-22 08:00 JST = 2026-11-21 23:00 UTC.
        let morning = 1_795_820_400;
        let exp = token_expiry(morning, Duration::from_secs(10 * 3600), jst);
        assert_eq!(exp - morning, 10 * 3600, "10 hours fit in the day");
        // 20:00 JST: only 4 hours to midnight.
        let evening = morning + 12 * 3600;
        assert_eq!(
            token_expiry(evening, Duration::from_secs(10 * 3600), jst) - evening,
            4 * 3600
        );
        assert!(new_token().starts_with("khs1.") && new_token() != new_token());
    }
}
