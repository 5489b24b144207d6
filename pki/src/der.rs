//! Just enough DER and PEM for what rcgen cannot do for us.
//!
//! rcgen writes extension OIDs with `u64` arcs, but the terminal class OID
//! `2.25.<UUID>.1` has a 128-bit arc. Device certificates are therefore built
//! by rcgen with a placeholder OID of exactly the same encoded length, which is
//! then swapped for the real one in the TBSCertificate; the TBS is signed again
//! with the CA key. Lengths do not change, so only the outer `Certificate`
//! SEQUENCE and the signature BIT STRING are re-encoded.

use std::ops::Range;

use base64::Engine as _;
use rcgen::SigningKey;

use crate::PkiError;

/// DER tags used here.
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTF8STRING: u8 = 0x0c;
const TAG_BIT_STRING: u8 = 0x03;

/// One tag-length-value element found in a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tlv {
    pub(crate) tag: u8,
    /// Where the whole element (tag included) lies in the buffer.
    pub(crate) whole: Range<usize>,
    /// Where its content lies in the buffer.
    pub(crate) content: Range<usize>,
}

fn malformed(what: &str) -> PkiError {
    PkiError::Parse(format!("malformed DER: {what}"))
}

/// Reads the element that starts at `pos` (single-byte tags, definite lengths only).
pub(crate) fn read_tlv(data: &[u8], pos: usize) -> Result<Tlv, PkiError> {
    let tag = *data.get(pos).ok_or_else(|| malformed("missing tag"))?;
    if tag & 0x1f == 0x1f {
        return Err(malformed("multi-byte tag"));
    }
    let first = *data
        .get(pos + 1)
        .ok_or_else(|| malformed("missing length"))?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(malformed("unsupported length form"));
        }
        let bytes = data
            .get(pos + 2..pos + 2 + n)
            .ok_or_else(|| malformed("truncated length"))?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let start = pos + header;
    let end = start
        .checked_add(len)
        .filter(|end| *end <= data.len())
        .ok_or_else(|| malformed("element longer than its buffer"))?;
    Ok(Tlv {
        tag,
        whole: pos..end,
        content: start..end,
    })
}

/// Encodes a DER length.
fn encode_len(len: usize, out: &mut Vec<u8>) {
    match u8::try_from(len) {
        // Short form: the length fits in seven bits.
        Ok(short @ 0..0x80) => out.push(short),
        _ => {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            let significant = &bytes[skip..];
            // At most size_of::<usize>() (8) bytes, far below 0x80.
            let count = u8::try_from(significant.len()).unwrap_or(0x7f);
            out.push(0x80 | count);
            out.extend_from_slice(significant);
        }
    }
}

/// Encodes one element.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    encode_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// Encodes the content octets of an OBJECT IDENTIFIER (arcs may be 128-bit).
pub(crate) fn encode_oid(arcs: &[u128]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push_arc = |mut arc: u128| {
        let mut groups = vec![(arc & 0x7f) as u8];
        arc >>= 7;
        while arc > 0 {
            groups.push(0x80 | (arc & 0x7f) as u8);
            arc >>= 7;
        }
        out.extend(groups.iter().rev());
    };
    match arcs {
        [first, second, rest @ ..] => {
            push_arc(first * 40 + second);
            for arc in rest {
                push_arc(*arc);
            }
        }
        [only] => push_arc(only * 40),
        [] => {}
    }
    out
}

/// Parses a dotted OID string into arcs.
pub(crate) fn parse_oid(dotted: &str) -> Option<Vec<u128>> {
    dotted.split('.').map(|arc| arc.parse().ok()).collect()
}

/// PEM-encodes `der` under `label`, 64 characters a line, ending with a newline.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Replaces the single occurrence of `from` in the TBSCertificate of `cert`
/// with `to` (same length) and signs the result again with `key`.
pub(crate) fn replace_in_tbs_and_resign(
    cert: &[u8],
    from: &[u8],
    to: &[u8],
    key: &impl SigningKey,
) -> Result<Vec<u8>, PkiError> {
    if from.len() != to.len() {
        return Err(malformed("replacement changes the length"));
    }
    let outer = read_tlv(cert, 0)?;
    if outer.tag != TAG_SEQUENCE || outer.whole.end != cert.len() {
        return Err(malformed("certificate is not one SEQUENCE"));
    }
    let tbs = read_tlv(cert, outer.content.start)?;
    let alg = read_tlv(cert, tbs.whole.end)?;
    if tbs.tag != TAG_SEQUENCE || alg.tag != TAG_SEQUENCE {
        return Err(malformed("unexpected certificate layout"));
    }

    let mut new_tbs = cert[tbs.whole.clone()].to_vec();
    let hits: Vec<usize> = new_tbs
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    let [at] = hits.as_slice() else {
        return Err(malformed("placeholder not found exactly once"));
    };
    new_tbs[*at..*at + to.len()].copy_from_slice(to);

    let signature = key.sign(&new_tbs)?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);

    let mut body = new_tbs;
    body.extend_from_slice(&cert[alg.whole.clone()]);
    body.extend_from_slice(&tlv(TAG_BIT_STRING, &bits));
    Ok(tlv(TAG_SEQUENCE, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_encoding_matches_known_values() {
        // 1.2.840.10045.4.3.2 (ecdsa-with-SHA256)
        assert_eq!(
            encode_oid(&parse_oid("1.2.840.10045.4.3.2").unwrap()),
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]
        );
        // 2.25 starts with 2*40+25.
        assert_eq!(encode_oid(&[2, 25, 1]), [0x69, 0x01]);
    }

    #[test]
    fn lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 65_535, 70_000] {
            let content = vec![7u8; len];
            let encoded = tlv(TAG_SEQUENCE, &content);
            let parsed = read_tlv(&encoded, 0).unwrap();
            assert_eq!(parsed.tag, TAG_SEQUENCE);
            assert_eq!(parsed.whole, 0..encoded.len());
            assert_eq!(&encoded[parsed.content], content.as_slice());
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        assert!(read_tlv(&[0x30, 0x05, 1, 2], 0).is_err());
        assert!(read_tlv(&[0x30], 0).is_err());
        assert!(read_tlv(&[], 0).is_err());
    }

    #[test]
    fn pem_wraps_at_64() {
        let pem = pem_encode("TEST", &[0u8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN TEST-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last().unwrap(), &"-----END TEST-----");
    }
}
