//! Short-lived server-side state kept in memory: WebAuthn ceremonies in
//! progress and portal sessions. Each entry has an expiry; the map has a
//! cap, so a flood of ceremony starts cannot grow it without bound.

use std::collections::HashMap;
use std::sync::Mutex;

/// Entries by random id, each with an expiry (unix seconds).
pub(crate) struct TtlMap<T> {
    entries: Mutex<HashMap<String, (i64, T)>>,
    cap: usize,
}

/// The map is at its cap even after dropping expired entries.
#[derive(Debug)]
pub(crate) struct Full;

impl<T> TtlMap<T> {
    pub(crate) fn new(cap: usize) -> Self {
        TtlMap {
            entries: Mutex::new(HashMap::new()),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, T)>> {
        // A panic while holding the lock leaves a consistent map (every
        // operation is a single insert or remove), so poisoning is ignored.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `value` under a new random id until `expires` and returns the id.
    pub(crate) fn insert(&self, now: i64, expires: i64, value: T) -> Result<String, Full> {
        let id = super::random_b64url::<32>();
        let mut map = self.lock();
        if map.len() >= self.cap {
            map.retain(|_, (exp, _)| *exp > now);
            if map.len() >= self.cap {
                return Err(Full);
            }
        }
        map.insert(id.clone(), (expires, value));
        Ok(id)
    }

    /// Removes and returns the entry if it has not expired (one use only).
    pub(crate) fn take(&self, id: &str, now: i64) -> Option<T> {
        let (exp, value) = self.lock().remove(id)?;
        (exp > now).then_some(value)
    }

    /// Removes the entry.
    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// How many entries are held (expired ones included until purged).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl<T: Clone> TtlMap<T> {
    /// A copy of the entry if it has not expired; an expired one is dropped.
    pub(crate) fn get(&self, id: &str, now: i64) -> Option<T> {
        let mut map = self.lock();
        match map.get(id) {
            Some((exp, v)) if *exp > now => Some(v.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_one_use_and_cap() {
        let m = TtlMap::new(2);
        let a = m.insert(100, 110, "a").unwrap();
        let b = m.insert(100, 200, "b").unwrap();
        assert!(m.insert(100, 200, "c").is_err(), "cap");
        assert_eq!(m.get(&b, 150), Some("b"));
        // Expired entries are purged to make room.
        let c = m.insert(120, 200, "c").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.take(&a, 120), None);
        assert_eq!(m.take(&c, 150), Some("c"));
        assert_eq!(m.take(&c, 150), None, "one use");
        assert_eq!(m.get(&b, 200), None, "expired");
        assert_eq!(m.len(), 0);
    }
}
