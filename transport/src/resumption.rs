//! TLS session tickets whose keys survive a restart.
//!
//! rustls' own ticketer draws its keys at start, so after a gateway restart
//! every returning agent and laptop does a full handshake (two signatures and
//! a certificate-chain verification on each side). With 20,000 agents coming
//! back at once that is the whole cost of the reconnect storm. This ticketer
//! keeps its keys in a file (mode 0600, written atomically), so tickets issued
//! before the restart still resume after it.
//!
//! - Tickets are sealed with ChaCha20-Poly1305 (ring), a fresh random nonce
//!   each, the key's 16-byte name as associated data:
//!   `name ‖ nonce ‖ ciphertext ‖ tag`.
//! - A new key every [`ROTATE_SECS`]; the previous one still opens tickets
//!   until the next rotation, then it is erased from memory and the file.
//! - A resumed session skips the client-certificate check of the handshake;
//!   the gateway re-checks the certificate carried in the ticket against the
//!   current CRL and dates after every handshake (`check_peer`).
//! - The file is as sensitive as the gateway's private key (with it one can
//!   answer a resuming peer as the gateway): it is refused if group or others
//!   can read it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use anyhow::{bail, Context as _};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::rand::{SecureRandom as _, SystemRandom};
use rustls::server::ProducesTickets;
use zeroize::Zeroizing;

/// A new key this often (6 hours).
pub const ROTATE_SECS: u64 = 6 * 3600;
/// The lifetime announced to clients (12 hours: a ticket issued just before
/// a rotation still opens until the next one).
const LIFETIME_SECS: u32 = 12 * 3600;
const NAME_LEN: usize = 16;
const KEY_LEN: usize = 32;
const MAGIC: &[u8; 8] = b"KKHTKT1\n";
/// Largest ticket we try to open: a session state with a client
/// certificate chain is ~1–2 KiB; anything far larger is not ours.
const MAX_TICKET: usize = 16 * 1024;

struct Key {
    created: u64,
    name: [u8; NAME_LEN],
    /// Erased when dropped (ring erases its own copy in `aead`).
    secret: Zeroizing<[u8; KEY_LEN]>,
    aead: LessSafeKey,
}

impl Key {
    fn new(created: u64, name: [u8; NAME_LEN], secret: [u8; KEY_LEN]) -> Self {
        let aead = LessSafeKey::new(
            UnboundKey::new(&aead::CHACHA20_POLY1305, &secret).expect("32-byte key"),
        );
        Self {
            created,
            name,
            secret: Zeroizing::new(secret),
            aead,
        }
    }

    fn generate(rng: &SystemRandom, now: u64) -> anyhow::Result<Self> {
        let mut name = [0u8; NAME_LEN];
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill(&mut name)
            .and_then(|()| rng.fill(secret.as_mut()))
            .map_err(|_| anyhow::anyhow!("system random number generator failed"))?;
        Ok(Self::new(now, name, *secret))
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
}

/// A [`ProducesTickets`] whose keys are kept in a file.
pub struct PersistentTicketer {
    path: Option<PathBuf>,
    keys: RwLock<Keys>,
    rng: SystemRandom,
    observer: Option<Observer>,
}

/// Told of every ticket a peer presents: `true` when it opened.
type Observer = Box<dyn Fn(bool) + Send + Sync>;

impl fmt::Debug for PersistentTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentTicketer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PersistentTicketer {
    /// Keys from `path`, created there when the file does not exist. A file
    /// that others can read, or that is not a key file, is an error (nothing
    /// is overwritten).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_at(path, crate::unix_now())
    }

    /// Keys only in memory: tickets do not survive a restart.
    pub fn in_memory() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let keys = Keys {
            current: Key::generate(&rng, crate::unix_now())?,
            previous: None,
        };
        Ok(Self::with_keys(None, keys, rng))
    }

    fn with_keys(path: Option<PathBuf>, keys: Keys, rng: SystemRandom) -> Self {
        Self {
            path,
            keys: RwLock::new(keys),
            rng,
            observer: None,
        }
    }

    /// Call `f` for every ticket a peer presents, with whether it opened
    /// (for metrics).
    pub fn observe(mut self, f: impl Fn(bool) + Send + Sync + 'static) -> Self {
        self.observer = Some(Box::new(f));
        self
    }

    fn open_at(path: &Path, now: u64) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let (keys, fresh) = match std::fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                crate::keyfile::check_key_file(path).context("the TLS resumption key file")?;
                let keys = decode(&bytes).with_context(|| {
                    format!(
                        "{} is not a TLS resumption key file (delete it to start afresh)",
                        path.display()
                    )
                })?;
                (keys, false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let current = Key::generate(&rng, now)?;
                (
                    Keys {
                        current,
                        previous: None,
                    },
                    true,
                )
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let t = Self::with_keys(Some(path.to_owned()), keys, rng);
        {
            let mut k = t.keys.write().unwrap_or_else(|e| e.into_inner());
            // Written only when new or rotated: an unchanged file is left alone.
            if t.rotate_if_due(&mut k, now)? || fresh {
                t.save(&k)?;
            }
        }
        Ok(t)
    }

    /// Rotate when the current key is due; drop a previous key past its time.
    /// Returns whether anything changed.
    fn rotate_if_due(&self, k: &mut Keys, now: u64) -> anyhow::Result<bool> {
        let mut changed = false;
        if now.saturating_sub(k.current.created) >= ROTATE_SECS || k.current.created > now + 60 {
            let fresh = Key::generate(&self.rng, now)?;
            k.previous = Some(std::mem::replace(&mut k.current, fresh));
            changed = true;
        }
        if k.previous
            .as_ref()
            .is_some_and(|p| now.saturating_sub(p.created) >= 2 * ROTATE_SECS)
        {
            k.previous = None;
            changed = true;
        }
        Ok(changed)
    }

    fn save(&self, k: &Keys) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        kakehashi_pki::write_secret_file(path, &encode(k))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn maybe_rotate(&self) {
        let now = crate::unix_now();
        let due = {
            let k = self.keys.read().unwrap_or_else(|e| e.into_inner());
            now.saturating_sub(k.current.created) >= ROTATE_SECS
        };
        if !due {
            return;
        }
        let mut k = self.keys.write().unwrap_or_else(|e| e.into_inner());
        match self.rotate_if_due(&mut k, now) {
            Ok(true) => {
                if let Err(e) = self.save(&k) {
                    // The new key still works in this process; after a
                    // restart these tickets fall back to full handshakes.
                    tracing::warn!(error = %format!("{e:#}"), "Cannot save the rotated TLS resumption key");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "Cannot rotate the TLS resumption key")
            }
        }
    }

    /// Open `cipher` with `key` (its name already matched).
    fn open_with(key: &Key, cipher: &[u8]) -> Option<Vec<u8>> {
        let nonce =
            Nonce::try_assume_unique_for_key(cipher.get(NAME_LEN..NAME_LEN + NONCE_LEN)?).ok()?;
        let mut buf = cipher.get(NAME_LEN + NONCE_LEN..)?.to_vec();
        let plain_len = key
            .aead
            .open_in_place(nonce, Aad::from(&key.name), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

impl ProducesTickets for PersistentTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.maybe_rotate();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let k = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&k.current.name);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        k.current
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&k.current.name),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.open_ticket(cipher);
        if let Some(f) = &self.observer {
            f(plain.is_some());
        }
        plain
    }
}

impl PersistentTicketer {
    fn open_ticket(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() > MAX_TICKET || cipher.len() < NAME_LEN + NONCE_LEN + 16 {
            return None;
        }
        self.maybe_rotate();
        let name = cipher.get(..NAME_LEN)?;
        let k = self.keys.read().unwrap_or_else(|e| e.into_inner());
        // Key names are random, not secret: a plain comparison picks the key,
        // the AEAD tag is what authenticates.
        if name == k.current.name {
            return Self::open_with(&k.current, cipher);
        }
        match &k.previous {
            Some(p) if name == p.name => Self::open_with(p, cipher),
            _ => None,
        }
    }
}

/// Entry point for the fuzz target `resumption`: the two decoders of this
/// module, on bytes an attacker (a presented ticket) or a damaged disk (the
/// key file) controls.
///
/// - Byte 0 even: the rest is a key file. It must decode only when it has
///   the header and one or two whole entries, then encode back to exactly
///   the same bytes, and its keys must open what they seal.
/// - Byte 0 odd: the rest is a ticket presented to a ticketer with fixed
///   keys: it never opens (forging needs the key). Then the rest is sealed
///   as a ticket's plaintext (up to the size limit); the ticket opens to it,
///   and with byte 1 selecting a flipped byte or a truncation, never opens.
pub fn fuzz_feed(data: &[u8]) {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    if select & 1 == 0 {
        if let Ok(keys) = decode(rest) {
            assert_eq!(encode(&keys).as_slice(), rest, "key file round trip");
            let t = PersistentTicketer::with_keys(None, keys, SystemRandom::new());
            let sealed = t.encrypt(b"state").expect("seal");
            assert_eq!(t.decrypt(&sealed).as_deref(), Some(&b"state"[..]));
        } else {
            let whole =
                rest.len() > MAGIC.len() && (rest.len() - MAGIC.len()).is_multiple_of(ENTRY_LEN);
            assert!(
                !rest.starts_with(MAGIC) || !whole || rest.len() > MAGIC.len() + 2 * ENTRY_LEN,
                "a well-formed key file was refused"
            );
        }
        return;
    }
    let now = crate::unix_now();
    let keys = Keys {
        current: Key::new(now, [1; NAME_LEN], [2; KEY_LEN]),
        previous: Some(Key::new(now, [3; NAME_LEN], [4; KEY_LEN])),
    };
    let t = PersistentTicketer::with_keys(None, keys, SystemRandom::new());
    assert!(t.decrypt(rest).is_none(), "a forged ticket opened");
    let plain = &rest[..rest.len().min(MAX_TICKET - NAME_LEN - NONCE_LEN - 16)];
    let mut sealed = t.encrypt(plain).expect("seal");
    assert_eq!(t.decrypt(&sealed).as_deref(), Some(plain));
    let at = usize::from(rest.first().copied().unwrap_or(0)) % sealed.len();
    if rest.len().is_multiple_of(2) {
        sealed[at] ^= 0x80;
    } else {
        sealed.truncate(at);
    }
    assert!(t.decrypt(&sealed).is_none(), "a damaged ticket opened");
}

const ENTRY_LEN: usize = 8 + NAME_LEN + KEY_LEN;

fn encode(k: &Keys) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(MAGIC.to_vec());
    out.reserve(2 * ENTRY_LEN);
    for key in std::iter::once(&k.current).chain(k.previous.as_ref()) {
        out.extend_from_slice(&key.created.to_be_bytes());
        out.extend_from_slice(&key.name);
        out.extend_from_slice(key.secret.as_ref());
    }
    out
}

fn decode(bytes: &[u8]) -> anyhow::Result<Keys> {
    let body = bytes
        .strip_prefix(MAGIC.as_slice())
        .context("wrong header")?;
    if body.is_empty() || body.len() % ENTRY_LEN != 0 || body.len() / ENTRY_LEN > 2 {
        bail!("wrong length {}", bytes.len());
    }
    let mut keys = body.chunks_exact(ENTRY_LEN).map(|e| {
        let created = u64::from_be_bytes(e[..8].try_into().expect("8 bytes"));
        let name: [u8; NAME_LEN] = e[8..8 + NAME_LEN].try_into().expect("name");
        let secret: [u8; KEY_LEN] = e[8 + NAME_LEN..].try_into().expect("key");
        Key::new(created, name, secret)
    });
    let current = keys.next().context("no key")?;
    Ok(Keys {
        current,
        previous: keys.next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn tickets_survive_a_restart_and_the_file_is_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tls-resumption.keys");
        let a = PersistentTicketer::open(&p).unwrap();
        assert_eq!(mode(&p), 0o600);
        let t = a.encrypt(b"session state").unwrap();
        assert_eq!(a.decrypt(&t).unwrap(), b"session state");
        drop(a);
        let b = PersistentTicketer::open(&p).unwrap();
        assert_eq!(b.decrypt(&t).unwrap(), b"session state");
        // Another file's keys open nothing of these.
        let other = PersistentTicketer::open(&d.path().join("other.keys")).unwrap();
        assert_eq!(other.decrypt(&t), None);
        assert_eq!(PersistentTicketer::in_memory().unwrap().decrypt(&t), None);
    }

    #[test]
    fn tampered_truncated_or_oversized_tickets_are_refused() {
        let a = PersistentTicketer::in_memory().unwrap();
        let t = a.encrypt(b"state").unwrap();
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 0x01;
            assert_eq!(a.decrypt(&bad), None, "flipped byte {i}");
        }
        for n in 0..t.len() {
            assert_eq!(a.decrypt(&t[..n]), None, "truncated to {n}");
        }
        let mut big = t.clone();
        big.resize(MAX_TICKET + 1, 0);
        assert_eq!(a.decrypt(&big), None);
        // Same plaintext twice: different tickets (fresh nonces).
        assert_ne!(a.encrypt(b"state").unwrap(), t);
    }

    #[test]
    fn rotation_keeps_the_previous_key_for_one_period() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let t0 = 1_800_000_000;
        let a = PersistentTicketer::open_at(&p, t0).unwrap();
        let old = a.encrypt(b"x").unwrap();
        // Reopened after one period: a new current key, the old one kept.
        drop(a);
        let b = PersistentTicketer::open_at(&p, t0 + ROTATE_SECS).unwrap();
        assert_eq!(b.decrypt(&old).unwrap(), b"x");
        let k = b.keys.read().unwrap();
        assert_ne!(k.current.name, k.previous.as_ref().unwrap().name);
        drop(k);
        drop(b);
        // After two periods the first key is gone, from memory and the file.
        let c = PersistentTicketer::open_at(&p, t0 + 2 * ROTATE_SECS).unwrap();
        assert_eq!(c.decrypt(&old), None);
        assert_eq!(
            std::fs::read(&p).unwrap().len(),
            MAGIC.len() + 2 * ENTRY_LEN
        );
    }

    #[test]
    fn a_readable_or_foreign_file_is_refused_untouched() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        PersistentTicketer::open(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PersistentTicketer::open(&p).unwrap_err();
        assert!(format!("{e:#}").contains("chmod 600"), "{e:#}");
        let q = d.path().join("junk");
        std::fs::write(&q, b"not keys").unwrap();
        std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = PersistentTicketer::open(&q).unwrap_err();
        assert!(
            format!("{e:#}").contains("not a TLS resumption key file"),
            "{e:#}"
        );
        assert_eq!(std::fs::read(&q).unwrap(), b"not keys");
    }

    /// The fuzz target's checks hold on the shapes of its seeds, so a
    /// crash the fuzzer reports is a finding, not a wrong assertion.
    #[test]
    fn fuzz_entry_holds_on_its_seed_shapes() {
        let entry = |fill: u8| {
            [
                &crate::unix_now().to_be_bytes()[..],
                &[fill; NAME_LEN + KEY_LEN][..],
            ]
            .concat()
        };
        let file = |n: usize| {
            let mut v = vec![0u8];
            v.extend_from_slice(MAGIC);
            for i in 1..=n {
                v.extend_from_slice(&entry(u8::try_from(i).unwrap()));
            }
            v
        };
        for n in 0..=3 {
            fuzz_feed(&file(n));
            let mut short = file(n);
            short.pop();
            fuzz_feed(&short);
        }
        fuzz_feed(&[1]);
        fuzz_feed(&[1, 5, 6]);
        fuzz_feed(&[&[1u8][..], &[1; NAME_LEN][..], &[9; 200][..]].concat());
        fuzz_feed(&vec![3u8; MAX_TICKET + 10]);
    }
}
