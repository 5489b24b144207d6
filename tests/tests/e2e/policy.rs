//! The access policy through the real gateway: levels × terminal classes
//! with the shipped default policy, step-up for level 3, and live
//! re-evaluation — blocking a device, tightening the policy, changing a
//! desk, ending or running out of BCP mode end the sessions no longer
//! allowed within a second, with the reason on the client and in the audit
//! log. Changes are made the way officers make them: with the
//! `kakehashi-gateway` CLI on the gateway's store.

use std::time::{Duration, Instant};

use kakehashi_pki::TerminalClass;
use kakehashi_store::Store;
use kakehashi_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A session through a real `kakehashi connect`: the local TCP stream after
/// one echo round trip.
async fn open_session(client: &ClientProc) -> TcpStream {
    let mut s = TcpStream::connect(client.listen).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(&buf, b"ping");
    s
}

/// Wait until the gateway ends the session behind `s` (EOF or reset);
/// returns how long it took.
async fn ended_within(s: &mut TcpStream, within: Duration) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Err(_) => panic!("the session was not ended within {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

async fn still_echoes(s: &mut TcpStream) {
    s.write_all(b"more").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("the session stopped echoing")
        .unwrap();
    assert_eq!(&buf, b"more");
}

/// The audit record of how session `id` ended.
async fn end_reason(store: &Store, id: &str) -> String {
    for _ in 0..50 {
        let log = store.audit_between(0, i64::MAX).await.unwrap();
        if let Some(r) = log
            .iter()
            .find(|r| r.action == "session.end" && r.subject == id)
        {
            return r.reason.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no session.end audit record for {id}");
}

/// The id of the newest session the gateway started for `desk`.
async fn newest_session(store: &Store, desk: &str) -> String {
    let log = store.audit_between(0, i64::MAX).await.unwrap();
    log.iter()
        .rev()
        .find(|r| {
            r.action == "session.start" && r.detail_json().unwrap()["desk"].as_str() == Some(desk)
        })
        .map(|r| r.subject.clone())
        .unwrap_or_else(|| panic!("no session.start for {desk}"))
}

struct Setup {
    pki: Pki,
    gw: GatewayProc,
    store: Store,
    _agents: Vec<Proc>,
}

async fn setup(desks: &[(&str, u8, &str)]) -> Setup {
    setup_with(desks, "").await
}

/// [`setup`] with extra gateway configuration after the store sections.
async fn setup_with(desks: &[(&str, u8, &str)], extra: &str) -> Setup {
    let mut pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(format!("{}{extra}", store_sections(&db))),
            ..Default::default()
        },
    )
    .await;
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    let mut agents = Vec::new();
    for (desk, level, owner) in desks {
        add_desk(&store, desk, *level, &[owner]).await;
        let echo = echo_server().await;
        agents.push(start_agent(&mut pki, desk, &gw.addrs, echo, "quic"));
        crate::e2e::rdp::wait_log_line(&gw.proc, &["Agent online", desk], Duration::from_secs(20))
            .await
            .unwrap();
    }
    Setup {
        pki,
        gw,
        store,
        _agents: agents,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn level_3_only_from_a_satellite_office_with_a_fresh_login() {
    let Setup {
        mut pki,
        gw,
        store,
        _agents,
    } = setup(&[("DESK-L3", 3, "u-sato")]).await;
    // From home: the level-3 rule refuses, whatever the login.
    let home = pki.device("LAPTOP-HOME", TerminalClass::Home);
    let t = redeem_login(&pki, &home, gw.addrs.terminal_tcp, &store, "u-sato").await;
    let r = request_session(&pki, &home, &gw, "DESK-L3", &t)
        .await
        .unwrap_err();
    assert_eq!(r.code, "level_not_permitted", "{r:?}");
    assert!(
        r.ja.contains("機密性レベル") && r.en.contains("confidentiality"),
        "{r:?}"
    );
    assert_eq!(r.detail.as_deref(), Some("rule l3-home-mobile"));

    // From a satellite office, right after a login (the step-up): allowed once.
    let sat = pki.device("LAPTOP-SAT", TerminalClass::Satellite);
    let t = redeem_login(&pki, &sat, gw.addrs.terminal_tcp, &store, "u-sato").await;
    let id = request_session(&pki, &sat, &gw, "DESK-L3", &t)
        .await
        .expect("level 3 from a satellite office with a fresh login");
    // The same login does not open a second level-3 session.
    let r = request_session(&pki, &sat, &gw, "DESK-L3", &t)
        .await
        .unwrap_err();
    assert_eq!(r.code, "step_up_required");
    assert!(r.ja.contains("kakehashi login"), "{}", r.ja);
    // Another person's desk: not an owner.
    add_desk(&store, "DESK-OTHER", 1, &["u-other"]).await;
    let t = redeem_login(&pki, &sat, gw.addrs.terminal_tcp, &store, "u-sato").await;
    let r = request_session(&pki, &sat, &gw, "DESK-OTHER", &t)
        .await
        .unwrap_err();
    assert_eq!(r.code, "not_desk_owner");
    // An unregistered desk.
    let r = request_session(&pki, &sat, &gw, "DESK-NONE", &t)
        .await
        .unwrap_err();
    assert_eq!(r.code, "desk_unknown");

    // Every decision is in the audit log with its reason and rule.
    let log = store.audit_between(0, i64::MAX).await.unwrap();
    let denied: Vec<(&str, String)> = log
        .iter()
        .filter(|r| r.action == "session.denied")
        .map(|r| {
            (
                r.reason.as_str(),
                r.detail_json().unwrap()["rule"].to_string(),
            )
        })
        .collect();
    assert!(
        denied.contains(&("level_not_permitted", "\"l3-home-mobile\"".into())),
        "{denied:?}"
    );
    assert!(denied.iter().any(|(r, _)| *r == "step_up_required"));
    assert!(denied.iter().any(|(r, _)| *r == "not_desk_owner"));
    let start = log
        .iter()
        .find(|r| r.action == "session.start" && r.subject == id)
        .expect("session.start");
    let d = start.detail_json().unwrap();
    assert_eq!(d["rule"], "l3-satellite");
    assert_eq!(d["step_up"], true);
    assert_eq!(d["controls"]["clipboard"], "to-remote", "{d}");
    assert_eq!(d["controls"]["drive"], false, "{d}");
}

#[tokio::test(flavor = "multi_thread")]
async fn blocking_a_device_ends_its_session_within_a_second() {
    let Setup {
        mut pki,
        gw,
        store,
        _agents,
    } = setup(&[("DESK-B2", 2, "u-ito")]).await;
    let dev = pki.device("LAPTOP-ITO", TerminalClass::Satellite);
    let t = redeem_login(&pki, &dev, gw.addrs.terminal_tcp, &store, "u-ito").await;
    let cfg = client_config_logged_in(&pki, &dev, &gw.addrs, "u-ito", &t);
    let client = start_client(&pki, &cfg, "DESK-B2", "quic").await.unwrap();
    let mut s = open_session(&client).await;
    let id = newest_session(&store, "DESK-B2").await;

    block_device(&gw, "LAPTOP-ITO").await;
    let took = ended_within(&mut s, Duration::from_secs(1)).await;
    eprintln!("session ended {took:?} after the block command returned");
    // Like an RDP client, close on EOF; the laptop then asks why.
    drop(s);
    assert_eq!(end_reason(&store, &id).await, "device_blocked");
    // The person is told why, in Japanese and English.
    client
        .proc
        .wait_log("device_blocked", Duration::from_secs(5))
        .await
        .unwrap();
    let log = client.proc.log_text();
    assert!(
        log.contains("セッションはゲートウェイにより終了しました"),
        "{log}"
    );
}

/// `kakehashi connect --stdio` (an SSH-style ProxyCommand) ends when the
/// gateway ends its session, though its standard input stays open.
#[tokio::test(flavor = "multi_thread")]
async fn connect_stdio_exits_when_the_gateway_ends_the_session() {
    let Setup {
        mut pki,
        gw,
        store,
        _agents,
    } = setup(&[("DESK-S1", 2, "u-ito")]).await;
    let dev = pki.device("LAPTOP-ITO", TerminalClass::Satellite);
    let t = redeem_login(&pki, &dev, gw.addrs.terminal_tcp, &store, "u-ito").await;
    let cfg = client_config_logged_in(&pki, &dev, &gw.addrs, "u-ito", &t);
    let log = pki.path().join("stdio-client.log");
    let mut child = tokio::process::Command::new(bin("kakehashi"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "connect",
            "DESK-S1",
            "--stdio",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stdout.read_exact(&mut buf))
        .await
        .expect("no echo through --stdio")
        .unwrap();
    assert_eq!(&buf, b"ping");

    block_device(&gw, "LAPTOP-ITO").await;
    // Standard input stays open (`stdin` is held until the end of the test).
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("connect --stdio did not exit when the gateway ended its session")
        .unwrap();
    assert!(!status.success(), "the end by the gateway is an error exit");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("device_blocked"), "{text}");
    drop(stdin);
}

#[tokio::test(flavor = "multi_thread")]
async fn tightening_the_policy_or_a_desk_ends_only_the_sessions_no_longer_allowed() {
    let Setup {
        mut pki,
        gw,
        store,
        _agents,
    } = setup(&[("DESK-T1", 1, "u-kato"), ("DESK-T2", 2, "u-kato")]).await;
    let dev = pki.device("LAPTOP-KATO", TerminalClass::Satellite);
    let t = redeem_login(&pki, &dev, gw.addrs.terminal_tcp, &store, "u-kato").await;
    let cfg = client_config_logged_in(&pki, &dev, &gw.addrs, "u-kato", &t);
    let c1 = start_client(&pki, &cfg, "DESK-T1", "quic").await.unwrap();
    let c2 = start_client(&pki, &cfg, "DESK-T2", "tcp").await.unwrap();
    let mut s1 = open_session(&c1).await;
    let id1 = newest_session(&store, "DESK-T1").await;
    let mut s2 = open_session(&c2).await;
    let id2 = newest_session(&store, "DESK-T2").await;

    // The officer exports the policy, denies level 2 from satellite offices, imports it.
    let (ok, current) =
        gateway_cli(&["policy", "export", "--config", gw.config.to_str().unwrap()]).await;
    assert!(ok, "{current}");
    let marker = "id = \"l2-satellite\"";
    let at = current.find(marker).expect("l2-satellite rule");
    let effect = at + current[at..].find("effect = \"allow\"").unwrap();
    let mut tightened = current.clone();
    tightened.replace_range(
        effect..effect + "effect = \"allow\"".len(),
        "effect = \"deny\"",
    );
    let file = pki.path().join("tightened.toml");
    std::fs::write(&file, &tightened).unwrap();
    let (ok, out) = gateway_cli(&["policy", "check", file.to_str().unwrap()]).await;
    assert!(ok, "{out}");
    let (ok, out) = gateway_cli(&[
        "policy",
        "import",
        "--config",
        gw.config.to_str().unwrap(),
        file.to_str().unwrap(),
        "--reason",
        "level 2 stays in the office",
    ])
    .await;
    assert!(ok, "{out}");
    ended_within(&mut s2, Duration::from_secs(1)).await;
    drop(s2);
    assert_eq!(end_reason(&store, &id2).await, "level_not_permitted");
    still_echoes(&mut s1).await;
    c2.proc
        .wait_log("level_not_permitted", Duration::from_secs(5))
        .await
        .unwrap();
    // A new level-2 session is refused by the new version too.
    let r = request_session(&pki, &dev, &gw, "DESK-T2", &t)
        .await
        .unwrap_err();
    assert_eq!(r.code, "level_not_permitted");

    // The desk moves into the My Number segment: never reachable remotely.
    let (ok, out) = gateway_cli(&[
        "admin",
        "--config",
        gw.config.to_str().unwrap(),
        "desk",
        "set",
        "--id",
        "DESK-T1",
        "--segment",
        "mynumber",
        "--reason",
        "re-cabled",
    ])
    .await;
    assert!(ok, "{out}");
    ended_within(&mut s1, Duration::from_secs(1)).await;
    assert_eq!(end_reason(&store, &id1).await, "segment_mynumber");

    // The audit log says who changed what, and why.
    let log = store.audit_between(0, i64::MAX).await.unwrap();
    let import = log.iter().rfind(|r| r.action == "policy.import").unwrap();
    assert!(import.actor.starts_with("admin:"), "{import:?}");
    assert_eq!(import.reason, "level 2 stays in the office");
    assert!(log
        .iter()
        .any(|r| r.action == "desk.set" && r.subject == "DESK-T1" && r.reason == "re-cabled"));
}

fn rfc3339_in(secs: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(secs))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bcp_mode_opens_home_access_and_its_end_closes_it() {
    let Setup {
        mut pki,
        gw,
        store,
        _agents,
    } = setup(&[("DESK-H2", 2, "u-mori")]).await;
    let cfg_path = gw.config.to_str().unwrap().to_string();
    let dev = pki.device("LAPTOP-MORI", TerminalClass::Home);
    let t = redeem_login(&pki, &dev, gw.addrs.terminal_tcp, &store, "u-mori").await;
    // No plan: level 2 from home is refused (outside hours at night, else no plan).
    let r = request_session(&pki, &dev, &gw, "DESK-H2", &t)
        .await
        .unwrap_err();
    assert!(
        ["plan_required", "outside_hours"].contains(&r.code.as_str()),
        "{r:?}"
    );
    let before = r.code.clone();

    // Snow day: BCP for everyone until tomorrow.
    let until = rfc3339_in(3600);
    let (ok, out) = gateway_cli(&[
        "bcp", "declare", "--config", &cfg_path, "--scope", "all", "--reason", "大雪", "--until",
        &until,
    ])
    .await;
    assert!(ok, "{out}");
    let cfg = client_config_logged_in(&pki, &dev, &gw.addrs, "u-mori", &t);
    let client = start_client(&pki, &cfg, "DESK-H2", "quic").await.unwrap();
    let mut s = open_session(&client).await;
    let id = newest_session(&store, "DESK-H2").await;

    // The officer ends BCP mode: the session it allowed ends.
    let (ok, out) = gateway_cli(&["bcp", "end", "--config", &cfg_path]).await;
    assert!(ok, "{out}");
    ended_within(&mut s, Duration::from_secs(1)).await;
    let reason = end_reason(&store, &id).await;
    assert!(
        ["plan_required", "outside_hours"].contains(&reason.as_str()),
        "{reason}"
    );
    assert_eq!(reason, before, "the same rule as before BCP decides");

    // A short declaration runs out on its own: its session ends at that time.
    let (ok, out) = gateway_cli(&[
        "bcp",
        "declare",
        "--config",
        &cfg_path,
        "--scope",
        "somu",
        "--reason",
        "訓練",
        "--until",
        &rfc3339_in(3),
    ])
    .await;
    assert!(ok, "{out}");
    let mut s = open_session(&client).await;
    let id = newest_session(&store, "DESK-H2").await;
    ended_within(&mut s, Duration::from_secs(6)).await;
    assert_eq!(end_reason(&store, &id).await, before);
    let (ok, out) = gateway_cli(&["bcp", "list", "--config", &cfg_path]).await;
    assert!(ok && out.contains("訓練") && out.contains("大雪"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rules_time_limit_and_idle_timeout_end_sessions_with_their_reasons() {
    // One policy minute lasts a second here ([testing] policy_minute),
    // so "4 minutes at most, 2 minutes idle" plays out in seconds.
    let Setup {
        mut pki,
        gw,
        store,
        _agents,
    } = setup_with(
        &[("DESK-TL", 1, "u-mori")],
        "[testing]\npolicy_minute = \"1s\"\n",
    )
    .await;
    let (ok, current) =
        gateway_cli(&["policy", "export", "--config", gw.config.to_str().unwrap()]).await;
    assert!(ok, "{current}");
    let marker = "id = \"l1-satellite\"\n";
    assert!(current.contains(marker), "{current}");
    let limited = current.replacen(
        marker,
        &format!("{marker}max_duration_mins = 4\nidle_timeout_mins = 2\n"),
        1,
    );
    let file = pki.path().join("limited.toml");
    std::fs::write(&file, &limited).unwrap();
    let (ok, out) = gateway_cli(&[
        "policy",
        "import",
        "--config",
        gw.config.to_str().unwrap(),
        file.to_str().unwrap(),
        "--reason",
        "short sessions",
    ])
    .await;
    assert!(ok, "{out}");
    gw.proc
        .wait_log("New access policy in force", Duration::from_secs(5))
        .await
        .unwrap();

    let dev = pki.device("LAPTOP-MORI", TerminalClass::Satellite);
    let t = redeem_login(&pki, &dev, gw.addrs.terminal_tcp, &store, "u-mori").await;
    let cfg = client_config_logged_in(&pki, &dev, &gw.addrs, "u-mori", &t);
    let client = start_client(&pki, &cfg, "DESK-TL", "quic").await.unwrap();

    // Typing keeps the idle timeout away, but not the time limit.
    let mut busy = open_session(&client).await;
    let busy_id = newest_session(&store, "DESK-TL").await;
    let typing = async {
        loop {
            if busy.write_all(b"k").await.is_err() {
                return;
            }
            let mut b = [0u8; 1];
            match busy.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), typing)
        .await
        .expect("the time limit did not end the session");
    // The reason tells the two timers apart: typing kept the idle one away.
    assert_eq!(end_reason(&store, &busy_id).await, "session_time_limit");
    client
        .proc
        .wait_log("session_time_limit", Duration::from_secs(5))
        .await
        .unwrap();

    // A session nobody types into ends after the idle timeout.
    let mut quiet = open_session(&client).await;
    let quiet_id = newest_session(&store, "DESK-TL").await;
    assert_ne!(quiet_id, busy_id);
    ended_within(&mut quiet, Duration::from_secs(10)).await;
    drop(quiet);
    assert_eq!(end_reason(&store, &quiet_id).await, "session_idle");
    client
        .proc
        .wait_log("session_idle", Duration::from_secs(5))
        .await
        .unwrap();
}
