//! `kakehashi-demo --gateways N`: a cluster on loopback (docs/cluster.md) —
//! a throw-away PostgreSQL in the demo's directory ([`crate::pg`]), N
//! `kakehashi-gateway` *processes* on it (the binary next to the demo's
//! own), the demo's agent registered on every one of them, and a
//! `client.toml` that lists them all (`[gateway] fallback`), so that a
//! gateway killed with `kill -9` shows the laptop moving to the next.
//!
//! Every process it starts dies with it, even when it is killed with
//! SIGKILL (`kakehashi-child`); on Ctrl-C or SIGTERM it stops the agent and
//! the gateways first (SIGTERM, their grace period), then PostgreSQL (fast
//! shutdown). Its children run in their own process group, so a Ctrl-C in
//! the terminal reaches the demo alone and the order holds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kakehashi_child::{ask_to_stop, die_with_parent, StopSignal};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::demo::{
    agent_toml, bind_pair, client_command, client_toml, echo_service, enroll_demo_user, free_port,
    prepare_dir, print_next_steps, write, DemoPki, BROWSER_CODE_HOURS, DEMO_DESK, DEMO_DEVICE,
    DEMO_USER, ECHO_PASS_THROUGH, MAX_GATEWAYS,
};
use crate::pg::{tail, Postgres};

/// The demo gateways' `[relay.limits] shutdown_grace`: a demo stops quickly.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long a gateway may take to bind its listeners after it starts.
const BIND_WITHIN: Duration = Duration::from_secs(60);
/// How long the agent may take to register on every gateway.
const AGENT_WITHIN: Duration = Duration::from_secs(30);

/// One `kakehashi-gateway run` of the cluster.
struct GatewayChild {
    /// 1, 2, …: also its name, `gw1`, `gw2`, …
    n: u8,
    child: Child,
    pid: u32,
    laptops: SocketAddr,
    agents: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

/// The ports one gateway listens on; QUIC and TCP share each number.
struct Ports {
    laptops: u16,
    agents: u16,
    admin: u16,
    portal: u16,
}

/// Run the cluster demo with `n` (2 ≤ n ≤ [`MAX_GATEWAYS`]) gateways until
/// Ctrl-C or SIGTERM.
pub async fn run(dir: &Path, n: u8) -> anyhow::Result<()> {
    if !(2..=MAX_GATEWAYS).contains(&n) {
        bail!("--gateways takes 1 to {MAX_GATEWAYS}");
    }
    // Before anything is created: the gateway program and PostgreSQL's
    // must be there.
    let gateway_bin = gateway_binary()?;
    crate::pg::bin_dir()?;
    // Another demo running in this directory keeps it (before anything is removed).
    crate::pg::refuse_if_running(dir)?;
    prepare_dir(dir)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let DemoPki {
        ca,
        gw,
        agent,
        device,
        crl,
    } = DemoPki::create(&dir)?;
    let rel = |p: &Path| {
        p.strip_prefix(&dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    };

    eprintln!(
        "Creating a throw-away PostgreSQL in {} (a new one at every start) …",
        dir.join("pg").display()
    );
    let pg = Postgres::start(&dir).await?;

    let desk = TcpListener::bind("127.0.0.1:0").await?;
    let desk_addr = desk.local_addr()?;
    tokio::spawn(echo_service(desk));

    std::fs::write(
        dir.join("policy.toml"),
        kakehashi_policy::default_policy_toml(),
    )
    .context("cannot write policy.toml")?;

    // Start the gateways one after the other: the first creates the
    // tables and seeds the policy, the others join.
    let mut gateways = Vec::new();
    let mut portal_ports = Vec::new();
    for i in 1..=n {
        let ports = ports().await?;
        portal_ports.push(ports.portal);
        let state = dir.join(format!("gw{i}"));
        std::fs::create_dir_all(&state)
            .with_context(|| format!("cannot create {}", state.display()))?;
        let toml = format!(
            r#"# Written by `kakehashi-demo --gateways {n}`: gateway {i} of {n}, on the
# demo's PostgreSQL. `kakehashi-gateway --config {cfg} cluster status` shows the cluster.
name = "gw{i}"

[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
crl = "{crl}"
ticket_key = "{ticket}"
# Each gateway its own (they all default to beside ticket_key).
resumption_keys = "gw{i}/tls-resumption.keys"

[relay.terminals]
quic = "127.0.0.1:{laptops}"
tcp = "127.0.0.1:{laptops}"
max_connections = 1000

[relay.agents]
quic = "127.0.0.1:{agents}"
tcp = "127.0.0.1:{agents}"
max_connections = 1000

[relay.limits]
max_sessions = 1000
shutdown_grace = "{grace}s"

[admin]
listen = "127.0.0.1:{admin}"

# The demo's PostgreSQL; the same URL on every gateway makes them one cluster.
[store]
url = "{url}"

[identity]
require_login = true

# Seeds the empty database once (whichever gateway is first).
[policy]
file = "policy.toml"

[audit]
checkpoint_key = "gw{i}/audit-checkpoint.key"

# Plain HTTP on loopback for the demo only; production serves HTTPS.
[portal]
listen = "127.0.0.1:{portal}"
rp_id = "localhost"
origin = "http://localhost:{portal}"
insecure_http = true
"#,
            cfg = dir.join(format!("gateway{i}.toml")).display(),
            ca = rel(&ca.ca_cert_path()).display(),
            cert = rel(&gw.cert_path).display(),
            key = rel(&gw.key_path).display(),
            crl = rel(&crl).display(),
            ticket = rel(&ca.ticket_key_path()).display(),
            laptops = ports.laptops,
            agents = ports.agents,
            grace = SHUTDOWN_GRACE.as_secs(),
            admin = ports.admin,
            url = pg.url,
            portal = ports.portal,
        );
        // It holds the database password: its owner only.
        let cfg = dir.join(format!("gateway{i}.toml"));
        write_private(&cfg, &toml)?;
        gateways.push(start_gateway(&gateway_bin, &cfg, i, &state).await?);
    }

    let agent_toml = agent_toml(
        &format!(
            "# Written by `kakehashi-demo --gateways {n}`: the agent keeps a tunnel to every gateway."
        ),
        &rel,
        (&ca, &agent),
        &gateways.iter().map(|g| g.agents.to_string()).collect::<Vec<_>>(),
        &desk_addr.to_string(),
        ECHO_PASS_THROUGH,
    );
    let client_toml = client_toml(
        &format!(
            "# Written by `kakehashi-demo --gateways {n}`: the demo laptop ({DEMO_DEVICE}, class satellite).\n\
             # It uses the first gateway that answers, in this order, and stays on it\n\
             # until it cannot be reached (docs/cluster.md, \"Laptops move to another gateway\")."
        ),
        &rel,
        (&ca, &device),
        &gateways.iter().map(|g| g.laptops.to_string()).collect::<Vec<_>>(),
        portal_ports[0],
    );
    write(&dir.join("agent.toml"), &agent_toml)?;
    write(&dir.join("client.toml"), &client_toml)?;

    // The demo user and desk, in the database every gateway reads; the
    // user enrolls through gateway 1's portal.
    let store = kakehashi_store::Store::open(&pg.url)
        .await
        .context("cannot open the demo's PostgreSQL")?;
    let browser_code = enroll_demo_user(
        &store,
        &dir,
        portal_ports[0],
        &ca.ca_cert_path(),
        kakehashi_store::DeskService::Other,
    )
    .await?;
    store.close().await;

    let stop = CancellationToken::new();
    let agent =
        kakehashi_agent::Agent::new(kakehashi_agent::Config::load(&dir.join("agent.toml"))?)?;
    let agent_task = tokio::spawn(agent.run(stop.clone()));
    for g in &gateways {
        wait_agent_online(g).await?;
    }

    let client = client_command();
    let port = free_port().await.unwrap_or(13389);
    let pg_pid = pg.pid().map_or_else(|| "?".into(), |p| p.to_string());
    println!();
    println!("Kakehashi demo is running (Ctrl-C to stop) / デモを実行中です (Ctrl-C で終了)");
    println!("  directory     {}", dir.display());
    println!(
        "  postgresql    127.0.0.1:{}, pid {pg_pid}, {}; data in {} (a new cluster at every start / 起動ごとに新規作成; log {})",
        pg.port,
        pg.version,
        pg.data.display(),
        pg.log.display()
    );
    println!("  desk          {DEMO_DESK}: agent online on all {n} gateways, local service = echo on {desk_addr}");
    println!(
        "  laptop        {DEMO_DEVICE} (class satellite / サテライトオフィス), client.toml lists all {n} gateways"
    );
    println!();
    for g in &gateways {
        println!(
            "gateway {}: pid {}, laptops {}, agents {}, metrics http://{}/metrics",
            g.n, g.pid, g.laptops, g.agents, g.admin
        );
    }
    println!();
    println!(
        "  portal        http://localhost:{}/  (gateway 1; user {DEMO_USER}; its authenticator is {})",
        portal_ports[0],
        dir.join("passkey.cbor").display()
    );
    println!(
        "  dashboard     http://localhost:{}/ops  (運用ダッシュボード / ops dashboard)",
        portal_ports[0]
    );
    println!("  browser       to sign in from a browser, first register its passkey or security key / ブラウザーで使うには先に登録:");
    println!(
        "                http://localhost:{}/enroll  user {DEMO_USER}, code {browser_code}  (valid {BROWSER_CODE_HOURS} h / {BROWSER_CODE_HOURS} 時間有効)",
        portal_ports[0]
    );
    println!();
    print_next_steps(&client, &dir.join("client.toml"), port);
    println!("A gateway fails / ゲートウェイ障害を試す:");
    println!(
        "  kill -9 {}   # gateway 1: the next connect moves to gateway 2 / 次の接続はゲートウェイ 2 へ",
        gateways[0].pid
    );
    println!(
        "  {} --config {} cluster status",
        gateway_bin.display(),
        dir.join("gateway2.toml").display()
    );
    println!("  (gateway logs / ログ: {})", gateways[0].log.display());
    println!();

    // From here each gateway is watched: one that exits (a `kill -9` from
    // the person trying the demo) is reported, the others go on.
    let mut watched = tokio::task::JoinSet::new();
    for g in gateways {
        watched.spawn(watch(g, stop.clone()));
    }

    kakehashi_gateway::shutdown_signal().await;
    eprintln!("Stopping the demo: the agent, the gateways, then PostgreSQL … / デモを終了します");
    stop.cancel();
    let _ = agent_task.await;
    while watched.join_next().await.is_some() {}
    pg.stop().await;
    Ok(())
}

/// The `kakehashi-gateway` next to this program (cargo builds every binary
/// of the workspace into one directory), or what to run to build it.
fn gateway_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let dir = exe.parent().context("this program's directory")?;
    let bin = dir.join("kakehashi-gateway");
    if bin.is_file() {
        return Ok(bin);
    }
    let release = if dir.ends_with("release") {
        " --release"
    } else {
        ""
    };
    bail!(
        "{} がありません。`--gateways` のデモはゲートウェイを別プロセスとして起動します。先にビルドしてください:\n  \
         cargo build{release} -p kakehashi-gateway\n\
         {} is missing: the `--gateways` demo runs the gateways as processes of their own. Build it first:\n  \
         cargo build{release} -p kakehashi-gateway",
        bin.display(),
        bin.display()
    )
}

/// Free ports for one gateway; QUIC and TCP share the laptops' and the
/// agents' numbers, as in production (443).
async fn ports() -> anyhow::Result<Ports> {
    let (l, laptops) = bind_pair().await?;
    let (a, agents) = bind_pair().await?;
    let admin = free_port().await.context("no free port")?;
    let portal = free_port().await.context("no free port")?;
    drop((l, a));
    Ok(Ports {
        laptops,
        agents,
        admin,
        portal,
    })
}

/// `kakehashi-gateway run --config CFG` as gateway `n`, its log in
/// `state/gateway.log`; returns once it listens (the addresses it prints).
async fn start_gateway(
    bin: &Path,
    cfg: &Path,
    n: u8,
    state: &Path,
) -> anyhow::Result<GatewayChild> {
    let log = state.join("gateway.log");
    let err =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--config")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C reaches the demo, which stops it.
        .process_group(0);
    die_with_parent(cmd.as_std_mut());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let pid = child.id().context("gateway pid")?;
    let stdout = child.stdout.take().context("gateway stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let (mut laptops, mut agents, mut admin) = (None, None, None);
    let listening = tokio::time::timeout(BIND_WITHIN, async {
        // `listening WHAT ADDR`, one line per listener, the portal last.
        while let Ok(Some(line)) = lines.next_line().await {
            let mut w = line.split_whitespace();
            let (Some("listening"), Some(what), Some(addr)) = (w.next(), w.next(), w.next()) else {
                continue;
            };
            let addr: SocketAddr = addr.parse()?;
            match what {
                "terminal-tcp" => laptops = Some(addr),
                "agent-tcp" => agents = Some(addr),
                "admin" => admin = Some(addr),
                "portal" => return Ok(()),
                _ => {}
            }
        }
        anyhow::Ok(())
    })
    .await;
    let (Ok(Ok(())), Some(laptops), Some(agents), Some(admin)) =
        (listening, laptops, agents, admin)
    else {
        let _ = child.kill().await;
        bail!(
            "gateway {n} did not start (log {}):\n{}",
            log.display(),
            tail(&std::fs::read_to_string(&log).unwrap_or_default(), 20)
        );
    };
    // Nothing more is expected on its standard output; keep reading so it
    // never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(GatewayChild {
        n,
        child,
        pid,
        laptops,
        agents,
        admin,
        log,
    })
}

/// Until the demo stops: report the gateway's exit if it ends on its own;
/// on `stop`, SIGTERM and its grace period, then a kill.
async fn watch(mut g: GatewayChild, stop: CancellationToken) {
    tokio::select! {
        status = g.child.wait() => {
            if !stop.is_cancelled() {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                eprintln!(
                    "gateway {} (pid {}) exited: {status}; the others go on / ゲートウェイ {} が終了しました。ほかのゲートウェイは動作を続けます",
                    g.n, g.pid, g.n
                );
            }
        }
        () = stop.cancelled() => {
            let _ = ask_to_stop(g.pid, StopSignal::Term);
            let within = SHUTDOWN_GRACE + Duration::from_secs(10);
            if tokio::time::timeout(within, g.child.wait()).await.is_err() {
                eprintln!("gateway {} did not stop within {} s: killing it", g.n, within.as_secs());
                let _ = g.child.kill().await;
            }
        }
    }
}

/// Wait until gateway `g` counts the demo's agent online (its metrics).
async fn wait_agent_online(g: &GatewayChild) -> anyhow::Result<()> {
    let online = tokio::time::timeout(AGENT_WITHIN, async {
        loop {
            if let Ok(text) = metrics(g.admin).await {
                let agents: f64 = text
                    .lines()
                    .filter(|l| l.starts_with("kakehashi_agents_online{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                if agents >= 1.0 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if online.is_err() {
        bail!(
            "the demo agent did not register on gateway {} within {} s (log {})",
            g.n,
            AGENT_WITHIN.as_secs(),
            g.log.display()
        );
    }
    Ok(())
}

/// `GET /metrics` on the admin listener (HTTP/1.0: the body ends with the
/// connection).
async fn metrics(admin: SocketAddr) -> anyhow::Result<String> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = TcpStream::connect(admin).await?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes())
            .await?;
        let mut body = Vec::new();
        s.take(4 << 20).read_to_end(&mut body).await?;
        anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
    })
    .await
    .context("no answer from the admin listener")?
}

/// Write a file only its owner can read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An earlier file keeps its mode through `open`: set it.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
