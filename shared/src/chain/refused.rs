//! Refused blocks: a committed entry that failed a check, kept so every replica agrees.

use sha2::{Digest, Sha256};

use super::{read_name, MAX_REASON_BYTES};
use crate::codec::{Canonical, DecodeError, Reader, Writer};

/// The body of a `refused` block. Every replica makes it alike at apply time, so it carries
/// no signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// SHA-256 of the refused entry's bytes; see [`Refused::digest_of`].
    pub entry_digest: [u8; 32],
    /// The entry's author, if it named one that is a valid name.
    pub author: Option<String>,
    /// Why, for people: at most [`MAX_REASON_BYTES`] of UTF-8.
    pub reason: String,
}

impl Refused {
    pub fn digest_of(entry: &[u8]) -> [u8; 32] {
        Sha256::digest(entry).into()
    }
}

impl Canonical for Refused {
    fn encode_to(&self, w: &mut Writer) {
        w.raw(&self.entry_digest);
        match &self.author {
            None => w.u8(0),
            Some(a) => w.u8(1).str(a),
        };
        w.str(&self.reason);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let entry_digest = r.array("refused entry digest")?;
        let author = match r.u8("refused author presence")? {
            0 => None,
            1 => Some(read_name(r, "refused author")?),
            t => {
                return Err(DecodeError::UnknownTag {
                    what: "refused author presence",
                    tag: u64::from(t),
                })
            }
        };
        Ok(Self {
            entry_digest,
            author,
            reason: r.string("refusal reason", MAX_REASON_BYTES)?,
        })
    }
}
