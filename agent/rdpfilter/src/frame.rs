//! Splitting a byte stream into whole PDUs. The filter only ever forwards whole PDUs, so its
//! output is the same however the input was split, and anything it injects lands between
//! PDUs.

use crate::error::{proto, FilterError, Result};

/// What may appear next in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// TPKT only (X.224 negotiation, MCS connect).
    Tpkt,
    /// After TLS with NLA: CredSSP TSRequests (DER), the Early User Authorization Result
    /// when `euar` (HYBRID_EX, server side, once), or the first TPKT.
    Nla { euar: bool },
    /// TPKT or fast-path.
    Active,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tpkt,
    FastPath,
    TsRequest,
    EarlyUserAuthResult,
}

/// The kind and length of the PDU at the start of `buf`, or `None` if more bytes are needed.
/// Fails as soon as the header shows something that is not allowed here or too large.
pub(crate) fn next(buf: &[u8], mode: Mode, max_ts_request: usize) -> Result<Option<(Kind, usize)>> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    match (b0, mode) {
        (0x03, _) => {
            if buf.len() < 4 {
                return Ok(None);
            }
            if buf[1] != 0 {
                return Err(proto("tpkt: reserved byte is not zero"));
            }
            let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            if len < 7 {
                return Err(proto("tpkt: shorter than an x.224 header"));
            }
            Ok((buf.len() >= len).then_some((Kind::Tpkt, len)))
        }
        (0x30, Mode::Nla { .. }) => {
            if buf.len() < 2 {
                return Ok(None);
            }
            let (hdr, len) = match buf[1] {
                n @ 0..=0x7f => (2, usize::from(n)),
                n @ 0x81..=0x84 => {
                    let k = usize::from(n & 0x7f);
                    if buf.len() < 2 + k {
                        return Ok(None);
                    }
                    let len = buf[2..2 + k]
                        .iter()
                        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
                    (2 + k, len)
                }
                _ => return Err(proto("credssp: unsupported DER length")),
            };
            let total = hdr + len;
            if total > max_ts_request {
                return Err(FilterError::TooLarge {
                    what: "credssp message",
                    size: total,
                    limit: max_ts_request,
                });
            }
            Ok((buf.len() >= total).then_some((Kind::TsRequest, total)))
        }
        (0x00 | 0x05, Mode::Nla { euar: true }) => {
            Ok((buf.len() >= 4).then_some((Kind::EarlyUserAuthResult, 4)))
        }
        (b, Mode::Active) if b & 0x03 == 0 => {
            if buf.len() < 2 {
                return Ok(None);
            }
            let (hdr, len) = if buf[1] & 0x80 != 0 {
                if buf.len() < 3 {
                    return Ok(None);
                }
                (3, (usize::from(buf[1] & 0x7f) << 8) | usize::from(buf[2]))
            } else {
                (2, usize::from(buf[1]))
            };
            if len < hdr {
                return Err(proto("fast-path: length shorter than its header"));
            }
            Ok((buf.len() >= len).then_some((Kind::FastPath, len)))
        }
        _ => Err(proto(format!(
            "unexpected pdu starting with {b0:#04x} ({mode:?})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_delimited_by_their_headers() {
        assert_eq!(next(&[3, 0, 0, 7, 2, 0xf0], Mode::Tpkt, 0).unwrap(), None);
        assert_eq!(
            next(&[3, 0, 0, 7, 2, 0xf0, 0x80, 9], Mode::Tpkt, 0).unwrap(),
            Some((Kind::Tpkt, 7))
        );
        assert!(next(&[3, 1, 0, 7], Mode::Tpkt, 0).is_err());
        assert!(next(&[3, 0, 0, 6], Mode::Tpkt, 0).is_err());
        assert!(next(&[0x30, 2, 0, 0], Mode::Tpkt, 0).is_err());
        assert_eq!(
            next(
                &[0x30, 0x82, 0x01, 0x00],
                Mode::Nla { euar: false },
                1 << 20
            )
            .unwrap(),
            None
        );
        assert_eq!(
            next(&[0x30, 2, 1, 1], Mode::Nla { euar: false }, 1 << 20).unwrap(),
            Some((Kind::TsRequest, 4))
        );
        assert!(next(
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            Mode::Nla { euar: false },
            1 << 20
        )
        .is_err());
        assert!(next(&[0, 0, 0, 0], Mode::Nla { euar: false }, 1 << 20).is_err());
        assert_eq!(
            next(&[0, 0, 0, 0], Mode::Nla { euar: true }, 1 << 20).unwrap(),
            Some((Kind::EarlyUserAuthResult, 4))
        );
        assert_eq!(
            next(&[0x44, 0x03, 0], Mode::Active, 0).unwrap(),
            Some((Kind::FastPath, 3))
        );
        assert_eq!(next(&[0x44, 0x80, 0x05, 0], Mode::Active, 0).unwrap(), None);
        assert!(next(&[0x44, 0x01], Mode::Active, 0).is_err());
        assert!(next(&[0x44, 0x03], Mode::Tpkt, 0).is_err());
        assert!(next(&[0x01, 0x03], Mode::Active, 0).is_err());
    }
}
