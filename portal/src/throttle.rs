//! Limits against an anonymous flood: a token bucket per source address for
//! the API, and an audit throttle that writes the first refusal of a kind
//! from an address in full and the rest of that minute as one summary
//! record — the log keeps every attempt counted without one row per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Most addresses tracked at once; past it, addresses whose bucket is full
/// again are forgotten (they are indistinguishable from new ones).
const MAX_SOURCES: usize = 100_000;

/// A token bucket per source address.
pub(crate) struct RateLimiter {
    /// Tokens per second.
    rate: f64,
    /// Bucket size.
    burst: f64,
    epoch: Instant,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Seconds since `epoch` of the last update.
    at: f64,
}

impl RateLimiter {
    /// `rate` calls per second sustained, `burst` at once.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            epoch: Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`: `Ok` when allowed, `Err(seconds to wait)`
    /// when over the rate.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), u64> {
        self.check_at(ip.to_canonical(), self.epoch.elapsed().as_secs_f64())
    }

    fn check_at(&self, ip: IpAddr, now: f64) -> Result<(), u64> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SOURCES && !map.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| b.tokens + (now - b.at) * rate < burst);
        }
        let b = map.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + (now - b.at) * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) / self.rate).ceil();
            // Whole seconds, at least one: `Retry-After` takes integers.
            // Seconds until a token is back: small and positive, rounded down.
            #[allow(clippy::cast_possible_truncation)]
            let secs = wait as u64;
            Err(secs.max(1))
        }
    }
}

/// What the audit throttle says about one refusal.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write the record; `flushed` is a finished window to summarise first.
    Write { flushed: Option<Suppressed> },
    /// Counted into the current window's summary.
    Suppress,
}

/// Refusals of one kind from one address that were counted, not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Suppressed {
    /// `action|reason|source`.
    pub key: String,
    /// Window start and end (unix seconds).
    pub from: i64,
    pub to: i64,
    /// Refusals counted.
    pub count: u64,
    /// Up to [`MAX_SUBJECTS`] distinct subjects among them.
    pub subjects: Vec<String>,
}

/// Subjects listed in one summary.
const MAX_SUBJECTS: usize = 20;

/// One record in full per key and window; the rest counted.
pub(crate) struct AuditThrottle {
    window_secs: i64,
    windows: Mutex<HashMap<String, Window>>,
}

struct Window {
    start: i64,
    count: u64,
    subjects: Vec<String>,
}

impl AuditThrottle {
    pub(crate) fn new(window_secs: i64) -> Self {
        AuditThrottle {
            window_secs: window_secs.max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Decides on a refusal with `key` about `subject` at `now`.
    pub(crate) fn admit(&self, key: &str, subject: &str, now: i64) -> Admit {
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = map.get_mut(key) {
            if now < w.start + self.window_secs {
                w.count += 1;
                if w.subjects.len() < MAX_SUBJECTS && !w.subjects.iter().any(|s| s == subject) {
                    w.subjects.push(subject.to_owned());
                }
                return Admit::Suppress;
            }
        }
        let flushed = map
            .insert(
                key.to_owned(),
                Window {
                    start: now,
                    count: 0,
                    subjects: Vec::new(),
                },
            )
            .filter(|w| w.count > 0)
            .map(|w| Suppressed {
                key: key.to_owned(),
                from: w.start,
                to: w.start + self.window_secs,
                count: w.count,
                subjects: w.subjects,
            });
        if map.len() > MAX_SOURCES {
            // Bounded: a flood from many addresses loses its oldest quiet
            // windows' (empty) entries first.
            let cut = now - self.window_secs;
            map.retain(|_, w| w.start >= cut || w.count > 0);
        }
        Admit::Write { flushed }
    }

    /// Windows over by `now` that counted something (and all of them when
    /// `all`, at shutdown): their summaries, removed from the throttle.
    pub(crate) fn take_finished(&self, now: i64, all: bool) -> Vec<Suppressed> {
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        map.retain(|key, w| {
            let over = all || now >= w.start + self.window_secs;
            if over && w.count > 0 {
                out.push(Suppressed {
                    key: key.clone(),
                    from: w.start,
                    to: w.start + self.window_secs,
                    count: w.count,
                    subjects: std::mem::take(&mut w.subjects),
                });
            }
            !over
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let l = RateLimiter::new(2, 4);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        for _ in 0..4 {
            assert!(l.check_at(a, 0.0).is_ok());
        }
        assert_eq!(l.check_at(a, 0.0), Err(1));
        // Another address has its own bucket.
        assert!(l.check_at(b, 0.0).is_ok());
        // Half a second later one token is back (2 per second).
        assert!(l.check_at(a, 0.5).is_ok());
        assert!(l.check_at(a, 0.5).is_err());
        // Never more than the burst, however long the pause.
        for _ in 0..4 {
            assert!(l.check_at(a, 100.0).is_ok());
        }
        assert!(l.check_at(a, 100.0).is_err());
    }

    #[test]
    fn throttle_writes_one_then_summarises() {
        let t = AuditThrottle::new(60);
        let k = "login.failed|ceremony_expired|192.0.2.1";
        assert_eq!(t.admit(k, "-", 1000), Admit::Write { flushed: None });
        for i in 0..500 {
            assert_eq!(t.admit(k, &format!("u{}", i % 30), 1001), Admit::Suppress);
        }
        // Another key is its own window.
        assert_eq!(
            t.admit("login.failed|ceremony_expired|192.0.2.2", "-", 1001),
            Admit::Write { flushed: None }
        );
        assert!(t.take_finished(1059, false).is_empty(), "window still open");
        // The next window's first record flushes the summary of the last one.
        match t.admit(k, "-", 1060) {
            Admit::Write {
                flushed: Some(s), ..
            } => {
                assert_eq!((s.count, s.from, s.to), (500, 1000, 1060));
                assert_eq!(s.subjects.len(), MAX_SUBJECTS);
            }
            other => panic!("{other:?}"),
        }
        t.admit(k, "-", 1061);
        let done = t.take_finished(1200, false);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].count, 1);
        assert!(t.take_finished(1200, true).is_empty());
    }
}
