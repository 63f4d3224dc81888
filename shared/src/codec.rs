//! The canonical byte encoding that hashes and signatures cover.
//!
//! Deliberately not bincode: the chain must outlive any serialisation crate, so its bytes are
//! written down in `docs/chain-format.md` and produced here by hand. Integers are big-endian and
//! fixed-width; byte strings and text carry a `u32` length; sequences carry a `u32` count.
//! Decoding is total: every length is checked against the bytes that remain before anything is
//! allocated, and a value decodes only from its one canonical form (`encode(decode(b)) == b`).

use thiserror::Error;

/// Why a byte string is not a canonical encoding of the expected value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("truncated: needed {needed} more bytes for {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("{what}: length {len} exceeds the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what}: unknown tag {tag}")]
    UnknownTag { what: &'static str, tag: u64 },
    #[error("{what}: not valid UTF-8")]
    BadUtf8 { what: &'static str },
    #[error("{what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// Appends canonical encodings to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    /// Fixed-size bytes: no length prefix, the size is part of the format.
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// Variable-size bytes with a `u32` length.
    ///
    /// # Panics
    /// If `v` is longer than `u32::MAX`, which no value of ours can be (frames are far smaller).
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("encoded byte string longer than u32::MAX");
        self.u32(len).raw(v)
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    /// A count for a following sequence.
    pub fn count(&mut self, n: usize) -> &mut Self {
        let n = u32::try_from(n).expect("sequence longer than u32::MAX");
        self.u32(n)
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }
}

/// Reads canonical encodings from a slice, never reading or allocating past its end.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                what,
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_be_bytes(a))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(a))
    }
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(DecodeError::UnknownTag {
                what,
                tag: u64::from(t),
            }),
        }
    }
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    /// A `u32`-length byte string of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        Ok(self.take(len, what)?.to_vec())
    }
    pub fn string(&mut self, what: &'static str, max: usize) -> Result<String, DecodeError> {
        let b = self.bytes(what, max)?;
        String::from_utf8(b).map_err(|_| DecodeError::BadUtf8 { what })
    }
    /// A `u32` count of at most `max` items. Each item takes at least `min_item_bytes`, so a
    /// forged count larger than the input could hold is refused before anything is allocated.
    pub fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_item_bytes: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(DecodeError::TooLong { what, len: n, max });
        }
        if n.saturating_mul(min_item_bytes.max(1)) > self.buf.len() {
            return Err(DecodeError::Truncated {
                what,
                needed: n.saturating_mul(min_item_bytes.max(1)) - self.buf.len(),
            });
        }
        Ok(n)
    }
    /// Succeeds only if every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.buf.len()))
        }
    }
}

/// A value with one canonical byte form.
pub trait Canonical: Sized {
    fn encode_to(&self, w: &mut Writer);
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    fn to_canonical(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode_to(&mut w);
        w.finish()
    }
    /// Decodes a whole slice; trailing bytes are an error.
    fn from_canonical(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_big_endian_and_fixed_width() {
        let mut w = Writer::new();
        w.u16(0x0102).u32(0x0304_0506).u64(7).bool(true).str("ab");
        assert_eq!(
            w.finish(),
            vec![1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 7, 1, 0, 0, 0, 2, b'a', b'b']
        );
    }

    #[test]
    fn forged_lengths_are_refused_before_allocating() {
        let mut w = Writer::new();
        w.u32(u32::MAX);
        let bytes = w.finish();
        let err = Reader::new(&bytes).bytes("blob", 1 << 20).unwrap_err();
        assert!(matches!(err, DecodeError::TooLong { .. }));
        let err = Reader::new(&bytes)
            .count("list", usize::MAX, 8)
            .unwrap_err();
        assert!(matches!(err, DecodeError::Truncated { .. }));
    }

    #[test]
    fn bool_accepts_only_zero_and_one() {
        assert!(Reader::new(&[2]).bool("flag").is_err());
        assert!(Reader::new(&[1]).bool("flag").unwrap());
    }
}
