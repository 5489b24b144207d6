//! The documentation works (issue 20): the install walk-through of
//! `deploy/README.md` run as written — its `sh doctest:NAME` blocks, in a
//! sandbox that says what it stands in for ([`kakehashi_tests::doctest`]) —
//! through to an RDP session carrying a desktop that an operator watches on
//! the ops dashboard (a real browser trusting the private CA as the
//! walk-through installs it), an officer's policy change that survives a
//! gateway restart, an online backup that restores, and a revoked laptop
//! refused; and the Japanese and English admin guides name
//! the same commands, configuration keys and reason codes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kakehashi_tests::browser::{prerequisites, Browser};
use kakehashi_tests::doctest::{blocks, free_tcp_udp_port, Block, Sandbox};
use kakehashi_tests::*;
use serde_json::json;

use super::rdp::{
    install_peers, rdp_client_holding, rdp_server_cert, start_rdp_server_with, PASSWORD,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The marked blocks of the walk-through, in the order the test runs them
/// (and the machine each runs on). A block added, removed or renamed in
/// deploy/README.md fails the test until it is handled here.
const WALK_THROUGH: &[(&str, &str)] = &[
    ("ca", "ca"),
    ("gateway", "gateway"),
    ("desk", "desk"),
    ("people", "gateway"),
    ("browser-ca", "laptop"),
    ("laptop", "laptop"),
    ("login", "laptop"),
    ("connect", "laptop"),
    ("officer", "gateway"),
    ("after-restart", "gateway"),
    ("backup", "gateway"),
    ("restore-check", "gateway"),
    ("restore", "gateway"),
    ("revoke", "ca"),
    ("crl-install", "gateway"),
];

struct Walk {
    sb: Sandbox,
    blocks: Vec<Block>,
}

impl Walk {
    fn block(&self, name: &str) -> &Block {
        self.blocks
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no block {name}"))
    }

    /// Runs the block `name` on the machine the table says.
    async fn run(&self, name: &str) -> String {
        let machine = WALK_THROUGH
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m)
            .expect("a known block");
        let t = Instant::now();
        let out = self
            .sb
            .run(machine, self.block(name))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!("doctest block {name}: {:?}", t.elapsed());
        out
    }

    fn env(&self) -> Vec<(String, String)> {
        self.sb.env()
    }
}

/// The one-time code `admin user enroll-code --id USER` printed.
fn enrollment_code(out: &str, user: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("enrollment code for {user}: ")))
        .unwrap_or_else(|| panic!("no enrollment code for {user} in:\n{out}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_install_walk_through_works_as_written() {
    let t0 = Instant::now();
    let readme = read("deploy/README.md");
    let found: Vec<String> = blocks(&readme).iter().map(|b| b.name.clone()).collect();
    let want: Vec<&str> = WALK_THROUGH.iter().map(|(n, _)| *n).collect();
    assert_eq!(found, want, "the marked blocks of deploy/README.md changed");

    // The desk PC's RDP server (its own certificate, from any CA: xrdp's
    // would be self-signed).
    install_peers().await;
    let mut desk_pki = Pki::new();
    let rdp_cert = rdp_server_cert(&mut desk_pki);
    let (_rdp_server, rdp_addr) = start_rdp_server_with(&desk_pki, &rdp_cert).await;

    let laptop_port = kakehashi_tests::browser::free_port();
    let portal_port = kakehashi_tests::browser::free_port();
    let walk = Walk {
        sb: Sandbox::new(&[
            (443, free_tcp_udp_port()),
            (8443, free_tcp_udp_port()),
            (8444, portal_port),
            (9090, kakehashi_tests::browser::free_port()),
            (3389, rdp_addr.port()),
            (13389, laptop_port),
        ]),
        blocks: blocks(&readme),
    };
    let sb = &walk.sb;
    sb.carry_deploy(&repo().join("deploy"));
    for b in [
        "kakehashi-pki",
        "kakehashi-gateway",
        "kakehashi-agent",
        "kakehashi",
    ] {
        std::os::unix::fs::symlink(bin(b), sb.work.join(b)).unwrap();
    }
    sb.place("/etc/xrdp/cert.pem", &rdp_cert.cert);
    sb.place("/etc/xrdp/key.pem", &rdp_cert.key);
    let gw_log = sb.service_log("kakehashi-gateway");
    let within = Duration::from_secs(30);

    // 2. The CA.
    walk.run("ca").await;
    let ca = "/srv/kakehashi-pki";
    // 3. The gateway.
    sb.carry(
        ca,
        &[
            "ca.crt",
            "crl.pem",
            "ticket.key",
            "gateway-gw1.example.lg.jp.crt",
            "gateway-gw1.example.lg.jp.key",
        ],
    );
    walk.run("gateway").await;
    wait_file(&gw_log, "Gateway serving", 1, within)
        .await
        .unwrap();
    // 4. The agent on the desk PC.
    sb.carry(
        ca,
        &["ticket.pub", "agent-DESK-1234.crt", "agent-DESK-1234.key"],
    );
    walk.run("desk").await;
    wait_file(&gw_log, "Agent online", 1, within).await.unwrap();
    // 5. People and the desk; tanaka enrolls her key on the portal (her
    // browser and security key: a software authenticator).
    let out = walk.run("people").await;
    let code = enrollment_code(&out, "tanaka");
    let sato_code = enrollment_code(&out, "sato");
    assert!(out.contains("JST") || out.contains("+09:00"), "{out}");
    let passkey = sb.root().join("home/tanaka-passkey.cbor");
    kakehashi_client::soft::enroll(
        &format!("https://localhost:{portal_port}"),
        &sb.path("/srv/kakehashi-pki/ca.crt"),
        "tanaka",
        &code,
        &passkey,
    )
    .await
    .expect("tanaka enrolls her security key at /enroll");
    // sato, an operator, on a PC whose browser trusts the private CA as the
    // walk-through installs it (Chromium reads $HOME/.pki/nssdb): a real
    // browser with a virtual authenticator, over HTTPS with no exception.
    let out = walk.run("browser-ca").await;
    assert!(
        out.lines()
            .any(|l| l.contains("Kakehashi CA") && l.contains("C,,")),
        "{out}"
    );
    let home: Vec<(String, String)> = walk
        .env()
        .into_iter()
        .filter(|(k, _)| k == "HOME")
        .collect();
    let mut browser = Browser::start_with(&prerequisites(), sb.root().join("browser.log"), &home)
        .await
        .expect("browser");
    let portal = format!("https://localhost:{portal_port}");
    let e = browser
        .ask(json!({ "cmd": "enroll", "url": format!("{portal}/enroll"), "user": "sato", "code": sato_code }))
        .await
        .expect("sato enrolls at /enroll in a browser that trusts the portal");
    assert_eq!(e["credentials"].as_array().map(Vec::len), Some(1), "{e}");
    // 6. The laptop.
    sb.carry(ca, &["device-LAPTOP-001.crt", "device-LAPTOP-001.key"]);
    walk.run("laptop").await;
    let client_toml = sb.root().join("home/.config/kakehashi/client.toml");
    let mut text = std::fs::read_to_string(&client_toml).unwrap();
    text.push_str(&format!(
        "\n# The test's stand-in for the browser and the security key:\nsoft_authenticator = \"{}\"\nuser = \"tanaka\"\n",
        passkey.display()
    ));
    std::fs::write(&client_toml, text).unwrap();
    let out = walk.run("login").await;
    assert!(
        out.contains("logged in: tanaka") && out.contains("JST"),
        "{out}"
    );
    assert!(out.contains("not checked with the gateway"), "{out}");
    // `connect` runs until stopped: started as printed, then the RDP client.
    let line = sb.subst(walk.block("connect").text.trim());
    let env = walk.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let connect = run_printed_connect_with(&line, sb.root().join("connect.log"), &env).await;
    let listen = format!("127.0.0.1:{laptop_port}").parse().unwrap();
    // sato opens /ops and signs in; the desktop stays up while the
    // dashboard is read.
    let p = browser
        .ask(json!({ "cmd": "portal_login", "url": format!("{portal}/ops"), "user": "sato" }))
        .await
        .expect("sato signs in at /ops");
    assert_eq!(p["status"], 200, "{p}");
    assert_eq!(p["title"], "運用ダッシュボード", "{p}");
    let rdp = rdp_client_holding(&desk_pki, "docs", listen, PASSWORD, "8", &[]);
    let watch = async {
        let start = Instant::now();
        loop {
            let r = browser
                .ask(json!({ "cmd": "ops_read", "after": 0 }))
                .await
                .expect("the dashboard draws");
            let seen = r["sessions"].as_array().is_some_and(|l| {
                l.iter().any(|x| {
                    x["user"] == "tanaka" && x["desk"] == "DESK-1234" && x["device"] == "LAPTOP-001"
                })
            });
            if seen {
                assert_eq!(r["metrics"]["level:2"], 1.0, "{r}");
                break r;
            }
            assert!(
                start.elapsed() < within,
                "tanaka's session never appeared on /ops: {r}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let ((code, out), ops) = tokio::join!(rdp, watch);
    eprintln!("the walk-through's session on /ops: {}", ops["sessions"]);
    browser.quit().await;
    assert_eq!(
        code,
        0,
        "the walk-through's RDP session did not reach a desktop:\n{out}\nconnect:\n{}",
        connect.log_text()
    );
    wait_file(
        &sb.service_log("kakehashi-agent"),
        "Session started",
        1,
        within,
    )
    .await
    .unwrap();

    // 7. The officer's change, and a restart.
    walk.run("officer").await;
    wait_file(&gw_log, "Gateway serving", 2, within)
        .await
        .unwrap();
    wait_file(&gw_log, "Agent online", 2, within).await.unwrap();
    let out = walk.run("after-restart").await;
    assert!(
        out.contains("printer no"),
        "the officer's change did not survive the restart:\n{out}"
    );
    assert!(
        out.contains("admin:"),
        "the officer's version in the history:\n{out}"
    );

    // 8. Backup while running, and the copy opened on its own.
    let out = walk.run("backup").await;
    assert!(out.lines().any(|l| l.trim() == "ok"), "{out}");
    let out = walk.run("restore-check").await;
    assert!(out.contains("tanaka") && out.contains("sato"), "{out}");
    // The copy restored in place: the chain verifies, the officer's policy
    // is in force, the desk's agent comes back by itself.
    let out = walk.run("restore").await;
    assert!(out.contains("audit log intact"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("2 ") && l.contains("admin:")),
        "the officer's version after the restore:\n{out}"
    );
    wait_file(&gw_log, "Gateway serving", 3, within)
        .await
        .unwrap();
    wait_file(&gw_log, "Agent online", 3, within).await.unwrap();

    // A lost laptop: revoked on the CA, the CRL carried to the gateway.
    walk.run("revoke").await;
    sb.carry(ca, &["crl.pem"]);
    let reloads = std::fs::read_to_string(&gw_log)
        .unwrap()
        .matches("CRL reloaded")
        .count();
    walk.run("crl-install").await;
    wait_file(&gw_log, "CRL reloaded", reloads + 1, within)
        .await
        .unwrap();
    let out = tokio::process::Command::new("kakehashi")
        .args(["connect", "DESK-1234", "--stdio"])
        .envs(walk.env())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("certificate_revoked"),
        "{err}"
    );
    eprintln!("walk-through: {:?}", t0.elapsed());
}

/// What a guide names: commands (program and subcommands), configuration
/// keys (`[section] key`) and reason codes.
#[derive(Debug, Default)]
struct Named {
    commands: BTreeSet<String>,
    keys: BTreeSet<String>,
    codes: BTreeSet<String>,
}

/// The text inside backquotes (`true`) and the lines of code blocks
/// (`false`) of `md`.
fn code_spans(md: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut prose = String::new();
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            out.push((line.to_owned(), false));
        } else {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    // A span may run over a line end.
    let mut parts = prose.split('`');
    parts.next();
    while let Some(code) = parts.next() {
        out.push((code.replace('\n', " "), true));
        parts.next();
    }
    out
}

fn named(md: &str) -> Named {
    let mut n = Named::default();
    for (span, inline) in code_spans(md) {
        let words: Vec<&str> = span.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            let program = match *w {
                "kakehashi" | "kakehashi-gateway" | "kakehashi-pki" | "kakehashi-agent"
                | "kakehashi-demo" => *w,
                _ => continue,
            };
            let mut cmd = vec![program.to_string()];
            let mut rest = words[i + 1..].iter();
            while let Some(w) = rest.next() {
                if *w == "--config" {
                    rest.next();
                    continue;
                }
                if w.starts_with('-') || cmd.len() == 4 {
                    break;
                }
                if !w.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                    break;
                }
                cmd.push(w.to_string());
            }
            n.commands.insert(cmd.join(" "));
        }
        // `[section] key` and `[section]`.
        let s = span.trim();
        if let Some(rest) = s.strip_prefix('[') {
            if let Some((section, after)) = rest.split_once(']') {
                if section
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
                    && !section.is_empty()
                {
                    let key = after
                        .split_whitespace()
                        .next()
                        .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
                    n.keys.insert(match key {
                        Some(k) => format!("[{section}] {k}"),
                        None => format!("[{section}]"),
                    });
                }
            }
        }
        if inline && !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            n.codes.insert(s.to_owned());
        }
    }
    n
}

fn differences(what: &str, en: &BTreeSet<String>, ja: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for x in en.difference(ja) {
        out.push(format!("{what} only in the English guide: {x}"));
    }
    for x in ja.difference(en) {
        out.push(format!("{what} only in the Japanese guide: {x}"));
    }
    out
}

#[test]
fn the_japanese_and_english_guides_name_the_same_things() {
    let en = named(&read("docs/admin-guide.en.md"));
    let ja = named(&read("docs/admin-guide.ja.md"));
    let mut problems = differences("command", &en.commands, &ja.commands);
    problems.extend(differences("configuration key", &en.keys, &ja.keys));
    problems.extend(differences("code", &en.codes, &ja.codes));
    // Every reason a laptop, the policy or the portal can give is explained.
    let all: Vec<&str> = kakehashi_proto::Reason::ALL
        .iter()
        .map(|r| r.code())
        .chain(kakehashi_policy::ReasonCode::ALL.iter().map(|r| r.code()))
        .chain(kakehashi_portal::Reason::ALL.iter().map(|r| r.code()))
        .collect();
    for code in all {
        for (lang, g) in [("English", &en), ("Japanese", &ja)] {
            if !g.codes.contains(code) {
                problems.push(format!("reason code {code} is not in the {lang} guide"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check has something to check.
    assert!(
        en.commands.contains("kakehashi-gateway admin import"),
        "{:?}",
        en.commands
    );
    assert!(en.keys.contains("[portal] origin"), "{:?}", en.keys);
}

/// The rows of the first Markdown table after the line `heading` in `md`:
/// each row's cells, backquotes taken off the first.
fn table_after(md: &str, heading: &str) -> Vec<Vec<String>> {
    let mut lines = md.lines().skip_while(|l| !l.starts_with(heading));
    let mut rows = Vec::new();
    let mut in_table = false;
    for l in lines.by_ref() {
        if l.starts_with('|') {
            in_table = true;
            let cells: Vec<String> = l
                .trim()
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect();
            rows.push(cells);
        } else if in_table {
            break;
        }
    }
    // The header and its rule.
    rows.drain(..rows.len().min(2));
    for r in &mut rows {
        r[0] = r[0].trim_matches('`').to_owned();
    }
    rows
}

/// docs/protocol.md says its reason tables are generated from the code:
/// they are the codes of `Reason::ALL` and the policy's `ReasonCode::ALL`,
/// in order, each with the very sentences a laptop shows.
#[test]
fn the_protocol_reason_tables_are_the_codes_in_the_source() {
    let md = read("docs/protocol.md");
    let want: Vec<Vec<String>> = kakehashi_proto::Reason::ALL
        .iter()
        .map(|r| vec![r.code().to_owned(), r.ja().to_owned(), r.en().to_owned()])
        .collect();
    assert_eq!(
        table_after(&md, "## 8. Reason codes"),
        want,
        "docs/protocol.md section 8 differs from proto/src/reason.rs"
    );
    let want: Vec<Vec<String>> = kakehashi_policy::ReasonCode::ALL
        .iter()
        .map(|r| vec![r.code().to_owned(), r.ja().to_owned(), r.en().to_owned()])
        .collect();
    assert_eq!(
        table_after(&md, "The access policy's refusals"),
        want,
        "docs/protocol.md's policy table differs from policy/src/reason.rs"
    );
}
