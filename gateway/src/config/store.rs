//! `[store]`: the database URL, a secret ([`StoreUrl`] never prints its
//! password), and keeping it out of the errors about the file.

use kakehashi_store::StoreUrl;
use serde::Deserialize;

/// `[store]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite:///var/lib/kakehashi/kakehashi.db` (or a plain path), or
    /// `postgres://…` for a cluster. It may hold a password: it prints
    /// redacted, even in this struct's `Debug`.
    #[serde(deserialize_with = "store_url")]
    pub url: StoreUrl,
}

fn store_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StoreUrl, D::Error> {
    String::deserialize(d).map(StoreUrl::new)
}

/// `text` (an error about the file, which may quote the line at fault)
/// with any URL password in it redacted: a misspelt key in `[store]` must
/// not put the database password into the log.
pub fn redact_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains("://") || word.contains("password=") {
            out.push_str(&kakehashi_store::redact_url(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}
