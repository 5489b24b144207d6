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
use kakehashi_transport::splice::{splice_counted, Counters};
use kakehashi_transport::stream::QuicStream;
use kakehashi_transport::{random_hex, unix_now, BoxIo, Transport};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::crl::check_cert;
use crate::shared::{
    audit_event, desk_labels, reason_label, refuse, update_capacity, LiveGuard, LiveSession,
    PeerCert, SessionLabels, Shared,
};

pub(crate) async fn serve_terminal_quic(
    s: Arc<Shared>,
    conn: quinn::Connection,
    id: Identity,
    cert: PeerCert,
) {
    debug!(device = id.id(), "Terminal connected");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = s.shutdown.forced() => break,
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            st = conn.accept_bi() => match st {
                Ok(bi) => {
                    streams.spawn(handle_terminal_stream(s.clone(), Box::new(QuicStream::new(bi)), id.clone(), cert.clone(), Transport::Quic).in_current_span());
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

/// One terminal stream: ping probes, then a session request.
pub(crate) async fn handle_terminal_stream(
    s: Arc<Shared>,
    mut io: BoxIo,
    id: Identity,
    cert: PeerCert,
    transport: Transport,
) {
    let Identity::Device {
        id: device,
        class,
        user,
    } = id
    else {
        return;
    };
    let req = loop {
        let f = match tokio::time::timeout(s.cfg.handshake_timeout, read_frame(&mut io)).await {
            Err(_) => return refuse(&mut io, Refusal::new(Reason::Timeout)).await,
            Ok(Err(FrameIoError::Closed)) => return,
            Ok(Err(e)) => {
                warn!(%device, error = %e, "Bad frame from terminal");
                return refuse(
                    &mut io,
                    Refusal::new(Reason::ProtocolError).with_detail(e.to_string()),
                )
                .await;
            }
            Ok(Ok(f)) => f,
        };
        match f.kind {
            FrameKind::Ping => {
                let pong = frame::encode(FrameKind::Pong, &[]).expect("empty frame");
                if write_raw(&mut io, &pong).await.is_err() {
                    return;
                }
            }
            FrameKind::RedeemLogin | FrameKind::Logout => {
                // As for sessions: the CRL may have changed since this
                // connection's handshake (a long-lived QUIC connection, a
                // resumed TLS session); a revoked laptop gets no token.
                if let Err(reason) = check_cert(&s, &cert) {
                    warn!(%device, reason = reason.code(), "Login refused: certificate no longer valid");
                    s.metrics
                        .auth_failures
                        .with_label_values(&[reason.code()])
                        .inc();
                    return refuse(&mut io, Refusal::new(reason)).await;
                }
                return Box::pin(login_frame(&s, io, &f, &laptop(&device, class, &cert))).await;
            }
            FrameKind::SessionEndQuery => {
                return Box::pin(answer_end_query(&s, io, &f, &device)).await
            }
            _ => match SessionRequest::from_frame(&f) {
                Ok(r) => break r,
                Err(e) => {
                    warn!(%device, error = %e, "Bad session request");
                    return refuse(
                        &mut io,
                        Refusal::new(Reason::ProtocolError).with_detail(e.to_string()),
                    )
                    .await;
                }
            },
        }
    };
    if s.shutdown.is_draining() {
        return refuse(&mut io, Refusal::new(Reason::ShuttingDown)).await;
    }
    // The CRL may have changed since this connection's handshake.
    if let Err(reason) = check_cert(&s, &cert) {
        warn!(%device, reason = reason.code(), "Session refused: certificate no longer valid");
        s.metrics.denials.with_label_values(&[reason.code()]).inc();
        return refuse(&mut io, Refusal::new(reason)).await;
    }
    // The person: a valid login token bound to this laptop, when logins are required.
    let this_laptop = laptop(&device, class, &cert);
    let login = match (&s.store, s.cfg.identity.require_login) {
        (Some(store), true) => {
            match Box::pin(crate::login::check(store, &this_laptop, req.token.as_ref())).await {
                Ok(who) => Some(who),
                Err(reason) => {
                    info!(%device, desk = %req.desk, reason = reason.code(), "Session refused: login");
                    s.metrics.denials.with_label_values(&[reason.code()]).inc();
                    Box::pin(audit_event(
                        &s,
                        &format!("device:{device}"),
                        "session.denied",
                        &req.desk,
                        reason.code(),
                        serde_json::json!({ "device": device }),
                    ))
                    .await;
                    return refuse(&mut io, Refusal::new(reason)).await;
                }
            }
        }
        (None, true) => {
            warn!("require_login without a store; refusing");
            return refuse(&mut io, Refusal::new(Reason::Internal)).await;
        }
        (_, false) => None,
    };
    let user = login.as_ref().map(|l| l.user.clone()).or(user);
    let session_id = format!("s-{}", random_hex(12));
    let span = info_span!("session", session = %session_id, desk = %req.desk, %device, class = %class, %transport, user = ?user);
    async move {
        // The policy decides, on the store's current facts.
        let admitted = match Box::pin(admit(&s, &req, &device, class, login.as_ref())).await {
            Ok(mut a) => {
                if let Some(minute) = s.cfg.testing_minute_secs {
                    a.limits = shorter_minutes(a.limits, minute, unix_now());
                }
                a
            }
            Err((refusal, rule)) => {
                info!(reason = %refusal.code, rule = ?rule, "Session refused by the policy");
                s.metrics.denials.with_label_values(&[reason_label(&refusal.code)]).inc();
                Box::pin(audit_event(
                    &s,
                    &user.as_deref().map_or_else(|| format!("device:{device}"), |u| format!("user:{u}")),
                    "session.denied",
                    &req.desk,
                    &refusal.code,
                    serde_json::json!({ "device": device, "class": class.to_string(), "rule": rule, "policy_version": s.policy_version() }),
                ))
                .await;
                return refuse(&mut io, refusal).await;
            }
        };
        let Ok(permit) = s.sessions.clone().try_acquire_owned() else {
            warn!("Session refused: capacity full");
            s.metrics.denials.with_label_values(&[Reason::CapacityFull.code()]).inc();
            return refuse(&mut io, Refusal::new(Reason::CapacityFull)).await;
        };
        // The shutdown's drain waits for the session (up to the grace period).
        let _work = s.shutdown.work();
        let started = Instant::now();
        let started_unix = kakehashi_store::unix_now();
        let controls = admitted.controls;
        let claims = TicketClaims {
            v: TICKET_VERSION,
            session_id: session_id.clone(),
            desk: req.desk.clone(),
            device: device.clone(),
            class: class.to_string(),
            user: user.clone(),
            gateway: s.cfg.name.clone(),
            controls,
            limits: admitted.limits.to_ticket(),
            issued_at: unix_now(),
            expires_at: unix_now() + TICKET_LIFETIME_SECS,
        };
        // Controls that restrict anything need an agent that enforces them,
        // except on a desk an officer registered as a non-RDP service.
        let non_rdp = admitted.desk.as_ref().map_or(s.cfg.testing_non_rdp_desks, |d| {
            d.service == kakehashi_store::DeskService::Other
        });
        let must_enforce = controls.is_restrictive() && !non_rdp;
        let (mut agent, agent_enforces) = match Box::pin(open_to_agent(&s, claims, must_enforce)).await {
            Ok(a) => a,
            Err(r) => {
                info!(reason = %r.code, "Session refused");
                s.metrics.denials.with_label_values(&[reason_label(&r.code)]).inc();
                if r.code == Reason::DeskNotEnforcing.code() {
                    Box::pin(audit_event(
                        &s,
                        &user.as_deref().map_or_else(|| format!("device:{device}"), |u| format!("user:{u}")),
                        "session.denied",
                        &req.desk,
                        &r.code,
                        serde_json::json!({
                            "device": device, "class": class.to_string(), "rule": admitted.rule,
                            "policy_version": s.policy_version(), "controls": controls,
                            "desk_service": "rdp", "agent_enforces": false,
                        }),
                    ))
                    .await;
                }
                return refuse(&mut io, r).await;
            }
        };
        // What is actually enforced, for the audit record.
        let (enforced, enforcement) = if non_rdp {
            (false, NOT_ENFORCED_NON_RDP)
        } else if agent_enforces {
            (true, "enforced by the desk agent's RDP filter")
        } else {
            (false, "nothing to enforce: the controls allow everything")
        };
        // Record the start before the laptop hears of it: a session the
        // store cannot record does not happen.
        if let (Some(store), Some(asker)) = (&s.store, &admitted.asker) {
            let rec = kakehashi_store::SessionStart {
                id: session_id.clone(),
                user_id: asker.user.clone(),
                device_id: device.clone(),
                desk_id: req.desk.clone(),
                class: match class.as_str().parse() {
                    Ok(c) => c,
                    Err(_) => return refuse(&mut io, Refusal::new(Reason::Internal)).await,
                },
                level: admitted.desk.as_ref().map_or(1, |d| d.level),
                transport: transport.as_str().to_string(),
            };
            let a = kakehashi_store::Audit::new(started_unix, format!("user:{}", asker.user), "session.start")
                .subject(&session_id)
                .reason("allowed")
                .detail(serde_json::json!({
                    "desk": req.desk, "device": device, "class": class.to_string(),
                    "rule": admitted.rule, "policy_version": s.policy_version(),
                    "controls": controls, "end_at": admitted.limits.end_at,
                    "step_up": asker.step_up,
                    "enforced": enforced, "enforcement": enforcement,
                }));
            if let Err(e) = Box::pin(store.start_session(&rec, a)).await {
                warn!(error = %e, "Cannot record the session start; refusing");
                return refuse(&mut io, Refusal::new(Reason::Internal)).await;
            }
        }
        let accepted = SessionAccepted {
            session_id: session_id.clone(),
            controls,
        };
        let live = Arc::new(LiveSession {
            desk: req.desk.clone(),
            device: device.clone(),
            cert: cert.clone(),
            asker: admitted.asker.clone(),
            started: started_unix,
            max_duration: admitted.limits.max_duration_secs,
            end_at: std::sync::atomic::AtomicI64::new(
                admitted.limits.end_at.map_or(0, |e| i64::try_from(e).unwrap_or(i64::MAX)),
            ),
            end: CancellationToken::new(),
            reason: Mutex::new(None),
            labels: {
                let (level, dept) = desk_labels(admitted.desk.as_ref());
                SessionLabels { user: user.clone(), class: class.to_string(), level, dept, transport }
            },
            agent_enforces,
        });
        s.live
            .lock()
            .expect("live lock")
            .insert(session_id.clone(), live.clone());
        let _guard = LiveGuard {
            s: &s,
            id: session_id.clone(),
        };
        let m = &s.metrics;
        let class_label = class.to_string();
        let (level, dept) = desk_labels(admitted.desk.as_ref());
        let active = m.sessions_active.with_label_values(&[level.as_str(), class_label.as_str(), dept.as_str(), transport.as_str()]);
        active.inc();
        update_capacity(&s);
        let counters = Counters::default();
        // A revocation or a policy change between the checks above and the
        // insert into the live table is caught here.
        if let Err(reason) = check_cert(&s, &cert) {
            live.end(reason);
        }
        let result = if live.end.is_cancelled() {
            None
        } else if write_message(&mut io, &accepted).await.is_err() {
            Some(Err(std::io::Error::other("the laptop left before the session opened")))
        } else {
            info!(setup_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), rule = ?admitted.rule, end_at = ?admitted.limits.end_at, "Session started");
            m.session_setup.observe(started.elapsed().as_secs_f64());
            m.sessions_started.with_label_values(&[class_label.as_str(), transport.as_str()]).inc();
            let idle = admitted
                .limits
                .idle_timeout_secs
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s)));
            tokio::select! {
                r = splice_counted(&mut io, &mut agent, &counters) => Some(r),
                _ = live.end.cancelled() => None,
                _ = s.shutdown.forced() => None,
                _ = idle_watch(&counters, idle, &live) => None,
            }
        };
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
            (None, Some(r)) => {
                info!(reason = %r.code, bytes_up = up, bytes_down = down, secs, "Session ended by the gateway");
                // Remember why first, then close the stream: the laptop asks why.
                s.ended.lock().expect("ended lock").insert(session_id.clone(), device.clone(), r.clone());
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                r.code
            }
            (None, None) => {
                info!(bytes_up = up, bytes_down = down, secs, "Session ended: gateway shutting down");
                s.ended.lock().expect("ended lock").insert(session_id.clone(), device.clone(), Refusal::new(Reason::ShuttingDown));
                Reason::ShuttingDown.code().into()
            }
        };
        if let (Some(store), Some(asker)) = (&s.store, &admitted.asker) {
            let end = kakehashi_store::SessionEnd {
                reason: end_reason.clone(),
                bytes_up: up,
                bytes_down: down,
            };
            let a = kakehashi_store::Audit::new(kakehashi_store::unix_now(), format!("user:{}", asker.user), "session.end")
                .subject(&session_id)
                .reason(&end_reason)
                .detail(serde_json::json!({ "desk": req.desk, "device": device, "bytes_up": up, "bytes_down": down, "secs": secs }));
            if let Err(e) = Box::pin(store.end_session(&session_id, &end, a)).await {
                warn!(error = %e, "Cannot record the session end");
            }
        }
        m.bytes.with_label_values(&["up"]).inc_by(up);
        m.bytes.with_label_values(&["down"]).inc_by(down);
        m.sessions_ended.with_label_values(&[reason_label(&end_reason)]).inc();
        active.dec();
        drop(permit);
        update_capacity(&s);
    }
    .instrument(span)
    .await
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
    cert: &PeerCert,
) -> crate::login::Laptop {
    crate::login::Laptop {
        device: device.to_string(),
        class,
        serial: kakehashi_pki::hex_serial_bytes(&cert.serial),
        peer: String::new(),
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
        .map(|t| *kakehashi_store::Hash256::digest(t.expose()).as_bytes())
        .ok_or((Refusal::new(Reason::LoginRequired), None))?;
    let now = kakehashi_store::unix_now();
    let fresh = now.saturating_sub(login.login_at) <= STEP_UP_WINDOW_SECS
        && !s
            .step_ups
            .lock()
            .expect("step-up lock")
            .contains_key(&token);
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
                // One fresh login, one level-3 session.
                let mut used = s.step_ups.lock().expect("step-up lock");
                used.retain(|_, at| now.saturating_sub(*at) <= STEP_UP_WINDOW_SECS);
                if used.insert(token, login.login_at).is_some() {
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

/// `[testing] policy_minute_secs`: the rule's maximum duration and idle
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
