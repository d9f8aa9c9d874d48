//! One remote object of a flat file (RocketMQ's `FileSegment`).
//!
//! A segment keeps its base offset, its commit position (bytes known to be in the object
//! store), its append position (bytes accepted: committed, pending, or in flight), the pending
//! buffers and the batch in flight. A commit uploads the batch with an append at the commit
//! position. When an append's outcome is unknown (time-out, I/O error, partial write) the
//! remote size is the truth: the segment asks for it and continues from there, sending only
//! the bytes the store does not have yet. RocketMQ assumes an append is all-or-nothing; the
//! object store here may apply a prefix, and the segment must not send that prefix twice.

use bytes::{Bytes, BytesMut};

use super::{FileKind, TieredError};
use crate::bugs::{Bug, BugSet};
use crate::io::{ObjectError, ObjectStore};

/// The outcome of accepting bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentAppend {
    /// Accepted at this absolute offset.
    At(u64),
    /// The segment cannot take them: roll to a new one.
    Full,
}

/// What the segment knows about the remote object after a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remote {
    /// The remote size is `commit_position`.
    Known,
    /// A request may have applied some or all of the batch in flight.
    Unsure,
    /// (`tiered-ack-lost-append-again`) a lost acknowledgement taken as a plain failure: the
    /// next commit re-reads the size and sends the whole batch again after it.
    AssumedFailed,
}

#[derive(Debug)]
pub struct FileSegment {
    kind: FileKind,
    key: String,
    base_offset: u64,
    max_size_bytes: u64,
    commit_position: u64,
    append_position: u64,
    pending: Vec<Bytes>,
    pending_bytes: u64,
    in_flight: Option<Bytes>,
    remote: Remote,
    sealed: bool,
    /// Store timestamps of the oldest and newest message accepted (0: none yet).
    begin_ts_ms: i64,
    end_ts_ms: i64,
}

impl FileSegment {
    /// A new, empty segment.
    pub fn new(kind: FileKind, key: String, base_offset: u64, max_size_bytes: u64) -> FileSegment {
        FileSegment {
            kind,
            key,
            base_offset,
            max_size_bytes,
            commit_position: 0,
            append_position: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            in_flight: None,
            remote: Remote::Known,
            sealed: false,
            begin_ts_ms: 0,
            end_ts_ms: 0,
        }
    }

    /// A segment whose object holds `size` bytes (recovery).
    #[allow(clippy::too_many_arguments)]
    pub fn recovered(
        kind: FileKind,
        key: String,
        base_offset: u64,
        max_size_bytes: u64,
        size: u64,
        sealed: bool,
        begin_ts_ms: i64,
        end_ts_ms: i64,
    ) -> FileSegment {
        FileSegment {
            commit_position: size,
            append_position: size,
            sealed,
            begin_ts_ms,
            end_ts_ms,
            ..FileSegment::new(kind, key, base_offset, max_size_bytes)
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn kind(&self) -> FileKind {
        self.kind
    }
    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }
    /// Bytes known to be in the object store.
    pub fn commit_position(&self) -> u64 {
        self.commit_position
    }
    /// Bytes accepted (committed or waiting).
    pub fn append_position(&self) -> u64 {
        self.append_position
    }
    pub fn commit_offset(&self) -> u64 {
        self.base_offset + self.commit_position
    }
    pub fn append_offset(&self) -> u64 {
        self.base_offset + self.append_position
    }
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }
    pub fn seal(&mut self) {
        self.sealed = true;
    }
    pub fn begin_ts_ms(&self) -> i64 {
        self.begin_ts_ms
    }
    pub fn end_ts_ms(&self) -> i64 {
        self.end_ts_ms
    }
    /// Whether accepted bytes wait for a commit.
    pub fn has_uncommitted(&self) -> bool {
        self.in_flight.is_some() || !self.pending.is_empty()
    }

    /// Accepts `data` (RocketMQ's `append`): full when it would pass the maximum size, unless
    /// the segment is empty (one message larger than a segment still gets one of its own).
    pub fn append(&mut self, data: Bytes, store_ts_ms: i64) -> SegmentAppend {
        let len = data.len() as u64;
        if self.sealed || (self.append_position > 0 && self.append_position + len > self.max_size_bytes) {
            return SegmentAppend::Full;
        }
        let at = self.append_offset();
        self.append_position += len;
        self.pending_bytes += len;
        self.pending.push(data);
        if self.begin_ts_ms == 0 {
            self.begin_ts_ms = store_ts_ms;
        }
        self.end_ts_ms = self.end_ts_ms.max(store_ts_ms);
        SegmentAppend::At(at)
    }

    /// Drops what was accepted but never sent (the flat file gave the batch up).
    pub fn drop_pending(&mut self) {
        self.append_position -= self.pending_bytes;
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// Uploads everything accepted. `Ok` means the object store holds every accepted byte;
    /// an error leaves the rest pending (a retry sends only what is missing).
    pub async fn commit(&mut self, obj: &dyn ObjectStore, bugs: &BugSet) -> Result<(), TieredError> {
        if self.in_flight.is_none() {
            if self.pending.is_empty() {
                return Ok(());
            }
            self.in_flight = Some(self.take_pending());
        }
        if self.remote != Remote::Known {
            let size = self.remote_size(obj).await?;
            if self.remote == Remote::AssumedFailed {
                // The whole batch goes again after whatever the store has now.
                self.commit_position = size;
            } else {
                self.reconcile(size, bugs)?;
            }
            self.remote = Remote::Known;
            if self.in_flight.is_none() {
                return Ok(());
            }
        }
        let batch = self.in_flight.clone().expect("a batch in flight");
        match obj.append(&self.key, self.commit_position, batch.clone()).await {
            Ok(new_size) if new_size == self.commit_position + batch.len() as u64 => {
                self.commit_position = new_size;
                self.in_flight = None;
                self.check_positions(bugs);
                Ok(())
            }
            Ok(new_size) => {
                self.remote = Remote::Unsure;
                Err(TieredError::corrupt(
                    &self.key,
                    format!("append of {} bytes at {} answered size {new_size}", batch.len(), self.commit_position),
                ))
            }
            Err(ObjectError::OffsetMismatch { actual, .. }) => {
                self.reconcile(actual, bugs)?;
                match self.in_flight {
                    None => Ok(()),
                    Some(_) => Err(TieredError::NotReady {
                        what: self.key.clone(),
                        reason: format!("the object was {actual} bytes long; the rest goes at the next commit"),
                    }),
                }
            }
            Err(e @ ObjectError::Unavailable { .. }) => Err(e.into()),
            Err(e) => {
                // A time-out or an I/O error may have applied all of the batch, or a prefix.
                let lost_ack = e.outcome_unknown() && bugs.has(Bug::TieredAckLostAppendAgain);
                self.remote = if lost_ack { Remote::AssumedFailed } else { Remote::Unsure };
                Err(e.into())
            }
        }
    }

    fn take_pending(&mut self) -> Bytes {
        self.pending_bytes = 0;
        if self.pending.len() == 1 {
            return self.pending.pop().expect("one buffer");
        }
        let mut b = BytesMut::with_capacity(self.pending.iter().map(Bytes::len).sum());
        for p in self.pending.drain(..) {
            b.extend_from_slice(&p);
        }
        b.freeze()
    }

    async fn remote_size(&self, obj: &dyn ObjectStore) -> Result<u64, TieredError> {
        match obj.size(&self.key).await {
            Ok(n) => Ok(n),
            Err(ObjectError::NotFound { .. }) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Learns that the object is `size` bytes long while a batch is in flight: the bytes the
    /// store already has are dropped from the batch (`correctPosition`, without assuming the
    /// batch went whole or not at all).
    fn reconcile(&mut self, size: u64, bugs: &BugSet) -> Result<(), TieredError> {
        let len = self.in_flight.as_ref().map_or(0, |b| b.len() as u64);
        if size < self.commit_position || size > self.commit_position + len {
            // Bytes known uploaded are gone, or bytes nobody sent are there.
            return Err(TieredError::corrupt(
                &self.key,
                format!(
                    "remote size {size} outside [{}, {}] (committed, committed + in flight)",
                    self.commit_position,
                    self.commit_position + len
                ),
            ));
        }
        let applied = size - self.commit_position;
        if applied == len && len > 0 {
            crate::probe!("tiered.lost-ack-resolved");
        } else if applied > 0 {
            crate::probe!("tiered.partial-append-resolved");
        }
        if bugs.has(Bug::TieredPartialAllOrNothing) && applied != 0 && applied != len {
            // All-or-nothing: a prefix is taken as nothing, and the whole batch goes again after it.
            self.commit_position = size;
            return Ok(());
        }
        self.commit_position = size;
        self.in_flight = match self.in_flight.take() {
            Some(b) if (applied as usize) < b.len() => Some(b.slice(applied as usize..)),
            _ => None,
        };
        self.check_positions(bugs);
        Ok(())
    }

    /// Committed plus waiting bytes are exactly the accepted ones (not under the bugs that
    /// send bytes twice: that mismatch is what their checkers catch).
    fn check_positions(&self, bugs: &BugSet) {
        if bugs.has(Bug::TieredAckLostAppendAgain) || bugs.has(Bug::TieredPartialAllOrNothing) {
            return;
        }
        let waiting = self.pending_bytes + self.in_flight.as_ref().map_or(0, |b| b.len() as u64);
        assert_eq!(
            self.commit_position + waiting,
            self.append_position,
            "segment {}: committed + waiting != accepted",
            self.key
        );
    }

    /// Reads `[offset, offset + len)` (absolute offsets) of committed bytes.
    pub async fn read(&self, obj: &dyn ObjectStore, offset: u64, len: u64) -> Result<Bytes, TieredError> {
        let end = offset.checked_add(len).ok_or_else(|| TieredError::corrupt(&self.key, "read range overflows"))?;
        if offset < self.base_offset || end > self.commit_offset() {
            return Err(TieredError::corrupt(
                &self.key,
                format!("read [{offset}, {end}) outside committed [{}, {})", self.base_offset, self.commit_offset()),
            ));
        }
        let data = obj.get_range(&self.key, offset - self.base_offset, len).await?;
        if data.len() as u64 != len {
            return Err(TieredError::corrupt(&self.key, format!("asked {len} bytes, got {}", data.len())));
        }
        Ok(data)
    }
}
