//! Network namespaces for cluster tests: each gateway on a host of its own
//! (its own addresses, its own loopback, its own kernel sockets), joined to
//! this host by a veth pair on a bridge. The test process stays in the host
//! namespace, where PostgreSQL, the agents and the laptops run.
//!
//! Layout, for the `/24` chosen at creation (`10.213.X.0/24`, X free on this
//! host, taken under a lock so parallel test processes differ):
//!
//! ```text
//! host:  bridge khb<pid>  10.213.X.1/24   (PostgreSQL listens here)
//! ns i:  kh-<pid>-<i>, veth khp<pid>-<i>  10.213.X.(10+i)/24, lo up,
//!        default route via 10.213.X.1
//! ```
//!
//! Everything is deleted on drop (also when the test panics); namespaces
//! and bridges left by a test process that was killed are deleted by the
//! next one to start (their pid is gone).

use std::net::Ipv4Addr;
use std::process::Command;

/// First octets of the test networks.
const PREFIX: [u8; 2] = [10, 213];

/// Network namespaces of one test, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    subnet: u8,
    bridge: String,
    names: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes the namespaces and bridges of test processes that no longer
/// run (killed before their drop ran).
fn reap_stale() {
    let alive = |pid: &str| std::path::Path::new(&format!("/proc/{pid}")).exists();
    for line in ip_out(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(pid) = name.strip_prefix("kh-").and_then(|r| r.split('-').next()) {
            if !alive(pid) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    for line in ip_out(&["-o", "link", "show", "type", "bridge"]).lines() {
        let name = line.split(':').nth(1).unwrap_or("").trim();
        if let Some(pid) = name.strip_prefix("khb") {
            if pid.bytes().all(|b| b.is_ascii_digit()) && !alive(pid) {
                let _ = Command::new("ip").args(["link", "del", name]).status();
            }
        }
    }
}

impl Netns {
    /// A bridge on this host and `n` namespaces on it.
    pub fn new(n: usize) -> Self {
        // One test process at a time chooses its network and makes its bridge.
        let lock = std::fs::File::create("/tmp/kakehashi-netns.lock").expect("lock file");
        lock.lock().expect("lock");
        reap_stale();
        let pid = std::process::id();
        let used = ip_out(&["-o", "-4", "addr", "show"]);
        let subnet = (0..250u32)
            .map(|k| ((pid + k) % 250 + 1) as u8)
            .find(|x| !used.contains(&format!(" {}.{}.{x}.", PREFIX[0], PREFIX[1])))
            .expect("a free 10.213.X.0/24");
        let mut me = Self {
            subnet,
            bridge: format!("khb{pid}"),
            names: Vec::new(),
        };
        ip(&["link", "add", &me.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", me.host()),
            "dev",
            &me.bridge,
        ]);
        ip(&["link", "set", &me.bridge, "up"]);
        drop(lock);
        for _ in 0..n {
            me.add();
        }
        me
    }

    /// Adds a namespace; returns its index.
    pub fn add(&mut self) -> usize {
        let i = self.names.len();
        assert!(i < 200, "too many namespaces");
        let pid = std::process::id();
        let ns = format!("kh-{pid}-{i}");
        let (outside, inside) = (format!("khv{pid}-{i}"), format!("khp{pid}-{i}"));
        ip(&["netns", "add", &ns]);
        self.names.push(ns.clone());
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &ns]);
        ip(&["link", "set", &outside, "master", &self.bridge, "up"]);
        let addr = format!("{}/24", self.addr(i));
        ip(&["-n", &ns, "addr", "add", &addr, "dev", &inside]);
        ip(&["-n", &ns, "link", "set", &inside, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let host = self.host().to_string();
        ip(&["-n", &ns, "route", "add", "default", "via", &host]);
        i
    }

    /// This host's address on the bridge.
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::new(PREFIX[0], PREFIX[1], self.subnet, 1)
    }

    /// The network, as CIDR (for PostgreSQL's `pg_hba.conf`).
    pub fn cidr(&self) -> String {
        format!("{}.{}.{}.0/24", PREFIX[0], PREFIX[1], self.subnet)
    }

    /// Namespace `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(PREFIX[0], PREFIX[1], self.subnet, 10 + i as u8)
    }

    /// The addresses namespaces `0..n` will have (for certificates made
    /// before they are).
    pub fn addrs(&self, n: usize) -> Vec<std::net::IpAddr> {
        (0..n).map(|i| self.addr(i).into()).collect()
    }

    /// Namespace `i`'s name (for `ip netns exec`).
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and so the pair.
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}
