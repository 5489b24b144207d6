//! The gateways an agent dials beyond its configured ones.
//!
//! The configured gateways (`[[gateways]]`) are the bootstrap: they are
//! always dialled. Each gateway sends the cluster's signed member list over
//! the tunnel ([`kakehashi_proto::members`]); once verified, every live
//! member the agent does not already reach through a configured entry (same
//! TCP address, or the same gateway name in a configured tunnel's welcome)
//! gets a dial loop of its own, and a member that leaves the list is
//! drained: its tunnel closes once the sessions it carries end (a member
//! whose membership lapsed while it was alive — cut off from the database —
//! still carries them; cutting them would end desktops for a database
//! outage), and it is not dialled again; back in the list before that, it
//! is kept. New dials are spread: each starts
//! after a short random delay, and at least [`DIAL_SPACING`] after the
//! previous new one, so a list of many new members (or many agents learning
//! the same list) does not dial all at once.
//!
//! [`Fleet`] is the bookkeeping alone, with the clock passed in; the agent's
//! run loop feeds it [`Event`]s and starts and stops the loops it returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kakehashi_proto::members::{ListedMember, MemberList};
use kakehashi_transport::TransportChoice;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::GatewayTarget;

/// The least time between two new dials of learned members.
pub const DIAL_SPACING: Duration = Duration::from_secs(1);

/// Which dial loop a tunnel belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The `[[gateways]]` entry at this index.
    Configured(usize),
    /// A member learned from a list, by its id.
    Learned(String),
}

/// What a tunnel tells the run loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// A tunnel was welcomed by the gateway named `id`.
    Welcomed {
        /// The loop it belongs to.
        origin: Origin,
        /// The gateway's name.
        id: String,
    },
    /// A member list that verified (signature, expiry, version).
    List(MemberList),
}

/// A dial loop to start for a learned member.
#[derive(Debug)]
pub(crate) struct Start {
    /// The member's id.
    pub(crate) id: String,
    /// Where to dial it.
    pub(crate) target: GatewayTarget,
    /// How long to wait before the first dial.
    pub(crate) delay: Duration,
    /// Cancelled when the member's addresses change, or the agent stops.
    pub(crate) stop: CancellationToken,
    /// `true` while the member is out of the list: the loop closes its
    /// tunnel once no session is left on it, and does not dial again.
    pub(crate) drain: watch::Receiver<bool>,
    /// Set by the loop when it ends (so a member back in the list later is
    /// dialled anew).
    pub(crate) ended: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Learned {
    member: ListedMember,
    stop: CancellationToken,
    drain: watch::Sender<bool>,
    ended: Arc<AtomicBool>,
}

impl Learned {
    fn draining(&self) -> bool {
        *self.drain.borrow()
    }
}

/// The learned members and their loops.
#[derive(Debug)]
pub(crate) struct Fleet {
    /// TCP addresses of the configured gateways.
    configured_addrs: HashSet<String>,
    /// Names of the configured gateways, from their welcomes.
    configured_ids: HashMap<usize, String>,
    /// The transport learned members are dialled on (the first configured
    /// gateway's: the same network path).
    transport: TransportChoice,
    learned: BTreeMap<String, Learned>,
    last: Option<MemberList>,
    /// No new dial before this.
    next_dial: Option<Instant>,
}

impl Fleet {
    /// A fleet of no learned members, beside the configured `gateways`.
    pub(crate) fn new(gateways: &[GatewayTarget]) -> Self {
        Self {
            configured_addrs: gateways.iter().map(|g| g.tcp.clone()).collect(),
            configured_ids: HashMap::new(),
            transport: gateways
                .first()
                .map_or(TransportChoice::Auto, |g| g.transport),
            learned: BTreeMap::new(),
            last: None,
            next_dial: None,
        }
    }

    /// Members learned now, by id.
    #[cfg(test)]
    fn learned(&self) -> Vec<&str> {
        self.learned.keys().map(String::as_str).collect()
    }

    /// Take `event` at `now`; `jitter` is a random delay for new dials.
    /// Stops the loops of members no longer wanted (cancelling their token)
    /// and returns the loops to start, each `stop` a child of `parent`.
    pub(crate) fn apply(
        &mut self,
        event: Event,
        now: Instant,
        jitter: Duration,
        parent: &CancellationToken,
    ) -> Vec<Start> {
        match event {
            Event::Welcomed {
                origin: Origin::Configured(i),
                id,
            } => {
                if self.configured_ids.get(&i) == Some(&id) {
                    return Vec::new();
                }
                self.configured_ids.insert(i, id);
            }
            Event::Welcomed {
                origin: Origin::Learned(expected),
                id,
            } => {
                if expected != id {
                    debug!(member = %expected, gateway_name = %id, "A listed member answers under another name");
                }
                return Vec::new();
            }
            Event::List(list) => self.last = Some(list),
        }
        self.reconcile(now, jitter, parent)
    }

    /// The members of the last list the configured gateways do not cover.
    fn wanted(&self) -> BTreeMap<String, ListedMember> {
        let Some(list) = &self.last else {
            return BTreeMap::new();
        };
        let configured_ids: HashSet<&str> =
            self.configured_ids.values().map(String::as_str).collect();
        list.members
            .iter()
            .filter(|m| {
                !self.configured_addrs.contains(&m.tcp) && !configured_ids.contains(m.id.as_str())
            })
            .map(|m| (m.id.clone(), m.clone()))
            .collect()
    }

    fn reconcile(
        &mut self,
        now: Instant,
        jitter: Duration,
        parent: &CancellationToken,
    ) -> Vec<Start> {
        let wanted = self.wanted();
        // Loops that ended (drained, or stopped) are forgotten.
        self.learned.retain(|_, l| !l.ended.load(Ordering::SeqCst));
        let mut gone = Vec::new();
        for (id, l) in &self.learned {
            match wanted.get(id) {
                Some(m) if *m == l.member => {
                    if l.draining() {
                        info!(member = %id, "Cluster member back in the member list: keeping its tunnel");
                        let _ = l.drain.send(false);
                    }
                }
                Some(_) => gone.push((id.clone(), "its addresses changed")),
                None if self
                    .last
                    .as_ref()
                    .is_some_and(|list| list.members.iter().any(|m| m.id == *id)) =>
                {
                    gone.push((id.clone(), "reached through a configured gateway"))
                }
                None => {
                    if !l.draining() {
                        info!(member = %id, address = %l.member.tcp, "Cluster member no longer in the member list: closing its tunnel once its sessions end");
                        let _ = l.drain.send(true);
                    }
                }
            }
        }
        for (id, why) in gone {
            if let Some(l) = self.learned.remove(&id) {
                l.stop.cancel();
                info!(member = %id, address = %l.member.tcp, why, "Cluster member dropped: closing its tunnel");
            }
        }
        let mut starts = Vec::new();
        for (id, member) in wanted {
            if self.learned.contains_key(&id) {
                continue;
            }
            let at = match self.next_dial {
                Some(next) if next > now + jitter => next,
                _ => now + jitter,
            };
            self.next_dial = Some(at + DIAL_SPACING);
            let delay = at - now;
            let stop = parent.child_token();
            let (drain, drain_rx) = watch::channel(false);
            let ended = Arc::new(AtomicBool::new(false));
            let target = GatewayTarget {
                tcp: member.tcp.clone(),
                quic: member.quic.clone(),
                server_name: member.server_name.clone(),
                transport: self.transport,
            };
            info!(
                member = %id,
                address = %member.tcp,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "Cluster member added: dialling it"
            );
            self.learned.insert(
                id.clone(),
                Learned {
                    member,
                    stop: stop.clone(),
                    drain,
                    ended: ended.clone(),
                },
            );
            starts.push(Start {
                id,
                target,
                delay,
                stop,
                drain: drain_rx,
                ended,
            });
        }
        starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_proto::members::MEMBER_LIST_FORMAT;

    fn configured(port: u16) -> GatewayTarget {
        GatewayTarget {
            tcp: format!("127.0.0.1:{port}"),
            quic: format!("127.0.0.1:{}", port + 1),
            server_name: "localhost".into(),
            transport: TransportChoice::Tcp,
        }
    }

    fn member(id: &str, port: u16) -> ListedMember {
        ListedMember {
            id: id.into(),
            tcp: format!("127.0.0.1:{port}"),
            quic: format!("127.0.0.1:{}", port + 1),
            server_name: "127.0.0.1".into(),
        }
    }

    fn list(version: u64, members: Vec<ListedMember>) -> Event {
        Event::List(MemberList {
            v: MEMBER_LIST_FORMAT,
            version,
            gateway: "gw1".into(),
            issued_at: 0,
            expires_at: 60,
            members,
        })
    }

    #[test]
    fn new_members_are_dialled_spaced_and_leavers_are_dropped() {
        let parent = CancellationToken::new();
        let mut f = Fleet::new(&[configured(9000)]);
        let t0 = Instant::now();
        let jitter = Duration::from_millis(300);
        // gw1 is the configured gateway (same address): not dialled twice.
        let starts = f.apply(
            list(
                1,
                vec![
                    member("gw1", 9000),
                    member("gw2", 9100),
                    member("gw3", 9200),
                ],
            ),
            t0,
            jitter,
            &parent,
        );
        let ids: Vec<&str> = starts.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["gw2", "gw3"]);
        assert_eq!(starts[0].delay, jitter);
        assert_eq!(starts[1].delay, jitter + DIAL_SPACING);
        assert_eq!(starts[0].target.transport, TransportChoice::Tcp);
        assert_eq!(starts[0].target.server_name, "127.0.0.1");
        // The same list again starts nothing.
        assert!(f
            .apply(
                list(
                    2,
                    vec![
                        member("gw1", 9000),
                        member("gw2", 9100),
                        member("gw3", 9200)
                    ]
                ),
                t0,
                jitter,
                &parent
            )
            .is_empty());
        // A fourth joins right after: spaced after the last new dial.
        let starts = f.apply(
            list(
                3,
                vec![
                    member("gw1", 9000),
                    member("gw2", 9100),
                    member("gw3", 9200),
                    member("gw4", 9300),
                ],
            ),
            t0 + Duration::from_millis(100),
            Duration::ZERO,
            &parent,
        );
        assert_eq!(starts.len(), 1);
        assert_eq!(
            starts[0].delay,
            jitter + 2 * DIAL_SPACING - Duration::from_millis(100)
        );
        // gw3 leaves: its loop drains (closes once its sessions end), the
        // others go on.
        let gw3 = f.learned.get("gw3").unwrap().stop.clone();
        let gw4 = starts[0].stop.clone();
        let gw3_drain = f.learned.get("gw3").unwrap().drain.subscribe();
        let gw3_ended = f.learned.get("gw3").unwrap().ended.clone();
        assert!(f
            .apply(
                list(
                    4,
                    vec![
                        member("gw1", 9000),
                        member("gw2", 9100),
                        member("gw4", 9300)
                    ]
                ),
                t0 + Duration::from_secs(10),
                jitter,
                &parent
            )
            .is_empty());
        assert!(*gw3_drain.borrow() && !gw3.is_cancelled() && !gw4.is_cancelled());
        assert_eq!(f.learned(), ["gw2", "gw3", "gw4"]);
        // Back in the list while it drains: kept, not dialled again.
        let back = vec![
            member("gw2", 9100),
            member("gw3", 9200),
            member("gw4", 9300),
        ];
        assert!(f
            .apply(list(5, back), t0 + Duration::from_secs(11), jitter, &parent)
            .is_empty());
        assert!(!*gw3_drain.borrow());
        // Out again, and its loop ends (no session left): forgotten, so a
        // later list with it dials it anew.
        let without = vec![member("gw2", 9100), member("gw4", 9300)];
        f.apply(
            list(6, without.clone()),
            t0 + Duration::from_secs(12),
            jitter,
            &parent,
        );
        assert!(*gw3_drain.borrow());
        gw3_ended.store(true, Ordering::SeqCst);
        f.apply(
            list(7, without),
            t0 + Duration::from_secs(13),
            jitter,
            &parent,
        );
        assert_eq!(f.learned(), ["gw2", "gw4"]);
        // Long after, a new member is dialled after its jitter alone.
        let starts = f.apply(
            list(
                8,
                vec![
                    member("gw2", 9100),
                    member("gw4", 9300),
                    member("gw5", 9400),
                ],
            ),
            t0 + Duration::from_secs(60),
            jitter,
            &parent,
        );
        assert_eq!(starts.len(), 1);
        assert_eq!(starts[0].delay, jitter);
        // Stopping the agent stops every learned loop.
        parent.cancel();
        assert!(starts[0].stop.is_cancelled());
    }

    #[test]
    fn a_configured_gateway_known_by_name_is_not_dialled_twice() {
        let parent = CancellationToken::new();
        // Configured by a DNS name; the list gives its IP address.
        let mut cfg = configured(9000);
        cfg.tcp = "gw1.example.lg.jp:8443".into();
        let mut f = Fleet::new(&[cfg]);
        let t0 = Instant::now();
        let starts = f.apply(
            list(1, vec![member("gw1", 9000), member("gw2", 9100)]),
            t0,
            Duration::ZERO,
            &parent,
        );
        // Before its welcome, gw1 looks like any member.
        assert_eq!(starts.len(), 2);
        let gw1 = starts[0].stop.clone();
        // Its welcome names it: the learned loop to it stops.
        let starts = f.apply(
            Event::Welcomed {
                origin: Origin::Configured(0),
                id: "gw1".into(),
            },
            t0,
            Duration::ZERO,
            &parent,
        );
        assert!(starts.is_empty());
        assert!(gw1.is_cancelled());
        assert_eq!(f.learned(), ["gw2"]);
        // A member whose addresses change is dialled anew.
        let old = f.learned.get("gw2").unwrap().stop.clone();
        let starts = f.apply(
            list(2, vec![member("gw1", 9000), member("gw2", 9500)]),
            t0 + Duration::from_secs(5),
            Duration::ZERO,
            &parent,
        );
        assert!(old.is_cancelled());
        assert_eq!(starts.len(), 1);
        assert_eq!(starts[0].target.tcp, "127.0.0.1:9500");
    }
}
