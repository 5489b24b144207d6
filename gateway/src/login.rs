//! Logins on the terminal listener: redeeming the portal's one-time code for
//! a token bound to the laptop's certificate, logging out, and checking the
//! token on every session request. Every outcome is audited with its reason;
//! tokens and codes never reach a log (only their SHA-256 is stored).

use std::time::Duration;

use base64::Engine as _;
use kakehashi_proto::message::{LoginResult, Logout, RedeemLogin, Secret};
use kakehashi_proto::Reason;
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

fn store_failure(e: &StoreError) -> Reason {
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
) -> Result<LoginResult, Reason> {
    let now = kakehashi_store::unix_now();
    let code_hash = Hash256::digest(req.code.expose());
    let denied = |reason: Reason, user: Option<&str>| {
        Audit::new(now, format!("device:{}", laptop.device), "login.redeem")
            .subject(user.unwrap_or("-"))
            .reason(reason.code())
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
            audit(store, denied(Reason::LoginCodeInvalid, None)).await;
            return Err(Reason::LoginCodeInvalid);
        }
        Err(e) => return Err(store_failure(&e)),
    };
    if !code.pkce_matches(req.code_verifier.expose()) {
        audit(store, denied(Reason::LoginCodeInvalid, Some(&code.user_id))).await;
        return Err(Reason::LoginCodeInvalid);
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
        let a = denied(Reason::LoginCodeOtherDevice, Some(&code.user_id)).detail(json!({
            "device": laptop.device,
            "peer": laptop.peer,
            "code_device": code.device_id,
            "result": "denied",
        }));
        audit(store, a).await;
        return Err(Reason::LoginCodeOtherDevice);
    }
    match store.get_user(&code.user_id).await {
        Ok(Some(u)) if !u.disabled => {}
        Ok(_) => {
            audit(store, denied(Reason::UserDisabled, Some(&code.user_id))).await;
            return Err(Reason::UserDisabled);
        }
        Err(e) => return Err(store_failure(&e)),
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
                    .map_err(|e| store_failure(&e))?,
                loaned_to: Some(code.user_id.clone()),
                cert_serial: Some(laptop.serial.clone()),
            };
            let a = Audit::new(now, "gateway", "device.register")
                .subject(&laptop.device)
                .detail(json!({ "class": laptop.class.as_str(), "serial": laptop.serial, "first_user": code.user_id }));
            store
                .upsert_device(&spec, a)
                .await
                .map_err(|e| store_failure(&e))?
        }
        Err(e) => return Err(store_failure(&e)),
    };
    if device.status != DeviceStatus::Active {
        audit(store, denied(Reason::DeviceBlocked, Some(&code.user_id))).await;
        return Err(Reason::DeviceBlocked);
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
        .map_err(|e| store_failure(&e))?;
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
/// laptop's device *and* certificate, the user enabled, the device active.
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
    match store.get_device(&laptop.device).await {
        Ok(Some(d)) if d.status == DeviceStatus::Active => {}
        Ok(_) => return Err(Reason::DeviceBlocked),
        Err(e) => return Err(store_failure(&e)),
    }
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
