//! `kakehashi-demo`: a complete Kakehashi on loopback — a
//! throw-away CA, a gateway, one desk agent and a demo desk service (echo) —
//! with a `client.toml` so `kakehashi connect demo-desk` works as printed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use kakehashi_pki::{CaDir, InitOptions, IssueRequest, Issued, Subject, TerminalClass};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use kakehashi_gateway::config::Config;
use kakehashi_gateway::Gateway;

/// Most gateways `--gateways` starts.
pub(crate) const MAX_GATEWAYS: u8 = 9;
/// Desk id of the demo desk.
pub const DEMO_DESK: &str = "demo-desk";
/// Device id of the demo laptop.
pub const DEMO_DEVICE: &str = "demo-laptop";
const MARKER: &str = ".kakehashi-demo";
/// The echo desk's agent filters nothing: an explicit pass-through, for a desk
/// the demo registers as a non-RDP service.
pub(crate) const ECHO_PASS_THROUGH: &str = "
# The demo desk is an echo service, not an RDP server: nothing to filter. The
# gateway knows it as a non-RDP desk (`admin desk set --service other`), so its
# sessions are admitted without enforcement and audited so.
[rdp]
enforce = false
";

/// The demo's throw-away CA and what it issued.
pub(crate) struct DemoPki {
    pub ca: CaDir,
    /// The gateway's certificate (`localhost`, 127.0.0.1), shared by every
    /// gateway of a `--gateways` cluster.
    pub gw: Issued,
    pub agent: Issued,
    pub device: Issued,
    pub crl: PathBuf,
}

impl DemoPki {
    /// A new CA in `dir/pki` with the demo's certificates.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let pki_dir = dir.join("pki");
        eprintln!(
            "Creating a throw-away CA and certificates in {} …",
            pki_dir.display()
        );
        let mut ca = CaDir::init(
            &pki_dir,
            &InitOptions {
                organization: "Kakehashi demo".into(),
                common_name: "Kakehashi Demo CA".into(),
            },
        )?;
        let gw = ca.issue(&IssueRequest::new(Subject::Gateway {
            name: "localhost".into(),
            ips: vec!["127.0.0.1".parse()?],
        }))?;
        let agent = ca.issue(&IssueRequest::new(Subject::Agent {
            desk: DEMO_DESK.into(),
        }))?;
        let device = ca.issue(&IssueRequest::new(Subject::Device {
            id: DEMO_DEVICE.into(),
            // A satellite-office laptop: the default policy allows a level-2
            // desk from there at any hour, so the demo works at night too.
            class: TerminalClass::Satellite,
            user: Some("demo-user".into()),
        }))?;
        let crl = ca.write_crl()?;
        Ok(Self {
            ca,
            gw,
            agent,
            device,
            crl,
        })
    }
}

/// Run the demo until Ctrl-C; with `rdp`, the desk is a real RDP server
/// ([`crate::rdp`]) instead of an echo service.
pub async fn run(dir: &Path, rdp: bool) -> anyhow::Result<()> {
    prepare_dir(dir)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let DemoPki {
        mut ca,
        gw,
        agent,
        device,
        crl,
    } = DemoPki::create(&dir)?;

    // The demo desk: an echo service standing in for the desk PC's RDP server,
    // or with --rdp a real one.
    let rdp_desk = match rdp {
        true => Some(crate::rdp::start(&mut ca, &dir).await?),
        false => None,
    };
    let desk_addr = match &rdp_desk {
        Some(d) => d.addr,
        None => {
            let desk = TcpListener::bind("127.0.0.1:0").await?;
            let addr = desk.local_addr()?;
            tokio::spawn(echo_service(desk));
            addr
        }
    };

    // Gateway on loopback; QUIC and TCP share a port number as in production (443).
    let (term_tcp, term_port) = bind_pair().await?;
    let (agent_tcp, agent_port) = bind_pair().await?;
    let admin_port = free_port().await.unwrap_or(9090);
    let portal_port = free_port().await.unwrap_or(8444);
    drop((term_tcp, agent_tcp));
    let rel = |p: &Path| {
        p.strip_prefix(&dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let gateway_toml = format!(
        r#"# Written by `kakehashi-demo`. Run it alone with:
#   kakehashi-gateway run --config {gwcfg}
name = "demo-gateway"

[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
crl = "{crl}"
ticket_key = "{ticket}"

[relay.terminals]
quic = "127.0.0.1:{term_port}"
tcp = "127.0.0.1:{term_port}"
max_connections = 1000

[relay.agents]
quic = "127.0.0.1:{agent_port}"
tcp = "127.0.0.1:{agent_port}"
max_connections = 1000

[relay.limits]
max_sessions = 1000

[admin]
listen = "127.0.0.1:{admin_port}"

[store]
url = "{db}"

[identity]
require_login = true

# The access policy: the shipped default, which seeds the demo's database at its
# first start. To change the policy in force, edit it, check it with
# `kakehashi-gateway policy check policy.toml` and put it in force with
# `kakehashi-gateway --config gateway.toml policy import policy.toml`.
[policy]
file = "policy.toml"

# Plain HTTP on loopback for the demo only (browsers treat http://localhost
# as a secure context for WebAuthn); production serves HTTPS.
[portal]
listen = "127.0.0.1:{portal_port}"
rp_id = "localhost"
origin = "http://localhost:{portal_port}"
insecure_http = true
"#,
        gwcfg = dir.join("gateway.toml").display(),
        db = dir.join("kakehashi.db").display(),
        ca = rel(&ca.ca_cert_path()).display(),
        cert = rel(&gw.cert_path).display(),
        key = rel(&gw.key_path).display(),
        crl = rel(&crl).display(),
        ticket = rel(&ca.ticket_key_path()).display(),
    );
    std::fs::write(
        dir.join("policy.toml"),
        kakehashi_policy::default_policy_toml(),
    )
    .context("cannot write policy.toml")?;
    let agent_toml = agent_toml(
        "# Written by `kakehashi-demo`.",
        &rel,
        (&ca, &agent),
        &[format!("127.0.0.1:{agent_port}")],
        &desk_addr.to_string(),
        rdp_desk
            .as_ref()
            .map_or(ECHO_PASS_THROUGH, |d| d.agent_section.as_str()),
    );
    let client_toml = client_toml(
        &format!(
            "# Written by `kakehashi-demo`: the demo laptop ({DEMO_DEVICE}, class satellite: a satellite office,\n\
             # which the default policy lets reach level 2 at any hour)."
        ),
        &rel,
        (&ca, &device),
        &[format!("127.0.0.1:{term_port}")],
        portal_port,
    );
    write(&dir.join("gateway.toml"), &gateway_toml)?;
    write(&dir.join("agent.toml"), &agent_toml)?;
    write(&dir.join("client.toml"), &client_toml)?;

    let gateway = Gateway::bind(Config::load(&dir.join("gateway.toml"))?)
        .await
        .context("cannot start the demo gateway")?;
    let shared = gateway.shared();
    let stop = CancellationToken::new();
    let gw_task = tokio::spawn(gateway.serve(stop.clone()));
    let agent =
        kakehashi_agent::Agent::new(kakehashi_agent::Config::load(&dir.join("agent.toml"))?)?;
    let agent_task = tokio::spawn(agent.run(stop.clone()));

    // The demo user, enrolled through the portal with a software authenticator.
    // The echo desk is registered as a non-RDP service: its agent passes
    // sessions through, and they are audited as not enforced. With --rdp the
    // desk is an RDP desk whose agent filters every session.
    let service = match rdp {
        true => kakehashi_store::DeskService::Rdp,
        false => kakehashi_store::DeskService::Other,
    };
    let store = shared
        .store
        .as_ref()
        .context("the demo gateway has no store")?;
    let browser_code =
        enroll_demo_user(store, &dir, portal_port, &ca.ca_cert_path(), service).await?;

    // Wait until the agent's tunnel is registered before telling anyone to connect.
    let online = tokio::time::timeout(Duration::from_secs(15), async {
        while !shared.online_desks().iter().any(|d| d == DEMO_DESK) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if online.is_err() {
        bail!("the demo agent did not connect within 15 s (see the log above)");
    }

    let client = client_command();
    let port = free_port().await.unwrap_or(13389);
    println!();
    println!("Kakehashi demo is running (Ctrl-C to stop) / デモを実行中です (Ctrl-C で終了)");
    println!("  directory     {}", dir.display());
    println!("  gateway       127.0.0.1:{term_port} for laptops (QUIC and TLS/TCP), 127.0.0.1:{agent_port} for agents");
    let service = if rdp { "RDP server" } else { "echo" };
    println!("  desk          {DEMO_DESK}: agent online, local service = {service} on {desk_addr}");
    println!("  metrics       http://127.0.0.1:{admin_port}/metrics");
    println!(
        "  laptop        {DEMO_DEVICE} (class satellite / サテライトオフィス), certificate in {}",
        device.cert_path.display()
    );
    println!();
    println!("  portal        http://localhost:{portal_port}/  (user {DEMO_USER}; its authenticator is {})", dir.join("passkey.cbor").display());
    println!("  dashboard     http://localhost:{portal_port}/ops  (運用ダッシュボード / ops dashboard; {DEMO_USER} has the operator role)");
    println!("  browser       to sign in from a browser, first register its passkey or security key / ブラウザーで使うには先に登録:");
    println!("                http://localhost:{portal_port}/enroll  user {DEMO_USER}, code {browser_code}  (valid {BROWSER_CODE_HOURS} h / {BROWSER_CODE_HOURS} 時間有効)");
    println!();
    print_next_steps(&client, &dir.join("client.toml"), port);
    if let Some(d) = &rdp_desk {
        crate::rdp::print_instructions(d, &client, &dir.join("client.toml"), DEMO_DESK);
        println!();
    }

    kakehashi_gateway::shutdown_signal().await;
    eprintln!("Stopping the demo …");
    stop.cancel();
    let _ = agent_task.await;
    gw_task.await.context("gateway task")??;
    Ok(())
}

/// What to run next: log in, connect, the one-liner, a refusal.
pub(crate) fn print_next_steps(client: &str, client_toml: &Path, port: u16) {
    println!("First log in (a real WebAuthn ceremony with the demo's software authenticator) / まずログイン:");
    println!("  {client} --config {} login", client_toml.display());
    println!();
    println!("Next, in another terminal / 次に別の端末で:");
    println!(
        "  {client} --config {} connect {DEMO_DESK} --listen 127.0.0.1:{port}",
        client_toml.display()
    );
    println!("then point any TCP client (an RDP client, nc …) at 127.0.0.1:{port}; the demo desk echoes what it receives:");
    println!("  nc 127.0.0.1 {port}");
    println!();
    println!("Or in one line, without nc / nc なしで一行で:");
    println!(
        "  echo こんにちは | {client} --config {} connect {DEMO_DESK} --stdio",
        client_toml.display()
    );
    println!();
    println!("Try also / ほかにも:");
    println!(
        "  {client} --config {} connect {DEMO_DESK} --transport tcp",
        client_toml.display()
    );
    println!(
        "  {client} --config {} connect no-such-desk   # refused: desk_unknown",
        client_toml.display()
    );
    println!();
}

/// Demo user id.
pub const DEMO_USER: &str = "demo-user";

/// How long the demo's browser enrollment code stays valid.
pub(crate) const BROWSER_CODE_HOURS: i64 = 8;

/// Enrolls the demo user's software authenticator through the portal and
/// returns a second one-time enrollment code, for a person to register their
/// browser's own authenticator (the dashboard needs a sign-in in a browser).
pub(crate) async fn enroll_demo_user(
    store: &kakehashi_store::Store,
    dir: &Path,
    portal_port: u16,
    ca: &Path,
    service: kakehashi_store::DeskService,
) -> anyhow::Result<String> {
    use kakehashi_store::{Audit, NewUser, Role};
    let now = kakehashi_store::unix_now();
    let user = NewUser {
        id: DEMO_USER.into(),
        name: "デモ 太郎".into(),
        department: "somu".into(),
        roles: [Role::Staff, Role::Officer, Role::Operator]
            .into_iter()
            .collect(),
    };
    store
        .add_user(
            &user,
            Audit::new(now, "demo", "user.add").subject(DEMO_USER),
        )
        .await?;
    let (code, hash) = kakehashi_portal::new_enrollment_code();
    store
        .create_enrollment_code(
            &hash,
            DEMO_USER,
            now + 600,
            Audit::new(now, "demo", "user.enroll_code").subject(DEMO_USER),
        )
        .await?;
    // The demo desk: level 2 (LGWAN), owned by the demo user.
    let desk = kakehashi_store::Desk {
        id: DEMO_DESK.into(),
        department: "somu".into(),
        level: 2,
        segment: kakehashi_store::Segment::Lgwan,
        service,
        owners: [DEMO_USER.to_string()].into(),
    };
    store
        .add_desk(
            &desk,
            Audit::new(now, "demo", "desk.add").subject(DEMO_DESK),
        )
        .await?;
    kakehashi_client::soft::enroll(
        &format!("http://localhost:{portal_port}"),
        ca,
        DEMO_USER,
        &code,
        &dir.join("passkey.cbor"),
    )
    .await
    .context("cannot enroll the demo user's software authenticator")?;
    let (browser_code, hash) = kakehashi_portal::new_enrollment_code();
    let now = kakehashi_store::unix_now();
    store
        .create_enrollment_code(
            &hash,
            DEMO_USER,
            now + BROWSER_CODE_HOURS * 3600,
            Audit::new(now, "demo", "user.enroll_code").subject(DEMO_USER),
        )
        .await?;
    Ok(browser_code)
}

/// Refuse to write into a directory that holds something other than an earlier demo.
pub(crate) fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!(
                "{} exists and is not a Kakehashi demo directory; choose another with --dir",
                dir.display()
            );
        }
        // A previous demo's throw-away CA, database and credentials: start over.
        for f in [
            "kakehashi.db",
            "kakehashi.db-wal",
            "kakehashi.db-shm",
            "passkey.cbor",
            "token.json",
        ] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        // A `--gateways` demo's per-gateway keys and audit checkpoints
        // (which name the earlier database's records).
        for n in 1..=MAX_GATEWAYS {
            let gw = dir.join(format!("gw{n}"));
            if gw.exists() {
                std::fs::remove_dir_all(&gw)
                    .with_context(|| format!("cannot clear {}", gw.display()))?;
            }
        }
        let pki = dir.join("pki");
        if pki.exists() {
            std::fs::remove_dir_all(&pki)
                .with_context(|| format!("cannot clear {}", pki.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write(
        &dir.join(MARKER),
        "This directory was made by `kakehashi-demo`; it may be deleted.\n",
    )
}

pub(crate) fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A TCP port whose UDP twin is free too, so QUIC and TCP share the number.
pub(crate) async fn bind_pair() -> anyhow::Result<(TcpListener, u16)> {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok((tcp, port));
        }
    }
    bail!("no free port pair for TCP and UDP on 127.0.0.1")
}

pub(crate) async fn free_port() -> Option<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await.ok()?;
    l.local_addr().ok().map(|a: SocketAddr| a.port())
}

/// How to run the client: the binary next to this one if it was built, else cargo.
pub(crate) fn client_command() -> String {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("kakehashi")));
    match sibling {
        Some(p) if p.exists() => p.display().to_string(),
        _ => "cargo run --release -p kakehashi-client --".to_string(),
    }
}

pub(crate) async fn echo_service(l: TcpListener) {
    loop {
        let Ok((mut s, peer)) = l.accept().await else {
            continue;
        };
        debug!(%peer, "Demo desk connection");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

/// The demo agent's `agent.toml`, written by the demo with `header`: the
/// agent certificate from `pki`, one `[[gateways]]` entry per address of
/// `gateways`, the desk at `desk_addr`, and `tail` (its `[rdp]` section).
/// `rel` shortens paths to the demo directory's.
pub(crate) fn agent_toml(
    header: &str,
    rel: &dyn Fn(&Path) -> PathBuf,
    (ca, agent): (&CaDir, &Issued),
    gateways: &[String],
    desk_addr: &str,
    tail: &str,
) -> String {
    let gateway_entries: String = gateways
        .iter()
        .map(|a| format!("\n[[gateways]]\naddress = \"{a}\"\nserver_name = \"localhost\"\n"))
        .collect();
    format!(
        r#"{header}
[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[tickets]
public_keys = ["{ticket_pub}"]
{gateway_entries}
[target]
address = "{desk_addr}"

[reconnect]
initial_delay = "200ms"
max_delay = "5s"
{tail}"#,
        ca = rel(&ca.ca_cert_path()).display(),
        cert = rel(&agent.cert_path).display(),
        key = rel(&agent.key_path).display(),
        ticket_pub = rel(&ca.ticket_public_path()).display(),
    )
}

/// The demo laptop's `client.toml`, written by the demo with `header`: the
/// first of `gateways` and the rest as fallbacks, the device certificate
/// from `pki`, and the demo user's software authenticator through the
/// portal on `portal_port`.
pub(crate) fn client_toml(
    header: &str,
    rel: &dyn Fn(&Path) -> PathBuf,
    (ca, device): (&CaDir, &Issued),
    gateways: &[String],
    portal_port: u16,
) -> String {
    let first = gateways.first().map_or("", String::as_str);
    let fallback = match gateways.get(1..) {
        Some(rest) if !rest.is_empty() => format!(
            "fallback = [{}]\n",
            rest.iter()
                .map(|g| format!("\"{g}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => String::new(),
    };
    format!(
        r#"{header}
[gateway]
address = "{first}"
{fallback}server_name = "localhost"

[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[connect]
transport = "auto"

# The demo user's software authenticator (a real WebAuthn credential kept in
# a file, demo only): `kakehashi login` uses it instead of a browser.
[login]
portal = "http://localhost:{portal_port}"
user = "{DEMO_USER}"
soft_authenticator = "passkey.cbor"
"#,
        ca = rel(&ca.ca_cert_path()).display(),
        cert = rel(&device.cert_path).display(),
        key = rel(&device.key_path).display(),
    )
}
