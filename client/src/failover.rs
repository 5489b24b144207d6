//! Several gateways of one cluster, tried in order: the configured one,
//! then each `[gateway] fallback`. The one that answered is kept until it
//! cannot be reached; then the next that answers takes over, for the
//! session being opened and every one after it. The login token is valid on
//! every gateway of the cluster, so no new login is needed.
//!
//! A gateway given by a name that resolves to several addresses (one DNS
//! name for the cluster) counts as that many gateways, in the resolver's
//! order, each checked against the name's certificate.
//!
//! With `connect`, the local listener stays up while a gateway dies: the
//! RDP client's automatic reconnection opens a new session, which goes
//! through the next gateway.

use std::sync::Arc;

use kakehashi_proto::message::{Secret, SessionAccepted};
use kakehashi_proto::Reason;
use kakehashi_transport::{BoxIo, TransportChoice};
use tokio::sync::RwLock;

use crate::config::Config;
use crate::{Dialer, SessionError};

/// The gateways of `client.toml` and the one in use.
#[derive(Debug)]
pub struct Gateways {
    each: Vec<Config>,
    choice: TransportChoice,
    /// Index into `each`, and its dialer.
    current: RwLock<(usize, Arc<Dialer>)>,
}

/// Whether `e` says the gateway is gone (not that it refused): then the
/// next gateway is tried. A gateway stopping on purpose (`restarting`, or
/// `shutting_down` from an older gateway) counts as gone, and so does one
/// whose budget of bytes in flight is spent (`gateway_busy`) or whose
/// session places are all taken (`capacity_full`): another gateway of the
/// cluster may have room; and one that cannot reach the database
/// (`store_unavailable`): another may. A refusal by policy or of the certificate would
/// be the same on every gateway of the cluster and is not retried.
fn gateway_gone(e: &SessionError) -> bool {
    match e {
        SessionError::Other(_) => true,
        SessionError::Refused(r) => {
            r.is(Reason::GatewayUnreachable)
                || r.is(Reason::Timeout)
                || r.is(Reason::Restarting)
                || r.is(Reason::ShuttingDown)
                || r.is(Reason::GatewayBusy)
                || r.is(Reason::CapacityFull)
                || r.is(Reason::StoreUnavailable)
        }
    }
}

/// Most addresses one gateway name stands for (a cluster's name lists its
/// members; more would only lengthen a failover).
const MAX_ADDRESSES_PER_NAME: usize = 16;

/// Each gateway once per address its name resolves to (the resolver's
/// order, duplicates dropped), keeping its certificate name. A gateway
/// written as an address, one whose QUIC address differs from its TCP
/// address, or a name that does not resolve now stays as written (dialling
/// it reports the error as before).
async fn every_address(each: Vec<Config>) -> Vec<Config> {
    let mut out: Vec<Config> = Vec::new();
    for c in each {
        let named = c.tcp == c.quic && c.tcp.parse::<std::net::SocketAddr>().is_err();
        let addrs: Vec<std::net::SocketAddr> = if named {
            match tokio::net::lookup_host(c.tcp.as_str()).await {
                Ok(a) => a.take(MAX_ADDRESSES_PER_NAME).collect(),
                Err(_) => Vec::new(),
            }
        } else {
            Vec::new()
        };
        if addrs.len() < 2 {
            out.push(c);
            continue;
        }
        tracing::debug!(gateway = %c.tcp, addresses = addrs.len(), "One gateway name, several addresses");
        for a in addrs {
            let a = a.to_string();
            if out.iter().any(|o| o.tcp == a) {
                continue;
            }
            out.push(Config {
                tcp: a.clone(),
                quic: a,
                ..c.clone()
            });
        }
    }
    out
}

impl Gateways {
    /// Establish a dialer with the first gateway that answers. Returns the
    /// gateways and a note on the transport (and the gateway, when it is
    /// not the first).
    pub async fn establish(
        cfg: Config,
        choice: TransportChoice,
    ) -> Result<(Self, String), SessionError> {
        let mut each = every_address(cfg.each_gateway()).await;
        // Each knows it has others to go to (a shorter handshake time-out,
        // a silent QUIC connection left rather than dialled again), also
        // when they came from one name's addresses rather than `fallback`.
        if each.len() > 1 {
            let all: Vec<String> = each.iter().map(|c| c.tcp.clone()).collect();
            for c in &mut each {
                c.fallback = all.iter().filter(|a| **a != c.tcp).cloned().collect();
            }
        }
        let (i, d, note) = Self::first_answering(&each, 0, choice).await?;
        Ok((
            Self {
                each,
                choice,
                current: RwLock::new((i, Arc::new(d))),
            },
            note,
        ))
    }

    /// From `start` on (wrapping), the first gateway that answers.
    async fn first_answering(
        each: &[Config],
        start: usize,
        choice: TransportChoice,
    ) -> Result<(usize, Dialer, String), SessionError> {
        let mut last = None;
        for k in 0..each.len() {
            let i = (start + k) % each.len();
            match Dialer::establish(each[i].clone(), choice).await {
                Ok((d, note)) => {
                    let note = if i == 0 {
                        note
                    } else {
                        format!("{note}, via {} (fallback {i})", each[i].tcp)
                    };
                    return Ok((i, d, note));
                }
                Err(e) if gateway_gone(&e) && each.len() > 1 => {
                    tracing::warn!(gateway = %each[i].tcp, error = %e, "Gateway unreachable; trying the next");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one gateway"))
    }

    /// The dialer in use.
    pub async fn dialer(&self) -> Arc<Dialer> {
        self.current.read().await.1.clone()
    }

    /// Open a session to `desk` through the gateway in use; when it is gone,
    /// through the next that answers. Returns the dialer that carried it
    /// (to ask that gateway why the session ended).
    pub async fn session(
        &self,
        desk: &str,
        token: Option<&Secret>,
    ) -> Result<(BoxIo, SessionAccepted, Arc<Dialer>), SessionError> {
        let (i, d) = self.current.read().await.clone();
        match d.session(desk, token).await {
            Ok((io, accepted)) => Ok((io, accepted, d)),
            Err(e) if gateway_gone(&e) && self.each.len() > 1 => {
                tracing::warn!(gateway = %self.each[i].tcp, error = %e, "Gateway gone; moving to the next");
                let d = self.move_on(i).await?;
                let (io, accepted) = d.session(desk, token).await?;
                Ok((io, accepted, d))
            }
            Err(e) => Err(e),
        }
    }

    /// Replace the failed gateway `failed` with the next that answers (once:
    /// sessions failing together move together).
    async fn move_on(&self, failed: usize) -> Result<Arc<Dialer>, SessionError> {
        let mut cur = self.current.write().await;
        if cur.0 != failed {
            return Ok(cur.1.clone());
        }
        let (i, d, note) = Self::first_answering(&self.each, failed + 1, self.choice).await?;
        eprintln!(
            "ゲートウェイ {} に接続できないため {} に切り替えました / gateway {} unreachable: now through {} ({note})",
            self.each[failed].tcp, self.each[i].tcp, self.each[failed].tcp, self.each[i].tcp
        );
        let d = Arc::new(d);
        *cur = (i, d.clone());
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_proto::Refusal;

    fn refused(r: Reason) -> SessionError {
        SessionError::Refused(Refusal::new(r))
    }

    #[test]
    fn a_restarting_gateway_is_left_like_a_dead_one_and_a_policy_refusal_is_not() {
        for gone in [
            Reason::Restarting,
            Reason::ShuttingDown,
            Reason::GatewayBusy,
            Reason::CapacityFull,
            Reason::StoreUnavailable,
            Reason::GatewayUnreachable,
            Reason::Timeout,
        ] {
            assert!(gateway_gone(&refused(gone)), "{gone}");
        }
        for stays in [
            Reason::DeviceBlocked,
            Reason::LoginRequired,
            Reason::DeskOffline,
        ] {
            assert!(!gateway_gone(&refused(stays)), "{stays}");
        }
    }
}
