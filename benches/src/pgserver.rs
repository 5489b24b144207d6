//! A throwaway PostgreSQL server for the cluster benches (`audit-seal`,
//! `propagation`, `login-storm`): initdb in a temporary directory, started
//! with `postgres -D` on 127.0.0.1 with fsync and synchronous commit on (what
//! a production server does, unlike the tests' fixture), optionally with an
//! LD_PRELOAD shim that adds a delay to every fsync (`benches/fsync-delay.c`).
//! Run as root, the server runs as the `postgres` user. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};

/// A running throwaway PostgreSQL (killed on drop).
#[derive(Debug)]
pub struct Pg {
    child: std::process::Child,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Pg {
    /// The URL of its `postgres` database as the superuser `bench` (trust
    /// authentication on loopback; the cluster is thrown away afterwards).
    pub fn url(&self) -> String {
        format!("postgres://bench@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pg_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL's server programs are not installed (apt-get install postgresql)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .context("no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Start a server; `fsync_delay_us` microseconds are added to every fsync
/// when `preload` (the shim) is given and the delay is not 0.
pub async fn start(fsync_delay_us: u64, preload: Option<&Path>) -> anyhow::Result<Pg> {
    start_with(fsync_delay_us, preload, false).await
}

/// [`start`], and with `commit_timestamps` the server records when each
/// transaction committed (`track_commit_timestamp`, read with
/// `pg_xact_commit_timestamp(xmin)`): P9 times from a revocation's commit.
pub async fn start_with(
    fsync_delay_us: u64,
    preload: Option<&Path>,
    commit_timestamps: bool,
) -> anyhow::Result<Pg> {
    let bin = pg_bin()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let root = is_root();
    let owner = |p: &Path| -> anyhow::Result<()> {
        if root {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(p)
                .status()?
                .success();
            if !ok {
                bail!("cannot give {} to the postgres user", p.display());
            }
        }
        Ok(())
    };
    owner(dir.path())?;
    let as_pg = |prog: &Path| {
        if root {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--pdeathsig=KILL",
            ])
            .arg(prog);
            c
        } else {
            std::process::Command::new(prog)
        }
    };
    let ok = as_pg(&bin.join("initdb"))
        .args(["-A", "trust", "-U", "bench", "-D"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("initdb failed");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut pg = as_pg(&bin.join("postgres"));
    pg.arg("-D")
        .arg(&data)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=on",
            "-c",
            "synchronous_commit=on",
            "-c",
            "max_connections=300",
            "-c",
            if commit_timestamps {
                "track_commit_timestamp=on"
            } else {
                "track_commit_timestamp=off"
            },
            "-p",
            &port.to_string(),
            "-k",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("pg.log"))?);
    if let Some(p) = preload {
        pg.env("LD_PRELOAD", p)
            .env("KAKEHASHI_FSYNC_DELAY_US", fsync_delay_us.to_string());
    }
    let child = pg.spawn().context("cannot start postgres")?;
    let pg = Pg {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(pg);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("postgres did not start")
}
