//! The store's test binary: the same API suite on SQLite and on a real
//! PostgreSQL cluster started by this process, plus crash tests.

mod suite;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use support::{audit, Db};

/// One `#[tokio::test]` per suite function, for one backend.
macro_rules! backend_suite {
    ($backend:ident, $make:path: $($name:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $make().await;
                    crate::suite::$name(&db).await;
                }
            )+
        }
    };
}

macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        backend_suite!(sqlite, crate::support::Db::sqlite: $($name),+);
        backend_suite!(postgres, crate::support::Db::postgres: $($name),+);
    };
}

both_backends!(
    users,
    credentials,
    devices,
    desks,
    enrollment_codes,
    login_tokens,
    login_codes,
    lockouts,
    telework_plans,
    bcp,
    policies,
    policy_seeding,
    sessions,
    membership,
    pruning,
    transient_state,
    audit_chain,
    audit_detects_edit,
    audit_detects_delete,
    audit_detects_tail_delete,
    audit_detects_reorder,
    audit_detects_reorder_of_last_pair,
    audit_detects_bad_link,
    audit_concurrent,
    audit_sealed_later,
    audit_checkpoints_anchor_the_chain,
    audit_checkpoint_catches_cut_tail,
    reopen_keeps_data,
);

const CRASH_ENV: &str = "KAKEHASHI_STORE_CRASH_DB";

/// Child half of `sqlite_survives_kill_9`, not a test of its own (ignored,
/// so the suite never runs it; the parent runs it with `--ignored`): writes
/// users one by one, printing each after its commit, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of sqlite_survives_kill_9"]
async fn crash_writer_child() {
    let url = std::env::var(CRASH_ENV).expect("started by sqlite_survives_kill_9");
    let store = kakehashi_store::Store::open(&url).await.unwrap();
    for i in 0..100_000 {
        let id = format!("u{i}");
        store
            .add_user(
                &kakehashi_store::NewUser {
                    id: id.clone(),
                    name: "n".into(),
                    department: "d".into(),
                    roles: Default::default(),
                },
                audit(i, "user.add").subject(&id),
            )
            .await
            .unwrap();
        println!("committed {id}");
    }
}

/// SIGKILL a process in the middle of writing: every change it reported
/// committed is there after reopening, and the audit chain is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_survives_kill_9() {
    let db = Db::sqlite().await;
    // Create the schema first so the child only writes.
    db.open().await.close().await;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_writer_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_ENV, &db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let committed = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("committed ") {
                seen.push(id.to_owned());
                if seen.len() == 200 {
                    break;
                }
            }
        }
        seen
    })
    .await
    .unwrap();
    child.kill().unwrap(); // SIGKILL: no destructors, no checkpoint
    child.wait().unwrap();
    assert_eq!(
        committed.len(),
        200,
        "the child wrote fewer users than expected"
    );
    let wal = std::fs::metadata(db.sqlite_path().with_extension("db-wal")).unwrap();
    assert!(
        wal.len() > 0,
        "the writes were still in the WAL when killed"
    );

    let store = db.open().await;
    for id in &committed {
        assert!(store.get_user(id).await.unwrap().is_some(), "{id} lost");
    }
    let report = store.verify_audit().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    let users = store.list_users().await.unwrap().len() as u64;
    assert_eq!(
        report.records, users,
        "one audit record per user, no more, no less"
    );
}

/// The file is really in WAL mode with foreign keys on.
#[tokio::test]
async fn sqlite_pragmas() {
    let db = Db::sqlite().await;
    let store = db.open().await;
    assert_eq!(store.backend(), kakehashi_store::Backend::Sqlite);
    store.close().await;
    use sqlx::Connection;
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db.sqlite_path());
    let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

/// Plain paths and sqlite: URLs open the same file.
#[tokio::test]
async fn sqlite_url_forms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b.db");
    let plain = kakehashi_store::Store::open(path.to_str().unwrap())
        .await
        .unwrap();
    add_user_plain(&plain).await;
    plain.close().await;
    let url = kakehashi_store::Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert!(url.get_user("u1").await.unwrap().is_some());
    assert!(kakehashi_store::Store::open("mysql://x/y").await.is_err());
}

async fn add_user_plain(store: &kakehashi_store::Store) {
    store
        .add_user(
            &kakehashi_store::NewUser {
                id: "u1".into(),
                name: "n".into(),
                department: "d".into(),
                roles: Default::default(),
            },
            audit(1, "user.add"),
        )
        .await
        .unwrap();
}

/// The PostgreSQL fixture is a real server, and reports its start-up time.
#[tokio::test]
async fn postgres_cluster_is_real() {
    let db = Db::postgres().await;
    let store = db.open().await;
    assert_eq!(store.backend(), kakehashi_store::Backend::Postgres);
    let c = support::cluster();
    eprintln!(
        "PostgreSQL test cluster start-up: {} ms",
        c.startup.as_millis()
    );
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let v: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!v.is_empty());
}
