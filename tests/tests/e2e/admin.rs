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

/// `admin import` (the April personnel changes): a file with one bad line
/// writes nothing; `--check` writes nothing; a good set of files is written
/// with an audit record naming each line.
#[tokio::test(flavor = "multi_thread")]
async fn admin_import_checks_every_line_before_writing() {
    let pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    let cfg = cli_config(&pki, &db);
    let c = cfg.to_str().unwrap();
    let dir = pki.path();
    let users = dir.join("users.csv");
    let desks = dir.join("desks.csv");
    let laptops = dir.join("laptops.csv");
    std::fs::write(
        &users,
        "\u{feff}user_id,name,department,roles,status\r\nu-1001,加藤 一郎,総務課,staff;chief\r\nu-1002,佐藤 花子,総務課,staff\r\n",
    )
    .unwrap();
    std::fs::write(
        &desks,
        "desk_id,level,segment,department,owners\nDESK-2001,2,lgwan,総務課,u-1002\nDESK-2002,2,lgwan,総務課,u-9999\n",
    )
    .unwrap();
    std::fs::write(&laptops, "device_id,class,user\nPC-3001,home,u-1002\n").unwrap();
    let import = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            c,
            "admin",
            "import",
            "--users",
            users.to_str().unwrap(),
            "--desks",
            desks.to_str().unwrap(),
            "--laptops",
            laptops.to_str().unwrap(),
            "--reason",
            "2026年4月 人事異動",
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            gw(&a).await
        }
    };
    let (ok, out) = import(&[]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("desks.csv:3: ") && out.contains("owner u-9999 of desk DESK-2002"),
        "{out}"
    );
    assert!(out.contains("nothing was written"), "{out}");
    let (_, list) = gw(&["--config", c, "admin", "user", "list"]).await;
    assert!(!list.contains("u-1001"), "{list}");

    std::fs::write(
        &desks,
        "desk_id,level,segment,department,owners\nDESK-2001,2,lgwan,総務課,u-1002\n",
    )
    .unwrap();
    let (ok, out) = import(&["--check"]).await;
    assert!(ok && out.contains("check only"), "{out}");
    assert!(out.contains("add user u-1001"), "{out}");
    let (_, list) = gw(&["--config", c, "admin", "user", "list"]).await;
    assert!(!list.contains("u-1001"), "{list}");

    let (ok, out) = import(&[]).await;
    assert!(ok, "{out}");
    let (_, list) = gw(&["--config", c, "admin", "user", "list"]).await;
    assert!(list.contains("u-1001") && list.contains("chief"), "{list}");
    let (_, devices) = gw(&["--config", c, "admin", "device", "list"]).await;
    assert!(
        devices.contains("PC-3001") && devices.contains("u-1002"),
        "{devices}"
    );
    // Again: everything is unchanged, nothing is written twice.
    let (ok, out) = import(&[]).await;
    assert!(ok && out.contains("0 change(s) written"), "{out}");
    let store = kakehashi_store::Store::open(db.to_str().unwrap())
        .await
        .unwrap();
    let adds: Vec<_> = store
        .audit_between(0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "user.add")
        .collect();
    assert_eq!(adds.len(), 2);
    assert_eq!(adds[0].reason, "2026年4月 人事異動");
    assert!(adds[0].detail.contains("users.csv:2"), "{}", adds[0].detail);

    // The next April: 佐藤 moves to 税務課 (and marries: a new name). The
    // id, and with it her laptop and desk, stays.
    std::fs::write(
        &users,
        "user_id,name,department,roles\nu-1001,加藤 一郎,総務課,staff;chief\nu-1002,鈴木 花子,税務課,staff\n",
    )
    .unwrap();
    let (ok, out) = import(&["--check"]).await;
    assert!(
        ok && out.contains("user u-1002 佐藤 花子 (総務課) -> 鈴木 花子 (税務課)"),
        "{out}"
    );
    let (ok, out) = import(&[]).await;
    assert!(ok && out.contains("1 change(s) written"), "{out}");
    let u = store.get_user("u-1002").await.unwrap().unwrap();
    assert_eq!(
        (u.name.as_str(), u.department.as_str()),
        ("鈴木 花子", "税務課")
    );
    let moved = store
        .audit_between(0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.action == "user.update")
        .expect("the transfer is audited");
    let d = moved.detail_json().unwrap();
    assert_eq!(d["before"]["department"], "総務課");
    assert_eq!(d["after"]["department"], "税務課");
    assert!(
        d["import"].as_str().unwrap().ends_with("users.csv:3"),
        "{d}"
    );
    // One person by hand: `admin user set`.
    let (ok, out) = gw(&[
        "--config",
        c,
        "admin",
        "user",
        "set",
        "--id",
        "u-1001",
        "--dept",
        "企画課",
        "--reason",
        "兼務解除",
    ])
    .await;
    assert!(ok, "{out}");
    let u = store.get_user("u-1001").await.unwrap().unwrap();
    assert_eq!(
        (u.name.as_str(), u.department.as_str()),
        ("加藤 一郎", "企画課")
    );
    let (ok, out) = gw(&[
        "--config", c, "admin", "user", "set", "--id", "u-nobody", "--dept", "x",
    ])
    .await;
    assert!(!ok && out.contains("no user"), "{out}");
}
