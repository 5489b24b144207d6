//! The API test suite, run unchanged against every backend.

use std::collections::BTreeSet;

use kakehashi_store::{AnchorProblem, Checkpoint, CheckpointSource, CHECKPOINT_ACTION};
use kakehashi_store::{
    BcpScope, BcpSpec, BreakKind, Desk, DeskService, DeviceClass, DeviceSpec, DeviceStatus, Error,
    Hash256, LockState, LockoutRule, NewCredential, NewLoginCode, NewLoginToken, NewUser, PlanSpec,
    PlanStatus, Role, Segment, SessionEnd, SessionStart, Store,
};
use serde_json::json;

use crate::support::{audit, Db};

const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn roles(r: &[Role]) -> BTreeSet<Role> {
    r.iter().copied().collect()
}

async fn add_user(store: &Store, id: &str, dept: &str) {
    store
        .add_user(
            &NewUser {
                id: id.into(),
                name: format!("{id} 太郎"),
                department: dept.into(),
                roles: roles(&[Role::Staff]),
            },
            audit(T0, "user.add").subject(id),
        )
        .await
        .unwrap();
}

async fn add_device(store: &Store, id: &str, user: &str) {
    store
        .upsert_device(
            &DeviceSpec {
                id: id.into(),
                class: DeviceClass::Home,
                loaned_to: Some(user.into()),
                cert_serial: Some("01ab".into()),
            },
            audit(T0, "device.register").subject(id),
        )
        .await
        .unwrap();
}

async fn head(store: &Store) -> i64 {
    store.audit_head().await.unwrap().0
}

async fn actions(store: &Store) -> Vec<String> {
    store
        .audit_page(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect()
}

pub async fn users(db: &Db) {
    let store = db.open().await;
    let u = store
        .add_user(
            &NewUser {
                id: "yamada".into(),
                name: "山田 太郎".into(),
                department: "総務課".into(),
                roles: roles(&[Role::Staff, Role::Chief]),
            },
            audit(T0, "user.add").subject("yamada"),
        )
        .await
        .unwrap();
    assert_eq!(u.created, T0);
    assert!(u.has_role(Role::Chief) && !u.disabled);
    add_user(&store, "abe", "税務課").await;

    let got = store.get_user("yamada").await.unwrap().unwrap();
    assert_eq!(got, u);
    assert!(store.get_user("nobody").await.unwrap().is_none());
    let ids: Vec<_> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(ids, ["abe", "yamada"]);
    let dept = store.list_users_in("総務課").await.unwrap();
    assert_eq!(dept.len(), 1);
    assert_eq!(dept[0].id, "yamada");

    // Refused changes write no audit record.
    let before = head(&store).await;
    let dup = store
        .add_user(
            &NewUser {
                id: "yamada".into(),
                name: "x".into(),
                department: "x".into(),
                roles: BTreeSet::new(),
            },
            audit(T0, "user.add"),
        )
        .await;
    assert!(
        matches!(dup, Err(Error::AlreadyExists { what: "user" })),
        "{dup:?}"
    );
    let bad = store
        .add_user(
            &NewUser {
                id: "bad id".into(),
                name: "x".into(),
                department: "x".into(),
                roles: BTreeSet::new(),
            },
            audit(T0, "user.add"),
        )
        .await;
    assert!(matches!(bad, Err(Error::Invalid { .. })), "{bad:?}");
    assert_eq!(head(&store).await, before);

    store
        .set_user_disabled("abe", true, audit(T0 + 1, "user.disable").subject("abe"))
        .await
        .unwrap();
    assert!(store.get_user("abe").await.unwrap().unwrap().disabled);
    store
        .set_user_roles(
            "abe",
            &roles(&[Role::Officer, Role::Operator]),
            audit(T0 + 2, "user.roles").subject("abe"),
        )
        .await
        .unwrap();
    let abe = store.get_user("abe").await.unwrap().unwrap();
    assert_eq!(abe.roles, roles(&[Role::Operator, Role::Officer]));
    assert!(matches!(
        store
            .set_user_disabled("ghost", true, audit(T0, "user.disable"))
            .await,
        Err(Error::NotFound { what: "user" })
    ));
    assert!(matches!(
        store
            .set_user_roles("ghost", &BTreeSet::new(), audit(T0, "user.roles"))
            .await,
        Err(Error::NotFound { what: "user" })
    ));
    // A transfer: new name and department, same id and roles.
    store
        .set_user_profile(
            "abe",
            "阿部 次郎",
            "税務課",
            audit(T0 + 3, "user.update").subject("abe"),
        )
        .await
        .unwrap();
    let abe = store.get_user("abe").await.unwrap().unwrap();
    assert_eq!(
        (abe.name.as_str(), abe.department.as_str()),
        ("阿部 次郎", "税務課")
    );
    assert_eq!(abe.roles, roles(&[Role::Operator, Role::Officer]));
    assert_eq!(store.list_users_in("税務課").await.unwrap().len(), 1);
    assert!(matches!(
        store
            .set_user_profile("ghost", "x", "y", audit(T0, "user.update"))
            .await,
        Err(Error::NotFound { what: "user" })
    ));
    assert!(matches!(
        store
            .set_user_profile("abe", "", "y", audit(T0, "user.update"))
            .await,
        Err(Error::Invalid { .. })
    ));
    assert_eq!(
        actions(&store).await,
        [
            "user.add",
            "user.add",
            "user.disable",
            "user.roles",
            "user.update"
        ]
    );
    assert!(store.verify_audit().await.unwrap().is_intact());
}

pub async fn credentials(db: &Db) {
    let store = db.open().await;
    add_user(&store, "u1", "d").await;
    let new = NewCredential {
        cred_id: vec![1, 2, 3, 255],
        user_id: "u1".into(),
        passkey: r#"{"cred":{"counter":0}}"#.into(),
        counter: 0,
        attested: true,
    };
    let c = store
        .add_credential(&new, audit(T0 + 1, "credential.add").subject("u1"))
        .await
        .unwrap();
    assert_eq!((c.created, c.last_used, c.attested), (T0 + 1, None, true));
    let dup = store
        .add_credential(&new, audit(T0, "credential.add"))
        .await;
    assert!(matches!(dup, Err(Error::AlreadyExists { .. })), "{dup:?}");
    let orphan = NewCredential {
        cred_id: vec![9],
        user_id: "ghost".into(),
        ..new.clone()
    };
    let r = store
        .add_credential(&orphan, audit(T0, "credential.add"))
        .await;
    assert!(matches!(r, Err(Error::UnknownReference { .. })), "{r:?}");
    let not_json = NewCredential {
        cred_id: vec![8],
        passkey: "not json".into(),
        ..new.clone()
    };
    assert!(matches!(
        store
            .add_credential(&not_json, audit(T0, "credential.add"))
            .await,
        Err(Error::Invalid { .. })
    ));
    store
        .add_credential(
            &NewCredential {
                cred_id: vec![7; 64],
                attested: false,
                ..new.clone()
            },
            audit(T0 + 2, "credential.add"),
        )
        .await
        .unwrap();

    let list = store.credentials_for_user("u1").await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0], c);
    store
        .update_credential(
            &[1, 2, 3, 255],
            7,
            r#"{"cred":{"counter":7}}"#,
            audit(T0 + 10, "login.ok").subject("u1"),
        )
        .await
        .unwrap();
    let c2 = store
        .get_credential(&[1, 2, 3, 255])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c2.counter, 7);
    assert_eq!(c2.last_used, Some(T0 + 10));
    assert!(c2.passkey.contains('7'));
    assert!(matches!(
        store
            .update_credential(&[0], 1, "{}", audit(T0, "login.ok"))
            .await,
        Err(Error::NotFound { .. })
    ));

    // Counters only move forward: the same or a lower counter is a cloned
    // credential, refused without any change or audit record.
    let before = head(&store).await;
    for back in [7, 6, 0] {
        let r = store
            .update_credential(&[1, 2, 3, 255], back, "{}", audit(T0 + 20, "login.ok"))
            .await;
        assert!(
            matches!(r, Err(Error::CounterRegression { stored: 7, presented }) if presented == back),
            "{r:?}"
        );
    }
    assert_eq!(head(&store).await, before);
    assert_eq!(
        store
            .get_credential(&[1, 2, 3, 255])
            .await
            .unwrap()
            .unwrap(),
        c2,
        "unchanged"
    );
    // An authenticator without a counter (always 0) is accepted.
    store
        .update_credential(&[7; 64], 0, "{}", audit(T0 + 21, "login.ok"))
        .await
        .unwrap();
    // Two assertions racing with one counter value: exactly one is saved.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .update_credential(
                    &[1, 2, 3, 255],
                    8,
                    "{}",
                    audit(T0 + 30, "login.ok").subject(format!("try{i}")),
                )
                .await
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(()) => ok += 1,
            Err(Error::CounterRegression {
                stored: 8,
                presented: 8,
            }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 1);
    store
        .delete_credential(&[1, 2, 3, 255], audit(T0 + 11, "credential.delete"))
        .await
        .unwrap();
    assert!(store
        .get_credential(&[1, 2, 3, 255])
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        store
            .delete_credential(&[1, 2, 3, 255], audit(T0, "credential.delete"))
            .await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store.credentials_for_user("u1").await.unwrap().len(), 1);
}

pub async fn devices(db: &Db) {
    let store = db.open().await;
    add_user(&store, "u1", "d").await;
    add_user(&store, "u2", "d").await;
    let d = store
        .upsert_device(
            &DeviceSpec {
                id: "LT-0001".into(),
                class: DeviceClass::Home,
                loaned_to: Some("u1".into()),
                cert_serial: Some("0a".into()),
            },
            audit(T0 + 1, "device.register"),
        )
        .await
        .unwrap();
    assert_eq!((d.status, d.created), (DeviceStatus::Active, T0 + 1));
    store
        .set_device_status(
            "LT-0001",
            DeviceStatus::Blocked,
            audit(T0 + 2, "device.block"),
        )
        .await
        .unwrap();
    // Re-registering (new certificate, new holder) never unblocks.
    let d2 = store
        .upsert_device(
            &DeviceSpec {
                id: "LT-0001".into(),
                class: DeviceClass::Mobile,
                loaned_to: Some("u2".into()),
                cert_serial: Some("0b".into()),
            },
            audit(T0 + 3, "device.register"),
        )
        .await
        .unwrap();
    assert_eq!(d2.status, DeviceStatus::Blocked);
    assert_eq!(d2.created, T0 + 1);
    assert_eq!(d2.class, DeviceClass::Mobile);
    assert_eq!(d2.cert_serial.as_deref(), Some("0b"));
    assert_eq!(store.get_device("LT-0001").await.unwrap().unwrap(), d2);
    add_device(&store, "LT-0002", "u1").await;
    let ids: Vec<_> = store
        .list_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["LT-0001", "LT-0002"]);
    let mine = store.devices_loaned_to("u1").await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, "LT-0002");
    for s in [
        DeviceStatus::Lost,
        DeviceStatus::Revoked,
        DeviceStatus::Active,
    ] {
        store
            .set_device_status("LT-0002", s, audit(T0 + 4, "device.status"))
            .await
            .unwrap();
        assert_eq!(
            store.get_device("LT-0002").await.unwrap().unwrap().status,
            s
        );
    }
    assert!(matches!(
        store
            .set_device_status("nope", DeviceStatus::Blocked, audit(T0, "device.block"))
            .await,
        Err(Error::NotFound { .. })
    ));
    let r = store
        .upsert_device(
            &DeviceSpec {
                id: "LT-0003".into(),
                class: DeviceClass::Satellite,
                loaned_to: Some("ghost".into()),
                cert_serial: None,
            },
            audit(T0, "device.register"),
        )
        .await;
    assert!(matches!(r, Err(Error::UnknownReference { .. })), "{r:?}");
    assert!(store.get_device("LT-0003").await.unwrap().is_none());
}

pub async fn desks(db: &Db) {
    let store = db.open().await;
    add_user(&store, "u1", "総務課").await;
    add_user(&store, "u2", "総務課").await;
    let desk = Desk {
        id: "DESK-1234".into(),
        department: "総務課".into(),
        level: 2,
        segment: Segment::Lgwan,
        service: DeskService::Rdp,
        owners: ["u1".to_string()].into(),
    };
    store.add_desk(&desk, audit(T0, "desk.add")).await.unwrap();
    assert_eq!(store.get_desk("DESK-1234").await.unwrap().unwrap(), desk);
    assert!(matches!(
        store.add_desk(&desk, audit(T0, "desk.add")).await,
        Err(Error::AlreadyExists { what: "desk" })
    ));
    // An unknown owner rolls back the whole desk.
    let before = head(&store).await;
    let bad = Desk {
        id: "DESK-9".into(),
        owners: ["ghost".to_string()].into(),
        ..desk.clone()
    };
    let r = store.add_desk(&bad, audit(T0, "desk.add")).await;
    assert!(matches!(r, Err(Error::UnknownReference { .. })), "{r:?}");
    assert!(store.get_desk("DESK-9").await.unwrap().is_none());
    assert_eq!(head(&store).await, before);
    for level in [0, 4] {
        let r = store
            .add_desk(
                &Desk {
                    id: "DESK-L".into(),
                    level,
                    ..desk.clone()
                },
                audit(T0, "desk.add"),
            )
            .await;
        assert!(matches!(r, Err(Error::Invalid { .. })), "{r:?}");
    }

    let changed = Desk {
        level: 3,
        segment: Segment::Internet,
        // An officer registers it as a non-RDP service.
        service: DeskService::Other,
        owners: ["u1".to_string(), "u2".to_string()].into(),
        ..desk.clone()
    };
    store
        .set_desk(&changed, audit(T0 + 1, "desk.set"))
        .await
        .unwrap();
    assert_eq!(store.get_desk("DESK-1234").await.unwrap().unwrap(), changed);
    let other = Desk {
        id: "DESK-0001".into(),
        department: "税務課".into(),
        level: 1,
        segment: Segment::Mynumber,
        service: DeskService::Rdp,
        owners: ["u2".to_string()].into(),
    };
    store.add_desk(&other, audit(T0, "desk.add")).await.unwrap();
    assert_eq!(
        store.list_desks().await.unwrap(),
        [other.clone(), changed.clone()]
    );
    assert_eq!(
        store.desks_owned_by("u1").await.unwrap(),
        std::slice::from_ref(&changed)
    );
    assert_eq!(store.desks_owned_by("u2").await.unwrap(), [other, changed]);
    assert!(matches!(
        store
            .set_desk(
                &Desk {
                    id: "DESK-NONE".into(),
                    ..desk
                },
                audit(T0, "desk.set")
            )
            .await,
        Err(Error::NotFound { what: "desk" })
    ));
}

pub async fn enrollment_codes(db: &Db) {
    let store = db.open().await;
    add_user(&store, "u1", "d").await;
    let code = Hash256::digest(b"ABCD-EFGH-IJKL");
    store
        .create_enrollment_code(&code, "u1", T0 + 600, audit(T0, "enroll.code"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_enrollment_code(&code, "u1", T0 + 600, audit(T0, "enroll.code"))
            .await,
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        store
            .create_enrollment_code(
                &Hash256::digest(b"x"),
                "ghost",
                T0 + 600,
                audit(T0, "enroll.code")
            )
            .await,
        Err(Error::UnknownReference { .. })
    ));
    assert!(matches!(
        store
            .create_enrollment_code(&Hash256::digest(b"y"), "u1", T0, audit(T0, "enroll.code"))
            .await,
        Err(Error::Invalid { .. })
    ));
    // A read-only lookup: it neither spends the code nor logs anything.
    let before = head(&store).await;
    for _ in 0..2 {
        assert_eq!(
            store.enrollment_code_user(&code, T0 + 1).await.unwrap(),
            "u1"
        );
    }
    assert!(matches!(
        store
            .enrollment_code_user(&Hash256::digest(b"unknown"), T0 + 1)
            .await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.enrollment_code_user(&code, T0 + 600).await,
        Err(Error::Expired { .. })
    ));
    assert_eq!(head(&store).await, before, "lookups log nothing");

    let cred = |id: u8, user: &str| NewCredential {
        cred_id: vec![id; 16],
        user_id: user.into(),
        passkey: r#"{"cred":{"counter":0}}"#.into(),
        counter: 0,
        attested: false,
    };
    let enroll = |c: NewCredential, code: Hash256, at: i64| {
        let store = store.clone();
        async move {
            store
                .enroll_credential(&code, &c, audit(at, "enroll").subject("u1"))
                .await
        }
    };
    // Failures spend nothing and log nothing: an unknown code, another
    // user's code, a credential id that is already stored.
    add_user(&store, "u2", "d").await;
    store
        .add_credential(&cred(9, "u1"), audit(T0, "credential.add"))
        .await
        .unwrap();
    let before = head(&store).await;
    assert!(matches!(
        enroll(cred(1, "u1"), Hash256::digest(b"unknown"), T0 + 1).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        enroll(cred(1, "u2"), code, T0 + 1).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        enroll(cred(9, "u1"), code, T0 + 1).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(
        head(&store).await,
        before,
        "a failed enrollment logs nothing"
    );
    assert_eq!(
        store.enrollment_code_user(&code, T0 + 1).await.unwrap(),
        "u1"
    );
    assert!(store.get_credential(&[1; 16]).await.unwrap().is_none());

    // Success: the credential is stored and the code spent, in one record.
    let c = enroll(cred(1, "u1"), code, T0 + 2).await.unwrap();
    assert_eq!((c.user_id.as_str(), c.created), ("u1", T0 + 2));
    assert_eq!(head(&store).await, before + 1);
    assert_eq!(store.get_credential(&[1; 16]).await.unwrap(), Some(c));
    assert!(matches!(
        store.enrollment_code_user(&code, T0 + 3).await,
        Err(Error::AlreadyUsed { .. })
    ));
    assert!(matches!(
        enroll(cred(2, "u1"), code, T0 + 3).await,
        Err(Error::AlreadyUsed { .. })
    ));

    // Expiry is exclusive: at expires_at the code is dead.
    let late = Hash256::digest(b"late");
    store
        .create_enrollment_code(&late, "u1", T0 + 100, audit(T0, "enroll.code"))
        .await
        .unwrap();
    assert!(matches!(
        enroll(cred(3, "u1"), late, T0 + 100).await,
        Err(Error::Expired { .. })
    ));
    assert!(store.get_credential(&[3; 16]).await.unwrap().is_none());

    // Parallel ceremonies with one code, each with its own credential:
    // exactly one is stored.
    let race = Hash256::digest(b"race");
    store
        .create_enrollment_code(&race, "u1", T0 + 600, audit(T0, "enroll.code"))
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8u8 {
        tasks.spawn(enroll(cred(100 + i, "u1"), race, T0 + 5));
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(c) => {
                assert_eq!(c.user_id, "u1");
                ok += 1;
            }
            Err(Error::AlreadyUsed { .. }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 1);
    let stored = store.credentials_for_user("u1").await.unwrap();
    let raced = stored.iter().filter(|c| c.cred_id[0] >= 100).count();
    assert_eq!(raced, 1, "one credential per code");
}

pub async fn login_tokens(db: &Db) {
    let store = db.open().await;
    add_user(&store, "u1", "d").await;
    add_user(&store, "u2", "d").await;
    add_device(&store, "LT-A", "u1").await;
    add_device(&store, "LT-B", "u1").await;
    let tok = |n: &str, user: &str, dev: &str, at: i64| {
        (
            NewLoginToken {
                token_hash: Hash256::digest(n),
                user_id: user.into(),
                device_id: dev.into(),
                cert_serial: "0a".into(),
                expires_at: at + 36_000,
            },
            audit(at, "login.redeem").subject(user),
        )
    };
    let (t1, a1) = tok("t1", "u1", "LT-A", T0);
    let stored = store.create_login_token(&t1, a1).await.unwrap();
    assert_eq!(stored.issued_at, T0);
    let v = store
        .valid_login_token(&t1.token_hash, T0 + 10)
        .await
        .unwrap();
    assert_eq!(v, stored);
    assert_eq!(v.device_id, "LT-A");
    assert!(matches!(
        store.valid_login_token(&t1.token_hash, T0 + 36_000).await,
        Err(Error::Expired { .. })
    ));
    assert!(matches!(
        store.valid_login_token(&Hash256::digest("nope"), T0).await,
        Err(Error::NotFound { .. })
    ));
    let (bad, a) = tok("t-bad", "u1", "LT-GHOST", T0);
    assert!(matches!(
        store.create_login_token(&bad, a).await,
        Err(Error::UnknownReference { .. })
    ));

    assert!(store
        .revoke_login_token(&t1.token_hash, audit(T0 + 1, "logout"))
        .await
        .unwrap());
    assert!(!store
        .revoke_login_token(&t1.token_hash, audit(T0 + 2, "logout"))
        .await
        .unwrap());
    assert!(matches!(
        store.valid_login_token(&t1.token_hash, T0 + 10).await,
        Err(Error::Revoked { .. })
    ));
    assert!(matches!(
        store
            .revoke_login_token(&Hash256::digest("nope"), audit(T0, "logout"))
            .await,
        Err(Error::NotFound { .. })
    ));

    for (n, user, dev, at) in [
        ("t2", "u1", "LT-A", T0 + 100),
        ("t3", "u1", "LT-B", T0 + 200),
        ("t4", "u1", "LT-B", T0 + 300),
        ("t5", "u2", "LT-A", T0 + 400),
    ] {
        let (t, a) = tok(n, user, dev, at);
        store.create_login_token(&t, a).await.unwrap();
    }
    let list = store.login_tokens_for_user("u1").await.unwrap();
    let issued: Vec<_> = list.iter().map(|t| t.issued_at).collect();
    assert_eq!(issued, [T0 + 300, T0 + 200, T0 + 100, T0]);
    assert_eq!(
        store
            .revoke_login_tokens_for_device("LT-B", audit(T0 + 500, "device.block"))
            .await
            .unwrap(),
        2
    );
    assert!(store
        .valid_login_token(&Hash256::digest("t2"), T0 + 600)
        .await
        .is_ok());
    assert!(store
        .valid_login_token(&Hash256::digest("t3"), T0 + 600)
        .await
        .is_err());
    assert_eq!(
        store
            .revoke_login_tokens_for_user("u1", audit(T0 + 600, "user.disable"))
            .await
            .unwrap(),
        1
    );
    assert!(store
        .valid_login_token(&Hash256::digest("t2"), T0 + 700)
        .await
        .is_err());
    assert!(store
        .valid_login_token(&Hash256::digest("t5"), T0 + 700)
        .await
        .is_ok());
    let t4 = store
        .get_login_token(&Hash256::digest("t4"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t4.revoked_at, Some(T0 + 500));
}

pub async fn login_codes(db: &Db) {
    let store = db.open().await;
    add_user(&store, "u1", "d").await;
    // RFC 7636 appendix B.
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let c = NewLoginCode {
        code_hash: Hash256::digest("code-1"),
        user_id: "u1".into(),
        pkce_challenge: challenge.into(),
        device_id: "PC-1".into(),
        expires_at: T0 + 60,
    };
    store
        .create_login_code(&c, audit(T0, "login.code"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_login_code(
                &NewLoginCode {
                    code_hash: Hash256::digest("code-2"),
                    pkce_challenge: "plain".into(),
                    ..c.clone()
                },
                audit(T0, "login.code")
            )
            .await,
        Err(Error::Invalid { .. })
    ));
    let got = store
        .consume_login_code(&c.code_hash, audit(T0 + 5, "login.code.redeem"))
        .await
        .unwrap();
    assert_eq!(got.user_id, "u1");
    assert_eq!(got.device_id.as_deref(), Some("PC-1"));
    assert_eq!(got.used_at, Some(T0 + 5));
    assert!(got.pkce_matches(verifier));
    assert!(!got.pkce_matches("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK"));
    assert!(matches!(
        store
            .consume_login_code(&c.code_hash, audit(T0 + 6, "login.code.redeem"))
            .await,
        Err(Error::AlreadyUsed { .. })
    ));
    let late = NewLoginCode {
        code_hash: Hash256::digest("code-3"),
        ..c.clone()
    };
    store
        .create_login_code(&late, audit(T0, "login.code"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .consume_login_code(&late.code_hash, audit(T0 + 60, "login.code.redeem"))
            .await,
        Err(Error::Expired { .. })
    ));
    assert!(matches!(
        store
            .consume_login_code(&Hash256::digest("nope"), audit(T0, "login.code.redeem"))
            .await,
        Err(Error::NotFound { .. })
    ));
}

pub async fn lockouts(db: &Db) {
    let rule = LockoutRule {
        max_failures: 3,
        window_secs: 60,
        lockout_secs: 300,
    };
    let source_rule = LockoutRule {
        max_failures: 5,
        ..rule
    };
    {
        let store = db.open().await;
        let fail = |at: i64| audit(at, "login.failed").reason("bad_assertion");
        assert_eq!(
            store
                .record_failure("user:u1", &rule, fail(T0))
                .await
                .unwrap(),
            LockState::Open { failures: 1 }
        );
        assert_eq!(
            store
                .record_failures(
                    &[("user:u1", rule), ("source:10.0.0.1", source_rule)],
                    fail(T0 + 1)
                )
                .await
                .unwrap(),
            [
                LockState::Open { failures: 2 },
                LockState::Open { failures: 1 }
            ]
        );
        let s = store
            .record_failure("user:u1", &rule, fail(T0 + 2))
            .await
            .unwrap();
        assert_eq!(s, LockState::Locked { until: T0 + 302 });
        assert!(s.is_locked());
        // Failing while locked neither counts nor extends.
        assert_eq!(
            store
                .record_failure("user:u1", &rule, fail(T0 + 100))
                .await
                .unwrap(),
            LockState::Locked { until: T0 + 302 }
        );
        assert_eq!(
            store.is_locked("user:u1", T0 + 10).await.unwrap(),
            Some(T0 + 302)
        );
        assert_eq!(
            store.is_locked("source:10.0.0.1", T0 + 10).await.unwrap(),
            None
        );
        assert_eq!(store.is_locked("never", T0).await.unwrap(), None);
        // A window that ran out starts over.
        store
            .record_failure("enroll:10.0.0.2", &rule, fail(T0))
            .await
            .unwrap();
        assert_eq!(
            store
                .record_failure("enroll:10.0.0.2", &rule, fail(T0 + 61))
                .await
                .unwrap(),
            LockState::Open { failures: 1 }
        );
        assert!(matches!(
            store
                .record_failure(
                    "k",
                    &LockoutRule {
                        max_failures: 0,
                        ..rule
                    },
                    fail(T0)
                )
                .await,
            Err(Error::Invalid { .. })
        ));
        // Dropped without close: the counters are in the database.
    }
    let store = db.open().await;
    assert_eq!(
        store.is_locked("user:u1", T0 + 301).await.unwrap(),
        Some(T0 + 302)
    );
    assert_eq!(store.is_locked("user:u1", T0 + 302).await.unwrap(), None);
    store
        .reset_lockouts(
            &["user:u1", "source:10.0.0.1"],
            audit(T0 + 303, "lockout.reset"),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .record_failure("user:u1", &rule, audit(T0 + 304, "login.failed"))
            .await
            .unwrap(),
        LockState::Open { failures: 1 }
    );
}

pub async fn telework_plans(db: &Db) {
    let store = db.open().await;
    add_user(&store, "u1", "総務課").await;
    add_user(&store, "u2", "総務課").await;
    add_user(&store, "u3", "税務課").await;
    let spec = |user: &str, date: &str| PlanSpec {
        user_id: user.into(),
        date: date.into(),
        start_min: 510,
        end_min: 1035,
        place: "自宅".into(),
    };
    let p1 = store
        .submit_plan(&spec("u1", "2026-01-05"), audit(T0, "plan.submit"))
        .await
        .unwrap();
    assert_eq!(p1.status, PlanStatus::Submitted);
    assert!(p1.id.starts_with("plan-"));
    let p2 = store
        .submit_plan(&spec("u1", "2026-01-06"), audit(T0, "plan.submit"))
        .await
        .unwrap();
    let p3 = store
        .submit_plan(&spec("u2", "2026-01-05"), audit(T0, "plan.submit"))
        .await
        .unwrap();
    store
        .submit_plan(&spec("u3", "2026-01-05"), audit(T0, "plan.submit"))
        .await
        .unwrap();
    for bad in [
        PlanSpec {
            date: "2026-02-30".into(),
            ..spec("u1", "")
        },
        PlanSpec {
            start_min: 600,
            end_min: 600,
            ..spec("u1", "2026-01-05")
        },
        PlanSpec {
            end_min: 1441,
            ..spec("u1", "2026-01-05")
        },
    ] {
        assert!(matches!(
            store.submit_plan(&bad, audit(T0, "plan.submit")).await,
            Err(Error::Invalid { .. })
        ));
    }
    assert!(matches!(
        store
            .submit_plan(&spec("ghost", "2026-01-05"), audit(T0, "plan.submit"))
            .await,
        Err(Error::UnknownReference { .. })
    ));

    let chief = |at| kakehashi_store::Audit::new(at, "kacho", "plan.decide");
    let d1 = store
        .decide_plan(&p1.id, true, chief(T0 + 10))
        .await
        .unwrap();
    assert_eq!(d1.status, PlanStatus::Approved);
    assert_eq!(d1.decided_by.as_deref(), Some("kacho"));
    assert_eq!(d1.decided_at, Some(T0 + 10));
    assert!(d1.covers(510) && d1.covers(1034) && !d1.covers(1035) && !d1.covers(509));
    let d3 = store
        .decide_plan(&p3.id, false, chief(T0 + 11))
        .await
        .unwrap();
    assert_eq!(d3.status, PlanStatus::Rejected);
    assert!(!d3.covers(600));
    assert!(matches!(
        store.decide_plan(&p1.id, false, chief(T0 + 12)).await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        store.decide_plan("plan-nope", true, chief(T0)).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store.get_plan(&p1.id).await.unwrap().unwrap(), d1);

    let mine = store.plans_for_user("u1").await.unwrap();
    assert_eq!(
        mine.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        [p2.id.clone(), p1.id.clone()]
    );
    let dept = store.plans_for_department("総務課").await.unwrap();
    assert_eq!(dept.len(), 3);
    assert!(dept.iter().all(|p| p.user_id != "u3"));
    assert_eq!(
        store.find_approved_plans("u1", "2026-01-05").await.unwrap(),
        [d1]
    );
    assert!(store
        .find_approved_plans("u1", "2026-01-06")
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .find_approved_plans("u2", "2026-01-05")
        .await
        .unwrap()
        .is_empty());
}

pub async fn bcp(db: &Db) {
    let store = db.open().await;
    let officer = |at, action| kakehashi_store::Audit::new(at, "officer1", action);
    let all = store
        .declare_bcp(
            &BcpSpec {
                scope: BcpScope::All,
                reason: "大雪".into(),
                relax: json!({"plan_required": false, "hours": false}),
                starts_at: T0,
                ends_at: T0 + 3600,
            },
            officer(T0, "bcp.declare"),
        )
        .await
        .unwrap();
    assert_eq!(all.declared_by, "officer1");
    let dept = store
        .declare_bcp(
            &BcpSpec {
                scope: BcpScope::Department("総務課".into()),
                reason: "停電".into(),
                relax: json!({"plan_required": false}),
                starts_at: T0 + 1800,
                ends_at: T0 + 7200,
            },
            officer(T0, "bcp.declare"),
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .declare_bcp(
                &BcpSpec {
                    scope: BcpScope::All,
                    reason: "x".into(),
                    relax: json!({}),
                    starts_at: T0,
                    ends_at: T0,
                },
                officer(T0, "bcp.declare")
            )
            .await,
        Err(Error::Invalid { .. })
    ));
    let ids = |v: Vec<kakehashi_store::Bcp>| v.into_iter().map(|b| b.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.active_bcp(T0 - 1).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(ids(store.active_bcp(T0).await.unwrap()), [all.id.as_str()]);
    assert_eq!(
        ids(store.active_bcp(T0 + 1800).await.unwrap()),
        [all.id.clone(), dept.id.clone()]
    );
    assert_eq!(
        ids(store.active_bcp(T0 + 3600).await.unwrap()),
        [dept.id.as_str()]
    );
    let got = store.active_bcp(T0 + 3600).await.unwrap().remove(0);
    assert_eq!(got.relax, json!({"plan_required": false}));
    assert!(got.scope.covers("総務課") && !got.scope.covers("税務課"));
    assert!(got.is_active(T0 + 3600));

    let ended = store
        .end_bcp(&dept.id, officer(T0 + 4000, "bcp.end"))
        .await
        .unwrap();
    assert_eq!(ended.ended_at, Some(T0 + 4000));
    assert_eq!(ended.ended_by.as_deref(), Some("officer1"));
    assert!(!ended.is_active(T0 + 4000));
    assert!(store.active_bcp(T0 + 4000).await.unwrap().is_empty());
    assert_eq!(
        ids(store.active_bcp(T0 + 3999).await.unwrap()),
        [dept.id.as_str()]
    );
    assert!(matches!(
        store.end_bcp(&dept.id, officer(T0 + 4001, "bcp.end")).await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        store.end_bcp("bcp-nope", officer(T0, "bcp.end")).await,
        Err(Error::NotFound { .. })
    ));
    let list = store.list_bcp().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1], all);
}

pub async fn policies(db: &Db) {
    let store = db.open().await;
    assert!(store.current_policy().await.unwrap().is_none());
    let v1 = store
        .put_policy(
            "[[rule]]\nid = \"a\"\n",
            kakehashi_store::Audit::new(T0, "officer1", "policy.put"),
        )
        .await
        .unwrap();
    assert_eq!(
        (v1.version, v1.author.as_str(), v1.created),
        (1, "officer1", T0)
    );
    let v2 = store
        .put_policy(
            "# 改訂\n[[rule]]\nid = \"b\"\n",
            kakehashi_store::Audit::new(T0 + 5, "officer2", "policy.put"),
        )
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(store.current_policy().await.unwrap().unwrap(), v2);
    assert_eq!(store.policy_version(1).await.unwrap().unwrap(), v1);
    assert!(store.policy_version(3).await.unwrap().is_none());
    assert!(matches!(
        store.put_policy("", audit(T0, "policy.put")).await,
        Err(Error::Invalid { .. })
    ));
}

pub async fn sessions(db: &Db) {
    let store = db.open().await;
    let start = |id: &str, user: &str| SessionStart {
        id: id.into(),
        user_id: user.into(),
        device_id: "LT-A".into(),
        desk_id: "DESK-1".into(),
        class: DeviceClass::Home,
        level: 2,
        transport: "quic".into(),
        gateway: if user == "u2" { "gw2" } else { "gw1" }.into(),
    };
    let s1 = store
        .start_session(&start("s1", "u1"), audit(T0 + 100, "session.start"))
        .await
        .unwrap();
    assert_eq!(s1.started_at, T0 + 100);
    store
        .start_session(&start("s2", "u1"), audit(T0 + 200, "session.start"))
        .await
        .unwrap();
    store
        .start_session(&start("s3", "u2"), audit(T0 + 1000, "session.start"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .start_session(&start("s1", "u1"), audit(T0, "session.start"))
            .await,
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        store
            .start_session(
                &SessionStart {
                    level: 4,
                    ..start("s9", "u1")
                },
                audit(T0, "session.start")
            )
            .await,
        Err(Error::Invalid { .. })
    ));
    let end = SessionEnd {
        reason: "client_closed".into(),
        bytes_up: 1234,
        bytes_down: 5_000_000_000,
    };
    let e1 = store
        .end_session("s1", &end, audit(T0 + 500, "session.end"))
        .await
        .unwrap();
    assert_eq!(e1.ended_at, Some(T0 + 500));
    assert_eq!(e1.end_reason.as_deref(), Some("client_closed"));
    assert_eq!((e1.bytes_up, e1.bytes_down), (1234, 5_000_000_000));
    assert_eq!(store.get_session("s1").await.unwrap().unwrap(), e1);
    assert!(matches!(
        store
            .end_session("s1", &end, audit(T0 + 501, "session.end"))
            .await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        store
            .end_session("nope", &end, audit(T0, "session.end"))
            .await,
        Err(Error::NotFound { .. })
    ));
    let ids =
        |v: Vec<kakehashi_store::SessionRecord>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.sessions_between(T0, T0 + 100).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(store.sessions_between(T0, T0 + 101).await.unwrap()),
        ["s1"]
    );
    assert_eq!(
        ids(store.sessions_between(T0 + 500, T0 + 2000).await.unwrap()),
        ["s2", "s3"]
    );
    assert_eq!(
        ids(store.sessions_between(T0 + 499, T0 + 2000).await.unwrap()),
        ["s1", "s2", "s3"]
    );
    assert_eq!(ids(store.open_sessions().await.unwrap()), ["s2", "s3"]);
    // Rows belong to the gateway carrying them.
    assert_eq!(
        ids(store.open_sessions_of(Some("gw1")).await.unwrap()),
        ["s2"]
    );
    assert_eq!(
        ids(store.open_sessions_of(Some("gw2")).await.unwrap()),
        ["s3"]
    );
    assert!(store.open_sessions_of(None).await.unwrap().is_empty());
    assert_eq!(
        store.open_session_counts().await.unwrap(),
        [(Some("gw1".to_string()), 1), (Some("gw2".to_string()), 1)]
    );
    // Progress is saved for live sessions only; the end's figures stand.
    store
        .save_session_progress(&[("s2".into(), 10, 20), ("s1".into(), 1, 1)])
        .await
        .unwrap();
    let s2 = store.get_session("s2").await.unwrap().unwrap();
    assert_eq!((s2.bytes_up, s2.bytes_down, s2.ended_at), (10, 20, None));
    let s1 = store.get_session("s1").await.unwrap().unwrap();
    assert_eq!((s1.bytes_up, s1.bytes_down), (1234, 5_000_000_000));

    // gw1's membership lapsed while s2 went on: another member closes s2
    // as lost; gw1, back, re-claims it (audited), then records its end.
    let lost = SessionEnd {
        reason: "gateway_lost".into(),
        bytes_up: 10,
        bytes_down: 20,
    };
    store
        .end_session("s2", &lost, audit(T0 + 600, "session.end"))
        .await
        .unwrap();
    // Another gateway, or a row not closed as lost, is not re-claimed.
    let live = vec!["s2".to_string(), "s3".to_string(), "s1".to_string()];
    assert!(store
        .reclaim_sessions("gw2", &live, T0, T0 + 610)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .reclaim_sessions("gw1", &live, T0 + 601, T0 + 610)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .reclaim_sessions("gw1", &[], T0, T0 + 610)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .reclaim_sessions("gw1", &live, T0, T0 + 610)
            .await
            .unwrap(),
        ["s2"]
    );
    assert_eq!(actions(&store).await.last().unwrap(), "session.resume");
    let s2 = store.get_session("s2").await.unwrap().unwrap();
    assert_eq!((s2.ended_at, s2.end_reason), (None, None));
    // Closed as lost again, and this time gw1's real end comes first: the
    // carrier's end replaces the closing; anyone else's end still conflicts.
    store
        .end_session("s2", &lost, audit(T0 + 620, "session.end"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .end_carried_session("s2", "gw2", &end, audit(T0 + 630, "session.end"))
            .await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        store
            .end_session("s2", &end, audit(T0 + 630, "session.end"))
            .await,
        Err(Error::Conflict { .. })
    ));
    let real = store
        .end_carried_session("s2", "gw1", &end, audit(T0 + 640, "session.end"))
        .await
        .unwrap();
    assert_eq!(real.ended_at, Some(T0 + 640));
    assert_eq!(real.end_reason.as_deref(), Some("client_closed"));
    assert_eq!((real.bytes_up, real.bytes_down), (1234, 5_000_000_000));
    // A survivor closes a member's row only while that member is lapsed,
    // by the database's clock, in the same statement.
    let spec = kakehashi_store::MemberSpec {
        id: "gw2".into(),
        laptop_addrs: vec!["gw2.example:4433".into()],
        agent_addrs: vec!["gw2.example:4434".into()],
    };
    let g = store
        .join_cluster(&spec, 10, audit(T0, "gateway.join"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .end_lapsed_session(
                "s3",
                "gw2",
                store.db_now().await.unwrap(),
                &lost,
                audit(T0 + 700, "session.end")
            )
            .await,
        Err(Error::Conflict { .. })
    ));
    let beat = kakehashi_store::Beat {
        now: T0,
        sessions: 1,
        agents: 0,
        feed_seq: 0,
    };
    assert!(store.heartbeat("gw2", g, &beat, -1).await.unwrap());
    let closed = store
        .end_lapsed_session(
            "s3",
            "gw2",
            store.db_now().await.unwrap(),
            &lost,
            audit(T0 + 701, "session.end"),
        )
        .await
        .unwrap();
    assert_eq!(closed.end_reason.as_deref(), Some("gateway_lost"));
    // Once ended for real, nothing re-claims or ends it again.
    assert!(store
        .reclaim_sessions("gw1", &live, T0, T0 + 650)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        store
            .end_carried_session("s2", "gw1", &end, audit(T0 + 660, "session.end"))
            .await,
        Err(Error::Conflict { .. })
    ));
}

/// Gateways starting together on an empty database seed the policy once.
pub async fn policy_seeding(db: &Db) {
    let stores = open_stores(db, 4).await;
    let mut tasks = Vec::new();
    for (i, store) in stores.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            store
                .seed_policy(
                    "[[rule]]\nid = \"seed\"\n",
                    kakehashi_store::Audit::new(T0, format!("gw{i}"), "policy.import"),
                )
                .await
                .unwrap()
        }));
    }
    let mut seeded = 0;
    for t in tasks {
        let (doc, by_me) = t.await.unwrap();
        assert_eq!(doc.version, 1);
        seeded += usize::from(by_me);
    }
    assert_eq!(seeded, 1, "exactly one gateway seeds");
    let store = db.open().await;
    assert_eq!(store.current_policy().await.unwrap().unwrap().version, 1);
    assert_eq!(
        actions(&store).await,
        ["policy.import"],
        "one audit record, not one per gateway"
    );
    // A store with a policy is never seeded again.
    let (doc, by_me) = store
        .seed_policy("other", audit(T0 + 1, "policy.import"))
        .await
        .unwrap();
    assert_eq!((doc.version, by_me), (1, false));
}

async fn open_stores(db: &Db, n: usize) -> Vec<Store> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(db.open().await);
    }
    v
}

/// Membership: join, heartbeat, expiry by the database clock, a newer
/// generation replacing an older one, leaving.
pub async fn membership(db: &Db) {
    let store = db.open().await;
    let spec = |id: &str| kakehashi_store::MemberSpec {
        id: id.into(),
        laptop_addrs: vec![format!("{id}.example:4433")],
        agent_addrs: vec![format!("{id}.example:4434"), "[::1]:4434".into()],
    };
    let g1 = store
        .join_cluster(&spec("gw1"), 10, audit(T0, "gateway.join"))
        .await
        .unwrap();
    assert_eq!(g1, 1);
    store
        .join_cluster(&spec("gw2"), 10, audit(T0, "gateway.join"))
        .await
        .unwrap();
    let (members, now) = store.members().await.unwrap();
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| m.alive(now)));
    assert_eq!(members[0].agent_addrs, ["gw1.example:4434", "[::1]:4434"]);
    // A heartbeat reports counts and the member's own clock.
    let beat = kakehashi_store::Beat {
        now: now + 300,
        sessions: 7,
        agents: 3,
        feed_seq: 42,
    };
    assert!(store.heartbeat("gw1", g1, &beat, 10).await.unwrap());
    let (members, _) = store.members().await.unwrap();
    let m = &members[0];
    assert_eq!((m.sessions, m.agents, m.feed_seq), (7, 3, 42));
    assert!((295..=305).contains(&m.clock_skew()), "{}", m.clock_skew());
    // Expired by the database clock (a TTL already past).
    assert!(store.heartbeat("gw2", 1, &beat, -1).await.unwrap());
    let (members, now) = store.members().await.unwrap();
    assert!(!members[1].alive(now));
    // A restart of gw1 is its next generation; the old one is told.
    let g2 = store
        .join_cluster(&spec("gw1"), 10, audit(T0, "gateway.join"))
        .await
        .unwrap();
    assert_eq!(g2, 2);
    assert!(!store.heartbeat("gw1", g1, &beat, 10).await.unwrap());
    assert!(store.heartbeat("gw1", g2, &beat, 10).await.unwrap());
    // Leaving: only the current generation, once.
    assert!(store
        .leave_cluster("gw1", g1, audit(T0, "gateway.leave"))
        .await
        .is_err());
    store
        .leave_cluster("gw1", g2, audit(T0, "gateway.leave"))
        .await
        .unwrap();
    let (members, now) = store.members().await.unwrap();
    assert!(!members[0].alive(now));
    assert!(members[0].left_at.is_some());
    assert!(
        !members[0].lapsed(now),
        "draining: its sessions are not reaped yet"
    );
    assert!(store.heartbeat("gw1", g2, &beat, 10).await.unwrap());
    assert!(members[1].lapsed(now));
    // Bad addresses are refused.
    let mut bad = spec("gw3");
    bad.agent_addrs = vec!["a,b:1".into()];
    assert!(matches!(
        store
            .join_cluster(&bad, 10, audit(T0, "gateway.join"))
            .await,
        Err(Error::Invalid { .. })
    ));
    assert_eq!(
        actions(&store).await,
        [
            "gateway.join",
            "gateway.join",
            "gateway.join",
            "gateway.leave"
        ],
        "joins and leaves are audited, heartbeats are not"
    );
}

// ------------------------------------------------------------ audit

/// Writes `n` varied records.
async fn fill_log(store: &Store, n: i64) {
    for i in 0..n {
        store
            .append_audit(
                audit(
                    T0 + i,
                    if i % 2 == 0 {
                        "login.ok"
                    } else {
                        "login.failed"
                    },
                )
                .subject(format!("user{i}"))
                .reason(if i % 2 == 0 {
                    ""
                } else {
                    "bad_assertion / 認証失敗"
                })
                .detail(json!({"i": i, "source": "192.0.2.1", "ja": "テスト"})),
            )
            .await
            .unwrap();
    }
}

pub async fn audit_chain(db: &Db) {
    let store = db.open().await;
    let empty = store.verify_audit().await.unwrap();
    assert_eq!((empty.records, empty.first_broken), (0, None));
    fill_log(&store, 10).await;
    add_user(&store, "u1", "d").await;
    let report = store.verify_audit().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.records, report.head_seq), (11, 11));

    let all = store.audit_page(0, 100).await.unwrap();
    assert_eq!(all.len(), 11);
    assert_eq!(all[0].prev_hash, Hash256::ZERO);
    for w in all.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    assert!(all.iter().all(|r| r.is_sealed()));
    assert_eq!(all[1].detail_json().unwrap()["ja"], "テスト");
    assert_eq!(all[1].reason, "bad_assertion / 認証失敗");
    assert_eq!(store.audit_head().await.unwrap(), (11, all[10].hash));
    let page = store.audit_page(3, 4).await.unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5, 6, 7]);
    let between = store.audit_between(T0 + 2, T0 + 5).await.unwrap();
    assert_eq!(between.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4, 5]);

    // The database itself refuses edits and deletions.
    assert!(
        !db.try_exec_raw("UPDATE audit SET actor = 'x' WHERE seq = 2")
            .await
    );
    assert!(!db.try_exec_raw("DELETE FROM audit WHERE seq = 2").await);
    assert!(store.verify_audit().await.unwrap().is_intact());
}

async fn tampered(db: &Db, sql: &str) -> kakehashi_store::VerifyReport {
    let store = db.open().await;
    fill_log(&store, 8).await;
    assert!(store.verify_audit().await.unwrap().is_intact());
    db.drop_audit_guards().await;
    db.exec_raw(sql).await;
    store.verify_audit().await.unwrap()
}

fn broken(r: &kakehashi_store::VerifyReport) -> (i64, BreakKind) {
    let b = r.first_broken.expect("a break");
    (b.seq, b.kind)
}

pub async fn audit_detects_edit(db: &Db) {
    let r = tampered(
        db,
        "UPDATE audit SET reason = 'nothing happened' WHERE seq = 4",
    )
    .await;
    assert_eq!(broken(&r), (4, BreakKind::Edited));
    assert_eq!(r.records, 3);
    assert_eq!(BreakKind::Edited.to_string(), "edited");
}

pub async fn audit_detects_delete(db: &Db) {
    let r = tampered(db, "DELETE FROM audit WHERE seq = 5").await;
    assert_eq!(broken(&r), (5, BreakKind::Deleted));
    assert_eq!(r.records, 4);
}

pub async fn audit_detects_tail_delete(db: &Db) {
    let r = tampered(db, "DELETE FROM audit WHERE seq >= 7").await;
    assert_eq!(broken(&r), (7, BreakKind::Deleted));
}

pub async fn audit_detects_reorder(db: &Db) {
    let r = tampered(
        db,
        "UPDATE audit SET seq = -1 WHERE seq = 3; \
         UPDATE audit SET seq = 3 WHERE seq = 4; \
         UPDATE audit SET seq = 4 WHERE seq = -1;",
    )
    .await;
    assert_eq!(broken(&r), (3, BreakKind::Reordered));
    assert_eq!(BreakKind::Reordered.to_string(), "reordered");
}

pub async fn audit_detects_reorder_of_last_pair(db: &Db) {
    let r = tampered(
        db,
        "UPDATE audit SET seq = -1 WHERE seq = 7; \
         UPDATE audit SET seq = 7 WHERE seq = 8; \
         UPDATE audit SET seq = 8 WHERE seq = -1;",
    )
    .await;
    assert_eq!(broken(&r), (7, BreakKind::Reordered));
}

pub async fn audit_detects_bad_link(db: &Db) {
    // Record 5 replaced by a self-consistent forgery: its own hash is right,
    // its link to record 4 is not.
    let store = db.open().await;
    fill_log(&store, 8).await;
    let rec = store.audit_page(4, 1).await.unwrap().remove(0);
    let mut forged = rec.clone();
    forged.prev_hash = Hash256([7; 32]);
    forged.hash = forged.compute_hash();
    db.drop_audit_guards().await;
    let hex = |h: &Hash256| h.to_hex();
    let sql = match db.kind {
        crate::support::Kind::Sqlite => format!(
            "UPDATE audit SET prev_hash = X'{}', hash = X'{}' WHERE seq = 5",
            hex(&forged.prev_hash),
            hex(&forged.hash)
        ),
        crate::support::Kind::Postgres => format!(
            "UPDATE audit SET prev_hash = '\\x{}', hash = '\\x{}' WHERE seq = 5",
            hex(&forged.prev_hash),
            hex(&forged.hash)
        ),
    };
    db.exec_raw(&sql).await;
    let r = store.verify_audit().await.unwrap();
    assert_eq!(broken(&r), (5, BreakKind::BadLink));
    assert_eq!(BreakKind::BadLink.to_string(), "bad link");
}

/// Concurrent appends through two stores (two gateways on one database),
/// several tasks each, mixed with data changes: one unbroken chain.
pub async fn audit_concurrent(db: &Db) {
    let a = db.open().await;
    let b = db.open().await;
    const TASKS: i64 = 6;
    const EACH: i64 = 20;
    write_from_both(&a, &b, TASKS, EACH).await;
    let report = a.verify_audit().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records, (TASKS * EACH) as u64);
    assert_eq!(
        b.list_users().await.unwrap().len(),
        (TASKS * EACH / 5) as usize
    );
}

/// `tasks` writers, alternating between `a` and `b`, each writing `each`
/// audited changes: every fifth a user (a write that takes the chain head),
/// the others a pure event (one that may wait for the sealer).
async fn write_from_both(a: &Store, b: &Store, tasks: i64, each: i64) {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let store = if t % 2 == 0 { a.clone() } else { b.clone() };
        set.spawn(async move {
            for i in 0..each {
                if i % 5 == 0 {
                    add_user(&store, &format!("u{t}-{i}"), "d").await;
                } else {
                    store
                        .append_audit(audit(T0 + i, "login.ok").subject(format!("t{t}")))
                        .await
                        .unwrap();
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// With `seal_later` (PostgreSQL; a no-op on SQLite), logins' and
/// sessions' writes run side by side and leave their records for the
/// sealer, while other writes still take the head: two handles writing
/// both kinds at once, both sealing at the same time, give one intact
/// chain with every record once; a login code raced by 8 redeemers is
/// spent once, and only the winner's record is in the chain.
pub async fn audit_sealed_later(db: &Db) {
    let a = db.open().await.seal_later(true);
    let b = db.open().await.seal_later(true);
    add_user(&a, "u1", "d").await;
    let code = NewLoginCode {
        code_hash: Hash256::digest("raced"),
        user_id: "u1".into(),
        pkce_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        device_id: "PC-1".into(),
        expires_at: T0 + 60,
    };
    a.create_login_code(&code, audit(T0, "login.code"))
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut sealers = tokio::task::JoinSet::new();
    for s in [a.clone(), b.clone()] {
        let stop = stop.clone();
        sealers.spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += s.seal_pending().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            n
        });
    }
    const TASKS: i64 = 6;
    const EACH: i64 = 30;
    let writers = write_from_both(&a, &b, TASKS, EACH);
    let mut redeemers = tokio::task::JoinSet::new();
    for r in 0..8 {
        let store = if r % 2 == 0 { a.clone() } else { b.clone() };
        redeemers.spawn(async move {
            store
                .consume_login_code(
                    &Hash256::digest("raced"),
                    audit(T0 + 1, "login.code.redeem"),
                )
                .await
        });
    }
    writers.await;
    let mut won = 0;
    while let Some(r) = redeemers.join_next().await {
        match r.unwrap() {
            Ok(_) => won += 1,
            Err(Error::AlreadyUsed { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1, "a login code is spent once");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sealed_by_sealers = 0;
    while let Some(n) = sealers.join_next().await {
        sealed_by_sealers += n.unwrap();
    }
    let rest = a.seal_pending().await.unwrap();
    assert_eq!(a.pending_audit().await.unwrap(), (0, None));
    let report = a.verify_audit().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    // u1, its login code, the writers' records, one redeem.
    assert_eq!(report.records, (2 + TASKS * EACH + 1) as u64);
    let redeems = a
        .audit_page(0, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.action == "login.code.redeem")
        .count();
    assert_eq!(redeems, 1);
    if matches!(db.kind, crate::support::Kind::Postgres) {
        // The hot-path records went through the sealers, not the head.
        let pending_kind = TASKS * (EACH - EACH / 5) + 1 + 1;
        assert_eq!(sealed_by_sealers + rest, pending_kind as u64);
    } else {
        assert_eq!(sealed_by_sealers + rest, 0);
    }
}

/// Drop the store without closing it, reopen: every committed change is there.
pub async fn reopen_keeps_data(db: &Db) {
    {
        let store = db.open().await;
        add_user(&store, "u1", "d").await;
        fill_log(&store, 5).await;
        std::mem::forget(store.clone());
    }
    let store = db.open().await;
    assert!(store.get_user("u1").await.unwrap().is_some());
    let r = store.verify_audit().await.unwrap();
    assert!(r.is_intact());
    assert_eq!(r.records, 6);
}

/// A fresh Ed25519 key, as the gateway keeps beside its ticket key.
fn checkpoint_key() -> (ring::signature::Ed25519KeyPair, [u8; 32]) {
    use ring::signature::KeyPair as _;
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let k = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public: [u8; 32] = k.public_key().as_ref().try_into().unwrap();
    (k, public)
}

async fn sign_head(store: &Store, key: &ring::signature::Ed25519KeyPair) -> Checkpoint {
    let (seq, hash) = store.audit_head().await.unwrap();
    Checkpoint::sign(seq, hash, T0 + 100, "gw1", key)
}

/// What an intruder with the database does after dropping the guards: edit
/// record `seq`'s reason and recompute every hash from there, and the head.
async fn rechain_after_edit(db: &Db, store: &Store, seq: i64) {
    let all = store.audit_page(0, 10_000).await.unwrap();
    let blob = |h: &Hash256| match db.kind {
        crate::support::Kind::Sqlite => format!("X'{}'", h.to_hex()),
        crate::support::Kind::Postgres => format!("'\\x{}'", h.to_hex()),
    };
    let mut sql = String::new();
    let mut prev = all[seq as usize - 2].hash;
    for r in &all[seq as usize - 1..] {
        let mut r = r.clone();
        if r.seq == seq {
            r.reason = "nothing happened".into();
        }
        r.prev_hash = prev;
        r.hash = r.compute_hash();
        prev = r.hash;
        sql.push_str(&format!(
            "UPDATE audit SET reason = '{}', prev_hash = {}, hash = {} WHERE seq = {};",
            r.reason,
            blob(&r.prev_hash),
            blob(&r.hash),
            r.seq
        ));
    }
    sql.push_str(&format!(
        "UPDATE audit_head SET hash = {} WHERE id = 1;",
        blob(&prev)
    ));
    db.drop_audit_guards().await;
    db.exec_raw(&sql).await;
}

/// Signed checkpoints anchor the chain: a re-chained edit, a forged
/// checkpoint and a cut tail are caught; only the trusted key counts.
pub async fn audit_checkpoints_anchor_the_chain(db: &Db) {
    let store = db.open().await;
    let (key, public) = checkpoint_key();
    fill_log(&store, 2).await;
    let early = sign_head(&store, &key).await;
    fill_log(&store, 6).await;
    let cp = sign_head(&store, &key).await;
    assert_eq!((early.seq, cp.seq), (2, 8));
    // One copy in the chain itself (checked with the outside key), one outside.
    store
        .append_audit(
            audit(T0 + 100, CHECKPOINT_ACTION)
                .subject("8")
                .detail(cp.to_json()),
        )
        .await
        .unwrap();
    fill_log(&store, 2).await;
    let ext = vec![(1, early.clone()), (2, cp.clone())];

    let r = store.verify_audit_anchored(&ext, &[public]).await.unwrap();
    assert!(r.is_intact(), "{r:?}");
    assert_eq!(r.anchored.as_ref().map(|c| c.seq), Some(8));
    assert_eq!((r.checked, r.unknown_key, r.chain.head_seq), (2, 0, 11));
    // The record copy alone anchors as far, with the key from outside.
    let r = store.verify_audit_anchored(&[], &[public]).await.unwrap();
    assert_eq!(r.anchored.map(|c| c.seq), Some(8));
    // Without the key nothing is anchored.
    let (_, other) = checkpoint_key();
    let r = store.verify_audit_anchored(&ext, &[other]).await.unwrap();
    assert!(r.is_intact() && r.anchored.is_none(), "{r:?}");
    assert_eq!(r.unknown_key, 2);

    // A forged checkpoint: another hash under the trusted key's id.
    let mut forged = cp.clone();
    forged.hash = Hash256([9; 32]);
    let r = store
        .verify_audit_anchored(&[(1, forged)], &[public])
        .await
        .unwrap();
    assert_eq!(
        r.problem,
        Some(AnchorProblem::BadSignature {
            seq: 8,
            source: CheckpointSource::External(1)
        })
    );
    assert!(!r.is_intact());

    // Edit record 4 and re-chain: the chain alone looks intact…
    rechain_after_edit(db, &store, 4).await;
    assert!(store.verify_audit().await.unwrap().is_intact());
    let edited = store.audit_page(3, 1).await.unwrap().remove(0);
    assert_eq!(edited.reason, "nothing happened");
    // …but not against the checkpoints: records 3–8 were rewritten.
    let r = store.verify_audit_anchored(&ext, &[public]).await.unwrap();
    match &r.problem {
        Some(AnchorProblem::Mismatch { seq, since, .. }) => assert_eq!((*seq, *since), (8, 3)),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.anchored.map(|c| c.seq), Some(2));
    // The copy in the table (re-chained along with the rest) still carries
    // the old signed hash.
    let r = store.verify_audit_anchored(&[], &[public]).await.unwrap();
    assert!(
        matches!(
            r.problem,
            Some(AnchorProblem::Mismatch {
                seq: 8,
                since: 1,
                ..
            })
        ),
        "{r:?}"
    );
}

/// Records cut off the end past a checkpoint are caught.
pub async fn audit_checkpoint_catches_cut_tail(db: &Db) {
    let store = db.open().await;
    let (key, public) = checkpoint_key();
    fill_log(&store, 8).await;
    let cp = sign_head(&store, &key).await;
    let six = store.audit_page(5, 1).await.unwrap().remove(0);
    db.drop_audit_guards().await;
    let blob = match db.kind {
        crate::support::Kind::Sqlite => format!("X'{}'", six.hash.to_hex()),
        crate::support::Kind::Postgres => format!("'\\x{}'", six.hash.to_hex()),
    };
    db.exec_raw(&format!(
        "DELETE FROM audit WHERE seq > 6; UPDATE audit_head SET seq = 6, hash = {blob} WHERE id = 1;"
    ))
    .await;
    assert!(store.verify_audit().await.unwrap().is_intact());
    let r = store
        .verify_audit_anchored(&[(1, cp)], &[public])
        .await
        .unwrap();
    assert_eq!(
        r.problem,
        Some(AnchorProblem::Missing {
            seq: 8,
            head_seq: 6
        })
    );
}

/// Expired codes, tokens and idle lockout counters are deleted after the
/// grace, with one audit record; live ones stay.
pub async fn pruning(db: &Db) {
    let store = db.open().await;
    add_user(&store, "u1", "d").await;
    add_device(&store, "LT-A", "u1").await;
    const DAY: i64 = 86_400;
    let token = |n: &str, expires_at: i64| NewLoginToken {
        token_hash: Hash256::digest(n),
        user_id: "u1".into(),
        device_id: "LT-A".into(),
        cert_serial: "0a".into(),
        expires_at,
    };
    let code = |n: &str, expires_at: i64| NewLoginCode {
        code_hash: Hash256::digest(n),
        user_id: "u1".into(),
        pkce_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        device_id: "LT-A".into(),
        expires_at,
    };
    for (name, exp) in [("old", T0 + 60), ("live", T0 + 30 * DAY)] {
        store
            .create_login_token(&token(name, exp), audit(T0, "login.redeem"))
            .await
            .unwrap();
        store
            .create_login_code(&code(name, exp), audit(T0, "login.code"))
            .await
            .unwrap();
        store
            .create_enrollment_code(&Hash256::digest(name), "u1", exp, audit(T0, "enroll.code"))
            .await
            .unwrap();
    }
    let rule = LockoutRule {
        max_failures: 5,
        window_secs: 900,
        lockout_secs: 900,
    };
    store
        .record_failure("source:192.0.2.1", &rule, audit(T0, "login.failed"))
        .await
        .unwrap();
    let now = T0 + 10 * DAY;
    store
        .record_failure("source:192.0.2.2", &rule, audit(now, "login.failed"))
        .await
        .unwrap();
    let records = head(&store).await;

    // Within the grace nothing goes.
    let none = store
        .prune_expired(T0 + DAY, 7 * DAY, audit(T0 + DAY, "store.prune"))
        .await
        .unwrap();
    assert_eq!(none.total(), 0);
    assert_eq!(
        head(&store).await,
        records,
        "nothing deleted, nothing audited"
    );

    let p = store
        .prune_expired(now, 7 * DAY, audit(now, "store.prune"))
        .await
        .unwrap();
    assert_eq!(
        p,
        kakehashi_store::Pruned {
            login_codes: 1,
            enrollment_codes: 1,
            login_tokens: 1,
            lockouts: 1
        }
    );
    assert!(store
        .get_login_token(&Hash256::digest("old"))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_login_token(&Hash256::digest("live"))
        .await
        .unwrap()
        .is_some());
    let log = store.audit_page(records, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].action, "store.prune");
    assert_eq!(
        log[0].detail_json().unwrap(),
        json!({"login_codes": 1, "enrollment_codes": 1, "login_tokens": 1, "lockouts": 1})
    );
    // Again: nothing left to delete, no second record.
    let again = store
        .prune_expired(now, 7 * DAY, audit(now, "store.prune"))
        .await
        .unwrap();
    assert_eq!(again.total(), 0);
    assert_eq!(head(&store).await, records + 1);
}

/// Transient state shared by every gateway: one-use take, expiry, the
/// per-user and per-source quotas and the kind's cap (a flood displaces
/// only itself), claims that only one store handle wins, pruning.
pub async fn transient_state(db: &Db) {
    use kakehashi_store::{Quotas, TransientKind};
    let stores = open_stores(db, 2).await;
    let (a, b) = (&stores[0], &stores[1]);
    let key = |s: &str| Hash256::digest(s);
    let kind = TransientKind::Ceremony;
    // The cap is 9: the victim, a user's 3 and an address's 5 fit.
    let q = |user: &'static str, source: &'static str| Quotas {
        cap: Some(9),
        user: Some((user, 3)),
        source: Some((source, 5)),
    };

    // Put on one gateway, taken on the other, once.
    a.put_transient(
        kind,
        &key("c1"),
        "{\"x\":1}",
        T0 + 300,
        T0,
        &q("u1", "10.0.0.1"),
    )
    .await
    .unwrap();
    assert_eq!(
        b.get_transient(kind, &key("c1"), T0)
            .await
            .unwrap()
            .as_deref(),
        Some("{\"x\":1}")
    );
    assert_eq!(
        b.take_transient(kind, &key("c1"), T0 + 1)
            .await
            .unwrap()
            .as_deref(),
        Some("{\"x\":1}")
    );
    assert_eq!(
        a.take_transient(kind, &key("c1"), T0 + 1).await.unwrap(),
        None,
        "one use"
    );
    // Another kind with the same key is another row.
    assert_eq!(
        a.get_transient(TransientKind::PortalSession, &key("c1"), T0)
            .await
            .unwrap(),
        None
    );
    // Expired: not returned, and taken away all the same.
    a.put_transient(kind, &key("old"), "v", T0 + 10, T0, &q("u9", "10.0.0.9"))
        .await
        .unwrap();
    assert_eq!(
        a.get_transient(kind, &key("old"), T0 + 10).await.unwrap(),
        None
    );
    assert_eq!(
        a.take_transient(kind, &key("old"), T0 + 10).await.unwrap(),
        None
    );
    // The same key twice is refused (ids are random; a clash is a bug).
    a.put_transient(kind, &key("dup"), "v", T0 + 300, T0, &q("u9", "10.0.0.9"))
        .await
        .unwrap();
    assert!(matches!(
        a.put_transient(kind, &key("dup"), "v", T0 + 300, T0, &q("u9", "10.0.0.9"))
            .await,
        Err(Error::AlreadyExists { .. })
    ));
    a.remove_transient(kind, &key("dup")).await.unwrap();
    assert_eq!(a.get_transient(kind, &key("dup"), T0).await.unwrap(), None);
    // Too large a value is refused before the database.
    let big = "x".repeat(kakehashi_store::MAX_TRANSIENT_VALUE + 1);
    assert!(matches!(
        a.put_transient(kind, &key("big"), &big, T0 + 300, T0, &q("u9", "10.0.0.9"))
            .await,
        Err(Error::Invalid { .. })
    ));

    // A victim, then a flood for one user from one address: that user keeps
    // its 3 newest, the victim stays.
    a.put_transient(
        kind,
        &key("victim"),
        "v",
        T0 + 300,
        T0,
        &q("v", "10.0.0.99"),
    )
    .await
    .unwrap();
    for i in 0..40 {
        let k = format!("flood{i}");
        b.put_transient(kind, &key(&k), "f", T0 + 300, T0, &q("u", "10.0.0.1"))
            .await
            .unwrap();
    }
    for i in 0..37 {
        assert_eq!(
            a.get_transient(kind, &key(&format!("flood{i}")), T0)
                .await
                .unwrap(),
            None,
            "flood{i} evicted"
        );
    }
    for i in 37..40 {
        assert!(a
            .get_transient(kind, &key(&format!("flood{i}")), T0)
            .await
            .unwrap()
            .is_some());
    }
    assert!(a
        .get_transient(kind, &key("victim"), T0)
        .await
        .unwrap()
        .is_some());
    // Many users from one address: that address keeps its 5 newest.
    for i in 0..30 {
        let user: &'static str = Box::leak(format!("x{i}").into_boxed_str());
        a.put_transient(
            kind,
            &key(&format!("nat{i}")),
            "f",
            T0 + 300,
            T0,
            &q(user, "10.0.0.2"),
        )
        .await
        .unwrap();
    }
    let nat_live = {
        let mut n = 0;
        for i in 0..30 {
            if a.get_transient(kind, &key(&format!("nat{i}")), T0)
                .await
                .unwrap()
                .is_some()
            {
                n += 1;
            }
        }
        n
    };
    assert_eq!(nat_live, 5);
    assert!(a
        .get_transient(kind, &key("victim"), T0)
        .await
        .unwrap()
        .is_some());
    // Many addresses filling the kind past its cap: the busiest address
    // gives way, a newcomer always gets in, the cap holds.
    for i in 0..20 {
        let user: &'static str = Box::leak(format!("y{i}").into_boxed_str());
        let source: &'static str = Box::leak(format!("10.1.0.{i}").into_boxed_str());
        a.put_transient(
            kind,
            &key(&format!("spread{i}")),
            "f",
            T0 + 300,
            T0,
            &q(user, source),
        )
        .await
        .unwrap();
    }
    a.put_transient(kind, &key("late"), "l", T0 + 300, T0, &q("w", "10.0.0.10"))
        .await
        .unwrap();
    assert!(a
        .get_transient(kind, &key("late"), T0)
        .await
        .unwrap()
        .is_some());
    let held = a.prune_transient(T0 + 10_000).await.unwrap();
    assert!(held <= 9, "the cap holds: {held} rows");

    // A claim is won once across gateways, and again after it expires.
    let step = TransientKind::StepUp;
    assert!(a
        .claim_transient(step, &key("tok"), T0 + 60, T0)
        .await
        .unwrap());
    assert!(!b
        .claim_transient(step, &key("tok"), T0 + 60, T0 + 1)
        .await
        .unwrap());
    assert!(b
        .get_transient(step, &key("tok"), T0 + 1)
        .await
        .unwrap()
        .is_some());
    assert!(b
        .claim_transient(step, &key("tok"), T0 + 200, T0 + 60)
        .await
        .unwrap());
    // Concurrent claims of one key: exactly one wins.
    let mut tasks = tokio::task::JoinSet::new();
    for s in open_stores(db, 8).await {
        tasks.spawn(async move {
            s.claim_transient(step, &Hash256::digest("race"), T0 + 60, T0)
                .await
                .unwrap()
        });
    }
    let mut won = 0;
    while let Some(r) = tasks.join_next().await {
        won += usize::from(r.unwrap());
    }
    assert_eq!(won, 1, "one claim wins");

    // Pruning deletes what expired and nothing else.
    assert_eq!(
        a.prune_transient(T0 + 200).await.unwrap(),
        2,
        "tok and race"
    );
    assert!(a
        .claim_transient(step, &key("tok"), T0 + 400, T0 + 300)
        .await
        .unwrap());
    assert_eq!(a.prune_transient(T0 + 300).await.unwrap(), 0);
}
