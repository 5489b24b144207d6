//! A throwaway PostgreSQL cluster for tests: initdb in a temp directory,
//! started on 127.0.0.1 on a free port, stopped and removed when the test
//! process exits. Shared by the store's tests and the end-to-end tests
//! (`tests/src/lib.rs` includes this file), so both start PostgreSQL the
//! same way.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::Connection;

/// A throwaway PostgreSQL cluster: initdb in a temp dir, listening on
/// 127.0.0.1 on a free port with its socket in the same dir; stopped and
/// removed on drop, or by a watchdog when this process exits (a `static`
/// is never dropped).
#[derive(Debug)]
pub struct PgCluster {
    root: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    port: u16,
    /// A further address it listens on, and the network (CIDR) allowed to
    /// connect to it: [`PgCluster::start_for_network`].
    network: Option<(std::net::IpAddr, String)>,
    /// How long initdb + start took.
    pub startup: Duration,
}

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();

/// The process-wide cluster, started on first use.
pub fn cluster() -> &'static PgCluster {
    CLUSTER.get_or_init(|| PgCluster::start(None).expect("start the PostgreSQL test cluster"))
}

fn pg_bin_dir() -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let Ok(version) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let bin = entry.path().join("bin");
        let complete = bin.join("initdb").exists() && bin.join("pg_ctl").exists();
        if complete && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, b)| b)
}

/// Debian's PostgreSQL binaries (`/usr/lib/postgresql/VERSION/bin`),
/// installed with apt-get first if missing (`tests/run.sh` installs them).
pub fn ensure_postgres_installed() -> Result<PathBuf, String> {
    if let Some(bin) = pg_bin_dir() {
        return Ok(bin);
    }
    // Several test processes may get here at once: one installs, the others wait.
    let status = Command::new("flock")
        .args(["/tmp/kakehashi-apt.lock", "sh", "-c"])
        .arg(
            "ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
             (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)",
        )
        .status()
        .map_err(|e| format!("flock/apt-get: {e}"))?;
    if !status.success() {
        return Err(format!("installing postgresql failed: {status}"));
    }
    pg_bin_dir().ok_or_else(|| "postgresql installed but initdb not found".into())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl PgCluster {
    fn command(&self, tool: &str) -> Command {
        let bin = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    fn run(&self, mut c: Command, what: &str) -> Result<(), String> {
        let out = c
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A cluster of the caller's own (stopped on drop) that also listens on
    /// `listen` (an address of this host, e.g. a test bridge's) and lets
    /// clients from `clients` (a CIDR such as `10.213.7.0/24`: the test's
    /// network namespaces) in as it lets loopback in (`trust`, the test
    /// fixture's only method). Its URLs name `listen`.
    pub fn start_for_network(listen: std::net::IpAddr, clients: &str) -> Result<PgCluster, String> {
        Self::start(Some((listen, clients.to_owned())))
    }

    fn start(network: Option<(std::net::IpAddr, String)>) -> Result<PgCluster, String> {
        let bin = ensure_postgres_installed()?;
        let t0 = Instant::now();
        let as_postgres = is_root();
        let root = tempfile::Builder::new()
            .prefix("kakehashi-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let mut cluster = PgCluster {
            root,
            bin,
            as_postgres,
            port: 0,
            network,
            startup: Duration::ZERO,
        };
        std::fs::create_dir(cluster.root.join("sock")).map_err(|e| e.to_string())?;
        if as_postgres {
            // PostgreSQL refuses to run as root: hand the directory to `postgres`.
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.root)
                .status()
                .map_err(|e| e.to_string())?;
            if !st.success() {
                return Err("chown to postgres failed (no postgres user?)".into());
            }
        }
        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(cluster.data()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        cluster.run(initdb, "initdb")?;
        if let Some((_, clients)) = &cluster.network {
            // initdb's pg_hba.conf admits loopback only; this one network more.
            let hba = cluster.data().join("pg_hba.conf");
            let mut text = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
            text.push_str(&format!("host all all {clients} trust\n"));
            std::fs::write(&hba, text).map_err(|e| e.to_string())?;
        }
        let t_init = t0.elapsed();

        // A port can be taken between choosing and binding it: retry.
        let mut last_err = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    last_err.clear();
                    break;
                }
                Err(e) => last_err = e,
            }
        }
        if !last_err.is_empty() {
            let log = std::fs::read_to_string(cluster.root.join("log")).unwrap_or_default();
            return Err(format!("{last_err}\n{log}"));
        }
        cluster.spawn_watchdog();
        cluster.startup = t0.elapsed();
        eprintln!(
            "PostgreSQL test cluster ready on {} in {} ms (initdb {} ms, start {} ms)",
            cluster
                .url("")
                .trim_end_matches('/')
                .trim_start_matches("postgres://postgres@"),
            cluster.startup.as_millis(),
            t_init.as_millis(),
            (cluster.startup - t_init).as_millis()
        );
        Ok(cluster)
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let listen = match &self.network {
            Some((ip, _)) => format!("127.0.0.1,{ip}"),
            None => "127.0.0.1".into(),
        };
        let opts = format!(
            "-c listen_addresses={listen} -p {} -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.root.join("sock").display()
        );
        let mut start = self.command("pg_ctl");
        start
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "60", "-o", &opts, "-l"])
            .arg(self.root.join("log"))
            .arg("start");
        self.run(start, "pg_ctl start")
    }

    /// Stops the server at once (`-m immediate`: as a crash or a failover
    /// would), keeping its data; [`PgCluster::start_again`] brings it back.
    pub fn stop_now(&self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"]);
        self.run(stop, "pg_ctl stop").expect("stop PostgreSQL");
    }

    /// Starts the stopped server again on the same port.
    pub fn start_again(&self) {
        self.pg_ctl_start().expect("start PostgreSQL again");
    }

    /// Stops the cluster and removes its directory once this test process
    /// has exited, however it exits.
    fn spawn_watchdog(&self) {
        let runuser = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let stop = format!(
            "{runuser}{} -D {} -m immediate stop",
            self.bin.join("pg_ctl").display(),
            self.data().display()
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {root}",
            pid = std::process::id(),
            root = self.root.display()
        );
        // Started in the background by a shell that exits at once, so the
        // watchdog belongs to init and outlives this process.
        Command::new("sh")
            .args(["-c", &format!("({script}) </dev/null >/dev/null 2>&1 &")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("spawn the cluster watchdog");
    }

    /// A new, empty database on this cluster (named `t1`, `t2`, … in this
    /// process); returns its URL.
    pub async fn create_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the test cluster");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        admin.close().await.ok();
        self.url(&name)
    }

    /// A URL for database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        let host = match &self.network {
            Some((ip, _)) => ip.to_string(),
            None => "127.0.0.1".into(),
        };
        format!("postgres://postgres@{host}:{}/{db}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"]);
        let _ = self.run(stop, "pg_ctl stop");
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
