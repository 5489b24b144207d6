//! Phase 1½ of a session's set-up: the gateway's load. A gateway short of
//! CPU ([`crate::load`]) refuses with `gateway_busy`; otherwise
//! the session takes its share of the gateway-wide budget of bytes in
//! flight ([`crate::budget`]) before the store or the desk is asked
//! anything, or is refused with `gateway_busy`.

use kakehashi_proto::message::SessionRequest;
use kakehashi_proto::{Reason, Refusal};
use tracing::{debug, warn};

use crate::budget::Share;
use crate::load::Busy;
use crate::shared::{audit_event, Shared, Who, STORE_DEADLINE};

/// Phase 1½, the gateway's load: while the gateway is short of CPU (see
/// [`crate::load`]), or when the session's share of the budget of
/// bytes in flight (see [`crate::budget`]) does not fit, `gateway_busy`,
/// audited; otherwise the share, taken before the store or the desk is
/// asked anything. Live sessions are never cut by either rule.
pub(crate) async fn take_share(
    s: &Shared,
    who: &Who,
    req: &SessionRequest,
) -> Result<Share, Refusal> {
    // The desk's leg runs over its agent's tunnel; a desk not online here
    // is refused later (`desk_offline`) and charged the dearer leg meanwhile.
    let desk = s
        .agents
        .lock()
        .expect("agents lock")
        .get(&req.desk)
        .map_or_else(|| s.budget.dearer(), |e| e.transport);
    let refusal = Refusal::new(Reason::GatewayBusy);
    if let Err(busy) = s.load.admit() {
        let detail = match busy {
            Busy::Cpu {
                percent,
                limit,
                paced,
            } => {
                let mut detail = serde_json::json!({
                    "rule": "busy_cpu_percent", "cpu_percent": percent, "busy_cpu_percent": limit,
                });
                if paced {
                    detail["paced"] = true.into();
                    debug!(
                        cpu_percent = percent,
                        limit_percent = limit,
                        "Session refused: near the CPU limit, one session is admitted per 100 ms (gateway_busy)"
                    );
                } else {
                    warn!(
                        cpu_percent = percent,
                        limit_percent = limit,
                        "Session refused: the gateway's CPU is spent (gateway_busy)"
                    );
                }
                detail
            }
            Busy::Delay { delay, limit } => {
                let (delay_ms, limit_ms) = (ms(delay), ms(limit));
                warn!(
                    delay_ms,
                    limit_ms, "Session refused: the gateway runs its tasks late (gateway_busy)"
                );
                serde_json::json!({
                    "rule": "busy_delay", "scheduling_delay_ms": delay_ms, "busy_delay_ms": limit_ms,
                })
            }
        };
        audit_denied(s, who, req, who.user.as_deref(), &refusal, detail).await;
        return Err(refusal);
    }
    if let Some(share) = s.budget.try_take(who.transport, desk) {
        return Ok(share);
    }
    let (budget, reserved) = (s.budget.total(), s.budget.reserved());
    let share = s.budget.session_share(who.transport, desk);
    warn!(
        budget,
        reserved, share, "Session refused: the budget of bytes in flight is spent (gateway_busy)"
    );
    let detail = serde_json::json!({
        "rule": "memory_budget",
        "desk_transport": desk.as_str(), "share_bytes": share,
        "reserved_bytes": reserved, "budget_bytes": budget,
    });
    audit_denied(s, who, req, who.user.as_deref(), &refusal, detail).await;
    Err(refusal)
}

/// Milliseconds, to a tenth (for the log and the audit record).
fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Phase 4's refusal when every place under `[relay.limits] max_sessions`
/// is taken (`capacity_full`), audited like `gateway_busy`: admission
/// allowed the session, so the record says why it did not start.
pub(crate) async fn audit_full(
    s: &Shared,
    who: &Who,
    req: &SessionRequest,
    user: Option<&str>,
    refusal: Refusal,
) -> Refusal {
    let detail = serde_json::json!({ "max_sessions": s.cfg.max_sessions });
    audit_denied(s, who, req, user, &refusal, detail).await;
    refusal
}

/// `session.denied` for a gateway-wide limit, with the laptop's device,
/// class, source and transport besides `detail`; bounded like the store's
/// other phases: a busy gateway's refusals do not queue behind a slow
/// database.
async fn audit_denied(
    s: &Shared,
    who: &Who,
    req: &SessionRequest,
    user: Option<&str>,
    refusal: &Refusal,
    mut detail: serde_json::Value,
) {
    if let Some(d) = detail.as_object_mut() {
        d.insert("device".into(), who.device.clone().into());
        d.insert("class".into(), who.class.to_string().into());
        d.insert("source".into(), who.source.to_string().into());
        d.insert("transport".into(), who.transport.as_str().into());
    }
    let actor = who.actor(user);
    let audit = audit_event(
        s,
        &actor,
        "session.denied",
        &req.desk,
        &refusal.code,
        detail,
    );
    let _ = tokio::time::timeout(STORE_DEADLINE, Box::pin(audit)).await;
}
