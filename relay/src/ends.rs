//! Session ends the store could not take when they happened (PostgreSQL
//! restarting, unreachable, failing over): held in memory and recorded
//! when the database answers again, with the time, reason and byte counts
//! of the end itself. Without this the row of a session that ended during
//! an outage stayed open for as long as the gateway ran.
//!
//! Recording again is safe: a session ends once in the store (a second
//! end is a `Conflict`), so an end whose first commit did reach the
//! database before the connection dropped is not recorded twice.

use std::collections::VecDeque;
use std::sync::Mutex;

use kakehashi_store::{Audit, SessionEnd, Store};
use tracing::{info, warn};

/// Most ends held; beyond, the oldest is given up (its row is closed as
/// `gateway_restart` by this gateway's next start).
pub(crate) const MAX_HELD: usize = 100_000;

/// One end to record: what `Store::end_session` takes.
#[derive(Debug)]
struct Held {
    id: String,
    end: SessionEnd,
    audit: Audit,
}

/// The ends waiting for the database, oldest first.
#[derive(Debug, Default)]
pub(crate) struct UnrecordedEnds {
    held: Mutex<VecDeque<Held>>,
}

/// Whether an end that failed with `e` is worth recording again later: the
/// database failed or was unreachable (not: the session had already ended,
/// or the end was refused as invalid).
pub(crate) fn retryable(e: &kakehashi_store::Error) -> bool {
    matches!(e, kakehashi_store::Error::Database(_))
}

impl UnrecordedEnds {
    /// Holds an end the store refused with a [`retryable`] error.
    pub(crate) fn hold(&self, id: &str, end: &SessionEnd, audit: Audit) {
        let mut held = self.held.lock().expect("held ends lock");
        if held.len() >= MAX_HELD {
            if let Some(old) = held.pop_front() {
                warn!(session = %old.id, "Too many session ends waiting for the database; giving up the oldest");
            }
        }
        held.push_back(Held {
            id: id.to_owned(),
            end: end.clone(),
            audit,
        });
    }

    /// How many ends wait.
    pub(crate) fn len(&self) -> usize {
        self.held.lock().expect("held ends lock").len()
    }

    /// Records the held ends, oldest first, stopping at the first that the
    /// database still cannot take (it stays held, with those after it).
    /// Returns how many were recorded.
    pub(crate) async fn record(&self, store: &Store, gateway: &str) -> usize {
        let mut recorded = 0;
        loop {
            let Some(h) = self.held.lock().expect("held ends lock").pop_front() else {
                break;
            };
            // A row a survivor closed as `gateway_lost` (it took this
            // gateway for dead) takes the real end (`end_carried_session`).
            match store
                .end_carried_session(&h.id, gateway, &h.end, h.audit.clone())
                .await
            {
                Ok(_) => recorded += 1,
                // Ended meanwhile (the first attempt did commit).
                Err(
                    kakehashi_store::Error::Conflict { .. }
                    | kakehashi_store::Error::NotFound { .. },
                ) => {}
                Err(e) if retryable(&e) => {
                    self.held.lock().expect("held ends lock").push_front(h);
                    break;
                }
                Err(e) => warn!(session = %h.id, error = %e, "Cannot record the session end"),
            }
        }
        if recorded > 0 {
            info!(
                recorded,
                waiting = self.len(),
                "Recorded session ends held while the database was unreachable"
            );
        }
        recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_store::{DeviceClass, SessionStart};

    fn end(reason: &str) -> SessionEnd {
        SessionEnd {
            reason: reason.into(),
            bytes_up: 7,
            bytes_down: 9,
        }
    }

    fn audit(at: i64, id: &str) -> Audit {
        Audit::new(at, "user:u1", "session.end").subject(id)
    }

    /// An end the store could not take (its pool closed: unreachable) is
    /// held, then recorded once the database answers, with the end's own
    /// time; an end already recorded meanwhile is dropped, not doubled.
    #[tokio::test]
    async fn an_end_held_while_the_store_is_away_is_recorded_once_when_it_answers() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        for id in ["s-1", "s-2"] {
            let start = SessionStart {
                id: id.into(),
                user_id: "u1".into(),
                device_id: "PC-1".into(),
                desk_id: "DESK-1".into(),
                class: DeviceClass::Home,
                level: 1,
                transport: "tcp".into(),
                gateway: "gw1".into(),
            };
            let a = Audit::new(100, "user:u1", "session.start").subject(id);
            store.start_session(&start, a).await.unwrap();
        }
        store.close().await;
        let e = store
            .end_session("s-1", &end("client_closed"), audit(200, "s-1"))
            .await
            .unwrap_err();
        assert!(retryable(&e), "{e:?}");
        let held = UnrecordedEnds::default();
        held.hold("s-1", &end("client_closed"), audit(200, "s-1"));
        held.hold("s-2", &end("client_closed"), audit(201, "s-2"));
        // Still away: nothing recorded, both still held.
        assert_eq!(held.record(&store, "gw").await, 0);
        assert_eq!(held.len(), 2);

        let store = Store::open(&url).await.unwrap();
        // s-2 was ended meanwhile (the first attempt's commit did land).
        store
            .end_session("s-2", &end("client_closed"), audit(201, "s-2"))
            .await
            .unwrap();
        assert_eq!(held.record(&store, "gw").await, 1);
        assert_eq!(held.len(), 0);
        let r = store.get_session("s-1").await.unwrap().unwrap();
        assert_eq!(
            (
                r.ended_at,
                r.end_reason.as_deref(),
                r.bytes_up,
                r.bytes_down
            ),
            (Some(200), Some("client_closed"), 7, 9)
        );
        let ends = store
            .audit_between(0, i64::MAX)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.action == "session.end")
            .count();
        assert_eq!(ends, 2, "one end record per session");
    }

    #[test]
    fn the_oldest_is_given_up_beyond_the_cap() {
        let held = UnrecordedEnds::default();
        for i in 0..=MAX_HELD {
            held.hold(&format!("s-{i}"), &end("x"), audit(1, "s"));
        }
        assert_eq!(held.len(), MAX_HELD);
        let first = held.held.lock().unwrap().front().map(|h| h.id.clone());
        assert_eq!(first.as_deref(), Some("s-1"));
    }
}
