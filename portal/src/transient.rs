//! The portal's short-lived state, kept in the store so that every gateway
//! of a cluster shares it: WebAuthn ceremonies between their start and
//! finish (a login started on one gateway finishes on another) and portal
//! sessions (a visitor signed in on one gateway is signed in on all, with
//! the same CSRF token). Ids are random, the store keeps only their SHA-256;
//! the quotas and caps of [`kakehashi_store::Quotas`] bound a flood.

use std::net::IpAddr;

use kakehashi_store::{Hash256, Quotas, TransientKind};
use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    AttestedPasskeyRegistration, PasskeyAuthentication, PasskeyRegistration,
};

use crate::state::{
    PortalState, CEREMONIES_PER_SOURCE, CEREMONIES_PER_USER, CEREMONY_SECS, MAX_CEREMONIES,
    SESSIONS_PER_USER, SESSION_SECS,
};

/// A ceremony between its start and finish calls.
#[derive(Serialize, Deserialize)]
pub(crate) enum Ceremony {
    Enroll {
        user: String,
        /// The enrollment code's hash, spent at the finish.
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
    Decoy { user: String, why: String },
}

#[derive(Serialize, Deserialize)]
pub(crate) enum RegState {
    Passkey(PasskeyRegistration),
    Attested(AttestedPasskeyRegistration),
}

impl Ceremony {
    fn user(&self) -> &str {
        match self {
            Ceremony::Enroll { user, .. }
            | Ceremony::Login { user, .. }
            | Ceremony::Decoy { user, .. } => user,
        }
    }
}

/// A signed-in portal visitor.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    pub(crate) user: String,
    /// The session's CSRF token (random; the same on every gateway).
    pub(crate) csrf: String,
}

impl PortalState {
    /// Keeps `ceremony`, started from `ip`, for [`CEREMONY_SECS`] and returns
    /// its id. A flood for one user or from one address evicts its own
    /// oldest ceremonies.
    pub(crate) async fn put_ceremony(
        &self,
        ceremony: &Ceremony,
        ip: IpAddr,
    ) -> Result<String, kakehashi_store::Error> {
        let value =
            serde_json::to_string(ceremony).map_err(|e| kakehashi_store::Error::Corrupt {
                what: "ceremony state",
                reason: e.to_string(),
            })?;
        let source = ip.to_string();
        let quotas = Quotas {
            cap: Some(MAX_CEREMONIES),
            user: Some((ceremony.user(), CEREMONIES_PER_USER)),
            source: Some((&source, CEREMONIES_PER_SOURCE)),
        };
        self.put(TransientKind::Ceremony, &value, CEREMONY_SECS, &quotas)
            .await
    }

    /// Keeps `value` under a new random id for `secs` within `quotas`;
    /// returns the id (the store keeps its hash).
    async fn put(
        &self,
        kind: TransientKind,
        value: &str,
        secs: i64,
        quotas: &Quotas<'_>,
    ) -> Result<String, kakehashi_store::Error> {
        let now = self.now();
        let id = crate::codes::random_b64url::<32>();
        self.store()
            .put_transient(kind, &Hash256::digest(&id), value, now + secs, now, quotas)
            .await?;
        Ok(id)
    }

    /// Removes and returns the ceremony `id` if it is live (one use only,
    /// on whichever gateway finishes it first).
    pub(crate) async fn take_ceremony(
        &self,
        id: &str,
    ) -> Result<Option<Ceremony>, kakehashi_store::Error> {
        let Some(value) = self
            .store()
            .take_transient(TransientKind::Ceremony, &Hash256::digest(id), self.now())
            .await?
        else {
            return Ok(None);
        };
        match serde_json::from_str(&value) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                // Written by another version of the gateway: as expired.
                tracing::warn!(error = %e, "A stored ceremony does not parse; treated as expired");
                Ok(None)
            }
        }
    }

    /// Signs `user` in for [`SESSION_SECS`]: returns the new session's id
    /// (the cookie's value).
    pub(crate) async fn new_session(&self, user: &str) -> Result<String, kakehashi_store::Error> {
        let session = Session {
            user: user.to_owned(),
            csrf: crate::codes::random_b64url::<32>(),
        };
        let value = serde_json::to_string(&session).unwrap_or_default();
        let quotas = Quotas {
            cap: None,
            user: Some((user, SESSIONS_PER_USER)),
            source: None,
        };
        self.put(TransientKind::PortalSession, &value, SESSION_SECS, &quotas)
            .await
    }

    /// The live session `id`, if any.
    pub(crate) async fn session(
        &self,
        id: &str,
    ) -> Result<Option<Session>, kakehashi_store::Error> {
        let value = self
            .store()
            .get_transient(
                TransientKind::PortalSession,
                &Hash256::digest(id),
                self.now(),
            )
            .await?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Ends the session `id` (signed out on every gateway).
    pub(crate) async fn end_session(&self, id: &str) -> Result<(), kakehashi_store::Error> {
        self.store()
            .remove_transient(TransientKind::PortalSession, &Hash256::digest(id))
            .await
    }
}
