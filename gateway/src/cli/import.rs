//! `kakehashi-gateway admin import`: the April personnel changes (人事異動)
//! from CSV files — users with their departments and roles, desks, loaned
//! laptops. Every line of every file is checked, and checked against the
//! store and the other files, before anything is written; a file with any
//! error changes nothing. `--check` prints what would change and stops.
//!
//! ```text
//! users.csv    user_id,name,department,roles[,status]     roles: staff;chief;officer;operator
//! desks.csv    desk_id,level,segment,department,owners[,service]   owners: u1;u2
//! laptops.csv  device_id,class,user
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use kakehashi_store::{
    validate_id, Audit, Desk, DeskService, Device, DeviceClass, DeviceSpec, NewUser, Role, Segment,
    Store, User,
};
use serde_json::json;

use super::{actor, csvfile};

/// `admin import`
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Users: `user_id,name,department,roles[,status]`; roles separated by
    /// `;` (staff, chief, officer, operator; empty: staff); status `active`
    /// (default) or `disabled` (someone who left: logins revoked).
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Desks: `desk_id,level,segment,department,owners[,service]`; owners
    /// separated by `;`; service `rdp` (default) or `other`.
    #[arg(long, value_name = "FILE")]
    pub desks: Option<PathBuf>,
    /// Loaned laptops: `device_id,class,user` (class as in the laptop's
    /// certificate: home, mobile or satellite).
    #[arg(long, value_name = "FILE")]
    pub laptops: Option<PathBuf>,
    /// Check every line and print what would change; write nothing.
    #[arg(long)]
    pub check: bool,
    /// Why (kept in the audit log of every change), e.g. "2026年4月 人事異動".
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// One line of users.csv.
#[derive(Debug, Clone)]
struct UserRow {
    at: String,
    user: NewUser,
    disabled: bool,
}

/// One line of desks.csv.
#[derive(Debug, Clone)]
struct DeskRow {
    at: String,
    desk: Desk,
}

/// One line of laptops.csv.
#[derive(Debug, Clone)]
struct LaptopRow {
    at: String,
    id: String,
    class: DeviceClass,
    user: String,
}

/// What the files say, line by line, with every error found.
#[derive(Debug, Default)]
struct Parsed {
    users: Vec<UserRow>,
    desks: Vec<DeskRow>,
    laptops: Vec<LaptopRow>,
    errors: Vec<String>,
}

/// One write, with the line it comes from.
#[derive(Debug)]
enum Change {
    AddUser(UserRow),
    Roles {
        at: String,
        id: String,
        from: BTreeSet<Role>,
        to: BTreeSet<Role>,
    },
    /// A new name or department (the April transfers).
    Profile {
        at: String,
        id: String,
        from: (String, String),
        to: (String, String),
    },
    Disable {
        at: String,
        id: String,
    },
    Enable {
        at: String,
        id: String,
    },
    AddDesk(DeskRow),
    SetDesk {
        at: String,
        before: Desk,
        after: Desk,
    },
    Laptop {
        at: String,
        spec: DeviceSpec,
        before: Option<Device>,
    },
}

impl Change {
    fn describe(&self) -> String {
        let roles = |r: &BTreeSet<Role>| r.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",");
        match self {
            Change::AddUser(r) => format!(
                "{}: add user {} ({}, {}; {}){}",
                r.at,
                r.user.id,
                r.user.name,
                r.user.department,
                roles(&r.user.roles),
                if r.disabled { ", disabled" } else { "" }
            ),
            Change::Roles { at, id, from, to } => {
                format!("{at}: user {id} roles {} -> {}", roles(from), roles(to))
            }
            Change::Profile { at, id, from, to } => format!(
                "{at}: user {id} {} ({}) -> {} ({})",
                from.0, from.1, to.0, to.1
            ),
            Change::Disable { at, id } => format!("{at}: disable user {id} (logins revoked)"),
            Change::Enable { at, id } => format!("{at}: enable user {id}"),
            Change::AddDesk(r) => format!("{}: add desk {}", r.at, desk_text(&r.desk)),
            Change::SetDesk { at, before, after } => format!(
                "{at}: desk {} was {}, becomes {}",
                after.id,
                desk_text(before),
                desk_text(after)
            ),
            Change::Laptop { at, spec, before } => format!(
                "{at}: laptop {} {} {}, lent to {}",
                spec.id,
                if before.is_some() {
                    "changes:"
                } else {
                    "added:"
                },
                spec.class.as_str(),
                spec.loaned_to.as_deref().unwrap_or("-")
            ),
        }
    }
}

fn desk_text(d: &Desk) -> String {
    let owners: Vec<&str> = d.owners.iter().map(String::as_str).collect();
    format!(
        "{} (level {}, {}, {}, {}, owners {})",
        d.id,
        d.level,
        d.segment.as_str(),
        d.service.as_str(),
        d.department,
        owners.join(",")
    )
}

/// Free text as the store accepts it: not empty, at most `max` bytes, no
/// control characters.
fn text_ok(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > max {
        return Err(format!("{what} is longer than {max} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

fn id_ok(what: &'static str, s: &str) -> Result<(), String> {
    validate_id(what, s).map_err(|e| e.to_string())
}

/// `a;b; c` as a set (empty parts ignored).
fn list(s: &str) -> Vec<String> {
    s.split([';', ' '])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_user(f: &[String]) -> Result<(NewUser, bool), String> {
    if !(4..=5).contains(&f.len()) {
        return Err("expected user_id,name,department,roles[,status]".into());
    }
    id_ok("user id", &f[0])?;
    text_ok("name", &f[1], 256)?;
    text_ok("department", &f[2], 128)?;
    let mut roles = BTreeSet::new();
    for r in list(&f[3]) {
        roles.insert(
            r.parse::<Role>()
                .map_err(|_| format!("unknown role {r:?} (staff, chief, officer, operator)"))?,
        );
    }
    if roles.is_empty() {
        roles.insert(Role::Staff);
    }
    let disabled = match f.get(4).map(String::as_str).unwrap_or("") {
        "" | "active" => false,
        "disabled" => true,
        other => return Err(format!("unknown status {other:?} (active or disabled)")),
    };
    Ok((
        NewUser {
            id: f[0].clone(),
            name: f[1].clone(),
            department: f[2].clone(),
            roles,
        },
        disabled,
    ))
}

fn parse_desk(f: &[String]) -> Result<Desk, String> {
    if !(5..=6).contains(&f.len()) {
        return Err("expected desk_id,level,segment,department,owners[,service]".into());
    }
    id_ok("desk id", &f[0])?;
    let level = match f[1].as_str() {
        "1" => 1,
        "2" => 2,
        "3" => 3,
        other => return Err(format!("level {other:?} must be 1, 2 or 3 (機密性レベル)")),
    };
    let segment = f[2]
        .parse::<Segment>()
        .map_err(|_| format!("segment {:?} must be lgwan, internet or mynumber", f[2]))?;
    text_ok("department", &f[3], 128)?;
    let owners = list(&f[4]);
    for o in &owners {
        id_ok("owner", o)?;
    }
    let service = match f.get(5).map(String::as_str).unwrap_or("") {
        "" => DeskService::Rdp,
        s => s
            .parse::<DeskService>()
            .map_err(|_| format!("service {s:?} must be rdp or other"))?,
    };
    Ok(Desk {
        id: f[0].clone(),
        department: f[3].clone(),
        level,
        segment,
        service,
        owners: owners.into_iter().collect(),
    })
}

fn parse_laptop(f: &[String]) -> Result<(String, DeviceClass, String), String> {
    if f.len() != 3 {
        return Err("expected device_id,class,user".into());
    }
    id_ok("device id", &f[0])?;
    let class = f[1]
        .parse::<DeviceClass>()
        .map_err(|_| format!("class {:?} must be home, mobile or satellite", f[1]))?;
    id_ok("user", &f[2])?;
    Ok((f[0].clone(), class, f[2].clone()))
}

/// Every line of the three files, each checked on its own.
fn parse(args: &ImportArgs) -> anyhow::Result<Parsed> {
    let mut p = Parsed::default();
    let at = |file: &Path, n: usize| format!("{}:{n}", file.display());
    if let Some(file) = &args.users {
        let mut seen = BTreeSet::new();
        for (n, f) in csvfile::read(file, "user_id")? {
            match parse_user(&f) {
                Ok(_) if !seen.insert(f[0].clone()) => {
                    p.errors
                        .push(format!("{}: user {} appears twice", at(file, n), f[0]))
                }
                Ok((user, disabled)) => p.users.push(UserRow {
                    at: at(file, n),
                    user,
                    disabled,
                }),
                Err(e) => p.errors.push(format!("{}: {e}", at(file, n))),
            }
        }
    }
    if let Some(file) = &args.desks {
        let mut seen = BTreeSet::new();
        for (n, f) in csvfile::read(file, "desk_id")? {
            match parse_desk(&f) {
                Ok(d) if !seen.insert(d.id.clone()) => {
                    p.errors
                        .push(format!("{}: desk {} appears twice", at(file, n), d.id))
                }
                Ok(desk) => p.desks.push(DeskRow {
                    at: at(file, n),
                    desk,
                }),
                Err(e) => p.errors.push(format!("{}: {e}", at(file, n))),
            }
        }
    }
    if let Some(file) = &args.laptops {
        let mut seen = BTreeSet::new();
        for (n, f) in csvfile::read(file, "device_id")? {
            match parse_laptop(&f) {
                Ok((id, ..)) if !seen.insert(id.clone()) => p
                    .errors
                    .push(format!("{}: laptop {id} appears twice", at(file, n))),
                Ok((id, class, user)) => p.laptops.push(LaptopRow {
                    at: at(file, n),
                    id,
                    class,
                    user,
                }),
                Err(e) => p.errors.push(format!("{}: {e}", at(file, n))),
            }
        }
    }
    Ok(p)
}

/// The store as it is now.
struct Current {
    users: BTreeMap<String, User>,
    desks: BTreeMap<String, Desk>,
    devices: BTreeMap<String, Device>,
}

/// The changes the files ask for, or every line that cannot be done.
fn plan(p: Parsed, cur: &Current) -> (Vec<Change>, Vec<String>, Vec<String>) {
    let Parsed {
        users,
        desks,
        laptops,
        mut errors,
    } = p;
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    // Users after the import (those in the store, then the file's).
    let mut after: BTreeMap<String, (String, bool)> = cur
        .users
        .values()
        .map(|u| (u.id.clone(), (u.department.clone(), u.disabled)))
        .collect();
    for r in &users {
        after.insert(r.user.id.clone(), (r.user.department.clone(), r.disabled));
    }
    for r in users {
        let Some(old) = cur.users.get(&r.user.id) else {
            changes.push(Change::AddUser(r));
            continue;
        };
        let mut same = true;
        if old.name != r.user.name || old.department != r.user.department {
            same = false;
            changes.push(Change::Profile {
                at: r.at.clone(),
                id: r.user.id.clone(),
                from: (old.name.clone(), old.department.clone()),
                to: (r.user.name.clone(), r.user.department.clone()),
            });
        }
        if old.roles != r.user.roles {
            same = false;
            changes.push(Change::Roles {
                at: r.at.clone(),
                id: r.user.id.clone(),
                from: old.roles.clone(),
                to: r.user.roles.clone(),
            });
        }
        if old.disabled != r.disabled {
            same = false;
            let (at, id) = (r.at.clone(), r.user.id.clone());
            changes.push(if r.disabled {
                Change::Disable { at, id }
            } else {
                Change::Enable { at, id }
            });
        }
        if same {
            notes.push(format!("{}: user {} unchanged", r.at, r.user.id));
        }
    }
    let departments: BTreeSet<&str> = after.values().map(|(d, _)| d.as_str()).collect();
    for r in desks {
        let mut ok = true;
        for o in &r.desk.owners {
            match after.get(o) {
                None => {
                    ok = false;
                    errors.push(format!(
                        "{}: デスクPC {} の所有者 {o} が登録されていません / owner {o} of desk {} is neither in the store nor in the users file",
                        r.at, r.desk.id, r.desk.id
                    ));
                }
                Some((_, true)) => notes.push(format!(
                    "{}: note: owner {o} of desk {} is disabled",
                    r.at, r.desk.id
                )),
                Some(_) => {}
            }
        }
        if !departments.contains(r.desk.department.as_str()) {
            notes.push(format!(
                "{}: note: no user is in department {} (a typo?)",
                r.at, r.desk.department
            ));
        }
        if !ok {
            continue;
        }
        match cur.desks.get(&r.desk.id) {
            None => changes.push(Change::AddDesk(r)),
            Some(old) if *old == r.desk => {
                notes.push(format!("{}: desk {} unchanged", r.at, r.desk.id))
            }
            Some(old) => changes.push(Change::SetDesk {
                at: r.at,
                before: old.clone(),
                after: r.desk,
            }),
        }
    }
    for r in laptops {
        match after.get(&r.user) {
            None => {
                errors.push(format!(
                    "{}: 貸与PC {} の貸与先 {} が登録されていません / user {} of laptop {} is neither in the store nor in the users file",
                    r.at, r.id, r.user, r.user, r.id
                ));
                continue;
            }
            Some((_, true)) => notes.push(format!(
                "{}: note: laptop {} is lent to {}, who is disabled",
                r.at, r.id, r.user
            )),
            Some(_) => {}
        }
        let before = cur.devices.get(&r.id).cloned();
        if let Some(d) = &before {
            if d.class == r.class && d.loaned_to.as_deref() == Some(r.user.as_str()) {
                notes.push(format!("{}: laptop {} unchanged", r.at, r.id));
                continue;
            }
        }
        let spec = DeviceSpec {
            id: r.id,
            class: r.class,
            loaned_to: Some(r.user),
            // The serial is learnt from the certificate at its first login.
            cert_serial: before.as_ref().and_then(|d| d.cert_serial.clone()),
        };
        changes.push(Change::Laptop {
            at: r.at,
            spec,
            before,
        });
    }
    (changes, notes, errors)
}

/// Run `admin import` on `store`.
pub async fn run(store: &Store, args: ImportArgs) -> anyhow::Result<()> {
    if args.users.is_none() && args.desks.is_none() && args.laptops.is_none() {
        bail!("give at least one of --users, --desks and --laptops");
    }
    let parsed = parse(&args)?;
    let cur = Current {
        users: store
            .list_users()
            .await?
            .into_iter()
            .map(|u| (u.id.clone(), u))
            .collect(),
        desks: store
            .list_desks()
            .await?
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect(),
        devices: store
            .list_devices()
            .await?
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect(),
    };
    let (changes, notes, errors) = plan(parsed, &cur);
    for n in &notes {
        println!("{n}");
    }
    for c in &changes {
        println!("{}", c.describe());
    }
    if !errors.is_empty() {
        let mut msg = format!(
            "取り込めない行が {n} 行あります。何も書き込んでいません / {n} line(s) cannot be imported; nothing was written:",
            n = errors.len()
        );
        for e in &errors {
            let _ = write!(msg, "\n  {e}");
        }
        bail!(msg);
    }
    if args.check {
        println!(
            "確認のみ: 何も書き込んでいません / check only: {} change(s), nothing written",
            changes.len()
        );
        return Ok(());
    }
    let who = actor();
    let n = changes.len();
    for c in changes {
        write(store, &who, &args.reason, c).await?;
    }
    println!("{n} change(s) written / {n} 件を書き込みました");
    Ok(())
}

/// One change and its audit record (the detail names the line).
async fn write(store: &Store, who: &str, reason: &str, c: Change) -> anyhow::Result<()> {
    let now = kakehashi_store::unix_now();
    let audit = |action: &str, subject: &str, at: &str| {
        Audit::new(now, who, action)
            .subject(subject)
            .reason(reason)
            .detail(json!({ "import": at }))
    };
    let failed = |at: &str, e: kakehashi_store::Error| {
        anyhow::anyhow!("{at}: {e} (the lines before it were written; fix it and import again: lines already done show as unchanged)")
    };
    match c {
        Change::AddUser(r) => {
            store
                .add_user(&r.user, audit("user.add", &r.user.id, &r.at))
                .await
                .map_err(|e| failed(&r.at, e))?;
            if r.disabled {
                store
                    .set_user_disabled(&r.user.id, true, audit("user.disable", &r.user.id, &r.at))
                    .await
                    .map_err(|e| failed(&r.at, e))?;
            }
        }
        Change::Roles { at, id, to, .. } => store
            .set_user_roles(&id, &to, audit("user.roles", &id, &at))
            .await
            .map_err(|e| failed(&at, e))?,
        Change::Profile { at, id, from, to } => {
            let a = Audit::new(now, who, "user.update")
                .subject(&id)
                .detail(json!({
                    "import": at,
                    "before": { "name": from.0, "department": from.1 },
                    "after": { "name": to.0, "department": to.1 },
                }));
            store
                .set_user_profile(&id, &to.0, &to.1, a)
                .await
                .map_err(|e| failed(&at, e))?;
        }
        Change::Disable { at, id } => {
            store
                .set_user_disabled(&id, true, audit("user.disable", &id, &at))
                .await
                .map_err(|e| failed(&at, e))?;
            store
                .revoke_login_tokens_for_user(&id, audit("token.revoke_all", &id, &at))
                .await
                .map_err(|e| failed(&at, e))?;
        }
        Change::Enable { at, id } => store
            .set_user_disabled(&id, false, audit("user.enable", &id, &at))
            .await
            .map_err(|e| failed(&at, e))?,
        Change::AddDesk(r) => store
            .add_desk(&r.desk, audit("desk.add", &r.desk.id, &r.at))
            .await
            .map_err(|e| failed(&r.at, e))?,
        Change::SetDesk { at, before, after } => {
            let a = Audit::new(now, who, "desk.set")
                .subject(&after.id)
                .reason(reason)
                .detail(json!({ "import": at, "before": before, "after": after }));
            store
                .set_desk(&after, a)
                .await
                .map_err(|e| failed(&at, e))?
        }
        Change::Laptop { at, spec, before } => {
            let action = if before.is_some() {
                "device.set"
            } else {
                "device.register"
            };
            let a = Audit::new(now, who, action)
                .subject(&spec.id)
                .reason(reason)
                .detail(json!({ "import": at, "class": spec.class.as_str(), "loaned_to": spec.loaned_to }));
            store
                .upsert_device(&spec, a)
                .await
                .map_err(|e| failed(&at, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, dept: &str) -> User {
        User {
            id: id.into(),
            name: format!("name {id}"),
            department: dept.into(),
            roles: [Role::Staff].into(),
            disabled: false,
            created: 0,
        }
    }

    fn parsed(users: &str, desks: &str, laptops: &str) -> Parsed {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            Some(p)
        };
        let args = ImportArgs {
            users: w("users.csv", users),
            desks: w("desks.csv", desks),
            laptops: w("laptops.csv", laptops),
            check: true,
            reason: String::new(),
        };
        parse(&args).unwrap()
    }

    #[test]
    fn every_bad_line_is_named_and_nothing_is_planned_from_it() {
        let p = parsed(
            "\u{feff}user_id,name,department,roles,status\r\n\
             u1,加藤 一郎,総務課,staff;chief\r\n\
             u2,佐藤,税務課,king\r\n\
             u1,again,総務課,staff\r\n\
             u3,鈴木,税務課,,gone\r\n",
            "desk_id,level,segment,department,owners,service\n\
             DESK-1,2,lgwan,総務課,u1;u9\n\
             DESK-2,4,lgwan,総務課,u1\n\
             DESK-3,1,lan,総務課,u1\n",
            "device_id,class,user\nPC-1,home,u1\nPC-2,office,u1\nPC-3,home,nobody\n",
        );
        let names: Vec<&str> = p
            .errors
            .iter()
            .map(|e| e.rsplit('/').next().unwrap())
            .collect();
        let want = [
            "users.csv:3: unknown role \"king\"",
            "users.csv:4: user u1 appears twice",
            "users.csv:5: unknown status \"gone\"",
            "desks.csv:3: level \"4\"",
            "desks.csv:4: segment \"lan\"",
            "laptops.csv:3: class \"office\"",
        ];
        for w in want {
            assert!(
                names.iter().any(|e| e.starts_with(w)),
                "{w} not in {names:?}"
            );
        }
        let cur = Current {
            users: BTreeMap::new(),
            desks: BTreeMap::new(),
            devices: BTreeMap::new(),
        };
        let (_, _, errors) = plan(p, &cur);
        assert!(
            errors.iter().any(|e| e.contains("owner u9 of desk DESK-1")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("user nobody of laptop PC-3")),
            "{errors:?}"
        );
    }

    #[test]
    fn changes_against_the_store() {
        let p = parsed(
            "u1,name u1,総務課,staff;chief\nu2,name u2,税務課,staff,disabled\nu4,新人,税務課,\nu5,name u5,税務課,staff\n",
            "DESK-1,3,lgwan,総務課,u1\nDESK-2,2,lgwan,税務課,u4\n",
            "PC-1,satellite,u4\n",
        );
        let cur = Current {
            users: [
                user("u1", "総務課"),
                user("u2", "税務課"),
                user("u5", "総務課"),
            ]
            .into_iter()
            .map(|u| (u.id.clone(), u))
            .collect(),
            desks: [Desk {
                id: "DESK-1".into(),
                department: "総務課".into(),
                level: 2,
                segment: Segment::Lgwan,
                service: DeskService::Rdp,
                owners: ["u1".to_string()].into(),
            }]
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect(),
            devices: BTreeMap::new(),
        };
        let (changes, _, errors) = plan(p, &cur);
        let text: Vec<String> = changes.iter().map(Change::describe).collect();
        assert!(errors.is_empty(), "{errors:?}");
        for want in [
            "user u5 name u5 (総務課) -> name u5 (税務課)",
            "user u1 roles staff -> staff,chief",
            "disable user u2",
            "add user u4 (新人, 税務課; staff)",
            "desk DESK-1 was DESK-1 (level 2",
            "becomes DESK-1 (level 3",
            "add desk DESK-2",
            "laptop PC-1 added: satellite, lent to u4",
        ] {
            assert!(
                text.iter().any(|t| t.contains(want)),
                "{want} not in {text:#?}"
            );
        }
    }
}
