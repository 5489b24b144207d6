//! A real RDP session through the relay, in pass-through mode:
//! `xfreerdp` → `kakehashi connect` → gateway → agent → `freerdp-shadow-cli`
//! on Xvfb with NLA, over QUIC and over TLS-over-TCP, plus a wrong password
//! that NLA must reject end to end. The peers come from
//! `tests/rdp/rdp-peers.sh`, which the test installs when missing.
//!
//! Evidence the test relies on (FreeRDP 2 at `WLOG_LEVEL=DEBUG`):
//! - server stdout, first line: `RDP_PEERS_SERVER port=N display=:D xvfb_pid=X`
//! - server ready: `[INFO][com.freerdp.core.listener] - Listening on [127.0.0.1]:N`
//! - server, per session past MCS connect: `[INFO][com.freerdp.core.connection] - Accepted channels:`
//! - server, per rejected NTLM attempt: `[ERROR][com.freerdp.core.transport] - client authentication failure`
//! - client script exit 0 after `RDP_PEERS_CLIENT OK: session up 2s` (xfreerdp logged
//!   `CONNECTION_STATE_FINALIZATION --> CONNECTION_STATE_ACTIVE` and a complete frame,
//!   e.g. `SurfaceFrameMarker: action: End`, and stayed up 2 s)
//! - client script exit 4 after `RDP_PEERS_CLIENT NLA_REJECTED` (xfreerdp went
//!   `CONNECTION_STATE_NLA --> CONNECTION_STATE_INITIAL`)
//! - gateway: `Agent online` with the desk; agent: `Session started` per session.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use kakehashi_pki::{Subject, TerminalClass};
use kakehashi_tests::*;

pub(crate) const USER: &str = "alice";
pub(crate) const PASSWORD: &str = "Kakehashi-Test-1";
/// How long a session must stay up once active.
pub(crate) const HOLD_SECS: &str = "2";

pub(crate) fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rdp/rdp-peers.sh")
}

/// Install the FreeRDP peers and Xvfb if any is missing (serialised by a lock
/// in the script, so parallel tests are safe). Never skips: fails loudly.
pub(crate) async fn install_peers() {
    let out = command(script())
        .arg("install")
        .output()
        .await
        .expect("run rdp-peers.sh install");
    assert!(
        out.status.success(),
        "rdp-peers.sh install failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lines of `p`'s output containing `needle`. WLog writes INFO and DEBUG to
/// stdout, WARN and ERROR to stderr (the log file): count both.
pub(crate) fn count_lines(p: &Proc, needle: &str) -> usize {
    let out = p
        .stdout
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count();
    out + p.log_text().lines().filter(|l| l.contains(needle)).count()
}

/// Wait until `p`'s output has more than `already` lines containing `needle`.
pub(crate) async fn wait_lines(
    p: &Proc,
    needle: &str,
    already: usize,
    within: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < within {
        if count_lines(p, needle) > already {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "no new {needle:?} line within {within:?}; stdout:\n{}\nstderr:\n{}",
        p.stdout.lock().unwrap().join("\n"),
        p.log_text()
    )
}

/// Wait until a line of `p`'s log contains every one of `needles`.
pub(crate) async fn wait_log_line(
    p: &Proc,
    needles: &[&str],
    within: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < within {
        if p.log_text()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no log line with {needles:?}:\n{}", p.log_text())
}

/// The shadow server on its own Xvfb, NLA only, with a certificate from our CA.
pub(crate) async fn start_rdp_server(pki: &mut Pki) -> (Proc, SocketAddr) {
    let tls = rdp_server_cert(pki);
    start_rdp_server_with(pki, &tls).await
}

/// A certificate for the RDP server (and the agent's `[rdp]` section), from our CA.
pub(crate) fn rdp_server_cert(pki: &mut Pki) -> CertFiles {
    rdp_server_cert_named(pki, "rdp-desk")
}

/// A certificate for an RDP server named `name` (names must differ per test PKI).
pub(crate) fn rdp_server_cert_named(pki: &mut Pki, name: &str) -> CertFiles {
    pki.issue(
        Subject::Gateway {
            name: name.into(),
            ips: vec![Ipv4Addr::LOCALHOST.into()],
        },
        None,
    )
}

/// The shadow server with the given certificate and key. The port is picked
/// free and then bound by the server: if a parallel test takes it in
/// between, try again on another.
pub(crate) async fn start_rdp_server_with(pki: &Pki, tls: &CertFiles) -> (Proc, SocketAddr) {
    for attempt in 1..=3 {
        match try_start_rdp_server(pki, tls, attempt).await {
            Ok(s) => return s,
            Err(e) if attempt < 3 && e.contains("Problem creating TCP listener") => {
                eprintln!("RDP server port taken, retrying: {e}");
            }
            Err(e) => panic!("{e}"),
        }
    }
    unreachable!()
}

async fn try_start_rdp_server(
    pki: &Pki,
    tls: &CertFiles,
    attempt: u32,
) -> Result<(Proc, SocketAddr), String> {
    let dir = pki
        .path()
        .join(format!("rdp-server-{}-{attempt}", tls.serial));
    let mut server = Proc::spawn(
        &script(),
        &[
            "server",
            "--dir",
            dir.to_str().unwrap(),
            "--port",
            "0",
            "--cert",
            tls.cert.to_str().unwrap(),
            "--key",
            tls.key.to_str().unwrap(),
            "--user",
            USER,
            "--password",
            PASSWORD,
        ],
        pki.path()
            .join(format!("rdp-server-{}-{attempt}.log", tls.serial)),
        &[("WLOG_LEVEL", "DEBUG")],
    );
    let head = server
        .wait_line("RDP_PEERS_SERVER ", Duration::from_secs(20))
        .await
        .map_err(|e| format!("{e:#}"))?;
    let port: u16 = head
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {head:?}"));
    let listening = format!("Listening on [127.0.0.1]:{port}");
    if let Err(e) = wait_lines(&server, &listening, 0, Duration::from_secs(20)).await {
        let xvfb = std::fs::read_to_string(dir.join("xvfb.log")).unwrap_or_default();
        return Err(format!(
            "RDP server did not start: {e:#}\nxvfb.log:\n{xvfb}"
        ));
    }
    Ok((server, SocketAddr::from((Ipv4Addr::LOCALHOST, port))))
}

/// Run the client script against `listen`; returns its exit code and its
/// output (the `RDP_PEERS_CLIENT` diagnostics) for failure messages.
pub(crate) async fn rdp_client(
    pki: &Pki,
    name: &str,
    listen: SocketAddr,
    password: &str,
) -> (i32, String) {
    rdp_client_with(pki, name, listen, password, &[]).await
}

/// [`rdp_client`] with extra xfreerdp arguments; xfreerdp's full debug log is
/// kept in `rdp-xfreerdp-NAME.log` in the test directory.
pub(crate) async fn rdp_client_with(
    pki: &Pki,
    name: &str,
    listen: SocketAddr,
    password: &str,
    extra: &[&str],
) -> (i32, String) {
    rdp_client_holding(pki, name, listen, password, HOLD_SECS, extra).await
}

/// [`rdp_client_with`] that keeps the desktop up for `secs` seconds (a test
/// that watches the live session from elsewhere meanwhile).
pub(crate) async fn rdp_client_holding(
    pki: &Pki,
    name: &str,
    listen: SocketAddr,
    password: &str,
    secs: &str,
    extra: &[&str],
) -> (i32, String) {
    let tmp = pki.path().join(format!("tmp-{name}"));
    std::fs::create_dir_all(&tmp).unwrap();
    let port = listen.port().to_string();
    let xlog = pki.path().join(format!("rdp-xfreerdp-{name}.log"));
    let mut args = vec![
        "client",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--user",
        USER,
        "--password",
        password,
        "--seconds",
        secs,
        "--timeout",
        "30",
        "--log",
        xlog.to_str().unwrap(),
    ];
    if !extra.is_empty() {
        args.push("--");
        args.extend_from_slice(extra);
    }
    let mut c = Proc::spawn(
        &script(),
        &args,
        pki.path().join(format!("rdp-client-{name}.log")),
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    let status = c.wait_exit(Duration::from_secs(60)).await.unwrap();
    // Let the stdout reader drain the pipe.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = c.stdout.lock().unwrap().join("\n");
    let code = status.code().unwrap_or(-1);
    (code, format!("{out}\nstderr:\n{}", c.log_text()))
}

#[tokio::test(flavor = "multi_thread")]
async fn rdp_nla_session_through_relay() {
    let t0 = Instant::now();
    install_peers().await;
    let mut pki = Pki::new();
    let (server, rdp_addr) = start_rdp_server(&mut pki).await;
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let agent_q = start_agent(&mut pki, "DESK-RDP-Q", &gw.addrs, rdp_addr, "quic");
    let agent_t = start_agent(&mut pki, "DESK-RDP-T", &gw.addrs, rdp_addr, "tcp");
    for desk in ["DESK-RDP-Q", "DESK-RDP-T"] {
        wait_log_line(&gw.proc, &["Agent online", desk], Duration::from_secs(20))
            .await
            .unwrap();
    }
    let dev = pki.device("LAPTOP-RDP", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let via_quic = start_client(&pki, &cfg, "DESK-RDP-Q", "quic")
        .await
        .unwrap();
    let via_tcp = start_client(&pki, &cfg, "DESK-RDP-T", "tcp").await.unwrap();
    assert_eq!(via_quic.transport, "quic");
    assert_eq!(via_tcp.transport, "tcp");
    let setup = t0.elapsed();

    // (1), (2): an NLA session reaches the desktop, holds, and the server
    // accepted its channels, on each transport.
    for (transport, client, agent) in [("quic", &via_quic, &agent_q), ("tcp", &via_tcp, &agent_t)] {
        let channels = count_lines(&server, "Accepted channels:");
        let (code, out) = rdp_client(&pki, transport, client.listen, PASSWORD).await;
        assert_eq!(
            code, 0,
            "RDP session over {transport} did not reach an active desktop:\n{out}"
        );
        assert!(out.contains("RDP_PEERS_CLIENT OK"), "{out}");
        wait_lines(
            &server,
            "Accepted channels:",
            channels,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        agent
            .wait_log("Session started", Duration::from_secs(5))
            .await
            .unwrap();
    }

    // (3): a wrong password crosses the relay and NLA rejects it.
    let failures = count_lines(&server, "client authentication failure");
    let (code, out) = rdp_client(&pki, "wrong-password", via_quic.listen, "not-the-password").await;
    assert_eq!(code, 4, "a wrong password was not rejected by NLA:\n{out}");
    wait_lines(
        &server,
        "client authentication failure",
        failures,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    eprintln!("rdp e2e: setup {setup:?}, total {:?}", t0.elapsed());
}
