//! The CRL in force: checking a peer's certificate against it, reloading
//! it when its file changes, and ending what it no longer allows (also when
//! it goes stale).

use std::sync::Arc;
use std::time::Duration;

use kakehashi_proto::Reason;
use kakehashi_transport::tls::PeerCertFacts;
use kakehashi_transport::unix_now;
use tracing::{error, info, warn};

use crate::shared::{LiveSession, Shared};

/// Check a certificate against the current CRL and its validity dates.
pub(crate) fn check_cert(s: &Shared, cert: &PeerCertFacts) -> Result<(), Reason> {
    use kakehashi_transport::tls::PeerCertProblem;
    s.verifier
        .check_peer(cert, unix_now())
        .map_err(|p| match p {
            PeerCertProblem::Revoked => Reason::CertRevoked,
            PeerCertProblem::Expired => Reason::CertExpired,
            PeerCertProblem::Unreadable => Reason::CertRejected,
            PeerCertProblem::CrlStale => Reason::CrlStale,
        })
}

/// Export the CRL's dates, and say in the log when it enters its grace
/// period and when it goes stale (once each, and again after a reload).
pub(crate) fn crl_freshness(s: &Shared, warned: &mut u8) {
    let Some(d) = s.verifier.crl_dates() else {
        return;
    };
    let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
    s.metrics.crl_next_update.set(d.next_update.unwrap_or(0));
    s.metrics
        .crl_age
        .set(now.saturating_sub(d.this_update).max(0));
    let level = match d.next_update {
        Some(_) if d.is_stale(now, s.cfg.crl_grace) => 2,
        Some(next) if now > next => 1,
        _ => 0,
    };
    if level > *warned {
        let next = d.next_update.unwrap_or(0);
        let grace_h = s.cfg.crl_grace.as_secs() / 3600;
        if level == 2 {
            error!(next_update = next, grace_hours = grace_h, reason = Reason::CrlStale.code(), "The CRL is past nextUpdate and its grace period: every laptop and agent is refused until the CA's current CRL (kakehashi-pki crl) is installed");
        } else {
            warn!(next_update = next, grace_hours = grace_h, "The CRL is past nextUpdate: install the CA's current CRL (kakehashi-pki crl) before the grace period ends");
        }
    }
    *warned = level;
}

/// Reload the gateway's own certificate when its files change (renewal
/// without a restart). Reload the CRL when its file changes, then end the
/// sessions and drop the
/// tunnels of agents whose certificates it now revokes; the same when the
/// CRL goes stale (past `nextUpdate` and the grace: everyone). Laptops are
/// re-checked on every session request.
pub(crate) async fn watch_crl(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut warned = 0;
    loop {
        tokio::select! {
            _ = s.shutdown.draining() => return,
            _ = tick.tick() => {}
        }
        let was = warned;
        crl_freshness(&s, &mut warned);
        if warned == 2 && was < 2 {
            recheck_peers(&s);
        }
        match s.server_cert.reload_if_changed() {
            Ok(false) => {}
            Ok(true) => info!(
                serial = %s.server_cert.serial(),
                "Gateway certificate reloaded: new handshakes present it, connections up keep theirs"
            ),
            Err(e) => warn!(
                error = %format!("{e:#}"),
                "Gateway certificate reload failed; keeping the certificate in force"
            ),
        }
        match s.verifier.reload_if_changed() {
            Ok(false) => {}
            Ok(true) => {
                info!("CRL reloaded");
                warned = 0;
                crl_freshness(&s, &mut warned);
                recheck_peers(&s);
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "CRL reload failed; keeping the previous CRL")
            }
        }
    }
}

/// End the live sessions and drop the agent tunnels whose certificates the
/// CRL in force no longer accepts.
pub(crate) fn recheck_peers(s: &Shared) {
    let live: Vec<Arc<LiveSession>> = s
        .live
        .lock()
        .expect("live lock")
        .values()
        .cloned()
        .collect();
    for l in live {
        if let Err(reason) = check_cert(s, &l.cert) {
            warn!(device = %l.device, desk = %l.desk, reason = reason.code(), "Ending the session of a revoked certificate");
            l.end(reason);
        }
    }
    let mut agents = s.agents.lock().expect("agents lock");
    agents.retain(|desk, e| match check_cert(s, &e.cert) {
        Ok(()) => true,
        Err(reason) => {
            warn!(
                desk,
                reason = reason.code(),
                "Dropping the tunnel of a revoked agent"
            );
            s.metrics
                .agents_online
                .with_label_values(&[e.transport.as_str()])
                .dec();
            e.replaced.cancel();
            false
        }
    });
}
