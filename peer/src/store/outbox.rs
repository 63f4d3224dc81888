//! This member's durable outbox, in the same redb file as the chain.
//!
//! A record is stored (as plaintext, with its `seq`) before anything is sent, so it survives
//! a crash. Records are sealed and signed only when a batch is formed, for two reasons: the
//! key epoch may move while a record waits (and the chain refuses records sealed two epochs
//! back), and after a refusal later records must be renumbered, which changes their sealing
//! (`seq` is in the associated data) and their signature. The signed batch is then stored as
//! *in flight* and resent byte for byte after a crash or a leader change, so the chain's
//! dedup index recognises a retry. At most one batch is in flight.
//!
//! Every call is one short redb transaction. Only the in-flight batch must be durable before
//! it is sent (so a retry after a crash is the same bytes): it is committed without an fsync
//! and then made durable by the store's syncer, sharing the fsync with Raft log appends that
//! wait at the same time. Enqueueing and completing are committed without fsync: a crash can lose a line nobody was told is committed (the
//! durable commit that stores its batch makes it durable first), or forget a completion (the
//! batch is then resent and answered as a duplicate). The writer task owns the outbox, so
//! there is never a second caller racing for a `seq`.

use std::sync::Arc;

use conclave_shared::chain::{RecordBatch, MAX_RECORD_PLAINTEXT_BYTES};
use conclave_shared::codec::Canonical;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};

use super::error::{DbResult, StoreError};
use super::schema::{INFLIGHT_BATCH, META, OUTBOX, OUTBOX_INFLIGHT, OUTBOX_NEXT_SEQ};
use super::sync::Syncer;

/// A signed batch's canonical bytes and the seqs of the records it carries.
pub type InflightBatch = (Vec<u8>, Vec<u64>);

/// The author's outbox; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    db: Arc<Database>,
    syncer: Syncer,
}

fn read_counter<T: ReadableTable<&'static str, u64>>(meta: &T) -> Result<u64, StoreError> {
    let v = meta.get(OUTBOX_NEXT_SEQ).db()?.map(|v| v.value());
    Ok(v.unwrap_or(1).max(1))
}

fn counter(tx: &WriteTransaction) -> Result<u64, StoreError> {
    read_counter(&tx.open_table(META).db()?)
}

fn set_counter(tx: &WriteTransaction, next: u64) -> Result<(), StoreError> {
    tx.open_table(META)
        .db()?
        .insert(OUTBOX_NEXT_SEQ, next)
        .db()?;
    Ok(())
}

fn next_after(seq: u64) -> Result<u64, StoreError> {
    seq.checked_add(1)
        .ok_or_else(|| StoreError::corrupt("outbox", "sequence numbers are exhausted"))
}

/// The stored in-flight batch's seqs, if any.
fn inflight_seqs<T>(table: &T) -> Result<Option<InflightBatch>, StoreError>
where
    T: ReadableTable<&'static str, &'static [u8]>,
{
    let Some(v) = table.get(INFLIGHT_BATCH).db()? else {
        return Ok(None);
    };
    let bytes = v.value().to_vec();
    let batch = RecordBatch::from_canonical(&bytes)
        .map_err(|e| StoreError::corrupt("in-flight batch", e))?;
    let seqs = batch.records.iter().map(|r| r.seq).collect();
    Ok(Some((bytes, seqs)))
}

/// On open: the counter is at least one past every stored record, whatever a crash left.
pub(crate) fn reconcile_counter(tx: &WriteTransaction) -> Result<(), StoreError> {
    let mut next = counter(tx)?;
    if let Some((k, _)) = tx.open_table(OUTBOX).db()?.last().db()? {
        next = next.max(next_after(k.value())?);
    }
    if let Some((_, seqs)) = inflight_seqs(&tx.open_table(OUTBOX_INFLIGHT).db()?)? {
        if let Some(last) = seqs.last() {
            next = next.max(next_after(*last)?);
        }
    }
    set_counter(tx, next)
}

impl Outbox {
    pub(crate) fn new(db: Arc<Database>, syncer: Syncer) -> Self {
        Self { db, syncer }
    }

    /// Makes every earlier commit to this database durable (those of the outbox and of the
    /// applied chain that skip the fsync).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.syncer.sync_wal()?;
        let tx = self.db.begin_write().db()?;
        set_counter(&tx, counter(&tx)?)?;
        tx.commit().db()?;
        Ok(())
    }

    /// The `seq` the next enqueued record gets (1 for a member's first record).
    pub fn next_seq(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().db()?;
        read_counter(&tx.open_table(META).db()?)
    }

    /// Stores `plaintext` as the next record and returns its `seq`; durable with the next
    /// durable commit (at the latest when its batch is stored, before it is sent).
    pub fn enqueue(&self, plaintext: &[u8]) -> Result<u64, StoreError> {
        let seqs = self.enqueue_all(&[plaintext])?;
        seqs.first()
            .copied()
            .ok_or_else(|| StoreError::Task("no seq for an enqueued record".into()))
    }

    /// [`Outbox::enqueue`] for several records in one transaction, in order: all or none.
    pub fn enqueue_all(&self, plaintexts: &[&[u8]]) -> Result<Vec<u64>, StoreError> {
        if let Some(p) = plaintexts
            .iter()
            .find(|p| p.len() > MAX_RECORD_PLAINTEXT_BYTES)
        {
            return Err(StoreError::RecordTooLarge {
                len: p.len(),
                max: MAX_RECORD_PLAINTEXT_BYTES,
            });
        }
        let mut tx = self.db.begin_write().db()?;
        tx.set_durability(Durability::None).db()?;
        let mut seq = counter(&tx)?;
        let mut seqs = Vec::with_capacity(plaintexts.len());
        {
            let mut table = tx.open_table(OUTBOX).db()?;
            for p in plaintexts {
                table.insert(seq, *p).db()?;
                seqs.push(seq);
                seq = next_after(seq)?;
            }
        }
        set_counter(&tx, seq)?;
        tx.commit().db()?;
        Ok(seqs)
    }

    /// Records not in flight, oldest first: at most `max_records`, and at most `max_bytes`
    /// of plaintext unless the first alone is larger (it is returned on its own then, so a
    /// large record never blocks the queue).
    pub fn pending(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().db()?;
        let after = inflight_seqs(&tx.open_table(OUTBOX_INFLIGHT).db()?)?
            .and_then(|(_, seqs)| seqs.last().copied());
        let table = tx.open_table(OUTBOX).db()?;
        let start = match after {
            Some(last) => next_after(last)?,
            None => 0,
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in table.range(start..).db()? {
            let (k, v) = row.db()?;
            let len = v.value().len();
            if out.len() >= max_records
                || (!out.is_empty() && bytes.saturating_add(len) > max_bytes)
            {
                break;
            }
            bytes = bytes.saturating_add(len);
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Stores the signed batch that carries the oldest pending records `seqs`, durably,
    /// before it is sent. Refused while another batch is in flight, or if the batch is not
    /// exactly those records in order. Blocking; the writer uses [`Outbox::store_inflight`].
    pub fn set_inflight(&self, batch: &[u8], seqs: &[u64]) -> Result<(), StoreError> {
        self.set_inflight_lazily(batch, seqs)?;
        self.syncer.durable_now(&self.db)
    }

    /// [`Outbox::set_inflight`] without blocking on the fsync: the commit skips it, and the
    /// store's syncer makes it durable, together with whatever else waits for it then.
    pub async fn store_inflight(&self, batch: &[u8], seqs: &[u64]) -> Result<(), StoreError> {
        self.set_inflight_lazily(batch, seqs)?;
        self.syncer.sync().await
    }

    fn set_inflight_lazily(&self, batch: &[u8], seqs: &[u64]) -> Result<(), StoreError> {
        let decoded = RecordBatch::from_canonical(batch)
            .map_err(|e| StoreError::BatchMismatch(format!("it does not decode: {e}")))?;
        let in_batch: Vec<u64> = decoded.records.iter().map(|r| r.seq).collect();
        if in_batch != seqs {
            return Err(StoreError::BatchMismatch(format!(
                "it holds seqs {in_batch:?}, not {seqs:?}"
            )));
        }
        let mut tx = self.db.begin_write().db()?;
        tx.set_durability(Durability::None).db()?;
        {
            let mut inflight = tx.open_table(OUTBOX_INFLIGHT).db()?;
            if inflight.get(INFLIGHT_BATCH).db()?.is_some() {
                return Err(StoreError::InflightBusy);
            }
            let table = tx.open_table(OUTBOX).db()?;
            let oldest: Vec<u64> = table
                .iter()
                .db()?
                .take(seqs.len())
                .map(|row| row.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()
                .db()?;
            if oldest != seqs {
                return Err(StoreError::BatchMismatch(format!(
                    "the oldest pending records are {oldest:?}, not {seqs:?}"
                )));
            }
            inflight.insert(INFLIGHT_BATCH, batch).db()?;
        }
        tx.commit().db()?;
        Ok(())
    }

    /// The batch in flight, byte for byte as stored, and the seqs it carries.
    pub fn inflight(&self) -> Result<Option<InflightBatch>, StoreError> {
        let tx = self.db.begin_read().db()?;
        inflight_seqs(&tx.open_table(OUTBOX_INFLIGHT).db()?)
    }

    /// The batch in flight was committed (or found to be a duplicate): deletes it and its
    /// records in one transaction. Returns how many records it carried.
    pub fn complete_inflight(&self) -> Result<usize, StoreError> {
        let mut tx = self.db.begin_write().db()?;
        tx.set_durability(Durability::None).db()?;
        let n = {
            let mut inflight = tx.open_table(OUTBOX_INFLIGHT).db()?;
            let Some((_, seqs)) = inflight_seqs(&inflight)? else {
                return Ok(0);
            };
            inflight.remove(INFLIGHT_BATCH).db()?;
            let mut table = tx.open_table(OUTBOX).db()?;
            for seq in &seqs {
                table.remove(*seq).db()?;
            }
            seqs.len()
        };
        tx.commit().db()?;
        Ok(n)
    }

    /// The batch in flight was refused only because its key is too old (a member left since
    /// it was sealed): it is forgotten but its records stay pending, to be sealed again
    /// under the newest key with the same seqs. Returns how many records it carried.
    pub fn reset_inflight(&self) -> Result<usize, StoreError> {
        let tx = self.db.begin_write().db()?;
        let n = {
            let mut inflight = tx.open_table(OUTBOX_INFLIGHT).db()?;
            let Some((_, seqs)) = inflight_seqs(&inflight)? else {
                return Ok(0);
            };
            inflight.remove(INFLIGHT_BATCH).db()?;
            seqs.len()
        };
        tx.commit().db()?;
        Ok(n)
    }

    /// The batch in flight was refused, so the chain did not take its seqs: its records are
    /// dropped and every later record is renumbered down to close the gap, in one
    /// transaction. Returns how many records were dropped.
    pub fn drop_inflight_and_renumber(&self) -> Result<usize, StoreError> {
        let tx = self.db.begin_write().db()?;
        let n = {
            let mut inflight = tx.open_table(OUTBOX_INFLIGHT).db()?;
            let Some((_, seqs)) = inflight_seqs(&inflight)? else {
                return Ok(0);
            };
            inflight.remove(INFLIGHT_BATCH).db()?;
            let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
                return Err(StoreError::corrupt(
                    "in-flight batch",
                    "it holds no records",
                ));
            };
            let mut table = tx.open_table(OUTBOX).db()?;
            table.retain_in(first..=last, |_, _| false).db()?;
            shift(&mut table, next_after(last)?, first)?;
            seqs.len()
        };
        let next = counter(&tx)?;
        set_counter(&tx, next.saturating_sub(n as u64).max(1))?;
        tx.commit().db()?;
        Ok(n)
    }

    /// The chain says this author's next record must have `chain_next` (for example after
    /// this member's data was restored from elsewhere): pending records numbered below it
    /// are renumbered up to start there, and the counter is moved past it. Refused while a
    /// batch is in flight (resolve that first). Returns the new next seq.
    pub fn advance_next_seq(&self, chain_next: u64) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().db()?;
        let next = {
            if tx
                .open_table(OUTBOX_INFLIGHT)
                .db()?
                .get(INFLIGHT_BATCH)
                .db()?
                .is_some()
            {
                return Err(StoreError::InflightBusy);
            }
            let mut table = tx.open_table(OUTBOX).db()?;
            let first = table.first().db()?.map(|(k, _)| k.value());
            if let Some(first) = first.filter(|f| *f < chain_next) {
                shift(&mut table, first, chain_next)?;
            }
            let after_last = match table.last().db()? {
                Some((k, _)) => next_after(k.value())?,
                None => 1,
            };
            counter(&tx)?.max(chain_next).max(after_last)
        };
        set_counter(&tx, next)?;
        tx.commit().db()?;
        Ok(next)
    }
}

/// Renumbers every record from `from` on so that `from` becomes `to`, keeping the order.
fn shift(table: &mut redb::Table<'_, u64, &[u8]>, from: u64, to: u64) -> Result<(), StoreError> {
    if from == to {
        return Ok(());
    }
    let mut moved = Vec::new();
    for row in table.extract_from_if(from.., |_, _| true).db()? {
        let (k, v) = row.db()?;
        moved.push((k.value(), v.value().to_vec()));
    }
    for (seq, plaintext) in moved {
        let new = (seq - from)
            .checked_add(to)
            .ok_or_else(|| StoreError::corrupt("outbox", "sequence numbers are exhausted"))?;
        table.insert(new, plaintext.as_slice()).db()?;
    }
    Ok(())
}
