//! Test fixtures: a fresh database per test on SQLite (a temp file) or on a
//! throwaway PostgreSQL cluster this process starts itself.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kakehashi_store::{Audit, Store};
use sqlx::Connection;

mod pg;
pub use pg::cluster;

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
        Db {
            kind: Kind::Postgres,
            url: cluster().create_database().await,
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
