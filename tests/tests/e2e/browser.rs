//! A real browser: Debian's chromium, driven by playwright-core
//! (`tests/browser/portal.mjs`) with a CDP virtual authenticator that has
//! user verification, enrolls on the portal with a code from the admin CLI;
//! `kakehashi login` is then completed in the same browser (the portal
//! redirects to the CLI's loopback port, the CLI redeems the code over
//! mutual TLS), and `kakehashi connect` carries bytes to a desk through a
//! real agent. The portal is plain HTTP on localhost, which browsers treat
//! as a secure context for WebAuthn; production serves HTTPS.
//!
//! Needs chromium and `tests/browser/node_modules`; `tests/run.sh` installs
//! both. Without them the test fails: it does not skip.

use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_store::{Audit, Desk, Segment, Store};
pub(crate) use kakehashi_tests::browser::{
    admin, enroll_in_browser, prerequisites, start_portal_gateway, Browser, PortalGateway,
};
use kakehashi_tests::*;
use serde_json::json;

const USER: &str = "u-yamada";
const DEVICE: &str = "LAPTOP-W1";
const DESK: &str = "DESK-W1";

#[tokio::test(flavor = "multi_thread")]
async fn chromium_enrolls_logs_in_and_connects() {
    let chromium = prerequisites();
    let mut pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    let PortalGateway { gw, portal } = start_portal_gateway(&pki, login_sections(&db)).await;
    // The officer's side, with the gateway's own configuration file.
    let gw_config = gw.config.clone();
    admin(
        &gw_config,
        &[
            "user",
            "add",
            "--id",
            USER,
            "--name",
            "山田 太郎",
            "--dept",
            "総務課",
        ],
    )
    .await;
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    store
        .add_desk(
            &Desk {
                id: DESK.into(),
                department: "総務課".into(),
                level: 2,
                segment: Segment::Lgwan,
                // An echo service, not RDP: its agent passes sessions through.
                service: kakehashi_store::DeskService::Other,
                owners: [USER.to_string()].into(),
            },
            Audit::new(kakehashi_store::unix_now(), "test", "desk.add").subject(DESK),
        )
        .await
        .unwrap();

    // Enrollment in the browser: a Japanese page first, the code typed,
    // a credential registered with user verification.
    let mut browser = Browser::start(&chromium, pki.path().join("browser.log"))
        .await
        .unwrap();
    let e = enroll_in_browser(&mut browser, &gw_config, &portal, USER).await;
    assert_eq!(e["lang"], "ja", "{e}");
    assert_eq!(e["title"], "セキュリティキーの登録", "{e}");
    assert!(
        e["status"].as_str().unwrap().starts_with("登録しました"),
        "{e}"
    );
    assert_eq!(e["credentials"].as_array().unwrap().len(), 1, "{e}");
    let creds = store.credentials_for_user(USER).await.unwrap();
    assert_eq!(creds.len(), 1);
    assert!(!creds[0].attested);

    // `kakehashi login` on the laptop; the URL it prints is opened in the
    // same browser (same authenticator).
    let dev = pki.device(DEVICE, TerminalClass::Satellite);
    let client_cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let mut text = std::fs::read_to_string(&client_cfg).unwrap();
    text.push_str(&format!("[login]\nportal = \"{portal}\"\n"));
    std::fs::write(&client_cfg, text).unwrap();
    let cfg = client_cfg.to_str().unwrap();
    let mut login = Proc::spawn(
        &bin("kakehashi"),
        &["--config", cfg, "login", "--no-browser"],
        pki.path().join("login.log"),
        &[],
    );
    let url = login
        .wait_line("login url: ", Duration::from_secs(20))
        .await
        .unwrap();
    assert!(url.starts_with(&format!("{portal}/login?")), "{url}");
    assert!(
        url.contains(&format!("device={DEVICE}")),
        "the laptop names itself: {url}"
    );
    let l = browser
        .ask(json!({ "cmd": "login", "url": url, "user": USER }))
        .await
        .unwrap();
    assert_eq!(l["lang"], "ja", "{l}");
    assert_eq!(l["title"], "ログイン", "{l}");
    let landed = l["landed"].as_str().unwrap();
    assert!(
        landed.starts_with("http://127.0.0.1:") && landed.ends_with("/callback"),
        "{l}"
    );
    assert!(
        l["page"].as_str().unwrap().starts_with("ログインしました"),
        "{l}"
    );
    let who = login
        .wait_line("ログインしました / logged in: ", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(who.starts_with(USER), "{who}");
    let status = login.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "login failed: {}", login.log_text());
    // The token is bound to this laptop; the counter moved forward.
    let tokens = store.login_tokens_for_user(USER).await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].device_id, DEVICE);
    assert_eq!(tokens[0].cert_serial, dev.serial);
    let sign_count = l["credentials"][0]["signCount"].as_u64().unwrap();
    let stored = store.credentials_for_user(USER).await.unwrap()[0].counter;
    assert!(sign_count >= 1, "{l}");
    assert_eq!(u64::from(stored), sign_count);

    // Without user verification the login does not complete: the page
    // shows an error and nothing is redirected or issued.
    let pkce = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let no_uv_url = format!(
        "{portal}/login?redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcallback&state=st-{n}\
         &code_challenge={pkce}&code_challenge_method=S256&device={DEVICE}",
        n = rand::random::<u32>()
    );
    let r = browser
        .ask(json!({ "cmd": "login_refused", "url": no_uv_url, "user": USER, "uv": false }))
        .await
        .unwrap();
    // The page's error for a refused ceremony (not its in-progress prompt).
    assert!(
        r["status"].as_str().unwrap().contains("取り消されたか"),
        "{r}"
    );
    assert_eq!(store.login_tokens_for_user(USER).await.unwrap().len(), 1);
    browser.quit().await;

    // A session with the token: bytes to the desk and back.
    let echo = echo_server().await;
    let _agent = start_agent(&mut pki, DESK, &gw.addrs, echo, "quic");
    let client = start_client(&pki, &client_cfg, DESK, "auto").await.unwrap();
    wait_echo(client.listen, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nclient log:\n{}", client.proc.log_text()));
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let back = roundtrip(client.listen, &payload).await.unwrap();
    assert!(back == payload, "echo differs ({} bytes back)", back.len());

    let log = store.audit_page(0, 10_000).await.unwrap();
    for want in [
        "user.add",
        "user.enroll_code",
        "enroll",
        "login",
        "login.code",
    ] {
        assert!(
            log.iter().any(|r| r.action == want && r.subject == USER),
            "{want} missing from the audit log"
        );
    }
    assert!(store.verify_audit().await.unwrap().is_intact());
}
