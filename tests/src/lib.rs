//! Shared helpers for the end-to-end tests: a throw-away PKI, and the real
//! `kakehashi-gateway`, `kakehashi-agent` and `kakehashi` binaries started on
//! ephemeral loopback ports and killed when dropped.
//!
//! The binaries are found next to the test executable's `deps/` directory;
//! the test command builds them first (`cargo build --bins`).

#![allow(missing_debug_implementations)]

pub mod browser;
pub mod cluster;
pub mod doctest;
pub mod netns;
/// A throwaway PostgreSQL server (the store's test fixture, shared).
#[path = "../../store/tests/support/pg.rs"]
pub mod pg;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use kakehashi_pki::{CaDir, InitOptions, IssueRequest, Subject, TerminalClass, Validity};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// Path of a workspace binary built alongside the tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-hash (tests) or target/<profile>/x (bench binaries)
    let mut dir = exe.parent().expect("target dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target dir");
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` before the tests (the test command does)",
        p.display()
    );
    p
}

/// A throw-away CA in a temporary directory.
pub struct Pki {
    /// The temp dir holding everything of this test.
    pub dir: tempfile::TempDir,
    /// The CA.
    pub ca: CaDir,
}

/// Certificate and key files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// Certificate.
    pub cert: PathBuf,
    /// Key.
    pub key: PathBuf,
    /// Serial (hex).
    pub serial: String,
}

impl Pki {
    /// A new CA with a gateway certificate for localhost / 127.0.0.1.
    pub fn new() -> Self {
        Self::with_gateway_ips(&[])
    }

    /// [`Pki::new`] whose gateway certificate names `ips` too (gateways in
    /// network namespaces: agents check a learned member's address against
    /// the certificate).
    pub fn with_gateway_ips(ips: &[std::net::IpAddr]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CaDir::init(&dir.path().join("pki"), &InitOptions::default()).expect("ca init");
        let mut p = Self { dir, ca };
        let mut all = vec!["127.0.0.1".parse().unwrap()];
        all.extend_from_slice(ips);
        p.issue(
            Subject::Gateway {
                name: "localhost".into(),
                ips: all,
            },
            None,
        );
        p.ca.write_crl().expect("crl");
        p
    }

    /// Root of this test's files.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Issue a certificate.
    pub fn issue(&mut self, subject: Subject, validity: Option<Validity>) -> CertFiles {
        let mut req = IssueRequest::new(subject);
        req.validity = validity;
        let i = self.ca.issue(&req).expect("issue");
        CertFiles {
            cert: i.cert_path,
            key: i.key_path,
            serial: i.serial,
        }
    }

    /// Gateway certificate files (issued by [`Pki::new`]).
    pub fn gateway_cert(&self) -> CertFiles {
        let d = self.ca.dir();
        let r = self
            .ca
            .records()
            .iter()
            .find(|r| r.kind == "gateway")
            .expect("gateway cert");
        CertFiles {
            cert: d.join("gateway-localhost.crt"),
            key: d.join("gateway-localhost.key"),
            serial: r.serial.clone(),
        }
    }

    /// An agent certificate for `desk`.
    pub fn agent(&mut self, desk: &str) -> CertFiles {
        self.issue(Subject::Agent { desk: desk.into() }, None)
    }

    /// A device certificate for a laptop shared by a team (no `--user`):
    /// anyone may log in on it.
    pub fn device(&mut self, id: &str, class: TerminalClass) -> CertFiles {
        self.issue(
            Subject::Device {
                id: id.into(),
                class,
                user: None,
            },
            None,
        )
    }

    /// A device certificate for a personal laptop lent to `user`
    /// (`kakehashi-pki issue device --user`): only `user` may log in on it.
    pub fn personal_device(&mut self, id: &str, class: TerminalClass, user: &str) -> CertFiles {
        self.issue(
            Subject::Device {
                id: id.into(),
                class,
                user: Some(user.into()),
            },
            None,
        )
    }

    /// A device certificate that expired yesterday.
    pub fn expired_device(&mut self, id: &str) -> CertFiles {
        let now = time::OffsetDateTime::now_utc();
        self.issue(
            Subject::Device {
                id: id.into(),
                class: TerminalClass::Home,
                user: None,
            },
            Some(Validity::Explicit {
                not_before: now - time::Duration::days(30),
                not_after: now - time::Duration::days(1),
            }),
        )
    }

    /// Revoke a serial and rewrite the CRL.
    pub fn revoke(&mut self, serial: &str) {
        self.ca
            .revoke(serial, kakehashi_pki::RevokeReason::KeyCompromise)
            .expect("revoke");
        self.ca.write_crl().expect("crl");
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A command for a test to run: its process is killed when its `Child` (or
/// the future of its `output()`) is dropped, and when this test process
/// dies, even by SIGKILL (a harness timeout), so no test leaves a process
/// behind. Spawn it from the test's own thread or runtime, never from
/// `spawn_blocking` (see `kakehashi_child`). A program that starts programs
/// of its own must make them die with it (the demo does; the scripts in
/// `tests/rdp/` use `setpriv --pdeathsig`).
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    kakehashi_child::die_with_parent(cmd.as_std_mut());
    cmd.kill_on_drop(true);
    cmd
}

/// A child process killed on drop, with its standard output collected.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Lines it printed on stdout so far.
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// Where its stderr (logs) goes.
    pub log: PathBuf,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Dropped while running: SIGTERM first ([`Proc::terminate_on_drop`]).
    term_first: bool,
}

impl Drop for Proc {
    /// The kill on drop ends the process itself; a process set to
    /// [`Proc::terminate_on_drop`] first gets SIGTERM and up to 10 s to stop
    /// what it started, so a test that fails half-way leaves nothing behind.
    fn drop(&mut self) {
        if !self.term_first || !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        self.terminate();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Proc {
    /// Start `program args…`, stderr to `log`.
    pub fn spawn(program: &Path, args: &[&str], log: PathBuf, envs: &[(&str, &str)]) -> Self {
        let err = std::fs::File::create(&log).expect("log file");
        let mut cmd = command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        cmd.env(
            "RUST_LOG",
            std::env::var("KAKEHASHI_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let out = child.stdout.take().expect("stdout");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let store = stdout.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                store.lock().unwrap().push(l.clone());
                let _ = tx.send(l);
            }
        });
        Self {
            child,
            stdout,
            log,
            lines,
            term_first: false,
        }
    }

    /// Wait for a stdout line starting with `prefix`; returns the rest of it.
    pub async fn wait_line(&mut self, prefix: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Ok(None) => bail!(
                    "process exited before printing {prefix:?}; log:\n{}",
                    self.log_text()
                ),
                Err(_) => bail!(
                    "no {prefix:?} line within {within:?}; log:\n{}",
                    self.log_text()
                ),
            }
        }
    }

    /// Everything logged to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// [`Proc::log_text`] without its colour codes (the binaries log in
    /// colour), so that a field reads `name=value`.
    pub fn plain_log(&self) -> String {
        plain(&self.log_text())
    }

    /// Wait for the log to contain `needle`.
    pub async fn wait_log(&self, needle: &str, within: Duration) -> anyhow::Result<()> {
        wait_file(&self.log, needle, 1, within).await
    }

    /// Wait for the process to exit; returns its status.
    pub async fn wait_exit(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        Ok(tokio::time::timeout(within, self.child.wait())
            .await
            .map_err(|_| anyhow!("process still running"))??)
    }

    /// When dropped while running, send SIGTERM and wait up to 10 s before
    /// the kill: for a script whose EXIT trap stops servers and sessions that
    /// would survive a SIGKILL of the script (`tests/rdp/xrdp-peer.sh`).
    pub fn terminate_on_drop(mut self) -> Self {
        self.term_first = true;
        self
    }

    /// Kill now.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Send SIGTERM (graceful stop).
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

/// Wait until the file at `path` (a log) contains `needle` at least `times` times.
pub async fn wait_file(
    path: &Path,
    needle: &str,
    times: usize,
    within: Duration,
) -> anyhow::Result<()> {
    let text = || std::fs::read_to_string(path).unwrap_or_default();
    let start = Instant::now();
    while start.elapsed() < within {
        if text().matches(needle).count() >= times {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} never contained {needle:?} {times} time(s):\n{}",
        path.display(),
        text()
    )
}

/// Listener addresses of a running gateway.
#[derive(Debug, Clone, Copy)]
pub struct GatewayAddrs {
    /// Terminal QUIC.
    pub terminal_quic: SocketAddr,
    /// Terminal TCP.
    pub terminal_tcp: SocketAddr,
    /// Agent QUIC.
    pub agent_quic: SocketAddr,
    /// Agent TCP.
    pub agent_tcp: SocketAddr,
    /// Admin listener (`/metrics`).
    pub admin: SocketAddr,
}

/// Options for a test gateway.
#[derive(Debug, Clone, Default)]
pub struct GatewayOpts {
    /// Fixed addresses (for restart tests); ephemeral when `None`.
    pub addrs: Option<GatewayAddrs>,
    /// Session cap.
    pub max_sessions: Option<usize>,
    /// Extra `[relay.limits]` lines.
    pub limits: String,
    /// Terminal connection cap.
    pub terminal_max_connections: Option<usize>,
    /// Extra `[relay.terminals]` lines (e.g. `handshakes_per_source = 10`).
    pub terminals_extra: String,
    /// `[identity]`/`[store]`/`[portal]` sections; default: no login required.
    pub identity: Option<String>,
    /// Run with `--log-json` (logs and the `listening` lines as JSON).
    pub log_json: bool,
    /// Session controls for every ticket of a bare relay (no `identity`:
    /// `[testing] controls = …`, a TOML inline table such as
    /// `{ clipboard = "both" }`); default: deny all. With a store the policy
    /// decides.
    pub controls: Option<String>,
    /// The gateway's `name` (its cluster member id); default `test-gateway`.
    pub name: Option<String>,
    /// Lines of `[relay]` itself (e.g. `proxy_protocol_from = ["127.0.0.1"]`).
    pub relay: String,
    /// Run with the shipped `keepalive` and `idle_timeout` (1 s / 4 s)
    /// instead of the tests' 2 s / 8 s, which leave a raw test agent that
    /// never answers a ping its tunnel for longer.
    pub shipped_keepalive: bool,
    /// Run inside this network namespace (`ip netns exec NS …`, which
    /// execs: the process is the gateway itself); `addrs` then names the
    /// namespace's address, port 0 for ephemeral ports.
    pub netns: Option<String>,
}

/// A running `kakehashi-gateway run`.
pub struct GatewayProc {
    /// The process.
    pub proc: Proc,
    /// Its listeners.
    pub addrs: GatewayAddrs,
    /// Its configuration file (for `kakehashi-gateway admin --config …`).
    pub config: PathBuf,
}

/// Start a gateway for `pki`.
pub async fn start_gateway(pki: &Pki, opts: GatewayOpts) -> GatewayProc {
    let g = pki.gateway_cert();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let a = opts.addrs;
    // The rules on the gateway's load are off unless a test sets them:
    // this 2-core machine runs a suite's gateways, agents and browsers at
    // once, and a refusal for its load would be a false failure. The rules
    // have their own tests (refusals.rs, relay/src/load.rs); the demo's
    // gateways run with the shipped defaults.
    let mut limits = opts.limits;
    for (key, off) in [("busy_delay", "\"0s\""), ("busy_cpu_percent", "0")] {
        if !limits.contains(key) {
            limits = format!("{key} = {off}\n{limits}");
        }
    }
    let cfg = format!(
        r#"name = "{name}"
[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
crl = "{crl}"
ticket_key = "{ticket}"
[relay]
{relay}
[relay.terminals]
quic = "{tq}"
tcp = "{tt}"
max_connections = {tmax}
{terminals_extra}
[relay.agents]
quic = "{aq}"
tcp = "{at}"
[relay.limits]
max_sessions = {max}
handshake_timeout = "5s"
{keepalive}
shutdown_grace = "2s"
{extra}
[admin]
listen = "{admin}"
{identity}
{testing}
"#,
        name = opts.name.as_deref().unwrap_or("test-gateway"),
        ca = pki.ca.ca_cert_path().display(),
        cert = g.cert.display(),
        key = g.key.display(),
        crl = pki.ca.crl_path().display(),
        ticket = pki.ca.ticket_key_path().display(),
        tq = a.map_or(any, |a| a.terminal_quic),
        tt = a.map_or(any, |a| a.terminal_tcp),
        aq = a.map_or(any, |a| a.agent_quic),
        at = a.map_or(any, |a| a.agent_tcp),
        max = opts.max_sessions.unwrap_or(10_000),
        tmax = opts.terminal_max_connections.unwrap_or(10_000),
        terminals_extra = opts.terminals_extra,
        relay = opts.relay,
        extra = limits,
        keepalive = if opts.shipped_keepalive {
            ""
        } else {
            "keepalive = \"2s\"\nidle_timeout = \"8s\""
        },
        admin = a.map_or(any, |a| a.admin),
        identity = opts
            .identity
            .clone()
            .unwrap_or_else(|| "[identity]\nrequire_login = false\n".into()),
        // No store: a bare relay (no users, desks or policy) for transport tests.
        testing = match (&opts.identity, &opts.controls) {
            (Some(_), _) => String::new(),
            // No desk registry either: every desk counts as non-RDP, so the
            // pass-through agents of transport tests are reached.
            (None, Some(c)) => format!(
                "[testing]\nrelay_without_policy = true\nnon_rdp_desks = true\ncontrols = {c}\n"
            ),
            (None, None) => "[testing]\nrelay_without_policy = true\nnon_rdp_desks = true\n".into(),
        },
    );
    let n = unique();
    let path = pki.path().join(format!("gateway-{n}.toml"));
    std::fs::write(&path, cfg).unwrap();
    let mut args = vec!["run", "--config", path.to_str().unwrap()];
    if opts.log_json {
        args.insert(0, "--log-json");
    }
    let gateway = bin("kakehashi-gateway");
    let log = pki.path().join(format!("gateway-{n}.log"));
    let mut proc = match &opts.netns {
        None => Proc::spawn(&gateway, &args, log, &[]),
        Some(ns) => {
            let mut wrapped = vec!["netns", "exec", ns.as_str(), gateway.to_str().unwrap()];
            wrapped.extend_from_slice(&args);
            Proc::spawn(Path::new("ip"), &wrapped, log, &[])
        }
    };
    let log_json = opts.log_json;
    let mut get = async |what: &str| -> SocketAddr {
        let prefix = if log_json {
            format!(r#"{{"listening":"{what}","address":""#)
        } else {
            format!("listening {what} ")
        };
        proc.wait_line(&prefix, Duration::from_secs(20))
            .await
            .unwrap()
            .trim_end_matches("\"}")
            .parse()
            .unwrap()
    };
    let terminal_quic = get("terminal-quic").await;
    let terminal_tcp = get("terminal-tcp").await;
    let agent_quic = get("agent-quic").await;
    let agent_tcp = get("agent-tcp").await;
    let admin = get("admin").await;
    GatewayProc {
        proc,
        config: path,
        addrs: GatewayAddrs {
            terminal_quic,
            terminal_tcp,
            agent_quic,
            agent_tcp,
            admin,
        },
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Start `kakehashi-agent run` for `desk` against `gw`, serving `target`.
pub fn start_agent(
    pki: &mut Pki,
    desk: &str,
    gw: &GatewayAddrs,
    target: SocketAddr,
    transport: &str,
) -> Proc {
    let files = pki.agent(desk);
    start_agent_with(pki, &files, gw, target, transport)
}

/// The agent's explicit pass-through switch: no RDP filter, and the gateway is
/// told the agent does not enforce controls. For the tests' echo desks, which
/// are registered as non-RDP ([`add_desk`]; a bare relay counts every desk so).
pub const PASS_THROUGH: &str = "[rdp]\nenforce = false\n";

/// Start an agent with given certificate files, passing sessions through
/// ([`PASS_THROUGH`]).
pub fn start_agent_with(
    pki: &Pki,
    files: &CertFiles,
    gw: &GatewayAddrs,
    target: SocketAddr,
    transport: &str,
) -> Proc {
    start_agent_extra(pki, files, gw, target, transport, PASS_THROUGH)
}

/// Start an agent for `desk` whose RDP filter holds the RDP server's `rdp`
/// certificate and key (`[rdp]`).
pub fn start_agent_rdp(
    pki: &mut Pki,
    desk: &str,
    gw: &GatewayAddrs,
    target: SocketAddr,
    transport: &str,
    rdp: &CertFiles,
) -> Proc {
    let files = pki.agent(desk);
    let extra = format!(
        "[rdp]\nserver_cert = \"{}\"\nserver_key = \"{}\"\n",
        rdp.cert.display(),
        rdp.key.display()
    );
    start_agent_extra(pki, &files, gw, target, transport, &extra)
}

/// Start an agent with extra configuration sections appended (an agent needs
/// an `[rdp]` section: [`PASS_THROUGH`] or the RDP server's key pair).
pub fn start_agent_extra(
    pki: &Pki,
    files: &CertFiles,
    gw: &GatewayAddrs,
    target: SocketAddr,
    transport: &str,
    extra: &str,
) -> Proc {
    let cfg = format!(
        r#"[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
crl = "{crl}"
[tickets]
public_keys = ["{pubkey}"]
[[gateways]]
address = "{tcp}"
quic_address = "{quic}"
server_name = "localhost"
transport = "{transport}"
[target]
address = "{target}"
[reconnect]
initial_delay = "100ms"
max_delay = "1s"
{extra}
"#,
        ca = pki.ca.ca_cert_path().display(),
        cert = files.cert.display(),
        key = files.key.display(),
        crl = pki.ca.crl_path().display(),
        pubkey = pki.ca.ticket_public_path().display(),
        tcp = gw.agent_tcp,
        quic = gw.agent_quic,
    );
    let n = unique();
    let path = pki.path().join(format!("agent-{n}.toml"));
    std::fs::write(&path, cfg).unwrap();
    Proc::spawn(
        &bin("kakehashi-agent"),
        &["run", "--config", path.to_str().unwrap()],
        pki.path().join(format!("agent-{n}.log")),
        &[],
    )
}

/// Write a client config for `device` pointing at `tcp` / `quic`.
pub fn client_config(pki: &Pki, device: &CertFiles, tcp: SocketAddr, quic: SocketAddr) -> PathBuf {
    let cfg = format!(
        r#"[gateway]
address = "{tcp}"
quic_address = "{quic}"
server_name = "localhost"
[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
"#,
        ca = pki.ca.ca_cert_path().display(),
        cert = device.cert.display(),
        key = device.key.display(),
    );
    let path = pki.path().join(format!("client-{}.toml", unique()));
    std::fs::write(&path, cfg).unwrap();
    path
}

/// A running `kakehashi connect`.
pub struct ClientProc {
    /// The process.
    pub proc: Proc,
    /// Its local listener.
    pub listen: SocketAddr,
    /// The `transport:` line.
    pub transport: String,
}

/// Start `kakehashi --config CFG connect DESK --transport T` and wait for its listener.
pub async fn start_client(
    pki: &Pki,
    config: &Path,
    desk: &str,
    transport: &str,
) -> anyhow::Result<ClientProc> {
    let n = unique();
    let mut proc = Proc::spawn(
        &bin("kakehashi"),
        &[
            "--config",
            config.to_str().unwrap(),
            "connect",
            desk,
            "--transport",
            transport,
        ],
        pki.path().join(format!("client-{n}.log")),
        &[],
    );
    let transport = proc
        .wait_line("transport: ", Duration::from_secs(20))
        .await?;
    let listen = proc
        .wait_line("listening on ", Duration::from_secs(5))
        .await?
        .parse()?;
    Ok(ClientProc {
        proc,
        listen,
        transport,
    })
}

/// An echo service on loopback (the stand-in desk).
pub async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Send `msg` through `addr`, close our side, and read everything back.
pub async fn roundtrip(addr: SocketAddr, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut back))
        .await
        .context("echo timed out")??;
    Ok(back)
}

/// Whether a session through `addr` was refused: the client closed (or
/// reset) the local connection without any byte from the desk.
pub async fn refused(addr: SocketAddr) -> bool {
    match roundtrip(addr, b"x").await {
        Ok(b) => b.is_empty(),
        Err(_) => true,
    }
}

/// Retry an echo through the client until the desk answers (its agent may
/// still be dialling in).
pub async fn wait_echo(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < within {
        match roundtrip(addr, b"ping").await {
            Ok(b) if b == b"ping" => return Ok(()),
            Ok(b) => last = format!("got {} bytes", b.len()),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("desk never answered through {addr} within {within:?} (last: {last})")
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Raw TLS-over-TCP connection to a gateway listener with the given
/// certificate, for tests that speak the protocol by hand.
pub async fn raw_tls(
    pki: &Pki,
    files: &CertFiles,
    addr: SocketAddr,
    alpn: &[u8],
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let cfg = tls_client(pki, files, alpn)?;
    kakehashi_transport::dial::tls_connect(
        &addr.to_string(),
        "localhost",
        cfg,
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .await
}

/// The TLS client configuration of laptop (or agent) `files`, trusting
/// `pki`'s CA and offering `alpn`.
pub fn tls_client(
    pki: &Pki,
    files: &CertFiles,
    alpn: &[u8],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let m = kakehashi_transport::tls::TlsFiles {
        ca: pki.ca.ca_cert_path(),
        cert: files.cert.clone(),
        key: files.key.clone(),
        crl: None,
    }
    .load()?;
    Ok(Arc::new(kakehashi_transport::tls::client_config(
        &m, None, alpn,
    )?))
}

/// Send one message as laptop `dev` on a fresh TLS connection to the
/// terminal listener at `terminal_tcp`; the stream (the session bytes follow
/// an accepted session on it) and the answer frame.
pub async fn ask_terminal<M: kakehashi_proto::message::Message>(
    pki: &Pki,
    dev: &CertFiles,
    terminal_tcp: SocketAddr,
    m: &M,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    kakehashi_proto::Frame,
) {
    let mut s = raw_tls(pki, dev, terminal_tcp, kakehashi_proto::ALPN_TERMINAL)
        .await
        .unwrap();
    kakehashi_proto::io::write_message(&mut s, m).await.unwrap();
    let f = tokio::time::timeout(
        Duration::from_secs(10),
        kakehashi_proto::io::read_frame(&mut s),
    )
    .await
    .expect("no answer from the gateway")
    .unwrap();
    (s, f)
}

/// Raw QUIC connection to a gateway listener.
pub async fn raw_quic(
    pki: &Pki,
    files: &CertFiles,
    addr: SocketAddr,
    alpn: &[u8],
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let cfg = (*tls_client(pki, files, alpn)?).clone();
    let ep = kakehashi_transport::quic::client(cfg, Default::default(), addr)?;
    let c = kakehashi_transport::dial::quic_connect(&ep, addr, "localhost", Duration::from_secs(5))
        .await?;
    Ok((ep, c))
}

/// A TCP connection to `to` from the loopback address `from`
/// (127.0.0.0/8 is all local: each address is its own source, for tests of
/// per-address limits).
pub async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    s.connect(to).await
}

/// Whether the peer closes `s` within `within` (end of stream or an error;
/// bytes it sends first are read past).
pub async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut b = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Sends `req` on a new plain HTTP/1.1 connection to `addr` (hyper's
/// client); the response's body streams as the server sends it. The request
/// needs its `Host` header.
pub async fn http_send(
    addr: SocketAddr,
    req: hyper::Request<http_body_util::Empty<hyper::body::Bytes>>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let s = TcpStream::connect(addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await?;
    tokio::spawn(conn);
    Ok(send.send_request(req).await?)
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt as _;
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONNECTION, "close")
        .body(http_body_util::Empty::new())?;
    tokio::time::timeout(Duration::from_secs(10), async {
        let resp = http_send(addr, req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .context("no HTTP answer within 10 s")?
}

/// The value of one Prometheus sample, by exact series text
/// (`name{label="v",…}` with labels sorted by name, as the exporter writes them), 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A policy that allows every level from every terminal class at any hour
/// with deny-all controls: for tests about logins and transport, not about
/// the policy (those use the shipped default, `store_sections`).
pub const OPEN_POLICY: &str = r#"version = 1
timezone = "+09:00"
[[rules]]
id = "open"
description = "tests: everything, always"
levels = [1, 2, 3]
classes = ["home", "mobile", "satellite"]
effect = "allow"
hours = "always"
"#;

/// `[store]` and `[identity]` sections that require logins, with the store
/// in `db` (the test opens the same SQLite file to seed users and codes),
/// and [`OPEN_POLICY`] (written next to `db`). Desks must still be
/// registered with their owners ([`add_desk`]).
pub fn login_sections(db: &Path) -> String {
    let policy = db.with_extension("open-policy.toml");
    std::fs::write(&policy, OPEN_POLICY).unwrap();
    format!("{}file = \"{}\"\n", store_sections(db), policy.display())
}

/// `[store]` and `[identity]` sections that require logins; the gateway
/// starts with the shipped default policy. Ends inside `[policy]`
/// (`watch = "100ms"`), so a caller may append policy lines.
pub fn store_sections(db: &Path) -> String {
    format!("[store]\nurl = \"sqlite://{}\"\n[identity]\nrequire_login = true\nmax_failures = 3\nlockout = \"2s\"\n[policy]\nwatch = \"100ms\"\n", db.display())
}

/// Add a staff user in department `somu` (if missing).
pub async fn add_user(store: &kakehashi_store::Store, id: &str) {
    use kakehashi_store::{Audit, NewUser, Role};
    if store.get_user(id).await.unwrap().is_some() {
        return;
    }
    let u = NewUser {
        id: id.into(),
        name: format!("Test {id}"),
        department: "somu".into(),
        roles: [Role::Staff].into_iter().collect(),
    };
    store
        .add_user(
            &u,
            Audit::new(kakehashi_store::unix_now(), "test", "user.add"),
        )
        .await
        .unwrap();
}

/// Register a desk (department `somu`, segment `lgwan`) owned by `owners`
/// (added as users if missing), as a non-RDP service: the tests' echo desks,
/// whose agents pass sessions through ([`PASS_THROUGH`]). An RDP desk is
/// [`add_rdp_desk`].
pub async fn add_desk(store: &kakehashi_store::Store, id: &str, level: u8, owners: &[&str]) {
    add_desk_serving(
        store,
        id,
        level,
        owners,
        kakehashi_store::DeskService::Other,
    )
    .await
}

/// Register an RDP desk (department `somu`, segment `lgwan`) owned by
/// `owners`: its agent must enforce restricting controls.
pub async fn add_rdp_desk(store: &kakehashi_store::Store, id: &str, level: u8, owners: &[&str]) {
    add_desk_serving(store, id, level, owners, kakehashi_store::DeskService::Rdp).await
}

/// Register a desk serving `service` (department `somu`, segment `lgwan`).
pub async fn add_desk_serving(
    store: &kakehashi_store::Store,
    id: &str,
    level: u8,
    owners: &[&str],
    service: kakehashi_store::DeskService,
) {
    use kakehashi_store::{Audit, Desk, Segment};
    let d = Desk {
        id: id.into(),
        department: "somu".into(),
        level,
        segment: Segment::Lgwan,
        service,
        owners: owners.iter().map(|o| o.to_string()).collect(),
    };
    for o in owners {
        add_user(store, o).await;
    }
    store
        .add_desk(
            &d,
            Audit::new(kakehashi_store::unix_now(), "test", "desk.add").subject(id),
        )
        .await
        .unwrap();
}

/// The device id in a laptop certificate (as `kakehashi login` reads it).
pub fn device_id(dev: &CertFiles) -> String {
    let certs = kakehashi_transport::tls::load_certs(&dev.cert).expect("device certificate");
    match kakehashi_pki::identity_from_der(&certs[0]).expect("a Kakehashi certificate") {
        kakehashi_pki::Identity::Device { id, .. } => id,
        other => panic!("not a device certificate: {other:?}"),
    }
}

/// A one-time login code and PKCE pair as the portal would create it.
pub struct LoginSeed {
    /// The code (what the browser hands the client).
    pub code: String,
    /// The PKCE verifier the client keeps.
    pub verifier: String,
}

/// Seed a user (if missing) and a login code for them on laptop `device`, as
/// the portal does after WebAuthn (only that laptop's certificate redeems it).
pub async fn seed_login(store: &kakehashi_store::Store, user: &str, device: &str) -> LoginSeed {
    use base64::Engine as _;
    use kakehashi_store::{Audit, Hash256, NewLoginCode, NewUser, Role};
    let now = kakehashi_store::unix_now();
    if store.get_user(user).await.unwrap().is_none() {
        let u = NewUser {
            id: user.into(),
            name: format!("Test {user}"),
            department: "somu".into(),
            roles: [Role::Staff].into_iter().collect(),
        };
        store
            .add_user(&u, Audit::new(now, "test", "user.add"))
            .await
            .unwrap();
    }
    let code = format!("code-{}", rand::random::<u64>());
    let verifier = format!("verifier-{:040}", rand::random::<u64>());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    let c = NewLoginCode {
        code_hash: Hash256::digest(&code),
        user_id: user.into(),
        pkce_challenge: challenge,
        device_id: device.into(),
        expires_at: now + 120,
    };
    store
        .create_login_code(&c, Audit::new(now, "test", "login.code"))
        .await
        .unwrap();
    LoginSeed { code, verifier }
}

/// Log `user` in on laptop `dev` as `kakehashi login` would after WebAuthn:
/// a seeded one-time code redeemed over the laptop's own mutual-TLS
/// connection. Returns the token (bound to `dev`'s certificate).
pub async fn redeem_login(
    pki: &Pki,
    dev: &CertFiles,
    terminal_tcp: SocketAddr,
    store: &kakehashi_store::Store,
    user: &str,
) -> String {
    use kakehashi_proto::message::{LoginResult, Message, RedeemLogin, Secret};
    let device = device_id(dev);
    let seed = seed_login(store, user, &device).await;
    let m = RedeemLogin {
        code: Secret(seed.code),
        code_verifier: Secret(seed.verifier),
    };
    let (_, f) = ask_terminal(pki, dev, terminal_tcp, &m).await;
    LoginResult::from_frame(&f)
        .unwrap_or_else(|e| {
            panic!(
                "login of {user} refused: {e} {:?}",
                kakehashi_proto::Refusal::from_frame(&f)
            )
        })
        .token
        .expose()
        .to_string()
}

/// A client config for `dev` with its own token file holding `token`.
pub fn client_config_logged_in(
    pki: &Pki,
    dev: &CertFiles,
    gw: &GatewayAddrs,
    user: &str,
    token: &str,
) -> PathBuf {
    let cfg = client_config(pki, dev, gw.terminal_tcp, gw.terminal_quic);
    let token_file = cfg.with_extension("token.json");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[login]\ntoken_file = \"{}\"\n",
        token_file.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let t = serde_json::json!({
        "user": user,
        "token": token,
        "expires_at": kakehashi_transport::unix_now() + 3600,
    });
    std::fs::write(&token_file, serde_json::to_vec(&t).unwrap()).unwrap();
    cfg
}

/// One session request with login `token` on a fresh TLS connection to
/// `gw`'s laptop listener: the session id, or the refusal. (The connection
/// closes on return, which ends an accepted session.)
pub async fn request_session(
    pki: &Pki,
    dev: &CertFiles,
    gw: &GatewayProc,
    desk: &str,
    token: &str,
) -> Result<String, kakehashi_proto::Refusal> {
    use kakehashi_proto::message::{Message, Secret, SessionAccepted, SessionRequest};
    use kakehashi_proto::FrameKind;
    let m = SessionRequest {
        desk: desk.into(),
        token: Some(Secret(token.into())),
    };
    let (_, f) = ask_terminal(pki, dev, gw.addrs.terminal_tcp, &m).await;
    match f.kind {
        FrameKind::SessionAccepted => Ok(SessionAccepted::from_frame(&f).unwrap().session_id),
        FrameKind::Refused => Err(kakehashi_proto::Refusal::from_frame(&f).unwrap()),
        k => panic!("unexpected {k:?}"),
    }
}

/// Block laptop `id` as an officer would (`kakehashi-gateway admin device
/// block`) on the store of `gw`'s configuration.
pub async fn block_device(gw: &GatewayProc, id: &str) {
    let (ok, out) = gateway_cli(&[
        "admin",
        "--config",
        gw.config.to_str().unwrap(),
        "device",
        "block",
        "--id",
        id,
        "--reason",
        "reported lost",
    ])
    .await;
    assert!(ok, "{out}");
}

/// `kakehashi-gateway ARGS…`: whether it succeeded, and its stdout and stderr.
pub async fn gateway_cli(args: &[&str]) -> (bool, String) {
    let out = command(bin("kakehashi-gateway"))
        .args(args)
        .output()
        .await
        .expect("run kakehashi-gateway");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Declare BCP mode for every department of `gw`'s store for the next hour,
/// as an officer would (`kakehashi-gateway bcp declare`). With the shipped
/// default policy this waives the plan and the hours for levels 1–2 from
/// home and mobile; admission reads it from the store at each request.
pub async fn declare_bcp(gw: &GatewayProc, reason: &str) {
    let until = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let config = gw.config.to_str().unwrap();
    let (ok, out) = gateway_cli(&[
        "bcp", "declare", "--config", config, "--scope", "all", "--reason", reason, "--until",
        &until,
    ])
    .await;
    assert!(ok, "bcp declare failed: {out}");
}

/// Every record of `gw`'s audit log as `kakehashi-gateway audit export
/// --format jsonl` writes it (`detail` is the JSON text that was hashed).
pub async fn audit_export(gw: &GatewayProc) -> Vec<serde_json::Value> {
    let out = command(bin("kakehashi-gateway"))
        .args([
            "audit",
            "export",
            "--config",
            gw.config.to_str().unwrap(),
            "--format",
            "jsonl",
        ])
        .output()
        .await
        .expect("run kakehashi-gateway audit export");
    assert!(
        out.status.success(),
        "audit export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The `detail` of an exported audit record, parsed.
pub fn audit_detail(record: &serde_json::Value) -> serde_json::Value {
    record["detail"]
        .as_str()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// `kakehashi-demo --dir TMP/demo EXTRA…`, once it says it is running
/// (its log is `TMP/demo.log`).
pub async fn start_demo(tmp: &Path, extra: &[&str]) -> Proc {
    let dir = tmp.join("demo");
    let mut args = vec!["--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut demo = Proc::spawn(&bin("kakehashi-demo"), &args, tmp.join("demo.log"), &[]);
    // (`--gateways` runs initdb and starts PostgreSQL and the gateways first.)
    demo.wait_line("Kakehashi demo is running", Duration::from_secs(120))
        .await
        .unwrap();
    demo
}

/// The admin listener of the demo's printed `metrics  http://ADDR/metrics` line.
pub async fn demo_metrics_addr(demo: &mut Proc) -> SocketAddr {
    let line = demo
        .wait_line("  metrics       ", Duration::from_secs(5))
        .await
        .unwrap();
    line.trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// Runs the `login` line the demo prints under "First log in", as printed;
/// returns its standard output.
pub async fn demo_login(demo: &mut Proc) -> String {
    demo.wait_line("First log in", Duration::from_secs(5))
        .await
        .unwrap();
    let login = demo.wait_line("  ", Duration::from_secs(5)).await.unwrap();
    assert!(login.ends_with(" login"), "{login}");
    let out = command("sh").arg("-c").arg(&login).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a printed `kakehashi … connect DESK --listen 127.0.0.1:PORT` line as
/// printed, once it listens (killing the returned process stops the client).
pub async fn run_printed_connect(line: &str, log: PathBuf) -> Proc {
    run_printed_connect_with(line, log, &[]).await
}

/// [`run_printed_connect`] with extra environment variables (`HOME`, `PATH`
/// of a [`doctest::Sandbox`]).
pub async fn run_printed_connect_with(line: &str, log: PathBuf, envs: &[(&str, &str)]) -> Proc {
    let mut client = Proc::spawn(
        Path::new("sh"),
        &["-c", &format!("exec {line}")], // exec: killing the shell kills the client
        log,
        envs,
    );
    client
        .wait_line("listening on 127.0.0.1:", Duration::from_secs(20))
        .await
        .unwrap();
    client
}

/// A gateway configuration for the admin CLIs (never run as a gateway): the
/// test CA's gateway certificate and [`login_sections`] with the store in `db`.
pub fn cli_config(pki: &Pki, db: &Path) -> PathBuf {
    let g = pki.gateway_cert();
    let cfg = format!(
        r#"name = "cli-test"
[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
ticket_key = "{ticket}"
[relay.terminals]
tcp = "127.0.0.1:0"
[relay.agents]
tcp = "127.0.0.1:0"
{login}
"#,
        ca = pki.ca.ca_cert_path().display(),
        cert = g.cert.display(),
        key = g.key.display(),
        ticket = pki.ca.ticket_key_path().display(),
        login = login_sections(db),
    );
    let p = pki.path().join("gw-cli.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// The actor the gateway's CLI records for this test process: its real
/// uid's user name (`id -un`), whatever `$USER` says; as root under sudo,
/// with the sudoing user.
pub fn cli_actor() -> String {
    let id = |arg: &str| {
        let out = std::process::Command::new("id")
            .arg(arg)
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let name = id("-un");
    match std::env::var("SUDO_USER") {
        Ok(s) if id("-ru") == "0" && !s.is_empty() && s != "root" => {
            format!("admin:{name}(sudo:{s})")
        }
        _ => format!("admin:{name}"),
    }
}

/// The whole audit log of `store`, every pending record sealed first. On
/// PostgreSQL the gateways seal too: while one of them holds the sealer's
/// lock, [`kakehashi_store::Store::seal_pending`] returns at once and the
/// batch it is sealing is not in the chain yet, so this waits until
/// nothing is pending (at most 10 s).
pub async fn sealed_audit(store: &kakehashi_store::Store) -> Vec<kakehashi_store::AuditRecord> {
    let start = Instant::now();
    loop {
        store.seal_pending().await.unwrap();
        let (pending, _) = store.pending_audit().await.unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{pending} audit records still pending after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.audit_between(0, i64::MAX).await.unwrap()
}

/// `text` without ANSI colour sequences.
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
