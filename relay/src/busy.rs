//! Phase 1½ of a session's set-up: its share of the gateway-wide budget of
//! bytes in flight ([`crate::budget`]), taken before the store or the desk
//! is asked anything, or `gateway_busy`.

use kakehashi_proto::message::SessionRequest;
use kakehashi_proto::{Reason, Refusal};
use tracing::warn;

use crate::budget::Share;
use crate::shared::{audit_event, Shared, Who, STORE_DEADLINE};

/// Phase 1½, the budget: the session's share of the budget of bytes in
/// flight (see [`crate::budget`]), taken before the store or the desk is
/// asked anything; no room: `gateway_busy`, audited. Live sessions are
/// never cut by it.
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
    if let Some(share) = s.budget.try_take(who.transport, desk) {
        return Ok(share);
    }
    let refusal = Refusal::new(Reason::GatewayBusy);
    let (budget, reserved) = (s.budget.total(), s.budget.reserved());
    let share = s.budget.session_share(who.transport, desk);
    warn!(
        budget,
        reserved, share, "Session refused: the budget of bytes in flight is spent (gateway_busy)"
    );
    // Bounded like the store's other phases: a busy gateway's refusals do
    // not queue behind a slow database.
    let actor = who.actor(who.user.as_deref());
    let audit = audit_event(
        s,
        &actor,
        "session.denied",
        &req.desk,
        &refusal.code,
        serde_json::json!({
            "device": who.device, "class": who.class.to_string(),
            "source": who.source.to_string(), "transport": who.transport.as_str(),
            "desk_transport": desk.as_str(), "share_bytes": share,
            "reserved_bytes": reserved, "budget_bytes": budget,
        }),
    );
    let _ = tokio::time::timeout(STORE_DEADLINE, Box::pin(audit)).await;
    Err(refusal)
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
    let actor = who.actor(user);
    let audit = audit_event(
        s,
        &actor,
        "session.denied",
        &req.desk,
        &refusal.code,
        serde_json::json!({
            "device": who.device, "class": who.class.to_string(),
            "source": who.source.to_string(), "transport": who.transport.as_str(),
            "max_sessions": s.cfg.max_sessions,
        }),
    );
    let _ = tokio::time::timeout(STORE_DEADLINE, Box::pin(audit)).await;
    refusal
}
