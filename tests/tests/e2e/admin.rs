//! The admin CLI on the gateway's store, and `audit verify` on an honest
//! and on a tampered log.

use std::time::Duration;

use kakehashi_tests::*;

async fn gw(args: &[&str]) -> (bool, String) {
    let out = command(bin("kakehashi-gateway"))
        .args(args)
        .env("USER", "officer-yamada")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_cli_and_audit_verify() {
    let pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    let cfg = cli_config(&pki, &db);
    let c = cfg.to_str().unwrap();

    let (ok, out) = gw(&[
        "admin",
        "--config",
        c,
        "user",
        "add",
        "--id",
        "u-kato",
        "--name",
        "加藤 一郎",
        "--dept",
        "somu",
    ])
    .await;
    assert!(ok, "{out}");
    let (ok, out) = gw(&[
        "admin", "--config", c, "user", "add", "--id", "u-kato", "--name", "x", "--dept", "somu",
    ])
    .await;
    assert!(
        !ok && out.contains("already exists"),
        "duplicate refused: {out}"
    );
    let (ok, out) = gw(&[
        "admin", "--config", c, "user", "add", "--id", "u-bad", "--name", "x", "--dept", "d",
        "--role", "king",
    ])
    .await;
    assert!(!ok && out.contains("unknown role"), "{out}");
    let (ok, out) = gw(&[
        "admin",
        "--config",
        c,
        "user",
        "enroll-code",
        "--id",
        "u-kato",
    ])
    .await;
    assert!(ok, "{out}");
    let code = out
        .lines()
        .find_map(|l| l.strip_prefix("enrollment code for u-kato: "))
        .expect("code printed")
        .to_string();
    assert_eq!(code.len(), 19, "XXXX-XXXX-XXXX-XXXX: {code}");
    let (ok, out) = gw(&[
        "admin",
        "--config",
        c,
        "user",
        "enroll-code",
        "--id",
        "nobody",
    ])
    .await;
    assert!(!ok && out.contains("no user"), "{out}");

    // A device the gateway has seen (registered on first login): seed it directly.
    let store = kakehashi_store::Store::open(db.to_str().unwrap())
        .await
        .unwrap();
    let spec = kakehashi_store::DeviceSpec {
        id: "LAPTOP-K".into(),
        class: "home".parse().unwrap(),
        loaned_to: Some("u-kato".into()),
        cert_serial: Some("01".into()),
    };
    store
        .upsert_device(
            &spec,
            kakehashi_store::Audit::new(kakehashi_store::unix_now(), "test", "device.register"),
        )
        .await
        .unwrap();
    let (ok, out) = gw(&[
        "admin",
        "--config",
        c,
        "device",
        "block",
        "--id",
        "LAPTOP-K",
        "--status",
        "lost",
        "--reason",
        "reported lost on the train",
    ])
    .await;
    assert!(ok && out.contains("now lost"), "{out}");
    let (ok, out) = gw(&["admin", "--config", c, "device", "list"]).await;
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with("LAPTOP-K") && l.contains("lost")),
        "{out}"
    );
    let (ok, out) = gw(&[
        "admin",
        "--config",
        c,
        "user",
        "disable",
        "--id",
        "u-kato",
        "--reason",
        "left the city",
    ])
    .await;
    assert!(ok, "{out}");

    // Every action is audited with who did it and why; the code itself is not in the log.
    let log = store.audit_between(0, i64::MAX).await.unwrap();
    for action in [
        "user.add",
        "user.enroll_code",
        "device.block",
        "user.disable",
    ] {
        let r = log
            .iter()
            .find(|r| r.action == action)
            .unwrap_or_else(|| panic!("no {action} in {log:?}"));
        // The real uid's user, not $USER (set to officer-yamada above).
        assert_eq!(r.actor, cli_actor(), "{action}");
    }
    assert!(log
        .iter()
        .any(|r| r.action == "device.block" && r.reason == "reported lost on the train"));
    assert!(!format!("{log:?}").contains(&code.replace('-', "")));

    let (ok, out) = gw(&["audit", "verify", "--config", c]).await;
    assert!(ok && out.contains("audit log intact"), "{out}");

    // Tamper: someone with the database file drops the guard trigger and edits a record.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER audit_no_update")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit SET reason = 'nothing happened' WHERE action = 'device.block'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (ok, out) = gw(&["audit", "verify", "--config", c]).await;
    assert!(!ok, "tampering must fail verify: {out}");
    assert!(
        out.contains("AUDIT LOG BROKEN at record") && out.contains("edited"),
        "{out}"
    );
}

/// An admin command run as root before the gateway's first start creates
/// the database for the gateway's user (the owner of the state directory),
/// 0600, not for root: the gateway must be able to write it.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn a_database_created_by_root_belongs_to_the_service() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let pki = Pki::new();
    let state = pki.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let me = std::fs::metadata(pki.path()).unwrap().uid();
    // As root the directory stands for /var/lib/kakehashi of the service
    // user (here `nobody`); otherwise the file is simply ours.
    let service_uid = if me == 0 {
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        65534
    } else {
        me
    };
    let db = state.join("kakehashi.db");
    let cfg = cli_config(&pki, &db);
    let (ok, out) = gw(&[
        "--config",
        cfg.to_str().unwrap(),
        "admin",
        "user",
        "add",
        "--id",
        "u-first",
        "--name",
        "最初の利用者",
        "--dept",
        "somu",
    ])
    .await;
    assert!(ok, "{out}");
    let meta = std::fs::metadata(&db).unwrap();
    assert_eq!(meta.uid(), service_uid, "{out}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    for extra in ["kakehashi.db-wal", "kakehashi.db-shm"] {
        if let Ok(m) = std::fs::metadata(state.join(extra)) {
            assert_eq!(m.uid(), service_uid, "{extra}");
        }
    }
}
