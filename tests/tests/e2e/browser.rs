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

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kakehashi_pki::TerminalClass;
use kakehashi_store::{Audit, Desk, Segment, Store};
use kakehashi_tests::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const USER: &str = "u-yamada";
const DEVICE: &str = "LAPTOP-W1";
const DESK: &str = "DESK-W1";
/// One browser step (page load, ceremony, redirect) at most.
const STEP: Duration = Duration::from_secs(90);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Chromium (`KAKEHASHI_CHROMIUM`, default `/usr/bin/chromium`), node and
/// playwright-core, or a failure that says how to get them.
pub(crate) fn prerequisites() -> PathBuf {
    const HOW: &str = "run tests/run.sh once (it installs Debian's chromium and runs \
                       `npm ci` in tests/browser)";
    let chromium = std::env::var_os("KAKEHASHI_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "the browser test needs chromium at {}: {HOW}",
        chromium.display()
    );
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(node_ok, "the browser test needs node: {HOW}");
    let pw = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(
        pw.exists(),
        "the browser test needs {}: {HOW}",
        pw.display()
    );
    chromium
}

/// The long-lived browser script: one JSON command in, one JSON answer out.
pub(crate) struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
}

impl Browser {
    pub(crate) async fn start(chromium: &Path, log: PathBuf) -> anyhow::Result<Self> {
        let mut child = Command::new("node")
            .arg(browser_dir().join("portal.mjs"))
            .current_dir(browser_dir())
            .env("KAKEHASHI_CHROMIUM", chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start node")?;
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut b = Self {
            child,
            stdin,
            lines,
            log,
        };
        let ready = b.answer().await?;
        anyhow::ensure!(ready["ready"] == true, "browser did not start: {ready}");
        Ok(b)
    }

    async fn answer(&mut self) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(STEP, self.lines.next_line())
            .await
            .context("the browser script did not answer in time")??;
        let Some(line) = line else {
            bail!(
                "the browser script exited; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        };
        serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))
    }

    /// Runs one command; an `"ok": false` answer is an error.
    pub(crate) async fn ask(&mut self, cmd: Value) -> anyhow::Result<Value> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let a = self.answer().await?;
        eprintln!("browser {}: {a}", cmd["cmd"]);
        if a["ok"] != true {
            bail!("browser step {} failed: {a:#}", cmd["cmd"]);
        }
        Ok(a)
    }

    pub(crate) async fn quit(mut self) {
        let _ = self.stdin.write_all(b"{\"cmd\":\"quit\"}\n").await;
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A loopback port that was free a moment ago (the portal's origin names
/// its port, so it is chosen before the gateway starts).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `kakehashi-gateway admin --config CFG ARGS…`; returns stdout.
pub(crate) async fn admin(config: &Path, args: &[&str]) -> String {
    let out = Command::new(bin("kakehashi-gateway"))
        .arg("admin")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("USER", "officer-sato")
        .output()
        .await
        .expect("run the admin CLI");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "admin {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A gateway whose portal is `http://localhost:PORT` (plain HTTP on
/// loopback, a secure context for WebAuthn), with `sections` as its
/// `[store]`/`[identity]`/`[policy]` configuration.
pub(crate) struct PortalGateway {
    /// The gateway.
    pub(crate) gw: GatewayProc,
    /// `http://localhost:PORT`.
    pub(crate) portal: String,
}

pub(crate) async fn start_portal_gateway(pki: &Pki, sections: String) -> PortalGateway {
    let port = free_port();
    let portal = format!("http://localhost:{port}");
    let identity = format!(
        "{sections}[portal]\nlisten = \"127.0.0.1:{port}\"\nrp_id = \"localhost\"\n\
         origin = \"{portal}\"\ninsecure_http = true\n"
    );
    let mut gw = start_gateway(
        pki,
        GatewayOpts {
            identity: Some(identity),
            ..Default::default()
        },
    )
    .await;
    let listening = gw
        .proc
        .wait_line("listening portal ", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(listening, format!("127.0.0.1:{port}"));
    PortalGateway { gw, portal }
}

/// An enrollment code from the admin CLI, typed into the portal's
/// enrollment page in the browser; returns the browser's answer.
pub(crate) async fn enroll_in_browser(
    browser: &mut Browser,
    config: &Path,
    portal: &str,
    user: &str,
) -> Value {
    let out = admin(config, &["user", "enroll-code", "--id", user]).await;
    let code = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("enrollment code for {user}: ")))
        .unwrap_or_else(|| panic!("no code in {out}"))
        .trim()
        .to_string();
    browser
        .ask(json!({ "cmd": "enroll", "url": format!("{portal}/enroll"), "user": user, "code": code }))
        .await
        .unwrap()
}

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
         &code_challenge={pkce}&code_challenge_method=S256",
        n = rand::random::<u32>()
    );
    let r = browser
        .ask(json!({ "cmd": "login_refused", "url": no_uv_url, "user": USER, "uv": false }))
        .await
        .unwrap();
    assert!(r["status"].as_str().unwrap().contains("本人確認"), "{r}");
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
