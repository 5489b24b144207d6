//! The session lifecycle of a laptop's request: the login token, admission
//! by the policy, opening the desk's stream with a signed ticket, recording
//! the start, the splice with its idle watch, and recording the end.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kakehashi_pki::Identity;
use kakehashi_proto::io::{read_frame, write_message, write_raw, FrameIoError};
use kakehashi_proto::message::{Message, SessionAccepted, SessionRequest};
use kakehashi_proto::ticket::{TicketClaims, TICKET_LIFETIME_SECS, TICKET_VERSION};
use kakehashi_proto::{frame, FrameKind, Reason, Refusal};
use kakehashi_store::TransientKind;
use kakehashi_transport::splice::{splice_counted, Counters};
use kakehashi_transport::stream::QuicStream;
use kakehashi_transport::{random_hex, unix_now, BoxIo, Transport};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::crl::check_cert;
use crate::shared::{
    audit_event, desk_labels, reason_label, refuse, update_capacity, LiveSession, PeerCert,
    SessionLabels, Shared, Who, STORE_DEADLINE,
};

pub(crate) async fn serve_terminal_quic(
    s: Arc<Shared>,
    conn: quinn::Connection,
    id: Identity,
    cert: PeerCert,
) {
    debug!(device = id.id(), "Terminal connected");
    // Where the connection came from (a QUIC peer may move later; the
    // audit log keeps where it started).
    let source = conn.remote_address();
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = s.shutdown.forced() => break,
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            st = conn.accept_bi() => match st {
                Ok(bi) => {
                    streams.spawn(handle_terminal_stream(s.clone(), Box::new(QuicStream::new(bi)), id.clone(), cert.clone(), Transport::Quic, source).in_current_span());
                }
                Err(e) => {
                    debug!(reason = %e, "Terminal connection closed");
                    break;
                }
            },
        }
    }
    // Let open sessions finish on their own until the force token.
    tokio::select! {
        _ = async { while streams.join_next().await.is_some() {} } => {}
        _ = s.shutdown.forced() => streams.abort_all(),
    }
    conn.close(quinn::VarInt::from_u32(0), b"");
}

/// One terminal stream: ping probes, a login frame or an end query
/// (answered here), or a session request and then the session. `source`:
/// the laptop's address, as the audit log records it (a load balancer's
/// PROXY header's, on TCP behind one).
pub(crate) async fn handle_terminal_stream(
    s: Arc<Shared>,
    mut io: BoxIo,
    id: Identity,
    cert: PeerCert,
    transport: Transport,
    source: std::net::SocketAddr,
) {
    let Identity::Device {
        id: device,
        class,
        user,
    } = id
    else {
        return;
    };
    let req = match Box::pin(request(&s, &mut io, &device, &cert)).await {
        Next::Session(req) => req,
        Next::Login(f) => {
            let laptop = laptop(&device, class, user.as_deref(), &cert, source);
            return Box::pin(login_frame(&s, io, &f, &laptop)).await;
        }
        Next::EndQuery(f) => return Box::pin(answer_end_query(&s, io, &f, &device)).await,
        Next::Done => return,
    };
    let who = Who {
        device,
        class,
        user,
        cert,
        transport,
        source,
    };
    let session_id = format!("s-{}", random_hex(12));
    let span = info_span!("session", session = %session_id, desk = %req.desk, device = %who.device, class = %class, %transport, user = ?who.user, %source);
    Box::pin(session(&s, io, &who, req, session_id))
        .instrument(span)
        .await
}

/// What a terminal stream asks for.
enum Next {
    /// A session.
    Session(SessionRequest),
    /// A login frame (`RedeemLogin`, `Logout`), its laptop's certificate still good.
    Login(kakehashi_proto::Frame),
    /// Why one of its sessions ended.
    EndQuery(kakehashi_proto::Frame),
    /// Nothing more: closed, or refused here.
    Done,
}

/// Phase 1, the request: answer pings until the laptop asks for something.
async fn request(s: &Shared, io: &mut BoxIo, device: &str, cert: &PeerCert) -> Next {
    loop {
        let f = match tokio::time::timeout(s.cfg.handshake_timeout, read_frame(io)).await {
            Err(_) => {
                refuse(io, Refusal::new(Reason::Timeout)).await;
                return Next::Done;
            }
            Ok(Err(FrameIoError::Closed)) => return Next::Done,
            Ok(Err(e)) => {
                warn!(%device, error = %e, "Bad frame from terminal");
                let r = Refusal::new(Reason::ProtocolError).with_detail(e.to_string());
                refuse(io, r).await;
                return Next::Done;
            }
            Ok(Ok(f)) => f,
        };
        match f.kind {
            FrameKind::Ping => {
                let pong = frame::encode(FrameKind::Pong, &[]).expect("empty frame");
                if write_raw(io, &pong).await.is_err() {
                    return Next::Done;
                }
            }
            FrameKind::RedeemLogin | FrameKind::Logout => {
                // As for sessions: the CRL may have changed since this
                // connection's handshake (a long-lived QUIC connection, a
                // resumed TLS session); a revoked laptop gets no token.
                if let Err(reason) = check_cert(s, cert) {
                    warn!(%device, reason = reason.code(), "Login refused: certificate no longer valid");
                    s.auth_failure(reason.code());
                    refuse(io, Refusal::new(reason)).await;
                    return Next::Done;
                }
                return Next::Login(f);
            }
            FrameKind::SessionEndQuery => {
                return Next::EndQuery(f);
            }
            _ => match SessionRequest::from_frame(&f) {
                Ok(r) => return Next::Session(r),
                Err(e) => {
                    warn!(%device, error = %e, "Bad session request");
                    let r = Refusal::new(Reason::ProtocolError).with_detail(e.to_string());
                    refuse(io, r).await;
                    return Next::Done;
                }
            },
        }
    }
}

/// Phases 2 to 7 of one session: each returns `Result<_, Refusal>`, and a
/// refusal at any of them is counted, logged and sent the same way.
async fn session(s: &Arc<Shared>, mut io: BoxIo, who: &Who, req: SessionRequest, id: String) {
    let started = Instant::now();
    let setup = async {
        let share = Box::pin(crate::busy::take_share(s, who, &req)).await?;
        let login = store_bound(Box::pin(login(s, who, &req))).await?;
        let user = login.as_ref().map(|l| l.user.clone()).or(who.user.clone());
        let admitted = store_bound(Box::pin(admission(
            s,
            who,
            &req,
            login.as_ref(),
            user.as_deref(),
        )))
        .await?;
        let mut guard = match SessionGuard::acquire(s) {
            Ok(g) => g,
            Err(r) => return Err(crate::busy::audit_full(s, who, &req, user.as_deref(), r).await),
        };
        let (agent, enforces) =
            Box::pin(open_desk(s, who, &req, &id, user.as_deref(), &admitted)).await?;
        store_bound(Box::pin(record_start(
            s, who, &req, &id, &admitted, enforces,
        )))
        .await?;
        let live = guard.go_live(&id, who, &req, user, &admitted, enforces);
        Ok::<_, Refusal>((admitted, guard, live, agent, share))
    };
    let (admitted, guard, live, mut agent, share) = match setup.await {
        Ok(x) => x,
        Err(r) => {
            info!(reason = %r.code, "Session refused");
            s.metrics
                .denials
                .with_label_values(&[reason_label(&r.code)])
                .inc();
            return refuse(&mut io, r).await;
        }
    };
    let counters = &live.counters;
    // Phase 6, the splice, until a peer closes or the gateway ends it.
    let result = match tell_laptop(s, &mut io, &live, &admitted, who, started).await {
        Ok(true) => splice_phase(s, &mut io, &mut agent, counters, &live, &admitted).await,
        Ok(false) => None,
        Err(e) => Some(Err(e)),
    };
    // Phase 7, the end: why, then the record.
    let (up, down) = counters.get();
    let secs = started.elapsed().as_secs();
    let by_gateway = live.reason.lock().expect("reason lock").clone();
    let end_reason: String = match (result, by_gateway) {
        (Some(Ok(_)), _) => {
            info!(bytes_up = up, bytes_down = down, secs, "Session ended");
            "closed".into()
        }
        (Some(Err(e)), _) => {
            info!(error = %e, bytes_up = up, bytes_down = down, secs, "Session ended by a peer");
            "peer_error".into()
        }
        (None, r) => {
            // No reason: the shutdown's force step.
            let r = r.unwrap_or_else(|| Refusal::new(Reason::ShuttingDown));
            info!(reason = %r.code, bytes_up = up, bytes_down = down, secs, "Session ended by the gateway");
            // Remember why first, then close the stream: the laptop asks why.
            s.ended
                .lock()
                .expect("ended lock")
                .insert(id.clone(), who.device.clone(), r.clone());
            let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
            r.code
        }
    };
    let end = kakehashi_store::SessionEnd {
        reason: end_reason.clone(),
        bytes_up: up,
        bytes_down: down,
    };
    Box::pin(record_end(s, who, &req, &id, &admitted, &end, secs)).await;
    s.metrics.bytes.with_label_values(&["up"]).inc_by(up);
    s.metrics.bytes.with_label_values(&["down"]).inc_by(down);
    s.metrics
        .sessions_ended
        .with_label_values(&[reason_label(&end_reason)])
        .inc();
    drop(guard);
    drop(share);
}

/// A phase that reads or writes the store, bounded by [`STORE_DEADLINE`].
async fn store_bound<T>(
    phase: impl std::future::Future<Output = Result<T, Refusal>>,
) -> Result<T, Refusal> {
    match tokio::time::timeout(STORE_DEADLINE, phase).await {
        Ok(r) => r,
        Err(_) => {
            warn!(
                secs = STORE_DEADLINE.as_secs(),
                "The store did not answer in time; refusing (store_unavailable)"
            );
            Err(Refusal::new(Reason::StoreUnavailable))
        }
    }
}

/// Phase 2, the person: the gateway is not stopping, the laptop's
/// certificate is still good (the CRL may have changed since the
/// handshake), and a valid login token bound to this laptop when logins are
/// required.
async fn login(
    s: &Shared,
    who: &Who,
    req: &SessionRequest,
) -> Result<Option<crate::login::LoggedIn>, Refusal> {
    if s.shutdown.is_draining() {
        // Stopping on purpose: the laptop moves to another gateway.
        return Err(Refusal::new(Reason::Restarting));
    }
    if let Err(reason) = check_cert(s, &who.cert) {
        warn!(
            reason = reason.code(),
            "Session refused: certificate no longer valid"
        );
        return Err(Refusal::new(reason));
    }
    match (&s.store, s.cfg.identity.require_login) {
        (Some(store), true) => {
            let laptop = laptop(
                &who.device,
                who.class,
                who.user.as_deref(),
                &who.cert,
                who.source,
            );
            match Box::pin(crate::login::check(store, &laptop, req.token.as_ref())).await {
                Ok(who) => Ok(Some(who)),
                Err(reason) => {
                    Box::pin(audit_event(
                        s,
                        &who.actor(None),
                        "session.denied",
                        &req.desk,
                        reason.code(),
                        serde_json::json!({ "device": who.device, "source": who.source.to_string() }),
                    ))
                    .await;
                    Err(Refusal::new(reason))
                }
            }
        }
        (None, true) => {
            warn!("require_login without a store; refusing");
            Err(Refusal::new(Reason::Internal))
        }
        (_, false) => Ok(None),
    }
}

/// Phase 3, admission: the policy decides on the store's current facts;
/// a denial is audited with the deciding rule.
async fn admission(
    s: &Shared,
    who: &Who,
    req: &SessionRequest,
    login: Option<&crate::login::LoggedIn>,
    user: Option<&str>,
) -> Result<Admitted, Refusal> {
    match Box::pin(admit(s, req, &who.device, who.class, login)).await {
        Ok(mut a) => {
            if let Some(minute) = s.cfg.testing_minute_secs {
                a.limits = shorter_minutes(a.limits, minute, unix_now());
            }
            Ok(a)
        }
        Err((refusal, rule)) => {
            info!(reason = %refusal.code, rule = ?rule, "Session refused by the policy");
            Box::pin(audit_event(
                s,
                &who.actor(user),
                "session.denied",
                &req.desk,
                &refusal.code,
                serde_json::json!({ "device": who.device, "class": who.class.to_string(), "rule": rule, "policy_version": s.policy_version(), "source": who.source.to_string() }),
            ))
            .await;
            Err(refusal)
        }
    }
}

/// Phase 4, the desk: a signed ticket to the desk's agent, which must
/// enforce the controls when they restrict anything (except on a desk an
/// officer registered as a non-RDP service). The stream, ready to splice,
/// and whether the agent enforces.
async fn open_desk(
    s: &Arc<Shared>,
    who: &Who,
    req: &SessionRequest,
    id: &str,
    user: Option<&str>,
    admitted: &Admitted,
) -> Result<(BoxIo, bool), Refusal> {
    let claims = TicketClaims {
        v: TICKET_VERSION,
        session_id: id.to_string(),
        desk: req.desk.clone(),
        device: who.device.clone(),
        class: who.class.to_string(),
        user: user.map(str::to_string),
        gateway: s.cfg.name.clone(),
        controls: admitted.controls,
        limits: admitted.limits.to_ticket(),
        issued_at: unix_now(),
        expires_at: unix_now() + TICKET_LIFETIME_SECS,
    };
    let must_enforce = admitted.controls.is_restrictive() && !admitted.non_rdp(s);
    match Box::pin(open_to_agent(s, claims, must_enforce)).await {
        Ok(x) => Ok(x),
        Err(r) => {
            if r.is(Reason::DeskNotEnforcing) {
                Box::pin(audit_event(
                    s,
                    &who.actor(user),
                    "session.denied",
                    &req.desk,
                    &r.code,
                    serde_json::json!({
                        "device": who.device, "class": who.class.to_string(), "rule": admitted.rule,
                        "policy_version": s.policy_version(), "controls": admitted.controls,
                        "desk_service": "rdp", "agent_enforces": false,
                        "source": who.source.to_string(),
                    }),
                ))
                .await;
            }
            Err(r)
        }
    }
}

/// Phase 5, the record: the start is in the store before the laptop hears
/// of it; a session the store cannot record does not happen.
async fn record_start(
    s: &Shared,
    who: &Who,
    req: &SessionRequest,
    id: &str,
    admitted: &Admitted,
    agent_enforces: bool,
) -> Result<(), Refusal> {
    let (Some(store), Some(asker)) = (&s.store, &admitted.asker) else {
        return Ok(());
    };
    // What is actually enforced, for the audit record.
    let (enforced, enforcement) = if admitted.non_rdp(s) {
        (false, NOT_ENFORCED_NON_RDP)
    } else if agent_enforces {
        (true, "enforced by the desk agent's RDP filter")
    } else {
        (false, "nothing to enforce: the controls allow everything")
    };
    let rec = kakehashi_store::SessionStart {
        id: id.to_string(),
        user_id: asker.user.clone(),
        device_id: who.device.clone(),
        desk_id: req.desk.clone(),
        class: who
            .class
            .as_str()
            .parse()
            .map_err(|_| Refusal::new(Reason::Internal))?,
        level: admitted.desk.as_ref().map_or(1, |d| d.level),
        transport: who.transport.as_str().to_string(),
        gateway: s.cfg.name.clone(),
    };
    let a = kakehashi_store::Audit::new(
        kakehashi_store::unix_now(),
        format!("user:{}", asker.user),
        "session.start",
    )
    .subject(id)
    .reason("allowed")
    .detail(serde_json::json!({
        "desk": req.desk, "device": who.device, "class": who.class.to_string(),
        "rule": admitted.rule, "policy_version": s.policy_version(),
        "controls": admitted.controls, "end_at": admitted.limits.end_at,
        "step_up": asker.step_up,
        "enforced": enforced, "enforcement": enforcement,
        "source": who.source.to_string(),
    }));
    match Box::pin(store.start_session(&rec, a)).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_unavailable() => {
            warn!(error = %e, "Store unreachable: cannot record the session start; refusing");
            Err(Refusal::new(Reason::StoreUnavailable))
        }
        Err(e) => {
            warn!(error = %e, "Cannot record the session start; refusing");
            Err(Refusal::new(Reason::Internal))
        }
    }
}

/// Phase 6 begins: tell the laptop its session is open. `Ok(false)`: the
/// session was ended before it opened (a revocation or a policy change
/// between the checks above and the insert into the live table).
async fn tell_laptop(
    s: &Shared,
    io: &mut BoxIo,
    live: &LiveSession,
    admitted: &Admitted,
    who: &Who,
    started: Instant,
) -> std::io::Result<bool> {
    if let Err(reason) = check_cert(s, &who.cert) {
        live.end(reason);
    }
    if live.end.is_cancelled() {
        return Ok(false);
    }
    let accepted = SessionAccepted {
        session_id: live.id.clone(),
        controls: admitted.controls,
    };
    if write_message(io, &accepted).await.is_err() {
        return Err(std::io::Error::other(
            "the laptop left before the session opened",
        ));
    }
    info!(setup_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), rule = ?admitted.rule, end_at = ?admitted.limits.end_at, "Session started");
    let m = &s.metrics;
    m.session_setup.observe(started.elapsed().as_secs_f64());
    m.sessions_started
        .with_label_values(&[who.class.as_str(), who.transport.as_str()])
        .inc();
    Ok(true)
}

/// Phase 6, the splice, until a peer closes (`Some`) or the gateway ends
/// the session (`None`: an end reason, the idle watch, the shutdown).
async fn splice_phase(
    s: &Shared,
    io: &mut BoxIo,
    agent: &mut BoxIo,
    counters: &Counters,
    live: &LiveSession,
    admitted: &Admitted,
) -> Option<std::io::Result<(u64, u64)>> {
    let idle = admitted
        .limits
        .idle_timeout_secs
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(u64::from(s)));
    tokio::select! {
        r = splice_counted(io, agent, counters) => Some(r),
        _ = live.end.cancelled() => None,
        _ = s.shutdown.forced() => None,
        _ = idle_watch(counters, idle, live) => None,
    }
}

/// Phase 7's record: the end, with its reason and byte counts.
async fn record_end(
    s: &Shared,
    who: &Who,
    req: &SessionRequest,
    id: &str,
    admitted: &Admitted,
    end: &kakehashi_store::SessionEnd,
    secs: u64,
) {
    let (Some(store), Some(asker)) = (&s.store, &admitted.asker) else {
        return;
    };
    let (up, down) = (end.bytes_up, end.bytes_down);
    let a = kakehashi_store::Audit::new(kakehashi_store::unix_now(), format!("user:{}", asker.user), "session.end")
        .subject(id)
        .reason(&end.reason)
        .detail(serde_json::json!({ "desk": req.desk, "device": who.device, "bytes_up": up, "bytes_down": down, "secs": secs }));
    if let Err(e) = Box::pin(store.end_carried_session(id, &s.cfg.name, end, a.clone())).await {
        if crate::ends::retryable(&e) {
            // The database is away: the heartbeat records it once it answers.
            warn!(error = %e, "Cannot record the session end yet; holding it until the database answers");
            s.unrecorded_ends.hold(id, end, a);
        } else {
            warn!(error = %e, "Cannot record the session end");
        }
    }
}

/// One session's hold on the relay: its place under the session cap and in
/// the shutdown's work, then (once live) its entry in the live table and the
/// active-sessions gauge. Dropping it, however the session ends, gives all
/// of it back and updates the capacity gauge.
pub(crate) struct SessionGuard<'a> {
    s: &'a Shared,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    _work: tokio_util::task::task_tracker::TaskTrackerToken,
    live: Option<(String, prometheus::IntGauge)>,
}

impl<'a> SessionGuard<'a> {
    /// A place for one more session, or `capacity_full`.
    pub(crate) fn acquire(s: &'a Shared) -> Result<Self, Refusal> {
        let Ok(permit) = s.sessions.clone().try_acquire_owned() else {
            warn!("Session refused: capacity full");
            return Err(Refusal::new(Reason::CapacityFull));
        };
        Ok(Self {
            s,
            permit: Some(permit),
            // The shutdown's drain waits for the session (up to the grace period).
            _work: s.shutdown.work(),
            live: None,
        })
    }

    /// The session is live: in the live table (so an officer, a revocation
    /// or a policy change can end it) and counted as active.
    fn go_live(
        &mut self,
        id: &str,
        who: &Who,
        req: &SessionRequest,
        user: Option<String>,
        admitted: &Admitted,
        agent_enforces: bool,
    ) -> Arc<LiveSession> {
        let (level, dept) = desk_labels(admitted.desk.as_ref());
        let gauge = self.s.metrics.sessions_active.with_label_values(&[
            level.as_str(),
            who.class.as_str(),
            dept.as_str(),
            who.transport.as_str(),
        ]);
        let live = Arc::new(LiveSession {
            id: id.to_string(),
            desk: req.desk.clone(),
            device: who.device.clone(),
            cert: who.cert.clone(),
            asker: admitted.asker.clone(),
            started: kakehashi_store::unix_now(),
            max_duration: admitted.limits.max_duration_secs,
            end_at: std::sync::atomic::AtomicI64::new(
                admitted
                    .limits
                    .end_at
                    .map_or(0, |e| i64::try_from(e).unwrap_or(i64::MAX)),
            ),
            end: CancellationToken::new(),
            reason: Mutex::new(None),
            labels: SessionLabels {
                user,
                class: who.class.to_string(),
                level,
                dept,
                transport: who.transport,
            },
            agent_enforces,
            counters: Counters::default(),
        });
        self.s
            .live
            .lock()
            .expect("live lock")
            .insert(id.to_string(), live.clone());
        gauge.inc();
        self.live = Some((id.to_string(), gauge));
        update_capacity(self.s);
        live
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if let Some((id, gauge)) = self.live.take() {
            self.s.live.lock().expect("live lock").remove(&id);
            gauge.dec();
        }
        drop(self.permit.take());
        update_capacity(self.s);
    }
}

/// The audit log's words for a session to a desk registered as non-RDP.
pub(crate) const NOT_ENFORCED_NON_RDP: &str = "controls not enforced: non-RDP desk";

/// Open a stream to the desk's agent, hand it the signed ticket and wait for
/// its answer. On success the stream is ready to splice, with whether the
/// agent enforces controls. With `must_enforce`, an agent that does not is
/// refused (`desk_not_enforcing`) before it is sent anything.
pub(crate) async fn open_to_agent(
    s: &Arc<Shared>,
    claims: TicketClaims,
    must_enforce: bool,
) -> Result<(BoxIo, bool), Refusal> {
    let link = {
        let agents = s.agents.lock().expect("agents lock");
        agents
            .get(&claims.desk)
            .map(|e| (e.opener.clone(), e.enforces))
    };
    let Some((opener, enforces)) = link else {
        return Err(Refusal::new(Reason::DeskOffline));
    };
    if must_enforce && !enforces {
        warn!(
            desk = %claims.desk,
            controls = ?claims.controls,
            "Session refused: the controls restrict something, the desk's agent does not enforce them ([rdp] enforce = false, or an older agent) and the desk is not registered as non-RDP"
        );
        return Err(Refusal::new(Reason::DeskNotEnforcing));
    }
    let timeout = s.cfg.session_setup_timeout;
    let setup = async {
        let mut io = opener.open().await.map_err(|e| {
            debug!(error = %e, "Agent tunnel lost");
            Refusal::new(Reason::DeskOffline)
        })?;
        let ticket = s.signer.sign(&claims).map_err(|e| {
            warn!(error = %e, "Cannot sign the ticket");
            Refusal::new(Reason::Internal)
        })?;
        let f = frame::encode(FrameKind::Ticket, &ticket)
            .map_err(|_| Refusal::new(Reason::Internal))?;
        write_raw(&mut io, &f)
            .await
            .map_err(|_| Refusal::new(Reason::DeskOffline))?;
        let reply = read_frame(&mut io).await.map_err(|e| {
            warn!(error = %e, "Agent did not answer the ticket");
            Refusal::new(Reason::DeskOffline)
        })?;
        match reply.kind {
            FrameKind::TicketAccepted => Ok((io, enforces)),
            FrameKind::Refused => {
                let r = Refusal::from_frame(&reply)
                    .unwrap_or_else(|_| Refusal::new(Reason::ProtocolError));
                warn!(reason = %r.code, "Agent refused the session");
                Err(r)
            }
            other => {
                warn!(kind = ?other, "Unexpected frame from agent");
                Err(Refusal::new(Reason::ProtocolError))
            }
        }
    };
    match tokio::time::timeout(timeout, setup).await {
        Ok(r) => r,
        Err(_) => {
            warn!("Agent did not set the session up in time");
            Err(Refusal::new(Reason::Timeout))
        }
    }
}

/// Identity of the laptop at the other end, for logins and the audit log.
pub(crate) fn laptop(
    device: &str,
    class: kakehashi_pki::TerminalClass,
    cert_user: Option<&str>,
    cert: &PeerCert,
    source: std::net::SocketAddr,
) -> crate::login::Laptop {
    crate::login::Laptop {
        device: device.to_string(),
        class,
        serial: kakehashi_pki::hex_serial_bytes(&cert.serial),
        peer: source.to_string(),
        cert_user: cert_user.map(str::to_owned),
    }
}

/// A `RedeemLogin` or `Logout` on a terminal stream: answer and close.
pub(crate) async fn login_frame(
    s: &Shared,
    mut io: BoxIo,
    f: &kakehashi_proto::Frame,
    laptop: &crate::login::Laptop,
) {
    use kakehashi_proto::message::{Logout, RedeemLogin};
    let Some(store) = &s.store else {
        return refuse(
            &mut io,
            Refusal::new(Reason::Internal).with_detail("this gateway has no store for logins"),
        )
        .await;
    };
    let id = &s.cfg.identity;
    match f.kind {
        FrameKind::RedeemLogin => {
            let Ok(req) = RedeemLogin::from_frame(f) else {
                return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
            };
            match crate::login::redeem(store, laptop, &req, id.token_lifetime, id.utc_offset_secs)
                .await
            {
                Ok(res) => {
                    s.metrics.logins.inc();
                    let _ = write_message(&mut io, &res).await;
                    let _ = io.shutdown().await;
                }
                Err(refusal) => {
                    s.metrics
                        .auth_failures
                        .with_label_values(&[reason_label(&refusal.code)])
                        .inc();
                    refuse(&mut io, refusal).await
                }
            }
        }
        _ => {
            let Ok(req) = Logout::from_frame(f) else {
                return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
            };
            match crate::login::logout(store, laptop, &req).await {
                Ok(()) => {
                    let bye = frame::encode(FrameKind::LoggedOut, &[]).expect("empty frame");
                    let _ = write_raw(&mut io, &bye).await;
                    let _ = io.shutdown().await;
                }
                Err(reason) => refuse(&mut io, Refusal::new(reason)).await,
            }
        }
    }
}

/// What the policy allowed for one session.
pub(crate) struct Admitted {
    pub(crate) controls: kakehashi_proto::Controls,
    pub(crate) limits: kakehashi_policy::Limits,
    pub(crate) rule: Option<String>,
    /// `None` on a bare test relay.
    pub(crate) asker: Option<crate::admission::Asker>,
    pub(crate) desk: Option<crate::admission::DeskFacts>,
}

impl Admitted {
    /// The desk is registered as a non-RDP service (a bare test relay: as configured).
    fn non_rdp(&self, s: &Shared) -> bool {
        self.desk.as_ref().map_or(s.cfg.testing_non_rdp_desks, |d| {
            d.service == kakehashi_store::DeskService::Other
        })
    }
}

/// Decide a session request: the live policy on the store's current facts.
/// Fails closed: no store or no person means no session.
pub(crate) async fn admit(
    s: &Shared,
    req: &SessionRequest,
    device: &str,
    class: kakehashi_pki::TerminalClass,
    login: Option<&crate::login::LoggedIn>,
) -> Result<Admitted, (Refusal, Option<String>)> {
    use crate::admission::{Asker, Outcome, STEP_UP_WINDOW_SECS};
    if s.cfg.relay_without_policy {
        return Ok(Admitted {
            controls: s.cfg.testing_controls.unwrap_or_default(),
            limits: kakehashi_policy::Limits::default(),
            rule: None,
            asker: None,
            desk: None,
        });
    }
    let (Some(store), Some(holder)) = (&s.store, &s.policy) else {
        return Err((Refusal::new(Reason::PolicyUnavailable), None));
    };
    let Some(login) = login else {
        return Err((Refusal::new(Reason::LoginRequired), None));
    };
    let token = req
        .token
        .as_ref()
        .map(|t| kakehashi_store::Hash256::digest(t.expose()))
        .ok_or((Refusal::new(Reason::LoginRequired), None))?;
    let now = kakehashi_store::unix_now();
    // A step-up is spent in the store, so one spent on another gateway of
    // the cluster is spent here too.
    let fresh = now.saturating_sub(login.login_at) <= STEP_UP_WINDOW_SECS
        && store
            .get_transient(TransientKind::StepUp, &token, now)
            .await
            .map_err(|e| (crate::admission::store_error("step-up", e), None))?
            .is_none();
    let asker = Asker {
        user: login.user.clone(),
        login_at: login.login_at,
        device: device.to_string(),
        class: crate::admission::class_of(class),
        desk: req.desk.clone(),
        step_up: fresh,
    };
    let loaded = holder.get();
    match crate::admission::decide(
        store,
        &asker,
        &loaded.policy,
        time::OffsetDateTime::now_utc(),
    )
    .await
    {
        Outcome::Allow {
            rule,
            controls,
            limits,
            desk,
        } => {
            if limits.step_up_required {
                // One fresh login, one level-3 session, cluster-wide.
                let until = login.login_at.saturating_add(STEP_UP_WINDOW_SECS + 1);
                let claimed = store
                    .claim_transient(TransientKind::StepUp, &token, until, now)
                    .await
                    .map_err(|e| (crate::admission::store_error("step-up", e), None))?;
                if !claimed {
                    let r = kakehashi_policy::ReasonCode::StepUpRequired.refusal(Some(&rule));
                    return Err((r, Some(rule)));
                }
            }
            Ok(Admitted {
                controls,
                limits,
                rule: Some(rule),
                asker: Some(asker),
                desk: Some(desk),
            })
        }
        Outcome::Deny { refusal, rule } => Err((refusal, rule)),
    }
}

/// A laptop asks why one of its sessions ended.
pub(crate) async fn answer_end_query(
    s: &Shared,
    mut io: BoxIo,
    f: &kakehashi_proto::Frame,
    device: &str,
) {
    use kakehashi_proto::message::{SessionEndQuery, SessionEndReport};
    let Ok(q) = SessionEndQuery::from_frame(f) else {
        return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
    };
    // Only the laptop that held the session learns anything about it.
    let reason = s
        .ended
        .lock()
        .expect("ended lock")
        .by_id
        .get(&q.session_id)
        .filter(|(d, _)| d == device)
        .map(|(_, r)| r.clone());
    let report = SessionEndReport {
        session_id: q.session_id,
        reason,
    };
    let _ = write_message(&mut io, &report).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), io.shutdown()).await;
}

/// `[testing] policy_minute`: the rule's maximum duration and idle
/// timeout with `minute` seconds per minute, and the end time they give.
pub(crate) fn shorter_minutes(
    mut l: kakehashi_policy::Limits,
    minute: u64,
    now: u64,
) -> kakehashi_policy::Limits {
    l.max_duration_secs = l.max_duration_secs.map(|d| d / 60 * minute);
    l.idle_timeout_secs = l
        .idle_timeout_secs
        .map(|i| u32::try_from(u64::from(i) / 60 * minute).unwrap_or(u32::MAX));
    if let Some(d) = l.max_duration_secs {
        let by_duration = now.saturating_add(d);
        l.end_at = Some(l.end_at.map_or(by_duration, |e| e.min(by_duration)));
    }
    l
}

/// Ends the session with `session_idle` when the laptop sends nothing for
/// `idle` (the deciding rule's idle timeout); never returns without one.
/// Input is what counts: a desk repainting its screen is not activity.
pub(crate) async fn idle_watch(counters: &Counters, idle: Option<Duration>, live: &LiveSession) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let step = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut last = counters.get().0;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(step).await;
        let now = counters.get().0;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= idle {
            live.end(Reason::SessionIdle);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_transport::tls::PeerCertFacts;
    use std::sync::atomic::Ordering;

    fn live() -> LiveSession {
        LiveSession {
            id: "s-1".into(),
            desk: "D".into(),
            device: "L".into(),
            cert: Arc::new(PeerCertFacts {
                serial: Box::new([1]),
                not_before: 0,
                not_after: i64::MAX,
            }),
            asker: None,
            labels: SessionLabels {
                user: None,
                class: "home".into(),
                level: "1".into(),
                dept: "d".into(),
                transport: Transport::Quic,
            },
            started: 0,
            max_duration: None,
            end_at: std::sync::atomic::AtomicI64::new(0),
            end: CancellationToken::new(),
            reason: Mutex::new(None),
            agent_enforces: false,
            counters: Counters::default(),
        }
    }

    #[tokio::test]
    pub(crate) async fn idle_sessions_end_and_typing_keeps_them_open() {
        let c = Counters::default();
        let l = live();
        // Input every 50 ms keeps a 300 ms idle timeout from firing…
        let typing = async {
            for _ in 0..12 {
                c.a_to_b.fetch_add(10, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            _ = typing => {}
            _ = idle_watch(&c, Some(Duration::from_millis(300)), &l) => panic!("ended while typing"),
        }
        assert!(!l.end.is_cancelled());
        // …then silence ends it with session_idle, even with screen updates.
        let screen = async {
            loop {
                c.b_to_a.fetch_add(1000, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            _ = screen => unreachable!(),
            _ = idle_watch(&c, Some(Duration::from_millis(300)), &l) => {}
        }
        assert!(l.end.is_cancelled());
        assert_eq!(
            l.reason.lock().unwrap().as_ref().unwrap().code,
            "session_idle"
        );
        // No idle timeout: never fires.
        let r =
            tokio::time::timeout(Duration::from_millis(200), idle_watch(&c, None, &live())).await;
        assert!(r.is_err());
    }
}
