//! The command-line tools of `kakehashi-gateway`, one module per command
//! group, on the gateway's store: what an officer or IT does from the gateway
//! machine. Every change is one store transaction with its audit record
//! (who: the operating-system user, [`actor`]; why: `--reason`).

pub mod admin;
pub mod audit;
pub mod bcp;
pub mod cluster;
mod csvfile;
pub mod desk;
pub mod import;
pub mod plan;
pub mod policy;
pub mod report;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;
use kakehashi_store::Store;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::Config;

/// Loads the gateway's configuration file (the global `--config`, or
/// `KAKEHASHI_CONFIG`) and opens the store it names (its URL is never
/// printed with a password).
pub async fn open_store(config: &Path) -> anyhow::Result<(Config, Store)> {
    let cfg = Config::load(config)?;
    let url = cfg
        .store_url
        .as_ref()
        .context("the configuration has no [store]")?;
    // Whether this command is about to create the SQLite file (normally the
    // gateway's first start does).
    let new_file = url.sqlite_path().filter(|p| !p.exists());
    let store = Store::open(url.expose())
        .await
        .with_context(|| format!("cannot open the store {url}"))?;
    if let Some(path) = new_file {
        give_to_directory_owner(&path)?;
    }
    // On PostgreSQL, records the gateways have not sealed yet (a fraction
    // of a second's worth, or all of them when no gateway runs) go into the
    // chain first, so `audit verify`, `audit export` and the histories
    // see every committed change.
    if let Err(e) = store.seal_pending().await {
        tracing::warn!(error = %e, "Cannot seal the audit records waiting in the store");
    }
    Ok((cfg, store))
}

/// A database file that root creates (an admin command run before the
/// gateway's first start) would belong to root, and the gateway, running
/// as its own user, could not write it ("attempt to write a readonly
/// database"). So, as root, the new file and its `-wal` and `-shm` files
/// are given to the owner of the directory they are in (the service's
/// state directory; if root created that directory too, systemd's
/// `StateDirectory=` hands it over whole at the service's start). They stay
/// 0600. Other users create the file as themselves, as the gateway would.
fn give_to_directory_owner(db: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if effective_uid() != Some(0) {
            return Ok(());
        }
        let dir = db
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let meta =
            std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        if meta.uid() == 0 {
            return Ok(());
        }
        let name = db
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for file in [name.clone(), format!("{name}-wal"), format!("{name}-shm")] {
            let file = dir.join(file);
            if file.exists() {
                std::os::unix::fs::chown(&file, Some(meta.uid()), Some(meta.gid())).with_context(
                    || {
                        format!(
                            "cannot give {} to the owner of {}",
                            file.display(),
                            dir.display()
                        )
                    },
                )?;
            }
        }
        eprintln!(
            "データベース {} を作成し、{} の所有者 (uid {}) に引き渡しました / created the database {} and gave it to the owner of {} (uid {}), as the gateway runs as that user",
            db.display(),
            dir.display(),
            meta.uid(),
            db.display(),
            dir.display(),
            meta.uid()
        );
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}

/// The effective uid of this process (`Uid:` in /proc/self/status, second field).
fn effective_uid() -> Option<u32> {
    uid_field(1)
}

/// A buffered writer on `path`, or on standard output.
pub fn output(path: Option<&Path>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match path {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    })
}

/// Who is acting: `admin:` and the user of the process's real uid (not
/// `$USER`, which anyone sets to anything). As root through sudo, the
/// sudoing user is added as sudo reports it: `admin:root(sudo:yamada)`.
pub(crate) fn actor() -> String {
    let uid = real_uid();
    let name = uid
        .and_then(|u| user_name(u, "/etc/passwd"))
        .unwrap_or_else(|| uid.map_or_else(|| "unknown".into(), |u| format!("uid:{u}")));
    match std::env::var("SUDO_USER") {
        Ok(s) if uid == Some(0) && !s.is_empty() && s != "root" => {
            let s: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
            format!("admin:{name}(sudo:{s})")
        }
        _ => format!("admin:{name}"),
    }
}

/// The real uid of this process (`Uid:` in /proc/self/status, first field).
fn real_uid() -> Option<u32> {
    uid_field(0)
}

/// Field `n` of `Uid:` in /proc/self/status (real, effective, saved, fs).
fn uid_field(n: usize) -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(n)?
        .parse()
        .ok()
}

/// The name of `uid` in a passwd file.
fn user_name(uid: u32, passwd: &str) -> Option<String> {
    let text = std::fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

pub(crate) fn parse_time(what: &str, s: &str) -> anyhow::Result<OffsetDateTime> {
    OffsetDateTime::parse(s.trim(), &Rfc3339).with_context(|| {
        format!("{what} {s:?} is not an RFC 3339 time such as 2026-01-15T18:00:00+09:00")
    })
}

/// `t` in the gateway's local time (`[identity] utc_offset_hours`, Japan
/// time by default), as RFC 3339 with its offset: what staff and officers
/// read, never UTC.
pub(crate) fn local(t: i64, utc_offset_secs: i32) -> String {
    let offset =
        time::UtcOffset::from_whole_seconds(utc_offset_secs).unwrap_or(time::UtcOffset::UTC);
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.to_offset(offset).format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

#[cfg(test)]
mod actor_tests {
    use super::*;

    #[test]
    fn times_are_printed_in_local_time() {
        assert_eq!(local(0, 9 * 3600), "1970-01-01T09:00:00+09:00");
        assert_eq!(local(1_768_435_200, 9 * 3600), "2026-01-15T09:00:00+09:00");
    }

    #[test]
    fn actor_is_the_real_uid_not_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/bash\nyamada:x:1000:1000::/home/yamada:/bin/sh\nbad line\n",
        )
        .unwrap();
        let p = passwd.to_str().unwrap();
        assert_eq!(user_name(1000, p).as_deref(), Some("yamada"));
        assert_eq!(user_name(0, p).as_deref(), Some("root"));
        assert_eq!(user_name(4242, p), None);
        let uid = real_uid().expect("a real uid");
        let id = std::process::Command::new("id")
            .arg("-ru")
            .output()
            .unwrap();
        assert_eq!(uid.to_string(), String::from_utf8_lossy(&id.stdout).trim());
        let name = user_name(uid, "/etc/passwd").unwrap_or_else(|| format!("uid:{uid}"));
        assert!(actor().starts_with(&format!("admin:{name}")), "{}", actor());
    }
}
