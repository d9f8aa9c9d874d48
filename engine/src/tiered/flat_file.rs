//! A flat file (RocketMQ's `FlatAppendFile`): one offset space stored as a list of segments,
//! each its own object, rolled at a maximum size. Only the last segment takes appends.
//!
//! A full segment is rolled only after its final commit succeeded and its size was saved in
//! the metadata (#8409, #8532): otherwise its tail would never be uploaded, or be unreadable
//! after a restart. Recovery checks every segment against its remote size, not only the last.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::metadata::{Meta, MetadataStore, SegmentMeta};
use super::segment::{FileSegment, SegmentAppend};
use super::{keys, FileKind, QueueKey, TieredError};
use crate::bugs::{Bug, BugSet};
use crate::io::{ObjectError, ObjectStore};

/// The outcome of an append to a flat file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlatAppend {
    At(u64),
    /// The last segment is full and its final commit did not complete: nothing accepted.
    NotReady,
}

/// A range of offsets recovery found no bytes for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    pub from: u64,
    pub to: u64,
    pub reason: String,
}

/// One piece of a read: `len` bytes at `offset` inside the object `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPiece {
    pub key: String,
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug)]
pub struct FlatAppendFile {
    kind: FileKind,
    queue: QueueKey,
    prefix: String,
    max_segment_bytes: u64,
    segments: Vec<FileSegment>,
    /// Where the first segment starts while there is none.
    init_offset: u64,
}

impl FlatAppendFile {
    pub fn new(kind: FileKind, queue: QueueKey, prefix: &str, max_segment_bytes: u64, init_offset: u64) -> Self {
        debug_assert_eq!(init_offset % kind.unit_bytes(), 0);
        FlatAppendFile { kind, queue, prefix: prefix.to_string(), max_segment_bytes, segments: Vec::new(), init_offset }
    }

    pub fn kind(&self) -> FileKind {
        self.kind
    }
    pub fn segments(&self) -> &[FileSegment] {
        &self.segments
    }

    /// First offset held.
    pub fn min_offset(&self) -> u64 {
        self.segments.first().map_or(self.init_offset, FileSegment::base_offset)
    }

    /// Next offset to be accepted.
    pub fn append_offset(&self) -> u64 {
        self.segments.last().map_or(self.init_offset, FileSegment::append_offset)
    }

    /// End of the committed bytes, in whole units (a consume queue's partial unit is not an
    /// entry).
    pub fn commit_offset(&self) -> u64 {
        let Some(last) = self.segments.last() else { return self.init_offset };
        let unit = self.kind.unit_bytes();
        last.base_offset() + last.commit_position() / unit * unit
    }

    pub fn has_uncommitted(&self) -> bool {
        self.segments.iter().any(FileSegment::has_uncommitted)
    }

    fn segment_meta(seg: &FileSegment, now_ms: i64) -> SegmentMeta {
        SegmentMeta {
            kind: seg.kind(),
            base_offset: seg.base_offset(),
            size: seg.commit_position(),
            sealed: seg.is_sealed(),
            create_ts_ms: now_ms,
            begin_ts_ms: seg.begin_ts_ms(),
            end_ts_ms: seg.end_ts_ms(),
        }
    }

    /// Records a segment's committed state in the metadata (keeping its creation time).
    pub fn save_segment_meta(meta: &mut MetadataStore, seg: &FileSegment, now_ms: i64) {
        let mut m = Self::segment_meta(seg, now_ms);
        if let Some(old) = meta.get(seg.key()) {
            m.create_ts_ms = old.create_ts_ms;
        }
        meta.put(seg.key(), m);
    }

    fn roll(&mut self, meta: &mut MetadataStore, base: u64, now_ms: i64) {
        let key = keys::segment(&self.prefix, &self.queue, self.kind, base);
        let seg = FileSegment::new(self.kind, key, base, self.max_segment_bytes);
        Self::save_segment_meta(meta, &seg, now_ms);
        self.segments.push(seg);
    }

    /// Whether accepting `len` bytes now would roll the last segment (and so first commit it).
    pub fn would_roll(&self, len: u64) -> bool {
        self.segments.last().is_some_and(|s| {
            s.is_sealed() || (s.append_position() > 0 && s.append_position() + len > self.max_segment_bytes)
        })
    }

    /// Accepts `data` at the end, rolling a full segment once its final commit is done. The
    /// metadata lock is taken only to update or save it, never across an upload.
    pub async fn append(
        &mut self,
        obj: &dyn ObjectStore,
        meta: &Meta,
        data: Bytes,
        store_ts_ms: i64,
        bugs: &BugSet,
        now_ms: i64,
    ) -> Result<FlatAppend, TieredError> {
        if self.segments.is_empty() {
            self.roll(&mut *meta.lock().await, self.init_offset, now_ms);
        }
        let last = self.segments.last_mut().expect("a segment");
        if let SegmentAppend::At(at) = last.append(data.clone(), store_ts_ms) {
            return Ok(FlatAppend::At(at));
        }
        // The segment may have been rolled in this batch: named in the metadata before its upload.
        meta.lock().await.persist().await?;
        let last = self.segments.last_mut().expect("a segment");
        if bugs.has(Bug::TieredFullCommitIgnored) {
            // #8409: `commitAsync().join()`, result ignored.
            let _ = last.commit(obj, bugs).await;
        } else {
            last.commit(obj, bugs).await?;
            if last.has_uncommitted() {
                return Ok(FlatAppend::NotReady);
            }
        }
        last.seal();
        let mut m = meta.lock().await;
        if !bugs.has(Bug::TieredFullSizeNotSaved) {
            Self::save_segment_meta(&mut m, last, now_ms);
            m.persist().await?;
        }
        let base = last.append_offset();
        self.roll(&mut m, base, now_ms);
        drop(m);
        crate::probe!("tiered.segment-rolled");
        match self.segments.last_mut().expect("rolled").append(data, store_ts_ms) {
            SegmentAppend::At(at) => Ok(FlatAppend::At(at)),
            SegmentAppend::Full => unreachable!("an empty segment takes any append"),
        }
    }

    /// Commits the last segment (the only one that takes appends) and records it. A segment
    /// is named in the persisted metadata before any byte is uploaded to it, so a loaded
    /// metadata file always knows every object (recovery asks each one's size).
    pub async fn commit(
        &mut self,
        obj: &dyn ObjectStore,
        meta: &Meta,
        bugs: &BugSet,
        now_ms: i64,
    ) -> Result<(), TieredError> {
        meta.lock().await.persist().await?;
        let Some(last) = self.segments.last_mut() else { return Ok(()) };
        let r = last.commit(obj, bugs).await;
        Self::save_segment_meta(&mut *meta.lock().await, last, now_ms);
        r
    }

    /// Drops appends not yet sent (a batch given up before its commit).
    pub fn drop_pending(&mut self) {
        if let Some(last) = self.segments.last_mut() {
            last.drop_pending();
        }
    }

    /// The objects and ranges holding committed `[offset, offset + len)`.
    pub fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadPiece>, TieredError> {
        let end = offset.checked_add(len).ok_or_else(|| TieredError::corrupt(&self.queue, "read range overflows"))?;
        if offset < self.min_offset() || end > self.commit_offset() {
            return Err(TieredError::Unreadable {
                queue: self.queue.to_string(),
                from: offset,
                to: end,
                reason: format!(
                    "{} holds committed [{}, {})",
                    self.kind.dir_name(),
                    self.min_offset(),
                    self.commit_offset()
                ),
            });
        }
        let mut pieces = Vec::new();
        let mut at = offset;
        let unit = self.kind.unit_bytes();
        for seg in &self.segments {
            if at >= end {
                break;
            }
            // A consume-queue segment sealed with a partial unit ends at its last whole one.
            let seg_end = seg.base_offset() + seg.commit_position() / unit * unit;
            if at < seg.base_offset() || at >= seg_end {
                continue;
            }
            let n = seg_end.min(end) - at;
            pieces.push(ReadPiece { key: seg.key().to_string(), offset: at - seg.base_offset(), len: n });
            at += n;
        }
        if at < end {
            return Err(TieredError::Unreadable {
                queue: self.queue.to_string(),
                from: at,
                to: end,
                reason: "no committed segment holds it".into(),
            });
        }
        Ok(pieces)
    }

    /// Rebuilds the segments from the metadata and the object store: every segment's size is
    /// the remote size. Returns the ranges no segment holds. `sizes` keeps the sizes learned
    /// by an attempt that failed later, so a retry under a failing object store goes on where
    /// it stopped instead of starting over.
    pub async fn recover(
        &mut self,
        obj: &dyn ObjectStore,
        meta: &Meta,
        listed_bases: &[u64],
        sizes: &mut BTreeMap<u64, Option<u64>>,
        now_ms: i64,
    ) -> Result<Vec<Hole>, TieredError> {
        let dir = keys::flat_dir(&self.prefix, &self.queue, self.kind);
        let known: Vec<(u64, SegmentMeta)> = meta
            .lock()
            .await
            .segments()
            .range(format!("{dir}/")..)
            .take_while(|(k, _)| k.starts_with(&format!("{dir}/")))
            .filter_map(|(k, m)| keys::parse(&self.prefix, k).map(|(_, _, base)| (base, m.clone())))
            .collect();
        let mut bases: Vec<u64> = known.iter().map(|(b, _)| *b).chain(listed_bases.iter().copied()).collect();
        bases.sort_unstable();
        bases.dedup();
        let mut segments = Vec::new();
        let mut removed = Vec::new();
        let mut holes = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let key = keys::segment(&self.prefix, &self.queue, self.kind, base);
            let m = known.iter().find(|(b, _)| *b == base).map(|(_, m)| m.clone());
            let remote = match sizes.get(&base) {
                Some(known) => Ok(*known),
                None => match obj.size(&key).await {
                    Ok(n) => Ok(Some(n)),
                    Err(ObjectError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                },
            };
            let remote = remote?;
            sizes.insert(base, remote);
            let size = match remote {
                Some(n) => n,
                None => {
                    // Expiry removes a segment from the metadata before its object, so a
                    // segment the metadata names with bytes must exist.
                    let recorded = m.as_ref().map_or(0, |m| m.size);
                    if recorded > 0 {
                        holes.push(Hole {
                            from: base,
                            to: base + recorded,
                            reason: format!("object {key} is missing"),
                        });
                        removed.push(key);
                        continue;
                    }
                    if i + 1 < bases.len() {
                        // An empty segment in the middle: nothing was ever uploaded to it.
                        removed.push(key);
                        continue;
                    }
                    0
                }
            };
            let sealed = i + 1 < bases.len() || m.as_ref().is_some_and(|m| m.sealed);
            let (begin, end) = m.as_ref().map_or((0, 0), |m| (m.begin_ts_ms, m.end_ts_ms));
            segments.push(FileSegment::recovered(
                self.kind,
                key.clone(),
                base,
                self.max_segment_bytes,
                size,
                sealed,
                begin,
                end,
            ));
        }
        holes.extend(self.check_contiguity(&segments));
        self.segments = segments;
        {
            let mut m = meta.lock().await;
            for key in &removed {
                m.remove(key);
            }
            for seg in &self.segments {
                Self::save_segment_meta(&mut m, seg, now_ms);
            }
        }
        self.seal_partial_unit(obj, meta, now_ms).await?;
        Ok(holes)
    }

    /// Gaps between one segment's committed end and the next one's base.
    fn check_contiguity(&self, segments: &[FileSegment]) -> Vec<Hole> {
        let unit = self.kind.unit_bytes();
        segments
            .windows(2)
            .filter_map(|w| {
                let end = w[0].base_offset() + w[0].commit_position() / unit * unit;
                let next = w[1].base_offset();
                (end != next).then(|| Hole {
                    from: end.min(next),
                    to: end.max(next),
                    reason: format!("segment {} ends at {end}, the next starts at {next}", w[0].key()),
                })
            })
            .collect()
    }

    /// A consume queue whose last object ends inside a unit (a crash after a partial append)
    /// cannot be completed with the same bytes: that segment is sealed and the next unit
    /// starts a new one. An object holding no whole unit is deleted instead (the new segment
    /// would have its name); until the delete succeeds, recovery fails and is tried again.
    async fn seal_partial_unit(&mut self, obj: &dyn ObjectStore, meta: &Meta, now_ms: i64) -> Result<(), TieredError> {
        let unit = self.kind.unit_bytes();
        let Some(last) = self.segments.last_mut() else { return Ok(()) };
        if last.commit_position() % unit == 0 {
            return Ok(());
        }
        crate::probe!("tiered.partial-unit-sealed");
        if last.commit_position() < unit {
            obj.delete(last.key()).await?;
            let base = last.base_offset();
            let key = last.key().to_string();
            self.segments.pop();
            let mut m = meta.lock().await;
            m.remove(&key);
            self.roll(&mut m, base, now_ms);
            return Ok(());
        }
        last.seal();
        let mut m = meta.lock().await;
        Self::save_segment_meta(&mut m, last, now_ms);
        let base = last.base_offset() + last.commit_position() / unit * unit;
        self.roll(&mut m, base, now_ms);
        Ok(())
    }

    /// Removes head segments for which `expired` holds, never the last. Returns their keys
    /// (deleted from the metadata; the caller persists, then deletes the objects).
    pub fn expire_head(&mut self, meta: &mut MetadataStore, expired: impl Fn(&FileSegment) -> bool) -> Vec<String> {
        let mut gone = Vec::new();
        while self.segments.len() > 1 && self.segments[0].is_sealed() && expired(&self.segments[0]) {
            let seg = self.segments.remove(0);
            meta.remove(seg.key());
            gone.push(seg.key().to_string());
        }
        gone
    }
}
