//! Records and the author-signed batches that carry them.

use super::{read_name, ChainError, GroupId};
use super::{HEADER_BYTES, MAX_BLOCK_BYTES, MAX_RECORDS_PER_BATCH, MAX_RECORD_CIPHERTEXT_BYTES};
use crate::cert::validate_name;
use crate::codec::{Canonical, DecodeError, Reader, Writer};
use crate::envelope::{self, EnvelopeError, GroupKey, NONCE_BYTES, TAG_BYTES};
use crate::identity::{signing_input, Identity, IdentityError, PublicKey, MAX_SIGNATURE_BYTES};

use super::batch_key::{BatchKey, Delegation, BATCH_KEY_BYTES, BATCH_SIG_BYTES};

/// The domain of an author's batch signature.
pub const RECORDS_DOMAIN: &str = "conclave/records/v1";

/// seq, epoch, nonce, ciphertext length, and the shortest ciphertext (a bare tag).
const MIN_RECORD_BYTES: usize = 8 + 8 + NONCE_BYTES + 4 + TAG_BYTES;

/// One record, sealed with the group key of `epoch` under [`record_aad`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The author's sequence number: 1 for its first record, contiguous across the chain.
    pub seq: u64,
    /// The key epoch the record is sealed under.
    pub epoch: u64,
    pub nonce: [u8; NONCE_BYTES],
    /// AES-256-GCM ciphertext with its tag: at least [`TAG_BYTES`], at most
    /// [`MAX_RECORD_CIPHERTEXT_BYTES`] (and the group's `max_record_bytes` plus the tag).
    pub ciphertext: Vec<u8>,
}

/// The associated data a record is sealed with: `author`, `seq` and `epoch`, canonically
/// encoded, so a ciphertext cannot be moved to another author, position or epoch.
pub fn record_aad(author: &str, seq: u64, epoch: u64) -> Vec<u8> {
    let mut w = Writer::new();
    w.str(author).u64(seq).u64(epoch);
    w.finish()
}

impl Record {
    /// Seals `plaintext` as `author`'s record `seq` under the key of `epoch`.
    pub fn seal(
        key: &GroupKey,
        author: &str,
        seq: u64,
        epoch: u64,
        plaintext: &[u8],
    ) -> Result<Self, EnvelopeError> {
        let sealed = envelope::seal(key, &record_aad(author, seq, epoch), plaintext)?;
        Ok(Self {
            seq,
            epoch,
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext,
        })
    }

    /// Opens the record with the key of its epoch; `author` is the batch's author.
    pub fn open(&self, key: &GroupKey, author: &str) -> Result<Vec<u8>, EnvelopeError> {
        envelope::open(
            key,
            &self.nonce,
            &record_aad(author, self.seq, self.epoch),
            &self.ciphertext,
        )
    }
}

impl Canonical for Record {
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.seq)
            .u64(self.epoch)
            .raw(&self.nonce)
            .bytes(&self.ciphertext);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let seq = r.u64("record seq")?;
        let epoch = r.u64("record epoch")?;
        let nonce = r.array("record nonce")?;
        let ciphertext = r.bytes("record ciphertext", MAX_RECORD_CIPHERTEXT_BYTES)?;
        if ciphertext.len() < TAG_BYTES {
            return Err(DecodeError::Invalid {
                what: "record ciphertext",
                why: format!(
                    "{} bytes is shorter than the {TAG_BYTES}-byte AES-GCM tag",
                    ciphertext.len()
                ),
            });
        }
        Ok(Self {
            seq,
            epoch,
            nonce,
            ciphertext,
        })
    }
}

/// How a batch is signed; both are checked against the author's certified RSA key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchSignature {
    /// RSA-PSS by the author's own key over [`RecordBatch::signing_bytes`].
    Author(Vec<u8>),
    /// Ed25519 over [`RecordBatch::signing_bytes`] by a batch key the author certified
    /// (see [`super::batch_key`]); what peers use, as it signs ~30x faster.
    Delegated {
        delegation: Delegation,
        signature: [u8; BATCH_SIG_BYTES],
    },
}

const SIG_AUTHOR: u8 = 1;
const SIG_DELEGATED: u8 = 2;
/// The longest encoded [`BatchSignature`].
pub const MAX_BATCH_SIGNATURE_BYTES: usize =
    1 + BATCH_KEY_BYTES + 4 + MAX_SIGNATURE_BYTES + BATCH_SIG_BYTES;

impl Canonical for BatchSignature {
    fn encode_to(&self, w: &mut Writer) {
        match self {
            BatchSignature::Author(sig) => {
                w.u8(SIG_AUTHOR).bytes(sig);
            }
            BatchSignature::Delegated {
                delegation,
                signature,
            } => {
                w.u8(SIG_DELEGATED);
                delegation.encode_to(w);
                w.raw(signature);
            }
        }
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("batch signature kind")? {
            SIG_AUTHOR => Ok(Self::Author(
                r.bytes("batch signature", MAX_SIGNATURE_BYTES)?,
            )),
            SIG_DELEGATED => Ok(Self::Delegated {
                delegation: Delegation::decode_from(r)?,
                signature: r.array("batch key signature")?,
            }),
            other => Err(DecodeError::Invalid {
                what: "batch signature kind",
                why: format!(
                    "{other} is neither {SIG_AUTHOR} (author) nor {SIG_DELEGATED} (batch key)"
                ),
            }),
        }
    }
}

/// One author's records under one signature: the body of a `records` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    /// The author's certificate name.
    pub author: String,
    /// 1 to [`MAX_RECORDS_PER_BATCH`] records with contiguous `seq`.
    pub records: Vec<Record>,
    pub signature: BatchSignature,
}

fn encode_unsigned(w: &mut Writer, author: &str, records: &[Record]) {
    w.str(author).count(records.len());
    for rec in records {
        rec.encode_to(w);
    }
}

fn signing_bytes_of(group_id: &GroupId, author: &str, records: &[Record]) -> Vec<u8> {
    let mut w = Writer::new();
    encode_unsigned(&mut w, author, records);
    signing_input(RECORDS_DOMAIN, &[group_id, w.as_slice()])
}

impl RecordBatch {
    /// What the author signs: [`RECORDS_DOMAIN`] over the group id and the canonical
    /// `author` and `records` (the batch's encoding without its signature).
    pub fn signing_bytes(&self, group_id: &GroupId) -> Vec<u8> {
        signing_bytes_of(group_id, &self.author, &self.records)
    }

    /// Signs `records` as `author` with the author's own RSA key. Refuses what would not
    /// decode or not fit in one block, so a batch made here is always well-formed.
    pub fn sign(
        identity: &Identity,
        group_id: &GroupId,
        author: &str,
        records: Vec<Record>,
    ) -> Result<Self, ChainError> {
        let unsigned = checked_unsigned(author, &records)?;
        let signature = identity.sign(&signing_input(
            RECORDS_DOMAIN,
            &[group_id, unsigned.as_slice()],
        ))?;
        Ok(Self {
            author: author.to_owned(),
            records,
            signature: BatchSignature::Author(signature),
        })
    }

    /// Signs `records` with `key`, a batch key its author certified for this group (as
    /// [`RecordBatch::sign`], but one Ed25519 signature instead of an RSA one).
    pub fn sign_with(key: &BatchKey, records: Vec<Record>) -> Result<Self, ChainError> {
        let unsigned = checked_unsigned(key.author(), &records)?;
        let signature = key.sign(&signing_input(
            RECORDS_DOMAIN,
            &[key.group_id(), unsigned.as_slice()],
        ));
        Ok(Self {
            author: key.author().to_owned(),
            records,
            signature: BatchSignature::Delegated {
                delegation: key.delegation().clone(),
                signature,
            },
        })
    }

    /// Checks the batch's signature against the key of the author's certificate: directly,
    /// or through the batch key the author certified.
    pub fn verify_signature(
        &self,
        group_id: &GroupId,
        key: &PublicKey,
    ) -> Result<(), IdentityError> {
        let msg = self.signing_bytes(group_id);
        match &self.signature {
            BatchSignature::Author(sig) => key.verify(&msg, sig),
            BatchSignature::Delegated {
                delegation,
                signature,
            } => {
                delegation.verify(group_id, &self.author, key)?;
                delegation.verify_by_key(&msg, signature)
            }
        }
    }

    /// The `seq` of the first record; a decoded batch is never empty.
    pub fn first_seq(&self) -> Option<u64> {
        self.records.first().map(|r| r.seq)
    }
}

/// The batch's encoding without its signature, once checked to decode and to fit in a block.
fn checked_unsigned(author: &str, records: &[Record]) -> Result<Writer, ChainError> {
    validate_name(author)?;
    if records.is_empty() || records.len() > MAX_RECORDS_PER_BATCH {
        return Err(ChainError::Invalid(format!(
            "a batch holds 1 to {MAX_RECORDS_PER_BATCH} records, not {}",
            records.len()
        )));
    }
    if let Some(r) = records
        .iter()
        .find(|r| !(TAG_BYTES..=MAX_RECORD_CIPHERTEXT_BYTES).contains(&r.ciphertext.len()))
    {
        return Err(ChainError::Invalid(format!(
            "record {} has a {}-byte ciphertext; the format allows {TAG_BYTES} to \
             {MAX_RECORD_CIPHERTEXT_BYTES}",
            r.seq,
            r.ciphertext.len()
        )));
    }
    let mut unsigned = Writer::new();
    encode_unsigned(&mut unsigned, author, records);
    // The header, the signed part and the longest signature must fit in one block.
    let unsigned_len = unsigned.as_slice().len();
    if HEADER_BYTES + unsigned_len + MAX_BATCH_SIGNATURE_BYTES > MAX_BLOCK_BYTES {
        return Err(ChainError::Invalid(format!(
            "a batch of {} records is {unsigned_len} bytes, too large for one block of at \
             most {MAX_BLOCK_BYTES} bytes: split it",
            records.len()
        )));
    }
    Ok(unsigned)
}

impl Canonical for RecordBatch {
    fn encode_to(&self, w: &mut Writer) {
        encode_unsigned(w, &self.author, &self.records);
        self.signature.encode_to(w);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let author = read_name(r, "batch author")?;
        let n = r.count("records", MAX_RECORDS_PER_BATCH, MIN_RECORD_BYTES)?;
        if n == 0 {
            return Err(DecodeError::Invalid {
                what: "records",
                why: "a batch holds at least one record".into(),
            });
        }
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            records.push(Record::decode_from(r)?);
        }
        Ok(Self {
            author,
            records,
            signature: BatchSignature::decode_from(r)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::test_key;

    #[test]
    fn aad_is_the_canonical_author_seq_and_epoch() {
        assert_eq!(
            hex::encode(record_aad("al", 1, 2)),
            "00000002616c00000000000000010000000000000002"
        );
    }

    #[test]
    fn a_signed_batch_verifies_for_its_group_and_author_only() {
        let key = GroupKey::generate();
        let rec = Record::seal(&key, "alice", 1, 1, b"hi").unwrap();
        assert_eq!(rec.open(&key, "alice").unwrap(), b"hi");
        assert!(rec.open(&key, "bob").is_err());
        let batch = RecordBatch::sign(test_key(1), &[7; 16], "alice", vec![rec]).unwrap();
        batch
            .verify_signature(&[7; 16], test_key(1).public())
            .unwrap();
        assert!(batch
            .verify_signature(&[8; 16], test_key(1).public())
            .is_err());
        assert!(batch
            .verify_signature(&[7; 16], test_key(2).public())
            .is_err());
        let mut renamed = batch.clone();
        renamed.author = "alicf".into();
        assert!(renamed
            .verify_signature(&[7; 16], test_key(1).public())
            .is_err());
        let back = RecordBatch::from_canonical(&batch.to_canonical()).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn a_batch_signed_with_a_batch_key_verifies_for_its_group_and_author_only() {
        let key = GroupKey::generate();
        let rec = Record::seal(&key, "alice", 1, 1, b"hi").unwrap();
        let bk = BatchKey::generate(test_key(1), &[7; 16], "alice").unwrap();
        let batch = RecordBatch::sign_with(&bk, vec![rec.clone()]).unwrap();
        batch
            .verify_signature(&[7; 16], test_key(1).public())
            .unwrap();
        // Another group, another author's certified key, a changed record, a batch key the
        // author never certified: each refused.
        assert!(batch
            .verify_signature(&[8; 16], test_key(1).public())
            .is_err());
        assert!(batch
            .verify_signature(&[7; 16], test_key(2).public())
            .is_err());
        let mut changed = batch.clone();
        changed.records[0].ciphertext[0] ^= 1;
        assert!(changed
            .verify_signature(&[7; 16], test_key(1).public())
            .is_err());
        let rogue = BatchKey::generate(test_key(2), &[7; 16], "alice").unwrap();
        let mut swapped = RecordBatch::sign_with(&rogue, vec![rec.clone()]).unwrap();
        assert!(swapped
            .verify_signature(&[7; 16], test_key(1).public())
            .is_err());
        // A rogue key wearing alice's delegation: the Ed25519 signature does not match.
        if let BatchSignature::Delegated { delegation, .. } = &mut swapped.signature {
            *delegation = bk.delegation().clone();
        }
        assert!(swapped
            .verify_signature(&[7; 16], test_key(1).public())
            .is_err());
        // The same key cannot be reused for another author name.
        let mut renamed = batch.clone();
        renamed.author = "alicf".into();
        assert!(renamed
            .verify_signature(&[7; 16], test_key(1).public())
            .is_err());
        let back = RecordBatch::from_canonical(&batch.to_canonical()).unwrap();
        assert_eq!(back, batch);
        // Ed25519 is deterministic: the same records sign to the same bytes.
        let again = RecordBatch::sign_with(&bk, vec![rec]).unwrap();
        assert_eq!(again.to_canonical(), batch.to_canonical());
    }

    #[test]
    fn an_unknown_signature_kind_does_not_decode() {
        let key = GroupKey::generate();
        let rec = Record::seal(&key, "alice", 1, 1, b"hi").unwrap();
        let batch = RecordBatch::sign(test_key(1), &[7; 16], "alice", vec![rec]).unwrap();
        let mut bytes = batch.to_canonical();
        let kind_at = bytes.len() - batch_sig_len(&batch) - 4 - 1;
        bytes[kind_at] = 9;
        assert!(RecordBatch::from_canonical(&bytes).is_err());
    }

    fn batch_sig_len(b: &RecordBatch) -> usize {
        match &b.signature {
            BatchSignature::Author(s) => s.len(),
            BatchSignature::Delegated { .. } => unreachable!(),
        }
    }

    #[test]
    fn sign_refuses_what_could_not_be_decoded() {
        let rec = |len| Record {
            seq: 1,
            epoch: 1,
            nonce: [0; 12],
            ciphertext: vec![0; len],
        };
        let sign = |author: &str, recs| RecordBatch::sign(test_key(1), &[0; 16], author, recs);
        assert!(sign("alice", vec![]).is_err());
        assert!(sign("no spaces", vec![rec(16)]).is_err());
        assert!(sign("alice", vec![rec(15)]).is_err());
        assert!(sign("alice", vec![rec(MAX_RECORD_CIPHERTEXT_BYTES + 1)]).is_err());
        assert!(sign("alice", vec![rec(MAX_RECORD_CIPHERTEXT_BYTES); 8]).is_err());
        assert!(sign("alice", vec![rec(16)]).is_ok());
    }
}
