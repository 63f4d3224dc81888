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
//! and written to the in-flight journal (`journal.rs`, one small `fdatasync`), which on the
//! next open puts it back, with its records and the counter, if redb lost them. Enqueueing
//! and completing are committed without fsync: a crash can lose a line nobody was told is
//! committed, or forget a completion (the batch is then resent and answered as a
//! duplicate). Refusals and reseals are rare and committed durably. The writer task owns the
//! outbox, so there is never a second caller racing for a `seq`.

use std::sync::Arc;

use conclave_shared::chain::{RecordBatch, MAX_RECORD_PLAINTEXT_BYTES};
use conclave_shared::codec::Canonical;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};

use super::error::{DbResult, StoreError};
use super::journal::{Journal, JournalEntry};
use super::schema::{
    INFLIGHT_BATCH, JOURNAL_SETTLED, META, OUTBOX, OUTBOX_INFLIGHT, OUTBOX_NEXT_SEQ,
};
use super::sync::Syncer;

/// A signed batch's canonical bytes and the seqs of the records it carries.
pub type InflightBatch = (Vec<u8>, Vec<u64>);

/// The author's outbox; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    db: Arc<Database>,
    syncer: Syncer,
    journal: Arc<Journal>,
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
    pub(crate) fn new(db: Arc<Database>, syncer: Syncer, journal: Arc<Journal>) -> Self {
        Self {
            db,
            syncer,
            journal,
        }
    }

    /// Marks the journal's newest entry settled (its batch completed, refused or to be
    /// sealed again), in `tx`.
    fn settle_journal(&self, tx: &WriteTransaction) -> Result<(), StoreError> {
        tx.open_table(META)
            .db()?
            .insert(JOURNAL_SETTLED, self.journal.generation())
            .db()?;
        Ok(())
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
        let entry = self.set_inflight_lazily(batch, seqs)?;
        self.journal.write(&entry).map(|_| ())
    }

    /// [`Outbox::set_inflight`], with the journal's sync on the blocking pool.
    pub async fn store_inflight(&self, batch: &[u8], seqs: &[u64]) -> Result<(), StoreError> {
        let entry = self.set_inflight_lazily(batch, seqs)?;
        let journal = self.journal.clone();
        super::blocking(move || journal.write(&entry).map(|_| ())).await
    }

    /// Stores the batch as in flight without an fsync; returns what the journal must hold.
    fn set_inflight_lazily(&self, batch: &[u8], seqs: &[u64]) -> Result<JournalEntry, StoreError> {
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
        let records = {
            let mut inflight = tx.open_table(OUTBOX_INFLIGHT).db()?;
            if inflight.get(INFLIGHT_BATCH).db()?.is_some() {
                return Err(StoreError::InflightBusy);
            }
            let table = tx.open_table(OUTBOX).db()?;
            let oldest: Vec<(u64, Vec<u8>)> = table
                .iter()
                .db()?
                .take(seqs.len())
                .map(|row| row.map(|(k, v)| (k.value(), v.value().to_vec())))
                .collect::<Result<_, _>>()
                .db()?;
            if !oldest.iter().map(|(s, _)| *s).eq(seqs.iter().copied()) {
                let found: Vec<u64> = oldest.iter().map(|(s, _)| *s).collect();
                return Err(StoreError::BatchMismatch(format!(
                    "the oldest pending records are {found:?}, not {seqs:?}"
                )));
            }
            inflight.insert(INFLIGHT_BATCH, batch).db()?;
            oldest
        };
        let next_seq = counter(&tx)?;
        tx.commit().db()?;
        Ok(JournalEntry {
            batch: batch.to_vec(),
            records,
            next_seq,
        })
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
        self.settle_journal(&tx)?;
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
        self.settle_journal(&tx)?;
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
        self.settle_journal(&tx)?;
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

/// On open: puts the journal's newest entry back if redb lost it (a crash after the batch
/// was sent but before a durable redb commit). Skipped if the outbox settled that entry.
///
/// The journal's batch was formed when every older record had been completed (a batch
/// always takes the oldest pending records, one at a time, and refusals are committed
/// durably), so an older batch or older records that redb still shows are completions the
/// crash lost: they are cleared, or they would go out again and, worse, leave the counter
/// behind seqs the chain may already hold. Anything that does not fit is left alone, loudly.
pub(crate) fn restore_from_journal(
    db: &Database,
    found: Option<(u64, JournalEntry)>,
) -> Result<(), StoreError> {
    let Some((generation, entry)) = found else {
        return Ok(());
    };
    let seqs: Vec<u64> = match RecordBatch::from_canonical(&entry.batch) {
        Ok(b) => b.records.iter().map(|r| r.seq).collect(),
        Err(e) => {
            tracing::error!(generation, "the journal's batch does not decode: {e}");
            return Ok(());
        }
    };
    if !entry
        .records
        .iter()
        .map(|(s, _)| *s)
        .eq(seqs.iter().copied())
    {
        tracing::error!(generation, "the journal's records do not match its batch");
        return Ok(());
    }
    let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
        return Ok(());
    };
    let tx = db.begin_write().db()?;
    {
        let settled = tx
            .open_table(META)
            .db()?
            .get(JOURNAL_SETTLED)
            .db()?
            .map(|v| v.value())
            .unwrap_or(0);
        if generation <= settled {
            return Ok(());
        }
        let mut inflight = tx.open_table(OUTBOX_INFLIGHT).db()?;
        if let Some((held, held_seqs)) = inflight_seqs(&inflight)? {
            if held == entry.batch {
                return Ok(());
            }
            if held_seqs.last().is_none_or(|l| *l >= first) {
                tracing::warn!(
                    generation,
                    "the outbox holds a newer batch in flight than the journal's newest; keeping the outbox's"
                );
                return Ok(());
            }
            inflight.remove(INFLIGHT_BATCH).db()?;
        }
        let mut table = tx.open_table(OUTBOX).db()?;
        let stale = table.retain_in(..first, |_, _| false);
        stale.db()?;
        for (seq, plaintext) in &entry.records {
            let held = table.get(*seq).db()?.map(|v| v.value().to_vec());
            match held {
                Some(v) if v != *plaintext => {
                    tracing::error!(
                        generation,
                        seq,
                        "the outbox holds another record under a seq of the journal's batch; keeping the outbox's"
                    );
                    return Ok(());
                }
                Some(_) => {}
                None => {
                    table.insert(*seq, plaintext.as_slice()).db()?;
                }
            }
        }
        inflight
            .insert(INFLIGHT_BATCH, entry.batch.as_slice())
            .db()?;
        let next = counter(&tx)?.max(entry.next_seq).max(next_after(last)?);
        set_counter(&tx, next)?;
        tracing::info!(
            generation,
            records = seqs.len(),
            "put the batch that was in flight back from the journal"
        );
    }
    tx.commit().db()?;
    Ok(())
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
