//! The bincode encoding of openraft's values on disk, always decoded with a byte limit.
//!
//! Blocks are not in here: they are stored as their canonical chain bytes. Only openraft's
//! own types (entries, vote, log ids, memberships) use bincode, which is what their serde
//! derives give us. A forged length prefix in a damaged file must not make us allocate
//! gigabytes, so every decode names a limit; trailing bytes count as corruption too.

use conclave_shared::chain::MAX_BLOCK_BYTES;
use redb::ReadableTable;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{DbResult, StoreError};

/// A vote, a log id, or a membership (up to `MAX_MEMBERS` nodes with names and addresses).
pub(crate) const MAX_META_BYTES: usize = 4 * 1024 * 1024;
/// One Raft entry: a proposal carries a block body (at most a block) and some framing, a
/// membership entry at most [`MAX_META_BYTES`]. Appending refuses anything larger, so every
/// entry written can be read back.
pub(crate) const MAX_ENTRY_BYTES: usize = MAX_BLOCK_BYTES + MAX_META_BYTES;

pub(crate) fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| {
        StoreError::Encode {
            what,
            why: e.to_string(),
        }
    })
}

/// Decodes a whole slice of at most `LIMIT` bytes of encoding.
pub(crate) fn decode<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
    what: &str,
) -> Result<T, StoreError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (value, used) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| StoreError::corrupt(what, e))?;
    if used != bytes.len() {
        return Err(StoreError::corrupt(
            what,
            format!("{} trailing bytes", bytes.len() - used),
        ));
    }
    Ok(value)
}

/// Reads and decodes one value of a `&str → bytes` table.
pub(crate) fn get_meta<T, Tb>(table: &Tb, key: &str) -> Result<Option<T>, StoreError>
where
    T: DeserializeOwned,
    Tb: ReadableTable<&'static str, &'static [u8]>,
{
    match table.get(key).db()? {
        None => Ok(None),
        Some(v) => decode::<T, MAX_META_BYTES>(v.value(), key).map(Some),
    }
}
