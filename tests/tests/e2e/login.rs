//! Logins bound to the laptop: a token redeemed by laptop A does not work
//! from laptop B; a blocked laptop's token stops working at once; no token,
//! an expired or revoked token, a reused or wrong-verifier code are refused
//! with their reasons, and every outcome is in the audit log.

use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_proto::message::{LoginResult, Logout, Message, RedeemLogin, Secret, SessionRequest};
use kakehashi_proto::{FrameKind, Refusal};
use kakehashi_store::{Audit, DeviceStatus, Store};
use kakehashi_tests::*;

/// Send one message on a fresh TLS connection as `dev`; return the answer frame.
async fn ask<M: Message>(
    pki: &Pki,
    dev: &CertFiles,
    gw: &GatewayProc,
    m: &M,
) -> kakehashi_proto::Frame {
    ask_terminal(pki, dev, gw.addrs.terminal_tcp, m).await.1
}

fn refusal(f: &kakehashi_proto::Frame) -> String {
    assert_eq!(
        f.kind,
        FrameKind::Refused,
        "expected a refusal, got {:?}",
        f.kind
    );
    Refusal::from_frame(f).unwrap().code
}

async fn redeem(
    pki: &Pki,
    dev: &CertFiles,
    gw: &GatewayProc,
    seed: &LoginSeed,
) -> kakehashi_proto::Frame {
    let m = RedeemLogin {
        code: Secret(seed.code.clone()),
        code_verifier: Secret(seed.verifier.clone()),
    };
    ask(pki, dev, gw, &m).await
}

async fn session(
    pki: &Pki,
    dev: &CertFiles,
    gw: &GatewayProc,
    token: Option<&Secret>,
) -> kakehashi_proto::Frame {
    ask(
        pki,
        dev,
        gw,
        &SessionRequest {
            desk: "DESK-L".into(),
            token: token.cloned(),
        },
    )
    .await
}

/// A gateway requiring logins on SQLite, with desk DESK-L (level 1, owned
/// by `owners`) served by an echo agent over QUIC.
async fn login_world(pki: &mut Pki, owners: &[&str]) -> (GatewayProc, Store, Proc) {
    let db = pki.path().join("kakehashi.db");
    let gw = start_gateway(
        pki,
        GatewayOpts {
            identity: Some(login_sections(&db)),
            ..Default::default()
        },
    )
    .await;
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    add_desk(&store, "DESK-L", 1, owners).await;
    let desk = echo_server().await;
    let agent = start_agent(pki, "DESK-L", &gw.addrs, desk, "quic");
    (gw, store, agent)
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_bound_to_the_laptop_that_redeemed_them() {
    let mut pki = Pki::new();
    let (gw, store, _agent) = login_world(&mut pki, &["u-tanaka", "u-suzuki", "u-sato"]).await;
    let a = pki.device("LAPTOP-A", TerminalClass::Home);
    let b = pki.device("LAPTOP-B", TerminalClass::Home);

    // No token: login_required.
    assert_eq!(
        refusal(&session(&pki, &a, &gw, None).await),
        "login_required"
    );

    // Redeem on A → a token.
    let seed = seed_login(&store, "u-tanaka", "LAPTOP-A").await;
    let f = redeem(&pki, &a, &gw, &seed).await;
    assert_eq!(f.kind, FrameKind::LoginResult);
    let res = LoginResult::from_frame(&f).unwrap();
    assert_eq!(res.user, "u-tanaka");
    let now = kakehashi_transport::unix_now();
    assert!(
        res.expires_at > now && res.expires_at <= now + 10 * 3600,
        "at most the configured day"
    );
    // The same code again: used.
    assert_eq!(
        refusal(&redeem(&pki, &a, &gw, &seed).await),
        "login_code_invalid"
    );
    // A code with the wrong PKCE verifier: refused (and spent).
    let mut bad = seed_login(&store, "u-tanaka", "LAPTOP-A").await;
    bad.verifier = format!("{}x", bad.verifier);
    assert_eq!(
        refusal(&redeem(&pki, &a, &gw, &bad).await),
        "login_code_invalid"
    );

    // A phished code: issued for laptop A (the link named A), redeemed by
    // laptop B. Refused, spent (A cannot use it afterwards either), and B is
    // not recorded as anyone's laptop.
    let phished = seed_login(&store, "u-tanaka", "LAPTOP-A").await;
    assert_eq!(
        refusal(&redeem(&pki, &b, &gw, &phished).await),
        "login_code_other_device"
    );
    assert_eq!(
        refusal(&redeem(&pki, &a, &gw, &phished).await),
        "login_code_invalid",
        "a refused code is spent"
    );
    assert!(
        store.get_device("LAPTOP-B").await.unwrap().is_none(),
        "the phishing laptop is not registered to the victim"
    );
    let refused = store.audit_between(0, i64::MAX).await.unwrap();
    assert!(
        refused
            .iter()
            .any(|r| r.action == "login.redeem" && r.reason == "login_code_other_device"),
        "the refusal is audited"
    );

    // A's token works from A…
    let f = session(&pki, &a, &gw, Some(&res.token)).await;
    assert_eq!(
        f.kind,
        FrameKind::SessionAccepted,
        "{:?}",
        Refusal::from_frame(&f).ok()
    );
    // …and not from B.
    assert_eq!(
        refusal(&session(&pki, &b, &gw, Some(&res.token)).await),
        "token_other_device"
    );
    // A re-issued certificate for A (new serial) does not inherit the token either.
    pki.revoke(&a.serial);
    let a2 = pki.device("LAPTOP-A", TerminalClass::Home);
    gw.proc
        .wait_log("CRL reloaded", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        refusal(&session(&pki, &a2, &gw, Some(&res.token)).await),
        "token_other_device"
    );

    // A token of laptop B, then B is blocked by an officer: refused at once.
    let seed_b = seed_login(&store, "u-suzuki", "LAPTOP-B").await;
    let res_b = LoginResult::from_frame(&redeem(&pki, &b, &gw, &seed_b).await).unwrap();
    assert_eq!(
        session(&pki, &b, &gw, Some(&res_b.token)).await.kind,
        FrameKind::SessionAccepted
    );
    store
        .set_device_status(
            "LAPTOP-B",
            DeviceStatus::Blocked,
            Audit::new(kakehashi_store::unix_now(), "officer", "device.block"),
        )
        .await
        .unwrap();
    assert_eq!(
        refusal(&session(&pki, &b, &gw, Some(&res_b.token)).await),
        "device_blocked"
    );

    // A laptop reported lost, or marked revoked, hears its own reason — at a
    // session with the token it had, and at its next login.
    for (status, code, id) in [
        (DeviceStatus::Lost, "device_lost", "LAPTOP-D"),
        (DeviceStatus::Revoked, "device_revoked", "LAPTOP-E"),
    ] {
        let d = pki.device(id, TerminalClass::Home);
        let seed = seed_login(&store, "u-suzuki", id).await;
        let res = LoginResult::from_frame(&redeem(&pki, &d, &gw, &seed).await).unwrap();
        store
            .set_device_status(
                id,
                status,
                Audit::new(kakehashi_store::unix_now(), "officer", "device.block"),
            )
            .await
            .unwrap();
        assert_eq!(
            refusal(&session(&pki, &d, &gw, Some(&res.token)).await),
            code
        );
        let seed = seed_login(&store, "u-suzuki", id).await;
        assert_eq!(refusal(&redeem(&pki, &d, &gw, &seed).await), code);
    }

    // Logout revokes: the token stops working.
    let seed_a2 = seed_login(&store, "u-tanaka", "LAPTOP-A").await;
    let res_a2 = LoginResult::from_frame(&redeem(&pki, &a2, &gw, &seed_a2).await).unwrap();
    assert_eq!(
        ask(
            &pki,
            &a2,
            &gw,
            &Logout {
                token: res_a2.token.clone()
            }
        )
        .await
        .kind,
        FrameKind::LoggedOut
    );
    assert_eq!(
        refusal(&session(&pki, &a2, &gw, Some(&res_a2.token)).await),
        "token_revoked"
    );

    // A disabled user's token stops working.
    let seed_c = seed_login(&store, "u-sato", "LAPTOP-C").await;
    let c = pki.device("LAPTOP-C", TerminalClass::Mobile);
    let res_c = LoginResult::from_frame(&redeem(&pki, &c, &gw, &seed_c).await).unwrap();
    store
        .set_user_disabled(
            "u-sato",
            true,
            Audit::new(kakehashi_store::unix_now(), "officer", "user.disable"),
        )
        .await
        .unwrap();
    assert_eq!(
        refusal(&session(&pki, &c, &gw, Some(&res_c.token)).await),
        "user_disabled"
    );

    // Everything above is in the audit log, and the chain verifies.
    let log = store.audit_between(0, i64::MAX).await.unwrap();
    let actions: Vec<(String, String)> = log
        .iter()
        .map(|r| (r.action.clone(), r.reason.clone()))
        .collect();
    for (action, reason) in [
        ("login", ""),
        ("login.redeem", "login_code_invalid"),
        ("session.denied", "login_required"),
        ("session.denied", "token_other_device"),
        ("session.denied", "device_blocked"),
        ("session.denied", "device_lost"),
        ("login.redeem", "device_revoked"),
        ("session.denied", "token_revoked"),
        ("session.denied", "user_disabled"),
        ("logout", ""),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, r)| a == action && (reason.is_empty() || r == reason)),
            "missing {action} {reason}: {actions:?}"
        );
    }
    // No token or code ever appears in the log.
    let all = format!("{log:?}");
    assert!(
        !all.contains(res.token.expose())
            && !all.contains(&seed.code)
            && !all.contains(&seed.verifier)
    );
    assert!(!gw.proc.log_text().contains(res.token.expose()));
    assert!(store.verify_audit().await.unwrap().is_intact());
}

/// A laptop revoked while its QUIC connection stays open gets no token and
/// cannot log out on that connection either: the login frames re-check the
/// certificate against the current CRL, as session requests do.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_laptop_cannot_redeem_a_code_on_its_open_connection() {
    let mut pki = Pki::new();
    let db = pki.path().join("revoked.db");
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(login_sections(&db)),
            ..Default::default()
        },
    )
    .await;
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    let dev = pki.device("LAPTOP-R", TerminalClass::Home);
    let (_ep, conn) = raw_quic(
        &pki,
        &dev,
        gw.addrs.terminal_quic,
        kakehashi_proto::ALPN_TERMINAL,
    )
    .await
    .unwrap();
    let ask = |m: Vec<u8>| {
        let conn = conn.clone();
        async move {
            let (mut tx, mut rx) = conn.open_bi().await.unwrap();
            tx.write_all(&m).await.unwrap();
            let _ = tx.finish();
            tokio::time::timeout(
                Duration::from_secs(10),
                kakehashi_proto::io::read_frame(&mut rx),
            )
            .await
            .expect("an answer")
            .unwrap()
        }
    };
    pki.revoke(&dev.serial);
    gw.proc
        .wait_log("CRL reloaded", Duration::from_secs(10))
        .await
        .unwrap();
    let seed = seed_login(&store, "u-revoked", "LAPTOP-R").await;
    let redeem = RedeemLogin {
        code: Secret(seed.code),
        code_verifier: Secret(seed.verifier),
    };
    let f = ask(redeem.to_frame().unwrap()).await;
    assert_eq!(refusal(&f), "certificate_revoked");
    let bye = Logout {
        token: Secret("khs1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
    };
    let f = ask(bye.to_frame().unwrap()).await;
    assert_eq!(refusal(&f), "certificate_revoked");
    assert!(store
        .login_tokens_for_user("u-revoked")
        .await
        .unwrap()
        .is_empty());
}

/// `kakehashi status` never claims more than the token file says, and after
/// the laptop's certificate was renewed the client says so instead of
/// offering the old token (which the gateway would refuse as another
/// laptop's).
#[tokio::test(flavor = "multi_thread")]
async fn status_says_what_it_knows_and_a_renewal_asks_for_a_new_login() {
    let mut pki = Pki::new();
    let dev = pki.device("PC-RENEW", TerminalClass::Home);
    let gw = GatewayAddrs {
        terminal_quic: "127.0.0.1:9".parse().unwrap(),
        terminal_tcp: "127.0.0.1:9".parse().unwrap(),
        agent_quic: "127.0.0.1:9".parse().unwrap(),
        agent_tcp: "127.0.0.1:9".parse().unwrap(),
        admin: "127.0.0.1:9".parse().unwrap(),
    };
    let cfg = client_config_logged_in(&pki, &dev, &gw, "u-renew", "khs1.not-checked");
    let client = |args: &[&str]| {
        let cfg = cfg.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            let out = tokio::process::Command::new(bin("kakehashi"))
                .arg("--config")
                .arg(&cfg)
                .args(&args)
                .output()
                .await
                .unwrap();
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        }
    };
    let (ok, out) = client(&["status"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("not checked with the gateway") && out.contains("JST"),
        "{out}"
    );
    assert!(!out.contains("logged in"), "{out}");
    // The token was made with an earlier certificate of this laptop.
    let token_file = cfg.with_extension("token.json");
    let mut t: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&token_file).unwrap()).unwrap();
    t["cert_serial"] = serde_json::json!("00");
    std::fs::write(&token_file, serde_json::to_vec(&t).unwrap()).unwrap();
    let (ok, out) = client(&["status"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("renewed") && out.contains("kakehashi login"),
        "{out}"
    );
    let (ok, out) = client(&["connect", "DESK-1", "--stdio"]).await;
    assert!(!ok && out.contains("renewed"), "{out}");
    assert!(!out.contains("another laptop"), "{out}");
}

/// A personal laptop (its certificate names the person it is lent to,
/// `kakehashi-pki issue device --user`) takes only that person's login:
/// a colleague's valid code is refused with `device_other_user`, audited,
/// and spent; a team laptop (no `--user`) takes anyone's.
#[tokio::test(flavor = "multi_thread")]
async fn a_personal_laptop_takes_only_its_owners_login() {
    let mut pki = Pki::new();
    let (gw, store, _agent) = login_world(&mut pki, &["u-tanaka", "u-sato"]).await;
    let mine = pki.personal_device("LAPTOP-T", TerminalClass::Home, "u-tanaka");
    let team = pki.device("LAPTOP-POOL", TerminalClass::Home);

    // Sato's code (made for this laptop) on Tanaka's laptop: refused.
    let other = seed_login(&store, "u-sato", "LAPTOP-T").await;
    assert_eq!(
        refusal(&redeem(&pki, &mine, &gw, &other).await),
        "device_other_user"
    );
    assert_eq!(
        refusal(&redeem(&pki, &mine, &gw, &other).await),
        "login_code_invalid",
        "the refused code is spent"
    );
    let log = store.audit_between(0, i64::MAX).await.unwrap();
    let r = log
        .iter()
        .find(|r| r.action == "login.redeem" && r.reason == "device_other_user")
        .expect("the refusal is audited");
    assert_eq!(r.subject, "u-sato");
    assert_eq!(audit_detail_of(r)["cert_user"], "u-tanaka");
    assert!(
        store
            .login_tokens_for_user("u-sato")
            .await
            .unwrap()
            .is_empty(),
        "no token for sato"
    );

    // Tanaka on Tanaka's laptop: a token and a session.
    let seed = seed_login(&store, "u-tanaka", "LAPTOP-T").await;
    let res = LoginResult::from_frame(&redeem(&pki, &mine, &gw, &seed).await).unwrap();
    assert_eq!(res.user, "u-tanaka");
    assert_eq!(
        session(&pki, &mine, &gw, Some(&res.token)).await.kind,
        FrameKind::SessionAccepted
    );

    // A team laptop takes either of them.
    for user in ["u-sato", "u-tanaka"] {
        let seed = seed_login(&store, user, "LAPTOP-POOL").await;
        let f = redeem(&pki, &team, &gw, &seed).await;
        assert_eq!(
            f.kind,
            FrameKind::LoginResult,
            "{user}: {:?}",
            Refusal::from_frame(&f).ok()
        );
    }
}

fn audit_detail_of(r: &kakehashi_store::AuditRecord) -> serde_json::Value {
    r.detail_json().unwrap_or_default()
}
