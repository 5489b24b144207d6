//! A store seeded so that every session of a load-generator run goes
//! through the real admission path: a login token checked, the person,
//! the device and the desk read from the store, the shipped default policy
//! decided, the session's start and end written (with their audit records).
//!
//! The scene is a snow day: a BCP declaration covers everyone, so home
//! laptops reach level 1 and 2 desks at any hour without a plan (the
//! default relaxation). Laptop `i` (of [`crate::pki::DEVICE_POOL`]) belongs
//! to `bench-user-ii`, who owns every desk `k` with `k % DEVICE_POOL == i`.

use std::path::Path;

use anyhow::Context as _;
use kakehashi_proto::message::Secret;
use kakehashi_store::{
    Audit, BcpScope, BcpSpec, Desk, DeviceClass, DeviceSpec, Hash256, NewLoginToken, NewUser, Role,
    Segment, Store,
};

use crate::pki::{BenchPki, DEVICE_POOL};

/// The user of pooled laptop `i` (the name its certificate carries).
pub fn user_of(i: usize) -> String {
    format!("bench-user-{:02}", i % DEVICE_POOL)
}

/// The device id of pooled laptop `i` in the store.
pub fn device_of(i: usize) -> String {
    format!("BENCH-LAPTOP-{:02}", i % DEVICE_POOL)
}

/// The department of pooled laptop `i`'s user, and of the desks they own.
fn dept_of(i: usize) -> String {
    format!("bench-dept-{:02}", i % 8)
}

/// The pooled laptop a session to desk number `k` must come from.
pub fn laptop_for_desk(k: usize) -> usize {
    k % DEVICE_POOL
}

/// Create the SQLite store at `path` for `desks` and return each pooled
/// laptop's login token (index = laptop).
pub async fn seed(path: &Path, pki: &BenchPki, desks: &[String]) -> anyhow::Result<Vec<Secret>> {
    let url = format!("sqlite://{}", path.display());
    let store = Store::open(&url)
        .await
        .with_context(|| format!("cannot create the bench store {url}"))?;
    let now = kakehashi_store::unix_now();
    let a = |what: &str| Audit::new(now, "bench", what);
    let mut tokens = Vec::with_capacity(DEVICE_POOL);
    for i in 0..DEVICE_POOL {
        let user = user_of(i);
        let device = device_of(i);
        store
            .add_user(
                &NewUser {
                    id: user.clone(),
                    name: user.clone(),
                    department: dept_of(i),
                    roles: [Role::Staff].into(),
                },
                a("user.add"),
            )
            .await?;
        store
            .upsert_device(
                &DeviceSpec {
                    id: device.clone(),
                    class: DeviceClass::Home,
                    loaned_to: Some(user.clone()),
                    cert_serial: None,
                },
                a("device.upsert"),
            )
            .await?;
        let cert = pki.device(i)?;
        let serial = kakehashi_pki::serial_hex(&cert.chain[0])?;
        let token = format!("khs1.bench-{i:02}-{:032x}", rand::random::<u128>());
        store
            .create_login_token(
                &NewLoginToken {
                    token_hash: Hash256::digest(&token),
                    user_id: user,
                    device_id: device,
                    cert_serial: serial,
                    // A working day; the default policy's MFA age (600 min) runs from now.
                    expires_at: now + 10 * 3600,
                },
                a("login"),
            )
            .await?;
        tokens.push(Secret(token));
    }
    for (k, id) in desks.iter().enumerate() {
        store
            .add_desk(
                &Desk {
                    id: id.clone(),
                    department: dept_of(laptop_for_desk(k)),
                    // Levels 1 and 2: what home may reach under BCP.
                    level: (k % 2 + 1) as u8,
                    segment: Segment::Lgwan,
                    // The simulated desks echo; they are not RDP servers.
                    service: kakehashi_store::DeskService::Other,
                    owners: [user_of(laptop_for_desk(k))].into(),
                },
                a("desk.add"),
            )
            .await?;
    }
    store
        .declare_bcp(
            &BcpSpec {
                scope: BcpScope::All,
                reason: "bench: snow day".into(),
                relax: serde_json::to_value(
                    &kakehashi_policy::Policy::default().bcp_default_relax,
                )?,
                starts_at: now - 60,
                ends_at: now + 86_400,
            },
            a("bcp.declare"),
        )
        .await?;
    store.close().await;
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_relay::admission::{self, Asker, Outcome};
    use kakehashi_relay::login::{self, Laptop};

    /// Every session the load generator opens in a `--store` run is
    /// admitted (its token checked, the policy allowing it under BCP), and
    /// the same laptop is refused a desk it does not own: so a row with no
    /// refusals measured the admission path, not a bypass.
    #[tokio::test]
    async fn seeded_sessions_pass_the_real_admission_path() {
        let dir = tempfile::tempdir().unwrap();
        let pki = BenchPki::open_or_create(&dir.path().join("pki")).unwrap();
        let desks: Vec<String> = (0..70).map(|k| format!("LG-DESK-{k:05}")).collect();
        let db = dir.path().join("bench.db");
        let tokens = seed(&db, &pki, &desks).await.unwrap();
        assert_eq!(tokens.len(), DEVICE_POOL);
        let store = Store::open(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let policy = kakehashi_policy::Policy::default();
        let now = time::OffsetDateTime::now_utc();
        // Each pooled laptop as the gateway sees it (certificates read once).
        let laptops: Vec<Laptop> = (0..DEVICE_POOL)
            .map(|i| Laptop {
                device: device_of(i),
                class: kakehashi_pki::TerminalClass::Home,
                serial: kakehashi_pki::serial_hex(&pki.device(i).unwrap().chain[0]).unwrap(),
                peer: String::new(),
                // As the certificate says (benches/src/pki.rs).
                cert_user: Some(user_of(i)),
            })
            .collect();
        let laptop = |i: usize| &laptops[i];
        for (k, desk) in desks.iter().enumerate() {
            let i = laptop_for_desk(k);
            let who = login::check(&store, laptop(i), Some(&tokens[i]))
                .await
                .unwrap();
            assert_eq!(who.user, user_of(i));
            let asker = |desk: &str| Asker {
                user: who.user.clone(),
                login_at: who.login_at,
                device: laptop(i).device.clone(),
                class: kakehashi_policy::TerminalClass::Home,
                desk: desk.to_string(),
                step_up: false,
            };
            match admission::decide(&store, &asker(desk), &policy, now).await {
                Outcome::Allow { rule, .. } => {
                    assert!(rule == "l1-home" || rule == "l2-home", "{rule}")
                }
                Outcome::Deny { refusal, .. } => panic!("{desk} from laptop {i}: {refusal:?}"),
            }
            let other = &desks[(k + 1) % desks.len()];
            assert!(
                matches!(
                    admission::decide(&store, &asker(other), &policy, now).await,
                    Outcome::Deny { .. }
                ),
                "laptop {i} reached {other}, which it does not own"
            );
        }
        // A token is bound to its laptop.
        assert!(login::check(&store, laptop(1), Some(&tokens[0]))
            .await
            .is_err());
    }
}
