//! The RDP channel filter with real peers: `xfreerdp` → `kakehashi connect` →
//! gateway → agent with `[rdp]` (TLS terminated with the RDP server's own
//! certificate and key, the server pinned to it) → `freerdp-shadow-cli` on
//! Xvfb with NLA, or xrdp (TLS) for the clipboard and device tests.
//!
//! Where the issue asks for the shipped policy, the gateway is store-backed
//! ([`store_sections`]: the default policy of DESIGN.md §5) with a level-2 desk
//! and a logged-in laptop whose certificate says home or satellite; home access
//! at any hour needs BCP mode, declared with `kakehashi-gateway bcp declare`.
//! Transport-level cases (allow-all, standard RDP security, a wrong key) use a
//! bare relay whose controls come from the test knob `[testing] controls`.
//!
//! Evidence (FreeRDP 2 at `WLOG_LEVEL=DEBUG`, see `rdp.rs` for the rest):
//! - shadow server stdout, per session past MCS connect: `… - Accepted channels:` then
//!   one line `… -  NAME` per channel the client's Connect Initial listed (the filter
//!   renames denied ones to `kkhxNN`, so the server never serves them; filtered ones
//!   such as a one-way `cliprdr` keep their name);
//! - xfreerdp's own debug log (`rdp-xfreerdp-NAME.log`) shows which channel
//!   plugins it loaded (`Loading Static Virtual Channel rdpdr` …), proving it asked;
//! - xrdp: the desk's X clipboard (xclip), the FUSE mount of redirected drives and the
//!   `Detected remote …` lines of xrdp-chansrv's log (see `tests/rdp/xrdp-peer.sh`);
//! - gateway: `RDP blocked` lines with the session id,
//!   `kakehashi_rdp_blocked_total{kind=…}` on `/metrics`, and with a store the
//!   `rdp.blocked` records of `kakehashi-gateway audit export`;
//! - agent: `Session refused by the RDP filter` with `reason="rdp_uninspectable"`, or
//!   `the RDP server's certificate is not the one in [rdp] server_cert`.

use std::net::SocketAddr;
use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_store::Store;
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

/// Lines of `p`'s log (colour removed) containing every one of `needles`.
fn log_lines(p: &Proc, needles: &[&str]) -> usize {
    p.plain_log()
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
        p.plain_log()
    )
}

async fn metrics(gw: &GatewayProc) -> String {
    http_get(gw.addrs.admin, "/metrics").await.unwrap().1
}

fn xfreerdp_log(pki: &Pki, name: &str) -> String {
    std::fs::read_to_string(pki.path().join(format!("rdp-xfreerdp-{name}.log"))).unwrap_or_default()
}

/// A store-backed gateway (the shipped default policy) whose store is `db`,
/// and that store opened for seeding.
async fn policy_gateway(pki: &Pki, db: &std::path::Path) -> (GatewayProc, Store) {
    let gw = start_gateway(
        pki,
        GatewayOpts {
            identity: Some(store_sections(db)),
            ..Default::default()
        },
    )
    .await;
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    (gw, store)
}

/// The ids of the sessions `gw` started for `desk`, from its audit export, with the
/// rule and controls the policy chose.
fn started_sessions(audit: &[serde_json::Value], desk: &str) -> Vec<(String, serde_json::Value)> {
    audit
        .iter()
        .filter(|r| r["action"] == "session.start")
        .filter_map(|r| {
            let d = audit_detail(r);
            (d["desk"] == desk).then(|| (r["subject"].as_str().unwrap().to_string(), d))
        })
        .collect()
}

/// The exported `rdp.blocked` records of `session` as (reason, detail).
fn blocked_records(audit: &[serde_json::Value], session: &str) -> Vec<(String, serde_json::Value)> {
    audit
        .iter()
        .filter(|r| r["action"] == "rdp.blocked" && r["subject"] == session)
        .map(|r| (r["reason"].as_str().unwrap().to_string(), audit_detail(r)))
        .collect()
}

/// Poll `gw`'s audit export until `want` holds for it (reports reach the store a
/// little after the log line); returns the export.
async fn audit_until(
    gw: &GatewayProc,
    within: Duration,
    want: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let start = std::time::Instant::now();
    loop {
        let audit = audit_export(gw).await;
        if want(&audit) {
            return audit;
        }
        if start.elapsed() > within {
            panic!(
                "the audit log never showed what was expected within {within:?}:\n{}",
                audit
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (a) Everything denied, as the shipped default policy decides for level 2 from
/// home (with BCP mode declared, so the test runs at any hour): the client asks for
/// drives, printers, clipboard, USB and sound; NLA completes and the desktop comes
/// up; the server never serves rdpdr (so it never sees a drive or printer announce)
/// nor rdpsnd; cliprdr is served but filtered (clipboard `to-remote`); no USB channel
/// is ever opened: the client loads its URBDRC plugin, but neither side logs a URBDRC
/// channel (the shadow server opens only the graphics pipeline; the agent's refusal of
/// a server's URBDRC create request is covered by the rdpfilter unit tests); the
/// blocked channels are in the gateway's log, metrics and audit log with the session
/// id. Over QUIC and over TCP (the two control-stream paths of the reports).
#[tokio::test(flavor = "multi_thread")]
async fn rdp_filter_denies_everything_with_nla_intact() {
    install_peers().await;
    let mut pki = Pki::new();
    let rdp_cert = rdp_server_cert(&mut pki);
    let (server, rdp_addr) = start_rdp_server_with(&pki, &rdp_cert).await;
    let db = pki.path().join("deny.db");
    let (gw, store) = policy_gateway(&pki, &db).await;
    for desk in ["DESK-F-Q", "DESK-F-T"] {
        add_rdp_desk(&store, desk, 2, &["u-home-f"]).await;
    }
    declare_bcp(&gw, "大雪").await;
    let agent_q = start_agent_rdp(&mut pki, "DESK-F-Q", &gw.addrs, rdp_addr, "quic", &rdp_cert);
    let agent_t = start_agent_rdp(&mut pki, "DESK-F-T", &gw.addrs, rdp_addr, "tcp", &rdp_cert);
    for desk in ["DESK-F-Q", "DESK-F-T"] {
        wait_log_line(&gw.proc, &["Agent online", desk], Duration::from_secs(20))
            .await
            .unwrap();
    }
    let dev = pki.device("LAPTOP-F", TerminalClass::Home);
    let token = redeem_login(&pki, &dev, gw.addrs.terminal_tcp, &store, "u-home-f").await;
    let cfg = client_config_logged_in(&pki, &dev, &gw.addrs, "u-home-f", &token);
    let via_quic = start_client(&pki, &cfg, "DESK-F-Q", "quic").await.unwrap();
    let via_tcp = start_client(&pki, &cfg, "DESK-F-T", "tcp").await.unwrap();

    for (name, desk, client, agent) in [
        ("deny-quic", "DESK-F-Q", &via_quic, &agent_q),
        ("deny-tcp", "DESK-F-T", &via_tcp, &agent_t),
    ] {
        let before = accepted_channels(&server).len();
        let blocked: std::collections::HashMap<&str, usize> = ["what=rdpdr", "what=rdpsnd"]
            .into_iter()
            .map(|w| (w, log_lines(&gw.proc, &["RDP blocked", w])))
            .collect();
        let (code, out) = rdp_client_with(&pki, name, client.listen, PASSWORD, EVERYTHING).await;
        assert_eq!(
            code, 0,
            "{name}: no working desktop through the filter:\n{out}"
        );
        let channels = next_channels(&server, before).await;
        for denied in ["rdpdr", "rdpsnd"] {
            assert!(
                !channels.iter().any(|c| c.eq_ignore_ascii_case(denied)),
                "{name}: the server accepted {denied}: {channels:?}"
            );
        }
        assert!(
            channels.iter().any(|c| c == "cliprdr"),
            "{name}: cliprdr (to-remote: filtered, not denied) was not served: {channels:?}"
        );
        assert!(
            channels.iter().filter(|c| c.starts_with("kkhx")).count() >= 2,
            "{name}: rdpdr and rdpsnd were not renamed: {channels:?}"
        );
        // The client did ask for everything.
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
        // No USB channel on either side: the server never logs one, and the client
        // never got one opened (a server asking would have been refused by the agent).
        let slog = server.stdout.lock().unwrap().join("\n") + &server.log_text();
        assert!(
            !slog.to_ascii_lowercase().contains("urbdrc"),
            "{name}: the server mentions URBDRC"
        );
        // (FreeRDP logs `process_create_request: ChannelId=N ChannelName=NAME` for
        // every dynamic channel the server opens.)
        assert!(
            !xlog
                .lines()
                .any(|l| l.contains("ChannelName=URBDRC") || l.contains("listener URBDRC")),
            "{name}: a URBDRC channel was opened to the client:\n{}",
            xlog.lines()
                .filter(|l| l.contains("process_create_request"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        wait_plain(
            agent,
            &["Session started", "filter=true"],
            0,
            Duration::from_secs(5),
        )
        .await;
        // Reported to the gateway, with the session id.
        for what in ["what=rdpdr", "what=rdpsnd"] {
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
        // And in the audit log: the policy's decision, then the blocked channels of
        // that very session.
        let audit = audit_until(&gw, Duration::from_secs(10), |audit| {
            started_sessions(audit, desk).iter().any(|(id, _)| {
                let b = blocked_records(audit, id);
                ["rdpdr", "rdpsnd"].iter().all(|w| {
                    b.iter()
                        .any(|(reason, d)| reason == "static_channel" && d["what"] == *w)
                })
            })
        })
        .await;
        for (id, start) in started_sessions(&audit, desk) {
            assert_eq!(start["rule"], "l2-home", "{name}: {start}");
            assert_eq!(
                start["controls"]["clipboard"], "to-remote",
                "{name}: {start}"
            );
            // The record says the controls were enforced, by the agent's filter.
            assert_eq!(start["enforced"], true, "{name}: {start}");
            for (reason, d) in blocked_records(&audit, &id) {
                assert_eq!(d["desk"], desk, "{name}: {d}");
                assert_ne!(
                    d["what"], "cliprdr",
                    "{name}: cliprdr blocked as a channel: {reason} {d}"
                );
            }
        }
    }
    let m = metrics(&gw).await;
    assert!(
        metric(&m, r#"kakehashi_rdp_blocked_total{kind="static_channel"}"#) >= 4.0,
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
            // The gateway logs the block, then writes its audit record.
            let start = std::time::Instant::now();
            let (audit, at) = loop {
                let audit = store.audit_between(0, i64::MAX).await.unwrap();
                if let Some(at) = audit.iter().position(|r| r.action == "rdp.blocked") {
                    break (audit, at);
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no rdp.blocked audit record: {audit:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let rec = &audit[at];
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
    let mut cmd = command(xrdp_script());
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
    let mut cmd = command("timeout");
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

/// `xrdp-peer.sh ARGS…`: success and stdout.
async fn xrdp_peer(args: &[&str]) -> (bool, String) {
    let out = command(xrdp_script()).args(args).output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// xrdp-chansrv's log lines (all of the desk user's sessions) containing `needle`.
async fn chansrv_lines(needle: &str) -> Vec<String> {
    let (_, log) = xrdp_peer(&["chansrv-log", "--user", XRDP_USER]).await;
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// `file` of the client drive `name` as the desk user reads it through
/// xrdp-chansrv's FUSE mount (`~/thinclient_drives/NAME`), if it can.
async fn drive_read(name: &str, file: &str) -> Option<String> {
    let (ok, out) = xrdp_peer(&[
        "drive-read",
        "--user",
        XRDP_USER,
        "--name",
        name,
        "--file",
        file,
    ])
    .await;
    ok.then_some(out)
}

/// One pass of [`rdp_filter_enforces_clipboard_and_devices_with_xrdp`].
struct XrdpPass {
    /// What the pass is.
    label: &'static str,
    /// `None`: a bare relay with [`ALLOW_ALL`] controls; `Some`: the shipped default
    /// policy for a laptop of this class and a level-2 desk.
    class: Option<TerminalClass>,
    /// Declare BCP mode (home access at any hour).
    bcp: bool,
    /// Desk → laptop clipboard allowed.
    desk_to_laptop: bool,
    /// The redirected drive reaches the desk.
    drive: bool,
    /// rdpdr is served (its device announce reaches xrdp-chansrv).
    rdpdr_served: bool,
}

/// (e) Clipboard direction and device redirection against a peer that serves both:
/// xrdp (Xvnc backend, TLS security; its xrdp-chansrv syncs the RDP clipboard with the
/// desk's X clipboard and mounts client drives with FUSE), through the filter, one
/// gateway per pass and one xrdp session for all of them:
///
/// 1. bare relay, allow-all controls: text set with xclip on either display arrives on
///    the other, and the laptop's drive appears on the desk — a file's content is read
///    through `~kkrdp/thinclient_drives/NAME` and chansrv logs `Detected remote drive
///    'NAME'` and `Detected remote printer` (so the test can see both);
/// 2. default policy, home laptop, level-2 desk, BCP mode: laptop → desk arrives, desk
///    → laptop never does, rdpdr is not served (no drive, chansrv detects no device),
///    and the audit log has `rdp.blocked` records for `clipboard_data` and `rdpdr`;
/// 3. default policy, satellite laptop, level-2 desk: clipboard both ways; rdpdr is
///    served (chansrv detects the printer of the same announce) but the drive never
///    reaches the desk, and the audit log has an `rdp.blocked` record of kind `device`
///    for `drive NAME`.
///
/// The clipboard is exercised with xfreerdp (`+clipboard`), the devices with rdesktop
/// (`-r disk:NAME=DIR -r printer:…`) reconnecting to the same xrdp session: FreeRDP 2.11
/// never announces drives or printers to Debian 12's xrdp 0.9.21 (xrdp sends the rdpdr
/// User Logged On PDU before its capabilities; xrdp issues #2834/#2971), and rdesktop's
/// desk → laptop clipboard does not work with that xrdp.
#[tokio::test(flavor = "multi_thread")]
async fn rdp_filter_enforces_clipboard_and_devices_with_xrdp() {
    install_peers().await;
    let out = command(xrdp_script())
        .arg("install")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "xrdp-peer.sh install failed: {out:?}");
    assert!(
        std::path::Path::new("/dev/fuse").exists(),
        "xrdp-chansrv mounts redirected drives with FUSE: this test needs /dev/fuse \
         (in a container: --device /dev/fuse --cap-add SYS_ADMIN)"
    );
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
    )
    // Its sessions outlive a SIGKILL of the script: on a failure, stop them too.
    .terminate_on_drop();
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

    let passes = [
        XrdpPass {
            label: "bare relay, allow all",
            class: None,
            bcp: false,
            desk_to_laptop: true,
            drive: true,
            rdpdr_served: true,
        },
        XrdpPass {
            label: "default policy, home, level 2, BCP",
            class: Some(TerminalClass::Home),
            bcp: true,
            desk_to_laptop: false,
            drive: false,
            rdpdr_served: false,
        },
        XrdpPass {
            label: "default policy, satellite, level 2",
            class: Some(TerminalClass::Satellite),
            bcp: false,
            desk_to_laptop: true,
            drive: false,
            rdpdr_served: true,
        },
    ];
    let run = std::process::id();
    for (n, pass) in passes.iter().enumerate() {
        let label = pass.label;
        let desk = format!("DESK-X{n}");
        let user = format!("u-xrdp-{n}");
        let dev = pki.device(
            &format!("LAPTOP-X{n}"),
            pass.class.unwrap_or(TerminalClass::Home),
        );
        let (gw, cfg) = match pass.class {
            None => {
                let gw = start_gateway(
                    &pki,
                    GatewayOpts {
                        controls: Some(ALLOW_ALL.into()),
                        ..Default::default()
                    },
                )
                .await;
                let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
                (gw, cfg)
            }
            Some(_) => {
                let db = pki.path().join(format!("xrdp-{n}.db"));
                let (gw, store) = policy_gateway(&pki, &db).await;
                add_rdp_desk(&store, &desk, 2, &[&user]).await;
                if pass.bcp {
                    declare_bcp(&gw, "大雪").await;
                }
                let token = redeem_login(&pki, &dev, gw.addrs.terminal_tcp, &store, &user).await;
                let cfg = client_config_logged_in(&pki, &dev, &gw.addrs, &user, &token);
                (gw, cfg)
            }
        };
        let agent = start_agent_rdp(&mut pki, &desk, &gw.addrs, xrdp_addr, "quic", &cert);
        wait_log_line(&gw.proc, &["Agent online", &desk], Duration::from_secs(20))
            .await
            .unwrap();
        let client = start_client(&pki, &cfg, &desk, "quic").await.unwrap();
        let port = client.listen.port().to_string();

        // Clipboard, with xfreerdp.
        let tmp = pki.path().join(format!("tmp-x{n}"));
        std::fs::create_dir_all(&tmp).unwrap();
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
                "90",
                "--timeout",
                "60",
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
        rdp.wait_line("RDP_PEERS_CLIENT active", Duration::from_secs(70))
            .await
            .unwrap();
        let filtered = if pass.class.is_none() {
            "filter=false"
        } else {
            "filter=true"
        };
        wait_plain(
            &agent,
            &["Session started", filtered],
            0,
            Duration::from_secs(5),
        )
        .await;

        // Laptop → desk: allowed in every pass.
        let up = format!("laptop-to-desk-{n}-{run}");
        assert!(
            arrives(
                || laptop_clipboard(&display, Some(&up)),
                || desk_clipboard(None),
                &up,
                Duration::from_secs(20)
            )
            .await,
            "{label}: laptop clipboard did not reach the desk\nagent:\n{}\nclient:\n{}",
            plain(&agent.log_text()),
            rdp.stdout.lock().unwrap().join("\n")
        );
        // Desk → laptop: only with `both`.
        let down = format!("desk-to-laptop-{n}-{run}");
        let got = arrives(
            || desk_clipboard(Some(&down)),
            || laptop_clipboard(&display, None),
            &down,
            Duration::from_secs(if pass.desk_to_laptop { 20 } else { 12 }),
        )
        .await;
        assert_eq!(
            got, pass.desk_to_laptop,
            "{label}: desk to laptop arrived = {got}"
        );
        if !pass.desk_to_laptop {
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
        wait_plain(&agent, &["Session ended"], 0, Duration::from_secs(20)).await;

        // Devices, with rdesktop on the same xrdp session.
        let drive = format!("KK{:04X}{n}", run & 0xffff);
        let drive_dir = pki.path().join(format!("drive-x{n}"));
        std::fs::create_dir_all(&drive_dir).unwrap();
        let secret = format!("drive content {n} {run} {:016x}", rand::random::<u64>());
        std::fs::write(drive_dir.join("proof.txt"), &secret).unwrap();
        let printers_before = chansrv_lines("Detected remote printer").await.len();
        let rdpdr_blocks_before = log_lines(&gw.proc, &["RDP blocked", "what=rdpdr"]);
        let disk = format!("disk:{drive}={}", drive_dir.display());
        let mut rd = Proc::spawn(
            &xrdp_script(),
            &[
                "rdesktop",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--user",
                XRDP_USER,
                "--password",
                XRDP_PASSWORD,
                "--timeout",
                "60",
                "--",
                "-r",
                &disk,
                "-r",
                "printer:KKPRN",
                "-r",
                "clipboard:off",
            ],
            pki.path().join(format!("rdesktop-x{n}.log")),
            &[("TMPDIR", tmp.to_str().unwrap())],
        );
        rd.wait_line("XRDP_PEER_RDESKTOP connected", Duration::from_secs(70))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{label}: rdesktop did not connect: {e:#}\n{}",
                    rd.stdout.lock().unwrap().join("\n")
                )
            });
        let detected = format!("Detected remote drive '{drive}'");
        if pass.drive {
            // The drive works end to end: the desk reads the laptop's file.
            let start = std::time::Instant::now();
            loop {
                if drive_read(&drive, "proof.txt").await.as_deref() == Some(secret.as_str()) {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{label}: the drive never appeared on the desk; chansrv:\n{}\nrdesktop:\n{}",
                    chansrv_lines("").await.join("\n"),
                    rd.stdout.lock().unwrap().join("\n")
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            // chansrv logged the announce: the drive, and the printer the
            // satellite pass relies on to see that rdpdr is served.
            assert!(!chansrv_lines(&detected).await.is_empty(), "{label}");
            assert!(
                chansrv_lines("Detected remote printer").await.len() > printers_before,
                "{label}: {}",
                chansrv_lines("").await.join("\n")
            );
        } else if pass.rdpdr_served {
            // The announce reached chansrv (its printer did), without the drive.
            let start = std::time::Instant::now();
            while chansrv_lines("Detected remote printer").await.len() <= printers_before {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{label}: the device announce never reached the desk; chansrv:\n{}",
                    chansrv_lines("").await.join("\n")
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let what = format!("what=drive {drive}");
            wait_plain(
                &gw.proc,
                &["RDP blocked", "kind=\"device\"", &what],
                0,
                Duration::from_secs(10),
            )
            .await;
        } else {
            // rdpdr renamed: the server never serves it, so nothing is announced.
            wait_plain(
                &gw.proc,
                &[
                    "RDP blocked",
                    "what=rdpdr",
                    "direction=\"client_to_server\"",
                ],
                rdpdr_blocks_before,
                Duration::from_secs(10),
            )
            .await;
            // In the allow pass the drive is detected within a second of connecting.
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(
                chansrv_lines("Detected remote printer").await.len(),
                printers_before,
                "{label}: rdpdr was served"
            );
        }
        if !pass.drive {
            assert!(
                chansrv_lines(&detected).await.is_empty(),
                "{label}: the desk saw the drive announced"
            );
            assert_eq!(
                drive_read(&drive, "proof.txt").await,
                None,
                "{label}: the drive is readable on the desk"
            );
        }
        rd.kill().await;
        wait_plain(&agent, &["Session ended"], 1, Duration::from_secs(20)).await;

        // The audit log: the policy's decision, and what was blocked.
        match pass.class {
            None => assert_eq!(
                log_lines(&gw.proc, &["RDP blocked"]),
                0,
                "{label}: {}",
                gw.proc.plain_log()
            ),
            Some(class) => {
                let rule = if class == TerminalClass::Home {
                    "l2-home"
                } else {
                    "l2-satellite"
                };
                let device_what = format!("drive {drive}");
                // Whether a session of the desk has an rdp.blocked record for `reason`
                // and `what` (clipboard data: in the desk → laptop direction).
                let blocked = |audit: &[serde_json::Value], reason: &str, what: &str| {
                    started_sessions(audit, &desk).iter().any(|(id, _)| {
                        blocked_records(audit, id).iter().any(|(r, d)| {
                            r == reason
                                && if reason == "clipboard_data" {
                                    d["direction"] == "server_to_client"
                                } else {
                                    d["what"] == what
                                }
                        })
                    })
                };
                let mut expected = Vec::new();
                if !pass.desk_to_laptop {
                    expected.push(("clipboard_data", ""));
                }
                if pass.rdpdr_served {
                    expected.push(("device", device_what.as_str()));
                } else {
                    expected.push(("static_channel", "rdpdr"));
                }
                let audit = audit_until(&gw, Duration::from_secs(10), |audit| {
                    expected.iter().all(|(r, w)| blocked(audit, r, w))
                })
                .await;
                if pass.desk_to_laptop {
                    assert!(
                        !blocked(&audit, "clipboard_data", ""),
                        "{label}: clipboard data was blocked"
                    );
                }
                if pass.rdpdr_served {
                    assert!(
                        !blocked(&audit, "static_channel", "rdpdr"),
                        "{label}: rdpdr was blocked"
                    );
                }
                let sessions = started_sessions(&audit, &desk);
                assert!(sessions.len() >= 2, "{label}: {sessions:?}");
                for (id, start) in &sessions {
                    assert_eq!(start["rule"], rule, "{label}: {start}");
                    let clipboard = if pass.desk_to_laptop {
                        "both"
                    } else {
                        "to-remote"
                    };
                    assert_eq!(
                        start["controls"]["clipboard"], clipboard,
                        "{label}: {start}"
                    );
                    assert_eq!(start["controls"]["drive"], false, "{label}: {start}");
                    for (_, d) in blocked_records(&audit, id) {
                        assert_eq!(d["desk"], desk.as_str(), "{label}: {d}");
                        assert_ne!(d["what"], "cliprdr", "{label}: {d}");
                    }
                }
            }
        }
    }
    // SIGTERM and wait: the script stops xrdp, sesman and the session (a kill on
    // drop alone would leave the session behind until the next server starts).
    xrdp.terminate();
    let _ = xrdp.wait_exit(Duration::from_secs(10)).await;
}

/// `kakehashi-demo --rdp` as printed: log in, then the printed
/// `connect demo-desk --launch` line opens the demo desk (freerdp-shadow-cli, NLA,
/// with the printed RDP user and password) through the filter, and the desktop comes up.
#[tokio::test(flavor = "multi_thread")]
async fn demo_rdp_opens_a_desktop_as_printed() {
    install_peers().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = start_demo(tmp.path(), &["--rdp"]).await;
    demo_login(&mut demo).await;
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
        command("sh")
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
