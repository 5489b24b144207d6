//! Operations: audit export and offline verification, the attendance
//! report on a synthetic month, syslog forwarding from a running gateway,
//! JSON logs without secrets, and the monitoring assets in
//! deploy/monitoring checked against a real gateway's /metrics.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_proto::io::{read_frame, write_message};
use kakehashi_proto::message::{LoginResult, Message, RedeemLogin, Secret, SessionRequest};
use kakehashi_proto::{FrameKind, Refusal, ALPN_TERMINAL};
use kakehashi_store::{Audit, DeviceClass, NewUser, Role, SessionEnd, SessionStart, Store};
use kakehashi_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Run `kakehashi-gateway ARGS`; (success, stdout, stderr).
async fn gw(args: &[&str]) -> (bool, String, String) {
    let out = command(bin("kakehashi-gateway"))
        .args(args)
        .env("USER", "officer-yamada")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn user(id: &str, name: &str, dept: &str) -> NewUser {
    NewUser {
        id: id.into(),
        name: name.into(),
        department: dept.into(),
        roles: [Role::Staff].into_iter().collect(),
    }
}

/// Unix time of `YYYY-MM-DD` `h:m` in JST (the default utc_offset_hours = 9).
fn jst(date: &str, h: i64, m: i64) -> i64 {
    let p: Vec<u32> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let d = time::Date::from_calendar_date(
        p[0] as i32,
        time::Month::try_from(p[1] as u8).unwrap(),
        p[2] as u8,
    )
    .unwrap();
    let jst = time::UtcOffset::from_hms(9, 0, 0).unwrap();
    d.midnight().assume_offset(jst).unix_timestamp() + h * 3600 + m * 60
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_export_round_trips_and_tampering_is_detected() {
    let pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    let cfg = cli_config(&pki, &db);
    let c = cfg.to_str().unwrap();
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    // Three days of records, with text a CSV or a careless parser would trip on.
    for (i, day) in ["2025-01-06", "2025-01-07", "2025-01-08"]
        .iter()
        .enumerate()
    {
        for h in [9, 13, 18] {
            store
                .append_audit(
                    Audit::new(jst(day, h, 0), "admin:yamada", "device.block")
                        .subject(format!("LAPTOP-{i}{h}"))
                        .reason("紛失届, \"電車内\"")
                        .detail(serde_json::json!({"status": "lost", "n": i})),
                )
                .await
                .unwrap();
        }
    }
    store
        .add_user(
            &user("u-kato", "加藤 一郎", "somu"),
            Audit::new(jst("2025-01-08", 19, 0), "admin:yamada", "user.add"),
        )
        .await
        .unwrap();

    let (ok, out, err) = gw(&["audit", "verify", "--config", c]).await;
    assert!(ok, "{out}{err}");
    let verified: u64 = out
        .split("audit log intact: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(verified, 10);
    let head = store.audit_head().await.unwrap().1.to_hex();

    // Everything verify accepted is exported, every field, in order.
    let all = pki.path().join("all.jsonl");
    let (ok, out, err) = gw(&[
        "audit",
        "export",
        "--config",
        c,
        "--format",
        "jsonl",
        "--out",
        all.to_str().unwrap(),
    ])
    .await;
    assert!(ok, "{out}{err}");
    assert!(
        err.contains(&format!("exported {verified} records (seq 1–{verified})")),
        "{err}"
    );
    assert!(
        err.contains(&head),
        "the export prints the anchor hash: {err}"
    );
    let text = std::fs::read_to_string(&all).unwrap();
    let stored = store.audit_page(0, 100).await.unwrap();
    assert_eq!(text.lines().count() as u64, verified);
    for (line, r) in text.lines().zip(&stored) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["seq"], r.seq);
        assert_eq!(v["at"], r.at);
        assert_eq!(v["actor"], r.actor.as_str());
        assert_eq!(v["action"], r.action.as_str());
        assert_eq!(v["subject"], r.subject.as_str());
        assert_eq!(v["reason"], r.reason.as_str());
        assert_eq!(v["detail"], r.detail.as_str(), "detail exactly as hashed");
        assert_eq!(v["prev_hash"], r.prev_hash.to_hex());
        assert_eq!(v["hash"], r.hash.to_hex());
    }
    let (ok, out, _) = gw(&[
        "audit",
        "verify",
        "--file",
        all.to_str().unwrap(),
        "--last-hash",
        &head,
    ])
    .await;
    assert!(
        ok && out.contains("export intact: 10 records, seq 1–10"),
        "{out}"
    );

    // Two windows split at a local date tile the chain: verified together.
    let a = pki.path().join("a.jsonl");
    let b = pki.path().join("b.jsonl");
    for (file, range) in [
        (&a, ["--until", "2025-01-07"]),
        (&b, ["--since", "2025-01-07"]),
    ] {
        let (ok, out, err) = gw(&[
            "audit",
            "export",
            "--config",
            c,
            "--format",
            "jsonl",
            range[0],
            range[1],
            "--out",
            file.to_str().unwrap(),
        ])
        .await;
        assert!(ok, "{out}{err}");
    }
    assert_eq!(std::fs::read_to_string(&a).unwrap().lines().count(), 3);
    assert_eq!(std::fs::read_to_string(&b).unwrap().lines().count(), 7);
    let (ok, out, _) = gw(&[
        "audit",
        "verify",
        "--file",
        a.to_str().unwrap(),
        "--file",
        b.to_str().unwrap(),
        "--last-hash",
        &head,
    ])
    .await;
    assert!(ok && out.contains("export intact: 10 records"), "{out}");
    // The second window alone: intact, and it names the hash it continues from.
    let (ok, out, _) = gw(&["audit", "verify", "--file", b.to_str().unwrap()]).await;
    assert!(
        ok && out.contains(&format!(
            "starts at seq 4; the record before it has hash {}",
            stored[2].hash.to_hex()
        )),
        "{out}"
    );

    // A tampered line: an officer's copy edited after the fact.
    let lines: Vec<&str> = text.lines().collect();
    let mut edited = lines.clone();
    let e = lines[4].replace("紛失届", "返却済");
    edited[4] = &e;
    let bad = pki.path().join("edited.jsonl");
    std::fs::write(&bad, edited.join("\n") + "\n").unwrap();
    let (ok, out, err) = gw(&["audit", "verify", "--file", bad.to_str().unwrap()]).await;
    assert!(!ok, "tampering must fail: {out}");
    assert!(
        out.contains("EXPORT BROKEN") && out.contains("line 5 (record 5, edited)"),
        "{out}"
    );
    assert!(err.contains("tampered"), "{err}");
    // A deleted line.
    let mut cut = lines.clone();
    cut.remove(6);
    std::fs::write(&bad, cut.join("\n") + "\n").unwrap();
    let (ok, out, _) = gw(&["audit", "verify", "--file", bad.to_str().unwrap()]).await;
    assert!(!ok && out.contains("line 7 (record 8, deleted)"), "{out}");
    // The last line cut off: only the anchor shows it.
    std::fs::write(&bad, lines[..9].join("\n") + "\n").unwrap();
    let (ok, out, _) = gw(&["audit", "verify", "--file", bad.to_str().unwrap()]).await;
    assert!(ok, "{out}");
    let (ok, out, _) = gw(&[
        "audit",
        "verify",
        "--file",
        bad.to_str().unwrap(),
        "--last-hash",
        &head,
    ])
    .await;
    assert!(!ok && out.contains("truncated"), "{out}");

    // CSV for Excel: BOM, header, every record, to stdout.
    let (ok, out, err) = gw(&["audit", "export", "--config", c, "--format", "csv", "--bom"]).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("\u{feff}seq,at,time,actor,action,subject,reason,detail,prev_hash,hash\n"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 11);
    assert!(out.contains("\"紛失届, \"\"電車内\"\"\""), "{out}");
    // Bad arguments are refused with a clear message.
    let (ok, _, err) = gw(&[
        "audit",
        "export",
        "--config",
        c,
        "--format",
        "jsonl",
        "--since",
        "last week",
    ])
    .await;
    assert!(!ok && err.contains("neither RFC 3339"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn attendance_report_for_a_synthetic_month() {
    let pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    let cfg = cli_config(&pki, &db);
    let c = cfg.to_str().unwrap();
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    for u in [
        user("u-sato", "佐藤 花子", "somu"),
        user("u-kato", "加藤, 一郎", "somu"),
        user("u-ito", "伊藤 次郎", "zeimu"),
    ] {
        store
            .add_user(&u, Audit::new(jst("2024-12-01", 9, 0), "test", "user.add"))
            .await
            .unwrap();
    }
    let mut n = 0;
    let mut session = async |user: &str, class: DeviceClass, from: i64, to: i64| {
        n += 1;
        let id = format!("s-{n}");
        let s = SessionStart {
            id: id.clone(),
            user_id: user.into(),
            device_id: format!("LAPTOP-{user}"),
            desk_id: format!("DESK-{user}"),
            class,
            level: 2,
            transport: "quic".into(),
            gateway: "gw1".into(),
        };
        store
            .start_session(
                &s,
                Audit::new(from, "gateway:gw1", "session.start").subject(&id),
            )
            .await
            .unwrap();
        let end = SessionEnd {
            reason: "closed".into(),
            bytes_up: 1,
            bytes_down: 1,
        };
        store
            .end_session(
                &id,
                &end,
                Audit::new(to, "gateway:gw1", "session.end").subject(&id),
            )
            .await
            .unwrap();
    };
    use DeviceClass::{Home, Mobile, Satellite};
    // 佐藤: from New Year's Eve into 1 January; two sessions on the 6th; on
    // the 7th a mobile session inside a home one; nothing on the 8th; across
    // midnight 9th→10th; across the end of the month.
    session(
        "u-sato",
        Home,
        jst("2024-12-31", 23, 30),
        jst("2025-01-01", 0, 45),
    )
    .await;
    session(
        "u-sato",
        Home,
        jst("2025-01-06", 8, 30),
        jst("2025-01-06", 12, 0),
    )
    .await;
    session(
        "u-sato",
        Home,
        jst("2025-01-06", 13, 0),
        jst("2025-01-06", 17, 30),
    )
    .await;
    session(
        "u-sato",
        Home,
        jst("2025-01-07", 8, 0),
        jst("2025-01-07", 18, 0),
    )
    .await;
    session(
        "u-sato",
        Mobile,
        jst("2025-01-07", 9, 0),
        jst("2025-01-07", 10, 0),
    )
    .await;
    session(
        "u-sato",
        Satellite,
        jst("2025-01-09", 21, 0),
        jst("2025-01-10", 2, 15),
    )
    .await;
    session(
        "u-sato",
        Home,
        jst("2025-01-31", 23, 0),
        jst("2025-02-01", 1, 0),
    )
    .await;
    // 加藤: one short session; a session in February (outside the month).
    session(
        "u-kato",
        Satellite,
        jst("2025-01-06", 10, 0),
        jst("2025-01-06", 11, 30),
    )
    .await;
    session(
        "u-kato",
        Home,
        jst("2025-02-03", 9, 0),
        jst("2025-02-03", 17, 0),
    )
    .await;
    // 伊藤 is in another department.
    session(
        "u-ito",
        Home,
        jst("2025-01-06", 9, 0),
        jst("2025-01-06", 17, 0),
    )
    .await;

    let (ok, out, err) = gw(&[
        "report",
        "attendance",
        "--config",
        c,
        "--month",
        "2025-01",
        "--dept",
        "somu",
        "--format",
        "csv",
        "--lang",
        "en",
    ])
    .await;
    assert!(ok, "{out}{err}");
    assert_eq!(
        out,
        "date,user_id,name,dept,first_start,last_end,connected,connected_secs,sessions,classes,open\n\
         2025-01-06,u-kato,\"加藤, 一郎\",somu,10:00:00,11:30:00,1:30:00,5400,1,satellite,\n\
         2025-01-01,u-sato,佐藤 花子,somu,00:00:00,00:45:00,0:45:00,2700,1,home,\n\
         2025-01-06,u-sato,佐藤 花子,somu,08:30:00,17:30:00,8:00:00,28800,2,home,\n\
         2025-01-07,u-sato,佐藤 花子,somu,08:00:00,18:00:00,10:00:00,36000,2,home/mobile,\n\
         2025-01-09,u-sato,佐藤 花子,somu,21:00:00,24:00:00,3:00:00,10800,1,satellite,\n\
         2025-01-10,u-sato,佐藤 花子,somu,00:00:00,02:15:00,2:15:00,8100,1,satellite,\n\
         2025-01-31,u-sato,佐藤 花子,somu,23:00:00,24:00:00,1:00:00,3600,1,home,\n"
    );
    assert!(err.contains("wrote 7 rows"), "{err}");

    // For Excel: Japanese header after a BOM, to a file; every department.
    let file = pki.path().join("2025-01.csv");
    let (ok, _, err) = gw(&[
        "report",
        "attendance",
        "--config",
        c,
        "--month",
        "2025-01",
        "--format",
        "csv",
        "--bom",
        "--out",
        file.to_str().unwrap(),
    ])
    .await;
    assert!(ok, "{err}");
    let csv = std::fs::read_to_string(&file).unwrap();
    assert!(csv.starts_with("\u{feff}日付,職員ID,氏名,所属,最初の開始,最後の終了,接続時間,接続秒数,セッション数,端末区分,接続中\n"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + 8, "{csv}");
    assert!(
        csv.contains("2025-01-06,u-ito,伊藤 次郎,zeimu,09:00:00,17:00:00,8:00:00,28800,1,home,\n"),
        "{csv}"
    );

    let (ok, _, err) = gw(&[
        "report",
        "attendance",
        "--config",
        c,
        "--month",
        "2025-13",
        "--format",
        "csv",
    ])
    .await;
    assert!(!ok && err.contains("not a month"), "{err}");
}

/// Receive syslog datagrams until `want` actions have been seen.
async fn receive_actions(sock: &tokio::net::UdpSocket, want: &[&str]) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 70_000];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !want.iter().all(|w| {
        got.iter()
            .any(|m: &String| m.contains(&format!("action=\"{w}\"")))
    }) {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no syslog message for all of {want:?}; got {got:#?}"))
            .unwrap();
        got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn syslog_forwards_records_of_the_gateway_and_the_cli() {
    let mut pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let gw_proc = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(format!(
                "{}[syslog]\nurl = \"udp://{}\"\nfacility = \"local3\"\n",
                login_sections(&db),
                sock.local_addr().unwrap()
            )),
            ..Default::default()
        },
    )
    .await;
    gw_proc
        .proc
        .wait_log(
            "Forwarding audit records to syslog",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // A record the gateway writes: a session refused for want of a login.
    let dev = pki.device("LAPTOP-SYS", TerminalClass::Home);
    let req = SessionRequest {
        desk: "DESK-SYS".into(),
        token: None,
    };
    let (_, f) = ask_terminal(&pki, &dev, gw_proc.addrs.terminal_tcp, &req).await;
    assert_eq!(Refusal::from_frame(&f).unwrap().code, "login_required");
    // A record the CLI writes while the gateway runs.
    let c = gw_proc.config.to_str().unwrap();
    let (ok, out, err) = gw(&[
        "admin",
        "--config",
        c,
        "user",
        "add",
        "--id",
        "u-syslog",
        "--name",
        "シスログ 太郎",
        "--dept",
        "somu",
    ])
    .await;
    assert!(ok, "{out}{err}");

    let got = receive_actions(&sock, &["session.denied", "user.add"]).await;
    let m = got
        .iter()
        .find(|m| m.contains("action=\"user.add\""))
        .unwrap();
    // <PRI>: local3 (19) * 8 + informational (6) = 158; version 1; app-name kakehashi.
    assert!(m.starts_with("<158>1 "), "{m}");
    let fields: Vec<&str> = m.splitn(7, ' ').collect();
    assert_eq!(fields[3], "kakehashi", "{m}");
    assert_eq!(fields[4], gw_proc.proc.pid().to_string(), "PROCID");
    assert_eq!(fields[5], "user.add", "MSGID");
    assert!(
        m.contains(&format!("actor=\"{}\" subject=\"u-syslog\"", cli_actor())),
        "{m}"
    );
    // The message is the record as `audit export` writes it: verifiable.
    let json = m.split_once("] \u{feff}").unwrap().1;
    let rec: serde_json::Value = serde_json::from_str(json).unwrap();
    let stored = Store::open(db.to_str().unwrap())
        .await
        .unwrap()
        .audit_page(rec["seq"].as_i64().unwrap() - 1, 1)
        .await
        .unwrap();
    assert_eq!(rec["hash"], stored[0].hash.to_hex());
    let copy = pki.path().join("from-syslog.jsonl");
    std::fs::write(&copy, format!("{json}\n")).unwrap();
    let (ok, out, _) = gw(&["audit", "verify", "--file", copy.to_str().unwrap()]).await;
    assert!(ok && out.contains("export intact: 1 records"), "{out}");

    let (_, text) = http_get(gw_proc.addrs.admin, "/metrics").await.unwrap();
    assert_eq!(
        metric(&text, "kakehashi_syslog_dropped_total"),
        0.0,
        "{text}"
    );
}

/// `--log-json`: every line the gateway prints is JSON, sessions and
/// connections carry their span, and no secret the test used is printed.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_spans_and_no_secrets() {
    let mut pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    let mut gwp = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(login_sections(&db)),
            log_json: true,
            ..Default::default()
        },
    )
    .await;
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    add_desk(&store, "DESK-LOG", 1, &["u-log"]).await;
    let desk = echo_server().await;
    let _agent = start_agent(&mut pki, "DESK-LOG", &gwp.addrs, desk, "tcp");
    let dev = pki.device("LAPTOP-LOG", TerminalClass::Home);

    // Log in: the one-time code and its PKCE verifier cross the wire.
    let seed = seed_login(&store, "u-log", "LAPTOP-LOG").await;
    let redeem = RedeemLogin {
        code: Secret(seed.code.clone()),
        code_verifier: Secret(seed.verifier.clone()),
    };
    let (_, f) = ask_terminal(&pki, &dev, gwp.addrs.terminal_tcp, &redeem).await;
    let token = LoginResult::from_frame(&f).unwrap().token;
    // A session with the token (once the agent is online), through to the echo desk.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let session_id = loop {
        let req = SessionRequest {
            desk: "DESK-LOG".into(),
            token: Some(token.clone()),
        };
        let (mut s, f) = ask_terminal(&pki, &dev, gwp.addrs.terminal_tcp, &req).await;
        if f.kind == FrameKind::SessionAccepted {
            let a = kakehashi_proto::message::SessionAccepted::from_frame(&f).unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
            break a.session_id;
        }
        let r = Refusal::from_frame(&f).unwrap();
        assert_eq!(r.code, "desk_offline", "{r:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never came online"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A refused session with a made-up token.
    let fake = format!("fake-token-{:032x}", rand::random::<u128>());
    let mut s = raw_tls(&pki, &dev, gwp.addrs.terminal_tcp, ALPN_TERMINAL)
        .await
        .unwrap();
    write_message(
        &mut s,
        &SessionRequest {
            desk: "DESK-LOG".into(),
            token: Some(Secret(fake.clone())),
        },
    )
    .await
    .unwrap();
    let f = read_frame(&mut s).await.unwrap();
    assert_eq!(f.kind, FrameKind::Refused);
    drop(s);

    gwp.proc.terminate();
    assert!(gwp
        .proc
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap()
        .success());
    let log = gwp.proc.log_text();
    let stdout = gwp.proc.stdout.lock().unwrap().join("\n");
    let mut lines = Vec::new();
    for l in log
        .lines()
        .chain(stdout.lines())
        .filter(|l| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {l}\n--- log:\n{log}\n--- stdout:\n{stdout}")
        });
        lines.push(v);
    }
    assert!(
        lines.iter().any(|v| v["listening"] == "terminal-tcp"),
        "{stdout}"
    );
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_string();
    let span_named = |v: &serde_json::Value, name: &str| -> Option<serde_json::Value> {
        v["spans"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    };
    // The session's lines carry its span (session id, desk, device, class,
    // transport) inside the connection's span (peer).
    let started = lines
        .iter()
        .find(|v| message(v) == "Session started")
        .unwrap_or_else(|| panic!("no Session started line:\n{log}"));
    let sp = span_named(started, "session").expect("session span");
    assert_eq!(sp["session"], session_id.as_str(), "{started}");
    assert_eq!(sp["desk"], "DESK-LOG");
    assert_eq!(sp["device"], "LAPTOP-LOG");
    let conn = span_named(started, "conn").expect("conn span");
    assert!(
        conn["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{started}"
    );
    assert!(lines.iter().any(|v| message(v).starts_with("Session ended")
        && span_named(v, "session").is_some_and(|s| s["session"] == session_id.as_str())));
    // The refusal is logged within its connection's span.
    let refused = lines
        .iter()
        .filter(|v| message(v).starts_with("Session refused"))
        .collect::<Vec<_>>();
    assert!(!refused.is_empty(), "{log}");
    assert!(
        refused.iter().all(|v| span_named(v, "conn").is_some()),
        "{refused:?}"
    );
    // No secret the test used appears anywhere.
    for secret in [
        seed.code.as_str(),
        seed.verifier.as_str(),
        token.expose(),
        fake.as_str(),
    ] {
        assert!(!log.contains(secret), "secret {secret:?} in the log");
        assert!(!stdout.contains(secret), "secret {secret:?} on stdout");
    }
}

/// Every `kakehashi_…` name in `expr`.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(p) = expr[i..].find("kakehashi_") {
        let start = i + p;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            into.insert(expr[start..end].to_string());
        }
        i = end;
    }
}

/// Every string value under a key named `expr` (or a templating `query`), recursively.
fn json_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => json_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_exprs(x, out)),
        _ => {}
    }
}

/// promtool: on `PATH`, or where `tests/run.sh` unpacks it
/// (`target/tools/prometheus/usr/bin`); otherwise the test fails saying how
/// to get it.
fn promtool() -> PathBuf {
    let unpacked = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("tools/prometheus/usr/bin/promtool");
    for candidate in [PathBuf::from("promtool"), unpacked.clone()] {
        let ok = std::process::Command::new(&candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return candidate;
        }
    }
    panic!(
        "promtool is required to check deploy/monitoring (alerts.yml, alerts.test.yml and the \
         Grafana dashboard's queries) and was found neither on PATH nor at {}. Run tests/run.sh \
         once: it downloads Debian's `prometheus` package with `apt-get download` and unpacks \
         only usr/bin/promtool there (no Prometheus server is installed or started); or put a \
         promtool on PATH.",
        unpacked.display()
    )
}

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

/// The alert rules, the scrape configuration and the Grafana dashboard use
/// only metrics a real gateway exports, and cover what the operators need.
#[tokio::test(flavor = "multi_thread")]
async fn monitoring_assets_use_only_exported_metrics() {
    use yaml_rust2::{Yaml, YamlLoader};
    let dir = monitoring_dir();
    let read =
        |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));

    // Alert rules: well-formed, bilingual, with a severity.
    let rules = YamlLoader::load_from_str(&read("alerts.yml")).expect("alerts.yml is YAML");
    let mut used = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    for g in rules[0]["groups"].as_vec().expect("groups") {
        for r in g["rules"].as_vec().expect("rules") {
            let name = r["alert"].as_str().expect("alert name");
            let expr = r["expr"].as_str().unwrap_or_else(|| panic!("{name}: expr"));
            assert!(
                matches!(
                    r["labels"]["severity"].as_str(),
                    Some("critical" | "warning")
                ),
                "{name}: severity"
            );
            for a in ["summary", "description"] {
                let t = r["annotations"][a]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: {a}"));
                assert!(
                    !t.is_ascii() && t.contains('/'),
                    "{name}: {a} is Japanese / English: {t}"
                );
            }
            metric_names(expr, &mut used);
            alerts.insert(name.to_string());
        }
    }
    for want in [
        "KakehashiGatewayDown",
        "KakehashiCapacityHigh",
        "KakehashiAgentsOfflineBulk",
        "KakehashiAuthFailureSpike",
        "KakehashiCertificateExpiringSoon",
    ] {
        assert!(alerts.contains(want), "{want} missing from {alerts:?}");
    }
    // The scrape job is the one the gateway-down alert watches.
    let prom = YamlLoader::load_from_str(&read("prometheus.yml")).expect("prometheus.yml is YAML");
    let jobs = prom[0]["scrape_configs"].as_vec().expect("scrape_configs");
    assert!(jobs
        .iter()
        .any(|j| j["job_name"].as_str() == Some("kakehashi-gateway")
            && j["metrics_path"].as_str() == Some("/metrics")));
    assert!(read("alerts.yml").contains("up{job=\"kakehashi-gateway\"}"));
    assert!(prom[0]["rule_files"]
        .as_vec()
        .expect("rule_files")
        .iter()
        .any(|f| f
            .as_str()
            .is_some_and(|f| f.ends_with("kakehashi-alerts.yml"))));
    assert!(matches!(
        YamlLoader::load_from_str(&read("alerts.test.yml")).unwrap()[0]["tests"],
        Yaml::Array(_)
    ));

    // The dashboard: the operators' numbers, from exported metrics.
    let dash: serde_json::Value =
        serde_json::from_str(&read("grafana-dashboard.json")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    json_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 15, "{exprs:?}");
    let all = exprs.join("\n");
    for want in [
        "sum by (level) (kakehashi_sessions_active",
        "sum by (class) (kakehashi_sessions_active",
        "sum by (dept) (kakehashi_sessions_active",
        "sum by (transport) (kakehashi_sessions_active",
        "kakehashi_sessions_max",
        "kakehashi_agents_online",
        "sum by (reason) (increase(kakehashi_denials_total",
        "kakehashi_session_setup_seconds_bucket",
    ] {
        assert!(all.contains(want), "the dashboard has no {want:?}");
    }
    for e in &exprs {
        metric_names(e, &mut used);
    }
    for p in dash["panels"].as_array().unwrap() {
        let t = p["title"].as_str().unwrap_or_default();
        assert!(!t.is_ascii(), "panel titles are Japanese first: {t}");
    }

    // A real gateway with traffic, so labelled families have series: an
    // agent online, sessions opened and closed, a refusal, a failed handshake.
    let mut pki = Pki::new();
    let gwp = start_gateway(&pki, GatewayOpts::default()).await;
    let desk = echo_server().await;
    let _agent = start_agent(&mut pki, "DESK-MON", &gwp.addrs, desk, "quic");
    let dev = pki.device("LAPTOP-MON", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gwp.addrs.terminal_tcp, gwp.addrs.terminal_quic);
    let client = start_client(&pki, &cfg, "DESK-MON", "quic").await.unwrap();
    wait_echo(client.listen, Duration::from_secs(20))
        .await
        .unwrap();
    let mut open = tokio::net::TcpStream::connect(client.listen).await.unwrap();
    open.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    open.read_exact(&mut one).await.unwrap();
    let off = start_client(&pki, &cfg, "DESK-NOWHERE", "quic")
        .await
        .unwrap();
    assert!(refused(off.listen).await);
    let old = pki.expired_device("LAPTOP-OLD");
    // (TLS 1.3: the client may finish its side before the gateway refuses.)
    if let Ok(mut s) = raw_tls(&pki, &old, gwp.addrs.terminal_tcp, ALPN_TERMINAL).await {
        assert!(
            read_frame(&mut s).await.is_err(),
            "an expired certificate is refused"
        );
    }
    let mut text = String::new();
    for _ in 0..100 {
        text = http_get(gwp.addrs.admin, "/metrics").await.unwrap().1;
        if metric(&text, "kakehashi_sessions_ended_total{reason=\"closed\"}") > 0.0
            && text.contains("kakehashi_auth_failures_total{")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The cluster families come from a gateway with a store (a cluster of one).
    let db = pki.path().join("members.db");
    let with_store = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(store_sections(&db)),
            name: Some("gw-mon".into()),
            ..Default::default()
        },
    )
    .await;
    for _ in 0..100 {
        let t = http_get(with_store.addrs.admin, "/metrics")
            .await
            .unwrap()
            .1;
        if t.contains("kakehashi_cluster_member_up{member=\"gw-mon\"} 1") {
            text.push_str(&t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {exported:?}"
    );
    assert!(used.len() >= 12, "{used:?}");
    drop(open);

    // promtool (Debian package `prometheus`): the rules load, their unit
    // tests pass, and every dashboard query parses. Required: this test
    // fails, never skips, without it.
    let promtool = promtool();
    let run = |args: &[&str]| {
        let o = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&["check", "rules", "alerts.yml"]);
    run(&["test", "rules", "alerts.test.yml"]);
    let tmp = tempfile::tempdir().unwrap();
    let mut rec = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs
        .iter()
        .filter(|e| !e.starts_with("label_values"))
        .enumerate()
    {
        let e = e.replace("$instance", ".*");
        rec.push_str(&format!(
            "      - record: dashboard_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let f = tmp.path().join("dashboard-rules.yml");
    std::fs::write(&f, rec).unwrap();
    run(&["check", "rules", f.to_str().unwrap()]);
}
