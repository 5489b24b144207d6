//! The portal's one-time codes and identifiers: random base64url strings,
//! the enrollment code alphabet (typed by people) and its hash, the login
//! code's hash, and the WebAuthn user handle.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use kakehashi_store::Hash256;

/// `N` random bytes, base64url without padding.
pub(crate) fn random_b64url<const N: usize>() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; N];
    // The system RNG failing is not recoverable; better to stop than to
    // hand out predictable ids.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random number generator failed");
    URL_SAFE_NO_PAD.encode(b)
}

/// The hash the store keeps for a one-time login code (the base64url text
/// in the redirect): SHA-256 of its ASCII bytes. The gateway's redeem
/// handler looks the code up with this.
pub fn login_code_hash(code: &str) -> Hash256 {
    Hash256::digest(code.as_bytes())
}

/// The enrollment code alphabet (Crockford base32: no I, L, O, U).
pub(crate) const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in an enrollment code (80 bits).
pub(crate) const CODE_LEN: usize = 16;

/// A new one-time enrollment code for an officer to hand out, shown as
/// `XXXX-XXXX-XXXX-XXXX`, and the hash to store with
/// `Store::create_enrollment_code`.
pub fn new_enrollment_code() -> (String, Hash256) {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; CODE_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random number generator failed");
    // 256 is a multiple of 32, so `& 31` is uniform.
    let raw: String = b
        .iter()
        .map(|x| CODE_ALPHABET[usize::from(x & 31)] as char)
        .collect();
    let shown = raw
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("-");
    let hash = Hash256::digest(raw.as_bytes());
    (shown, hash)
}

/// The stored hash of an enrollment code as typed: case, spaces, hyphens,
/// full-width characters and the look-alikes O/I/L are forgiven. `None`
/// when it cannot be a code.
pub fn enrollment_code_hash(typed: &str) -> Option<Hash256> {
    let mut raw = String::with_capacity(CODE_LEN);
    for c in typed.chars() {
        // Full-width ASCII (IME input) to ASCII.
        let c = match u32::from(c) {
            0xFF01..=0xFF5E => char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c),
            _ => c,
        };
        let c = match c.to_ascii_uppercase() {
            ' ' | '-' | '\u{3000}' | '\u{30FC}' | '\u{2010}'..='\u{2015}' | '\u{2212}' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        if !c.is_ascii() || !CODE_ALPHABET.contains(&(c as u8)) || raw.len() >= CODE_LEN {
            return None;
        }
        raw.push(c);
    }
    (raw.len() == CODE_LEN).then(|| Hash256::digest(raw.as_bytes()))
}

/// The WebAuthn user handle for a user id: stable, derived, not the id itself.
pub(crate) fn user_handle(user: &str) -> webauthn_rs::prelude::Uuid {
    let d = Hash256::digest(format!("kakehashi-webauthn-user\0{user}"));
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.0[..16]);
    webauthn_rs::prelude::Uuid::from_bytes(b)
}
