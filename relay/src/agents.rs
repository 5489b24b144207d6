//! Desk agents: registering a tunnel (QUIC or TLS/TCP), its control
//! stream, and the RDP filter's reports.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kakehashi_proto::io::{read_frame, write_message, write_raw};
use kakehashi_proto::message::{AgentHello, AgentWelcome, DataChannelHello, FilterReport, Message};
use kakehashi_proto::{frame, FrameKind, Reason, Refusal};
use kakehashi_transport::stream::QuicStream;
use kakehashi_transport::{BoxIo, Transport};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::shared::{audit_event, refuse, AgentEntry, AgentLink, PeerCert, Shared};

pub(crate) fn register(
    s: &Shared,
    desk: &str,
    cert: PeerCert,
    link: AgentLink,
    transport: Transport,
    enforces: bool,
) -> (u64, CancellationToken) {
    let generation = s.generation.fetch_add(1, Ordering::Relaxed);
    let replaced = CancellationToken::new();
    let old = s.agents.lock().expect("agents lock").insert(
        desk.to_string(),
        AgentEntry {
            generation,
            cert,
            link,
            transport,
            enforces,
            replaced: replaced.clone(),
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

pub(crate) async fn handle_agent_quic(
    s: Arc<Shared>,
    conn: quinn::Connection,
    desk: String,
    cert: PeerCert,
) {
    // The first stream the agent opens is its control stream.
    let hello = async {
        let bi = conn.accept_bi().await?;
        let mut ctl = QuicStream::new(bi);
        let f = read_frame(&mut ctl).await?;
        let h = AgentHello::from_frame(&f)?;
        let welcome = AgentWelcome {
            gateway: s.cfg.name.clone(),
            ping_interval_secs: u32::try_from(s.cfg.keepalive.as_secs()).unwrap_or(u32::MAX),
            filter_reports: true,
        };
        write_message(&mut ctl, &welcome).await?;
        anyhow::Ok((ctl, h))
    };
    // Boxed, so the tunnel's task does not keep room for the handshake.
    let (ctl, hello) = match tokio::time::timeout(s.cfg.handshake_timeout, Box::pin(hello)).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            warn!(desk, error = %format!("{e:#}"), "Agent hello failed");
            conn.close(
                quinn::VarInt::from_u32(2),
                Reason::ProtocolError.code().as_bytes(),
            );
            return;
        }
        Err(_) => {
            warn!(desk, "Agent hello timed out");
            conn.close(
                quinn::VarInt::from_u32(2),
                Reason::Timeout.code().as_bytes(),
            );
            return;
        }
    };
    debug!(desk, software = %hello.software, enforces = hello.enforces, "Agent hello");
    let (generation, replaced) = register(
        &s,
        &desk,
        cert,
        AgentLink::Quic(conn.clone()),
        Transport::Quic,
        hello.enforces,
    );
    // The control stream carries the agent's filter reports.
    let reader = tokio::spawn(read_agent_control(
        s.clone(),
        desk.clone(),
        ctl,
        Arc::new(Mutex::new(Instant::now())),
    ));
    tokio::select! {
        e = conn.closed() => debug!(desk, reason = %e, "Agent tunnel closed"),
        _ = replaced.cancelled() => conn.close(quinn::VarInt::from_u32(3), b"replaced by a newer tunnel"),
        _ = s.shutdown.forced() => conn.close(quinn::VarInt::from_u32(0), b"gateway shutting down"),
    }
    reader.abort();
    unregister(&s, &desk, generation);
}

/// An agent's TCP connection: a control tunnel (AgentHello) or a data
/// connection for one session (DataChannelHello).
pub(crate) async fn handle_agent_tcp(s: Arc<Shared>, mut io: BoxIo, desk: String, cert: PeerCert) {
    let first = match tokio::time::timeout(s.cfg.handshake_timeout, read_frame(&mut io)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            warn!(desk, error = %e, "Bad first frame from agent");
            return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
        }
        Err(_) => return refuse(&mut io, Refusal::new(Reason::Timeout)).await,
    };
    match first.kind {
        FrameKind::DataChannelHello => {
            let Ok(h) = DataChannelHello::from_frame(&first) else {
                return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
            };
            let pending = {
                let mut p = s.pending.lock().expect("pending lock");
                // Only the desk the channel was opened for may claim it.
                match p.get(&h.channel) {
                    Some(e) if e.desk == desk => p.remove(&h.channel),
                    _ => None,
                }
            };
            match pending {
                Some(p) => {
                    let _ = p.deliver.send(io);
                }
                None => {
                    warn!(desk, "Data connection for an unknown channel");
                    refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
                }
            }
        }
        FrameKind::AgentHello => {
            let Ok(hello) = AgentHello::from_frame(&first) else {
                return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
            };
            debug!(desk, software = %hello.software, enforces = hello.enforces, "Agent hello");
            let welcome = AgentWelcome {
                gateway: s.cfg.name.clone(),
                ping_interval_secs: u32::try_from(s.cfg.keepalive.as_secs()).unwrap_or(u32::MAX),
                filter_reports: true,
            };
            if write_message(&mut io, &welcome).await.is_err() {
                return;
            }
            serve_agent_control(s, io, desk, cert, hello.enforces).await;
        }
        _ => refuse(&mut io, Refusal::new(Reason::ProtocolError)).await,
    }
}

pub(crate) async fn serve_agent_control(
    s: Arc<Shared>,
    io: BoxIo,
    desk: String,
    cert: PeerCert,
    enforces: bool,
) {
    let (rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let (generation, replaced) = register(
        &s,
        &desk,
        cert,
        AgentLink::Tcp { control: tx },
        Transport::Tcp,
        enforces,
    );
    let last_seen = Arc::new(Mutex::new(Instant::now()));
    let mut reader = tokio::spawn(read_agent_control(
        s.clone(),
        desk.clone(),
        rd,
        last_seen.clone(),
    ));
    let mut ping = tokio::time::interval(s.cfg.keepalive);
    let ping_frame = frame::encode(FrameKind::Ping, &[]).expect("empty frame");
    loop {
        tokio::select! {
            _ = s.shutdown.forced() => break,
            _ = replaced.cancelled() => break,
            _ = &mut reader => { debug!(desk, "Agent control connection closed"); break }
            Some(f) = rx.recv() => if write_raw(&mut wr, &f).await.is_err() { break },
            _ = ping.tick() => {
                if last_seen.lock().expect("last_seen lock").elapsed() > s.cfg.idle_timeout {
                    warn!(desk, "Agent silent past the idle timeout; dropping tunnel");
                    break;
                }
                if write_raw(&mut wr, &ping_frame).await.is_err() { break }
            }
        }
    }
    reader.abort();
    unregister(&s, &desk, generation);
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

pub(crate) async fn read_agent_control<R: tokio::io::AsyncRead + Unpin>(
    s: Arc<Shared>,
    desk: String,
    mut rd: R,
    last_seen: Arc<Mutex<Instant>>,
) {
    loop {
        match read_frame(&mut rd).await {
            Ok(f) if f.kind == FrameKind::Pong || f.kind == FrameKind::Ping => {
                *last_seen.lock().expect("last_seen lock") = Instant::now();
            }
            Ok(f) if f.kind == FrameKind::FilterReport => {
                *last_seen.lock().expect("last_seen lock") = Instant::now();
                match FilterReport::from_frame(&f) {
                    // Boxed: the report's audit write is a large future, and
                    // this task lives as long as the agent's tunnel.
                    Ok(r) => Box::pin(record_filter_report(&s, &desk, r)).await,
                    Err(e) => {
                        warn!(desk, error = %e, "Bad filter report from agent");
                        return;
                    }
                }
            }
            Ok(f) => {
                warn!(kind = ?f.kind, "Unexpected frame on agent control connection");
                return;
            }
            Err(_) => return,
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
