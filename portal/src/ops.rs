//! The operators' dashboard's state kept between requests: the counters'
//! history, the BCP banner data, the open event streams per operator, and
//! the shared snapshot per view.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kakehashi_relay::metrics::Metrics;
use kakehashi_relay::RelayHandle;
use prometheus::core::Collector as _;
use serde::Serialize;

/// Most live sessions sent to a browser (the newest matching its filter).
pub(crate) const LIST_CAP: usize = 200;
/// Longest filter, in characters.
pub(crate) const MAX_FILTER: usize = 64;
/// How often an open page gets fresh numbers.
pub(crate) const PUSH: Duration = Duration::from_secs(1);
/// How often the sampler reads the counters and the BCP declarations.
pub(crate) const SAMPLE: Duration = Duration::from_secs(5);
/// Points in the chart: one a minute for 24 hours.
pub(crate) const HISTORY_POINTS: usize = 24 * 60;
/// How often an open event stream re-checks its visitor.
pub(crate) const RECHECK: Duration = Duration::from_secs(10);
/// Most event streams open at once, and per operator (a few tabs each).
pub(crate) const MAX_FEEDS: usize = 64;
pub(crate) const MAX_FEEDS_PER_USER: usize = 4;

pub(crate) const SCRIPT: &str = include_str!("assets/ops.js");
pub(crate) const STYLE: &str = include_str!("assets/ops.css");

// ------------------------------------------------------------ the numbers

/// The gateway's numbers at one instant, read from [`Metrics`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Counts {
    /// Live sessions (sum of `kakehashi_sessions_active`).
    pub(crate) total: i64,
    /// `kakehashi_sessions_max`.
    pub(crate) max: i64,
    /// `kakehashi_capacity_used_ratio`.
    pub(crate) capacity: f64,
    pub(crate) by_level: BTreeMap<String, i64>,
    pub(crate) by_class: BTreeMap<String, i64>,
    pub(crate) by_dept: BTreeMap<String, i64>,
    pub(crate) by_transport: BTreeMap<String, i64>,
    /// Sum of `kakehashi_agents_online`.
    pub(crate) agents: i64,
    /// `kakehashi_logins_total`.
    pub(crate) logins_total: u64,
    /// `kakehashi_denials_total` by reason.
    #[serde(skip)]
    pub(crate) denials: BTreeMap<String, u64>,
}

impl Counts {
    pub(crate) fn read(m: &Metrics) -> Self {
        let mut c = Counts::default();
        // Stable rows even before the first session of a kind.
        for l in ["1", "2", "3"] {
            c.by_level.insert(l.into(), 0);
        }
        for k in ["home", "mobile", "satellite"] {
            c.by_class.insert(k.into(), 0);
        }
        for fam in m.sessions_active.collect() {
            for s in fam.get_metric() {
                // Gauges of counts: whole numbers far inside i64.
                #[allow(clippy::cast_possible_truncation)]
                let v = s.get_gauge().get_value() as i64;
                let label = |name: &str| {
                    s.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                c.total += v;
                *c.by_level.entry(label("level")).or_default() += v;
                *c.by_class.entry(label("class")).or_default() += v;
                *c.by_dept.entry(label("dept")).or_default() += v;
                *c.by_transport.entry(label("transport")).or_default() += v;
            }
        }
        // A department or transport no session uses any more is dropped.
        c.by_dept.retain(|_, v| *v != 0);
        c.by_transport.retain(|_, v| *v != 0);
        for fam in m.agents_online.collect() {
            for s in fam.get_metric() {
                #[allow(clippy::cast_possible_truncation)] // a count of agents
                {
                    c.agents += s.get_gauge().get_value() as i64;
                }
            }
        }
        for fam in m.denials.collect() {
            for s in fam.get_metric() {
                let reason = s
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "reason")
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                // A counter of refusals: a whole number far inside u64.
                #[allow(clippy::cast_possible_truncation)]
                let n = s.get_counter().get_value() as u64;
                *c.denials.entry(reason).or_default() += n;
            }
        }
        c.max = m.sessions_max.get();
        c.capacity = m.capacity_used.get();
        c.logins_total = m.logins.get();
        c
    }

    pub(crate) fn denials_sum(&self) -> u64 {
        self.denials.values().sum()
    }
}

/// One gateway of the cluster, as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct MemberRow {
    pub(crate) id: String,
    /// `up` (heartbeating), `leaving` (stopping on purpose, draining) or
    /// `missing` (its membership lapsed: dead or cut off).
    pub(crate) state: &'static str,
    pub(crate) sessions: i64,
    pub(crate) agents: i64,
    /// Audit records it has not read yet (its change feed's lag).
    pub(crate) lag: i64,
    /// Seconds since its last heartbeat, on the database's clock.
    pub(crate) seen: i64,
    /// This gateway (the one serving the page).
    pub(crate) this: bool,
}

impl MemberRow {
    /// The rows for `members` read at `db_now` with the audit head at
    /// `head`, sorted by id; `this` names the gateway serving the page.
    pub(crate) fn rows(
        members: &[kakehashi_store::Member],
        db_now: i64,
        head: i64,
        this: &str,
    ) -> Vec<MemberRow> {
        let mut rows: Vec<MemberRow> = members
            .iter()
            .map(|m| MemberRow {
                id: m.id.clone(),
                state: match (m.alive(db_now), m.left_at) {
                    (true, None) => "up",
                    (true, Some(_)) => "leaving",
                    (false, _) => "missing",
                },
                sessions: m.sessions,
                agents: m.agents,
                lag: head.saturating_sub(m.feed_seq).max(0),
                seen: db_now.saturating_sub(m.db_at).max(0),
                this: m.id == this,
            })
            .collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        rows
    }
}

/// Most sessions of other gateways the dashboard keeps (the newest).
pub(crate) const MAX_REMOTE: usize = 50_000;

/// A session another gateway of the cluster carries, as its row in the
/// store shows it (the same fields as a live one's, without department).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RemoteSession {
    pub(crate) id: String,
    pub(crate) desk: String,
    pub(crate) device: String,
    pub(crate) user: String,
    pub(crate) level: String,
    pub(crate) class: String,
    pub(crate) dept: String,
    pub(crate) transport: String,
    pub(crate) started: i64,
    pub(crate) gateway: String,
}

impl RemoteSession {
    /// The open rows of `open` that gateways other than `this` carry,
    /// the newest [`MAX_REMOTE`].
    pub(crate) fn from_rows(open: Vec<kakehashi_store::SessionRecord>, this: &str) -> Vec<Self> {
        let mut v: Vec<RemoteSession> = open
            .into_iter()
            .filter_map(|r| {
                let gateway = r.gateway.filter(|g| g != this)?;
                Some(RemoteSession {
                    id: r.id,
                    desk: r.desk_id,
                    device: r.device_id,
                    user: r.user_id,
                    level: r.level.to_string(),
                    class: r.class.as_str().to_owned(),
                    dept: String::new(),
                    transport: r.transport,
                    started: r.started_at,
                    gateway,
                })
            })
            .collect();
        v.sort_by(|a, b| b.started.cmp(&a.started).then_with(|| a.id.cmp(&b.id)));
        v.truncate(MAX_REMOTE);
        v
    }

    /// The dashboard's filter: desk, device or user id contains `needle`.
    pub(crate) fn matches(&self, needle: &str) -> bool {
        use kakehashi_relay::shared::contains_ignore_ascii_case as has;
        needle.is_empty()
            || [&self.desk, &self.device, &self.user]
                .iter()
                .any(|h| has(h, needle))
    }
}

/// A counter reading kept for the "last minute" / "last hour" differences.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reading {
    pub(crate) at: i64,
    pub(crate) logins: u64,
    pub(crate) denials: BTreeMap<String, u64>,
}

/// One point of the 24-hour chart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    /// Start of the minute (unix seconds).
    pub(crate) t: i64,
    /// Live sessions at the first sample of the minute.
    pub(crate) sessions: i64,
    /// Logins since the previous point.
    pub(crate) logins: u64,
    /// Denials since the previous point.
    pub(crate) denials: u64,
}

/// The sampler's memory: bounded, a few tens of kilobytes.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// Every [`SAMPLE`], trimmed to the newest reading at least a minute old.
    pub(crate) fine: VecDeque<Reading>,
    /// Once a minute, trimmed to the newest reading at least an hour old.
    pub(crate) coarse: VecDeque<Reading>,
    /// The chart, oldest first.
    pub(crate) points: VecDeque<Point>,
    /// Bumped when `points` changes.
    pub(crate) version: u64,
}

impl History {
    pub(crate) fn record(&mut self, now: i64, c: &Counts) {
        let r = Reading {
            at: now,
            logins: c.logins_total,
            denials: c.denials.clone(),
        };
        let minute = now - now.rem_euclid(60);
        if self.points.back().is_none_or(|p| p.t < minute) {
            let (logins, denials) = match self.coarse.back() {
                Some(prev) => (
                    c.logins_total.saturating_sub(prev.logins),
                    c.denials_sum()
                        .saturating_sub(prev.denials.values().sum::<u64>()),
                ),
                None => (c.logins_total, c.denials_sum()),
            };
            self.points.push_back(Point {
                t: minute,
                sessions: c.total,
                logins,
                denials,
            });
            while self.points.len() > HISTORY_POINTS {
                self.points.pop_front();
            }
            self.version += 1;
            self.coarse.push_back(r.clone());
            trim(&mut self.coarse, now - 3600);
        }
        self.fine.push_back(r);
        trim(&mut self.fine, now - 60);
    }

    /// Logins in the last minute and denials by reason in the last hour:
    /// now minus the newest reading at least that old (or the first
    /// reading, taken when the gateway started, when none is).
    pub(crate) fn windows(&self, c: &Counts) -> (u64, BTreeMap<String, u64>) {
        let logins = self
            .fine
            .front()
            .map_or(c.logins_total, |r| c.logins_total.saturating_sub(r.logins));
        let base = self.coarse.front().map(|r| &r.denials);
        let denials = c
            .denials
            .iter()
            .map(|(k, v)| {
                let before = base.and_then(|b| b.get(k)).copied().unwrap_or(0);
                (k.clone(), v.saturating_sub(before))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        (logins, denials)
    }
}

/// Drops readings while the next one is already older than `cutoff`.
pub(crate) fn trim(q: &mut VecDeque<Reading>, cutoff: i64) {
    while q.len() > 1 && q[1].at <= cutoff {
        q.pop_front();
    }
}

/// A BCP declaration as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BcpView {
    /// `null` for everyone, else the department.
    pub(crate) dept: Option<String>,
    pub(crate) reason: String,
    pub(crate) until: String,
}

/// The dashboard's side of the portal state.
pub(crate) struct Ops {
    pub(crate) gateway: Option<RelayHandle>,
    pub(crate) history: Mutex<History>,
    pub(crate) bcp: Mutex<Vec<BcpView>>,
    /// The cluster's members as the store last showed them (sampled).
    pub(crate) members: Mutex<Vec<MemberRow>>,
    /// Sessions the other gateways carry, from their open rows in the
    /// store (sampled; empty with one gateway).
    pub(crate) remote: Mutex<Vec<RemoteSession>>,
    /// Open event streams per operator.
    pub(crate) feeds: Arc<Mutex<BTreeMap<String, usize>>>,
    /// The last snapshot per language and filter, shared by every stream
    /// that shows the same view: the live table is scanned at most once a
    /// second per distinct view, however many pages are open.
    pub(crate) snapshots: Mutex<BTreeMap<ViewKey, (Instant, Arc<String>)>>,
}

/// A dashboard view: English or not, and the session filter.
pub(crate) type ViewKey = (bool, String);

/// One open event stream's place; dropping it frees the place.
pub(crate) struct FeedSlot {
    pub(crate) feeds: Arc<Mutex<BTreeMap<String, usize>>>,
    pub(crate) user: String,
}

impl Ops {
    /// The dashboard's state, showing `gateway` (none: not attached).
    pub(crate) fn new(gateway: Option<RelayHandle>) -> Self {
        Self {
            gateway,
            history: Mutex::default(),
            bcp: Mutex::default(),
            members: Mutex::default(),
            remote: Mutex::default(),
            feeds: Arc::default(),
            snapshots: Mutex::default(),
        }
    }

    /// A place for one more stream of `user`, unless the caps are reached.
    pub(crate) fn open_feed(&self, user: &str) -> Option<FeedSlot> {
        let mut f = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = f.values().sum();
        let mine = f.get(user).copied().unwrap_or(0);
        if total >= MAX_FEEDS || mine >= MAX_FEEDS_PER_USER {
            return None;
        }
        *f.entry(user.to_owned()).or_insert(0) += 1;
        Some(FeedSlot {
            feeds: self.feeds.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        let mut f = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = f.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                f.remove(&self.user);
            }
        }
    }
}
