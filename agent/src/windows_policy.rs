//! The Windows second layer (DESIGN.md §6, issue 5 item 4): on a Windows desk
//! the agent also sets the RDP host's own redirection policy (the values under
//! `HKLM\SOFTWARE\Policies\Microsoft\Windows NT\Terminal Services`) for the
//! duration of each session and restores it afterwards.
//!
//! The RDP filter ([`crate::rdp`]) stays the enforcement; this layer is defence
//! in depth and only ever tightens: it writes a value only to switch off a
//! redirection that a live session's ticket denies, and never switches on one
//! that the desk's own policy (Group Policy, local policy) switches off.
//!
//! - The registry is behind [`PolicyKey`], so everything but the registry calls
//!   is platform-neutral and unit-tested on every platform with an in-memory key.
//! - Before the first change, the values found (absent ones included) are
//!   written to a state file ([`STATE_FILE`], written to a temporary file and
//!   renamed over); the file is removed once they are back. A file left by an
//!   agent that stopped mid-session is restored from when the layer opens, at
//!   agent start ([`RedirectionPolicy::open`]).
//! - Sessions that overlap on one desk share the originals saved by the first;
//!   the values in force are the most restrictive of the live sessions (off if
//!   any live session needs it off), and the originals come back when the last
//!   session ends.
//!
//! The `cfg(windows)` registry adapter at the end of this file is not compiled
//! on the Linux machines that build and test this crate (no Windows target is
//! installed there) and has not been run on a real Windows host yet.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::{bail, Context as _};
use kakehashi_proto::{Clipboard, Controls};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// The RDP host's policy key, under `HKEY_LOCAL_MACHINE`.
pub const POLICY_KEY: &str = r"SOFTWARE\Policies\Microsoft\Windows NT\Terminal Services";

/// The state file, in the agent's state directory: the values found before
/// the first live session changed anything.
pub const STATE_FILE: &str = "windows-redirection-policy.json";

/// Format version of the state file.
const STATE_VERSION: u32 = 1;

/// Each redirection the policy key can switch off: the value's name, the DWORD
/// that switches it off, and whether `controls` allow the redirection.
fn switches(c: Controls) -> [(&'static str, u32, bool); 9] {
    [
        // Clipboard: Windows can only switch it off as a whole; one direction is
        // left to the filter.
        ("fDisableClip", 1, c.clipboard != Clipboard::None),
        ("fDisableCdm", 1, c.drive),
        ("fDisableCpm", 1, c.printer),
        ("fDisableLPT", 1, c.ports),
        ("fDisableCcm", 1, c.ports),
        ("fDisablePNPRedir", 1, c.usb),
        ("fDisableCam", 1, c.audio),
        ("fDisableAudioCapture", 1, c.audio),
        // The one value the other way round: 0 switches smartcard redirection off.
        ("fEnableSmartCard", 0, c.smartcard),
    ]
}

/// The names of the policy values this layer manages.
pub fn managed_values() -> impl Iterator<Item = &'static str> {
    switches(Controls::default())
        .into_iter()
        .map(|(name, _, _)| name)
}

/// Policy values under [`POLICY_KEY`] that express `controls` in full (for
/// `fDisable…` values 1 = redirection off, for `fEnableSmartCard` 0 = off).
pub fn policy_values(controls: Controls) -> Vec<(&'static str, u32)> {
    switches(controls)
        .into_iter()
        .map(|(name, off, allowed)| (name, if allowed { 1 - off } else { off }))
        .collect()
}

/// The values a session needs in force: those that switch off what its ticket
/// denies. Redirections the ticket allows are left as the desk has them.
pub fn blocking_values(controls: Controls) -> Vec<(&'static str, u32)> {
    switches(controls)
        .into_iter()
        .filter(|(_, _, allowed)| !allowed)
        .map(|(name, off, _)| (name, off))
        .collect()
}

/// Value name → DWORD, `None` for a value that is absent.
type Values = BTreeMap<String, Option<u32>>;

/// What the key should hold: off where any live session needs it off, every
/// other value as it was found before the first session.
fn wanted(saved: &Values, live: impl Iterator<Item = Controls>) -> Values {
    let mut want = saved.clone();
    for controls in live {
        for (name, off) in blocking_values(controls) {
            want.insert(name.to_string(), Some(off));
        }
    }
    want
}

/// A registry key of named DWORD values: the RDP host's policy key on
/// Windows, a map in tests.
pub trait PolicyKey: Send + std::fmt::Debug {
    /// The value, or `None` when it (or the key itself) is absent. A value of
    /// another type is an error: it could not be restored exactly.
    fn get(&self, name: &str) -> anyhow::Result<Option<u32>>;
    /// Write a DWORD value, creating the key when it is absent.
    fn set(&self, name: &str, value: u32) -> anyhow::Result<()>;
    /// Remove the value; an absent value (or key) is not an error.
    fn delete(&self, name: &str) -> anyhow::Result<()>;
}

/// The state file as written.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    /// [`STATE_VERSION`].
    version: u32,
    /// The key the values belong to, for whoever reads the file.
    key: String,
    /// Every managed value as found before the first session; `null`: absent.
    saved: Values,
}

fn key_name() -> String {
    format!(r"HKLM\{POLICY_KEY}")
}

/// The redirection policy layer of one desk: the live sessions, and the
/// originals while any session is live (or a restore is still owed).
#[derive(Debug)]
pub struct RedirectionPolicy {
    state_file: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    key: Box<dyn PolicyKey>,
    /// The originals; `Some` exactly while the state file holds them.
    saved: Option<Values>,
    /// Live sessions and their controls.
    live: BTreeMap<u64, Controls>,
    next_id: u64,
}

impl RedirectionPolicy {
    /// Open the layer on `key`, with its state file in `state_dir`. A state
    /// file left by an agent that stopped mid-session is restored from first
    /// (and removed); a file that cannot be read or understood is an error and
    /// the key is left untouched.
    pub fn open(key: Box<dyn PolicyKey>, state_dir: &Path) -> anyhow::Result<Arc<Self>> {
        let state_file = state_dir.join(STATE_FILE);
        let saved = read_state(&state_file)?;
        let layer = Self {
            state_file,
            inner: Mutex::new(Inner {
                key,
                saved: None,
                live: BTreeMap::new(),
                next_id: 0,
            }),
        };
        if let Some(saved) = saved {
            let mut inner = layer.lock();
            inner.saved = Some(saved);
            layer.settle(&mut inner).with_context(|| {
                format!(
                    "cannot restore the redirection policy saved in {}",
                    layer.state_file.display()
                )
            })?;
            warn!(
                state_file = %layer.state_file.display(),
                "Restored the desk's redirection policy left changed by an agent that stopped mid-session"
            );
        }
        Ok(Arc::new(layer))
    }

    /// The state file's path.
    pub fn state_file(&self) -> &Path {
        &self.state_file
    }

    /// A session with `controls` starts: save the originals if it is the first
    /// live session, then bring the key to what all live sessions need. On an
    /// error the session is not counted and the key is put back as it was.
    pub fn begin(self: &Arc<Self>, controls: Controls) -> anyhow::Result<SessionPolicy> {
        let mut inner = self.lock();
        if inner.saved.is_none() {
            let mut saved = Values::new();
            for name in managed_values() {
                let value = inner
                    .key
                    .get(name)
                    .with_context(|| format!("cannot read {name} under {}", key_name()))?;
                saved.insert(name.to_string(), value);
            }
            // Saved before anything changes, so that a crash loses nothing.
            write_state(&self.state_file, &saved)?;
            inner.saved = Some(saved);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.live.insert(id, controls);
        if let Err(e) = self.settle(&mut inner) {
            inner.live.remove(&id);
            if let Err(undo) = self.settle(&mut inner) {
                warn!(error = %format!("{undo:#}"), "Cannot undo a partly set redirection policy");
            }
            return Err(e);
        }
        Ok(SessionPolicy {
            layer: self.clone(),
            id,
        })
    }

    /// Session `id` ended: bring the key to what the remaining sessions need,
    /// or back to the originals when none is left.
    fn end(&self, id: u64) -> anyhow::Result<()> {
        let mut inner = self.lock();
        inner.live.remove(&id);
        self.settle(&mut inner)
    }

    /// Write what the live sessions need; with none left, the originals, and
    /// then forget them. Every value is tried even when one fails.
    fn settle(&self, inner: &mut Inner) -> anyhow::Result<()> {
        let Some(saved) = &inner.saved else {
            return Ok(());
        };
        let want = wanted(saved, inner.live.values().copied());
        let mut failed = Vec::new();
        for (name, value) in &want {
            // An unreadable value (another type) is simply overwritten.
            if inner.key.get(name).ok() == Some(*value) {
                continue;
            }
            let written = match value {
                Some(v) => inner.key.set(name, *v),
                None => inner.key.delete(name),
            };
            match written {
                Ok(()) => debug!(value = %name, to = ?value, "Redirection policy value written"),
                Err(e) => failed.push(format!("{name}: {e:#}")),
            }
        }
        if !failed.is_empty() {
            bail!(
                "cannot write {} under {}: {}",
                if failed.len() == 1 {
                    "a value"
                } else {
                    "values"
                },
                key_name(),
                failed.join("; ")
            );
        }
        if inner.live.is_empty() {
            remove_state(&self.state_file)?;
            inner.saved = None;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock must not stop later restores.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One session's part in the desk's redirection policy. Dropping it (on every
/// exit path) ends that part; the originals come back with the last session.
#[derive(Debug)]
#[must_use = "the session's redirection policy is undone when this is dropped"]
pub struct SessionPolicy {
    layer: Arc<RedirectionPolicy>,
    id: u64,
}

impl Drop for SessionPolicy {
    fn drop(&mut self) {
        match self.layer.end(self.id) {
            Ok(()) => debug!("Desk redirection policy settled after the session"),
            Err(e) => warn!(
                error = %format!("{e:#}"),
                state_file = %self.layer.state_file.display(),
                "Cannot restore the desk's redirection policy; the agent tries again when the next session ends and at its next start"
            ),
        }
    }
}

/// Read the state file: `None` when there is none.
fn read_state(path: &Path) -> anyhow::Result<Option<Values>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let hint = || {
        format!(
            "check the values under {} by hand, then delete the file",
            key_name()
        )
    };
    let file: StateFile = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is corrupt (it should hold the desk's redirection policy as saved by the agent); {}",
            path.display(),
            hint()
        )
    })?;
    if file.version != STATE_VERSION || file.key != key_name() {
        bail!(
            "{} is version {} for {}, not version {STATE_VERSION} for {}; {}",
            path.display(),
            file.version,
            file.key,
            key_name(),
            hint()
        );
    }
    // Only the values this layer manages: the file must not become a way to
    // write any policy value.
    if let Some(name) = file
        .saved
        .keys()
        .find(|n| !managed_values().any(|m| m == n.as_str()))
    {
        bail!(
            "{} names {name}, a value the agent does not manage; {}",
            path.display(),
            hint()
        );
    }
    Ok(Some(file.saved))
}

/// Write the state file atomically: a temporary file, flushed, renamed over
/// (tempfile's `persist`).
fn write_state(path: &Path, saved: &Values) -> anyhow::Result<()> {
    let file = StateFile {
        version: STATE_VERSION,
        key: key_name(),
        saved: saved.clone(),
    };
    let json = serde_json::to_vec_pretty(&file).context("cannot encode the state file")?;
    let write = || -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir)?;
        let mut b = tempfile::Builder::new();
        b.prefix(".state.json.tmp");
        // Not a secret: the mode a plain create gives (less the umask).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            b.permissions(fs::Permissions::from_mode(0o666));
        }
        let mut f = b.tempfile_in(dir)?;
        f.write_all(&json)?;
        f.as_file().sync_all()?;
        f.persist(path)?;
        // The rename itself survives a power cut only once the directory is flushed.
        #[cfg(unix)]
        fs::File::open(dir)?.sync_all()?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

fn remove_state(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// The layer as the agent runs it: on Windows the RDP host's policy key, with
/// the state file in `%ProgramData%\Kakehashi`; elsewhere nothing.
#[derive(Debug, Clone, Default)]
pub struct DeskPolicy(Option<Arc<RedirectionPolicy>>);

impl DeskPolicy {
    /// The layer for this desk: on Windows opened once per process (restoring
    /// what a crashed agent left first); off, with an error logged, when that
    /// fails. Elsewhere always off.
    pub fn for_this_desk() -> Self {
        #[cfg(windows)]
        {
            static LAYER: std::sync::OnceLock<Option<Arc<RedirectionPolicy>>> =
                std::sync::OnceLock::new();
            Self(LAYER.get_or_init(registry::open_layer).clone())
        }
        #[cfg(not(windows))]
        {
            Self(None)
        }
    }

    /// A layer on any key (tests).
    pub fn with(layer: Arc<RedirectionPolicy>) -> Self {
        Self(Some(layer))
    }

    /// Set the policy for a session with `controls`; dropping the result
    /// undoes it. A failure is logged and costs only this layer: the RDP
    /// filter's enforcement is unaffected.
    pub fn session(&self, controls: Controls) -> Option<SessionPolicy> {
        let layer = self.0.as_ref()?;
        match layer.begin(controls) {
            Ok(s) => {
                let off: Vec<_> = blocking_values(controls)
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect();
                info!(off = ?off, "Desk redirection policy set for the session");
                Some(s)
            }
            Err(e) => {
                warn!(
                    error = %format!("{e:#}"),
                    "Desk redirection policy not set for this session (the RDP filter is unaffected)"
                );
                None
            }
        }
    }
}

/// The RDP host's policy key through the `windows-registry` crate (0.6).
///
/// NOT COMPILED on the Linux machines that build and test this crate (no
/// Windows target is installed there), and not yet run on a Windows host: it
/// is kept to a few calls, checked against the crate's source (`Key::open`,
/// `Key::create`, `OpenOptions`, `get_type`, `get_u32`, `set_u32`,
/// `remove_value`, `Error::code`).
#[cfg(windows)]
mod registry {
    use std::path::PathBuf;
    use std::sync::Arc;

    use windows_registry::{Type, LOCAL_MACHINE};

    use super::{PolicyKey, RedirectionPolicy, POLICY_KEY};

    /// `HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND)`: the key or the value is absent.
    const NOT_FOUND: i32 = 0x8007_0002_u32 as i32;

    /// `HKLM\SOFTWARE\Policies\Microsoft\Windows NT\Terminal Services`.
    #[derive(Debug)]
    struct TerminalServicesKey;

    impl PolicyKey for TerminalServicesKey {
        fn get(&self, name: &str) -> anyhow::Result<Option<u32>> {
            let key = match LOCAL_MACHINE.open(POLICY_KEY) {
                Ok(key) => key,
                Err(e) if e.code().0 == NOT_FOUND => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            match key.get_type(name) {
                Ok(Type::U32) => Ok(Some(key.get_u32(name)?)),
                Ok(other) => anyhow::bail!("{name} is a {other:?} value, not a DWORD"),
                Err(e) if e.code().0 == NOT_FOUND => Ok(None),
                Err(e) => Err(e.into()),
            }
        }

        fn set(&self, name: &str, value: u32) -> anyhow::Result<()> {
            LOCAL_MACHINE.create(POLICY_KEY)?.set_u32(name, value)?;
            Ok(())
        }

        fn delete(&self, name: &str) -> anyhow::Result<()> {
            let key = match LOCAL_MACHINE.options().read().write().open(POLICY_KEY) {
                Ok(key) => key,
                Err(e) if e.code().0 == NOT_FOUND => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            match key.remove_value(name) {
                Err(e) if e.code().0 != NOT_FOUND => Err(e.into()),
                _ => Ok(()),
            }
        }
    }

    /// `%ProgramData%\Kakehashi`.
    fn state_dir() -> PathBuf {
        std::env::var_os("ProgramData")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
            .join("Kakehashi")
    }

    pub(super) fn open_layer() -> Option<Arc<RedirectionPolicy>> {
        match RedirectionPolicy::open(Box::new(TerminalServicesKey), &state_dir()) {
            Ok(layer) => {
                tracing::info!(
                    state_file = %layer.state_file().display(),
                    "Windows redirection policy layer on"
                );
                Some(layer)
            }
            Err(e) => {
                tracing::error!(
                    error = %format!("{e:#}"),
                    "Windows redirection policy layer OFF for this run (the RDP filter is unaffected)"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory policy key; clones share the values, as two agent runs
    /// share the registry.
    #[derive(Debug, Clone, Default)]
    struct MemoryKey {
        values: Arc<Mutex<BTreeMap<String, u32>>>,
        /// Values whose `get` fails (another type) or whose `set` fails.
        bad_get: Arc<Mutex<Vec<String>>>,
        bad_set: Arc<Mutex<Vec<String>>>,
    }

    impl MemoryKey {
        fn with(values: &[(&str, u32)]) -> Self {
            let key = Self::default();
            for (n, v) in values {
                key.values.lock().unwrap().insert(n.to_string(), *v);
            }
            key
        }
        fn snapshot(&self) -> BTreeMap<String, u32> {
            self.values.lock().unwrap().clone()
        }
        fn value(&self, name: &str) -> Option<u32> {
            self.values.lock().unwrap().get(name).copied()
        }
    }

    impl PolicyKey for MemoryKey {
        fn get(&self, name: &str) -> anyhow::Result<Option<u32>> {
            if self.bad_get.lock().unwrap().iter().any(|n| n == name) {
                bail!("{name} is a String value, not a DWORD");
            }
            Ok(self.value(name))
        }
        fn set(&self, name: &str, value: u32) -> anyhow::Result<()> {
            if self.bad_set.lock().unwrap().iter().any(|n| n == name) {
                bail!("access denied");
            }
            self.values.lock().unwrap().insert(name.to_string(), value);
            Ok(())
        }
        fn delete(&self, name: &str) -> anyhow::Result<()> {
            self.values.lock().unwrap().remove(name);
            Ok(())
        }
    }

    fn deny(f: impl FnOnce(&mut Controls)) -> Controls {
        let mut c = Controls::allow_all();
        f(&mut c);
        c
    }

    fn open(key: &MemoryKey, dir: &Path) -> Arc<RedirectionPolicy> {
        RedirectionPolicy::open(Box::new(key.clone()), dir).expect("open")
    }

    #[test]
    fn deny_all_disables_every_redirection() {
        let v = policy_values(Controls::default());
        assert!(v
            .iter()
            .all(|(k, val)| (*k == "fEnableSmartCard") == (*val == 0)));
        let all = policy_values(Controls::allow_all());
        assert!(all
            .iter()
            .all(|(k, val)| (*k == "fEnableSmartCard") == (*val == 1)));
        let clip = policy_values(Controls {
            clipboard: Clipboard::ToRemote,
            ..Controls::default()
        });
        assert!(clip.contains(&("fDisableClip", 0)));
        // Only what is denied is written.
        assert_eq!(blocking_values(Controls::default()), v);
        assert!(blocking_values(Controls::allow_all()).is_empty());
        assert_eq!(
            blocking_values(deny(|c| c.smartcard = false)),
            [("fEnableSmartCard", 0)]
        );
        assert_eq!(
            blocking_values(deny(|c| c.ports = false)),
            [("fDisableLPT", 1), ("fDisableCcm", 1)]
        );
    }

    #[test]
    fn a_session_sets_its_values_and_the_end_restores_exactly() {
        let dir = tempfile::tempdir().unwrap();
        // Clipboard explicitly allowed by the desk, smartcard explicitly on, the
        // rest not configured (absent).
        let key = MemoryKey::with(&[("fDisableClip", 0), ("fEnableSmartCard", 1)]);
        let before = key.snapshot();
        let layer = open(&key, dir.path());
        let session = layer.begin(Controls::default()).unwrap();
        let during = key.snapshot();
        for (name, value) in policy_values(Controls::default()) {
            assert_eq!(during.get(name), Some(&value), "{name}");
        }
        assert!(
            layer.state_file().exists(),
            "originals saved during the session"
        );
        drop(session);
        assert_eq!(
            key.snapshot(),
            before,
            "absent values deleted, others restored"
        );
        assert!(!layer.state_file().exists());
    }

    #[test]
    fn allowed_redirections_keep_the_desks_own_policy() {
        let dir = tempfile::tempdir().unwrap();
        // The desk's own policy already switches drives off; the ticket allows them.
        let key = MemoryKey::with(&[("fDisableCdm", 1)]);
        let layer = open(&key, dir.path());
        let session = layer
            .begin(deny(|c| c.clipboard = Clipboard::None))
            .unwrap();
        assert_eq!(
            key.snapshot(),
            BTreeMap::from([("fDisableCdm".into(), 1), ("fDisableClip".into(), 1)])
        );
        drop(session);
        assert_eq!(key.snapshot(), BTreeMap::from([("fDisableCdm".into(), 1)]));
    }

    #[test]
    fn overlapping_sessions_save_once_and_the_most_restrictive_wins() {
        let dir = tempfile::tempdir().unwrap();
        let key = MemoryKey::with(&[("fDisableClip", 0)]);
        let before = key.snapshot();
        let layer = open(&key, dir.path());
        let no_drive = layer.begin(deny(|c| c.drive = false)).unwrap();
        let saved = fs::read(layer.state_file()).unwrap();
        let no_clip = layer
            .begin(deny(|c| c.clipboard = Clipboard::None))
            .unwrap();
        assert_eq!(
            fs::read(layer.state_file()).unwrap(),
            saved,
            "the originals are saved by the first session only"
        );
        assert_eq!(key.value("fDisableCdm"), Some(1));
        assert_eq!(key.value("fDisableClip"), Some(1));
        drop(no_drive);
        assert_eq!(key.value("fDisableCdm"), None, "back to absent");
        assert_eq!(key.value("fDisableClip"), Some(1), "still needed");
        assert!(layer.state_file().exists());
        let no_printer = layer.begin(deny(|c| c.printer = false)).unwrap();
        assert_eq!(key.value("fDisableCpm"), Some(1));
        drop(no_clip);
        assert_eq!(key.value("fDisableClip"), Some(0));
        drop(no_printer);
        assert_eq!(key.snapshot(), before);
        assert!(!layer.state_file().exists());
    }

    #[test]
    fn a_crash_mid_session_is_restored_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let key = MemoryKey::with(&[("fDisableCpm", 0), ("fEnableSmartCard", 1)]);
        let before = key.snapshot();
        let layer = open(&key, dir.path());
        let a = layer.begin(Controls::default()).unwrap();
        let b = layer.begin(deny(|c| c.usb = false)).unwrap();
        // The agent dies: no guard runs.
        std::mem::forget(a);
        std::mem::forget(b);
        drop(layer);
        assert_ne!(key.snapshot(), before);
        let restarted = open(&key, dir.path());
        assert_eq!(key.snapshot(), before);
        assert!(!restarted.state_file().exists());
        // And the layer works as usual afterwards.
        let s = restarted.begin(deny(|c| c.drive = false)).unwrap();
        assert_eq!(key.value("fDisableCdm"), Some(1));
        drop(s);
        assert_eq!(key.snapshot(), before);
    }

    /// A policy key kept in a JSON file: a registry that outlives the
    /// process that changed it.
    #[derive(Debug)]
    struct FileKey(PathBuf);

    impl FileKey {
        fn read(&self) -> BTreeMap<String, u32> {
            fs::read(&self.0)
                .map(|b| serde_json::from_slice(&b).unwrap())
                .unwrap_or_default()
        }
        fn write(&self, values: &BTreeMap<String, u32>) {
            fs::write(&self.0, serde_json::to_vec(values).unwrap()).unwrap();
        }
    }

    impl PolicyKey for FileKey {
        fn get(&self, name: &str) -> anyhow::Result<Option<u32>> {
            Ok(self.read().get(name).copied())
        }
        fn set(&self, name: &str, value: u32) -> anyhow::Result<()> {
            let mut v = self.read();
            v.insert(name.to_string(), value);
            self.write(&v);
            Ok(())
        }
        fn delete(&self, name: &str) -> anyhow::Result<()> {
            let mut v = self.read();
            v.remove(name);
            self.write(&v);
            Ok(())
        }
    }

    /// Set in the child process of the test below: the directory of its
    /// registry file and state file.
    const KILLED_AGENT_DIR: &str = "KAKEHASHI_TEST_KILLED_AGENT_DIR";

    /// Kills the child process when dropped (a failing test leaves nothing).
    struct KillOnDrop(std::process::Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Issue 19 item 3 with a real process: an agent killed with SIGKILL
    /// while a restricting session is live (this test binary, run again as
    /// a child with [`KILLED_AGENT_DIR`]) leaves the registry changed; the
    /// next start puts every value back and removes the state file.
    #[test]
    fn an_agent_killed_mid_session_is_restored_at_the_next_start() {
        if let Some(dir) = std::env::var_os(KILLED_AGENT_DIR) {
            // The child: a live session, until the parent kills it (or a
            // minute passes, should the parent have died first).
            let dir = PathBuf::from(dir);
            let layer = open_file_key(&dir);
            let _session = layer.begin(Controls::default()).unwrap();
            fs::write(dir.join("live"), b"").unwrap();
            std::thread::sleep(std::time::Duration::from_secs(60));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = FileKey(dir.path().join("registry.json"));
        key.write(&BTreeMap::from([
            ("fDisableClip".into(), 0),
            ("fEnableSmartCard".into(), 1),
        ]));
        let before = key.read();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "windows_policy::tests::an_agent_killed_mid_session_is_restored_at_the_next_start",
                "--nocapture",
            ])
            .env(KILLED_AGENT_DIR, dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let start = std::time::Instant::now();
        while !dir.path().join("live").exists() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "the child agent never started its session"
            );
            assert!(
                child.0.try_wait().unwrap().is_none(),
                "the child agent exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(key.read().get("fDisableClip"), Some(&1), "{:?}", key.read());
        // kill -9: no destructor, no restore.
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        assert!(!status.success(), "{status:?}");
        assert_ne!(key.read(), before);
        assert!(dir.path().join(STATE_FILE).exists());
        // The next start restores.
        let layer = open_file_key(dir.path());
        assert_eq!(key.read(), before);
        assert!(!layer.state_file().exists());
    }

    fn open_file_key(dir: &Path) -> Arc<RedirectionPolicy> {
        RedirectionPolicy::open(Box::new(FileKey(dir.join("registry.json"))), dir).expect("open")
    }

    #[test]
    fn a_crash_before_any_change_restores_nothing_new() {
        let dir = tempfile::tempdir().unwrap();
        let key = MemoryKey::with(&[("fDisableClip", 0)]);
        // The state file was written but the agent died before the first write.
        write_state(
            &dir.path().join(STATE_FILE),
            &managed_values()
                .map(|n| (n.to_string(), key.value(n)))
                .collect(),
        )
        .unwrap();
        let before = key.snapshot();
        let layer = open(&key, dir.path());
        assert_eq!(key.snapshot(), before);
        assert!(!layer.state_file().exists());
    }

    #[test]
    fn a_corrupt_state_file_is_a_clear_error_and_the_key_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let key = MemoryKey::with(&[("fDisableCdm", 1), ("fDisableClip", 1)]);
        let before = key.snapshot();
        for text in [
            &b"{\"version\":1,\"key\":"[..],
            b"\xff\xfe garbage",
            b"{\"version\":2,\"key\":\"x\",\"saved\":{}}",
        ] {
            fs::write(&path, text).unwrap();
            let e = RedirectionPolicy::open(Box::new(key.clone()), dir.path()).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("by hand"), "{msg}");
            assert_eq!(key.snapshot(), before);
            assert_eq!(fs::read(&path).unwrap(), text, "the file is kept");
        }
        let foreign = format!(
            r#"{{"version":1,"key":{},"saved":{{"fDenyTSConnections":0}}}}"#,
            serde_json::to_string(&key_name()).unwrap()
        );
        fs::write(&path, &foreign).unwrap();
        let e = RedirectionPolicy::open(Box::new(key.clone()), dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("fDenyTSConnections"), "{e:#}");
        assert_eq!(key.snapshot(), before);
    }

    #[test]
    fn an_unreadable_original_refuses_before_any_change() {
        let dir = tempfile::tempdir().unwrap();
        let key = MemoryKey::with(&[("fDisableClip", 0)]);
        key.bad_get.lock().unwrap().push("fDisableCdm".into());
        let before = key.snapshot();
        let layer = open(&key, dir.path());
        let e = layer.begin(Controls::default()).unwrap_err();
        assert!(format!("{e:#}").contains("fDisableCdm"), "{e:#}");
        assert_eq!(key.snapshot(), before);
        assert!(!layer.state_file().exists());
    }

    #[test]
    fn a_failed_write_undoes_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let key = MemoryKey::with(&[("fDisableClip", 0)]);
        let before = key.snapshot();
        let layer = open(&key, dir.path());
        let first = layer.begin(deny(|c| c.drive = false)).unwrap();
        key.bad_set.lock().unwrap().push("fDisableCpm".into());
        let e = layer.begin(Controls::default()).unwrap_err();
        assert!(format!("{e:#}").contains("fDisableCpm"), "{e:#}");
        // Only the first session's values are in force.
        let mut expected = before.clone();
        expected.insert("fDisableCdm".into(), 1);
        assert_eq!(key.snapshot(), expected);
        drop(first);
        assert_eq!(key.snapshot(), before);
        assert!(!layer.state_file().exists());
    }

    #[test]
    fn a_failed_restore_is_retried_and_the_file_kept_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let key = MemoryKey::with(&[("fDisableCdm", 0)]);
        let before = key.snapshot();
        let layer = open(&key, dir.path());
        let s = layer.begin(deny(|c| c.drive = false)).unwrap();
        key.bad_set.lock().unwrap().push("fDisableCdm".into());
        drop(s);
        assert_eq!(key.value("fDisableCdm"), Some(1), "could not restore");
        assert!(layer.state_file().exists(), "the originals are kept");
        key.bad_set.lock().unwrap().clear();
        // The next agent start (or the next session end) restores them.
        drop(layer);
        open(&key, dir.path());
        assert_eq!(key.snapshot(), before);
        assert!(!dir.path().join(STATE_FILE).exists());
    }

    #[test]
    fn the_desk_policy_is_a_no_op_without_a_layer() {
        assert!(DeskPolicy::default().session(Controls::default()).is_none());
        #[cfg(not(windows))]
        assert!(DeskPolicy::for_this_desk()
            .session(Controls::default())
            .is_none());
        let dir = tempfile::tempdir().unwrap();
        let key = MemoryKey::default();
        let desk = DeskPolicy::with(open(&key, dir.path()));
        let s = desk.session(deny(|c| c.audio = false));
        assert_eq!(key.value("fDisableCam"), Some(1));
        drop(s);
        assert!(key.snapshot().is_empty());
    }
}
