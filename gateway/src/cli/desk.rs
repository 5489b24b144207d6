//! `kakehashi-gateway admin desk …`: desks and their confidentiality levels,
//! segments and services. Every change is one store transaction with its
//! audit record (who: the operating-system user; why: `--reason`); a running
//! gateway re-decides the live sessions a change affects.

use std::collections::BTreeSet;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use kakehashi_store::{Audit, Desk, DeskService, Segment, Store};
use serde_json::json;

use super::actor;

/// `admin desk …`
#[derive(Subcommand, Debug)]
pub enum DeskCmd {
    /// Register a desk PC with its confidentiality level, segment, department and owners.
    Add {
        /// Desk id (the agent certificate's desk id, e.g. DESK-1234).
        #[arg(long)]
        id: String,
        /// Confidentiality level (機密性レベル) 1, 2 or 3.
        #[arg(long)]
        level: u8,
        /// Network segment: lgwan, internet or mynumber.
        #[arg(long, default_value = "lgwan")]
        segment: String,
        /// What the desk serves: `rdp` (a desk PC's RDP server; its agent must
        /// enforce session controls, or sessions that restrict anything are
        /// refused with desk_not_enforcing) or `other` (a service that is not
        /// RDP: sessions are admitted without enforcement and audited so).
        #[arg(long, default_value = "rdp")]
        service: String,
        /// Department (所属).
        #[arg(long)]
        dept: String,
        /// Owner user id (repeatable).
        #[arg(long = "owner")]
        owners: Vec<String>,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Change a desk: live sessions it no longer allows end within a second.
    Set {
        /// Desk id.
        #[arg(long)]
        id: String,
        /// New confidentiality level.
        #[arg(long)]
        level: Option<u8>,
        /// New segment.
        #[arg(long)]
        segment: Option<String>,
        /// New service: `rdp` or `other` (not RDP; controls are not enforced).
        #[arg(long)]
        service: Option<String>,
        /// New department.
        #[arg(long)]
        dept: Option<String>,
        /// Replace the owners with these (repeatable).
        #[arg(long = "owner")]
        owners: Vec<String>,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List desks.
    List,
}

fn check_service(service: &str) -> anyhow::Result<DeskService> {
    service
        .parse::<DeskService>()
        .map_err(|e| anyhow::anyhow!("{e} (rdp, or other for a service that is not RDP)"))
}

fn check_desk_fields(level: u8, segment: &str) -> anyhow::Result<Segment> {
    if !(1..=3).contains(&level) {
        bail!("level must be 1, 2 or 3 (機密性レベル)");
    }
    segment
        .parse::<Segment>()
        .map_err(|e| anyhow::anyhow!("{e} (lgwan, internet or mynumber)"))
}

/// Run an `admin desk` command.
pub async fn run(store: &Store, cmd: DeskCmd) -> anyhow::Result<()> {
    let now = kakehashi_store::unix_now();
    let who = actor();
    match cmd {
        DeskCmd::Add {
            id,
            level,
            segment,
            service,
            dept,
            owners,
            reason,
        } => {
            let segment = check_desk_fields(level, &segment)?;
            let service = check_service(&service)?;
            for o in &owners {
                if store.get_user(o).await?.is_none() {
                    bail!("owner {o:?} is not a user (add them with `admin user add` first)");
                }
            }
            let d = Desk {
                id: id.clone(),
                department: dept,
                level,
                segment,
                service,
                owners: owners.into_iter().collect(),
            };
            let a = Audit::new(now, &who, "desk.add")
                .subject(&id)
                .reason(&reason)
                .detail(json!(d));
            store.add_desk(&d, a).await?;
            println!(
                "desk {id} added: level {level}, {}, service {}, {}, owners {:?}",
                d.segment.as_str(),
                d.service.as_str(),
                d.department,
                d.owners
            );
        }
        DeskCmd::Set {
            id,
            level,
            segment,
            service,
            dept,
            owners,
            reason,
        } => {
            let mut d = store
                .get_desk(&id)
                .await?
                .with_context(|| format!("no desk {id:?} (see `admin desk list`)"))?;
            let before = json!(d);
            if let Some(l) = level {
                d.level = l;
            }
            let seg = segment.unwrap_or_else(|| d.segment.as_str().to_string());
            d.segment = check_desk_fields(d.level, &seg)?;
            if let Some(service) = service {
                d.service = check_service(&service)?;
            }
            if let Some(dept) = dept {
                d.department = dept;
            }
            if !owners.is_empty() {
                for o in &owners {
                    if store.get_user(o).await?.is_none() {
                        bail!("owner {o:?} is not a user");
                    }
                }
                d.owners = owners.into_iter().collect::<BTreeSet<_>>();
            }
            let a = Audit::new(now, &who, "desk.set")
                .subject(&id)
                .reason(&reason)
                .detail(json!({ "before": before, "after": d }));
            store.set_desk(&d, a).await?;
            println!("desk {id} changed: level {}, {}, service {}, {}, owners {:?}; live sessions are re-decided within a second",
                d.level, d.segment.as_str(), d.service.as_str(), d.department, d.owners);
        }
        DeskCmd::List => {
            println!(
                "{:<20} {:<5} {:<9} {:<7} {:<16} owners",
                "id", "level", "segment", "service", "dept"
            );
            for d in store.list_desks().await? {
                let owners: Vec<&str> = d.owners.iter().map(String::as_str).collect();
                println!(
                    "{:<20} {:<5} {:<9} {:<7} {:<16} {}",
                    d.id,
                    d.level,
                    d.segment.as_str(),
                    d.service.as_str(),
                    d.department,
                    owners.join(",")
                );
            }
        }
    }
    Ok(())
}
