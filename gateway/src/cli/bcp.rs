//! `kakehashi-gateway bcp …`: declare and end BCP mode (snow day,
//! pandemic), and list declarations.

use std::path::Path;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use kakehashi_store::{Audit, BcpScope, BcpSpec};
use serde_json::json;

use super::{actor, local, open_store, parse_time};

/// `bcp …`
#[derive(Subcommand, Debug)]
pub enum BcpCmd {
    /// Declare BCP mode (大雪, 感染症…): relaxes what the policy's
    /// `bcp_default_relax` says, never level 3 from home, never My Number.
    Declare {
        /// `all`, or one department.
        #[arg(long)]
        scope: String,
        /// Why (shown in the banner and kept in the audit log).
        #[arg(long)]
        reason: String,
        /// When it ends on its own, RFC 3339 (e.g. 2026-01-15T18:00:00+09:00).
        #[arg(long)]
        until: String,
    },
    /// End BCP mode now: one declaration, or every one in force.
    End {
        /// Declaration id (default: all in force).
        #[arg(long)]
        id: Option<String>,
    },
    /// List declarations.
    List,
}

/// Run a `bcp` command on the store of the gateway configuration `config`.
pub async fn run(config: &Path, cmd: BcpCmd) -> anyhow::Result<()> {
    let (cfg, store) = open_store(config).await?;
    let off = cfg.relay.identity.utc_offset_secs;
    match cmd {
        BcpCmd::Declare {
            scope,
            reason,
            until,
        } => {
            let now = kakehashi_store::unix_now();
            let until = parse_time("--until", &until)?.unix_timestamp();
            if until <= now {
                bail!("--until must be in the future");
            }
            let doc = store
                .current_policy()
                .await?
                .context("no policy saved yet (start the gateway once)")?;
            let policy = kakehashi_relay::admission::parse_policy(&doc.text)?;
            let scope = match scope.as_str() {
                "all" | "*" => BcpScope::All,
                d => BcpScope::Department(d.to_string()),
            };
            let relax = serde_json::to_value(&policy.bcp_default_relax)?;
            let spec = BcpSpec {
                scope,
                reason: reason.clone(),
                relax: relax.clone(),
                starts_at: now,
                ends_at: until,
            };
            let a = Audit::new(now, actor(), "bcp.declare")
                .subject(match &spec.scope {
                    BcpScope::All => "all",
                    BcpScope::Department(d) => d,
                })
                .reason(&reason)
                .detail(json!({ "until": until, "relax": relax }));
            let b = store.declare_bcp(&spec, a).await?;
            println!(
                "BCP declared ({}): until {}; relaxes {relax}",
                b.id,
                local(b.ends_at, off)
            );
        }
        BcpCmd::End { id } => {
            let now = kakehashi_store::unix_now();
            let ids: Vec<String> = match id {
                Some(id) => vec![id],
                None => store
                    .active_bcp(now)
                    .await?
                    .into_iter()
                    .map(|b| b.id)
                    .collect(),
            };
            if ids.is_empty() {
                println!("no BCP declaration in force");
            }
            for id in ids {
                let a = Audit::new(now, actor(), "bcp.end").subject(&id);
                store.end_bcp(&id, a).await?;
                println!("BCP {id} ended; sessions it allowed are re-decided within a second");
            }
        }
        BcpCmd::List => {
            let now = kakehashi_store::unix_now();
            println!(
                "{:<22} {:<6} {:<12} {:<26} reason",
                "id", "state", "scope", "until"
            );
            for b in store.list_bcp().await? {
                println!(
                    "{:<22} {:<6} {:<12} {:<26} {}",
                    b.id,
                    if b.is_active(now) { "active" } else { "ended" },
                    match &b.scope {
                        BcpScope::All => "all",
                        BcpScope::Department(d) => d,
                    },
                    local(b.ended_at.unwrap_or(b.ends_at).min(b.ends_at), off),
                    b.reason
                );
            }
        }
    }
    Ok(())
}
