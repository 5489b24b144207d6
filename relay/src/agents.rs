//! Desk agents: registering a tunnel (one [`Tunnel`] type for QUIC and
//! TLS/TCP), its control stream, and the RDP filter's reports.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kakehashi_proto::io::{read_frame, write_message};
use kakehashi_proto::message::{AgentHello, AgentWelcome, FilterReport, Message};
use kakehashi_proto::{Frame, FrameKind, Reason, Refusal};
use kakehashi_transport::tunnel::{SessionOpener, Tunnel, TunnelError};
use kakehashi_transport::Transport;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::shared::{audit_event, refuse, AgentEntry, PeerCert, Shared};

pub(crate) fn register(
    s: &Shared,
    desk: &str,
    cert: PeerCert,
    opener: SessionOpener,
    transport: Transport,
    enforces: bool,
    control: Option<mpsc::Sender<Vec<u8>>>,
) -> (u64, CancellationToken) {
    let generation = s.generation.fetch_add(1, Ordering::Relaxed);
    let replaced = CancellationToken::new();
    let old = s.agents.lock().expect("agents lock").insert(
        desk.to_string(),
        AgentEntry {
            generation,
            cert,
            opener,
            transport,
            enforces,
            replaced: replaced.clone(),
            control,
        },
    );
    if let Some(old) = old {
        s.metrics
            .agents_online
            .with_label_values(&[old.transport.as_str()])
            .dec();
        info!(desk, old_transport = %old.transport, "Newer tunnel replaces the previous one");
        old.replaced.cancel();
    }
    info!(desk, %transport, enforces, "Agent online");
    s.metrics
        .agents_online
        .with_label_values(&[transport.as_str()])
        .inc();
    (generation, replaced)
}

pub(crate) fn unregister(s: &Shared, desk: &str, generation: u64) {
    let mut agents = s.agents.lock().expect("agents lock");
    if agents.get(desk).is_some_and(|e| e.generation == generation) {
        if let Some(e) = agents.remove(desk) {
            s.metrics
                .agents_online
                .with_label_values(&[e.transport.as_str()])
                .dec();
        }
        info!(desk, "Agent offline");
    }
}

/// An agent's QUIC connection: its first stream is the tunnel's control stream.
pub(crate) async fn handle_agent_quic(
    s: Arc<Shared>,
    conn: quinn::Connection,
    desk: String,
    cert: PeerCert,
) {
    match tokio::time::timeout(s.cfg.handshake_timeout, Tunnel::accept_quic(conn.clone())).await {
        Ok(Ok(t)) => handle_agent(s, t, desk, cert).await,
        Ok(Err(e)) => {
            warn!(desk, error = %e, "Agent opened no control stream");
            conn.close(
                quinn::VarInt::from_u32(2),
                Reason::ProtocolError.code().as_bytes(),
            );
        }
        Err(_) => {
            warn!(desk, "Agent hello timed out");
            conn.close(
                quinn::VarInt::from_u32(2),
                Reason::Timeout.code().as_bytes(),
            );
        }
    }
}

/// An agent's tunnel on either transport: its hello, then its control
/// stream until the tunnel ends. On TCP the connection may instead be a
/// data connection for one session (`DataChannelHello`).
pub(crate) async fn handle_agent(s: Arc<Shared>, mut tunnel: Tunnel, desk: String, cert: PeerCert) {
    let first =
        match tokio::time::timeout(s.cfg.handshake_timeout, read_frame(tunnel.control())).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                warn!(desk, error = %e, "Bad first frame from agent");
                return refuse_tunnel(tunnel, Reason::ProtocolError).await;
            }
            Err(_) => {
                warn!(desk, "Agent hello timed out");
                return refuse_tunnel(tunnel, Reason::Timeout).await;
            }
        };
    let transport = tunnel.transport();
    if first.kind == FrameKind::DataChannelHello && transport == Transport::Tcp {
        if let Err(mut io) = s.channels.deliver(&first, &desk, tunnel.into_control()) {
            warn!(desk, "Data connection for an unknown channel");
            refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
        }
        return;
    }
    let Ok(hello) = AgentHello::from_frame(&first) else {
        return refuse_tunnel(tunnel, Reason::ProtocolError).await;
    };
    debug!(desk, software = %hello.software, enforces = hello.enforces, members = hello.members, "Agent hello");
    let welcome = AgentWelcome {
        gateway: s.cfg.name.clone(),
        ping_interval_secs: u32::try_from(s.cfg.keepalive.as_secs()).unwrap_or(u32::MAX),
        filter_reports: true,
    };
    if write_message(tunnel.control(), &welcome).await.is_err() {
        return;
    }
    let (opener, control) = tunnel.into_gateway(s.channels.clone(), &desk);
    // An agent that takes member lists gets the current one at once (it is
    // written after the welcome, by the control loop).
    let to_agent = hello.members.then(|| control.sender());
    if let Some(tx) = &to_agent {
        let current = s.member_list.lock().expect("member list lock").clone();
        if let Some(list) = current {
            let _ = tx.try_send(list.to_vec());
        }
    }
    let (generation, replaced) =
        register(&s, &desk, cert, opener, transport, hello.enforces, to_agent);
    // The control stream carries the agent's filter reports.
    let on_frame = {
        let (s, desk) = (s.clone(), desk.clone());
        move |f: Frame| {
            let (s, desk) = (s.clone(), desk.clone());
            // Boxed: the report's audit write is a large future.
            Box::pin(async move { on_control_frame(&s, &desk, f).await })
        }
    };
    let stop = async {
        tokio::select! {
            _ = replaced.cancelled() => &b"replaced by a newer tunnel"[..],
            _ = s.shutdown.forced() => &b"gateway shutting down"[..],
        }
    };
    match control
        .run(s.cfg.keepalive, s.cfg.idle_timeout, on_frame, stop)
        .await
    {
        Ok(()) => debug!(desk, "Agent tunnel closed"),
        Err(TunnelError::Silent(_)) => {
            warn!(desk, "Agent silent past the idle timeout; dropping tunnel")
        }
        Err(e) => debug!(desk, reason = %e, "Agent tunnel closed"),
    }
    unregister(&s, &desk, generation);
}

/// Queue `frame` on the control stream of every agent that takes member
/// lists and notices. A full queue (an agent that does not read) costs the
/// frame, not the tunnel. Returns how many agents it was queued for.
pub(crate) fn tell_agents(s: &Shared, frame: &[u8]) -> usize {
    let agents = s.agents.lock().expect("agents lock");
    agents
        .values()
        .filter_map(|a| a.control.as_ref())
        .filter(|tx| tx.try_send(frame.to_vec()).is_ok())
        .count()
}

/// The gateway is stopping on purpose: tell every agent (`restarting`), so
/// it stops counting on this gateway before it drains. The notice spreads
/// the agents' return over [`return_window`].
pub(crate) fn announce_restarting(s: &Shared) {
    let agents = s.agents.lock().expect("agents lock").len();
    let within = return_window(agents, s.cfg.agent_return_rate);
    let mut notice = Refusal::new(Reason::Restarting);
    notice.return_within_ms = (within > 0).then_some(within);
    let frame = match notice.to_frame() {
        Ok(f) => f,
        Err(e) => return warn!(error = %e, "Cannot encode the restarting notice"),
    };
    let told = tell_agents(s, &frame);
    info!(
        agents = told,
        return_within_ms = within,
        "Told the agents this gateway is restarting"
    );
}

/// Milliseconds over which `agents` come back at `rate` a second (`[relay.limits]
/// agent_return_rate`; 0: no spreading), at most the most an agent honours.
fn return_window(agents: usize, rate: u32) -> u32 {
    if rate == 0 {
        return 0;
    }
    let ms = agents.saturating_mul(1000) / rate as usize;
    u32::try_from(ms)
        .unwrap_or(u32::MAX)
        .min(kakehashi_proto::reason::MAX_RETURN_WITHIN_MS)
}

/// Waits, at most `within`, until every agent's control queue is empty:
/// each tunnel has taken the notice to write it (a flushed write of one
/// small frame follows at once). Without this wait, a gateway with nothing
/// to drain exits before its tunnels write the `restarting` notice.
pub(crate) async fn wait_told(s: &Shared, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let pending = s
            .agents
            .lock()
            .expect("agents lock")
            .values()
            .filter_map(|a| a.control.as_ref())
            .any(|tx| tx.capacity() < tx.max_capacity());
        if !pending || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Refuse a tunnel before it is registered: the reason on the control
/// stream, then close.
async fn refuse_tunnel(mut tunnel: Tunnel, reason: Reason) {
    refuse(tunnel.control(), Refusal::new(reason)).await;
    tunnel.close(reason.code().as_bytes()).await;
}

/// One frame from an agent's control stream: a filter report is recorded;
/// anything else ends the tunnel.
async fn on_control_frame(s: &Shared, desk: &str, f: Frame) -> bool {
    if f.kind != FrameKind::FilterReport {
        warn!(kind = ?f.kind, "Unexpected frame on agent control connection");
        return false;
    }
    match FilterReport::from_frame(&f) {
        Ok(r) => {
            record_filter_report(s, desk, r).await;
            true
        }
        Err(e) => {
            warn!(desk, error = %e, "Bad filter report from agent");
            false
        }
    }
}

/// A blocked RDP attempt (or a session the filter refused) reported by a desk's
/// agent: counted, logged with the session id, and audited when there is a store.
pub(crate) async fn record_filter_report(s: &Shared, desk: &str, r: FilterReport) {
    // An agent speaks only for its own desk's sessions.
    let live_desk = s
        .live
        .lock()
        .expect("live lock")
        .get(&r.session_id)
        .map(|l| l.desk.clone());
    if live_desk.is_some_and(|d| d != desk) {
        warn!(desk, session = %r.session_id, "Filter report for another desk's session; ignored");
        return;
    }
    let kind = match r.kind.as_str() {
        "static_channel" => "static_channel",
        "dynamic_channel" => "dynamic_channel",
        "device" => "device",
        "clipboard_data" => "clipboard_data",
        "file_contents" => "file_contents",
        "session_refused" => "session_refused",
        _ => "other",
    };
    s.metrics
        .rdp_blocked
        .with_label_values(&[kind])
        .inc_by(u64::from(r.count));
    info!(
        desk,
        session = %r.session_id,
        kind,
        what = %r.what,
        direction = r.direction.as_deref().unwrap_or("-"),
        count = r.count,
        "RDP blocked"
    );
    let reason = if kind == "session_refused" {
        r.what.as_str()
    } else {
        kind
    };
    audit_event(
        s,
        &format!("agent:{desk}"),
        "rdp.blocked",
        &r.session_id,
        reason,
        serde_json::json!({
            "desk": desk,
            "kind": r.kind,
            "what": r.what,
            "direction": r.direction,
            "count": r.count,
        }),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_return_is_spread_by_the_fleet_size_within_a_minute() {
        assert_eq!(return_window(20_000, 2000), 10_000);
        assert_eq!(return_window(1, 2000), 0);
        assert_eq!(return_window(500, 1000), 500);
        // A huge fleet or a tiny rate: a minute at most.
        assert_eq!(return_window(1_000_000, 10), 60_000);
        // Rate 0: no spreading.
        assert_eq!(return_window(20_000, 0), 0);
    }
}
