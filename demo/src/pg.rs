//! The throw-away PostgreSQL of `kakehashi-demo --gateways N`: a new
//! cluster in `DIR/pg` at every start (like the demo's CA and credentials,
//! which it belongs to), its server run directly as a child of the demo
//! (`postgres -D …`, not the daemonizing `pg_ctl start`) so that it dies
//! with the demo however the demo ends, listening on 127.0.0.1 only, with
//! no Unix socket and a random password (SCRAM) for its one user.
//!
//! Debian's binaries (`apt-get install postgresql`, in
//! `/usr/lib/postgresql/VERSION/bin`), else `initdb` and `postgres` on the
//! `PATH`. PostgreSQL refuses to run as root: a demo run as root runs
//! them as the `postgres` user the Debian package creates.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kakehashi_child::{ask_to_stop, die_with_parent, StopSignal};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};

/// The cluster's one user (its superuser), in the URL the gateways get.
const USER: &str = "kakehashi";
/// How long the server may take to accept connections after it starts.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the server is killed.
const STOP_WITHIN: Duration = Duration::from_secs(15);
/// What the server logs once it accepts connections (initdb `--locale=C`
/// keeps its messages in English).
const READY_LINE: &str = "database system is ready to accept connections";

/// A running throw-away PostgreSQL server; killed if dropped, stopped in
/// good order by [`Postgres::stop`].
#[derive(Debug)]
pub struct Postgres {
    child: Child,
    /// `postgres://kakehashi:PASSWORD@127.0.0.1:PORT/postgres`.
    pub url: String,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Its data directory.
    pub data: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// The server's version (`postgres --version`).
    pub version: String,
}

/// The user the server programs run as, when the demo runs as root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl Postgres {
    /// initdb in `dir/pg/data` (removing an earlier demo's cluster) and
    /// start the server on a free port on 127.0.0.1; returns once it
    /// accepts connections.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let run_as = run_as()?;
        let root = dir.join("pg");
        if root.exists() {
            refuse_if_running(dir)?;
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("cannot remove the earlier {}", root.display()))?;
        }
        std::fs::create_dir(&root).with_context(|| format!("cannot create {}", root.display()))?;
        if let Some(u) = run_as {
            reachable_by(&root, u)?;
            std::os::unix::fs::chown(&root, Some(u.uid), Some(u.gid))
                .with_context(|| format!("cannot give {} to the postgres user", root.display()))?;
        }
        let data = root.join("data");
        let log = root.join("postgres.log");
        let version = version(&bin).await?;

        // The password goes to initdb in a file (never on a command line),
        // removed once read; the gateways find it in their [store] url.
        let password = kakehashi_transport::random_hex(16);
        let pwfile = root.join("password");
        write_private(&pwfile, &password, run_as)?;
        let mut initdb = server_command(&bin.join("initdb"), &root, run_as);
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null());
        let out = initdb.output().await.context("cannot run initdb")?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            bail!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // A port chosen free can be taken before the server binds it: retry.
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            match start_server(&bin, &root, &data, &log, port, run_as).await {
                Ok(child) => {
                    return Ok(Self {
                        child,
                        url: format!("postgres://{USER}:{password}@127.0.0.1:{port}/postgres"),
                        port,
                        data,
                        log,
                        version,
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fast shutdown (SIGINT: sessions ended, a checkpoint written), or a
    /// kill after [`STOP_WITHIN`].
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = ask_to_stop(pid, StopSignal::Int);
        }
        if tokio::time::timeout(STOP_WITHIN, self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "PostgreSQL did not stop within 15 s: killing it / PostgreSQL を強制終了します"
            );
            let _ = self.child.kill().await;
        }
    }
}

/// Start `postgres` on `port`; returns once it accepts connections, or
/// with its log when it exits first.
async fn start_server(
    bin: &Path,
    root: &Path,
    data: &Path,
    log: &Path,
    port: u16,
    run_as: Option<RunAs>,
) -> anyhow::Result<Child> {
    let mut cmd = server_command(&bin.join("postgres"), root, run_as);
    cmd.arg("-D")
        .arg(data)
        .args(["-p", &port.to_string()])
        // TCP on loopback only; no Unix socket (whose path length is
        // limited and whose default directory may not be writable).
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "unix_socket_directories="])
        .args(["-c", "max_connections=100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot start postgres")?;
    let stderr = child.stderr.take().context("postgres stderr")?;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .await
        .with_context(|| format!("cannot open {}", log.display()))?;
    // Its log, copied to the file for as long as it runs; the first
    // "ready" line tells the demo it can go on.
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = file.write_all(format!("{line}\n").as_bytes()).await;
            if line.contains(READY_LINE) {
                if let Some(tx) = ready_tx.take() {
                    let _ = file.flush().await;
                    let _ = tx.send(());
                }
            }
        }
        let _ = file.flush().await;
    });
    match tokio::time::timeout(READY_WITHIN, ready).await {
        Ok(Ok(())) => Ok(child),
        Ok(Err(_)) => {
            // The log ended: the server exited. Its status, then its log.
            let status = child.wait().await.ok();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            bail!(
                "postgres exited at start ({}):\n{}",
                status.map_or_else(|| "?".into(), |s| s.to_string()),
                tail(&text, 20)
            )
        }
        Err(_) => {
            let _ = child.kill().await;
            bail!(
                "postgres did not accept connections within {} s (log: {})",
                READY_WITHIN.as_secs(),
                log.display()
            )
        }
    }
}

/// A command for a PostgreSQL program: it dies with the demo (see
/// `kakehashi-child`), is killed if its `Child` is dropped, runs in its own
/// process group (a Ctrl-C in the terminal reaches the demo only, which
/// stops the gateways before the database), and as `postgres` when the demo
/// runs as root.
fn server_command(program: &Path, cwd: &Path, run_as: Option<RunAs>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).kill_on_drop(true).process_group(0);
    if let Some(u) = run_as {
        // Set before die_with_parent's hook runs (std changes the ids
        // first), so the death signal survives the change of user.
        cmd.uid(u.uid).gid(u.gid);
    }
    die_with_parent(cmd.as_std_mut());
    cmd
}

/// The directory of `initdb` and `postgres`: Debian's newest
/// `/usr/lib/postgresql/VERSION/bin`, else the `PATH`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let complete = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let Ok(v) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let bin = entry.path().join("bin");
            if complete(&bin) && best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, bin));
            }
        }
    }
    if let Some((_, bin)) = best {
        return Ok(bin);
    }
    if let Some(bin) = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|d| complete(d)))
    {
        return Ok(bin);
    }
    bail!(
        "PostgreSQL のサーバープログラム (initdb, postgres) が見つかりません。`--gateways` のデモには必要です。\n\
         Debian / Ubuntu では: sudo apt-get install postgresql\n\
         PostgreSQL's server programs (initdb, postgres) were not found; the `--gateways` demo needs them.\n\
         On Debian or Ubuntu: sudo apt-get install postgresql\n\
         (looked in /usr/lib/postgresql/*/bin and on the PATH; the package's own server need not run: \
         the demo starts its own, in its directory)"
    )
}

async fn version(bin: &Path) -> anyhow::Result<String> {
    let mut cmd = Command::new(bin.join("postgres"));
    die_with_parent(cmd.as_std_mut());
    let out = cmd
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run postgres --version")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `None` for an ordinary user; as root, the `postgres` user's ids.
fn run_as() -> anyhow::Result<Option<RunAs>> {
    if id(&["-u"])? != 0 {
        return Ok(None);
    }
    let (Ok(uid), Ok(gid)) = (id(&["-u", "postgres"]), id(&["-g", "postgres"])) else {
        bail!(
            "PostgreSQL does not run as root, and there is no user `postgres` to run it as \
             (Debian's postgresql package creates it); run the demo as an ordinary user / \
             PostgreSQL は root では動きません。一般ユーザーでデモを実行してください"
        );
    };
    Ok(Some(RunAs { uid, gid }))
}

fn id(args: &[&str]) -> anyhow::Result<u32> {
    let out = std::process::Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("cannot run id")?;
    if !out.status.success() {
        bail!("id {args:?} failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("id printed no number")
}

/// As root, `postgres` must be able to reach `dir` through every directory
/// above it (search permission); say which one stops it.
fn reachable_by(dir: &Path, u: RunAs) -> anyhow::Result<()> {
    for d in dir.ancestors().skip(1) {
        let m = std::fs::metadata(d).with_context(|| format!("cannot read {}", d.display()))?;
        let mode = m.mode();
        let ok = mode & 0o001 != 0
            || (m.uid() == u.uid && mode & 0o100 != 0)
            || (m.gid() == u.gid && mode & 0o010 != 0);
        if !ok {
            bail!(
                "the demo runs as root, so PostgreSQL runs as the user postgres, which cannot enter {} \
                 (mode {:o}); run the demo as an ordinary user or choose a --dir it can reach \
                 (e.g. --dir /tmp/kakehashi-demo) / postgres ユーザーが {} に入れません",
                d.display(),
                mode & 0o7777,
                d.display()
            );
        }
    }
    Ok(())
}

/// An earlier demo's server still running in `dir/pg` (its `postmaster.pid`
/// names a live postgres): another demo uses this directory.
pub fn refuse_if_running(dir: &Path) -> anyhow::Result<()> {
    let root = dir.join("pg");
    let Ok(text) = std::fs::read_to_string(root.join("data/postmaster.pid")) else {
        return Ok(());
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    else {
        return Ok(());
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "postgres" {
        bail!(
            "{} is in use by a running PostgreSQL (pid {pid}): is another demo running with this --dir? \
             / 別のデモがこのディレクトリを使用中です",
            root.display()
        );
    }
    Ok(())
}

/// Write `text` to a new file only its owner can read (as root: owned by
/// the postgres user, who must read it).
fn write_private(path: &Path, text: &str, run_as: Option<RunAs>) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    if let Some(u) = run_as {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
