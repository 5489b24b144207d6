//! The operator's live dashboard (role `operator` only, Japanese first):
//! what the operator asks at 08:25 on a snow-day morning.
//!
//! | route | what |
//! |---|---|
//! | `GET /ops` | the page; its script opens the event stream |
//! | `GET /ops/events[?q=FILTER]` | server-sent events: `snapshot` every second (when something changed), `history` every minute |
//! | `POST /ops/sessions/end` | form `csrf, id, reason` → the session ends with `ended_by_operator` |
//!
//! Every number comes from the gateway's own [`Metrics`] (the same values
//! `/metrics` exports on the admin listener, read in process) and its live
//! session table; nothing is counted twice. The server aggregates: a
//! browser gets the totals and at most [`LIST_CAP`] sessions (the newest
//! matching its filter), so 20,000 live sessions cost the browser what 200
//! do. A sampler keeps one point a minute for the last 24 hours (sessions,
//! logins, denials) and the counter readings the "last minute" and "last
//! hour" figures are differences of; it also caches the BCP declarations in
//! force, so an open page costs no store read per second.
//!
//! Ending a session writes `session.end_by_operator` (actor `user:<id>`,
//! the reason the operator typed, the session's desk, device and user) to
//! the audit log first, then [`Shared::end_session`] with
//! `ended_by_operator`; the laptop asks the gateway why its session ended
//! and tells its user. A session another gateway of the cluster carries
//! (open in the store under that member) is ended by that gateway when the
//! record reaches it through the change feed. An open event stream re-checks its visitor's role
//! every [`RECHECK`] and ends when it is gone.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Form, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use kakehashi_store::{Audit, Bcp, BcpScope};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::access::{get_refused, Need};
use super::officer::{check_reason, query_param};
use crate::html::{switch_link, Lang};
use crate::ops::{
    BcpView, Counts, FeedSlot, MemberRow, Ops, RemoteSession, LIST_CAP, MAX_FEEDS, MAX_FILTER,
    PUSH, RECHECK, SAMPLE, SCRIPT, STYLE,
};
use crate::state::{Peer, PortalState};
use crate::views;
use crate::views::parts::Notice;
use kakehashi_relay::RelayHandle;

/// The snapshot for `lang` and `filter`, computed at most once per
/// [`PUSH`] and shared by every stream showing that view.
fn shared_snapshot(s: &PortalState, g: &RelayHandle, lang: Lang, filter: &str) -> Arc<String> {
    let key = (lang == Lang::En, filter.to_owned());
    let mut cache = s.ops().snapshots.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, snap)) = cache.get(&key) {
        if at.elapsed() < PUSH {
            return snap.clone();
        }
    }
    let snap = Arc::new(snapshot(s, g, lang, filter).to_string());
    // Views nobody asked for in a while are dropped; at most MAX_FEEDS are live.
    cache.retain(|_, (at, _)| at.elapsed() < PUSH * 5);
    if cache.len() < MAX_FEEDS * 2 {
        cache.insert(key, (Instant::now(), snap.clone()));
    }
    snap
}

impl PortalState {
    fn ops(&self) -> &Ops {
        &self.inner.ops
    }
}

/// Samples the relay's counters for the dashboard's history until the
/// relay shuts down.
pub(super) async fn sampler(s: PortalState, g: RelayHandle) {
    let stop = g.shutdown().drain_token();
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let c = Counts::read(g.metrics());
        s.ops()
            .history
            .lock()
            .expect("history lock")
            .record(kakehashi_store::unix_now(), &c);
        match cluster_view(&s, &g).await {
            Ok((rows, remote)) => {
                *s.ops().members.lock().expect("members lock") = rows;
                *s.ops().remote.lock().expect("remote lock") = remote;
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "Cannot read the cluster's members for the dashboard")
            }
        }
        match s.store().active_bcp(s.now()).await {
            Ok(active) => {
                let v = active.iter().map(|b| bcp_view(&s, b)).collect();
                *s.ops().bcp.lock().expect("bcp lock") = v;
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "Cannot read BCP declarations for the dashboard")
            }
        }
    }
}

/// The cluster's members with their sessions, agents and feed lag (the
/// gateways write them into the store with every heartbeat), and with
/// more than one member the sessions the others carry.
async fn cluster_view(
    s: &PortalState,
    g: &RelayHandle,
) -> Result<(Vec<MemberRow>, Vec<RemoteSession>), kakehashi_store::Error> {
    let (members, db_now) = s.store().members().await?;
    let (head, _) = s.store().audit_head().await?;
    let rows = MemberRow::rows(&members, db_now, head, g.name());
    let remote = if rows.len() > 1 {
        RemoteSession::from_rows(s.store().open_sessions().await?, g.name())
    } else {
        Vec::new()
    };
    Ok((rows, remote))
}

fn bcp_view(s: &PortalState, b: &Bcp) -> BcpView {
    BcpView {
        dept: match &b.scope {
            BcpScope::Department(d) => Some(d.clone()),
            _ => None,
        },
        reason: b.reason.clone(),
        until: s.local_time(b.ends_at),
    }
}

/// The sentence for a denial reason code, in the page's language.
fn reason_text(lang: Lang, code: &str) -> &'static str {
    if let Some(r) = kakehashi_proto::Reason::from_code(code) {
        return lang.t(r.ja(), r.en());
    }
    kakehashi_policy::ReasonCode::ALL
        .iter()
        .find(|r| r.code() == code)
        .map_or("", |r| lang.t(r.ja(), r.en()))
}

/// What one push carries (JSON of the `snapshot` event).
fn snapshot(s: &PortalState, g: &RelayHandle, lang: Lang, filter: &str) -> Value {
    let c = Counts::read(g.metrics());
    let (logins_minute, denials) = s.ops().history.lock().expect("history lock").windows(&c);
    let page = g.live_session_page(filter, LIST_CAP);
    // This gateway's sessions and (in a cluster) the others', newest first.
    let remote = s.ops().remote.lock().expect("remote lock");
    let remote_hits: Vec<&RemoteSession> = remote.iter().filter(|r| r.matches(filter)).collect();
    let mut rows: Vec<(i64, Value)> = page
        .sessions
        .iter()
        .map(|v| {
            let mut j = json!(v);
            j["gateway"] = json!(g.name());
            (v.started, j)
        })
        .chain(
            remote_hits
                .iter()
                .take(LIST_CAP)
                .map(|r| (r.started, json!(r))),
        )
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    rows.truncate(LIST_CAP);
    let list: Vec<Value> = rows
        .into_iter()
        .map(|(started, mut j)| {
            j["since"] = json!(s.local_time(started));
            j
        })
        .collect();
    let (total, matched) = (page.total + remote.len(), page.matched + remote_hits.len());
    drop(remote);
    let denials: Vec<Value> = denials
        .iter()
        .map(|(code, n)| json!({ "code": code, "n": n, "text": reason_text(lang, code) }))
        .collect();
    let bcp = s.ops().bcp.lock().expect("bcp lock").clone();
    let gateways = s.ops().members.lock().expect("members lock").clone();
    // Across the cluster: the live gateways' own counts, this one's live.
    let cluster_total: i64 = gateways
        .iter()
        .filter(|m| m.state != "missing")
        .map(|m| if m.this { c.total } else { m.sessions })
        .sum();
    let mut j = json!(c);
    let extra = json!({
        "at": kakehashi_store::unix_now(),
        "utc_offset": s.inner.utc_offset_secs,
        "logins_minute": logins_minute,
        "denials_hour": denials,
        "bcp": bcp,
        "gateways": gateways,
        "cluster_total": cluster_total,
        "filter": filter,
        "sessions": { "total": total, "matched": matched, "list": list },
    });
    if let (Some(o), Value::Object(e)) = (j.as_object_mut(), extra) {
        o.extend(e);
    }
    j
}

/// What the `history` event carries.
fn history(s: &PortalState) -> (u64, Value) {
    let h = s.ops().history.lock().expect("history lock");
    let points: Vec<[i64; 4]> = h
        .points
        .iter()
        .map(|p| [p.t, p.sessions, p.logins as i64, p.denials as i64])
        .collect();
    (
        h.version,
        json!({ "points": points, "utc_offset": s.inner.utc_offset_secs }),
    )
}

// ------------------------------------------------------------ handlers

/// `GET /ops`
pub(crate) async fn show(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let title = views::dashboard::title(lang);
    let v = match s.visitor(&headers, Need::Operator).await {
        Ok(v) => v,
        Err(r) => return get_refused(r, lang, "/ops", q.as_deref(), title),
    };
    if s.ops().gateway.is_none() {
        let page = views::dashboard::unavailable(lang);
        return (StatusCode::SERVICE_UNAVAILABLE, page).into_response();
    }
    let switch = switch_link("/ops", q.as_deref(), lang);
    views::dashboard::dashboard(lang, &switch, &v.user.id, &v.csrf, MAX_FILTER).into_response()
}

/// `GET /ops/events`: server-sent events for one open page.
pub(crate) async fn events(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let v = match s.visitor(&headers, Need::Operator).await {
        Ok(v) => v,
        Err(r) => return r.json(),
    };
    let Some(slot) = s.ops().open_feed(&v.user.id) else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({
                "error": "too_many_streams",
                "message_ja": "開いているダッシュボードが多すぎます。使っていないタブを閉じてください。",
                "message_en": "Too many dashboards are open. Close the tabs you are not using.",
            })),
        )
            .into_response();
    };
    let Some(g) = s.ops().gateway.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "unavailable" })),
        )
            .into_response();
    };
    let filter: String = query_param(q.as_deref(), "q")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FILTER)
        .collect();
    let mut tick = tokio::time::interval(PUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let st = Feed {
        stop: g.shutdown().drain_token(),
        s,
        g,
        headers,
        lang,
        filter,
        tick,
        last: String::new(),
        history_version: None,
        checked: Instant::now(),
        pending: VecDeque::new(),
        done: false,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        let e = st.next().await?;
        Some((Ok::<_, Infallible>(e), st))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One open event stream.
struct Feed {
    stop: CancellationToken,
    s: PortalState,
    g: RelayHandle,
    headers: HeaderMap,
    lang: Lang,
    filter: String,
    tick: tokio::time::Interval,
    /// The last snapshot sent (unchanged ones are not sent again).
    last: String,
    history_version: Option<u64>,
    checked: Instant,
    pending: VecDeque<Event>,
    done: bool,
    /// Held while the stream is open.
    _slot: FeedSlot,
}

impl Feed {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                _ = self.tick.tick() => {}
            }
            if self.checked.elapsed() >= RECHECK {
                self.checked = Instant::now();
                if let Err(r) = self.s.visitor(&self.headers, Need::Operator).await {
                    self.done = true;
                    self.pending.push_back(
                        Event::default()
                            .event("refused")
                            .data(json!({ "error": r.code() }).to_string()),
                    );
                    continue;
                }
            }
            let (version, h) = history(&self.s);
            if self.history_version != Some(version) {
                self.history_version = Some(version);
                self.pending
                    .push_back(Event::default().event("history").data(h.to_string()));
            }
            let snap = shared_snapshot(&self.s, &self.g, self.lang, &self.filter);
            if *snap != self.last {
                self.pending
                    .push_back(Event::default().event("snapshot").data(snap.as_str()));
                self.last = snap.to_string();
            }
        }
    }
}

/// `POST /ops/sessions/end` form.
#[derive(Debug, Deserialize)]
pub(crate) struct EndForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    reason: String,
}

/// `POST /ops/sessions/end`: audit, then end the session with
/// `ended_by_operator`. The page's script asks for JSON
/// (`Accept: application/json`); a plain form post gets a redirect.
pub(crate) async fn end_session(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    Peer(ip): Peer,
    headers: HeaderMap,
    Form(f): Form<EndForm>,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let v = match s.poster(&headers, Need::Operator, &f.csrf).await {
        Ok(v) => v,
        Err(r) if wants_json => return r.json(),
        Err(r) => return r.page(lang, "/ops", q.as_deref()),
    };
    let fail = |status: StatusCode, code: &str, ja: &str, en: &str| -> Response {
        if wants_json {
            (
                status,
                Json(json!({ "error": code, "message_ja": ja, "message_en": en })),
            )
                .into_response()
        } else {
            (status, views::dashboard::end_failed(lang, ja, en, code)).into_response()
        }
    };
    let reason = match check_reason(lang, &f.reason, true) {
        Ok(r) => r,
        Err(Notice::Error(t) | Notice::Ok(t)) => {
            return fail(StatusCode::BAD_REQUEST, "reason_required", &t, &t)
        }
    };
    let Some(g) = s.ops().gateway.as_ref() else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "ゲートウェイと接続されていません。",
            "Not attached to a gateway.",
        );
    };
    let id = f.id.trim();
    // Live here, or open in the store on another gateway of the cluster:
    // that one ends it when the audit record below reaches it through the
    // change feed (within the feed's 2 s).
    let (mut detail, holder) = match g.live_session(id) {
        Some(live) => (
            json!({
                "desk": live.desk,
                "device": live.device,
                "user": live.user,
                "level": live.level,
                "class": live.class,
                "dept": live.dept,
                "started": live.started,
            }),
            None,
        ),
        None => match s.store().get_session(id).await {
            Ok(Some(r))
                if r.ended_at.is_none() && r.gateway.as_deref().is_some_and(|h| h != g.name()) =>
            {
                let detail = json!({
                    "desk": r.desk_id,
                    "device": r.device_id,
                    "user": r.user_id,
                    "level": r.level,
                    "class": r.class.as_str(),
                    "started": r.started_at,
                    "gateway": r.gateway,
                });
                (detail, r.gateway)
            }
            Ok(_) => {
                return fail(
                    StatusCode::NOT_FOUND,
                    "session_not_live",
                    "このセッションはすでに終了しています。",
                    "This session has already ended.",
                )
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), session = %id, "Cannot look the session up in the store");
                return fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "データベースに接続できないため、セッションを終了できませんでした。",
                    "The database cannot be reached; the session was not ended.",
                );
            }
        },
    };
    detail["via"] = json!("portal");
    detail["source"] = json!(ip.to_string());
    // The record first: an operator's action that cannot be audited does not happen.
    let audit = Audit::new(s.now(), v.actor(), kakehashi_relay::OPERATOR_END)
        .subject(id)
        .reason(&reason)
        .detail(detail.clone());
    if let Err(e) = s.store().append_audit(audit).await {
        warn!(error = %format!("{e:#}"), session = %id, "Cannot audit an operator's session end; not ending it");
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "監査ログに記録できなかったため、セッションは終了していません。",
            "The audit log could not be written; the session was not ended.",
        );
    }
    let ended = match &holder {
        None => g.end_session(id, kakehashi_proto::Reason::EndedByOperator),
        Some(_) => true,
    };
    info!(operator = %v.user.id, session = %id, desk = %detail["desk"], device = %detail["device"], gateway = ?holder, ended, "Session ended by an operator");
    if wants_json {
        Json(json!({ "ended": ended, "id": id, "gateway": holder })).into_response()
    } else {
        Redirect::to(&format!("/ops{}", lang.query())).into_response()
    }
}

/// `GET /assets/ops.js`
pub(crate) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// `GET /assets/ops.css`
pub(crate) async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::*;
    use kakehashi_relay::metrics::Metrics;

    #[test]
    fn event_streams_are_capped_per_operator_and_in_total() {
        let ops = Ops::new(None);
        let mine: Vec<_> = (0..MAX_FEEDS_PER_USER)
            .map(|_| ops.open_feed("op-1").expect("a place"))
            .collect();
        assert!(ops.open_feed("op-1").is_none(), "per operator");
        let others: Vec<_> = (0..MAX_FEEDS - MAX_FEEDS_PER_USER)
            .map(|i| ops.open_feed(&format!("op-{}", i + 2)).expect("a place"))
            .collect();
        assert!(ops.open_feed("op-999").is_none(), "in total");
        drop(mine);
        assert!(
            ops.open_feed("op-1").is_some(),
            "closing a stream frees its place"
        );
        drop(others);
        assert!(ops.feeds.lock().unwrap().is_empty());
    }

    fn counts(total: i64, logins: u64, denials: &[(&str, u64)]) -> Counts {
        Counts {
            total,
            logins_total: logins,
            denials: denials.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Counts::default()
        }
    }

    #[test]
    fn counts_are_read_from_the_metrics() {
        let m = Metrics::new();
        m.sessions_active
            .with_label_values(&["2", "satellite", "somu", "quic"])
            .add(2);
        m.sessions_active
            .with_label_values(&["1", "home", "福祉課", "tcp"])
            .inc();
        let gone = m
            .sessions_active
            .with_label_values(&["1", "home", "kaikei", "tcp"]);
        gone.inc();
        gone.dec();
        m.agents_online.with_label_values(&["quic"]).add(3);
        m.denials.with_label_values(&["desk_offline"]).inc();
        m.logins.inc_by(4);
        m.sessions_max.set(100);
        let c = Counts::read(&m);
        assert_eq!(c.total, 3);
        assert_eq!(c.by_level["1"], 1);
        assert_eq!(c.by_level["2"], 2);
        assert_eq!(c.by_level["3"], 0);
        assert_eq!(c.by_class["satellite"], 2);
        assert_eq!(c.by_class["mobile"], 0);
        assert_eq!(c.by_dept["福祉課"], 1);
        assert!(!c.by_dept.contains_key("kaikei"), "{c:?}");
        assert_eq!(c.by_transport["tcp"], 1);
        assert_eq!(c.agents, 3);
        assert_eq!(c.logins_total, 4);
        assert_eq!(c.denials["desk_offline"], 1);
        assert_eq!(c.max, 100);
    }

    #[test]
    fn windows_are_differences_of_readings() {
        let mut h = History::default();
        let t0 = 1_800_000_000; // a minute boundary
        h.record(t0, &counts(0, 0, &[]));
        // Within the first minute: everything since the start.
        let c = counts(1, 2, &[("desk_offline", 1)]);
        h.record(t0 + 30, &c);
        let (l, d) = h.windows(&c);
        assert_eq!(l, 2);
        assert_eq!(d["desk_offline"], 1);
        // Ninety seconds later only the last minute's logins count.
        let mut t = t0 + 35;
        while t < t0 + 95 {
            t += 5;
            h.record(t, &c);
        }
        let c2 = counts(1, 5, &[("desk_offline", 1), ("outside_hours", 2)]);
        h.record(t0 + 100, &c2);
        let (l, d) = h.windows(&c2);
        assert_eq!(l, 3);
        assert_eq!(d.len(), 2);
        // Two hours on: the old denials fall out of the hour.
        let mut t = t0 + 100;
        while t < t0 + 7200 {
            t += 60;
            h.record(t, &c2);
        }
        let (l, d) = h.windows(&c2);
        assert_eq!(l, 0);
        assert!(d.is_empty(), "{d:?}");
        // One point a minute; the first point counts from the start.
        assert_eq!(h.points[0].t, t0);
        assert_eq!(h.points[1].t, t0 + 60);
        assert_eq!(h.points[1].logins, 2, "{:?}", h.points);
        assert!(h.points.iter().all(|p| p.t % 60 == 0));
        assert!(h.fine.len() <= 14, "{}", h.fine.len());
        assert!(h.coarse.len() <= 62, "{}", h.coarse.len());
    }

    #[test]
    fn the_chart_keeps_24_hours() {
        let mut h = History::default();
        let c = counts(1, 0, &[]);
        for i in 0..(HISTORY_POINTS as i64 + 100) {
            h.record(1_800_000_000 + i * 60, &c);
        }
        assert_eq!(h.points.len(), HISTORY_POINTS);
        assert_eq!(h.version, HISTORY_POINTS as u64 + 100);
    }
}
