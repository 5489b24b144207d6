//! The [`Store`] itself: opening SQLite or PostgreSQL from a URL (a new
//! SQLite file private to its owner), running the migrations, and the
//! connection pool every other module queries through.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::error::{Error, Result};

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// The longest wait for a PostgreSQL connection (an unreachable server
/// fails requests after this long).
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Which database a [`Store`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The gateway's database. Cloning is cheap and shares the pool.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    /// On PostgreSQL: the hot-path writes (logins, sessions) leave their
    /// audit record in `audit_pending` for [`Store::seal_pending`] instead
    /// of taking the chain head ([`Store::seal_later`]).
    pub(crate) seal_later: bool,
}

#[derive(Debug, PartialEq)]
enum Target<'a> {
    Sqlite(PathBuf),
    Postgres(&'a str),
}

fn parse_url(url: &str) -> Result<Target<'_>> {
    let bad = || Error::BadUrl(url.to_owned());
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres(url));
    }
    let path = if let Some(rest) = url.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = url.strip_prefix("sqlite:") {
        rest
    } else if url.contains("://") {
        return Err(bad());
    } else {
        url
    };
    // No in-memory databases (each pooled connection would get its own) and
    // no URL parameters (the store sets the pragmas itself).
    if path.is_empty() || path.starts_with(':') || path.contains('?') {
        return Err(bad());
    }
    Ok(Target::Sqlite(PathBuf::from(path)))
}

/// A store URL from the configuration. It may hold a PostgreSQL password,
/// so it prints (`Debug` and `Display`) only as [`redact_url`] shows it;
/// [`StoreUrl::expose`] gives the whole URL to [`Store::open`].
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// Wrap a URL (`sqlite://…`, a plain path, or `postgres://…`).
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The whole URL, password included: for opening the store only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SQLite file this URL names (`None` for PostgreSQL or a URL
    /// [`Store::open`] refuses), e.g. for a command that must know whether
    /// it is about to create the database.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match parse_url(&self.0) {
            Ok(Target::Sqlite(path)) => Some(path),
            _ => None,
        }
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({:?})", redact_url(&self.0))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// The store URL as it may be shown: a PostgreSQL password (in the user
/// info or a `password=` parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let auth_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..auth_end].rfind('@').map(|i| rest + i) {
            if let Some(colon) = out[rest..at].find(':').map(|i| rest + i) {
                out.replace_range(colon + 1..at, "***");
            }
        }
    }
    while let Some(i) = out.find("password=") {
        let start = i + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |j| start + j);
        if &out[start..end] == "***" {
            break;
        }
        out.replace_range(start..end, "***");
    }
    out
}

/// Creates a missing database file readable by its owner only (0600):
/// it holds the audit log, credentials and token hashes, and SQLite gives
/// its `-wal` and `-shm` files the same mode. An existing file is left as
/// it is.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    match o.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl Store {
    /// Opens (creating if needed) the database at `url` and applies the
    /// migrations. See the crate docs for the URL forms.
    pub async fn open(url: &str) -> Result<Store> {
        let pool = match parse_url(url)? {
            Target::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                create_private(&path)?;
                let options = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(30));
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await?;
                SQLITE_MIGRATOR.run(&pool).await?;
                Pool::Sqlite(pool)
            }
            Target::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)?;
                // A gateway refuses new sessions within 2 s of PostgreSQL
                // becoming unreachable (`store_unavailable`) instead of
                // queueing them: a connection is waited for 1.5 s at most.
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(PG_ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await?;
                POSTGRES_MIGRATOR.run(&pool).await?;
                Pool::Postgres(pool)
            }
        };
        tracing::debug!(backend = ?Self::backend_of(&pool), "Store opened");
        Ok(Store {
            pool,
            seal_later: false,
        })
    }

    fn backend_of(pool: &Pool) -> Backend {
        match pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Which database this store uses.
    pub fn backend(&self) -> Backend {
        Self::backend_of(&self.pool)
    }

    /// Closes every pooled connection (waits for those in use). Dropping the
    /// store without closing loses nothing that was committed.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_url_never_prints_its_password() {
        let u = StoreUrl::new("postgres://kakehashi:s3cret@db.example:5432/kh");
        assert!(!format!("{u} {u:?}").contains("s3cret"), "{u:?}");
        assert_eq!(u.expose(), "postgres://kakehashi:s3cret@db.example:5432/kh");
    }

    #[test]
    fn store_urls_are_shown_without_passwords() {
        assert_eq!(
            redact_url("postgres://kakehashi:s3cret@db.example:5432/kh"),
            "postgres://kakehashi:***@db.example:5432/kh"
        );
        assert_eq!(
            redact_url("postgres://db/kh?user=k&password=s3cret&sslmode=require"),
            "postgres://db/kh?user=k&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/kakehashi/kh.db"),
            "sqlite:///var/lib/kakehashi/kh.db"
        );
        assert_eq!(redact_url("postgres://k@db/kh"), "postgres://k@db/kh");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_new_sqlite_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        let _s = Store::open(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }

    #[test]
    fn url_forms() {
        assert_eq!(
            parse_url("sqlite:///var/lib/k/store.db").unwrap(),
            Target::Sqlite("/var/lib/k/store.db".into())
        );
        assert_eq!(
            parse_url("sqlite://demo/store.db").unwrap(),
            Target::Sqlite("demo/store.db".into())
        );
        assert_eq!(
            parse_url("sqlite:store.db").unwrap(),
            Target::Sqlite("store.db".into())
        );
        assert_eq!(
            parse_url("/tmp/x.db").unwrap(),
            Target::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            parse_url("postgres://u@127.0.0.1:5432/k").unwrap(),
            Target::Postgres("postgres://u@127.0.0.1:5432/k")
        );
        assert!(parse_url("postgresql://h/k").is_ok());
        assert_eq!(
            StoreUrl::new("sqlite:///var/lib/k/store.db").sqlite_path(),
            Some(PathBuf::from("/var/lib/k/store.db"))
        );
        assert_eq!(StoreUrl::new("postgres://u@h/k").sqlite_path(), None);
        for bad in [
            "",
            "sqlite::memory:",
            "mysql://h/db",
            "sqlite://x.db?mode=rwc",
            "sqlite://",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
