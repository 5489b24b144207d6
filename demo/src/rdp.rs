//! `kakehashi-demo --rdp`: the demo desk is a real RDP server —
//! `freerdp-shadow-cli` on its own Xvfb display, NLA on, with a TLS key pair
//! issued by the demo CA — and the demo agent filters its sessions with that
//! same key pair (`[rdp]`), enforcing the demo's default (deny-all) controls.
//! Needs the Debian packages `freerdp2-shadow-x11`, `winpr-utils` and `xvfb`
//! (`tests/rdp/rdp-peers.sh install` installs them), and `xfreerdp` on the
//! laptop side for `kakehashi connect demo-desk --launch`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kakehashi_child::die_with_parent;
use kakehashi_pki::{CaDir, IssueRequest, Subject};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// The RDP account of the demo desk.
pub const RDP_USER: &str = "demo";

/// A running demo RDP desk; its processes end when it is dropped.
#[derive(Debug)]
pub struct RdpDesk {
    /// Where the RDP server listens.
    pub addr: SocketAddr,
    /// `[rdp]` section for the agent's configuration.
    pub agent_section: String,
    /// The desk's RDP password (printed for the person running the demo).
    pub password: String,
    _xvfb: Child,
    _server: Child,
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Start Xvfb and `freerdp-shadow-cli` with a key pair from `ca`, files in `dir/rdp-desk`.
pub async fn start(ca: &mut CaDir, dir: &Path) -> anyhow::Result<RdpDesk> {
    for p in ["freerdp-shadow-cli", "winpr-hash", "Xvfb"] {
        if !have(p) {
            bail!("{p} is not installed; `demo --rdp` needs freerdp2-shadow-x11, winpr-utils and xvfb (tests/rdp/rdp-peers.sh install)");
        }
    }
    let issued = ca.issue(&IssueRequest::new(Subject::Gateway {
        name: "demo-desk-rdp".into(),
        ips: vec!["127.0.0.1".parse()?],
    }))?;
    let home = dir.join("rdp-desk");
    let shadow = home.join(".config/freerdp/shadow");
    std::fs::create_dir_all(&shadow)?;
    std::fs::copy(&issued.cert_path, shadow.join("shadow.crt"))?;
    std::fs::copy(&issued.key_path, shadow.join("shadow.key"))?;
    let password = kakehashi_transport::random_hex(8);
    let mut sam = Command::new("winpr-hash");
    die_with_parent(sam.as_std_mut());
    let sam = sam
        .args(["-u", RDP_USER, "-p", &password, "-f", "sam"])
        .kill_on_drop(true)
        .output()
        .await
        .context("winpr-hash")?;
    if !sam.status.success() {
        bail!("winpr-hash failed");
    }
    let sam_path = home.join("sam");
    let mut text = sam.stdout;
    text.push(b'\n');
    std::fs::write(&sam_path, text)?;

    // Xvfb picks a free display and writes its number to a pipe (-displayfd 1).
    // Every process the demo starts dies with it, even when the demo is
    // killed with SIGKILL and cannot drop its `Child`ren (see kakehashi-child).
    // Spawned from the task that runs the demo (the main thread).
    let mut xvfb = Command::new("Xvfb");
    die_with_parent(xvfb.as_std_mut());
    let mut xvfb = xvfb
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1280x800x24",
            "-nolisten",
            "tcp",
            "-noreset",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start Xvfb")?;
    let out = xvfb.stdout.take().context("Xvfb stdout")?;
    let mut lines = tokio::io::BufReader::new(out).lines();
    let display = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("Xvfb did not start")??
        .context("Xvfb exited")?;
    let display = format!(":{}", display.trim());

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let log = std::fs::File::create(home.join("shadow.log"))?;
    let mut server = Command::new("freerdp-shadow-cli");
    die_with_parent(server.as_std_mut());
    let server = server
        .arg(format!("/port:{port}"))
        .arg("/bind-address:127.0.0.1")
        .arg("/sec:nla")
        .arg(format!("/sam-file:{}", sam_path.display()))
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("DISPLAY", &display)
        .env_remove("XAUTHORITY")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start freerdp-shadow-cli")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let up = tokio::time::timeout(Duration::from_secs(15), async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if up.is_err() {
        bail!(
            "freerdp-shadow-cli did not listen on {addr} (see {})",
            home.join("shadow.log").display()
        );
    }
    // Something to look at on the desk's screen, when available.
    for (program, args) in [
        ("xterm", &["-geometry", "100x30+40+40"][..]),
        ("xclock", &[][..]),
    ] {
        if have(program) {
            // Not waited for: it ends with the display, or with the demo.
            let _ = die_with_parent(&mut std::process::Command::new(program))
                .args(args)
                .env("DISPLAY", &display)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            break;
        }
    }
    let agent_section = format!(
        "\n[rdp]\nserver_cert = \"{}\"\nserver_key = \"{}\"\n",
        issued.cert_path.display(),
        issued.key_path.display()
    );
    Ok(RdpDesk {
        addr,
        agent_section,
        password,
        _xvfb: xvfb,
        _server: server,
    })
}

/// What to run next, for the person trying the demo.
pub fn print_instructions(
    desk: &RdpDesk,
    client: &str,
    client_toml: &std::path::Path,
    demo_desk: &str,
) {
    println!("The demo desk is an RDP server (freerdp-shadow-cli, NLA) on {}; the agent filters every session", desk.addr);
    println!("with the demo's default controls (no clipboard, drives, printers, USB or sound).");
    println!("Open it in xfreerdp / xfreerdp で開く:");
    println!(
        "  {client} --config {} connect {demo_desk} --launch --rdp-user {RDP_USER}",
        client_toml.display()
    );
    println!("rdp user: {RDP_USER}");
    println!("rdp password: {}", desk.password);
}
