//! The RDP channel filter with real peers: `xfreerdp` → `kakehashi connect` →
//! gateway → agent with `[rdp]` (TLS terminated with the RDP server's own
//! certificate and key, the server pinned to it) → `freerdp-shadow-cli` on
//! Xvfb with NLA. Ticket controls come from the bare-relay test knob
//! `[testing] controls` (the policy engine has its own tests).
//!
//! Evidence (FreeRDP 2 at `WLOG_LEVEL=DEBUG`, see `rdp.rs` for the rest):
//! - server stdout, per session past MCS connect: `… - Accepted channels:` then one
//!   line `… -  NAME` per channel the client's Connect Initial listed (the filter
//!   renames denied ones to `kkhxNN`, so the server never serves them);
//! - xfreerdp's own debug log (`rdp-xfreerdp-NAME.log`) shows which channel
//!   plugins it loaded (`Loading Static Virtual Channel rdpdr` …), proving it asked;
//! - gateway: `RDP blocked` lines with the session id and
//!   `kakehashi_rdp_blocked_total{kind=…}` on `/metrics`;
//! - agent: `Session refused by the RDP filter` with `reason="rdp_uninspectable"`, or
//!   `the RDP server's certificate is not the one in [rdp] server_cert`.

use std::net::SocketAddr;
use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::rdp::{
    count_lines, install_peers, rdp_client_with, rdp_server_cert, rdp_server_cert_named,
    start_rdp_server_with, wait_log_line, PASSWORD,
};

/// Everything a redirecting client can ask for.
const EVERYTHING: &[&str] = &[
    "/drive:home,/tmp",
    "/printer",
    "+clipboard",
    "/usb:auto",
    "/sound",
];

const ALLOW_ALL: &str = r#"{ clipboard = "both", drive = true, printer = true, ports = true, usb = true, audio = true, smartcard = true }"#;

/// The channel lists the server logged, one per session, in order.
fn accepted_channels(server: &Proc) -> Vec<Vec<String>> {
    let lines = server.stdout.lock().unwrap().clone();
    let mut groups = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for l in lines {
        if l.contains("Accepted channels:") {
            if let Some(g) = current.take() {
                groups.push(g);
            }
            current = Some(Vec::new());
            continue;
        }
        if let Some(g) = current.as_mut() {
            match l.split_once("[com.freerdp.core.connection] -  ") {
                Some((_, name)) if !name.trim().is_empty() => g.push(name.trim().to_string()),
                _ => groups.extend(current.take()),
            }
        }
    }
    groups.extend(current);
    groups
}

/// Wait for the server to log a channel list beyond the first `already`; returns it.
async fn next_channels(server: &Proc, already: usize) -> Vec<String> {
    for _ in 0..100 {
        let g = accepted_channels(server);
        if g.len() > already {
            // The list is complete once a later line was logged.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return accepted_channels(server)[already].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the RDP server logged no new channel list:\n{}",
        server.stdout.lock().unwrap().join("\n")
    )
}

/// `text` without ANSI colour sequences (the binaries log in colour).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
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

/// Lines of `p`'s log (colour removed) containing every one of `needles`.
fn log_lines(p: &Proc, needles: &[&str]) -> usize {
    plain(&p.log_text())
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// Wait until `p`'s log has more than `already` lines containing every one of `needles`.
async fn wait_plain(p: &Proc, needles: &[&str], already: usize, within: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if log_lines(p, needles) > already {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no log line with {needles:?} within {within:?}:\n{}",
        plain(&p.log_text())
    )
}

async fn metrics(gw: &GatewayProc) -> String {
    http_get(gw.addrs.admin, "/metrics").await.unwrap().1
}

fn xfreerdp_log(pki: &Pki, name: &str) -> String {
    std::fs::read_to_string(pki.path().join(format!("rdp-xfreerdp-{name}.log"))).unwrap_or_default()
}

/// (a) Home-like, everything denied: the client asks for drives, printers, clipboard,
/// USB and sound; NLA completes and the desktop comes up, the server never serves
/// rdpdr, cliprdr or rdpsnd, and the gateway hears of every blocked channel. Over
/// QUIC and over TCP (the two control-stream paths of the reports).
#[tokio::test(flavor = "multi_thread")]
async fn rdp_filter_denies_everything_with_nla_intact() {
    install_peers().await;
    let mut pki = Pki::new();
    let rdp_cert = rdp_server_cert(&mut pki);
    let (server, rdp_addr) = start_rdp_server_with(&pki, &rdp_cert).await;
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let agent_q = start_agent_rdp(&mut pki, "DESK-F-Q", &gw.addrs, rdp_addr, "quic", &rdp_cert);
    let agent_t = start_agent_rdp(&mut pki, "DESK-F-T", &gw.addrs, rdp_addr, "tcp", &rdp_cert);
    for desk in ["DESK-F-Q", "DESK-F-T"] {
        wait_log_line(&gw.proc, &["Agent online", desk], Duration::from_secs(20))
            .await
            .unwrap();
    }
    let dev = pki.device("LAPTOP-F", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let via_quic = start_client(&pki, &cfg, "DESK-F-Q", "quic").await.unwrap();
    let via_tcp = start_client(&pki, &cfg, "DESK-F-T", "tcp").await.unwrap();

    for (name, client, agent) in [
        ("deny-quic", &via_quic, &agent_q),
        ("deny-tcp", &via_tcp, &agent_t),
    ] {
        let before = accepted_channels(&server).len();
        let blocked: std::collections::HashMap<&str, usize> =
            ["what=rdpdr", "what=cliprdr", "what=rdpsnd"]
                .into_iter()
                .map(|w| (w, log_lines(&gw.proc, &["RDP blocked", w])))
                .collect();
        let (code, out) = rdp_client_with(&pki, name, client.listen, PASSWORD, EVERYTHING).await;
        assert_eq!(
            code, 0,
            "{name}: no working desktop through the filter:\n{out}"
        );
        let channels = next_channels(&server, before).await;
        for denied in ["rdpdr", "cliprdr", "rdpsnd"] {
            assert!(
                !channels.iter().any(|c| c.eq_ignore_ascii_case(denied)),
                "{name}: the server accepted {denied}: {channels:?}"
            );
        }
        assert!(
            channels.iter().any(|c| c.starts_with("kkhx")),
            "{name}: no renamed channel in {channels:?}"
        );
        // The client did ask for them.
        let xlog = xfreerdp_log(&pki, name);
        for asked in [
            "loading channelEx rdpdr",
            "loading channelEx cliprdr",
            "loading channelEx rdpsnd",
            "Loading device service drive",
            "Loading device service printer",
            "Loading Dynamic Virtual Channel urbdrc",
        ] {
            assert!(
                xlog.lines().any(|l| l.contains(asked)),
                "{name}: xfreerdp did not load {asked}; the test proves nothing:\n{}",
                xlog.lines()
                    .filter(|l| l.to_ascii_lowercase().contains("channel"))
                    .take(60)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        wait_plain(
            agent,
            &["Session started", "filter=true"],
            0,
            Duration::from_secs(5),
        )
        .await;
        // Reported to the gateway, with the session id.
        for what in ["what=rdpdr", "what=cliprdr", "what=rdpsnd"] {
            wait_plain(
                &gw.proc,
                &[
                    "RDP blocked",
                    what,
                    "session=s-",
                    "direction=\"client_to_server\"",
                ],
                blocked[what],
                Duration::from_secs(10),
            )
            .await;
        }
    }
    let m = metrics(&gw).await;
    assert!(
        metric(&m, r#"kakehashi_rdp_blocked_total{kind="static_channel"}"#) >= 6.0,
        "{m}"
    );
}

/// (b) Everything allowed: the same client gets rdpdr, cliprdr and rdpsnd served
/// under their own names (so the denied case above is meaningful).
#[tokio::test(flavor = "multi_thread")]
async fn rdp_filter_allow_all_serves_every_channel() {
    install_peers().await;
    let mut pki = Pki::new();
    let rdp_cert = rdp_server_cert(&mut pki);
    let (server, rdp_addr) = start_rdp_server_with(&pki, &rdp_cert).await;
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            controls: Some(ALLOW_ALL.into()),
            ..Default::default()
        },
    )
    .await;
    let agent = start_agent_rdp(&mut pki, "DESK-A", &gw.addrs, rdp_addr, "quic", &rdp_cert);
    wait_log_line(
        &gw.proc,
        &["Agent online", "DESK-A"],
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let dev = pki.device("LAPTOP-A", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let client = start_client(&pki, &cfg, "DESK-A", "auto").await.unwrap();
    let before = accepted_channels(&server).len();
    let (code, out) = rdp_client_with(&pki, "allow", client.listen, PASSWORD, EVERYTHING).await;
    assert_eq!(code, 0, "allow-all session failed:\n{out}");
    let channels = next_channels(&server, before).await;
    for served in ["rdpdr", "cliprdr", "rdpsnd"] {
        assert!(
            channels.iter().any(|c| c == served),
            "{served} not served with an allow-all ticket: {channels:?}"
        );
    }
    wait_plain(
        &agent,
        &["Session started", "filter=false"],
        0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(log_lines(&gw.proc, &["RDP blocked"]), 0);
}

/// (c) Standard RDP security with a restricting ticket: refused, fail closed, with
/// `rdp_uninspectable` in the agent's log and the gateway's report; the RDP server
/// never even sees the Connection Request.
#[tokio::test(flavor = "multi_thread")]
async fn rdp_filter_refuses_standard_rdp_security() {
    install_peers().await;
    let mut pki = Pki::new();
    let rdp_cert = rdp_server_cert(&mut pki);
    let (server, rdp_addr) = start_rdp_server_with(&pki, &rdp_cert).await;
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let agent = start_agent_rdp(&mut pki, "DESK-S", &gw.addrs, rdp_addr, "tcp", &rdp_cert);
    wait_log_line(
        &gw.proc,
        &["Agent online", "DESK-S"],
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let dev = pki.device("LAPTOP-S", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let client = start_client(&pki, &cfg, "DESK-S", "auto").await.unwrap();
    let before = accepted_channels(&server).len();
    let (code, out) = rdp_client_with(&pki, "secrdp", client.listen, PASSWORD, &["/sec:rdp"]).await;
    assert_ne!(code, 0, "standard RDP security was not refused:\n{out}");
    wait_plain(
        &agent,
        &["Session refused by the RDP filter", "rdp_uninspectable"],
        0,
        Duration::from_secs(10),
    )
    .await;
    wait_plain(
        &gw.proc,
        &["RDP blocked", "session_refused", "what=rdp_uninspectable"],
        0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(accepted_channels(&server).len(), before);
    let m = metrics(&gw).await;
    assert!(metric(&m, r#"kakehashi_rdp_blocked_total{kind="session_refused"}"#) >= 1.0);
}

/// A stand-in RDP server that answers one Connection Request offering standard RDP
/// security with a Confirm selecting it; returns what it received.
async fn standard_security_desk() -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = vec![0u8; CR_RDP.len()];
        match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got)).await {
            Ok(Ok(_)) => {
                s.write_all(&CC_RDP).await.unwrap();
                let _ = s.shutdown().await;
                got
            }
            _ => Vec::new(),
        }
    });
    (addr, task)
}

/// X.224 Connection Request with RDP_NEG_REQ requestedProtocols = PROTOCOL_RDP (0).
const CR_RDP: [u8; 19] = [
    0x03, 0x00, 0x00, 0x13, 0x0e, 0xe0, 0, 0, 0, 0, 0, 0x01, 0x00, 0x08, 0x00, 0, 0, 0, 0,
];
/// X.224 Connection Confirm with RDP_NEG_RSP selectedProtocol = PROTOCOL_RDP.
const CC_RDP: [u8; 19] = [
    0x03, 0x00, 0x00, 0x13, 0x0e, 0xd0, 0, 0, 0x12, 0x34, 0, 0x02, 0x00, 0x08, 0x00, 0, 0, 0, 0,
];

/// (c) continued, byte-exact, for a client offering only PROTOCOL_RDP: with an
/// allow-everything ticket the negotiation passes untouched both ways; with a
/// restricting one the client gets a negative Connection Confirm (RDP_NEG_FAILURE)
/// and the desk gets nothing, and the gateway (with a store) writes an `rdp.blocked`
/// audit record with the reason. (`freerdp-shadow-cli` only does NLA here, so the
/// positive case uses a stand-in server.)
#[tokio::test(flavor = "multi_thread")]
async fn rdp_filter_standard_security_passes_only_with_allow_all() {
    let mut pki = Pki::new();
    let rdp_cert = rdp_server_cert(&mut pki);
    let db = pki.path().join("audit.db");
    for (allow, desk) in [(true, "DESK-SA"), (false, "DESK-SD")] {
        // The restricting gateway has a store: the refusal is audited there.
        let gw = start_gateway(
            &pki,
            GatewayOpts {
                controls: allow.then(|| ALLOW_ALL.to_string()),
                identity: (!allow).then(|| {
                    format!(
                        "[store]\nurl = \"sqlite://{}\"\n[identity]\nrequire_login = false\n[testing]\nrelay_without_policy = true\n",
                        db.display()
                    )
                }),
                ..Default::default()
            },
        )
        .await;
        let (fake, seen) = standard_security_desk().await;
        let _agent = start_agent_rdp(&mut pki, desk, &gw.addrs, fake, "quic", &rdp_cert);
        wait_log_line(&gw.proc, &["Agent online", desk], Duration::from_secs(20))
            .await
            .unwrap();
        let dev = pki.device(&format!("LAPTOP-{desk}"), TerminalClass::Home);
        let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
        let client = start_client(&pki, &cfg, desk, "quic").await.unwrap();
        let mut s = tokio::net::TcpStream::connect(client.listen).await.unwrap();
        s.write_all(&CR_RDP).await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut back))
            .await
            .expect("the session did not end")
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(15), seen)
            .await
            .unwrap()
            .unwrap();
        if allow {
            assert_eq!(got, CR_RDP, "the desk did not get the request unchanged");
            assert_eq!(back, CC_RDP, "the client did not get the desk's confirm");
        } else {
            assert!(got.is_empty(), "the desk got bytes: {got:02x?}");
            assert!(back.len() >= 19 && back[..2] == [0x03, 0x00], "{back:02x?}");
            assert_eq!(back[11], 0x03, "not an RDP_NEG_FAILURE: {back:02x?}");
            wait_plain(
                &gw.proc,
                &["RDP blocked", "what=rdp_uninspectable"],
                0,
                Duration::from_secs(10),
            )
            .await;
            let store = kakehashi_store::Store::open(db.to_str().unwrap())
                .await
                .unwrap();
            let audit = store.audit_between(0, i64::MAX).await.unwrap();
            let rec = audit
                .iter()
                .find(|r| r.action == "rdp.blocked")
                .unwrap_or_else(|| panic!("no rdp.blocked audit record: {audit:?}"));
            assert_eq!(rec.reason, "rdp_uninspectable");
            assert_eq!(rec.actor, format!("agent:{desk}"));
            assert!(rec.subject.starts_with("s-"), "{rec:?}");
            assert!(rec.detail.contains("session_refused"), "{rec:?}");
        }
    }
}

/// (d) The agent holds a certificate and key that are not the RDP server's: the
/// pinned TLS to the server fails, the client's TLS is never accepted, so neither
/// its credentials nor anything after the negotiation reaches the server.
#[tokio::test(flavor = "multi_thread")]
async fn rdp_filter_refuses_a_server_with_another_key() {
    install_peers().await;
    let mut pki = Pki::new();
    let real = rdp_server_cert(&mut pki);
    let other = rdp_server_cert_named(&mut pki, "not-the-rdp-desk");
    let (server, rdp_addr) = start_rdp_server_with(&pki, &real).await;
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let agent = start_agent_rdp(&mut pki, "DESK-K", &gw.addrs, rdp_addr, "quic", &other);
    wait_log_line(
        &gw.proc,
        &["Agent online", "DESK-K"],
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let dev = pki.device("LAPTOP-K", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let client = start_client(&pki, &cfg, "DESK-K", "quic").await.unwrap();
    let failures = count_lines(&server, "client authentication failure");
    let (code, out) = rdp_client_with(&pki, "wrongkey", client.listen, PASSWORD, &[]).await;
    assert_ne!(
        code, 0,
        "a session went through to a server with another key:\n{out}"
    );
    wait_plain(
        &agent,
        &["is not the one in [rdp] server_cert"],
        0,
        Duration::from_secs(10),
    )
    .await;
    // Nothing past the TLS handshake reached the server: no CredSSP, no MCS.
    assert_eq!(accepted_channels(&server).len(), 0);
    assert_eq!(
        count_lines(&server, "client authentication failure"),
        failures
    );
}

/// `kakehashi connect DESK --launch`: the first session's controls shape the RDP
/// client's arguments (deny-all: no clipboard, no redirections, no standard RDP
/// security, TOFU rather than an ignored certificate), the RDP client gets that
/// very session, and the command ends when the RDP client exits. The RDP client is
/// the real xfreerdp (through `rdp-peers.sh client`, which supplies the password
/// and a display), reached through `KAKEHASHI_XFREERDP`.
#[tokio::test(flavor = "multi_thread")]
async fn connect_launch_starts_a_matching_rdp_client() {
    install_peers().await;
    let mut pki = Pki::new();
    let rdp_cert = rdp_server_cert(&mut pki);
    let (_server, rdp_addr) = start_rdp_server_with(&pki, &rdp_cert).await;
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let agent = start_agent_rdp(&mut pki, "DESK-L", &gw.addrs, rdp_addr, "quic", &rdp_cert);
    wait_log_line(
        &gw.proc,
        &["Agent online", "DESK-L"],
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let dev = pki.device("LAPTOP-L", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let args_file = pki.path().join("launch-args.txt");
    let tmp = pki.path().join("tmp-launch");
    std::fs::create_dir_all(&tmp).unwrap();
    let wrapper = pki.path().join("xfreerdp-wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            r#"#!/usr/bin/env bash
printf '%s\n' "$@" > '{args}'
port=""; rest=()
for a in "$@"; do
  case $a in /v:127.0.0.1:*) port=${{a#/v:127.0.0.1:}} ;; /u:*) ;; *) rest+=("$a") ;; esac
done
export TMPDIR='{tmp}'
exec '{script}' client --host 127.0.0.1 --port "$port" --user {user} --password '{password}' \
  --seconds 2 --timeout 30 -- "${{rest[@]}}"
"#,
            args = args_file.display(),
            tmp = tmp.display(),
            script = super::rdp::script().display(),
            user = super::rdp::USER,
            password = PASSWORD,
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", wrapper.to_str().unwrap()])
        .status()
        .unwrap();
    let mut client = Proc::spawn(
        &bin("kakehashi"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "connect",
            "DESK-L",
            "--launch",
            "--rdp-user",
            super::rdp::USER,
        ],
        pki.path().join("client-launch.log"),
        &[("KAKEHASHI_XFREERDP", wrapper.to_str().unwrap())],
    );
    let status = client.wait_exit(Duration::from_secs(90)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = client.stdout.lock().unwrap().join("\n");
    assert!(status.success(), "{out}\n{}", client.log_text());
    assert!(out.contains("RDP_PEERS_CLIENT OK"), "{out}");
    assert!(out.contains("rdp client exited (exit status: 0)"), "{out}");
    let args = std::fs::read_to_string(&args_file).unwrap();
    let args: Vec<&str> = args.lines().collect();
    for want in ["/cert:tofu", "/u:alice", "-sec-rdp", "-clipboard"] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    for never in [
        "/cert:ignore",
        "+clipboard",
        "/printer",
        "/sound",
        "+home-drive",
    ] {
        assert!(!args.contains(&never), "{never} in {args:?}");
    }
    // The session opened ahead is the one the RDP client used.
    assert_eq!(
        log_lines(&agent, &["Session started", "filter=true"]),
        1,
        "{}",
        plain(&agent.log_text())
    );
}

fn xrdp_script() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rdp/xrdp-peer.sh")
}

const XRDP_USER: &str = "kkrdp";
const XRDP_PASSWORD: &str = "Kk-Xrdp-Test-1";

/// Set (`Some`) or read the clipboard of the desk's X session.
async fn desk_clipboard(set: Option<&str>) -> String {
    let mut cmd = tokio::process::Command::new(xrdp_script());
    cmd.args([
        "xclip",
        "--user",
        XRDP_USER,
        "--",
        "-selection",
        "clipboard",
    ]);
    cmd.arg(if set.is_some() { "-i" } else { "-o" });
    run_xclip(cmd, set).await
}

/// Set or read the clipboard of the laptop's display `display`.
async fn laptop_clipboard(display: &str, set: Option<&str>) -> String {
    let mut cmd = tokio::process::Command::new("timeout");
    cmd.args(["10", "xclip", "-selection", "clipboard"]);
    cmd.arg(if set.is_some() { "-i" } else { "-o" });
    cmd.env("DISPLAY", display);
    run_xclip(cmd, set).await
}

async fn run_xclip(mut cmd: tokio::process::Command, set: Option<&str>) -> String {
    // `xclip -i` leaves a child behind that serves the selection: it must not hold
    // our stdout pipe open.
    let stdout = if set.is_some() {
        std::process::Stdio::null()
    } else {
        std::process::Stdio::piped()
    };
    cmd.stdin(std::process::Stdio::piped())
        .stdout(stdout)
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("xclip");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(text) = set {
        stdin.write_all(text.as_bytes()).await.unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Set `text` with `set` (again every 3 s: a clipboard channel still starting up
/// misses an owner change) and poll `read` for up to `within` until it returns it.
async fn arrives<S, SF, R, RF>(mut set: S, mut read: R, text: &str, within: Duration) -> bool
where
    S: FnMut() -> SF,
    SF: std::future::Future<Output = String>,
    R: FnMut() -> RF,
    RF: std::future::Future<Output = String>,
{
    let start = std::time::Instant::now();
    let mut last_set: Option<std::time::Instant> = None;
    while start.elapsed() < within {
        if last_set.is_none_or(|t| t.elapsed() > Duration::from_secs(3)) {
            set().await;
            last_set = Some(std::time::Instant::now());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if read().await == text {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

/// (e) Clipboard direction against a peer that serves a clipboard: xrdp (Xvnc backend,
/// TLS security; its chansrv syncs the RDP clipboard with the desk's X clipboard),
/// through the filter. `both`: text set with xclip on either display arrives on the
/// other (so the test can see clipboard traffic). `to-remote`: laptop → desk arrives,
/// desk → laptop never does, and the gateway hears of the refused clipboard data.
#[tokio::test(flavor = "multi_thread")]
async fn rdp_filter_enforces_clipboard_direction_with_xrdp() {
    install_peers().await;
    let out = tokio::process::Command::new(xrdp_script())
        .arg("install")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "xrdp-peer.sh install failed: {out:?}");
    let mut pki = Pki::new();
    let cert = rdp_server_cert_named(&mut pki, "xrdp-desk");
    let dir = pki.path().join("xrdp");
    let mut xrdp = Proc::spawn(
        &xrdp_script(),
        &[
            "server",
            "--dir",
            dir.to_str().unwrap(),
            "--port",
            "0",
            "--cert",
            cert.cert.to_str().unwrap(),
            "--key",
            cert.key.to_str().unwrap(),
            "--user",
            XRDP_USER,
            "--password",
            XRDP_PASSWORD,
        ],
        pki.path().join("xrdp-peer.log"),
        &[],
    );
    let port: u16 = xrdp
        .wait_line("XRDP_PEER port=", Duration::from_secs(330))
        .await
        .unwrap()
        .parse()
        .unwrap();
    let xrdp_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = std::time::Instant::now();
    while tokio::net::TcpStream::connect(xrdp_addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "xrdp did not listen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for (n, (controls, desk_to_laptop)) in [
        (r#"{ clipboard = "both" }"#, true),
        (r#"{ clipboard = "to-remote" }"#, false),
    ]
    .into_iter()
    .enumerate()
    {
        let gw = start_gateway(
            &pki,
            GatewayOpts {
                controls: Some(controls.into()),
                ..Default::default()
            },
        )
        .await;
        let desk = format!("DESK-X{n}");
        let agent = start_agent_rdp(&mut pki, &desk, &gw.addrs, xrdp_addr, "quic", &cert);
        wait_log_line(&gw.proc, &["Agent online", &desk], Duration::from_secs(20))
            .await
            .unwrap();
        let dev = pki.device(&format!("LAPTOP-X{n}"), TerminalClass::Home);
        let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
        let client = start_client(&pki, &cfg, &desk, "quic").await.unwrap();
        let tmp = pki.path().join(format!("tmp-x{n}"));
        std::fs::create_dir_all(&tmp).unwrap();
        let port = client.listen.port().to_string();
        let mut rdp = Proc::spawn(
            &super::rdp::script(),
            &[
                "client",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--user",
                XRDP_USER,
                "--password",
                XRDP_PASSWORD,
                "--seconds",
                "25",
                "--timeout",
                "30",
                "--",
                "/sec:tls",
                "+clipboard",
            ],
            pki.path().join(format!("rdp-client-x{n}.log")),
            &[("TMPDIR", tmp.to_str().unwrap())],
        );
        let display = rdp
            .wait_line("RDP_PEERS_CLIENT display=", Duration::from_secs(20))
            .await
            .unwrap();
        rdp.wait_line("RDP_PEERS_CLIENT active", Duration::from_secs(40))
            .await
            .unwrap();
        wait_plain(
            &agent,
            &["Session started", "filter=true"],
            0,
            Duration::from_secs(5),
        )
        .await;

        // Laptop → desk: allowed in both cases.
        let up = format!("laptop-to-desk-{n}-{}", std::process::id());
        assert!(
            arrives(
                || laptop_clipboard(&display, Some(&up)),
                || desk_clipboard(None),
                &up,
                Duration::from_secs(15)
            )
            .await,
            "{controls}: laptop clipboard did not reach the desk\nagent:\n{}\nclient:\n{}",
            plain(&agent.log_text()),
            rdp.stdout.lock().unwrap().join("\n")
        );
        // Desk → laptop: only with `both`.
        let down = format!("desk-to-laptop-{n}-{}", std::process::id());
        let got = arrives(
            || desk_clipboard(Some(&down)),
            || laptop_clipboard(&display, None),
            &down,
            Duration::from_secs(12),
        )
        .await;
        assert_eq!(
            got, desk_to_laptop,
            "{controls}: desk to laptop arrived = {got}"
        );
        if !desk_to_laptop {
            wait_plain(
                &gw.proc,
                &[
                    "RDP blocked",
                    "clipboard_data",
                    "direction=\"server_to_client\"",
                ],
                0,
                Duration::from_secs(10),
            )
            .await;
        }
        rdp.kill().await;
    }
    xrdp.terminate();
}

/// `kakehashi-gateway demo --rdp` as printed: log in, then the printed
/// `connect demo-desk --launch` line opens the demo desk (freerdp-shadow-cli, NLA,
/// with the printed RDP user and password) through the filter, and the desktop comes up.
#[tokio::test(flavor = "multi_thread")]
async fn demo_rdp_opens_a_desktop_as_printed() {
    install_peers().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut demo = Proc::spawn(
        &bin("kakehashi-gateway"),
        &["demo", "--rdp", "--dir", dir.to_str().unwrap()],
        tmp.path().join("demo.log"),
        &[],
    );
    demo.wait_line("Kakehashi demo is running", Duration::from_secs(60))
        .await
        .unwrap();
    demo.wait_line("First log in", Duration::from_secs(5))
        .await
        .unwrap();
    let login = demo.wait_line("  ", Duration::from_secs(5)).await.unwrap();
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&login)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    demo.wait_line("Open it in xfreerdp", Duration::from_secs(5))
        .await
        .unwrap();
    let launch = demo.wait_line("  ", Duration::from_secs(5)).await.unwrap();
    assert!(launch.contains("connect demo-desk --launch"), "{launch}");
    let user = demo
        .wait_line("rdp user: ", Duration::from_secs(5))
        .await
        .unwrap();
    let password = demo
        .wait_line("rdp password: ", Duration::from_secs(5))
        .await
        .unwrap();
    let scratch = tmp.path().join("tmp");
    std::fs::create_dir_all(&scratch).unwrap();
    let wrapper = tmp.path().join("xfreerdp-wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            r#"#!/usr/bin/env bash
port=""; rest=()
for a in "$@"; do
  case $a in /v:127.0.0.1:*) port=${{a#/v:127.0.0.1:}} ;; /u:*) ;; *) rest+=("$a") ;; esac
done
export TMPDIR='{tmp}'
exec '{script}' client --host 127.0.0.1 --port "$port" --user '{user}' --password '{password}' \
  --seconds 2 --timeout 30 -- "${{rest[@]}}"
"#,
            tmp = scratch.display(),
            script = super::rdp::script().display(),
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", wrapper.to_str().unwrap()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&launch)
            .env("KAKEHASHI_XFREERDP", &wrapper)
            .output(),
    )
    .await
    .expect("the launched session did not end")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("RDP_PEERS_CLIENT OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    demo.terminate();
}
