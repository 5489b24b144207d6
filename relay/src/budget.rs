//! The gateway-wide budget of bytes in flight (`[relay.limits]
//! memory_budget_mib`), and the admission rule on it: a session takes its
//! share before anything else is done for it, or is refused early with
//! `gateway_busy`.
//!
//! A session's share is the most its buffers can hold in this process,
//! worked out from the limits each part already has, so the total is a
//! bound and not an estimate: the splice holds at most one copy buffer per
//! direction; a QUIC leg at most its connection's send window plus its
//! receive window (quinn enforces both, see
//! [`kakehashi_transport::quic::QuicLimits::most_held`]); a TLS/TCP leg at
//! most [`kakehashi_transport::tls_stream::MOST_HELD`]. A connection that
//! carries several sessions holds at most one connection's windows for all
//! of them, so the sum over sessions over-counts it: the bound stays safe.
//! Past its capacity (more packets than the gateway can send) the buffers
//! of live sessions fill up to these shares; new sessions are then refused
//! rather than admitted to buffers that could not be carried. Live sessions
//! are never cut by this rule.

use std::sync::Arc;

use kakehashi_transport::quic::QuicLimits;
use kakehashi_transport::{splice, tls_stream, Transport};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget accounting unit: shares are rounded up to whole KiB.
const UNIT: u64 = 1024;

/// The budget and what each kind of session takes of it.
#[derive(Debug)]
pub(crate) struct Budget {
    units: Arc<Semaphore>,
    total: u64,
    quic_leg: u64,
    tcp_leg: u64,
    reserved: prometheus::IntGauge,
}

/// One session's share of the budget; dropping it gives the share back.
#[derive(Debug)]
pub(crate) struct Share {
    _units: OwnedSemaphorePermit,
    bytes: u64,
    reserved: prometheus::IntGauge,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.reserved.sub(gauge(self.bytes));
    }
}

fn gauge(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl Budget {
    /// A budget of `bytes` for sessions whose QUIC legs have `quic` limits;
    /// `reserved` follows the shares taken.
    pub(crate) fn new(bytes: u64, quic: &QuicLimits, reserved: prometheus::IntGauge) -> Self {
        // Semaphore permits are bounded (`usize::MAX >> 3`): far above any RAM.
        let units = usize::try_from(bytes / UNIT)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            units: Arc::new(Semaphore::new(units)),
            total: units as u64 * UNIT,
            quic_leg: quic.most_held(),
            tcp_leg: tls_stream::MOST_HELD as u64,
            reserved,
        }
    }

    /// The budget, in bytes (rounded down to whole KiB).
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Bytes taken by the shares of live sessions and of sessions being set up.
    pub(crate) fn reserved(&self) -> u64 {
        self.total - self.units.available_permits() as u64 * UNIT
    }

    /// The most a session whose laptop and desk legs run over these
    /// transports can hold in the gateway.
    pub(crate) fn session_share(&self, laptop: Transport, desk: Transport) -> u64 {
        2 * splice::BUF_SIZE as u64 + self.leg(laptop) + self.leg(desk)
    }

    /// The most one leg over `t` holds.
    fn leg(&self, t: Transport) -> u64 {
        match t {
            Transport::Quic => self.quic_leg,
            Transport::Tcp => self.tcp_leg,
        }
    }

    /// The transport whose leg holds more: what a leg not yet known is
    /// charged as.
    pub(crate) fn dearer(&self) -> Transport {
        if self.quic_leg >= self.tcp_leg {
            Transport::Quic
        } else {
            Transport::Tcp
        }
    }

    /// Sessions of this kind the whole budget holds.
    pub(crate) fn holds(&self, laptop: Transport, desk: Transport) -> u64 {
        self.total / units(self.session_share(laptop, desk)).saturating_mul(UNIT)
    }

    /// A share for a session of this kind, or `None` when the budget has no
    /// room left for it.
    pub(crate) fn try_take(&self, laptop: Transport, desk: Transport) -> Option<Share> {
        let bytes = self.session_share(laptop, desk);
        let n = u32::try_from(units(bytes)).ok()?;
        let permit = self.units.clone().try_acquire_many_owned(n).ok()?;
        let bytes = u64::from(n) * UNIT;
        self.reserved.add(gauge(bytes));
        Some(Share {
            _units: permit,
            bytes,
            reserved: self.reserved.clone(),
        })
    }
}

fn units(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(bytes: u64) -> Budget {
        let quic = QuicLimits {
            stream_window: 64 * 1024,
            conn_window: 64 * 1024,
            ..QuicLimits::default()
        };
        Budget::new(bytes, &quic, prometheus::IntGauge::new("r", "r").unwrap())
    }

    #[test]
    fn a_share_is_the_splice_and_each_legs_bound() {
        let b = budget(1 << 30);
        // 2 × 16 KiB of splice, 2 × 64 KiB per QUIC leg, 3 × 17 KiB per TLS leg.
        assert_eq!(
            b.session_share(Transport::Quic, Transport::Quic),
            (32 + 256) * 1024
        );
        assert_eq!(
            b.session_share(Transport::Tcp, Transport::Tcp),
            (32 + 102) * 1024
        );
        assert_eq!(
            b.session_share(Transport::Tcp, Transport::Quic),
            (32 + 51 + 128) * 1024
        );
        assert_eq!(b.holds(Transport::Quic, Transport::Quic), 3640);
    }

    #[test]
    fn no_room_refuses_and_a_returned_share_makes_room() {
        // Room for three QUIC sessions and one TLS/TCP one.
        let b = budget(3 * 288 * 1024 + 140 * 1024);
        let shares: Vec<_> = (0..3)
            .map(|_| b.try_take(Transport::Quic, Transport::Quic).unwrap())
            .collect();
        assert_eq!(b.reserved(), 3 * 288 * 1024);
        assert_eq!(b.reserved.get(), 3 * 288 * 1024);
        assert!(b.try_take(Transport::Quic, Transport::Quic).is_none());
        // A session that holds less (134 KiB) still fits, and then nothing.
        let tcp = b.try_take(Transport::Tcp, Transport::Tcp).unwrap();
        assert!(b.try_take(Transport::Tcp, Transport::Tcp).is_none());
        drop((shares, tcp));
        assert_eq!(b.reserved(), 0);
        assert_eq!(b.reserved.get(), 0);
        let _s = b.try_take(Transport::Quic, Transport::Quic).unwrap();
    }
}
