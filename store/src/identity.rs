//! Users, WebAuthn credentials, enrollment codes, login tokens, one-time
//! login codes and brute-force counters.

use std::collections::BTreeSet;

use crate::audit::Audit;
use crate::db::Store;
use crate::error::{on_write, Error, Result};
use crate::types::{validate_id, validate_text, Hash256, Role};

// ---------------------------------------------------------------- users

/// A user to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Login id.
    pub id: String,
    /// Display name (e.g. 山田 太郎).
    pub name: String,
    /// Department (課).
    pub department: String,
    /// Roles; may be empty.
    pub roles: BTreeSet<Role>,
}

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    /// Login id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Department.
    pub department: String,
    /// Roles.
    pub roles: BTreeSet<Role>,
    /// A disabled user can neither log in nor enrol.
    pub disabled: bool,
    /// When added.
    pub created: i64,
}

impl User {
    /// Whether the user has `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    name: String,
    department: String,
    roles: String,
    disabled: bool,
    created: i64,
}

impl TryFrom<UserRow> for User {
    type Error = Error;
    fn try_from(r: UserRow) -> Result<User> {
        let roles = r
            .roles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<Role>())
            .collect::<Result<BTreeSet<_>>>()
            .map_err(|e| Error::corrupt("user roles", e.to_string()))?;
        Ok(User {
            id: r.id,
            name: r.name,
            department: r.department,
            roles,
            disabled: r.disabled,
            created: r.created,
        })
    }
}

fn roles_text(roles: &BTreeSet<Role>) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------- credentials

/// A WebAuthn credential to store after registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredential {
    /// The credential id (1..=1023 bytes).
    pub cred_id: Vec<u8>,
    /// Whose it is.
    pub user_id: String,
    /// The serialized webauthn-rs passkey/credential (opaque JSON text).
    pub passkey: String,
    /// The signature counter.
    pub counter: u32,
    /// Whether registration verified an attestation from a trusted CA.
    pub attested: bool,
}

/// A stored WebAuthn credential.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Credential {
    /// The credential id.
    pub cred_id: Vec<u8>,
    /// Whose it is.
    pub user_id: String,
    /// The serialized webauthn-rs passkey (opaque JSON text).
    pub passkey: String,
    /// The signature counter after the last use.
    #[sqlx(try_from = "i64")]
    pub counter: u32,
    /// Whether it was attested at registration.
    pub attested: bool,
    /// When registered.
    pub created: i64,
    /// When last used to log in.
    pub last_used: Option<i64>,
}

fn validate_passkey(passkey: &str) -> Result<()> {
    if passkey.is_empty() || passkey.len() > 64 * 1024 {
        return Err(Error::invalid("passkey", "must be 1 byte to 64 KiB"));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(passkey)
        .map_err(|e| Error::invalid("passkey", format!("not JSON: {e}")))?;
    Ok(())
}

const INSERT_CREDENTIAL: &str = "INSERT INTO webauthn_credentials \
     (cred_id, user_id, passkey, counter, attested, created, last_used) \
     VALUES ($1, $2, $3, $4, $5, $6, NULL)";

impl NewCredential {
    fn validate(&self) -> Result<()> {
        if self.cred_id.is_empty() || self.cred_id.len() > 1023 {
            return Err(Error::invalid("credential id", "must be 1 to 1023 bytes"));
        }
        validate_passkey(&self.passkey)
    }

    /// The stored form, as inserted at `at`.
    fn stored(&self, at: i64) -> Credential {
        Credential {
            cred_id: self.cred_id.clone(),
            user_id: self.user_id.clone(),
            passkey: self.passkey.clone(),
            counter: self.counter,
            attested: self.attested,
            created: at,
            last_used: None,
        }
    }
}

// ---------------------------------------------------------------- tokens and codes

/// A login token to store (only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLoginToken {
    /// SHA-256 of the token.
    pub token_hash: Hash256,
    /// Who logged in.
    pub user_id: String,
    /// The device whose certificate redeemed the login (the binding).
    pub device_id: String,
    /// That certificate's serial number.
    pub cert_serial: String,
    /// End of validity (unix seconds).
    pub expires_at: i64,
}

/// A stored login token.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct LoginToken {
    /// SHA-256 of the token.
    #[sqlx(try_from = "Vec<u8>")]
    pub token_hash: Hash256,
    /// Who logged in.
    pub user_id: String,
    /// The device it is bound to.
    pub device_id: String,
    /// The certificate serial that redeemed it.
    pub cert_serial: String,
    /// When issued (the time of the WebAuthn login, for MFA age).
    pub issued_at: i64,
    /// End of validity.
    pub expires_at: i64,
    /// When revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// A one-time login code to store (the portal's loopback redirect code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLoginCode {
    /// SHA-256 of the code.
    pub code_hash: Hash256,
    /// Who authenticated.
    pub user_id: String,
    /// The client's PKCE challenge: base64url(SHA-256(verifier)), no padding (S256).
    pub pkce_challenge: String,
    /// The laptop that asked for the login: only its certificate may redeem it.
    pub device_id: String,
    /// End of validity.
    pub expires_at: i64,
}

/// A consumed one-time login code.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LoginCode {
    /// SHA-256 of the code.
    #[sqlx(try_from = "Vec<u8>")]
    pub code_hash: Hash256,
    /// Who authenticated.
    pub user_id: String,
    /// The PKCE S256 challenge.
    pub pkce_challenge: String,
    /// The laptop the code was issued for (`None` only for codes stored
    /// before codes were bound to a device: such a code is refused).
    pub device_id: Option<String>,
    /// When issued.
    pub created: i64,
    /// End of validity.
    pub expires_at: i64,
    /// When redeemed.
    pub used_at: Option<i64>,
}

impl LoginCode {
    /// Whether `verifier` (RFC 7636: 43..=128 of `[A-Za-z0-9-._~]`) matches
    /// the S256 challenge.
    pub fn pkce_matches(&self, verifier: &str) -> bool {
        use base64::Engine as _;
        let ok_chars = verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !(43..=128).contains(&verifier.len()) || !ok_chars {
            return false;
        }
        let digest = Hash256::digest(verifier.as_bytes());
        let expect = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.0);
        use subtle::ConstantTimeEq as _;
        bool::from(expect.as_bytes().ct_eq(self.pkce_challenge.as_bytes()))
    }
}

/// How a one-time code looks when read for consumption.
#[derive(sqlx::FromRow)]
struct CodeState {
    user_id: String,
    expires_at: i64,
    used_at: Option<i64>,
}

fn check_code(what: &'static str, state: Option<CodeState>, now: i64) -> Result<String> {
    let s = state.ok_or(Error::NotFound { what })?;
    if s.used_at.is_some() {
        return Err(Error::AlreadyUsed { what });
    }
    if s.expires_at <= now {
        return Err(Error::Expired { what });
    }
    Ok(s.user_id)
}

// ---------------------------------------------------------------- lockouts

/// Brute-force limits for one kind of counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutRule {
    /// Failures within the window that lock the key (at least 1).
    pub max_failures: u32,
    /// The counting window, seconds from its first failure.
    pub window_secs: i64,
    /// How long a lock lasts, seconds.
    pub lockout_secs: i64,
}

/// A counter's state after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockState {
    /// Not locked; `failures` counted in the current window.
    Open {
        /// Failures so far in the window.
        failures: u32,
    },
    /// Locked until `until` (unix seconds).
    Locked {
        /// End of the lock.
        until: i64,
    },
}

impl LockState {
    /// Whether the key is locked.
    pub fn is_locked(&self) -> bool {
        matches!(self, LockState::Locked { .. })
    }
}

/// A stored counter: failures, window start, locked until.
type Counter = (i64, i64, Option<i64>);

/// The counter after one more failure at `now`, and the resulting state.
fn next_counter(old: Option<Counter>, rule: &LockoutRule, now: i64) -> (Counter, LockState) {
    if let Some((f, w, Some(until))) = old {
        if until > now {
            return ((f, w, Some(until)), LockState::Locked { until });
        }
    }
    let (failures, window_start) = match old {
        Some((f, w, _)) if now < w.saturating_add(rule.window_secs) => (f, w),
        _ => (0, now),
    };
    let failures = failures + 1;
    if failures >= i64::from(rule.max_failures) {
        let until = now.saturating_add(rule.lockout_secs);
        ((0, now, Some(until)), LockState::Locked { until })
    } else {
        (
            (failures, window_start, None),
            LockState::Open {
                failures: u32::try_from(failures).unwrap_or(u32::MAX),
            },
        )
    }
}

fn validate_key(key: &str) -> Result<()> {
    validate_text("lockout key", key, 256, false)
}

// ---------------------------------------------------------------- store methods

impl Store {
    /// Adds a user.
    pub async fn add_user(&self, user: &NewUser, audit: Audit) -> Result<User> {
        validate_id("user id", &user.id)?;
        validate_text("user name", &user.name, 256, false)?;
        validate_text("department", &user.department, 128, false)?;
        const SQL: &str = "INSERT INTO users (id, name, department, roles, disabled, created) \
             VALUES ($1, $2, $3, $4, $5, $6)";
        let roles = roles_text(&user.roles);
        write_tx!(self, audit, |tx| {
            sqlx::query(SQL)
                .bind(&user.id)
                .bind(&user.name)
                .bind(&user.department)
                .bind(&roles)
                .bind(false)
                .bind(audit.at)
                .execute(&mut *tx)
                .await
                .map_err(on_write("user"))?;
        });
        Ok(User {
            id: user.id.clone(),
            name: user.name.clone(),
            department: user.department.clone(),
            roles: user.roles.clone(),
            disabled: false,
            created: audit.at,
        })
    }

    /// The user with `id`.
    pub async fn get_user(&self, id: &str) -> Result<Option<User>> {
        const SQL: &str =
            "SELECT id, name, department, roles, disabled, created FROM users WHERE id = $1";
        let row: Option<UserRow> = read!(self, |p| sqlx::query_as(SQL)
            .bind(id)
            .fetch_optional(p)
            .await?);
        row.map(User::try_from).transpose()
    }

    /// Every user, by id.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        const SQL: &str =
            "SELECT id, name, department, roles, disabled, created FROM users ORDER BY id";
        let rows: Vec<UserRow> = read!(self, |p| sqlx::query_as(SQL).fetch_all(p).await?);
        rows.into_iter().map(User::try_from).collect()
    }

    /// The users of one department, by id.
    pub async fn list_users_in(&self, department: &str) -> Result<Vec<User>> {
        const SQL: &str = "SELECT id, name, department, roles, disabled, created FROM users \
             WHERE department = $1 ORDER BY id";
        let rows: Vec<UserRow> = read!(self, |p| sqlx::query_as(SQL)
            .bind(department)
            .fetch_all(p)
            .await?);
        rows.into_iter().map(User::try_from).collect()
    }

    /// Disables or re-enables a user. (Revoke their tokens separately.)
    pub async fn set_user_disabled(&self, id: &str, disabled: bool, audit: Audit) -> Result<()> {
        const SQL: &str = "UPDATE users SET disabled = $2 WHERE id = $1";
        write_tx!(self, audit, |tx| {
            let n = sqlx::query(SQL)
                .bind(id)
                .bind(disabled)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(Error::NotFound { what: "user" });
            }
        });
        Ok(())
    }

    /// Changes a user's name and department (a marriage, the April
    /// transfers): the id, and with it the person's keys, desks and login
    /// history, stays. The department change reaches live sessions through
    /// the change feed (policy rules and desks go by department).
    pub async fn set_user_profile(
        &self,
        id: &str,
        name: &str,
        department: &str,
        audit: Audit,
    ) -> Result<()> {
        validate_text("user name", name, 256, false)?;
        validate_text("department", department, 128, false)?;
        const SQL: &str = "UPDATE users SET name = $2, department = $3 WHERE id = $1";
        write_tx!(self, audit, |tx| {
            let n = sqlx::query(SQL)
                .bind(id)
                .bind(name)
                .bind(department)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(Error::NotFound { what: "user" });
            }
        });
        Ok(())
    }

    /// Replaces a user's roles.
    pub async fn set_user_roles(
        &self,
        id: &str,
        roles: &BTreeSet<Role>,
        audit: Audit,
    ) -> Result<()> {
        const SQL: &str = "UPDATE users SET roles = $2 WHERE id = $1";
        let text = roles_text(roles);
        write_tx!(self, audit, |tx| {
            let n = sqlx::query(SQL)
                .bind(id)
                .bind(&text)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(Error::NotFound { what: "user" });
            }
        });
        Ok(())
    }

    /// Stores a newly registered WebAuthn credential.
    pub async fn add_credential(&self, cred: &NewCredential, audit: Audit) -> Result<Credential> {
        cred.validate()?;
        write_tx!(self, audit, |tx| {
            sqlx::query(INSERT_CREDENTIAL)
                .bind(&cred.cred_id)
                .bind(&cred.user_id)
                .bind(&cred.passkey)
                .bind(i64::from(cred.counter))
                .bind(cred.attested)
                .bind(audit.at)
                .execute(&mut *tx)
                .await
                .map_err(on_write("credential"))?;
        });
        Ok(cred.stored(audit.at))
    }

    /// A user's credentials, oldest first.
    pub async fn credentials_for_user(&self, user_id: &str) -> Result<Vec<Credential>> {
        const SQL: &str =
            "SELECT cred_id, user_id, passkey, counter, attested, created, last_used \
             FROM webauthn_credentials WHERE user_id = $1 ORDER BY created, cred_id";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(user_id)
            .fetch_all(p)
            .await?))
    }

    /// The credential with this id.
    pub async fn get_credential(&self, cred_id: &[u8]) -> Result<Option<Credential>> {
        const SQL: &str =
            "SELECT cred_id, user_id, passkey, counter, attested, created, last_used \
             FROM webauthn_credentials WHERE cred_id = $1";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(cred_id)
            .fetch_optional(p)
            .await?))
    }

    /// Saves a credential after a successful authentication: the new
    /// counter and passkey blob, `last_used = audit.at`.
    ///
    /// Signature counters only move forward: the update is refused with
    /// [`Error::CounterRegression`] (and nothing is written) unless `counter`
    /// is greater than the stored one, checked and written in one statement
    /// so two racing assertions with the same counter cannot both pass.
    /// An authenticator without a counter (0 stored and 0 presented) is
    /// accepted.
    pub async fn update_credential(
        &self,
        cred_id: &[u8],
        counter: u32,
        passkey: &str,
        audit: Audit,
    ) -> Result<()> {
        validate_passkey(passkey)?;
        const SQL: &str =
            "UPDATE webauthn_credentials SET counter = $2, passkey = $3, last_used = $4 \
             WHERE cred_id = $1 AND (counter < $2 OR (counter = 0 AND $2 = 0))";
        const GET: &str = "SELECT counter FROM webauthn_credentials WHERE cred_id = $1";
        write_tx!(self, audit, concurrent, |tx| {
            let n = sqlx::query(SQL)
                .bind(cred_id)
                .bind(i64::from(counter))
                .bind(passkey)
                .bind(audit.at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                let stored: Option<i64> = sqlx::query_scalar(GET)
                    .bind(cred_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                return Err(match stored {
                    None => Error::NotFound { what: "credential" },
                    Some(stored) => Error::CounterRegression {
                        stored: u32::try_from(stored).map_err(|_| {
                            Error::corrupt("credential counter", stored.to_string())
                        })?,
                        presented: counter,
                    },
                });
            }
        });
        Ok(())
    }

    /// Deletes a credential.
    pub async fn delete_credential(&self, cred_id: &[u8], audit: Audit) -> Result<()> {
        const SQL: &str = "DELETE FROM webauthn_credentials WHERE cred_id = $1";
        write_tx!(self, audit, |tx| {
            let n = sqlx::query(SQL)
                .bind(cred_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(Error::NotFound { what: "credential" });
            }
        });
        Ok(())
    }

    /// Stores the hash of a new one-time enrollment code for `user_id`.
    pub async fn create_enrollment_code(
        &self,
        code_hash: &Hash256,
        user_id: &str,
        expires_at: i64,
        audit: Audit,
    ) -> Result<()> {
        if expires_at <= audit.at {
            return Err(Error::invalid("expires_at", "already in the past"));
        }
        const SQL: &str =
            "INSERT INTO enrollment_codes (code_hash, user_id, created, expires_at, used_at) \
             VALUES ($1, $2, $3, $4, NULL)";
        write_tx!(self, audit, |tx| {
            sqlx::query(SQL)
                .bind(&code_hash.0[..])
                .bind(user_id)
                .bind(audit.at)
                .bind(expires_at)
                .execute(&mut *tx)
                .await
                .map_err(on_write("enrollment code"))?;
        });
        Ok(())
    }

    /// The user an enrollment code belongs to, if it is usable at `now`;
    /// otherwise `NotFound`, `AlreadyUsed` or `Expired`. Read-only: the code
    /// is spent only by [`Store::enroll_credential`].
    pub async fn enrollment_code_user(&self, code_hash: &Hash256, now: i64) -> Result<String> {
        const SQL: &str =
            "SELECT user_id, expires_at, used_at FROM enrollment_codes WHERE code_hash = $1";
        let state: Option<CodeState> = read!(self, |p| sqlx::query_as(SQL)
            .bind(&code_hash.0[..])
            .fetch_optional(p)
            .await?);
        check_code("enrollment code", state, now)
    }

    /// Spends the enrollment code `code_hash` at `audit.at` and stores the
    /// credential it enrolls, in one transaction: the code is spent only if
    /// the credential is stored, and of two ceremonies racing with one code
    /// exactly one succeeds (the other gets `AlreadyUsed`). The code must
    /// be `cred.user_id`'s (else `NotFound`), unused and unexpired
    /// (`AlreadyUsed`, `Expired`); a known credential id is `AlreadyExists`
    /// and leaves the code unspent. Nothing is logged on failure.
    pub async fn enroll_credential(
        &self,
        code_hash: &Hash256,
        cred: &NewCredential,
        audit: Audit,
    ) -> Result<Credential> {
        const WHAT: &str = "enrollment code";
        cred.validate()?;
        const GET: &str =
            "SELECT user_id, expires_at, used_at FROM enrollment_codes WHERE code_hash = $1";
        const USE: &str =
            "UPDATE enrollment_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL";
        write_tx!(self, audit, |tx| {
            let state: Option<CodeState> = sqlx::query_as(GET)
                .bind(&code_hash.0[..])
                .fetch_optional(&mut *tx)
                .await?;
            if check_code(WHAT, state, audit.at)? != cred.user_id {
                return Err(Error::NotFound { what: WHAT });
            }
            let n = sqlx::query(USE)
                .bind(&code_hash.0[..])
                .bind(audit.at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n != 1 {
                return Err(Error::AlreadyUsed { what: WHAT });
            }
            sqlx::query(INSERT_CREDENTIAL)
                .bind(&cred.cred_id)
                .bind(&cred.user_id)
                .bind(&cred.passkey)
                .bind(i64::from(cred.counter))
                .bind(cred.attested)
                .bind(audit.at)
                .execute(&mut *tx)
                .await
                .map_err(on_write("credential"))?;
        });
        Ok(cred.stored(audit.at))
    }

    /// Stores a login token (its hash) bound to a device.
    pub async fn create_login_token(&self, t: &NewLoginToken, audit: Audit) -> Result<LoginToken> {
        validate_text("cert serial", &t.cert_serial, 128, false)?;
        if t.expires_at <= audit.at {
            return Err(Error::invalid("expires_at", "already in the past"));
        }
        const SQL: &str = "INSERT INTO login_tokens \
             (token_hash, user_id, device_id, cert_serial, issued_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL)";
        write_tx!(self, audit, concurrent, |tx| {
            sqlx::query(SQL)
                .bind(&t.token_hash.0[..])
                .bind(&t.user_id)
                .bind(&t.device_id)
                .bind(&t.cert_serial)
                .bind(audit.at)
                .bind(t.expires_at)
                .execute(&mut *tx)
                .await
                .map_err(on_write("login token"))?;
        });
        Ok(LoginToken {
            token_hash: t.token_hash,
            user_id: t.user_id.clone(),
            device_id: t.device_id.clone(),
            cert_serial: t.cert_serial.clone(),
            issued_at: audit.at,
            expires_at: t.expires_at,
            revoked_at: None,
        })
    }

    /// The token with this hash, whatever its state.
    pub async fn get_login_token(&self, token_hash: &Hash256) -> Result<Option<LoginToken>> {
        const SQL: &str = "SELECT token_hash, user_id, device_id, cert_serial, issued_at, \
             expires_at, revoked_at FROM login_tokens WHERE token_hash = $1";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(&token_hash.0[..])
            .fetch_optional(p)
            .await?))
    }

    /// The token if it is usable at `now`; otherwise `NotFound`, `Revoked`
    /// or `Expired`. The caller still checks the device binding (the
    /// presented certificate is `device_id`'s), the device's status and the
    /// user's `disabled` flag.
    pub async fn valid_login_token(&self, token_hash: &Hash256, now: i64) -> Result<LoginToken> {
        const WHAT: &str = "login token";
        let t = self
            .get_login_token(token_hash)
            .await?
            .ok_or(Error::NotFound { what: WHAT })?;
        if t.revoked_at.is_some() {
            return Err(Error::Revoked { what: WHAT });
        }
        if t.expires_at <= now {
            return Err(Error::Expired { what: WHAT });
        }
        Ok(t)
    }

    /// Revokes one token. Returns false if it was already revoked.
    pub async fn revoke_login_token(&self, token_hash: &Hash256, audit: Audit) -> Result<bool> {
        const SQL: &str = "UPDATE login_tokens SET revoked_at = $2 \
             WHERE token_hash = $1 AND revoked_at IS NULL";
        const EXISTS: &str = "SELECT COUNT(*) FROM login_tokens WHERE token_hash = $1";
        let (n, _) = write_tx!(self, audit, |tx| {
            let n = sqlx::query(SQL)
                .bind(&token_hash.0[..])
                .bind(audit.at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                let exists: i64 = sqlx::query_scalar(EXISTS)
                    .bind(&token_hash.0[..])
                    .fetch_one(&mut *tx)
                    .await?;
                if exists == 0 {
                    return Err(Error::NotFound {
                        what: "login token",
                    });
                }
            }
            n
        });
        Ok(n == 1)
    }

    /// Revokes every live token of a user; returns how many.
    pub async fn revoke_login_tokens_for_user(&self, user_id: &str, audit: Audit) -> Result<u64> {
        const SQL: &str =
            "UPDATE login_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL";
        let (n, _) = write_tx!(self, audit, |tx| {
            sqlx::query(SQL)
                .bind(user_id)
                .bind(audit.at)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        });
        Ok(n)
    }

    /// Revokes every live token bound to a device; returns how many.
    pub async fn revoke_login_tokens_for_device(
        &self,
        device_id: &str,
        audit: Audit,
    ) -> Result<u64> {
        const SQL: &str =
            "UPDATE login_tokens SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL";
        let (n, _) = write_tx!(self, audit, |tx| {
            sqlx::query(SQL)
                .bind(device_id)
                .bind(audit.at)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        });
        Ok(n)
    }

    /// A user's tokens, newest first (revoked and expired included).
    pub async fn login_tokens_for_user(&self, user_id: &str) -> Result<Vec<LoginToken>> {
        const SQL: &str = "SELECT token_hash, user_id, device_id, cert_serial, issued_at, \
             expires_at, revoked_at FROM login_tokens WHERE user_id = $1 \
             ORDER BY issued_at DESC, token_hash";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(user_id)
            .fetch_all(p)
            .await?))
    }

    /// Stores a one-time login code (its hash) with the client's PKCE challenge.
    pub async fn create_login_code(&self, c: &NewLoginCode, audit: Audit) -> Result<()> {
        let challenge_ok = c.pkce_challenge.len() == 43
            && c.pkce_challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !challenge_ok {
            return Err(Error::invalid(
                "pkce challenge",
                "expected 43 base64url characters (S256)",
            ));
        }
        if c.expires_at <= audit.at {
            return Err(Error::invalid("expires_at", "already in the past"));
        }
        validate_id("device", &c.device_id)?;
        const SQL: &str = "INSERT INTO login_codes \
             (code_hash, user_id, pkce_challenge, created, expires_at, used_at, device_id) \
             VALUES ($1, $2, $3, $4, $5, NULL, $6)";
        write_tx!(self, audit, concurrent, |tx| {
            sqlx::query(SQL)
                .bind(&c.code_hash.0[..])
                .bind(&c.user_id)
                .bind(&c.pkce_challenge)
                .bind(audit.at)
                .bind(c.expires_at)
                .bind(&c.device_id)
                .execute(&mut *tx)
                .await
                .map_err(on_write("login code"))?;
        });
        Ok(())
    }

    /// Uses a one-time login code at `audit.at`, once. The code is spent
    /// even if the caller's PKCE check ([`LoginCode::pkce_matches`]) then fails.
    pub async fn consume_login_code(&self, code_hash: &Hash256, audit: Audit) -> Result<LoginCode> {
        const GET: &str =
            "SELECT user_id, expires_at, used_at FROM login_codes WHERE code_hash = $1";
        const USE: &str = "UPDATE login_codes SET used_at = $2 \
             WHERE code_hash = $1 AND used_at IS NULL \
             RETURNING code_hash, user_id, pkce_challenge, device_id, created, expires_at, used_at";
        let (code, _) = write_tx!(self, audit, concurrent, |tx| {
            let state: Option<CodeState> = sqlx::query_as(GET)
                .bind(&code_hash.0[..])
                .fetch_optional(&mut *tx)
                .await?;
            check_code("login code", state, audit.at)?;
            let code: Option<LoginCode> = sqlx::query_as(USE)
                .bind(&code_hash.0[..])
                .bind(audit.at)
                .fetch_optional(&mut *tx)
                .await?;
            code.ok_or(Error::AlreadyUsed { what: "login code" })?
        });
        Ok(code)
    }

    /// Counts one failure against `key` (e.g. `user:ID`, `source:IP`,
    /// `enroll:IP`) at `audit.at` and returns its state; the audit record
    /// (the failure itself) is written in the same transaction.
    pub async fn record_failure(
        &self,
        key: &str,
        rule: &LockoutRule,
        audit: Audit,
    ) -> Result<LockState> {
        let states = self.record_failures(&[(key, *rule)], audit).await?;
        Ok(states[0])
    }

    /// Counts one failure against each key with its own rule (one audit
    /// record for all), returning the states in the same order.
    pub async fn record_failures(
        &self,
        keys: &[(&str, LockoutRule)],
        audit: Audit,
    ) -> Result<Vec<LockState>> {
        for (key, rule) in keys {
            validate_key(key)?;
            if rule.max_failures == 0 || rule.window_secs <= 0 || rule.lockout_secs <= 0 {
                return Err(Error::invalid(
                    "lockout rule",
                    "all limits must be positive",
                ));
            }
        }
        const GET: &str =
            "SELECT failures, window_start, locked_until FROM lockouts WHERE counter_key = $1";
        const PUT: &str =
            "INSERT INTO lockouts (counter_key, failures, window_start, locked_until) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (counter_key) DO UPDATE SET \
             failures = excluded.failures, window_start = excluded.window_start, \
             locked_until = excluded.locked_until";
        let (states, _) = write_tx!(self, audit, |tx| {
            let mut states = Vec::with_capacity(keys.len());
            for (key, rule) in keys {
                let old: Option<Counter> = sqlx::query_as(GET)
                    .bind(*key)
                    .fetch_optional(&mut *tx)
                    .await?;
                let ((failures, window_start, locked_until), state) =
                    next_counter(old, rule, audit.at);
                sqlx::query(PUT)
                    .bind(*key)
                    .bind(failures)
                    .bind(window_start)
                    .bind(locked_until)
                    .execute(&mut *tx)
                    .await?;
                states.push(state);
            }
            states
        });
        Ok(states)
    }

    /// `Some(until)` if `key` is locked at `now`.
    pub async fn is_locked(&self, key: &str, now: i64) -> Result<Option<i64>> {
        const SQL: &str = "SELECT locked_until FROM lockouts WHERE counter_key = $1";
        let until: Option<Option<i64>> = read!(self, |p| sqlx::query_scalar(SQL)
            .bind(key)
            .fetch_optional(p)
            .await?);
        Ok(until.flatten().filter(|&u| u > now))
    }

    /// Counters that are locked at `now`, soonest end first: `(key, until)`.
    pub async fn active_lockouts(&self, now: i64) -> Result<Vec<(String, i64)>> {
        const SQL: &str = "SELECT counter_key, locked_until FROM lockouts \
             WHERE locked_until > $1 ORDER BY locked_until, counter_key LIMIT 1000";
        let rows: Vec<(String, i64)> =
            read!(self, |p| sqlx::query_as(SQL).bind(now).fetch_all(p).await?);
        Ok(rows)
    }

    /// Clears every failure counter of `user` (`user:ID` and every
    /// `pair:ID@SOURCE`), locked or not, in the transaction that writes
    /// `audit` (an officer's unlock). Returns how many counters went.
    pub async fn unlock_user(&self, user: &str, audit: Audit) -> Result<u64> {
        validate_id("user id", user)?;
        let pair_prefix = format!("pair:{user}@");
        let prefix_len = i64::try_from(pair_prefix.len()).unwrap_or(i64::MAX);
        const SQL: &str = "DELETE FROM lockouts WHERE counter_key = $1 \
             OR substr(counter_key, 1, $2) = $3";
        let (n, _) = write_tx!(self, audit, |tx| {
            sqlx::query(SQL)
                .bind(format!("user:{user}"))
                .bind(prefix_len)
                .bind(&pair_prefix)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        });
        Ok(n)
    }

    /// Deletes counters that hold nothing any more at `now`: no lock in
    /// force and a window that started before `window_start_before`. Keeps
    /// the table as small as the current attacks. Returns how many went.
    pub async fn prune_lockouts(&self, now: i64, window_start_before: i64) -> Result<u64> {
        const SQL: &str = "DELETE FROM lockouts \
             WHERE (locked_until IS NULL OR locked_until <= $1) AND window_start < $2";
        let n = read!(self, |p| sqlx::query(SQL)
            .bind(now)
            .bind(window_start_before)
            .execute(p)
            .await?
            .rows_affected());
        Ok(n)
    }

    /// Clears the counters of `keys` that are not locked at `now` — after a
    /// success, which is audited on its own. A lock in force stays: only an
    /// officer's unlock ([`Store::unlock_user`]) lifts it early.
    pub async fn clear_failures(&self, keys: &[&str], now: i64) -> Result<()> {
        const SQL: &str = "DELETE FROM lockouts WHERE counter_key = $1 \
             AND (locked_until IS NULL OR locked_until <= $2)";
        for key in keys {
            read!(self, |p| sqlx::query(SQL)
                .bind(*key)
                .bind(now)
                .execute(p)
                .await?
                .rows_affected());
        }
        Ok(())
    }

    /// Clears the counters of `keys` (after a success, or an officer's unlock).
    pub async fn reset_lockouts(&self, keys: &[&str], audit: Audit) -> Result<()> {
        const SQL: &str = "DELETE FROM lockouts WHERE counter_key = $1";
        write_tx!(self, audit, |tx| {
            for key in keys {
                sqlx::query(SQL).bind(*key).execute(&mut *tx).await?;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: LockoutRule = LockoutRule {
        max_failures: 3,
        window_secs: 60,
        lockout_secs: 300,
    };

    #[test]
    fn counter_locks_then_unlocks() {
        let (c, s) = next_counter(None, &RULE, 1000);
        assert_eq!(s, LockState::Open { failures: 1 });
        let (c, s) = next_counter(Some(c), &RULE, 1010);
        assert_eq!(s, LockState::Open { failures: 2 });
        let (c, s) = next_counter(Some(c), &RULE, 1020);
        assert_eq!(s, LockState::Locked { until: 1320 });
        // Failures while locked neither count nor extend the lock.
        let (c, s) = next_counter(Some(c), &RULE, 1319);
        assert_eq!(s, LockState::Locked { until: 1320 });
        let (_, s) = next_counter(Some(c), &RULE, 1320);
        assert_eq!(s, LockState::Open { failures: 1 });
    }

    #[test]
    fn window_expires() {
        let (c, _) = next_counter(None, &RULE, 1000);
        let (c, s) = next_counter(Some(c), &RULE, 1059);
        assert_eq!(s, LockState::Open { failures: 2 });
        let (_, s) = next_counter(Some(c), &RULE, 1060);
        assert_eq!(s, LockState::Open { failures: 1 });
    }

    #[test]
    fn pkce_s256() {
        // RFC 7636 appendix B.
        let code = LoginCode {
            code_hash: Hash256::ZERO,
            user_id: "u".into(),
            pkce_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
            device_id: Some("PC-1".into()),
            created: 0,
            expires_at: 1,
            used_at: None,
        };
        assert!(code.pkce_matches("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
        assert!(!code.pkce_matches("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj"));
        assert!(!code.pkce_matches("short"));
    }
}
