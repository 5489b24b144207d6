//! `kakehashi-gateway admin plan …`: telework plans, one at a time or from a
//! CSV file (every line checked before anything is written).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use kakehashi_store::localtime::{hhmm, parse_hhmm};
use kakehashi_store::{Audit, PlanSpec, PlanStatus, Store};
use serde_json::json;

use super::actor;

/// `admin plan …`
#[derive(Subcommand, Debug)]
pub enum PlanCmd {
    /// Record a telework plan (as staff would submit it on the portal).
    Add {
        /// Whose plan.
        #[arg(long)]
        user: String,
        /// Local date, YYYY-MM-DD.
        #[arg(long)]
        date: String,
        /// Start, HH:MM local time.
        #[arg(long)]
        start: String,
        /// End, HH:MM local time (24:00 for the end of the day).
        #[arg(long)]
        end: String,
        /// Where (自宅, サテライトオフィス名…).
        #[arg(long, default_value = "自宅")]
        place: String,
        /// Record it as approved (the section chief's decision, e.g. from HR).
        #[arg(long)]
        approved: bool,
    },
    /// Import plans from CSV: `user_id,date,start,end,place[,status]` with a
    /// header line; status is submitted (default), approved or rejected.
    Import {
        /// The CSV file (UTF-8, with or without BOM).
        file: PathBuf,
    },
    /// Approve or reject a submitted plan.
    Decide {
        /// Plan id.
        #[arg(long)]
        id: String,
        /// Reject instead of approve.
        #[arg(long)]
        reject: bool,
    },
    /// List a user's plans.
    List {
        /// User id.
        #[arg(long)]
        user: String,
    },
}

/// Run an `admin plan` command.
pub async fn run(store: &Store, cmd: PlanCmd) -> anyhow::Result<()> {
    let now = kakehashi_store::unix_now();
    let who = actor();
    match cmd {
        PlanCmd::Add {
            user,
            date,
            start,
            end,
            place,
            approved,
        } => {
            let spec = PlanSpec {
                user_id: user.clone(),
                date,
                start_min: parse_hhmm("start", &start)?,
                end_min: parse_hhmm("end", &end)?,
                place,
            };
            let id = add_plan(
                store,
                &who,
                now,
                &spec,
                approved.then_some(PlanStatus::Approved),
            )
            .await?;
            println!(
                "plan {id} for {user} on {}: {}–{} ({})",
                spec.date,
                hhmm(spec.start_min),
                hhmm(spec.end_min),
                if approved { "approved" } else { "submitted" }
            );
        }
        PlanCmd::Import { file } => {
            let n = import_plans(store, &who, &file).await?;
            println!("{n} plan(s) imported from {}", file.display());
        }
        PlanCmd::Decide { id, reject } => {
            let a = Audit::new(
                now,
                &who,
                if reject {
                    "plan.reject"
                } else {
                    "plan.approve"
                },
            )
            .subject(&id);
            let p = store.decide_plan(&id, !reject, a).await?;
            println!("plan {id}: {}", p.status.as_str());
        }
        PlanCmd::List { user } => {
            println!(
                "{:<22} {:<10} {:<11} {:<10} place",
                "id", "date", "hours", "status"
            );
            for p in store.plans_for_user(&user).await? {
                println!(
                    "{:<22} {:<10} {}–{} {:<10} {}",
                    p.id,
                    p.date,
                    hhmm(p.start_min),
                    hhmm(p.end_min),
                    p.status.as_str(),
                    p.place
                );
            }
        }
    }
    Ok(())
}

async fn add_plan(
    store: &Store,
    who: &str,
    now: i64,
    spec: &PlanSpec,
    status: Option<PlanStatus>,
) -> anyhow::Result<String> {
    if store.get_user(&spec.user_id).await?.is_none() {
        bail!("user {:?} does not exist", spec.user_id);
    }
    let a = Audit::new(now, who, "plan.submit")
        .subject(&spec.user_id)
        .detail(json!({ "date": spec.date, "start": hhmm(spec.start_min), "end": hhmm(spec.end_min), "place": spec.place }));
    let p = store.submit_plan(spec, a).await?;
    match status {
        Some(PlanStatus::Approved) | Some(PlanStatus::Rejected) => {
            let approve = status == Some(PlanStatus::Approved);
            let a = Audit::new(
                now,
                who,
                if approve {
                    "plan.approve"
                } else {
                    "plan.reject"
                },
            )
            .subject(&p.id)
            .reason("imported");
            store.decide_plan(&p.id, approve, a).await?;
        }
        _ => {}
    }
    Ok(p.id)
}

/// CSV import: every line checked before anything is written, so a bad
/// file changes nothing.
async fn import_plans(store: &Store, who: &str, file: &Path) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let rows = parse_plans(&text, file)?;
    let now = kakehashi_store::unix_now();
    for (n, spec, status) in &rows {
        add_plan(store, who, now, spec, *status)
            .await
            .with_context(|| format!("{}:{n}", file.display()))?;
    }
    Ok(rows.len())
}

/// The plans in the CSV `text` of `file`, each with its line number; the
/// first problem is an error naming `file` and the line. Rows are checked
/// here as far as the text goes (columns, times, status); the store checks
/// the rest ([`PlanSpec::validate`]) when they are submitted. Public for the
/// `plan_csv` fuzz target.
pub fn parse_plans(
    text: &str,
    file: &Path,
) -> anyhow::Result<Vec<(usize, PlanSpec, Option<PlanStatus>)>> {
    let mut rows = Vec::new();
    for (n, f) in super::csvfile::records(text, file, "user")? {
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        if !(5..=6).contains(&f.len()) {
            bail!(
                "{}:{n}: expected user_id,date,start,end,place[,status]",
                file.display()
            );
        }
        let status = match f.get(5).copied().unwrap_or("submitted") {
            "submitted" | "" => None,
            "approved" => Some(PlanStatus::Approved),
            "rejected" => Some(PlanStatus::Rejected),
            other => bail!("{}:{n}: unknown status {other:?}", file.display()),
        };
        let spec = PlanSpec {
            user_id: f[0].to_string(),
            date: f[1].to_string(),
            start_min: parse_hhmm("start", f[2])
                .with_context(|| format!("{}:{n}", file.display()))?,
            end_min: parse_hhmm("end", f[3]).with_context(|| format!("{}:{n}", file.display()))?,
            place: f[4].to_string(),
        };
        if spec.start_min >= spec.end_min {
            bail!("{}:{n}: start must be before end", file.display());
        }
        rows.push((n, spec, status));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_csv_as_a_spreadsheet_writes_it() {
        let f = Path::new("plans.csv");
        let text = "\u{feff}user_id,date,start,end,place,status\r\n\
                    u1, 2026-01-15 ,8:30,17:15,自宅\r\n\
                    \r\n\
                    u2,2026-01-16,09:00,12:00,\"支所, 2階\",approved\r\n";
        let rows = parse_plans(text, f).unwrap();
        assert_eq!(rows.len(), 2);
        let (n, p, st) = &rows[0];
        assert_eq!(
            (*n, p.user_id.as_str(), p.date.as_str()),
            (2, "u1", "2026-01-15")
        );
        assert_eq!((p.start_min, p.end_min, st), (510, 1035, &None));
        let (n, p, st) = &rows[1];
        assert_eq!(
            (*n, p.place.as_str(), st),
            (4, "支所, 2階", &Some(PlanStatus::Approved))
        );
        let e = parse_plans("u1,2026-01-15,09:00\n", f).unwrap_err();
        assert_eq!(
            e.to_string(),
            "plans.csv:1: expected user_id,date,start,end,place[,status]"
        );
        let e = parse_plans(
            "u1,2026-01-15,09:00,10:00,x\nu1,2026-01-15,10:00,09:00,x\n",
            f,
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "plans.csv:2: start must be before end"
        );
        let e = parse_plans("u1,2026-01-15,09:00,10:00,x,maybe\n", f).unwrap_err();
        assert_eq!(e.to_string(), "plans.csv:1: unknown status \"maybe\"");
    }

    /// Lines ended by a lone CR (Excel for Mac's "CSV (Macintosh)") are
    /// lines: each record gets its own number, and only the first line can
    /// be the header. Before, every record was "line 1", so a row whose
    /// user id starts with "user" was silently skipped as a header. Caught
    /// by the `plan_csv` fuzz target's check that line numbers increase.
    #[test]
    fn lines_ended_by_cr_alone_are_numbered() {
        let f = Path::new("plans.csv");
        let text = "user_id,date,start,end,place\ru1,2026-01-15,09:00,10:00,x\r\
                    user2,2026-01-15,09:00,10:00,y\r\ru3,2026-01-15,09:00,10:00,z\r";
        let rows = parse_plans(text, f).unwrap();
        let got: Vec<(usize, &str)> = rows
            .iter()
            .map(|(n, p, _)| (*n, p.user_id.as_str()))
            .collect();
        assert_eq!(got, [(2, "u1"), (3, "user2"), (5, "u3")]);
        let e = parse_plans("u1,2026-01-15,09:00,10:00,x\ru2,2026-01-15,09:00\r", f);
        assert_eq!(
            e.unwrap_err().to_string(),
            "plans.csv:2: expected user_id,date,start,end,place[,status]"
        );
    }
}
