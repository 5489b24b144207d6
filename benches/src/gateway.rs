//! The real `kakehashi-gateway` binary, started as its own process (so its
//! RSS and CPU are its own) with a bench configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kakehashi_tests::Proc;

use crate::pki::PkiFiles;

/// Listener addresses of a running gateway.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// Terminal QUIC.
    pub terminal_quic: SocketAddr,
    /// Terminal TCP.
    pub terminal_tcp: SocketAddr,
    /// Agent QUIC.
    pub agent_quic: SocketAddr,
    /// Agent TCP.
    pub agent_tcp: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

/// Gateway settings a bench chooses.
#[derive(Debug, Clone)]
pub struct GatewayOpts {
    /// Session cap.
    pub max_sessions: usize,
    /// Connection cap per listener pair.
    pub max_connections: usize,
    /// `RUST_LOG` of the gateway.
    pub log: String,
    /// Fixed addresses (a restart); ephemeral when `None`.
    pub addrs: Option<Addrs>,
    /// A seeded SQLite store (see [`crate::seed`]): logins required and
    /// every session admitted by the policy. `None`: a bare relay.
    pub store: Option<PathBuf>,
    /// `[relay.limits] memory_budget_mib`: the budget of bytes in flight.
    /// Rows that do not measure it set [`NO_BUDGET`].
    pub memory_budget_mib: u64,
    /// `[relay.limits] busy_delay` in ms (0: the rule off); `None`: the
    /// shipped default. Rows that do not measure it set `Some(0)`.
    pub busy_delay_ms: Option<u64>,
    /// `[relay.limits] busy_cpu_percent` (0: the rule off); `None`: the
    /// shipped default. Rows that do not measure it set `Some(0)`.
    pub busy_cpu_percent: Option<u32>,
    /// `[relay.limits] agent_return_rate`; `None`: the shipped default.
    pub agent_return_rate: Option<u32>,
}

/// A budget of bytes in flight no bench reaches (1 TiB), for the rows that
/// measure something else.
pub const NO_BUDGET: u64 = 1 << 20;

/// A running gateway.
pub struct Gateway {
    /// The process (killed on drop).
    pub proc: Proc,
    /// Its listeners.
    pub addrs: Addrs,
    /// Its configuration file.
    pub config: PathBuf,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// The configuration file text. Production defaults for timeouts and
/// keepalives. Without a store, logins off and no policy (a bare relay:
/// the bench measures the relay); with one, the production admission path.
pub fn config_text(pki: &PkiFiles, o: &GatewayOpts) -> String {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let a = o.addrs;
    let admission = match &o.store {
        Some(db) => format!(
            "[store]\nurl = \"sqlite://{}\"\n[identity]\nrequire_login = true\n",
            db.display()
        ),
        None => {
            // The simulated desks echo: every desk counts as non-RDP.
            "[identity]\nrequire_login = false\n[testing]\nrelay_without_policy = true\nnon_rdp_desks = true\n".into()
        }
    };
    format!(
        r#"name = "bench-gateway"
[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
crl = "{crl}"
ticket_key = "{ticket}"
[relay.terminals]
quic = "{tq}"
tcp = "{tt}"
max_connections = {maxc}
[relay.agents]
quic = "{aq}"
tcp = "{at}"
max_connections = {maxc}
[relay.limits]
max_sessions = {maxs}
memory_budget_mib = {budget}
{busy_delay}shutdown_grace = "1s"
[admin]
listen = "{admin}"
{admission}"#,
        ca = pki.ca.display(),
        cert = pki.gateway_cert.display(),
        key = pki.gateway_key.display(),
        crl = pki.crl.display(),
        ticket = pki.ticket_key.display(),
        tq = a.map_or(any, |a| a.terminal_quic),
        tt = a.map_or(any, |a| a.terminal_tcp),
        aq = a.map_or(any, |a| a.agent_quic),
        at = a.map_or(any, |a| a.agent_tcp),
        admin = a.map_or(any, |a| a.admin),
        maxc = o.max_connections,
        maxs = o.max_sessions,
        budget = o.memory_budget_mib,
        busy_delay = o
            .busy_delay_ms
            .map_or_else(String::new, |ms| format!("busy_delay = \"{ms}ms\"\n"))
            + &o.busy_cpu_percent
                .map_or_else(String::new, |p| format!("busy_cpu_percent = {p}\n"))
            + &o.agent_return_rate
                .map_or_else(String::new, |r| format!("agent_return_rate = {r}\n")),
    )
}

/// Path of a workspace binary next to the running one.
pub fn sibling_bin(name: &str) -> PathBuf {
    kakehashi_tests::bin(name)
}

/// Start `kakehashi-gateway run --config …` in `work` and wait for its listeners.
pub async fn start(pki: &PkiFiles, o: &GatewayOpts, work: &Path) -> anyhow::Result<Gateway> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let config = work.join(format!("gateway-{n}.toml"));
    std::fs::write(&config, config_text(pki, o))?;
    let gw_bin = sibling_bin("kakehashi-gateway");
    let mut args: Vec<String> = Vec::new();
    // KAKEHASHI_BENCH_WRAP="valgrind --tool=massif …" runs the gateway under a profiler.
    let wrap = std::env::var("KAKEHASHI_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace().map(String::from);
    let program = match words.next() {
        Some(w) => {
            args.extend(words);
            args.push(gw_bin.display().to_string());
            PathBuf::from(w)
        }
        None => gw_bin,
    };
    args.extend([
        "run".into(),
        "--config".into(),
        config.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = Proc::spawn(
        &program,
        &args,
        work.join(format!("gateway-{n}.log")),
        &[("RUST_LOG", o.log.as_str())],
    );
    let mut get = async |what: &str| -> anyhow::Result<SocketAddr> {
        Ok(proc
            .wait_line(&format!("listening {what} "), Duration::from_secs(20))
            .await?
            .parse()?)
    };
    let addrs = Addrs {
        terminal_quic: get("terminal-quic").await?,
        terminal_tcp: get("terminal-tcp").await?,
        agent_quic: get("agent-quic").await?,
        agent_tcp: get("agent-tcp").await?,
        admin: get("admin").await?,
    };
    Ok(Gateway {
        proc,
        addrs,
        config,
    })
}
