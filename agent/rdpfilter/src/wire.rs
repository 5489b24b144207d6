//! Small bounds-checked readers for the parts of the protocol parsed by hand (framing
//! headers, BER/PER length fields, channel headers) and helpers for in-place edits.

use crate::error::{proto, Result};

/// A read cursor over a byte slice; every read is bounds-checked and names what it parses
/// in its error.
#[derive(Debug, Clone)]
pub(crate) struct Cur<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cur<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(proto(format!("{}: truncated", self.what)));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16le(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u16be(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32le(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a byte and fails unless it equals `want`.
    pub(crate) fn expect(&mut self, want: u8, field: &str) -> Result<()> {
        let got = self.u8()?;
        if got != want {
            return Err(proto(format!(
                "{}: {field} is {got:#04x}, expected {want:#04x}",
                self.what
            )));
        }
        Ok(())
    }

    /// BER definite length (short form or long form with up to two length bytes).
    pub(crate) fn ber_len(&mut self) -> Result<usize> {
        let b = self.u8()?;
        match b {
            0..=0x7f => Ok(usize::from(b)),
            0x81 => Ok(usize::from(self.u8()?)),
            0x82 => Ok(usize::from(self.u16be()?)),
            _ => Err(proto(format!(
                "{}: unsupported BER length {b:#04x}",
                self.what
            ))),
        }
    }

    /// PER length determinant (one byte, or two bytes with the top bits `10`).
    pub(crate) fn per_len(&mut self) -> Result<usize> {
        let b = self.u8()?;
        if b & 0x80 == 0 {
            Ok(usize::from(b))
        } else if b & 0x40 == 0 {
            let lo = self.u8()?;
            Ok((usize::from(b & 0x3f) << 8) | usize::from(lo))
        } else {
            Err(proto(format!("{}: fragmented PER length", self.what)))
        }
    }
}

pub(crate) fn u16le_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

pub(crate) fn u32le_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *b.get(off)?,
        *b.get(off + 1)?,
        *b.get(off + 2)?,
        *b.get(off + 3)?,
    ]))
}

/// Overwrites four bytes at `off` with `v` in little-endian order. The caller has parsed the
/// structure and knows `off + 4 <= b.len()`.
pub(crate) fn put_u32le(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// The text of a fixed-size, NUL-padded ANSI name (channel names, DOS device names).
pub(crate) fn ansi_name(raw: &[u8]) -> String {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    raw[..end]
        .iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                char::from(c)
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_bounds_and_lengths() {
        let mut c = Cur::new(&[0x05, 0x81, 0x90, 0x82, 0x01, 0x00], "t");
        assert_eq!(c.ber_len().unwrap(), 5);
        assert_eq!(c.ber_len().unwrap(), 0x90);
        assert_eq!(c.ber_len().unwrap(), 0x100);
        assert!(c.u8().is_err());
        let mut c = Cur::new(&[0x7f, 0x81, 0x23, 0xc1], "t");
        assert_eq!(c.per_len().unwrap(), 0x7f);
        assert_eq!(c.per_len().unwrap(), 0x123);
        assert!(c.per_len().is_err());
        assert_eq!(ansi_name(b"rdpdr\0\0\0"), "rdpdr");
        assert_eq!(ansi_name(b"ab\x01cdefg"), "ab?cdefg");
        assert_eq!(u32le_at(&[1, 0, 0, 0], 0), Some(1));
        assert_eq!(u32le_at(&[1, 0, 0], 0), None);
    }
}
