//! The audit chain anchored outside the database: a gateway signs
//! checkpoints of the chain head with a key kept in a file; `audit verify`
//! catches a rewrite that re-chains every hash, and a forged checkpoint.
//! CLI actors are the real uid's user, whatever `$USER` says.

use std::path::Path;
use std::time::Duration;

use kakehashi_store::{Hash256, Store};
use kakehashi_tests::*;

/// `kakehashi-gateway ARGS` with a misleading `$USER`; (success, stdout+stderr).
async fn gw(args: &[&str]) -> (bool, String) {
    let out = command(bin("kakehashi-gateway"))
        .args(args)
        .env("USER", "someoneelse")
        .env("LOGNAME", "someoneelse")
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

/// What an intruder with the database file does: drop the guard triggers,
/// edit record `seq` and recompute every later hash and the head.
async fn rewrite_and_rechain(db: &Path, seq: i64, reason: &str) {
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    let all = store.audit_page(0, 100_000).await.unwrap();
    store.close().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER audit_no_update")
        .execute(&pool)
        .await
        .unwrap();
    let mut prev = all[seq as usize - 2].hash;
    for r in &all[seq as usize - 1..] {
        let mut r = r.clone();
        if r.seq == seq {
            r.reason = reason.into();
        }
        r.prev_hash = prev;
        r.hash = r.compute_hash();
        prev = r.hash;
        sqlx::query("UPDATE audit SET reason = ?, prev_hash = ?, hash = ? WHERE seq = ?")
            .bind(&r.reason)
            .bind(&r.prev_hash.0[..])
            .bind(&r.hash.0[..])
            .bind(r.seq)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE audit_head SET hash = ? WHERE id = 1")
        .bind(&prev.0[..])
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// "records A–B were changed": (A, B).
fn span(out: &str) -> (i64, i64) {
    let tail = out.split("records ").nth(1).expect(out);
    let (a, rest) = tail.split_once('–').expect(out);
    let b: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (a.parse().unwrap(), b.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_checkpoints_catch_a_rechained_rewrite() {
    let pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    let mut gwp = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(format!(
                "{}[audit]\ncheckpoint_interval = \"1h\"\n",
                login_sections(&db)
            )),
            ..Default::default()
        },
    )
    .await;
    let c = gwp.config.to_str().unwrap().to_string();
    // The first checkpoint, at start (the policy import is on the chain).
    gwp.proc
        .wait_log("Audit checkpoint signed", Duration::from_secs(20))
        .await
        .unwrap();
    let (ok, out) = gw(&[
        "admin",
        "--config",
        &c,
        "user",
        "add",
        "--id",
        "u-anchor",
        "--name",
        "錨 太郎",
        "--dept",
        "somu",
    ])
    .await;
    assert!(ok, "{out}");
    gwp.proc.terminate();
    let status = gwp.proc.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "{}", gwp.proc.log_text());

    // The key beside the ticket key, private; the checkpoint file beside it.
    let key = pki
        .ca
        .ticket_key_path()
        .with_file_name("audit-checkpoint.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(key.with_extension("pub").exists());
    let log = key.with_file_name("audit-checkpoints.jsonl");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().expect("a checkpoint on shutdown").clone();
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    let (head, _) = store.audit_head().await.unwrap();
    let records = store.audit_page(0, 10_000).await.unwrap();
    store.close().await;
    // The shutdown checkpoint covers every record before it, and is itself the last record.
    let cp_seq = last["seq"].as_i64().unwrap();
    assert_eq!(cp_seq, head - 1, "{lines:?}");
    let cp_rec = records.last().unwrap();
    assert_eq!(
        (cp_rec.action.as_str(), cp_rec.reason.as_str()),
        ("audit.checkpoint", "shutdown")
    );
    // The CLI's records carry the real user, not $USER.
    let add = records.iter().find(|r| r.action == "user.add").unwrap();
    assert_eq!(add.actor, cli_actor());
    assert!(!add.actor.contains("someoneelse"));

    // Untouched: intact and anchored.
    let (ok, out) = gw(&["audit", "verify", "--config", &c]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("audit log intact") && out.contains(&format!("anchored up to {cp_seq} ")),
        "{out}"
    );
    assert!(
        out.contains(&format!("unanchored: records {head}–{head}")),
        "{out}"
    );
    // With the public key alone (as kept off the host).
    let public = key.with_extension("pub");
    let (ok, out) = gw(&[
        "audit",
        "verify",
        "--config",
        &c,
        "--checkpoint-key",
        public.to_str().unwrap(),
    ])
    .await;
    assert!(
        ok && out.contains(&format!("anchored up to {cp_seq} ")),
        "{out}"
    );

    // A key file others can read is refused; verify falls back to the .pub beside it.
    let perm = |m| std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(m));
    perm(0o640).unwrap();
    let (ok, out) = gw(&["audit", "verify", "--config", &c]).await;
    perm(0o600).unwrap();
    assert!(
        ok && out.contains("readable by group or others")
            && out.contains(&format!("anchored up to {cp_seq} ")),
        "{out}"
    );

    // A forged checkpoint: another head hash under the same key id.
    let mut forged = last.clone();
    forged["hash"] = Hash256([7; 32]).to_hex().into();
    let forged_file = pki.path().join("forged.jsonl");
    std::fs::write(&forged_file, format!("{forged}\n")).unwrap();
    let (ok, out) = gw(&[
        "audit",
        "verify",
        "--config",
        &c,
        "--checkpoints",
        forged_file.to_str().unwrap(),
    ])
    .await;
    assert!(!ok, "a forged checkpoint must fail verify: {out}");
    assert!(
        out.contains(&format!(
            "AUDIT CHECKPOINT FORGED: the checkpoint for seq {cp_seq} (checkpoint file line 1)"
        )),
        "{out}"
    );

    // The attack: edit the user.add record and re-chain everything after it.
    rewrite_and_rechain(&db, add.seq, "nothing happened").await;
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    assert!(
        store.verify_audit().await.unwrap().is_intact(),
        "the chain alone cannot tell"
    );
    store.close().await;
    let (ok, out) = gw(&["audit", "verify", "--config", &c]).await;
    assert!(!ok, "a re-chained rewrite must fail verify: {out}");
    assert!(out.contains("AUDIT LOG REWRITTEN"), "{out}");
    let (from, to) = span(&out);
    assert!(from <= add.seq && add.seq <= to, "{out}");
    // The first checkpoint at or after the edit names the span's end.
    let first_after = lines
        .iter()
        .map(|l| l["seq"].as_i64().unwrap())
        .filter(|&s| s >= add.seq)
        .min()
        .unwrap();
    assert_eq!(to, first_after, "{out}");
    // The checkpoint records in the database alone (no file) catch it too.
    std::fs::remove_file(&log).unwrap();
    let (ok, out) = gw(&["audit", "verify", "--config", &c]).await;
    assert!(!ok && out.contains("AUDIT LOG REWRITTEN"), "{out}");
}

/// Reads octet-counted syslog frames (RFC 5425) until one contains all of `needles`.
async fn frame_with(
    r: &mut tokio::io::BufReader<impl tokio::io::AsyncRead + Unpin>,
    needles: &[&str],
) -> String {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    loop {
        let mut len = Vec::new();
        r.read_until(b' ', &mut len).await.unwrap();
        assert!(!len.is_empty(), "the gateway closed the syslog connection");
        let len: usize = std::str::from_utf8(&len[..len.len() - 1])
            .unwrap()
            .parse()
            .unwrap();
        let mut m = vec![0u8; len];
        r.read_exact(&mut m).await.unwrap();
        let m = String::from_utf8(m).unwrap();
        if needles.iter().all(|n| m.contains(n)) {
            return m;
        }
    }
}

/// Each checkpoint, the shutdown one included, reaches the log server as a
/// syslog message over TLS (RFC 5425), its server checked against `[syslog] ca`.
#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_reach_the_log_server_over_tls() {
    use kakehashi_transport::tls::{load_certs, load_key, provider};
    let pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    // The log server: a certificate for localhost from the CA given as [syslog] ca.
    let g = pki.gateway_cert();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(load_certs(&g.cert).unwrap(), load_key(&g.key).unwrap())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut gwp = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(format!(
                "{}[audit]\ncheckpoint_interval = \"1h\"\n[syslog]\nurl = \"tls://localhost:{}\"\nca = \"{}\"\n",
                login_sections(&db),
                l.local_addr().unwrap().port(),
                pki.ca.ca_cert_path().display()
            )),
            ..Default::default()
        },
    )
    .await;
    gwp.proc
        .wait_log("Audit checkpoint signed", Duration::from_secs(20))
        .await
        .unwrap();
    let (ok, out) = gw(&[
        "admin",
        "--config",
        gwp.config.to_str().unwrap(),
        "user",
        "add",
        "--id",
        "u-tls",
        "--name",
        "転送 花子",
        "--dept",
        "somu",
    ])
    .await;
    assert!(ok, "{out}");
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), l.accept())
        .await
        .unwrap()
        .unwrap();
    let tls = acceptor.accept(tcp).await.unwrap();
    let mut r = tokio::io::BufReader::new(tls);
    let m = tokio::time::timeout(
        Duration::from_secs(10),
        frame_with(&mut r, &["action=\"user.add\"", "u-tls"]),
    )
    .await
    .unwrap();
    assert!(m.contains(&format!("actor=\"{}\"", cli_actor())), "{m}");
    // On shutdown the gateway signs the head (after the user.add) and the
    // checkpoint goes out before forwarding stops.
    gwp.proc.terminate();
    let m = tokio::time::timeout(
        Duration::from_secs(20),
        frame_with(
            &mut r,
            &["action=\"audit.checkpoint\"", "reason=\"shutdown\""],
        ),
    )
    .await
    .expect("the shutdown checkpoint over syslog");
    let json = m.split_once("] \u{feff}").unwrap().1;
    let rec: serde_json::Value = serde_json::from_str(json).unwrap();
    let cp: serde_json::Value = serde_json::from_str(rec["detail"].as_str().unwrap()).unwrap();
    assert_eq!(
        cp["seq"].as_i64().unwrap(),
        rec["seq"].as_i64().unwrap() - 1
    );
    assert_eq!(cp["gateway"], "test-gateway");
    assert_eq!(cp["sig"].as_str().unwrap().len(), 128);
    assert!(gwp
        .proc
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap()
        .success());
    // The copy from the log server checks out with the public key alone.
    let copy = pki.path().join("from-syslog.jsonl");
    std::fs::write(&copy, format!("{cp}\n")).unwrap();
    let key = pki
        .ca
        .ticket_key_path()
        .with_file_name("audit-checkpoint.pub");
    std::fs::remove_file(key.with_file_name("audit-checkpoints.jsonl")).unwrap();
    let (ok, out) = gw(&[
        "audit",
        "verify",
        "--config",
        gwp.config.to_str().unwrap(),
        "--checkpoint-key",
        key.to_str().unwrap(),
        "--checkpoints",
        copy.to_str().unwrap(),
    ])
    .await;
    assert!(
        ok && out.contains(&format!("anchored up to {} ", cp["seq"])),
        "{out}"
    );
}
