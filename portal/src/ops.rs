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
