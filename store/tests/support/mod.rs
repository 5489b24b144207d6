//! Test fixtures: a fresh database per test on SQLite (a temp file) or on a
//! throwaway PostgreSQL cluster this process starts itself.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kakehashi_store::{Audit, Store};
use sqlx::Connection;

/// An audit record by the test actor.
pub fn audit(at: i64, action: &str) -> Audit {
    Audit::new(at, "tester", action)
}

/// Which backend a fixture uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// One empty database for one test.
#[derive(Debug)]
pub struct Db {
    pub kind: Kind,
    pub url: String,
    sqlite_path: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    /// A fresh SQLite file in a temp directory (in a subdirectory that does
    /// not exist yet, so `open` must create it).
    pub async fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub").join("store.db");
        Db {
            kind: Kind::Sqlite,
            url: format!("sqlite://{}", path.display()),
            sqlite_path: Some(path),
            _dir: Some(dir),
        }
    }

    /// A fresh database on the shared throwaway PostgreSQL cluster.
    pub async fn postgres() -> Db {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let cluster = cluster();
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut admin = sqlx::PgConnection::connect(&cluster.url("postgres"))
            .await
            .expect("connect to the test cluster");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        admin.close().await.ok();
        Db {
            kind: Kind::Postgres,
            url: cluster.url(&name),
            sqlite_path: None,
            _dir: None,
        }
    }

    /// Opens (another) store on this database.
    pub async fn open(&self) -> Store {
        Store::open(&self.url).await.expect("open store")
    }

    /// The SQLite file (SQLite fixtures only).
    pub fn sqlite_path(&self) -> &Path {
        self.sqlite_path.as_deref().expect("a sqlite fixture")
    }

    /// Runs raw SQL behind the store's back (to tamper with the log).
    pub async fn exec_raw(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self.kind {
            Kind::Sqlite => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(self.sqlite_path());
                let mut c = sqlx::SqliteConnection::connect_with(&opts)
                    .await
                    .expect("raw sqlite");
                sqlx::raw_sql(sql).execute(&mut c).await.expect("raw sql");
                c.close().await.ok();
            }
            Kind::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("raw pg");
                sqlx::raw_sql(sql).execute(&mut c).await.expect("raw sql");
                c.close().await.ok();
            }
        }
    }

    /// Like [`Db::exec_raw`] but returns whether the database accepted it.
    pub async fn try_exec_raw(&self, sql: &str) -> bool {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self.kind {
            Kind::Sqlite => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(self.sqlite_path());
                let mut c = sqlx::SqliteConnection::connect_with(&opts)
                    .await
                    .expect("raw sqlite");
                sqlx::raw_sql(sql).execute(&mut c).await.is_ok()
            }
            Kind::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("raw pg");
                sqlx::raw_sql(sql).execute(&mut c).await.is_ok()
            }
        }
    }

    /// Removes the append-only triggers, as an intruder with database access would.
    pub async fn drop_audit_guards(&self) {
        match self.kind {
            Kind::Sqlite => {
                self.exec_raw("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
                    .await
            }
            Kind::Postgres => {
                self.exec_raw("ALTER TABLE audit DISABLE TRIGGER USER")
                    .await
            }
        }
    }
}

// ------------------------------------------------------------ PostgreSQL

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
    /// How long initdb + start took.
    pub startup: Duration,
}

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();

/// The process-wide cluster, started on first use.
pub fn cluster() -> &'static PgCluster {
    CLUSTER.get_or_init(|| PgCluster::start().expect("start the PostgreSQL test cluster"))
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

fn ensure_postgres_installed() -> Result<PathBuf, String> {
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

    fn start() -> Result<PgCluster, String> {
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
        let t_init = t0.elapsed();

        // A port can be taken between choosing and binding it: retry.
        let mut last_err = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            let opts = format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=200",
                cluster.port,
                cluster.root.join("sock").display()
            );
            let mut start = cluster.command("pg_ctl");
            start
                .arg("-D")
                .arg(cluster.data())
                .args(["-w", "-t", "60", "-o", &opts, "-l"])
                .arg(cluster.root.join("log"))
                .arg("start");
            match cluster.run(start, "pg_ctl start") {
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
            "PostgreSQL test cluster ready on 127.0.0.1:{} in {} ms (initdb {} ms, start {} ms)",
            cluster.port,
            cluster.startup.as_millis(),
            t_init.as_millis(),
            (cluster.startup - t_init).as_millis()
        );
        Ok(cluster)
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

    /// A URL for database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
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
