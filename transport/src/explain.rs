//! Turning connection failures into reason codes with sentences a person can
//! act on ("your laptop's certificate was revoked"), instead of raw TLS errors.

use kakehashi_proto::Reason;
use rustls::AlertDescription;

/// The reason behind a TLS alert number the peer sent us.
pub fn alert_reason(alert: u8) -> Reason {
    match AlertDescription::from(alert) {
        AlertDescription::CertificateRevoked => Reason::CertRevoked,
        AlertDescription::CertificateExpired => Reason::CertExpired,
        // DecryptError: the chain's signature does not verify — a CA of the
        // same name that is not ours.
        AlertDescription::UnknownCA | AlertDescription::DecryptError => Reason::CertUnknownCa,
        _ => Reason::CertRejected,
    }
}

fn rustls_reason(e: &rustls::Error) -> Option<Reason> {
    match e {
        rustls::Error::AlertReceived(a) => Some(alert_reason(u8::from(*a))),
        rustls::Error::InvalidCertificate(_) => Some(Reason::GatewayUntrusted),
        _ => None,
    }
}

/// Explain an I/O error from a TLS-over-TCP connection, if it is a TLS failure.
pub fn io_reason(e: &std::io::Error) -> Option<Reason> {
    let inner = e.get_ref()?;
    if let Some(quinn::ReadError::ConnectionLost(ce)) = inner.downcast_ref::<quinn::ReadError>() {
        return quic_reason(ce);
    }
    if let Some(quinn::WriteError::ConnectionLost(ce)) = inner.downcast_ref::<quinn::WriteError>() {
        return quic_reason(ce);
    }
    rustls_reason(inner.downcast_ref::<rustls::Error>()?)
}

/// Explain a QUIC connection error, if it is a TLS failure.
pub fn quic_reason(e: &quinn::ConnectionError) -> Option<Reason> {
    use quinn::ConnectionError as C;
    // QUIC carries TLS alerts as CRYPTO_ERROR 0x100 + alert (RFC 9001 §4.8).
    let crypto = |code: u64| {
        code.checked_sub(0x100)
            .and_then(|alert| u8::try_from(alert).ok())
    };
    match e {
        // Raised locally: we refused the gateway's certificate.
        C::TransportError(t) => crypto(u64::from(t.code)).map(|_| Reason::GatewayUntrusted),
        // Refused before its handshake: the gateway is busy (short of
        // CPU, or at a cap on connections or handshakes).
        C::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            Some(Reason::GatewayBusy)
        }
        // Sent by the peer: it refused ours.
        C::ConnectionClosed(c) => crypto(u64::from(c.error_code)).map(alert_reason),
        C::TimedOut => Some(Reason::GatewayUnreachable),
        // The gateway closes a connection it refuses with the reason code as the close reason.
        C::ApplicationClosed(a) => std::str::from_utf8(&a.reason)
            .ok()
            .and_then(Reason::from_code),
        _ => None,
    }
}

/// Walk an error chain and explain the first TLS failure in it.
pub fn chain_reason(e: &anyhow::Error) -> Option<Reason> {
    e.chain().find_map(|c| {
        if c.is::<crate::crl::CrlStale>() {
            return Some(Reason::CrlStale);
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io_reason(io);
        }
        if let Some(q) = c.downcast_ref::<quinn::ConnectionError>() {
            return quic_reason(q);
        }
        if let Some(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(ce))) =
            c.downcast_ref::<quinn::ReadExactError>()
        {
            return quic_reason(ce);
        }
        if let Some(quinn::ReadError::ConnectionLost(ce)) = c.downcast_ref::<quinn::ReadError>() {
            return quic_reason(ce);
        }
        if let Some(quinn::WriteError::ConnectionLost(ce)) = c.downcast_ref::<quinn::WriteError>() {
            return quic_reason(ce);
        }
        c.downcast_ref::<rustls::Error>().and_then(rustls_reason)
    })
}
