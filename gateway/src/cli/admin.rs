//! `kakehashi-gateway admin …`: users, enrollment codes and devices; desks
//! and plans are in [`super::desk`] and [`super::plan`]. Each command opens
//! the store named in the gateway's configuration, and every change is
//! written to the audit log with who made it (the operating-system user) and
//! why.

use std::collections::BTreeSet;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use kakehashi_store::{Audit, DeviceStatus, NewUser, Role};
use serde_json::json;

use std::path::Path;

use super::{actor, local, open_store};

/// `admin` subcommands.
#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Users (staff, chiefs, officers, operators).
    #[command(subcommand)]
    User(UserCmd),
    /// Loaned laptops.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Desk PCs: confidentiality level, segment, department, owners.
    #[command(subcommand)]
    Desk(super::desk::DeskCmd),
    /// Telework plans (staff submit, section chiefs approve; CSV import from HR).
    #[command(subcommand)]
    Plan(super::plan::PlanCmd),
    /// The April personnel changes (人事異動) from CSV: users (department,
    /// roles, leavers), desks, loaned laptops. Every line is checked before
    /// anything is written; `--check` only prints what would change.
    Import(super::import::ImportArgs),
}

/// `admin user …`
#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user.
    Add {
        /// User id (e.g. an employee number).
        #[arg(long)]
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Department (所属).
        #[arg(long)]
        dept: String,
        /// Role: staff, chief, officer, operator (repeatable; default staff).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Change a user's name or department (the id, keys, desks and history stay).
    Set {
        /// User id.
        #[arg(long)]
        id: String,
        /// New display name.
        #[arg(long)]
        name: Option<String>,
        /// New department (所属).
        #[arg(long)]
        dept: Option<String>,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Issue a one-time enrollment code (the person registers a security key with it on the portal).
    EnrollCode {
        /// User id.
        #[arg(long)]
        id: String,
    },
    /// Disable a user: no new logins or sessions; their login tokens are revoked.
    Disable {
        /// User id.
        #[arg(long)]
        id: String,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// User id.
        #[arg(long)]
        id: String,
    },
    /// Lift a portal lockout: clears every failure counter of the user (at
    /// every address), e.g. after checking with the person that the failed
    /// attempts were theirs. Audited.
    Unlock {
        /// User id.
        #[arg(long)]
        id: String,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List the portal lockouts in force (per user and address, and per user).
    Locks,
    /// List users.
    List,
}

/// `admin device …`
#[derive(Subcommand, Debug)]
pub enum DeviceCmd {
    /// List laptops the gateway has seen.
    List,
    /// Block a laptop (lost, stolen, returned): its login tokens are revoked at once.
    Block {
        /// Device id.
        #[arg(long)]
        id: String,
        /// `blocked`, `lost` or `revoked` (each refused with its own reason code).
        #[arg(long, default_value = "blocked")]
        status: String,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Unblock a laptop.
    Unblock {
        /// Device id.
        #[arg(long)]
        id: String,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Run an `admin` command on the store of the gateway configuration `config`.
pub async fn run(config: &Path, cmd: AdminCmd) -> anyhow::Result<()> {
    let (cfg, store) = open_store(config).await?;
    let now = kakehashi_store::unix_now();
    let who = actor();
    match cmd {
        AdminCmd::Desk(c) => super::desk::run(&store, c).await?,
        AdminCmd::Plan(c) => super::plan::run(&store, c).await?,
        AdminCmd::Import(a) => super::import::run(&store, a).await?,
        AdminCmd::User(UserCmd::Add {
            id,
            name,
            dept,
            roles,
        }) => {
            let mut set = BTreeSet::new();
            for r in if roles.is_empty() {
                vec!["staff".to_string()]
            } else {
                roles
            } {
                set.insert(r.parse::<Role>().with_context(|| {
                    format!("unknown role {r:?} (staff, chief, officer, operator)")
                })?);
            }
            let u = NewUser {
                id: id.clone(),
                name,
                department: dept,
                roles: set,
            };
            store
                .add_user(&u, Audit::new(now, &who, "user.add").subject(&id))
                .await?;
            println!("added user {id}");
        }
        AdminCmd::User(UserCmd::EnrollCode { id }) => {
            if store.get_user(&id).await?.is_none() {
                bail!("no user {id:?}; add it first with `admin user add`");
            }
            let (code, hash) = kakehashi_portal::new_enrollment_code();
            let expires = now + cfg.relay.identity.enrollment_code_lifetime.as_secs() as i64;
            store
                .create_enrollment_code(
                    &hash,
                    &id,
                    expires,
                    Audit::new(now, &who, "user.enroll_code").subject(&id),
                )
                .await?;
            println!("enrollment code for {id}: {code}");
            println!(
                "有効期限 / valid until {}; 一度だけ使えます。本人に直接手渡してください / it works once. Hand it to the person in person.",
                local(expires, cfg.relay.identity.utc_offset_secs)
            );
        }
        AdminCmd::User(UserCmd::Disable { id, reason }) => {
            store
                .set_user_disabled(
                    &id,
                    true,
                    Audit::new(now, &who, "user.disable")
                        .subject(&id)
                        .reason(&reason),
                )
                .await?;
            let n = store
                .revoke_login_tokens_for_user(
                    &id,
                    Audit::new(now, &who, "token.revoke_all")
                        .subject(&id)
                        .reason("user_disabled"),
                )
                .await?;
            println!("disabled user {id}; {n} login token(s) revoked");
        }
        AdminCmd::User(UserCmd::Set {
            id,
            name,
            dept,
            reason,
        }) => {
            let Some(u) = store.get_user(&id).await? else {
                anyhow::bail!("no user {id:?}");
            };
            if name.is_none() && dept.is_none() {
                anyhow::bail!("nothing to change: give --name and/or --dept");
            }
            let name = name.unwrap_or_else(|| u.name.clone());
            let dept = dept.unwrap_or_else(|| u.department.clone());
            let a = Audit::new(now, &who, "user.update")
                .subject(&id)
                .reason(&reason)
                .detail(serde_json::json!({
                    "before": { "name": u.name, "department": u.department },
                    "after": { "name": name, "department": dept },
                }));
            store.set_user_profile(&id, &name, &dept, a).await?;
            println!("user {id}: {name} ({dept})");
        }
        AdminCmd::User(UserCmd::Enable { id }) => {
            store
                .set_user_disabled(
                    &id,
                    false,
                    Audit::new(now, &who, "user.enable").subject(&id),
                )
                .await?;
            println!("enabled user {id}");
        }
        AdminCmd::User(UserCmd::Unlock { id, reason }) => {
            if store.get_user(&id).await?.is_none() {
                anyhow::bail!("no user {id:?}");
            }
            let n = store
                .unlock_user(
                    &id,
                    Audit::new(now, &who, "user.unlock")
                        .subject(&id)
                        .reason(&reason),
                )
                .await?;
            println!("unlocked user {id}: {n} failure counter(s) cleared");
        }
        AdminCmd::User(UserCmd::Locks) => {
            let locks = store.active_lockouts(now).await?;
            if locks.is_empty() {
                println!("no lockouts in force");
            }
            for (key, until) in locks {
                println!(
                    "{key:<48} locked until {} ({}s)",
                    local(until, cfg.relay.identity.utc_offset_secs),
                    until - now
                );
            }
        }
        AdminCmd::User(UserCmd::List) => {
            println!(
                "{:<16} {:<20} {:<12} {:<24} status",
                "id", "name", "dept", "roles"
            );
            for u in store.list_users().await? {
                let roles: Vec<&str> = u.roles.iter().map(|r| r.as_str()).collect();
                let status = if u.disabled { "disabled" } else { "active" };
                println!(
                    "{:<16} {:<20} {:<12} {:<24} {status}",
                    u.id,
                    u.name,
                    u.department,
                    roles.join(",")
                );
            }
        }
        AdminCmd::Device(DeviceCmd::List) => {
            println!(
                "{:<20} {:<10} {:<8} {:<16} serial",
                "id", "class", "status", "loaned to"
            );
            for d in store.list_devices().await? {
                println!(
                    "{:<20} {:<10} {:<8} {:<16} {}",
                    d.id,
                    d.class.as_str(),
                    d.status.as_str(),
                    d.loaned_to.as_deref().unwrap_or("-"),
                    d.cert_serial.as_deref().unwrap_or("-")
                );
            }
        }
        AdminCmd::Device(DeviceCmd::Block { id, status, reason }) => {
            let st: DeviceStatus = status
                .parse()
                .context("status must be blocked, lost or revoked")?;
            if st == DeviceStatus::Active {
                bail!("use `admin device unblock` to make a device active");
            }
            store
                .set_device_status(
                    &id,
                    st,
                    Audit::new(now, &who, "device.block")
                        .subject(&id)
                        .reason(&reason)
                        .detail(json!({ "status": st.as_str() })),
                )
                .await?;
            let n = store
                .revoke_login_tokens_for_device(
                    &id,
                    Audit::new(now, &who, "token.revoke_all")
                        .subject(&id)
                        .reason("device_blocked"),
                )
                .await?;
            println!("device {id} is now {}; {n} login token(s) revoked; new sessions are refused at once", st.as_str());
            println!("(also revoke its certificate with kakehashi-pki if it is lost: kakehashi-pki revoke --cert … --reason lost)");
        }
        AdminCmd::Device(DeviceCmd::Unblock { id, reason }) => {
            store
                .set_device_status(
                    &id,
                    DeviceStatus::Active,
                    Audit::new(now, &who, "device.unblock")
                        .subject(&id)
                        .reason(&reason),
                )
                .await?;
            println!("device {id} is active again (its user must log in again)");
        }
    }
    Ok(())
}
