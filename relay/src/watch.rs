//! Live re-evaluation: the store's audit feed watched for changes that
//! affect sessions (policy, devices, desks, plans, BCP), and the sessions the
//! policy no longer allows ended.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use kakehashi_proto::{Reason, Refusal};
use tracing::{debug, info, warn};

use crate::shared::{LiveSession, Shared};

/// How often a lost change listener is re-established.
const RELISTEN: std::time::Duration = std::time::Duration::from_secs(5);

/// The next wake-up from the change listener; never, without one.
async fn wait_for_change(
    listener: &mut Option<kakehashi_store::ChangeListener>,
) -> kakehashi_store::Result<bool> {
    match listener {
        Some(l) => l.wait().await,
        None => std::future::pending().await,
    }
}

/// The audit action of an operator ending a session (the dashboard's
/// "end" button): the gateway carrying the session ends it when it reads
/// the record, whichever gateway's dashboard wrote it.
pub const OPERATOR_END: &str = "session.end_by_operator";

/// Audit actions that can change a live session's decision.
pub(crate) fn affects_sessions(action: &str) -> bool {
    ["policy.", "device.", "desk.", "plan.", "bcp.", "user."]
        .iter()
        .any(|p| action.starts_with(p))
}

/// Live re-evaluation. The audit log is the change feed: every change to
/// users, devices, desks, plans, BCP declarations and the policy is written
/// with its audit record in one transaction, by this gateway, another one
/// of the cluster or the admin CLI. Every `[policy] watch` the new
/// records are read; if any can change a decision, every live session is
/// re-decided, and those no longer allowed end with the reason. Sessions
/// reaching their end time are re-decided as well (hours, plan window, BCP
/// end, MFA age, maximum duration).
pub(crate) async fn watch_changes(s: Arc<Shared>) {
    let (Some(store), Some(holder)) = (&s.store, &s.policy) else {
        return;
    };
    let mut seen = match store.audit_head().await {
        Ok((seq, _)) => {
            s.feed_seq.store(seq, Ordering::Relaxed);
            seq
        }
        Err(e) => {
            warn!(error = %e, "Cannot read the audit log head; live re-evaluation off");
            return;
        }
    };
    let mut tick = tokio::time::interval(s.cfg.policy_watch);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // On PostgreSQL, every audited write wakes this loop at once; polling
    // stays as the backstop (a listener that is down or half-open).
    let mut listener = match store.listen_changes().await {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "Cannot LISTEN for changes; polling only");
            None
        }
    };
    let mut listener_down_since: Option<Instant> = None;
    // A change not yet applied to the live sessions (kept across a failed pass).
    let mut dirty = false;
    loop {
        tokio::select! {
            _ = s.shutdown.draining() => return,
            _ = tick.tick() => {}
            woke = wait_for_change(&mut listener) => {
                if let Err(e) = woke {
                    // Unreachable database: fall back to the tick until it is back.
                    if listener_down_since.is_none() {
                        warn!(error = %e, "Change listener lost; polling until the database is back");
                    }
                    listener_down_since.get_or_insert_with(Instant::now);
                    listener = None;
                }
            }
        }
        if listener.is_none() && listener_down_since.is_some_and(|t| t.elapsed() >= RELISTEN) {
            listener_down_since = Some(Instant::now());
            if let Ok(l) = store.listen_changes().await {
                info!("Change listener back");
                listener = l;
                listener_down_since = None;
            }
        }
        let mut changed = false;
        let mut policy_changed = false;
        let mut operator_ends = Vec::new();
        loop {
            let page = match store.audit_page(seen, 1000).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "Cannot read the audit log");
                    break;
                }
            };
            for r in &page {
                seen = seen.max(r.seq);
                if r.action == OPERATOR_END {
                    operator_ends.push(r.subject.clone());
                }
                if affects_sessions(&r.action) {
                    changed = true;
                    policy_changed |= r.action.starts_with("policy.");
                }
            }
            if page.len() < 1000 {
                break;
            }
        }
        s.feed_seq.store(seen, Ordering::Relaxed);
        // An operator on any gateway's dashboard ended a session: the one
        // carrying it ends it (elsewhere it is not live: nothing happens).
        for id in operator_ends.drain(..) {
            if s.end_session(&id, Reason::EndedByOperator) {
                info!(session = %id, "Session ended by an operator on another gateway");
            }
        }
        if policy_changed {
            match store.current_policy().await {
                Ok(Some(doc)) => match crate::admission::parse_policy(&doc.text) {
                    Ok(policy) => {
                        if holder.replace(crate::admission::Loaded {
                            policy,
                            version: doc.version,
                        }) {
                            info!(version = doc.version, author = %doc.author, "New access policy in force");
                        }
                    }
                    Err(e) => {
                        warn!(version = doc.version, error = %format!("{e:#}"), "Stored policy does not parse; keeping the one in force")
                    }
                },
                Ok(None) => {}
                Err(e) => warn!(error = %e, "Cannot read the policy"),
            }
        }
        dirty |= changed;
        let changed = dirty;
        let now = kakehashi_store::unix_now();
        let live: Vec<(String, Arc<LiveSession>)> = {
            let live = s.live.lock().expect("live lock");
            live.iter()
                .filter(|(_, l)| l.asker.is_some())
                .filter(|(_, l)| {
                    let end = l.end_at.load(Ordering::Relaxed);
                    changed || (end != 0 && end <= now)
                })
                .map(|(id, l)| (id.clone(), l.clone()))
                .collect()
        };
        if live.is_empty() {
            dirty = false;
            continue;
        }
        let loaded = holder.get();
        let started = Instant::now();
        let at = time::OffsetDateTime::now_utc();
        // One bulk read, then a pure decision per session.
        let snapshot = match crate::admission::Snapshot::load(store, &loaded.policy, at).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Cannot read the store to re-decide live sessions; retrying");
                continue;
            }
        };
        dirty = false;
        let mut ended = 0usize;
        for (id, l) in &live {
            let Some(asker) = &l.asker else { continue };
            let outcome = snapshot.decide(asker, &loaded.policy, at);
            let refusal = match outcome {
                crate::admission::Outcome::Deny { refusal, .. } => Some(refusal),
                // Registered as an RDP desk since, with controls its agent does not enforce.
                crate::admission::Outcome::Allow { controls, desk, .. }
                    if controls.is_restrictive()
                        && desk.service != kakehashi_store::DeskService::Other
                        && !l.agent_enforces =>
                {
                    Some(Refusal::new(Reason::DeskNotEnforcing))
                }
                crate::admission::Outcome::Allow { limits, .. } => {
                    let by_duration = l.max_duration.map(|d| {
                        l.started
                            .saturating_add(i64::try_from(d).unwrap_or(i64::MAX))
                    });
                    let end = [
                        limits.end_at.map(|e| i64::try_from(e).unwrap_or(i64::MAX)),
                        by_duration,
                    ]
                    .into_iter()
                    .flatten()
                    .min();
                    match end {
                        Some(e) if e <= kakehashi_store::unix_now() => {
                            Some(Refusal::new(Reason::SessionTimeLimit))
                        }
                        e => {
                            l.end_at.store(e.unwrap_or(0), Ordering::Relaxed);
                            None
                        }
                    }
                }
            };
            if let Some(r) = refusal {
                info!(session = %id, desk = %l.desk, device = %l.device, reason = %r.code, "Ending a session the policy no longer allows");
                l.end_with(r);
                ended += 1;
            }
        }
        debug!(
            checked = live.len(),
            ended,
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "Live sessions re-decided"
        );
    }
}
