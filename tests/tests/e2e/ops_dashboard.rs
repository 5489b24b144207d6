//! The ops dashboard (`/ops`) in a real browser (Debian's chromium through
//! `tests/browser/portal.mjs`) against a real gateway, agents and
//! `kakehashi connect` laptops: an operator enrolled through the browser
//! opens the page once; sessions of known desks, levels, departments and
//! transports open and close, logins and refusals happen, and after each
//! step the numbers on the page equal what `/metrics` on the admin
//! listener says, without a reload. The operator ends one session from
//! the page (audited) and the laptop's log shows `ended_by_operator`; a
//! BCP declaration appears live; a staff member gets 403; `/metrics` is
//! not served on the portal listener.
//!
//! A screenshot of the dashboard with live sessions is left at
//! `target/screenshots/ops-dashboard.png` (the path is printed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kakehashi_pki::TerminalClass;
use kakehashi_store::{Audit, BcpScope, BcpSpec, Desk, Segment, Store};
use kakehashi_tests::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::browser::{
    admin, enroll_in_browser, prerequisites, start_portal_gateway, Browser, PortalGateway,
};

const OPERATOR: &str = "ops-suzuki";
const STAFF: &str = "staff-kato";
const END_REASON: &str = "大雪対応の切替試験のため運用担当者が終了";
const BCP_REASON: &str = "大雪（試験）";

/// One desk of the test: id, level, department, owner, laptop, transport.
struct Seat {
    desk: &'static str,
    level: u8,
    dept: &'static str,
    user: &'static str,
    device: &'static str,
    transport: &'static str,
}

const SEATS: [Seat; 3] = [
    Seat {
        desk: "DESK-OPS-1",
        level: 1,
        dept: "総務課",
        user: "u-ito",
        device: "LAPTOP-OPS-1",
        transport: "quic",
    },
    Seat {
        desk: "DESK-OPS-2",
        level: 2,
        dept: "総務課",
        user: "u-abe",
        device: "LAPTOP-OPS-2",
        transport: "tcp",
    },
    Seat {
        desk: "DESK-OPS-3",
        level: 2,
        dept: "福祉課",
        user: "u-ueda",
        device: "LAPTOP-OPS-3",
        transport: "quic",
    },
];

fn target_screenshot() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    dir.join("ops-dashboard.png")
}

/// The label pairs of one exposition line (`name{k="v",…} value`).
fn labels(series: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(inner) = series
        .split_once('{')
        .and_then(|(_, rest)| rest.rsplit_once('}'))
        .map(|(l, _)| l)
    else {
        return out;
    };
    let mut chars = inner.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label value quoted in {series}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

/// What the dashboard should show, computed from the Prometheus text
/// exposition: keys as the page's `data-metric` attributes.
fn from_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let mut add = |k: String, v: f64| *m.entry(k).or_insert(0.0) += v;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or_default();
        let l = labels(series);
        match name {
            "kakehashi_sessions_active" => {
                add("total".into(), v);
                for k in ["level", "class", "dept", "transport"] {
                    add(format!("{k}:{}", l[k]), v);
                }
            }
            "kakehashi_agents_online" => add("agents".into(), v),
            "kakehashi_denials_total" => {
                add(format!("denial:{}", l["reason"]), v);
                add("denials_hour".into(), v);
            }
            "kakehashi_logins_total" => add("logins_total".into(), v),
            "kakehashi_capacity_used_ratio" => add("capacity".into(), v),
            _ => {}
        }
    }
    m
}

/// Keys whose values differ (a missing key counts as 0); `logins_minute`
/// is a window, not a counter, and is checked on its own.
fn differences(page: &BTreeMap<String, f64>, metrics: &BTreeMap<String, f64>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = page.keys().chain(metrics.keys()).collect();
    keys.into_iter()
        .filter(|k| *k != "logins_minute")
        .filter(|k| {
            let (a, b) = (
                page.get(*k).copied().unwrap_or(0.0),
                metrics.get(*k).copied().unwrap_or(0.0),
            );
            (a - b).abs() > 1e-9
        })
        .map(|k| format!("{k}: page {:?} metrics {:?}", page.get(k), metrics.get(k)))
        .collect()
}

fn page_metrics(read: &Value) -> BTreeMap<String, f64> {
    read["metrics"]
        .as_object()
        .expect("metrics object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(f64::NAN)))
        .collect()
}

/// A connection through `kakehashi connect` that holds a session open.
async fn hold(listen: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut one))
        .await
        .expect("echo through the session")
        .unwrap();
    assert_eq!(&one, b"x");
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_chromium_matches_metrics_and_ends_a_session() {
    let chromium = prerequisites();
    let mut pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    // The shipped default policy: satellite laptops reach levels 1-2 at any hour.
    let PortalGateway { gw, portal } = start_portal_gateway(&pki, store_sections(&db)).await;
    let config = gw.config.clone();
    let port: u16 = portal.rsplit(':').next().unwrap().parse().unwrap();
    let portal_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for (id, name, dept, role) in [
        (OPERATOR, "鈴木 一郎", "情報政策課", "operator"),
        (STAFF, "加藤 花子", "総務課", "staff"),
    ] {
        admin(
            &config,
            &[
                "user", "add", "--id", id, "--name", name, "--dept", dept, "--role", role,
            ],
        )
        .await;
    }

    // Outside the portal: no dashboard, no event stream, no metrics.
    let (status, body) = http_get(portal_addr, "/metrics").await.unwrap();
    assert_eq!(status, 404, "/metrics on the portal listener: {body}");
    assert!(!body.contains("kakehashi_"), "{body}");
    let (status, body) = http_get(portal_addr, "/ops/events").await.unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_get(portal_addr, "/ops").await.unwrap();
    assert_eq!(status, 200, "a sign-in form: {body}");
    assert!(!body.contains(r#"id="ops""#), "{body}");

    let mut browser = Browser::start(&chromium, pki.path().join("browser.log"))
        .await
        .unwrap();
    for user in [OPERATOR, STAFF] {
        let e = enroll_in_browser(&mut browser, &config, &portal, user).await;
        assert!(
            e["status"].as_str().unwrap().starts_with("登録しました"),
            "{e}"
        );
    }

    // The operator opens the dashboard once; everything after is pushed.
    let ops_url = format!("{portal}/ops");
    let p = browser
        .ask(json!({ "cmd": "portal_login", "url": ops_url, "user": OPERATOR }))
        .await
        .unwrap();
    assert_eq!(p["status"], 200, "{p}");
    assert_eq!(p["lang"], "ja", "{p}");
    assert_eq!(p["title"], "運用ダッシュボード", "{p}");
    // The browser is on the page; from here on it must not navigate again.
    let nav0 = browser
        .ask(json!({ "cmd": "ops_read", "after": 0 }))
        .await
        .unwrap()["navigations"]
        .as_u64()
        .unwrap();
    assert!(nav0 >= 1);
    let marker = browser.ask(json!({ "cmd": "ops_mark" })).await.unwrap()["marker"]
        .as_str()
        .unwrap()
        .to_string();
    let r0 = settle(&mut browser, gw.addrs.admin, 0.0, &marker, nav0).await;
    assert_eq!(r0["metrics"]["level:2"], 0.0, "{r0}");
    assert_eq!(r0["sessions"].as_array().unwrap().len(), 0);

    // Desks, owners and their agents.
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    let echo = echo_server().await;
    let mut agents = Vec::new();
    for s in &SEATS {
        add_user(&store, s.user).await;
        store
            .add_desk(
                &Desk {
                    id: s.desk.into(),
                    department: s.dept.into(),
                    level: s.level,
                    segment: Segment::Lgwan,
                    // An echo service, not RDP: its agent passes sessions through.
                    service: kakehashi_store::DeskService::Other,
                    owners: [s.user.to_string()].into(),
                },
                Audit::new(kakehashi_store::unix_now(), "test", "desk.add").subject(s.desk),
            )
            .await
            .unwrap();
        agents.push(start_agent(&mut pki, s.desk, &gw.addrs, echo, "quic"));
    }
    let start = Instant::now();
    while metric(
        &http_get(gw.addrs.admin, "/metrics").await.unwrap().1,
        "kakehashi_agents_online{transport=\"quic\"}",
    ) < 3.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "agents never came online"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = settle(&mut browser, gw.addrs.admin, 0.0, &marker, nav0).await;
    assert_eq!(r["metrics"]["agents"], 3.0, "{r}");

    // The laptops log in (satellite office terminals).
    let mut configs = Vec::new();
    for s in &SEATS {
        let dev = pki.device(s.device, TerminalClass::Satellite);
        let token = redeem_login(&pki, &dev, gw.addrs.terminal_tcp, &store, s.user).await;
        configs.push(client_config_logged_in(
            &pki, &dev, &gw.addrs, s.user, &token,
        ));
    }
    let r = settle(&mut browser, gw.addrs.admin, 0.0, &marker, nav0).await;
    assert_eq!(r["metrics"]["logins_total"], 3.0, "{r}");
    assert_eq!(r["metrics"]["logins_minute"], 3.0, "{r}");

    // Two refusals: someone else's desk, and a desk that does not exist.
    let other = start_client(&pki, &configs[0], SEATS[1].desk, "quic")
        .await
        .unwrap();
    assert!(refused(other.listen).await);
    let nowhere = start_client(&pki, &configs[0], "DESK-NOWHERE", "quic")
        .await
        .unwrap();
    assert!(refused(nowhere.listen).await);
    let r = settle(&mut browser, gw.addrs.admin, 0.0, &marker, nav0).await;
    assert_eq!(r["metrics"]["denials_hour"], 2.0, "{r}");

    // Sessions open one by one; the page follows each.
    let mut clients = Vec::new();
    let mut held = Vec::new();
    for (i, s) in SEATS.iter().enumerate() {
        let c = start_client(&pki, &configs[i], s.desk, s.transport)
            .await
            .unwrap();
        held.push(Some(hold(c.listen).await));
        clients.push(c);
        settle(&mut browser, gw.addrs.admin, (i + 1) as f64, &marker, nav0).await;
    }
    let r = settle(&mut browser, gw.addrs.admin, 3.0, &marker, nav0).await;
    let m = &r["metrics"];
    assert_eq!(m["level:1"], 1.0, "{r}");
    assert_eq!(m["level:2"], 2.0, "{r}");
    assert_eq!(m["class:satellite"], 3.0, "{r}");
    assert_eq!(m["dept:総務課"], 2.0, "{r}");
    assert_eq!(m["dept:福祉課"], 1.0, "{r}");
    assert_eq!(m["transport:quic"], 2.0, "{r}");
    assert_eq!(m["transport:tcp"], 1.0, "{r}");
    let listed = r["sessions"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{r}");
    for s in &SEATS {
        assert!(
            listed
                .iter()
                .any(|x| x["desk"] == s.desk && x["device"] == s.device && x["user"] == s.user),
            "{} missing from the list: {r}",
            s.desk
        );
    }
    assert!(r["count"].as_str().unwrap().contains('3'), "{r}");
    assert!(r["chart"]["points"].as_i64().unwrap() >= 1, "{r}");
    assert_eq!(r["chart"]["last"], 3.0, "{r}");
    assert_eq!(r["chart"]["lines"], 3, "{r}");

    // The screenshot for the closing note.
    let shot = pki.path().join("ops-dashboard.png");
    browser
        .ask(json!({ "cmd": "screenshot", "path": shot }))
        .await
        .unwrap();
    let kept = target_screenshot();
    std::fs::copy(&shot, &kept).unwrap();
    let png = std::fs::read(&kept).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!(
        "ops dashboard screenshot: {} (copy of {})",
        kept.display(),
        shot.display()
    );

    // The server filters: only the matching session reaches the browser.
    browser
        .ask(json!({ "cmd": "ops_filter", "text": "ops-3" }))
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let r = browser
            .ask(json!({ "cmd": "ops_read", "after": 0 }))
            .await
            .unwrap();
        let list = r["sessions"].as_array().unwrap();
        if list.len() == 1 && list[0]["desk"] == "DESK-OPS-3" {
            assert!(r["count"].as_str().unwrap().contains('1'), "{r}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "filter never applied: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser
        .ask(json!({ "cmd": "ops_filter", "text": "" }))
        .await
        .unwrap();

    // A laptop closes its session.
    held[0].take();
    settle(&mut browser, gw.addrs.admin, 2.0, &marker, nav0).await;

    // The operator ends DESK-OPS-2's session from the page.
    let start = Instant::now();
    while browser
        .ask(json!({ "cmd": "ops_read", "after": 0 }))
        .await
        .unwrap()["sessions"]
        .as_array()
        .unwrap()
        .len()
        != 2
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "list never showed 2 sessions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ended = browser
        .ask(json!({ "cmd": "ops_end", "desk": SEATS[1].desk, "reason": END_REASON }))
        .await
        .unwrap();
    let ended_id = ended["id"].as_str().unwrap().to_string();
    assert!(
        ended["notice"].as_str().unwrap().contains(&ended_id),
        "{ended}"
    );
    // The laptop's end of the session closes (as an RDP client would see
    // the desk go away); once the local client lets go too, the laptop asks
    // the gateway why and tells its user.
    let mut rest = Vec::new();
    let mut conn = held[1].take().unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
        .await
        .expect("the ended session's connection closes");
    assert!(n.is_err() || rest.is_empty(), "{n:?} {rest:?}");
    drop(conn);
    clients[1]
        .proc
        .wait_log("ended_by_operator", Duration::from_secs(20))
        .await
        .unwrap();
    let log = clients[1].proc.log_text();
    assert!(
        log.contains("セッションはゲートウェイにより終了しました"),
        "{log}"
    );
    settle(&mut browser, gw.addrs.admin, 1.0, &marker, nav0).await;
    let text = http_get(gw.addrs.admin, "/metrics").await.unwrap().1;
    assert_eq!(
        metric(
            &text,
            "kakehashi_sessions_ended_total{reason=\"ended_by_operator\"}"
        ),
        1.0,
        "{text}"
    );
    let audit = store.audit_page(0, 10_000).await.unwrap();
    let by_op: Vec<_> = audit
        .iter()
        .filter(|r| r.action == "session.end_by_operator")
        .collect();
    assert_eq!(by_op.len(), 1, "{by_op:?}");
    assert_eq!(by_op[0].actor, format!("user:{OPERATOR}"));
    assert_eq!(by_op[0].subject, ended_id);
    assert_eq!(by_op[0].reason, END_REASON);
    assert!(
        audit.iter().any(|r| r.action == "session.end"
            && r.subject == ended_id
            && r.reason == "ended_by_operator"),
        "the session's own end record"
    );
    // Only the operator's pick ended: DESK-OPS-3's session still carries bytes.
    let s3 = held[2].as_mut().unwrap();
    s3.write_all(b"y").await.unwrap();
    let mut one = [0u8; 1];
    s3.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"y");

    // A BCP declaration shows on the open page.
    let now = kakehashi_store::unix_now();
    store
        .declare_bcp(
            &BcpSpec {
                scope: BcpScope::All,
                reason: BCP_REASON.into(),
                relax: json!({ "plan": true, "hours": true, "levels": [1, 2], "classes": ["home", "mobile"] }),
                starts_at: now - 1,
                ends_at: now + 3600,
            },
            Audit::new(now, "officer-test", "bcp.declare"),
        )
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let r = browser
            .ask(json!({ "cmd": "ops_read", "after": 0 }))
            .await
            .unwrap();
        if let Some(b) = r["bcp"].as_str() {
            assert!(
                b.contains("BCPモード実施中") && b.contains(BCP_REASON),
                "{r}"
            );
            assert_eq!(r["marker"], marker.as_str(), "{r}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "BCP never shown: {r}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    settle(&mut browser, gw.addrs.admin, 1.0, &marker, nav0).await;

    // A staff member: 403 on the page and on the event stream.
    browser
        .ask(json!({ "cmd": "clear_cookies" }))
        .await
        .unwrap();
    let p = browser
        .ask(json!({ "cmd": "portal_login", "url": ops_url, "user": STAFF }))
        .await
        .unwrap();
    assert_eq!(p["status"], 403, "{p}");
    let text = p["text"].as_str().unwrap();
    assert!(
        text.contains("運用担当（operator）の役割を持つ職員だけ")
            && text.contains("only for staff with the operator role"),
        "{p}"
    );
    assert!(!text.contains("接続中のセッション"), "{p}");
    let f = browser
        .ask(json!({ "cmd": "fetch_status", "path": "/ops/events" }))
        .await
        .unwrap();
    assert_eq!(f["status"], 403, "{f}");
    browser.quit().await;

    drop(held);
    drop(agents);
    assert!(store.verify_audit().await.unwrap().is_intact());
}

/// The dashboard as drawn, once its numbers equal `/metrics` and it shows
/// `total` live sessions; fails after 20 s with the differences. Checks
/// that the page is the one first shown: the same window (`marker`) and
/// no navigation since (`nav0` main-frame navigations).
async fn settle(
    browser: &mut Browser,
    admin_addr: SocketAddr,
    total: f64,
    marker: &str,
    nav0: u64,
) -> Value {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(20) {
        let read = browser
            .ask(json!({ "cmd": "ops_read", "after": 0 }))
            .await
            .unwrap();
        assert_eq!(read["marker"], marker, "the page was reloaded: {read}");
        assert_eq!(read["navigations"], nav0, "the page navigated: {read}");
        let (status, text) = http_get(admin_addr, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        let want = from_metrics(&text);
        let page = page_metrics(&read);
        let diff = differences(&page, &want);
        if diff.is_empty() && page.get("total") == Some(&total) {
            return read;
        }
        last = format!("total {:?} (want {total}); {diff:?}", page.get("total"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the dashboard never matched /metrics: {last}");
}

#[test]
fn dashboard_exposition_labels_parse() {
    let l = labels(
        r#"kakehashi_sessions_active{class="satellite",dept="福祉課",level="2",transport="quic"} 1"#,
    );
    assert_eq!(l["dept"], "福祉課");
    assert_eq!(l["transport"], "quic");
    let m = from_metrics(
        "# HELP x\nkakehashi_sessions_active{class=\"home\",dept=\"a\\\"b\",level=\"1\",transport=\"tcp\"} 2\n\
         kakehashi_denials_total{reason=\"desk_unknown\"} 1\nkakehashi_logins_total 4\n",
    );
    assert_eq!(m["total"], 2.0);
    assert_eq!(m["dept:a\"b"], 2.0);
    assert_eq!(m["denial:desk_unknown"], 1.0);
    assert_eq!(m["denials_hour"], 1.0);
    assert_eq!(m["logins_total"], 4.0);
}

/// `kakehashi-demo` as printed, seen from the dashboard: a person
/// registers the browser's authenticator with the printed code, signs in
/// at the printed dashboard URL, and the demo laptop's session appears
/// live (and goes when it ends), in step with `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn demo_session_shows_live_on_the_dashboard() {
    let chromium = prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = start_demo(tmp.path(), &[]).await;
    let admin_addr = demo_metrics_addr(&mut demo).await;
    let dashboard = demo
        .wait_line("  dashboard     ", Duration::from_secs(5))
        .await
        .unwrap();
    let ops_url = dashboard.split_whitespace().next().unwrap().to_string();
    assert!(ops_url.ends_with("/ops"), "{dashboard}");
    demo.wait_line("  browser       ", Duration::from_secs(5))
        .await
        .unwrap();
    let enroll = demo
        .wait_line("                http", Duration::from_secs(5))
        .await
        .unwrap();
    // "http://localhost:P/enroll  user demo-user, code CODE  (valid …)"
    let enroll_url = format!("http{}", enroll.split_whitespace().next().unwrap());
    let code = enroll
        .split("code ")
        .nth(1)
        .and_then(|c| c.split_whitespace().next())
        .unwrap_or_else(|| panic!("no code in {enroll}"))
        .to_string();
    assert!(enroll.contains("user demo-user"), "{enroll}");

    // The demo laptop logs in and holds a session open, as printed.
    demo_login(&mut demo).await;
    let connect = demo.wait_line("  ", Duration::from_secs(5)).await.unwrap();
    assert!(
        connect.contains(" connect demo-desk --listen "),
        "{connect}"
    );
    let listen: SocketAddr = connect.rsplit(' ').next().unwrap().parse().unwrap();
    let _client = run_printed_connect(&connect, tmp.path().join("client.log")).await;

    // The browser: register with the printed code, sign in at the printed URL.
    let mut browser = Browser::start(&chromium, tmp.path().join("browser.log"))
        .await
        .unwrap();
    let e = browser
        .ask(json!({ "cmd": "enroll", "url": enroll_url, "user": "demo-user", "code": code }))
        .await
        .unwrap();
    assert!(
        e["status"]
            .as_str()
            .unwrap_or("")
            .starts_with("登録しました"),
        "{e}"
    );
    let p = browser
        .ask(json!({ "cmd": "portal_login", "url": ops_url, "user": "demo-user" }))
        .await
        .unwrap();
    assert_eq!(p["status"], 200, "{p}");
    assert_eq!(p["title"], "運用ダッシュボード", "{p}");
    let nav0 = browser
        .ask(json!({ "cmd": "ops_read", "after": 0 }))
        .await
        .unwrap()["navigations"]
        .as_u64()
        .unwrap();
    let marker = browser.ask(json!({ "cmd": "ops_mark" })).await.unwrap()["marker"]
        .as_str()
        .unwrap()
        .to_string();
    settle(&mut browser, admin_addr, 0.0, &marker, nav0).await;

    let held = hold(listen).await;
    let r = settle(&mut browser, admin_addr, 1.0, &marker, nav0).await;
    let listed = r["sessions"].as_array().unwrap();
    assert!(
        listed.len() == 1
            && listed[0]["desk"] == "demo-desk"
            && listed[0]["device"] == "demo-laptop"
            && listed[0]["user"] == "demo-user",
        "{r}"
    );
    assert_eq!(r["metrics"]["class:satellite"], 1.0, "{r}");
    assert_eq!(r["metrics"]["level:2"], 1.0, "{r}");

    drop(held);
    let r = settle(&mut browser, admin_addr, 0.0, &marker, nav0).await;
    assert_eq!(r["sessions"].as_array().unwrap().len(), 0, "{r}");
    demo.terminate();
}
