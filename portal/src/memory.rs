//! Short-lived server-side state kept in memory: WebAuthn ceremonies in
//! progress and portal sessions. Each entry has an expiry; the map has a
//! cap, so a flood of ceremony starts cannot grow it without bound.
//!
//! Entries may also carry quota keys (e.g. `user:ID`, `source:IP`) with a
//! limit each: a new entry over a key's limit evicts that key's *oldest*
//! entry, and a full map evicts the oldest entry of the largest group, so
//! a flood for one user or from one address only ever displaces itself and
//! never answers everyone else `busy`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Entries by random id, each with an expiry (unix seconds).
pub(crate) struct TtlMap<T> {
    entries: Mutex<Entries<T>>,
    cap: usize,
}

struct Entries<T> {
    by_id: HashMap<String, (i64, T)>,
    /// Ids in insertion order per quota key; ids no longer in `by_id` are
    /// dropped lazily.
    groups: HashMap<String, VecDeque<String>>,
}

/// The map is at its cap even after dropping expired entries.
#[derive(Debug)]
pub(crate) struct Full;

impl<T> TtlMap<T> {
    pub(crate) fn new(cap: usize) -> Self {
        TtlMap {
            entries: Mutex::new(Entries {
                by_id: HashMap::new(),
                groups: HashMap::new(),
            }),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<T>> {
        // A panic while holding the lock leaves a consistent map (every
        // operation is a single insert or remove), so poisoning is ignored.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `value` under a new random id until `expires` and returns the id.
    pub(crate) fn insert(&self, now: i64, expires: i64, value: T) -> Result<String, Full> {
        let id = crate::codes::random_b64url::<32>();
        let mut e = self.lock();
        let map = &mut e.by_id;
        if map.len() >= self.cap {
            map.retain(|_, (exp, _)| *exp > now);
            if map.len() >= self.cap {
                return Err(Full);
            }
        }
        map.insert(id.clone(), (expires, value));
        Ok(id)
    }

    /// Stores `value` under a new random id until `expires`, counted against
    /// each `(key, limit)` quota: over a key's limit that key's oldest entry
    /// goes; with the whole map full (after dropping expired entries) the
    /// oldest entry of the largest group goes. Never refuses.
    pub(crate) fn insert_with_quotas(
        &self,
        now: i64,
        expires: i64,
        value: T,
        quotas: &[(String, usize)],
    ) -> String {
        let id = crate::codes::random_b64url::<32>();
        let mut e = self.lock();
        let e = &mut *e;
        for (key, limit) in quotas {
            let q = e.groups.entry(key.clone()).or_default();
            q.retain(|i| e.by_id.get(i).is_some_and(|(exp, _)| *exp > now));
            while q.len() >= (*limit).max(1) {
                if let Some(old) = q.pop_front() {
                    e.by_id.remove(&old);
                }
            }
        }
        if e.by_id.len() >= self.cap {
            e.by_id.retain(|_, (exp, _)| *exp > now);
            let by_id = &e.by_id;
            e.groups.retain(|_, q| {
                q.retain(|i| by_id.contains_key(i));
                !q.is_empty()
            });
            if e.by_id.len() >= self.cap {
                let largest = e
                    .groups
                    .iter_mut()
                    .max_by_key(|(_, q)| q.len())
                    .and_then(|(_, q)| q.pop_front());
                match largest {
                    Some(old) => {
                        e.by_id.remove(&old);
                    }
                    None => {
                        // Entries without quota keys only: drop the one
                        // that expires first.
                        if let Some(k) = e
                            .by_id
                            .iter()
                            .min_by_key(|(_, (exp, _))| *exp)
                            .map(|(k, _)| k.clone())
                        {
                            e.by_id.remove(&k);
                        }
                    }
                }
            }
        }
        for (key, _) in quotas {
            e.groups
                .entry(key.clone())
                .or_default()
                .push_back(id.clone());
        }
        // Groups whose entries are all gone are forgotten now and then, so
        // the index stays as small as the map.
        if e.groups.len() > 2 * self.cap.max(1024) {
            let by_id = &e.by_id;
            e.groups.retain(|_, q| {
                q.retain(|i| by_id.contains_key(i));
                !q.is_empty()
            });
        }
        e.by_id.insert(id.clone(), (expires, value));
        id
    }

    /// Removes and returns the entry if it has not expired (one use only).
    pub(crate) fn take(&self, id: &str, now: i64) -> Option<T> {
        let (exp, value) = self.lock().by_id.remove(id)?;
        (exp > now).then_some(value)
    }

    /// Removes the entry.
    pub(crate) fn remove(&self, id: &str) {
        self.lock().by_id.remove(id);
    }

    /// How many entries are held (expired ones included until purged).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether the entry is held and not expired.
    #[cfg(test)]
    pub(crate) fn contains(&self, id: &str, now: i64) -> bool {
        self.lock().by_id.get(id).is_some_and(|(exp, _)| *exp > now)
    }
}

impl<T: Clone> TtlMap<T> {
    /// A copy of the entry if it has not expired; an expired one is dropped.
    pub(crate) fn get(&self, id: &str, now: i64) -> Option<T> {
        let mut e = self.lock();
        let map = &mut e.by_id;
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

    fn q(user: &str, ip: &str) -> [(String, usize); 2] {
        [(format!("user:{user}"), 3), (format!("source:{ip}"), 5)]
    }

    #[test]
    fn a_flood_for_one_user_or_from_one_address_displaces_only_itself() {
        let m = TtlMap::new(8);
        let victim = m.insert_with_quotas(100, 400, "victim", &q("v", "10.0.0.9"));
        // 10,000 starts for one user from one address: that user keeps
        // only its 3 newest, the victim is untouched.
        let mut last = Vec::new();
        for i in 0..10_000 {
            last.push(m.insert_with_quotas(100, 400, "flood", &q("u", "10.0.0.1")));
            if last.len() > 3 {
                assert!(!m.contains(&last[i - 3], 100), "oldest of the key evicted");
            }
        }
        assert!(m.contains(&victim, 100));
        assert_eq!(m.len(), 4);
        // Many users from one address: that address keeps its 5 newest.
        for i in 0..1000 {
            m.insert_with_quotas(100, 400, "flood", &q(&format!("x{i}"), "10.0.0.2"));
        }
        assert!(m.contains(&victim, 100));
        assert!(m.len() <= 8);
        // Many addresses filling the whole map: the largest group gives way,
        // and a new one always gets in.
        for i in 0..50 {
            m.insert_with_quotas(
                100,
                400,
                "flood",
                &q(&format!("y{i}"), &format!("10.1.0.{i}")),
            );
        }
        let late = m.insert_with_quotas(100, 400, "late", &q("w", "10.0.0.10"));
        assert!(m.contains(&late, 100));
        assert!(m.len() <= 8);
        assert_eq!(m.take(&late, 100), Some("late"));
    }
}
