//! One queue in the tiered store (RocketMQ's `FlatMessageFile`): a tiered commit log (the
//! local records' bytes unchanged, in an offset space of its own from 0) and a tiered consume
//! queue of 20-byte units pointing into it.
//!
//! The commit log is always committed before the consume queue, so a committed unit never
//! points at bytes the object store may not have. A batch whose commit-log bytes were uploaded
//! but whose units were not leaves unreferenced bytes; re-dispatch appends the messages again
//! after them (RocketMQ's "harmless garbage").

use std::collections::BTreeMap;

use bytes::Bytes;

use super::flat_file::{FlatAppend, FlatAppendFile, Hole};
use super::metadata::{Meta, MetadataStore};
use super::{FileKind, QueueKey, TieredConfig, TieredError, TIERED_CQ_UNIT_BYTES};
use crate::bugs::{Bug, BugSet};
use crate::io::ObjectStore;

/// A tiered consume-queue unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TieredUnit {
    /// Offset in the queue's tiered commit log; -1 for a blank unit.
    pub cl_offset: i64,
    pub size: i32,
    pub tags_code: i64,
}

impl TieredUnit {
    /// A unit for a message the local store lost before it was tiered (its file expired):
    /// the offset exists in the queue, with no message behind it.
    pub const BLANK: TieredUnit = TieredUnit { cl_offset: -1, size: 0, tags_code: 0 };

    pub fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&self.cl_offset.to_be_bytes());
        b[8..12].copy_from_slice(&self.size.to_be_bytes());
        b[12..].copy_from_slice(&self.tags_code.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; 20]) -> TieredUnit {
        TieredUnit {
            cl_offset: i64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            size: i32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
            tags_code: i64::from_be_bytes(b[12..].try_into().expect("8 bytes")),
        }
    }

    pub fn is_blank(&self) -> bool {
        *self == TieredUnit::BLANK
    }

    /// The commit-log range `[start, end)`, if the unit is a sane message unit.
    pub fn range(&self) -> Option<(u64, u64)> {
        let start = u64::try_from(self.cl_offset).ok()?;
        let size = u64::try_from(self.size).ok().filter(|s| *s > 0)?;
        // Offsets are i64 on the wire: an end past i64::MAX is garbage.
        let end = start.checked_add(size).filter(|e| *e <= i64::MAX as u64)?;
        Some((start, end))
    }
}

/// Decodes a run of units; a length that is not whole units is corrupt.
pub fn decode_units(what: &str, bytes: &[u8]) -> Result<Vec<TieredUnit>, TieredError> {
    if bytes.len() % TIERED_CQ_UNIT_BYTES as usize != 0 {
        return Err(TieredError::corrupt(what, format!("{} bytes is not whole units", bytes.len())));
    }
    Ok(bytes.chunks_exact(20).map(|c| TieredUnit::decode(c.try_into().expect("20 bytes"))).collect())
}

#[derive(Debug)]
pub struct FlatMessageFile {
    pub queue: QueueKey,
    pub commit_log: FlatAppendFile,
    pub consume_queue: FlatAppendFile,
    /// Whether this queue was checked against the object store since the store opened.
    pub recovered: bool,
    /// What recovery found no bytes for (queue offsets for the consume queue).
    pub holes: Vec<(FileKind, Hole)>,
    /// Queue offsets below this have their keys in a durable index file.
    pub indexed_queue_offset: u64,
    /// When the dispatcher first held this queue's pending messages back (monotonic time):
    /// a hold ends after the group-commit time-out even when the store clock, which ages
    /// messages by their store timestamps, is frozen or went backwards.
    pub held_since: Option<tokio::time::Instant>,
    /// Remote sizes learned by a recovery not finished yet (None: no such object).
    recovery_sizes: BTreeMap<(FileKind, u64), Option<u64>>,
}

impl FlatMessageFile {
    /// A queue's flat files, tiering from queue offset 0 whatever the local minimum: offsets
    /// that expired locally before the queue was first seen get blank units like any later
    /// expiry. Started at the local minimum with nothing to upload, the queue would leave no
    /// trace in the object store, and a replaced container would hand those offsets out again.
    /// (Recovery moves the start to what the object store holds.)
    pub fn new(cfg: &TieredConfig, queue: QueueKey) -> FlatMessageFile {
        let cl =
            FlatAppendFile::new(FileKind::CommitLog, queue.clone(), &cfg.key_prefix, cfg.commit_log_segment_bytes, 0);
        let cq = FlatAppendFile::new(
            FileKind::ConsumeQueue,
            queue.clone(),
            &cfg.key_prefix,
            cfg.consume_queue_segment_bytes,
            0,
        );
        FlatMessageFile {
            queue,
            commit_log: cl,
            consume_queue: cq,
            recovered: false,
            indexed_queue_offset: 0,
            held_since: None,
            holes: Vec::new(),
            recovery_sizes: BTreeMap::new(),
        }
    }

    /// First queue offset the tiered store holds.
    pub fn min_queue_offset(&self) -> u64 {
        self.consume_queue.min_offset() / TIERED_CQ_UNIT_BYTES
    }
    /// Next queue offset to dispatch.
    pub fn dispatch_queue_offset(&self) -> u64 {
        self.consume_queue.append_offset() / TIERED_CQ_UNIT_BYTES
    }
    /// End of the committed queue offsets.
    pub fn commit_queue_offset(&self) -> u64 {
        self.consume_queue.commit_offset() / TIERED_CQ_UNIT_BYTES
    }
    pub fn has_uncommitted(&self) -> bool {
        self.commit_log.has_uncommitted() || self.consume_queue.has_uncommitted()
    }

    /// Checks both files against the object store.
    pub async fn recover(
        &mut self,
        obj: &dyn ObjectStore,
        meta: &Meta,
        listed: &[(FileKind, u64)],
        now_ms: i64,
    ) -> Result<(), TieredError> {
        let bases = |k: FileKind| listed.iter().filter(|(kind, _)| *kind == k).map(|(_, b)| *b).collect::<Vec<_>>();
        let sizes = |k: FileKind| -> BTreeMap<u64, Option<u64>> {
            self.recovery_sizes.iter().filter(|((kind, _), _)| *kind == k).map(|((_, b), s)| (*b, *s)).collect()
        };
        let (mut cl_sizes, mut cq_sizes) = (sizes(FileKind::CommitLog), sizes(FileKind::ConsumeQueue));
        let cl = self.commit_log.recover(obj, meta, &bases(FileKind::CommitLog), &mut cl_sizes, now_ms).await;
        let cq = match &cl {
            Ok(_) => {
                Some(self.consume_queue.recover(obj, meta, &bases(FileKind::ConsumeQueue), &mut cq_sizes, now_ms).await)
            }
            Err(_) => None,
        };
        self.recovery_sizes = cl_sizes
            .into_iter()
            .map(|(b, s)| ((FileKind::CommitLog, b), s))
            .chain(cq_sizes.into_iter().map(|(b, s)| ((FileKind::ConsumeQueue, b), s)))
            .collect();
        let cl_holes = cl?;
        let cq_holes = cq.expect("recovered after the commit log")?;
        self.recovery_sizes.clear();
        self.holes = cl_holes
            .into_iter()
            .map(|h| (FileKind::CommitLog, h))
            .chain(cq_holes.into_iter().map(|h| {
                let unit = TIERED_CQ_UNIT_BYTES;
                (FileKind::ConsumeQueue, Hole { from: h.from / unit, to: h.to.div_ceil(unit), reason: h.reason })
            }))
            .collect();
        for (kind, h) in &self.holes {
            tracing::error!(queue = %self.queue, kind = kind.dir_name(), from = h.from, to = h.to, reason = %h.reason,
                "tiered range unreadable");
        }
        self.recovered = true;
        Ok(())
    }

    /// Accepts one message and its unit; returns the record's commit-log offset, or `None`
    /// when a full segment could not roll yet: the message was not taken (its commit-log
    /// bytes, if taken, stay unreferenced).
    #[allow(clippy::too_many_arguments)]
    pub async fn append_message(
        &mut self,
        obj: &dyn ObjectStore,
        meta: &Meta,
        record: Bytes,
        tags_code: i64,
        store_ts_ms: i64,
        bugs: &BugSet,
        now_ms: i64,
    ) -> Result<Option<u64>, TieredError> {
        let size = i32::try_from(record.len()).map_err(|_| TieredError::corrupt(&self.queue, "record over 2 GiB"))?;
        let FlatAppend::At(cl_offset) = self.commit_log.append(obj, meta, record, store_ts_ms, bugs, now_ms).await?
        else {
            return Ok(None);
        };
        let unit = TieredUnit { cl_offset: cl_offset as i64, size, tags_code };
        Ok(match self.append_unit(obj, meta, unit, store_ts_ms, bugs, now_ms).await? {
            FlatAppend::At(_) => Some(cl_offset),
            FlatAppend::NotReady => None,
        })
    }

    pub async fn append_unit(
        &mut self,
        obj: &dyn ObjectStore,
        meta: &Meta,
        unit: TieredUnit,
        store_ts_ms: i64,
        bugs: &BugSet,
        now_ms: i64,
    ) -> Result<FlatAppend, TieredError> {
        if self.consume_queue.would_roll(TIERED_CQ_UNIT_BYTES) && !bugs.has(Bug::TieredCqBeforeCl) {
            // The roll commits the consume queue's full segment: the commit-log bytes its
            // units point at go first.
            self.commit_log.commit(obj, meta, bugs, now_ms).await?;
            if self.commit_log.has_uncommitted() {
                return Ok(FlatAppend::NotReady);
            }
        }
        let bytes = Bytes::copy_from_slice(&unit.encode());
        self.consume_queue.append(obj, meta, bytes, store_ts_ms, bugs, now_ms).await
    }

    /// Commits the commit log, then (only if that succeeded) the consume queue.
    pub async fn commit(
        &mut self,
        obj: &dyn ObjectStore,
        meta: &Meta,
        bugs: &BugSet,
        now_ms: i64,
    ) -> Result<(), TieredError> {
        let r = if bugs.has(Bug::TieredCqBeforeCl) {
            let cq = self.consume_queue.commit(obj, meta, bugs, now_ms).await;
            let cl = self.commit_log.commit(obj, meta, bugs, now_ms).await;
            cq.and(cl)
        } else {
            match self.commit_log.commit(obj, meta, bugs, now_ms).await {
                Ok(()) => self.consume_queue.commit(obj, meta, bugs, now_ms).await,
                Err(e) => Err(e),
            }
        };
        meta.lock().await.persist().await?;
        r
    }

    /// Removes head segments whose newest message is older than `cutoff_ms`: consume-queue
    /// segments first, then commit-log segments no remaining unit points into (the caller reads
    /// the first remaining unit: `first_cl_offset`). Returns the removed objects' keys.
    pub fn expire(&mut self, meta: &mut MetadataStore, cutoff_ms: i64, first_cl_offset: Option<u64>) -> Vec<String> {
        // A segment rebuilt from a listing has no timestamps: it is kept.
        let mut gone = self.consume_queue.expire_head(meta, |s| s.end_ts_ms() > 0 && s.end_ts_ms() < cutoff_ms);
        if let Some(first) = first_cl_offset {
            gone.extend(self.commit_log.expire_head(meta, |s| s.commit_offset() <= first));
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_trip_and_ranges_are_checked() {
        let u = TieredUnit { cl_offset: 1234, size: 200, tags_code: -7 };
        assert_eq!(TieredUnit::decode(&u.encode()), u);
        assert_eq!(u.range(), Some((1234, 1434)));
        assert_eq!(TieredUnit::BLANK.range(), None);
        assert_eq!(TieredUnit { cl_offset: -5, size: 10, tags_code: 0 }.range(), None);
        assert_eq!(TieredUnit { cl_offset: i64::MAX, size: 10, tags_code: 0 }.range(), None);
        assert!(decode_units("q", &[0u8; 39]).is_err());
        assert_eq!(decode_units("q", &[0u8; 40]).unwrap().len(), 2);
    }
}
