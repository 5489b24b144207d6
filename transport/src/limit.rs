//! Connection caps per source address and in total, taken *after*
//! `accept()`: a connection over either cap is closed at once, so silent or
//! half-open connections from one address can neither hold the accept loop
//! nor take every slot from the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The listener holds its total maximum.
    Total,
    /// This source address holds its maximum.
    PerSource,
}

impl Over {
    /// Lowercase label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Over::Total => "total",
            Over::PerSource => "per_source",
        }
    }
}

/// Open connections per source address and in total, each capped.
/// Cheap to clone (one shared count).
#[derive(Debug, Clone)]
pub struct SourceLimits {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// One open connection's place in [`SourceLimits`]; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    inner: Arc<Shared>,
    ip: IpAddr,
}

impl SourceLimits {
    /// At most `max_total` connections, `max_per_source` of them from one
    /// address (both at least 1). IPv4-mapped IPv6 addresses count as IPv4.
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        SourceLimits {
            inner: Arc::new(Shared {
                max_total: max_total.max(1),
                max_per_source: max_per_source.max(1),
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// A place for one more connection from `ip`, or which cap is full.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<Slot, Over> {
        let ip = ip.to_canonical();
        let mut c = self.inner.lock();
        if c.total >= self.inner.max_total {
            return Err(Over::Total);
        }
        let n = c.per_source.entry(ip).or_insert(0);
        if *n >= self.inner.max_per_source {
            return Err(Over::PerSource);
        }
        *n += 1;
        c.total += 1;
        Ok(Slot {
            inner: self.inner.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.lock().total
    }

    /// Connections open now from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        self.inner.lock().per_source.get(&ip).copied().unwrap_or(0)
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Every update is a pair of integer changes made under the lock;
        // a panic elsewhere cannot leave them half-done.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.inner.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn caps_per_source_and_total() {
        let l = SourceLimits::new(3, 2);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let a1 = l.try_acquire(a).unwrap();
        let _a2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), Over::PerSource);
        // The mapped form of the same address is the same source.
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(l.try_acquire(mapped).unwrap_err(), Over::PerSource);
        let _b1 = l.try_acquire(b).unwrap();
        assert_eq!(
            l.try_acquire(IpAddr::V6(Ipv6Addr::LOCALHOST)).unwrap_err(),
            Over::Total
        );
        assert_eq!(l.open(), 3);
        drop(a1);
        assert_eq!(l.open_from(a), 1);
        let _a3 = l.try_acquire(a).unwrap();
        assert_eq!(l.open(), 3);
    }

    #[test]
    fn a_source_with_nothing_open_is_forgotten() {
        let l = SourceLimits::new(10, 10);
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        drop(l.try_acquire(a).unwrap());
        assert!(l.inner.lock().per_source.is_empty());
        assert_eq!(l.open(), 0);
    }
}
