//! The portal's shared state ([`PortalState`]): the store (which also keeps
//! ceremonies and portal sessions, [`crate::transient`]), WebAuthn, the
//! lockout rule, the limits and the dashboard's state; the client address
//! extractor.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use kakehashi_relay::RelayHandle;
use kakehashi_store::{LockoutRule, Store};
use webauthn_rs::prelude::{AttestationCaList, Webauthn, WebauthnBuilder};

use crate::config::{PortalConfig, PortalLimits};
use crate::{ops, throttle};

/// How long a WebAuthn ceremony may take (also the browser's timeout).
pub(crate) const CEREMONY_SECS: i64 = 300;
/// How long a portal session lasts.
pub(crate) const SESSION_SECS: i64 = 1800;
/// How long a one-time login code is valid.
pub(crate) const LOGIN_CODE_SECS: i64 = 120;
/// Most ceremonies in progress at once, across the cluster.
pub(crate) const MAX_CEREMONIES: u32 = 10_000;
/// Most ceremonies in progress for one user (a new one evicts the oldest):
/// a person retrying in several tabs, not a flood.
pub(crate) const CEREMONIES_PER_USER: u32 = 8;
/// Most ceremonies in progress from one source address (a new one evicts
/// that address's oldest): an office NAT's morning, not a flood.
pub(crate) const CEREMONIES_PER_SOURCE: u32 = 1000;
/// Most portal sessions of one user (a new sign-in ends the oldest).
pub(crate) const SESSIONS_PER_USER: u32 = 20;
/// The audit throttle's window: one record in full per kind of refusal and
/// address, the rest as one summary.
pub(crate) const AUDIT_WINDOW_SECS: i64 = 60;
/// Largest request body.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Everything the portal's handlers share. Cheap to clone.
#[derive(Clone)]
pub struct PortalState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) webauthn: Webauthn,
    /// The WebAuthn relying party id, for decoy login options.
    pub(crate) rp_id: String,
    /// `Some` when only attested authenticators from these CAs may enroll.
    pub(crate) attestation: Option<AttestationCaList>,
    /// The origin as browsers send it in `Origin` (`https://host[:port]`).
    pub(crate) origin: String,
    /// Cookies carry `Secure` and HSTS is sent (off only with `insecure_http`).
    pub(crate) secure: bool,
    pub(crate) rule: LockoutRule,
    pub(crate) utc_offset_secs: i32,
    /// Connection caps and time-outs ([`serve`]).
    pub(crate) limits: PortalLimits,
    /// API calls per source address.
    pub(crate) api_rate: throttle::RateLimiter,
    /// Refusals before login: one record per kind, address and minute.
    pub(crate) audit_throttle: throttle::AuditThrottle,
    /// Added to the wall clock (tests move time forward).
    pub(crate) clock_offset: AtomicI64,
    /// The ops dashboard's view of the gateway ([`crate::dashboard`]).
    pub(crate) ops: ops::Ops,
    /// When a foreign origin was last logged as a warning ([`PortalState::origin_refused`]).
    pub(crate) origin_warned: AtomicI64,
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
    /// Builds the portal from its settings, an open store and the relay it
    /// shows on the operators' dashboard (none: `/ops` answers that it is
    /// not attached, as in tests). Reads the attestation CA files.
    pub fn new(
        cfg: &PortalConfig,
        store: Store,
        relay: Option<RelayHandle>,
    ) -> anyhow::Result<Self> {
        let attestation = load_attestation_cas(&cfg.identity.attestation_ca)?;
        Self::with_attestation(cfg, store, relay, attestation)
    }

    /// As [`PortalState::new`], with the attestation CA list given directly.
    pub(crate) fn with_attestation(
        portal: &PortalConfig,
        store: Store,
        relay: Option<RelayHandle>,
        attestation: Option<AttestationCaList>,
    ) -> anyhow::Result<Self> {
        let webauthn = WebauthnBuilder::new(&portal.rp_id, &portal.origin)
            .context("invalid [portal] rp_id or origin for WebAuthn")?
            .rp_name("Kakehashi")
            .timeout(Duration::from_secs(CEREMONY_SECS as u64))
            .build()
            .context("invalid [portal] rp_id or origin for WebAuthn")?;
        let id = &portal.identity;
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1);
        let rule = LockoutRule {
            max_failures: id.max_failures.max(1),
            window_secs: secs(id.failure_window),
            lockout_secs: secs(id.lockout),
        };
        let state = PortalState {
            inner: Arc::new(Inner {
                store,
                webauthn,
                rp_id: portal.rp_id.clone(),
                attestation,
                origin: portal.origin.origin().ascii_serialization(),
                secure: !portal.insecure_http,
                rule,
                utc_offset_secs: id.utc_offset_secs,
                limits: portal.limits,
                api_rate: throttle::RateLimiter::new(
                    portal.limits.api_rate_per_source,
                    portal.limits.api_rate_per_source.saturating_mul(10),
                ),
                audit_throttle: throttle::AuditThrottle::new(AUDIT_WINDOW_SECS),
                clock_offset: AtomicI64::new(0),
                ops: ops::Ops::new(relay.clone()),
                origin_warned: AtomicI64::new(i64::MIN),
            }),
        };
        Ok(state)
    }

    /// The current time (unix seconds).
    pub(crate) fn now(&self) -> i64 {
        kakehashi_store::unix_now() + self.inner.clock_offset.load(Ordering::Relaxed)
    }

    /// Moves the portal's clock forward (tests).
    #[cfg(test)]
    pub(crate) fn advance_clock(&self, secs: i64) {
        self.inner.clock_offset.fetch_add(secs, Ordering::Relaxed);
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// A request (or a WebAuthn ceremony) came from `seen`, not from the
    /// configured origin: refused with `origin_mismatch`. Almost always the
    /// configuration: staff open the portal under another name or port than
    /// `[portal] origin` says. Logged as a warning with the fix, at most
    /// once a minute (anyone can send a foreign `Origin`); the rest at debug.
    pub(crate) fn origin_refused(&self, seen: &str, path: &str) {
        let now = self.now();
        let last = self.inner.origin_warned.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= 60
            && self
                .inner
                .origin_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        let seen: String = seen.chars().filter(|c| !c.is_control()).take(200).collect();
        if due {
            tracing::warn!(
                reason = "origin_mismatch",
                origin = %seen,
                configured = %self.inner.origin,
                rp_id = %self.inner.rp_id,
                path,
                "Portal request from another origin refused. If staff open the portal at that address, set [portal] origin to it exactly (scheme, host, port) and rp_id to its host name, then restart the gateway; keys registered under another rp_id must be enrolled again (logged at most once a minute)"
            );
        } else {
            tracing::debug!(reason = "origin_mismatch", origin = %seen, path, "Portal request from another origin refused");
        }
    }
}

/// Reads the attestation CA PEM files; `None` when there are none.
pub(crate) fn load_attestation_cas(
    paths: &[std::path::PathBuf],
) -> anyhow::Result<Option<AttestationCaList>> {
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

/// The peer address a request came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// The client's IP address (IPv4-mapped IPv6 folded to IPv4), from
/// [`serve`]'s connection info (or a plain `axum::serve` with
/// `ConnectInfo<SocketAddr>`); unspecified without either (in-process tests),
/// in which case every client shares one `source:` lockout counter.
pub(crate) struct Peer(pub(crate) IpAddr);

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
