//! A real browser for tests and benches: Debian's chromium driven by
//! playwright-core through `tests/browser/portal.mjs` (one JSON command per
//! line in, one JSON answer per line out; the commands are listed at the top
//! of that script), and a gateway with its portal on `http://localhost:PORT`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::{bin, start_gateway, GatewayOpts, GatewayProc, Pki};

/// One browser step (page load, ceremony, redirect) at most.
const STEP: Duration = Duration::from_secs(90);

/// `tests/browser`: the playwright-core driver and its node modules.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Chromium (`KAKEHASHI_CHROMIUM`, default `/usr/bin/chromium`), node and
/// playwright-core, or a failure that says how to get them.
pub fn prerequisites() -> PathBuf {
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
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
}

impl Browser {
    pub async fn start(chromium: &Path, log: PathBuf) -> anyhow::Result<Self> {
        Self::start_with(chromium, log, &[]).await
    }

    /// [`Browser::start`] with extra environment, e.g. a `HOME` whose
    /// `.pki/nssdb` trusts a private CA (Chromium's certificate store on Linux).
    pub async fn start_with(
        chromium: &Path,
        log: PathBuf,
        envs: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut child = crate::command("node")
            .arg(browser_dir().join("portal.mjs"))
            .current_dir(browser_dir())
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("KAKEHASHI_CHROMIUM", chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
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
    pub async fn ask(&mut self, cmd: Value) -> anyhow::Result<Value> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let a = self.answer().await?;
        eprintln!("browser {}: {a}", cmd["cmd"]);
        if a["ok"] != true {
            bail!("browser step {} failed: {a:#}", cmd["cmd"]);
        }
        Ok(a)
    }

    pub async fn quit(mut self) {
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
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `kakehashi-gateway admin --config CFG ARGS…`; returns stdout.
pub async fn admin(config: &Path, args: &[&str]) -> String {
    let out = crate::command(bin("kakehashi-gateway"))
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
pub struct PortalGateway {
    /// The gateway.
    pub gw: GatewayProc,
    /// `http://localhost:PORT`.
    pub portal: String,
}

/// Starts a [`PortalGateway`]: the portal's port is picked first, because
/// its origin names it.
pub async fn start_portal_gateway(pki: &Pki, sections: String) -> PortalGateway {
    start_portal_gateway_with(pki, sections, GatewayOpts::default()).await
}

/// [`start_portal_gateway`] with other options (limits, session cap);
/// `opts.identity` is replaced by `sections` and the `[portal]` section.
pub async fn start_portal_gateway_with(
    pki: &Pki,
    sections: String,
    opts: GatewayOpts,
) -> PortalGateway {
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
            ..opts
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
pub async fn enroll_in_browser(
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
