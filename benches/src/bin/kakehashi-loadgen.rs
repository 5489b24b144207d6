//! `kakehashi-loadgen`: many agents and laptops in one process against the
//! real gateway binary, and the side-by-side comparisons of
//! `benches/run.sh` (P1–P7 of the performance issue).
//!
//! Every subcommand prints progress on standard error and one JSON summary
//! on standard output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand};
use kakehashi_benches::backend::{self, Dial};
use kakehashi_benches::fleet::{self, Agent, AgentTarget, Ctx, Laptop, Transport};
use kakehashi_benches::gateway::{self, Gateway, GatewayOpts};
use kakehashi_benches::pki::BenchPki;
use kakehashi_benches::procstat::{self, phase_use, Sampler};
use kakehashi_benches::stats::{median, summary, Errors, Hist};
use kakehashi_benches::traffic::{self, now_us, DeskMode, Profile};
use kakehashi_proto::{frame, FrameKind};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "kakehashi-loadgen",
    about = "Load generator and side-by-side benchmarks for the Kakehashi gateway"
)]
struct Cli {
    /// Bench CA directory (created on first use, kept between runs).
    #[arg(long, global = true, default_value = "target/bench-pki")]
    pki_dir: PathBuf,
    /// Where gateway configs and logs go (default: a temporary directory).
    #[arg(long, global = true)]
    work_dir: Option<PathBuf>,
    /// `RUST_LOG` for the gateway.
    #[arg(long, global = true, default_value = "info")]
    gateway_log: String,
    /// Also write the JSON summary to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create (or check) the bench CA and print its file paths.
    Pki,
    /// N agents and M laptops with paced RDP-like sessions (P5), a login
    /// storm (P6), a gateway restart (P7), or idle sessions.
    Sessions(Box<SessionsArgs>),
    /// Bulk throughput through the gateway vs a baseline relay (P1).
    Bulk(BulkArgs),
    /// Added p99 latency of a request/response vs a baseline relay (P4).
    Rr(RrArgs),
    /// Full mutual-TLS handshakes accepted per second vs the bare loop (P3).
    Handshakes(HsArgs),
    /// Memory per idle session vs rathole's per-connection figure (P2).
    Idle(IdleArgs),
    /// One gateway for a long run under session churn and agent redials:
    /// RSS, descriptors and store size sampled; exits non-zero unless RSS
    /// and descriptors stay flat (`benches/soak.sh`, issue Resilience item 4).
    Soak(kakehashi_benches::soak::SoakArgs),
    /// Prepare a gateway on another machine for `sessions --remote`: a
    /// directory with its configuration (a bare relay, as the benches run
    /// it) and certificate from the bench CA, to copy there and run.
    RemoteConfig(RemoteConfigArgs),
    /// Print `n` free TCP ports on 127.0.0.1 (for the bench script).
    FreePorts {
        /// How many.
        n: usize,
    },
}

#[derive(Args, Debug, Clone)]
struct SessionsArgs {
    /// Transport of both legs.
    #[arg(long, value_enum, default_value = "quic")]
    transport: Transport,
    /// Sessions opened at the start.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Desk agents (default: one per session, at least one).
    #[arg(long)]
    agents: Option<usize>,
    /// Laptops (default: one per session, storm included).
    #[arg(long)]
    laptops: Option<usize>,
    /// Seconds of steady traffic once every session is open.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// New sessions per second while opening the initial ones.
    #[arg(long, default_value_t = 500.0)]
    ramp: f64,
    /// Agent handshakes in flight while the fleet connects.
    #[arg(long, default_value_t = 64)]
    agent_concurrency: usize,
    /// Sessions arriving during the storm phase (P6).
    #[arg(long, default_value_t = 0)]
    storm: usize,
    /// Length of the storm phase, seconds.
    #[arg(long, default_value_t = 60.0)]
    storm_secs: f64,
    /// Restart the gateway after the steady phase and time the agents' return (P7).
    #[arg(long)]
    restart: bool,
    /// How the gateway is stopped for the restart.
    #[arg(long, value_enum, default_value = "term")]
    restart_signal: StopSignal,
    /// Session streams each simulated agent allows the gateway (default:
    /// twice the sessions per desk, at least 16; the real agent allows 4,096).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    agent_streams: Option<u32>,
    /// Seconds to let idle sessions settle before reading RSS.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// QUIC connections per client UDP socket in the load generator.
    #[arg(long, default_value_t = 64)]
    conns_per_socket: usize,
    /// Agents' first reconnect delay, ms (the real agent's default).
    #[arg(long, default_value_t = 500)]
    backoff_initial_ms: u64,
    /// Agents' reconnect delay cap, ms.
    #[arg(long, default_value_t = 30_000)]
    backoff_max_ms: u64,
    /// Admit every session through a seeded SQLite store (login token
    /// checked, the default policy on a snow day with BCP declared, the
    /// session's start and end written) instead of the bare relay.
    #[arg(long)]
    store: bool,
    /// The gateway's budget of bytes in flight, MiB (`[relay.limits]
    /// memory_budget_mib`); default: none a bench reaches.
    #[arg(long)]
    memory_budget_mib: Option<u64>,
    /// The scheduling delay above which the gateway refuses new sessions,
    /// ms (`[relay.limits] busy_delay`); default: the rule off.
    #[arg(long)]
    busy_delay_ms: Option<u64>,
    /// The CPU in use, percent of what the gateway may use, at which it
    /// refuses new sessions (`[relay.limits] busy_cpu_percent`); default:
    /// the rule off.
    #[arg(long)]
    busy_cpu_percent: Option<u32>,
    /// Agents per second the gateway takes back after a restart
    /// (`[relay.limits] agent_return_rate`, 0: no spreading); default: the
    /// shipped one. Used by `--restart` (P7).
    #[arg(long)]
    agent_return_rate: Option<u32>,
    /// After the gateway's run, the same paced sessions through a baseline
    /// relay (`tls:HOST:PORT`, e.g. HAProxy) to the load generator's desk at
    /// `--backend-tls`, then straight to that desk (no relay: the floor of
    /// this machine and load generator). Skipped when descriptors are short.
    #[arg(long, requires = "backend_tls")]
    baseline: Option<String>,
    /// Where the load generator serves the desk behind `--baseline`.
    #[arg(long)]
    backend_tls: Option<SocketAddr>,
    /// Process id of the `--baseline` relay (e.g. HAProxy): its CPU is
    /// sampled from `/proc` over the baseline's steady phase.
    #[arg(long, requires = "baseline")]
    baseline_pid: Option<u32>,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    profile: ProfileArgs,
}

#[derive(Args, Debug, Clone)]
struct RemoteArgs {
    /// A gateway on another machine, by the DNS name its certificate
    /// carries (see `remote-config`): no gateway is started here, its CPU
    /// and RSS come from `--remote-metrics`.
    #[arg(long)]
    remote: Option<String>,
    /// The remote gateway's address, when its name does not resolve here.
    #[arg(long, requires = "remote")]
    remote_address: Option<std::net::IpAddr>,
    /// Its laptop port (TCP and UDP).
    #[arg(long, default_value_t = 443)]
    remote_laptop_port: u16,
    /// Its agent port (TCP and UDP).
    #[arg(long, default_value_t = 8443)]
    remote_agent_port: u16,
    /// Its metrics, for its CPU and RSS (`http://HOST:9090/metrics`).
    #[arg(long, requires = "remote")]
    remote_metrics: Option<String>,
}

impl RemoteArgs {
    /// The remote gateway's listeners (its admin address: the metrics').
    fn addrs(&self, name: &str) -> anyhow::Result<gateway::Addrs> {
        use std::net::ToSocketAddrs as _;
        let ip = match self.remote_address {
            Some(ip) => ip,
            None => (name, self.remote_laptop_port)
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {name}; give --remote-address"))?
                .next()
                .ok_or_else(|| anyhow!("{name} has no address; give --remote-address"))?
                .ip(),
        };
        let metrics = match &self.remote_metrics {
            Some(url) => procstat::metrics_url(url)?.0,
            None => bail!("--remote needs --remote-metrics (the gateway's CPU and RSS)"),
        };
        Ok(gateway::Addrs {
            terminal_quic: SocketAddr::new(ip, self.remote_laptop_port),
            terminal_tcp: SocketAddr::new(ip, self.remote_laptop_port),
            agent_quic: SocketAddr::new(ip, self.remote_agent_port),
            agent_tcp: SocketAddr::new(ip, self.remote_agent_port),
            admin: metrics,
        })
    }
}

#[derive(Args, Debug, Clone)]
struct RemoteConfigArgs {
    /// The DNS name the load generator dials (in the certificate).
    #[arg(long)]
    gateway_name: String,
    /// Addresses of the gateway to put in its certificate too.
    #[arg(long)]
    gateway_ip: Vec<std::net::IpAddr>,
    /// Where to write the directory to copy to the gateway machine.
    #[arg(long)]
    out: PathBuf,
    /// Where it serves its metrics: an address of the gateway machine the
    /// load generator reaches (an operations network, not 0.0.0.0 on a
    /// production host: they have no authentication).
    #[arg(long)]
    metrics_listen: SocketAddr,
    /// Laptop port (TCP and UDP).
    #[arg(long, default_value_t = 443)]
    laptop_port: u16,
    /// Agent port (TCP and UDP).
    #[arg(long, default_value_t = 8443)]
    agent_port: u16,
    /// Session cap.
    #[arg(long, default_value_t = 25_000)]
    max_sessions: usize,
    /// `[relay.limits] memory_budget_mib` (default: the shipped 4096).
    #[arg(long, default_value_t = 4096)]
    memory_budget_mib: u64,
}

#[derive(Args, Debug, Clone)]
struct ProfileArgs {
    /// Requests (and screen updates) per second per session; 0 = idle sessions.
    #[arg(long, default_value_t = 10.0)]
    hz: f64,
    /// Average desk-to-laptop rate of an ordinary session, kbit/s.
    #[arg(long, default_value_t = 150.0)]
    kbps: f64,
    /// Share of sessions at `heavy_kbps`.
    #[arg(long, default_value_t = 0.1)]
    heavy_frac: f64,
    /// Rate of a heavy session, kbit/s.
    #[arg(long, default_value_t = 3000.0)]
    heavy_kbps: f64,
    /// Share of sessions open but idle (no requests, no screen updates).
    #[arg(long, default_value_t = 0.0)]
    idle_frac: f64,
    /// Mean seconds between bursts in a session (0 = none).
    #[arg(long, default_value_t = 10.0)]
    burst_every: f64,
    /// Length of a burst, seconds.
    #[arg(long, default_value_t = 1.0)]
    burst_secs: f64,
    /// Rate multiplier during a burst.
    #[arg(long, default_value_t = 4.0)]
    burst_factor: f64,
    /// Input-event bytes per request.
    #[arg(long, default_value_t = 64)]
    up_bytes: u32,
}

impl ProfileArgs {
    fn profile(&self) -> Profile {
        Profile {
            hz: self.hz,
            kbps: self.kbps,
            heavy_frac: self.heavy_frac,
            idle_frac: self.idle_frac,
            heavy_kbps: self.heavy_kbps,
            burst_every_secs: self.burst_every,
            burst_secs: self.burst_secs,
            burst_factor: self.burst_factor,
            up_bytes: self.up_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StopSignal {
    /// SIGTERM: graceful stop (connections closed).
    Term,
    /// SIGKILL: crash (peers find out by timeout).
    Kill,
}

#[derive(Args, Debug, Clone)]
struct PairArgs {
    /// System/baseline pairs, run alternately (ABAB…).
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// The baseline relay: `tls:HOST:PORT` (mutual TLS) or `plain:HOST:PORT`.
    #[arg(long)]
    baseline: Option<String>,
    /// A plain-copy floor (socat) measured in each pair too, for reference.
    #[arg(long)]
    floor: Option<String>,
    /// Where the load generator serves the desk behind the TLS baseline.
    #[arg(long)]
    backend_tls: Option<SocketAddr>,
    /// Where the load generator serves the desk behind the plain floor.
    #[arg(long)]
    backend_plain: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone)]
struct BulkArgs {
    /// Concurrent sessions.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Transport of the gateway's legs (TLS on both legs = tcp).
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    #[command(flatten)]
    pairs: PairArgs,
}

#[derive(Args, Debug, Clone)]
struct RrArgs {
    /// Request/response exchanges per measurement.
    #[arg(long, default_value_t = 5000)]
    count: usize,
    /// Bytes each way.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Transport of the gateway's legs.
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    #[command(flatten)]
    pairs: PairArgs,
}

#[derive(Args, Debug, Clone)]
struct HsArgs {
    /// Handshakes in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    #[command(flatten)]
    pairs: PairArgs,
}

#[derive(Args, Debug, Clone)]
struct IdleArgs {
    /// Idle sessions (and idle rathole connections).
    #[arg(long, default_value_t = 20_000)]
    sessions: usize,
    /// System/baseline pairs.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Transport of the gateway's legs.
    #[arg(long, value_enum, default_value = "quic")]
    transport: Transport,
    /// The rathole binary.
    #[arg(long)]
    rathole: Option<PathBuf>,
    /// PKCS#12 identity for rathole's TLS server (the gateway certificate).
    #[arg(long)]
    rathole_p12: Option<PathBuf>,
    /// Its password.
    #[arg(long, default_value = "bench")]
    rathole_p12_password: String,
    /// Seconds to let idle sessions settle before reading RSS.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
}

struct Env {
    pki: Arc<BenchPki>,
    work: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    log: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let pki = BenchPki::open_or_create(&cli.pki_dir)?;
    let (work, tmp) = match &cli.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let env = Env {
        pki,
        work,
        _tmp: tmp,
        log: cli.gateway_log.clone(),
    };
    let _ = now_us();
    let out = match cli.cmd {
        Cmd::Pki => {
            let f = &env.pki.files;
            json!({
                "ca": f.ca, "crl": f.crl, "gateway_cert": f.gateway_cert, "gateway_key": f.gateway_key,
                "relay_cert": f.relay_cert, "relay_key": f.relay_key,
                "device_cert": cli.pki_dir.join("device-BENCH-LAPTOP-00.crt"),
                "device_key": cli.pki_dir.join("device-BENCH-LAPTOP-00.key"),
            })
        }
        Cmd::Sessions(a) => run_sessions(&env, &a).await?,
        Cmd::Bulk(a) => bulk(&env, &a).await?,
        Cmd::Rr(a) => rr(&env, &a).await?,
        Cmd::Handshakes(a) => handshakes(&env, &a).await?,
        Cmd::Idle(a) => idle(&env, &a).await?,
        Cmd::Soak(a) => kakehashi_benches::soak::run(&env.pki, &env.work, &env.log, &a).await?,
        Cmd::RemoteConfig(a) => remote_config(&env, &a)?,
        Cmd::FreePorts { n } => {
            let ls = (0..n)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<Result<Vec<_>, _>>()?;
            for l in &ls {
                println!("{}", l.local_addr()?.port());
            }
            return Ok(());
        }
    };
    let text = serde_json::to_string_pretty(&out)?;
    println!("{text}");
    if let Some(p) = cli.json {
        std::fs::write(p, format!("{text}\n"))?;
    }
    if out["bench"] == "soak" && out["pass"] != true {
        bail!("the soak did not pass: {}", out["verdict"]);
    }
    Ok(())
}

// ----------------------------------------------------------- remote-config

/// Write the directory a gateway on another machine runs from for
/// `sessions --remote`: its configuration (the bare relay the benches
/// measure: no store, no login, simulated desks that echo) and the bench
/// CA's files, with a certificate for its name.
fn remote_config(env: &Env, a: &RemoteConfigArgs) -> anyhow::Result<Value> {
    let (cert, key) = env.pki.gateway_named(&a.gateway_name, &a.gateway_ip)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let f = &env.pki.files;
    let copies = [
        (&f.ca, "ca.crt"),
        (&f.crl, "crl.pem"),
        (&cert, "gateway.crt"),
        (&key, "gateway.key"),
        (&f.ticket_key, "ticket.key"),
    ];
    for (from, to) in copies {
        std::fs::copy(from, a.out.join(to))
            .with_context(|| format!("cannot copy {} into {}", from.display(), a.out.display()))?;
    }
    // Relative paths: the gateway reads them next to its configuration.
    let files = kakehashi_benches::pki::PkiFiles {
        ca: "ca.crt".into(),
        crl: "crl.pem".into(),
        gateway_cert: "gateway.crt".into(),
        gateway_key: "gateway.key".into(),
        ticket_key: "ticket.key".into(),
        ..f.clone()
    };
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
    let opts = GatewayOpts {
        max_sessions: a.max_sessions,
        // A laptop and an agent connection per session (TLS/TCP: an agent
        // data connection too), and room for the agents' tunnels.
        max_connections: 2 * a.max_sessions + 1000,
        log: "info".into(),
        addrs: Some(gateway::Addrs {
            terminal_quic: any(a.laptop_port),
            terminal_tcp: any(a.laptop_port),
            agent_quic: any(a.agent_port),
            agent_tcp: any(a.agent_port),
            admin: a.metrics_listen,
        }),
        store: None,
        memory_budget_mib: a.memory_budget_mib,
        busy_delay_ms: None,
        busy_cpu_percent: None,
        agent_return_rate: None,
    };
    let config = a.out.join("gateway.toml");
    std::fs::write(&config, gateway::config_text(&files, &opts))?;
    let dir = a.out.display();
    eprintln!("Wrote {dir}: copy it to the gateway machine (it holds the bench ticket key: a bench gateway only), then there:");
    eprintln!("  ulimit -n 200000; kakehashi-gateway run --config {dir}/gateway.toml");
    eprintln!("and here:");
    eprintln!(
        "  kakehashi-loadgen --pki-dir {} sessions --remote {} --remote-laptop-port {} --remote-agent-port {} --remote-metrics http://{}/metrics --transport tcp --sessions 1000",
        cli_pki_dir(env).display(),
        a.gateway_name,
        a.laptop_port,
        a.agent_port,
        a.metrics_listen
    );
    Ok(
        json!({ "bench": "remote-config", "dir": a.out, "config": config, "gateway_name": a.gateway_name }),
    )
}

/// The bench CA's directory, as the `--pki-dir` to give again.
fn cli_pki_dir(env: &Env) -> PathBuf {
    env.pki
        .files
        .ca
        .parent()
        .map_or_else(|| PathBuf::from("target/bench-pki"), Path::to_path_buf)
}

// ---------------------------------------------------------------- sessions

const PHASE_RAMP: u8 = 0;
const PHASE_STEADY: u8 = 1;
const PHASE_STORM: u8 = 2;

#[derive(Default)]
struct Figures {
    phase: AtomicU8,
    /// Round trips of the initial sessions, by phase.
    rtt: [Hist; 3],
    /// Round trips of the storm's sessions.
    rtt_new: Hist,
    /// Round trips since the last progress line.
    window: Hist,
    setup_initial: Hist,
    setup_storm: Hist,
    setups_done: AtomicUsize,
}

fn max_conns(a: &SessionsArgs, agents: usize, total: usize) -> usize {
    match a.transport {
        Transport::Quic => agents.max(total) + 1000,
        // Agent listener: control + one data connection per session.
        Transport::Tcp => agents + total + 1000,
    }
}

async fn run_sessions(env: &Env, a: &SessionsArgs) -> anyhow::Result<Value> {
    let total = a.sessions + a.storm;
    let n_agents = a.agents.unwrap_or(a.sessions.max(1)).max(1);
    let n_laptops = a.laptops.unwrap_or(total).max(1);
    let profile = a.profile.profile();
    let mode = DeskMode::Rdp;
    let desks: Vec<String> = (0..n_agents).map(|i| format!("LG-DESK-{i:05}")).collect();
    let t = Instant::now();
    let certs = env.pki.agents(&desks).await?;
    eprintln!(
        "{} agent certificates in {:.1}s",
        certs.len(),
        t.elapsed().as_secs_f64()
    );
    // Admission through a store: laptop `i` must be the pooled device whose
    // user owns desk `i % n_agents`, and carries that device's login token.
    let (db, tokens) = if a.store {
        if a.laptops.is_some() {
            bail!("--store gives every session its own laptop; drop --laptops");
        }
        let t = Instant::now();
        let db = env.work.join(format!("bench-{}.db", std::process::id()));
        let tokens = kakehashi_benches::seed::seed(&db, &env.pki, &desks).await?;
        eprintln!(
            "store seeded with {} desks in {:.1}s ({})",
            desks.len(),
            t.elapsed().as_secs_f64(),
            db.display()
        );
        (Some(db), tokens)
    } else {
        (None, Vec::new())
    };

    let opts = GatewayOpts {
        max_sessions: total + 100,
        max_connections: max_conns(a, n_agents, total),
        log: env.log.clone(),
        addrs: None,
        store: db,
        memory_budget_mib: a.memory_budget_mib.unwrap_or(gateway::NO_BUDGET),
        busy_delay_ms: Some(a.busy_delay_ms.unwrap_or(0)),
        busy_cpu_percent: Some(a.busy_cpu_percent.unwrap_or(0)),
        agent_return_rate: a.agent_return_rate,
    };
    let stop_all = CancellationToken::new();
    // The gateway: started here, or on another machine (`--remote`).
    let (mut local, addrs, sampler, pid) = match &a.remote.remote {
        None => {
            let gw = gateway::start(&env.pki.files, &opts, &env.work).await?;
            let pid = Arc::new(AtomicU32::new(gw.proc.pid()));
            let sampler = Sampler::start(pid.clone(), Duration::from_secs(1), stop_all.clone());
            let addrs = gw.addrs;
            (Some(gw), addrs, sampler, pid)
        }
        Some(name) => {
            if a.store
                || a.restart
                || a.baseline.is_some()
                || a.memory_budget_mib.is_some()
                || a.busy_delay_ms.is_some()
                || a.busy_cpu_percent.is_some()
                || a.agent_return_rate.is_some()
            {
                bail!("--remote runs the bare relay's paced sessions (and --storm): drop --store, --restart, --baseline, --memory-budget-mib, --busy-delay-ms, --busy-cpu-percent and --agent-return-rate (set them in the remote gateway's configuration)");
            }
            fleet::set_remote(name);
            let addrs = a.remote.addrs(name)?;
            let (maddr, path) =
                procstat::metrics_url(a.remote.remote_metrics.as_deref().unwrap_or_default())?;
            procstat::scrape(maddr, &path)
                .await
                .context("the remote gateway's metrics")?;
            eprintln!(
                "remote gateway {name}: laptops {}, agents {}, metrics {maddr}{path}",
                addrs.terminal_tcp, addrs.agent_tcp
            );
            let sampler =
                Sampler::start_metrics(maddr, path, Duration::from_secs(1), stop_all.clone());
            (None, addrs, sampler, Arc::new(AtomicU32::new(0)))
        }
    };
    // The gateway's RSS now: from /proc here, from its metrics (the last
    // one-second sample) when it is remote.
    let gw_rss = |local: &Option<Gateway>| match local {
        Some(gw) => procstat::rss_kib(gw.proc.pid()),
        None => sampler.last().map_or(0, |s| s.rss_kib),
    };
    let self_pid = Arc::new(AtomicU32::new(std::process::id()));
    let self_sampler = Sampler::start(self_pid, Duration::from_secs(1), stop_all.clone());
    tokio::time::sleep(Duration::from_secs_f64(
        a.settle
            .min(0.5)
            .max(if local.is_some() { 0.0 } else { 2.1 }),
    ))
    .await;
    let rss_start = gw_rss(&local);
    let udp_drops0 = fleet::udp_rcvbuf_errors();

    let ticket_pub = kakehashi_pki::load_ticket_public_key(&env.pki.files.ticket_pub)?;
    let mut ctx = Ctx::new(mode, ticket_pub);
    {
        let c = Arc::get_mut(&mut ctx).expect("fresh");
        c.backoff_initial = Duration::from_millis(a.backoff_initial_ms);
        c.backoff_max = Duration::from_millis(a.backoff_max_ms);
    }
    let fig = Arc::new(Figures::default());
    let target = Arc::new(Mutex::new(AgentTarget {
        quic: addrs.agent_quic,
        tcp: addrs.agent_tcp,
    }));

    // Progress line every second.
    let progress = {
        let (ctx, fig, sampler, self_sampler, stop) = (
            ctx.clone(),
            fig.clone(),
            sampler.clone(),
            self_sampler.clone(),
            stop_all.clone(),
        );
        let t0 = Instant::now();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last_answers = 0;
            loop {
                tokio::select! { _ = stop.cancelled() => return, _ = tick.tick() => {} }
                let w = summary(&fig.window.take());
                let answers = ctx.flow.answers.load(Ordering::Relaxed);
                let g = sampler.last();
                let s = self_sampler.last();
                eprintln!(
                    "[{:>5.1}s] {} agents={} sessions={} answers/s={} p50={}us p99={}us errors={} gw_rss={}MiB gw_cpu={:.0}% loadgen_cpu={:.0}%",
                    t0.elapsed().as_secs_f64(),
                    ["ramp", "steady", "storm"][fig.phase.load(Ordering::Relaxed) as usize],
                    ctx.agents_up.load(Ordering::Relaxed),
                    ctx.sessions_up.load(Ordering::Relaxed),
                    answers - last_answers,
                    w.p50_us,
                    w.p99_us,
                    ctx.errors.total(),
                    g.map_or(0, |g| g.rss_kib / 1024),
                    g.map_or(0.0, |g| g.cpu_pct),
                    s.map_or(0.0, |s| s.cpu_pct),
                );
                last_answers = answers;
            }
        })
    };

    // Agents, a bounded number of handshakes in flight.
    let t_agents = Instant::now();
    let eps = match a.transport {
        Transport::Quic => fleet::endpoints(n_agents.div_ceil(a.conns_per_socket))?,
        Transport::Tcp => Vec::new(),
    };
    let qt = fleet::quic_transport(
        a.agent_streams
            .unwrap_or_else(|| fleet::agent_streams(total, n_agents)),
    );
    let gate = Arc::new(Semaphore::new(a.agent_concurrency.max(1)));
    let mut waits = Vec::with_capacity(n_agents);
    for (i, (desk, m)) in desks.iter().zip(certs.iter()).enumerate() {
        let ep = (a.transport == Transport::Quic).then(|| (eps[i % eps.len()].clone(), qt.clone()));
        let agent = Agent::new(desk.clone(), m, ep)?;
        waits.push(fleet::launch(agent, &ctx, &target, &stop_all, &gate).await?);
    }
    drop(certs);
    let agents_ok = fleet::count_up(waits).await;
    let agents_secs = t_agents.elapsed().as_secs_f64();
    eprintln!("{agents_ok}/{n_agents} agents up in {agents_secs:.1}s");
    tokio::time::sleep(Duration::from_secs_f64(a.settle.min(2.0))).await;
    let rss_agents = gw_rss(&local);

    // Laptops and the initial sessions.
    let mut devices = fleet::device_configs(&env.pki)?;
    for (d, t) in devices.iter_mut().zip(tokens) {
        d.token = Some(t);
    }
    let (laddr, leps) = match a.transport {
        Transport::Quic => (
            addrs.terminal_quic,
            fleet::endpoints(n_laptops.div_ceil(a.conns_per_socket))?,
        ),
        Transport::Tcp => (addrs.terminal_tcp, Vec::new()),
    };
    let laptops: Vec<Arc<Laptop>> = (0..n_laptops)
        .map(|i| {
            let device = if a.store {
                kakehashi_benches::seed::laptop_for_desk(i % n_agents)
            } else {
                i % devices.len()
            };
            Laptop::new(
                &devices[device],
                laddr,
                (!leps.is_empty()).then(|| leps[i % leps.len()].clone()),
            )
        })
        .collect();
    let traffic_stop = CancellationToken::new();
    let sessions_done = Arc::new(tokio::sync::Notify::new());
    let live = Arc::new(AtomicUsize::new(0));
    let spawn_session = |i: usize, storm: bool, gate: Arc<Semaphore>| {
        let laptop = laptops[i % laptops.len()].clone();
        let desk = desks[i % desks.len()].clone();
        let (ctx, fig, stop, live, done) = (
            ctx.clone(),
            fig.clone(),
            traffic_stop.clone(),
            live.clone(),
            sessions_done.clone(),
        );
        let kbps = profile.rate_of(i);
        live.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let t = Instant::now();
            let r = laptop.session(&desk).await;
            drop(permit);
            fig.setups_done.fetch_add(1, Ordering::Relaxed);
            match r {
                Err(kind) => ctx.errors.add(kind),
                Ok(io) => {
                    if storm {
                        &fig.setup_storm
                    } else {
                        &fig.setup_initial
                    }
                    .record(t.elapsed());
                    ctx.sessions_up.fetch_add(1, Ordering::Relaxed);
                    let f2 = fig.clone();
                    let end = traffic::drive_rdp(io, kbps, profile, stop, &ctx.flow, move |us| {
                        f2.window.record_us(us);
                        if storm {
                            f2.rtt_new.record_us(us);
                        } else {
                            f2.rtt[f2.phase.load(Ordering::Relaxed) as usize].record_us(us);
                        }
                    })
                    .await;
                    if let Some(k) = end.error_kind() {
                        ctx.errors.add(k);
                    }
                    ctx.sessions_up.fetch_sub(1, Ordering::Relaxed);
                }
            }
            if live.fetch_sub(1, Ordering::Relaxed) == 1 {
                done.notify_waiters();
            }
        });
    };
    let t_ramp = Instant::now();
    let gate = Arc::new(Semaphore::new(256));
    pace(a.sessions, a.ramp, |i| {
        spawn_session(i, false, gate.clone())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fig.setups_done.load(Ordering::Relaxed) < a.sessions && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramp_secs = t_ramp.elapsed().as_secs_f64();
    let opened = ctx.sessions_up.load(Ordering::Relaxed);
    eprintln!("{opened}/{} sessions open in {ramp_secs:.1}s", a.sessions);
    tokio::time::sleep(Duration::from_secs_f64(if profile.hz <= 0.0 {
        a.settle
    } else {
        1.0
    }))
    .await;
    let rss_sessions = gw_rss(&local);

    // Steady phase.
    fig.phase.store(PHASE_STEADY, Ordering::Relaxed);
    let steady_from = now_us() as f64 / 1e6;
    let answers0 = ctx.flow.answers.load(Ordering::Relaxed);
    let bytes0 = ctx.flow.bytes_down.load(Ordering::Relaxed);
    let both0 = ctx.flow.bytes_both();
    let errors_before_steady = ctx.errors.snapshot();
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    let steady_to = now_us() as f64 / 1e6;
    let steady_answers = ctx.flow.answers.load(Ordering::Relaxed) - answers0;
    let steady_bytes = ctx.flow.bytes_down.load(Ordering::Relaxed) - bytes0;
    let steady_bytes_both = ctx.flow.bytes_both() - both0;

    // Storm phase (P6): new sessions arriving uniformly onto the live ones.
    let mut storm_out = Value::Null;
    if a.storm > 0 {
        fig.phase.store(PHASE_STORM, Ordering::Relaxed);
        let from = now_us() as f64 / 1e6;
        let storm_gate = Arc::new(Semaphore::new(5000));
        let done0 = fig.setups_done.load(Ordering::Relaxed);
        pace(a.storm, a.storm as f64 / a.storm_secs, |j| {
            spawn_session(a.sessions + j, true, storm_gate.clone())
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while fig.setups_done.load(Ordering::Relaxed) < done0 + a.storm && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let to = now_us() as f64 / 1e6;
        let before = summary(&fig.rtt[PHASE_STEADY as usize].snapshot());
        let during = summary(&fig.rtt[PHASE_STORM as usize].snapshot());
        storm_out = json!({
            "sessions": a.storm,
            "secs": a.storm_secs,
            "setup": summary(&fig.setup_storm.snapshot()),
            "new_sessions_rtt": summary(&fig.rtt_new.snapshot()),
            "live_rtt_before": before,
            "live_rtt_during": during,
            "live_p99_ratio": during.p99_us as f64 / before.p99_us.max(1) as f64,
            "refused_gateway_busy": ctx.errors.snapshot().get("setup:refused:gateway_busy").copied().unwrap_or(0),
            "gateway": phase_use(&sampler.between(from, to)),
        });
    }

    // Restart (P7): stop the gateway, start it again on the same ports, time the agents' return.
    let mut restart_out = Value::Null;
    if let (true, Some(gw)) = (a.restart, local.as_mut()) {
        let t_stop = Instant::now();
        let up_before = ctx.agents_up.load(Ordering::Relaxed);
        // Counted from the stop: agents start coming back while the new
        // gateway is still announcing itself ready.
        let welcomes0 = ctx.welcomes.load(Ordering::Relaxed);
        let stop_us = now_us();
        ctx.first_welcome_us.store(u64::MAX, Ordering::Relaxed);
        // Agents welcomed in each second after the stop (the return's shape).
        let per_sec = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut prev = welcomes0;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                for _ in 0..120 {
                    tick.tick().await;
                    let w = ctx.welcomes.load(Ordering::Relaxed);
                    out.push(w - prev);
                    prev = w;
                    if w >= welcomes0 + agents_ok as u64 && out.len() > 3 {
                        break;
                    }
                }
                out
            })
        };
        match a.restart_signal {
            StopSignal::Term => gw.proc.terminate(),
            StopSignal::Kill => gw.proc.kill().await,
        }
        let _ = gw.proc.wait_exit(Duration::from_secs(30)).await;
        let down_secs = t_stop.elapsed().as_secs_f64();
        let o2 = GatewayOpts {
            addrs: Some(gateway::Addrs { ..gw.addrs }),
            ..opts.clone()
        };
        let t_restart_us = now_us();
        *gw = start_with_retry(&env.pki.files, &o2, &env.work).await?;
        pid.store(gw.proc.pid(), Ordering::Relaxed);
        let ready_us = now_us();
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut every_back = false;
        while Instant::now() < deadline {
            if ctx.welcomes.load(Ordering::Relaxed) >= welcomes0 + agents_ok as u64
                && ctx.agents_up.load(Ordering::Relaxed) >= agents_ok
            {
                every_back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let last = ctx.last_welcome_us.load(Ordering::Relaxed);
        // The new gateway serves from its first welcome on. The "listening"
        // lines it prints reach this process seconds late while 20,000
        // agents keep its cores busy, so `ready_us` would flatter the row.
        let returns = per_sec.await.unwrap_or_default();
        let serving_us = ctx.first_welcome_us.load(Ordering::Relaxed).min(ready_us);
        let back = ctx.agents_up.load(Ordering::Relaxed);
        restart_out = json!({
            "signal": format!("{:?}", a.restart_signal).to_lowercase(),
            "agents_before": up_before,
            "agents_back": back,
            "all_back": every_back,
            "old_gateway_exit_secs": down_secs,
            "new_gateway_ready_secs": (ready_us - t_restart_us) as f64 / 1e6,
            "new_gateway_serving_after_stop_secs": serving_us.saturating_sub(stop_us) as f64 / 1e6,
            "all_back_after_ready_secs": if every_back { Some((last.saturating_sub(serving_us)) as f64 / 1e6) } else { None },
            "all_back_after_stop_secs": if every_back { Some(last.saturating_sub(stop_us) as f64 / 1e6) } else { None },
            "returns_per_sec": returns,
            "restart_notices": ctx.restart_notices.load(Ordering::Relaxed),
            "gateway_rss_after_kib": procstat::rss_kib(gw.proc.pid()),
        });
        eprintln!("restart: {restart_out}");
    }

    // Stop.
    traffic_stop.cancel();
    if live.load(Ordering::Relaxed) > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(5), sessions_done.notified()).await;
    }
    let rss_end = gw_rss(&local);
    // The gateway's sockets' drops are counted where it runs.
    let gw_drops = local.as_ref().map(|gw| {
        fleet::udp_socket_drops(gw.addrs.terminal_quic.port())
            + fleet::udp_socket_drops(gw.addrs.agent_quic.port())
    });
    let lg_drops: u64 = eps
        .iter()
        .chain(leps.iter())
        .filter_map(|e| e.local_addr().ok())
        .map(|a| fleet::udp_socket_drops(a.port()))
        .sum();
    stop_all.cancel();
    progress.abort();
    // A graceful stop, so that a profiler wrapping the gateway writes its output.
    if let Some(gw) = local.as_mut() {
        gw.proc.terminate();
        let _ = gw.proc.wait_exit(Duration::from_secs(30)).await;
    }
    let steady_errors: u64 = {
        let now = ctx.errors.snapshot();
        now.iter()
            .filter(|(k, _)| !k.starts_with("agent:tunnel_lost") || !a.restart)
            .map(|(k, v)| v - errors_before_steady.get(k).copied().unwrap_or(0))
            .sum()
    };
    let baseline_out = match (&a.baseline, a.backend_tls) {
        (Some(relay), Some(desk)) => {
            Box::pin(paced_baselines(env, relay, desk, opened, a, profile)).await?
        }
        _ => Value::Null,
    };
    let per = |d: u64, n: usize| if n == 0 { 0.0 } else { d as f64 / n as f64 };
    let steady = phase_use(&sampler.between(steady_from, steady_to));
    let p99 = summary(&fig.rtt[PHASE_STEADY as usize].snapshot());
    // The budget of bytes in flight (issue 19 item 1): the gateway's RSS
    // against its idle baseline (agents up, no session) plus the budget.
    let budget_out = a.memory_budget_mib.map_or(Value::Null, |mib| {
        let rss_max = phase_use(&sampler.all())
            .rss_max_kib
            .max(rss_sessions)
            .max(rss_end);
        let bound = rss_agents + mib * 1024;
        let errors = ctx.errors.snapshot();
        json!({
            "budget_mib": mib,
            "rss_idle_baseline_kib": rss_agents,
            "rss_max_kib": rss_max,
            "bound_kib": bound,
            "rss_under_bound": rss_max <= bound,
            "refused_gateway_busy": errors.get("setup:refused:gateway_busy").copied().unwrap_or(0),
        })
    });
    Ok(json!({
        "bench": "sessions",
        "transport": a.transport,
        "admission": if a.store { "store" } else { "none (bare relay)" },
        "gateway": a.remote.remote.as_deref().map_or_else(|| "local".to_string(), |n| format!("remote {n}")),
        "agents": n_agents,
        "agents_up": agents_ok,
        "agents_connect_secs": agents_secs,
        "sessions": a.sessions,
        "sessions_opened": opened,
        "ramp_secs": ramp_secs,
        "laptops": n_laptops,
        "profile": profile,
        "mean_kbps_per_session": profile.mean_kbps(a.sessions),
        "offered_mbps": profile.mean_kbps(a.sessions) * a.sessions as f64 / 1000.0,
        "setup": summary(&fig.setup_initial.snapshot()),
        "rtt_steady": p99,
        "rtt_ramp": summary(&fig.rtt[PHASE_RAMP as usize].snapshot()),
        "steady_secs": steady_to - steady_from,
        "steady_answers_per_sec": steady_answers as f64 / (steady_to - steady_from),
        "steady_mbps_down": steady_bytes as f64 * 8.0 / 1e6 / (steady_to - steady_from),
        "steady_bytes_both": steady_bytes_both,
        "gateway_steady": steady,
        "loadgen_steady": phase_use(&self_sampler.between(steady_from, steady_to)),
        "gateway_rss_kib": { "start": rss_start, "agents_up": rss_agents, "sessions_open": rss_sessions, "end": rss_end },
        "gateway_kib_per_session_total": per(rss_sessions.saturating_sub(rss_start), opened),
        "gateway_kib_per_session_incremental": per(rss_sessions.saturating_sub(rss_agents), opened),
        "gateway_kib_per_agent": per(rss_agents.saturating_sub(rss_start), agents_ok),
        "tickets_verified": ctx.tickets_ok.load(Ordering::Relaxed),
        "udp_rcvbuf_drops_machine": fleet::udp_rcvbuf_errors() - udp_drops0,
        "udp_drops_gateway_sockets": gw_drops,
        "udp_drops_loadgen_sockets": lg_drops,
        "errors": ctx.errors.snapshot(),
        "errors_total": ctx.errors.total(),
        "errors_excluding_restart": steady_errors,
        "storm": storm_out,
        "memory_budget": budget_out,
        "restart": restart_out,
        "baseline": baseline_out,
        "targets": {
            "p5_cpu_machine_pct_le_70": steady.cpu_mean_machine_pct <= 70.0,
            "p5_p99_le_1ms": p99.p99_us <= 1000,
        },
    }))
}

/// The paced sessions of a `sessions` run, through `relay` and then straight
/// to the desk at `desk` (TLS over TCP both): `n` sessions opened at the
/// run's ramp, then up to 30 s of steady traffic each.
async fn paced_baselines(
    env: &Env,
    relay: &str,
    desk: SocketAddr,
    n: usize,
    a: &SessionsArgs,
    profile: Profile,
) -> anyhow::Result<Value> {
    // Each session holds a descriptor at each end in this process, and the
    // relay two more (a laptop's and a desk's).
    let limit = procstat::fd_limit();
    if 2 * n + 1000 > limit {
        return Ok(
            json!({ "skipped": format!("{n} TCP sessions need ~{} descriptors here; the limit is {limit}", 2 * n + 1000) }),
        );
    }
    let stop = CancellationToken::new();
    let desks = PairArgs {
        pairs: 1,
        baseline: None,
        floor: None,
        backend_tls: Some(desk),
        backend_plain: None,
    };
    start_backends(env, &desks, DeskMode::Rdp, &stop).await?;
    let secs = a.duration.min(30.0);
    eprintln!("baseline: {n} paced sessions through {relay} for {secs:.0}s");
    let through = paced_over(
        parse_dial(relay, env)?,
        a.baseline_pid,
        n,
        a.ramp,
        secs,
        profile,
    )
    .await;
    eprintln!("baseline: {n} paced sessions straight to the desk for {secs:.0}s");
    let direct = paced_over(
        parse_dial(&format!("tls:{desk}"), env)?,
        None,
        n,
        a.ramp,
        secs,
        profile,
    )
    .await;
    stop.cancel();
    Ok(
        json!({ "relay": relay, "sessions": n, "secs": secs, "through_relay": through, "direct": direct }),
    )
}

/// `n` paced sessions over `dial`, opened at `ramp` per second, then `secs`
/// of steady traffic; round trips of the steady phase only. The CPU of the
/// relay at `relay_pid` (if given) and of this process over that phase.
async fn paced_over(
    dial: Dial,
    relay_pid: Option<u32>,
    n: usize,
    ramp: f64,
    secs: f64,
    profile: Profile,
) -> Value {
    let stop = CancellationToken::new();
    let sampling = CancellationToken::new();
    let every = Duration::from_secs(1);
    let relay_sampler =
        relay_pid.map(|p| Sampler::start(Arc::new(AtomicU32::new(p)), every, sampling.clone()));
    let self_sampler = Sampler::start(
        Arc::new(AtomicU32::new(std::process::id())),
        every,
        sampling.clone(),
    );
    let flow = Arc::new(traffic::Flow::default());
    let steady = Arc::new(AtomicBool::new(false));
    let hist = Arc::new(Hist::default());
    let errors = Arc::new(Errors::default());
    let opened = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    pace(n, ramp, |i| {
        let (dial, stop, flow, steady, hist, errors, opened, gate) = (
            dial.clone(),
            stop.clone(),
            flow.clone(),
            steady.clone(),
            hist.clone(),
            errors.clone(),
            opened.clone(),
            gate.clone(),
        );
        let kbps = profile.rate_of(i);
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await;
            let Ok(Ok(io)) = tokio::time::timeout(Duration::from_secs(20), dial.open()).await
            else {
                errors.add("setup:baseline");
                return;
            };
            drop(permit);
            opened.fetch_add(1, Ordering::Relaxed);
            let record = |us| {
                if steady.load(Ordering::Relaxed) {
                    hist.record_us(us);
                }
            };
            let end = traffic::drive_rdp(io, kbps, profile, stop, &flow, record).await;
            if let Some(k) = end.error_kind() {
                errors.add(k);
            }
        });
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while opened.load(Ordering::Relaxed) + (errors.total() as usize) < n
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    steady.store(true, Ordering::Relaxed);
    let (from, both0) = (now_us() as f64 / 1e6, flow.bytes_both());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    steady.store(false, Ordering::Relaxed);
    let (to, both) = (now_us() as f64 / 1e6, flow.bytes_both() - both0);
    sampling.cancel();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    json!({
        "sessions_opened": opened.load(Ordering::Relaxed),
        "rtt_steady": summary(&hist.snapshot()),
        "errors": errors.snapshot(),
        "errors_total": errors.total(),
        "steady_secs": to - from,
        "steady_bytes_both": both,
        "relay_pid": relay_pid,
        "relay_steady": relay_sampler.map(|s| phase_use(&s.between(from, to))),
        "loadgen_steady": phase_use(&self_sampler.between(from, to)),
    })
}

/// Start the gateway again on the same ports (the old sockets may linger briefly).
async fn start_with_retry(
    pki: &kakehashi_benches::pki::PkiFiles,
    o: &GatewayOpts,
    work: &Path,
) -> anyhow::Result<Gateway> {
    let mut last = None;
    for _ in 0..50 {
        match gateway::start(pki, o, work).await {
            Ok(g) => return Ok(g),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| anyhow!("gateway did not restart")))
}

/// Call `f(i)` for `i in 0..n` at `rate` per second.
async fn pace(n: usize, rate: f64, mut f: impl FnMut(usize)) {
    let t0 = tokio::time::Instant::now();
    let rate = rate.max(1.0);
    let mut i = 0;
    while i < n {
        let due = ((t0.elapsed().as_secs_f64() * rate) as usize + 1).min(n);
        while i < due {
            f(i);
            i += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ------------------------------------------------- one agent, one laptop

/// A gateway with one agent (desk `BENCH-DESK`) and one laptop, for the
/// comparisons that measure a few sessions.
struct Single {
    gw: Gateway,
    laptop: Arc<Laptop>,
    ctx: Arc<Ctx>,
    stop: CancellationToken,
}

impl Single {
    async fn start(env: &Env, transport: Transport, mode: DeskMode) -> anyhow::Result<Self> {
        let opts = GatewayOpts {
            max_sessions: 1000,
            max_connections: 5000,
            log: env.log.clone(),
            addrs: None,
            store: None,
            memory_budget_mib: gateway::NO_BUDGET,
            busy_delay_ms: Some(0),
            busy_cpu_percent: Some(0),
            agent_return_rate: None,
        };
        let gw = gateway::start(&env.pki.files, &opts, &env.work).await?;
        let ctx = Ctx::new(
            mode,
            kakehashi_pki::load_ticket_public_key(&env.pki.files.ticket_pub)?,
        );
        let stop = CancellationToken::new();
        let m = env.pki.agent("BENCH-DESK")?;
        let (ep, lep) = match transport {
            Transport::Quic => (
                Some(fleet::endpoints(1)?.remove(0)),
                Some(fleet::endpoints(1)?.remove(0)),
            ),
            Transport::Tcp => (None, None),
        };
        let agent = Agent::new(
            "BENCH-DESK".into(),
            &m,
            ep.map(|e| {
                (
                    e,
                    fleet::quic_transport(kakehashi_transport::quic::AGENT_SESSION_STREAMS),
                )
            }),
        )?;
        let target = Arc::new(Mutex::new(AgentTarget {
            quic: gw.addrs.agent_quic,
            tcp: gw.addrs.agent_tcp,
        }));
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(agent.run(ctx.clone(), target, stop.clone(), Some(tx)));
        tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .context("agent did not come up")??;
        let devices = fleet::device_configs(&env.pki)?;
        let addr = match transport {
            Transport::Quic => gw.addrs.terminal_quic,
            Transport::Tcp => gw.addrs.terminal_tcp,
        };
        let laptop = Laptop::new(&devices[0], addr, lep);
        Ok(Self {
            gw,
            laptop,
            ctx,
            stop,
        })
    }

    async fn open(&self) -> anyhow::Result<kakehashi_transport::BoxIo> {
        self.laptop
            .session("BENCH-DESK")
            .await
            .map_err(|k| anyhow!("session refused: {k}"))
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn parse_dial(spec: &str, env: &Env) -> anyhow::Result<Dial> {
    let (kind, addr) = spec
        .split_once(':')
        .ok_or_else(|| anyhow!("expected tls:ADDR or plain:ADDR, got {spec}"))?;
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address in {spec}"))?;
    match kind {
        "tls" => {
            let dev = &fleet::device_configs(&env.pki)?[0];
            Ok(Dial::Tls(addr, dev.tls.clone()))
        }
        "plain" => Ok(Dial::Plain(addr)),
        other => bail!("unknown target kind {other}"),
    }
}

/// Start the desks behind the baselines (mutual TLS and plain).
async fn start_backends(
    env: &Env,
    p: &PairArgs,
    mode: DeskMode,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = p.backend_tls {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        let cfg = backend::server_config(&env.pki.gateway()?, Some(&env.pki.files.crl), &[])?;
        tokio::spawn(backend::serve_tls(l, Arc::new(cfg), mode, stop.clone()));
    }
    if let Some(addr) = p.backend_plain {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        tokio::spawn(backend::serve_plain(l, mode, stop.clone()));
    }
    Ok(())
}

// ---------------------------------------------------------------- P1 bulk

async fn bulk_once<F, Fut>(streams: usize, secs: f64, open: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<kakehashi_transport::BoxIo>>,
{
    let stop = CancellationToken::new();
    let bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let io = open().await?;
        let (stop, bytes) = (stop.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            traffic::drive_sink(io, stop, &bytes).await
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64((secs / 2.0).min(0.3))).await;
    let (b0, t0) = (bytes.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (b1, dt) = (bytes.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok((b1 - b0) as f64 * 8.0 / 1e6 / dt)
}

async fn bulk(env: &Env, a: &BulkArgs) -> anyhow::Result<Value> {
    let stop = CancellationToken::new();
    start_backends(env, &a.pairs, DeskMode::Source, &stop).await?;
    let single = Single::start(env, a.transport, DeskMode::Source).await?;
    let base = a
        .pairs
        .baseline
        .as_deref()
        .map(|s| parse_dial(s, env))
        .transpose()?;
    let floor = a
        .pairs
        .floor
        .as_deref()
        .map(|s| parse_dial(s, env))
        .transpose()?;
    let (mut sys, mut bl, mut fl, mut ratios) = (vec![], vec![], vec![], vec![]);
    for i in 0..a.pairs.pairs.max(1) {
        let s = bulk_once(a.streams, a.secs, || single.open()).await?;
        sys.push(s);
        if let Some(b) = &base {
            let v = bulk_once(a.streams, a.secs, || b.open()).await?;
            bl.push(v);
            ratios.push(s / v);
        }
        if let Some(f) = &floor {
            fl.push(bulk_once(a.streams, a.secs, || f.open()).await?);
        }
        eprintln!(
            "pair {}: kakehashi {s:.0} Mbit/s, baseline {:.0}, floor {:.0}",
            i + 1,
            bl.last().unwrap_or(&f64::NAN),
            fl.last().unwrap_or(&f64::NAN)
        );
    }
    stop.cancel();
    Ok(json!({
        "bench": "bulk", "transport": a.transport, "streams": a.streams, "secs": a.secs,
        "kakehashi_mbps": sys, "baseline_mbps": bl, "floor_mbps": fl, "ratios": ratios,
        "median_kakehashi_mbps": median(&sys), "median_baseline_mbps": median(&bl), "median_floor_mbps": median(&fl),
        "median_ratio": median(&ratios),
        "errors": single.ctx.errors.snapshot(),
        "gateway_rss_kib": procstat::rss_kib(single.gw.proc.pid()),
    }))
}

// ------------------------------------------------------------------ P4 rr

async fn rr_once(io: kakehashi_transport::BoxIo, count: usize, size: usize) -> anyhow::Result<u64> {
    let h = Hist::default();
    traffic::drive_rr(io, count, size, &h).await?;
    Ok(summary(&h.snapshot()).p99_us)
}

async fn rr(env: &Env, a: &RrArgs) -> anyhow::Result<Value> {
    let stop = CancellationToken::new();
    start_backends(env, &a.pairs, DeskMode::Echo, &stop).await?;
    let single = Single::start(env, a.transport, DeskMode::Echo).await?;
    let base = a
        .pairs
        .baseline
        .as_deref()
        .map(|s| parse_dial(s, env))
        .transpose()?;
    let floor = a
        .pairs
        .floor
        .as_deref()
        .map(|s| parse_dial(s, env))
        .transpose()?;
    let direct_tls = match a.pairs.backend_tls {
        Some(addr) => Some(parse_dial(&format!("tls:{addr}"), env)?),
        None => None,
    };
    let direct_plain = a.pairs.backend_plain.map(Dial::Plain);
    // Warm up each path once.
    rr_once(single.open().await?, 200, a.size).await?;
    // Raw p99s of every pair; the "added" latency subtracts the median of
    // the direct p99s over all pairs (one stalled direct run on a busy
    // machine would otherwise make a pair's added latency negative). A pair
    // whose added latency is not positive on both sides has no ratio: its
    // p99s are below the machine's noise.
    let mut rows = Vec::new();
    let (mut directs, mut sys, mut bases, mut floors, mut plain_directs) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..a.pairs.pairs.max(1) {
        let direct = match &direct_tls {
            Some(d) => Some(rr_once(d.open().await?, a.count, a.size).await?),
            None => None,
        };
        let s = rr_once(single.open().await?, a.count, a.size).await?;
        let b = match &base {
            Some(b) => Some(rr_once(b.open().await?, a.count, a.size).await?),
            None => None,
        };
        let (f, fd) = match (&floor, &direct_plain) {
            (Some(f), Some(d)) => (
                Some(rr_once(f.open().await?, a.count, a.size).await?),
                Some(rr_once(d.open().await?, a.count, a.size).await?),
            ),
            _ => (None, None),
        };
        directs.extend(direct.map(|d| d as f64));
        sys.push(s as f64);
        bases.extend(b.map(|b| b as f64));
        floors.extend(f.map(|f| f as f64));
        plain_directs.extend(fd.map(|f| f as f64));
        eprintln!("pair {}: p99 direct {direct:?}us, kakehashi {s}us, baseline {b:?}us, floor {f:?}us (plain direct {fd:?}us)", i + 1);
        rows.push(json!({"direct_p99_us": direct, "kakehashi_p99_us": s, "baseline_p99_us": b, "floor_p99_us": f, "plain_direct_p99_us": fd}));
    }
    let d = if directs.is_empty() {
        0.0
    } else {
        median(&directs)
    };
    let pd = median(&plain_directs);
    let sys_added: Vec<f64> = sys.iter().map(|s| s - d).collect();
    let base_added: Vec<f64> = bases.iter().map(|b| b - d).collect();
    let floor_added: Vec<f64> = floors.iter().map(|f| f - pd).collect();
    let ratios: Vec<f64> = sys_added
        .iter()
        .zip(&base_added)
        .map(|(s, b)| {
            if *s > 0.0 && *b > 0.0 {
                s / b
            } else {
                f64::NAN
            }
        })
        .collect();
    stop.cancel();
    Ok(json!({
        "bench": "rr", "transport": a.transport, "count": a.count, "size": a.size,
        "pairs": rows, "median_direct_p99_us": d, "median_plain_direct_p99_us": pd,
        "kakehashi_added_p99_us": sys_added, "baseline_added_p99_us": base_added, "floor_added_p99_us": floor_added,
        "median_kakehashi_added_p99_us": median(&sys_added), "median_baseline_added_p99_us": median(&base_added),
        "median_floor_added_p99_us": median(&floor_added),
        "ratios": ratios, "median_ratio": median(&ratios),
        "errors": single.ctx.errors.snapshot(),
    }))
}

// ---------------------------------------------------------- P3 handshakes

/// Full handshakes + Ping/Pong per second against `addr`, `conc` in flight.
async fn hs_once(
    addr: SocketAddr,
    cfgs: &[Arc<rustls::ClientConfig>],
    conc: usize,
    secs: f64,
) -> (f64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    let ping: Arc<[u8]> = frame::encode(FrameKind::Ping, &[]).expect("frame").into();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conc {
        let cfg = cfgs[i % cfgs.len()].clone();
        let (ok, bad, ping) = (ok.clone(), bad.clone(), ping.clone());
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < deadline {
                let r = async {
                    let mut io = Dial::Tls(addr, cfg.clone()).open().await?;
                    io.write_all(&ping).await?;
                    io.flush().await?;
                    let mut h = [0u8; frame::HEADER_LEN];
                    io.read_exact(&mut h).await?;
                    if h[1] != FrameKind::Pong as u8 {
                        bail!("no pong");
                    }
                    anyhow::Ok(())
                };
                match tokio::time::timeout(Duration::from_secs(10), r).await {
                    Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        ok.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64(),
        bad.load(Ordering::Relaxed),
    )
}

async fn handshakes(env: &Env, a: &HsArgs) -> anyhow::Result<Value> {
    let opts = GatewayOpts {
        max_sessions: 1000,
        max_connections: 25_000,
        log: env.log.clone(),
        addrs: None,
        store: None,
        memory_budget_mib: gateway::NO_BUDGET,
        busy_delay_ms: Some(0),
        busy_cpu_percent: Some(0),
        agent_return_rate: None,
    };
    let gw = gateway::start(&env.pki.files, &opts, &env.work).await?;
    let cfgs: Vec<_> = fleet::device_configs(&env.pki)?
        .into_iter()
        .map(|d| d.tls)
        .collect();
    let base = match a.pairs.baseline.as_deref() {
        Some(s) => Some(
            s.strip_prefix("tls:")
                .ok_or_else(|| anyhow!("handshake baseline must be tls:ADDR"))?
                .parse::<SocketAddr>()?,
        ),
        None => None,
    };
    // Warm up both.
    hs_once(gw.addrs.terminal_tcp, &cfgs, a.concurrency, 0.3).await;
    if let Some(b) = base {
        hs_once(b, &cfgs, a.concurrency, 0.3).await;
    }
    let (mut sys, mut bl, mut ratios, mut errors) = (vec![], vec![], vec![], 0);
    for i in 0..a.pairs.pairs.max(1) {
        let (s, e) = hs_once(gw.addrs.terminal_tcp, &cfgs, a.concurrency, a.secs).await;
        errors += e;
        sys.push(s);
        if let Some(b) = base {
            let (v, e) = hs_once(b, &cfgs, a.concurrency, a.secs).await;
            errors += e;
            bl.push(v);
            ratios.push(s / v);
        }
        eprintln!(
            "pair {}: kakehashi {s:.0}/s, baseline {:.0}/s",
            i + 1,
            bl.last().unwrap_or(&f64::NAN)
        );
    }
    Ok(json!({
        "bench": "handshakes", "concurrency": a.concurrency, "secs": a.secs,
        "kakehashi_per_sec": sys, "baseline_per_sec": bl, "ratios": ratios,
        "median_kakehashi_per_sec": median(&sys), "median_baseline_per_sec": median(&bl),
        "median_ratio": median(&ratios), "errors": errors,
        "gateway_rss_kib": procstat::rss_kib(gw.proc.pid()),
    }))
}

// ---------------------------------------------------------------- P2 idle

async fn idle(env: &Env, a: &IdleArgs) -> anyhow::Result<Value> {
    let sess = SessionsArgs {
        transport: a.transport,
        sessions: a.sessions,
        agents: None,
        laptops: None,
        duration: 0.0,
        ramp: 400.0,
        agent_concurrency: 64,
        storm: 0,
        storm_secs: 1.0,
        restart: false,
        restart_signal: StopSignal::Term,
        agent_streams: None,
        settle: a.settle,
        conns_per_socket: 64,
        backoff_initial_ms: 500,
        backoff_max_ms: 30_000,
        store: false,
        memory_budget_mib: None,
        busy_delay_ms: None,
        busy_cpu_percent: None,
        agent_return_rate: None,
        baseline: None,
        backend_tls: None,
        baseline_pid: None,
        remote: RemoteArgs {
            remote: None,
            remote_address: None,
            remote_laptop_port: 443,
            remote_agent_port: 8443,
            remote_metrics: None,
        },
        profile: ProfileArgs {
            hz: 0.0,
            kbps: 0.0,
            heavy_frac: 0.0,
            heavy_kbps: 0.0,
            idle_frac: 0.0,
            burst_every: 0.0,
            burst_secs: 0.0,
            burst_factor: 1.0,
            up_bytes: 0,
        },
    };
    let (mut total, mut incr, mut per_agent, mut rat, mut ratios) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut opened = vec![];
    let mut rathole_notes = Value::Null;
    for i in 0..a.pairs.max(1) {
        let r = run_sessions(env, &sess).await?;
        let t = r["gateway_kib_per_session_total"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let inc = r["gateway_kib_per_session_incremental"]
            .as_f64()
            .unwrap_or(f64::NAN);
        total.push(t);
        incr.push(inc);
        per_agent.push(r["gateway_kib_per_agent"].as_f64().unwrap_or(f64::NAN));
        opened.push(r["sessions_opened"].as_u64().unwrap_or(0));
        if let (Some(bin), Some(p12)) = (&a.rathole, &a.rathole_p12) {
            let (v, notes) =
                rathole_idle(env, bin, p12, &a.rathole_p12_password, a.sessions, a.settle).await?;
            rat.push(v);
            ratios.push(inc / v);
            rathole_notes = notes;
        }
        eprintln!("pair {}: kakehashi {t:.1} KiB/session total, {inc:.1} incremental; rathole {:.1} KiB/connection", i + 1, rat.last().unwrap_or(&f64::NAN));
    }
    Ok(json!({
        "bench": "idle", "transport": a.transport, "sessions": a.sessions, "sessions_opened": opened,
        "kakehashi_kib_per_session_total": total, "kakehashi_kib_per_session_incremental": incr,
        "kakehashi_kib_per_agent": per_agent, "rathole_kib_per_connection": rat,
        "median_total": median(&total), "median_incremental": median(&incr), "median_per_agent": median(&per_agent),
        "median_rathole": median(&rat), "ratios_incremental_vs_rathole": ratios, "median_ratio": median(&ratios),
        "rathole": rathole_notes,
    }))
}

/// rathole server + client with TLS, `n` idle visitor connections through
/// its service port; the server's RSS delta per connection.
async fn rathole_idle(
    env: &Env,
    bin: &Path,
    p12: &Path,
    pass: &str,
    n: usize,
    settle: f64,
) -> anyhow::Result<(f64, Value)> {
    let stop = CancellationToken::new();
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(backend::serve_plain(echo, DeskMode::Echo, stop.clone()));
    let free = || -> anyhow::Result<SocketAddr> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
    };
    let (ctl, svc) = (free()?, free()?);
    let server = format!(
        "[server]\nbind_addr = \"{ctl}\"\n[server.transport]\ntype = \"tls\"\n[server.transport.tls]\npkcs12 = \"{}\"\npkcs12_password = \"{pass}\"\n[server.services.desk]\ntoken = \"bench\"\nbind_addr = \"{svc}\"\n",
        p12.display()
    );
    let client = format!(
        "[client]\nremote_addr = \"{ctl}\"\n[client.transport]\ntype = \"tls\"\n[client.transport.tls]\ntrusted_root = \"{}\"\nhostname = \"localhost\"\n[client.services.desk]\ntoken = \"bench\"\nlocal_addr = \"{echo_addr}\"\n",
        env.pki.files.ca.display()
    );
    let (sp, cp) = (
        env.work.join("rathole-server.toml"),
        env.work.join("rathole-client.toml"),
    );
    std::fs::write(&sp, server)?;
    std::fs::write(&cp, client)?;
    let srv = kakehashi_tests::Proc::spawn(
        bin,
        &["--server", sp.to_str().expect("utf-8")],
        env.work.join("rathole-server.log"),
        &[("RUST_LOG", "warn")],
    );
    let cli = kakehashi_tests::Proc::spawn(
        bin,
        &["--client", cp.to_str().expect("utf-8")],
        env.work.join("rathole-client.log"),
        &[("RUST_LOG", "warn")],
    );
    // Wait until a visitor gets its echo through the tunnel.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = async {
            let mut s = TcpStream::connect(svc).await?;
            s.write_all(b"x").await?;
            let mut b = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b)).await??;
            anyhow::Ok(())
        }
        .await;
        if ok.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "rathole tunnel never came up; server log:\n{}",
                srv.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        let mut s = TcpStream::connect(svc).await?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
    }
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let rss0 = procstat::rss_kib(srv.pid());
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let r = async {
                let mut s = TcpStream::connect(svc).await?;
                s.write_all(b"x").await?;
                let mut b = [0u8; 1];
                tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut b)).await??;
                anyhow::Ok(s)
            }
            .await;
            drop(permit);
            r
        }));
    }
    let mut open = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Ok(s)) = t.await {
            open.push(s);
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let rss1 = procstat::rss_kib(srv.pid());
    let crss = procstat::rss_kib(cli.pid());
    let got = open.len();
    drop(open);
    stop.cancel();
    drop((srv, cli));
    let per = rss1.saturating_sub(rss0) as f64 / got.max(1) as f64;
    Ok((
        per,
        json!({"connections": got, "server_rss_before_kib": rss0, "server_rss_after_kib": rss1, "client_rss_after_kib": crss,
        "note": "one rathole client, one service; visitor leg plain TCP, tunnel leg TLS (native-tls) with one data-channel connection per visitor"}),
    ))
}
