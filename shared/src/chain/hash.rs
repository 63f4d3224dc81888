//! A block's hash: SHA-256 over its canonical bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{Canonical, DecodeError, Reader, Writer};

/// SHA-256 of a block's canonical header and body. Shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct BlockHash(pub [u8; 32]);

impl BlockHash {
    /// The genesis block's `prev_hash`: there is no block before it.
    pub const ZERO: Self = Self([0; 32]);

    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({})", &self.to_hex()[..16])
    }
}

impl FromStr for BlockHash {
    type Err = hex::FromHexError;
    /// Parses 64 hex digits, as [`fmt::Display`] writes them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b)?;
        Ok(Self(b))
    }
}

impl Canonical for BlockHash {
    fn encode_to(&self, w: &mut Writer) {
        w.raw(&self.0);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.array("block hash")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_is_lowercase() {
        let h = BlockHash::of(b"abc");
        let s = h.to_string();
        assert_eq!(
            s,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(s.parse::<BlockHash>().unwrap(), h);
        assert!("ba78".parse::<BlockHash>().is_err());
        assert_eq!(BlockHash::ZERO.to_string(), "0".repeat(64));
    }
}
