//! The tiered index file (RocketMQ 5.3's `IndexStoreFile`), in its two forms.
//!
//! Writable (a local file): a 28-byte header (magic, begin and end store timestamps, slot and
//! item counts), `slots` 8-byte hash slots whose first i32 is the newest item of the bucket
//! (0: none), then 32-byte items chained newest to oldest (`hash, topic id, queue id, tiered
//! commit-log offset, size, time diff, previous item`). The magic is BEGIN while it takes
//! keys and END once sealed (full, or at compaction).
//!
//! Compacted (the uploaded object): the same header with END, then per slot the byte position
//! and byte length of its run of 28-byte items (the chained item without its link), the runs
//! laid out bucket by bucket. One query reads a slot, then one run.
//!
//! Every decoder here takes bytes it did not write (a torn local file after a power loss, an
//! object from the store): counts past the end, links out of range, slots pointing outside the
//! object are `TieredError::Corrupt`, never a panic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::TieredError;
use crate::bugs::{Bug, BugSet};
use crate::io::{Storage, StorageFile};

pub const INDEX_HEADER_BYTES: u64 = 28;
pub const INDEX_SLOT_BYTES: u64 = 8;
/// An item of the writable form (with its link to the previous item of its bucket).
pub const INDEX_ITEM_BYTES: u64 = 32;
/// An item of the compacted form.
pub const COMPACT_ITEM_BYTES: u64 = 28;
pub const BEGIN_MAGIC: i32 = 0xBCC5_0289_u32 as i32;
pub const END_MAGIC: i32 = 0xBCC5_0285_u32 as i32;
/// Decoders refuse more slots or items than this (a garbage header must not make a reader
/// allocate or read gigabytes).
pub const MAX_SLOTS: i32 = 1 << 24;
pub const MAX_ITEMS: i32 = 1 << 26;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexHeader {
    pub magic: i32,
    pub begin_ts_ms: i64,
    pub end_ts_ms: i64,
    pub slot_count: i32,
    pub item_count: i32,
}

impl IndexHeader {
    pub fn encode(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&self.magic.to_be_bytes());
        b[4..12].copy_from_slice(&self.begin_ts_ms.to_be_bytes());
        b[12..20].copy_from_slice(&self.end_ts_ms.to_be_bytes());
        b[20..24].copy_from_slice(&self.slot_count.to_be_bytes());
        b[24..28].copy_from_slice(&self.item_count.to_be_bytes());
        b
    }

    /// Decodes and checks a header: a known magic, counts within the limits.
    pub fn decode(what: &str, b: &[u8]) -> Result<IndexHeader, TieredError> {
        if b.len() < INDEX_HEADER_BYTES as usize {
            return Err(TieredError::corrupt(what, format!("index header is {} bytes, needs 28", b.len())));
        }
        let h = IndexHeader {
            magic: i32_at(b, 0),
            begin_ts_ms: i64_at(b, 4),
            end_ts_ms: i64_at(b, 12),
            slot_count: i32_at(b, 20),
            item_count: i32_at(b, 24),
        };
        if h.magic != BEGIN_MAGIC && h.magic != END_MAGIC {
            return Err(TieredError::corrupt(what, format!("index magic {:#x}", h.magic)));
        }
        if h.slot_count <= 0 || h.slot_count > MAX_SLOTS || h.item_count < 0 || h.item_count > MAX_ITEMS {
            return Err(TieredError::corrupt(what, format!("{} slots, {} items", h.slot_count, h.item_count)));
        }
        Ok(h)
    }

    pub fn is_sealed(&self) -> bool {
        self.magic == END_MAGIC
    }

    fn slots_end(&self) -> u64 {
        INDEX_HEADER_BYTES + self.slot_count as u64 * INDEX_SLOT_BYTES
    }

    /// The size of the compacted form of a file with this header.
    pub fn compacted_len(&self) -> u64 {
        self.slots_end() + self.item_count as u64 * COMPACT_ITEM_BYTES
    }

    /// The bucket of a key hash (non-negative, RocketMQ's `abs(hashCode)`).
    pub fn slot_of(&self, hash: i32) -> u64 {
        (hash.unsigned_abs() % self.slot_count as u32) as u64
    }

    /// Whether the file may hold a key stored within `[begin_ms, end_ms]`.
    pub fn overlaps(&self, begin_ms: i64, end_ms: i64) -> bool {
        self.item_count > 0 && self.begin_ts_ms <= end_ms && self.end_ts_ms >= begin_ms
    }
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// One key of one message: where its record is in the queue's tiered commit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexItem {
    /// `index_key_hash` of `topic#key`.
    pub hash: i32,
    /// `java_string_hash` of the topic: a filter only (the query knows its topic and checks
    /// the record read back).
    pub topic_id: i32,
    pub queue_id: i32,
    /// Tiered commit-log offset of the record.
    pub offset: i64,
    pub size: i32,
    /// Store timestamp minus the file's begin timestamp.
    pub time_diff_ms: i32,
}

impl IndexItem {
    fn encode_compact(&self, b: &mut Vec<u8>) {
        b.extend_from_slice(&self.hash.to_be_bytes());
        b.extend_from_slice(&self.topic_id.to_be_bytes());
        b.extend_from_slice(&self.queue_id.to_be_bytes());
        b.extend_from_slice(&self.offset.to_be_bytes());
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&self.time_diff_ms.to_be_bytes());
    }

    fn encode_linked(&self, prev: i32) -> [u8; 32] {
        let mut v = Vec::with_capacity(32);
        self.encode_compact(&mut v);
        v.extend_from_slice(&prev.to_be_bytes());
        v.try_into().expect("32 bytes")
    }

    /// Decodes the first 28 bytes of `b` (at least 28 long).
    fn decode_compact(b: &[u8]) -> IndexItem {
        IndexItem {
            hash: i32_at(b, 0),
            topic_id: i32_at(b, 4),
            queue_id: i32_at(b, 8),
            offset: i64_at(b, 12),
            size: i32_at(b, 20),
            time_diff_ms: i32_at(b, 24),
        }
    }

    /// The item's store timestamp in a file beginning at `begin_ts_ms`.
    pub fn store_ts_ms(&self, begin_ts_ms: i64) -> i64 {
        begin_ts_ms.saturating_add(i64::from(self.time_diff_ms))
    }

    /// The commit-log range the item names; `None` for a negative offset or size.
    pub fn range(&self) -> Option<(u64, u64)> {
        let start = u64::try_from(self.offset).ok()?;
        let len = u64::try_from(self.size).ok().filter(|l| *l > 0)?;
        Some((start, start.checked_add(len)?))
    }
}

/// Items of `hash` within `[begin_ms, end_ms]` in a file's items, newest first.
fn matching(
    items: impl Iterator<Item = IndexItem>,
    h: &IndexHeader,
    hash: i32,
    begin_ms: i64,
    end_ms: i64,
) -> Vec<IndexItem> {
    items
        .filter(|it| it.hash == hash)
        .filter(|it| (begin_ms..=end_ms).contains(&it.store_ts_ms(h.begin_ts_ms)))
        .collect()
}

/// The compacted form of a file's header and items (item `i` is the (i+1)-th put). Under
/// `tiered-index-compaction-drops-last-bucket` the last non-empty bucket's run is left out.
pub fn compact(header: &IndexHeader, items: &[IndexItem], bugs: &BugSet) -> Vec<u8> {
    let slots = header.slot_count as usize;
    let mut buckets: Vec<Vec<IndexItem>> = vec![Vec::new(); slots];
    // Newest first within a bucket, as the chain walks them.
    for it in items.iter().rev() {
        buckets[header.slot_of(it.hash) as usize].push(*it);
    }
    if bugs.has(Bug::TieredIndexCompactionDropsLastBucket) {
        if let Some(last) = buckets.iter_mut().rev().find(|b| !b.is_empty()) {
            last.clear();
        }
    }
    let kept: usize = buckets.iter().map(Vec::len).sum();
    let h = IndexHeader { magic: END_MAGIC, item_count: kept as i32, ..*header };
    let mut out = Vec::with_capacity(h.compacted_len() as usize);
    out.extend_from_slice(&h.encode());
    let mut pos = h.slots_end();
    for b in &buckets {
        let len = b.len() as u64 * COMPACT_ITEM_BYTES;
        let (p, l) = if b.is_empty() { (0, 0) } else { (pos as i32, len as i32) };
        out.extend_from_slice(&p.to_be_bytes());
        out.extend_from_slice(&l.to_be_bytes());
        pos += len;
    }
    for b in &buckets {
        for it in b {
            it.encode_compact(&mut out);
        }
    }
    debug_assert_eq!(out.len() as u64, h.compacted_len());
    out
}

/// The run `(position, length)` a compacted file's slot names, checked against the object's
/// layout; `None` for an empty bucket.
pub fn decode_compact_slot(what: &str, h: &IndexHeader, slot: &[u8]) -> Result<Option<(u64, u64)>, TieredError> {
    if slot.len() != INDEX_SLOT_BYTES as usize {
        return Err(TieredError::corrupt(what, format!("slot of {} bytes", slot.len())));
    }
    let (pos, len) = (i32_at(slot, 0), i32_at(slot, 4));
    if len == 0 {
        return Ok(None);
    }
    let (start, end) = (h.slots_end(), h.compacted_len());
    let ok = pos >= 0
        && len > 0
        && len as u64 % COMPACT_ITEM_BYTES == 0
        && pos as u64 >= start
        && (pos as u64 - start) % COMPACT_ITEM_BYTES == 0
        && pos as u64 + len as u64 <= end;
    if !ok {
        return Err(TieredError::corrupt(
            what,
            format!("slot run at {pos} of {len} bytes outside items [{start}, {end})"),
        ));
    }
    Ok(Some((pos as u64, len as u64)))
}

/// The items of `hash` in one run of a compacted file.
pub fn decode_compact_run(
    what: &str,
    h: &IndexHeader,
    run: &[u8],
    hash: i32,
    begin_ms: i64,
    end_ms: i64,
) -> Result<Vec<IndexItem>, TieredError> {
    if run.len() as u64 % COMPACT_ITEM_BYTES != 0 {
        return Err(TieredError::corrupt(what, format!("item run of {} bytes", run.len())));
    }
    let items = run.chunks_exact(COMPACT_ITEM_BYTES as usize).map(IndexItem::decode_compact);
    Ok(matching(items, h, hash, begin_ms, end_ms))
}

/// A query over a whole compacted object in memory (tests and tools; the store reads a slot,
/// then a run).
pub fn query_compacted(
    what: &str,
    bytes: &[u8],
    hash: i32,
    begin_ms: i64,
    end_ms: i64,
) -> Result<Vec<IndexItem>, TieredError> {
    let h = IndexHeader::decode(what, bytes)?;
    if !h.is_sealed() {
        return Err(TieredError::corrupt(what, "an uploaded index is not sealed"));
    }
    if bytes.len() as u64 != h.compacted_len() {
        return Err(TieredError::corrupt(
            what,
            format!("{} bytes, the header says {}", bytes.len(), h.compacted_len()),
        ));
    }
    let at = (INDEX_HEADER_BYTES + h.slot_of(hash) * INDEX_SLOT_BYTES) as usize;
    let Some((pos, len)) = decode_compact_slot(what, &h, &bytes[at..at + INDEX_SLOT_BYTES as usize])? else {
        return Ok(Vec::new());
    };
    decode_compact_run(what, &h, &bytes[pos as usize..(pos + len) as usize], hash, begin_ms, end_ms)
}

/// Whether a local file took the item or is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexPut {
    Added,
    Full,
}

/// A writable (or sealed, not yet uploaded) index file on the local disk.
#[derive(Debug)]
pub struct LocalIndexFile {
    id: u64,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    header: IndexHeader,
    max_items: u32,
}

/// The local file name of index file `id`.
pub fn file_name(id: u64) -> String {
    format!("{id:020}")
}

impl LocalIndexFile {
    /// Creates an empty writable file (the caller syncs the directory).
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        id: u64,
        slots: u32,
        max_items: u32,
    ) -> Result<LocalIndexFile, TieredError> {
        assert!(slots > 0 && slots as i32 <= MAX_SLOTS && max_items > 0 && max_items as i32 <= MAX_ITEMS);
        let path = dir.join(file_name(id));
        let file = storage.create(&path)?;
        let header =
            IndexHeader { magic: BEGIN_MAGIC, begin_ts_ms: 0, end_ts_ms: 0, slot_count: slots as i32, item_count: 0 };
        let len = header.slots_end() + u64::from(max_items) * INDEX_ITEM_BYTES;
        file.set_len(len)?;
        file.write_at(0, &header.encode())?;
        Ok(LocalIndexFile { id, path, file, header, max_items })
    }

    /// Opens a file left on the disk; a header or size that does not add up is `Corrupt`.
    pub fn open(storage: &dyn Storage, path: &Path, id: u64) -> Result<LocalIndexFile, TieredError> {
        let what = path.display().to_string();
        let file = storage.open(path)?;
        let len = file.len()?;
        let mut b = [0u8; 28];
        if len < INDEX_HEADER_BYTES {
            return Err(TieredError::corrupt(&what, format!("{len} bytes, shorter than a header")));
        }
        file.read_at(0, &mut b)?;
        let header = IndexHeader::decode(&what, &b)?;
        let items_room = len.saturating_sub(header.slots_end()) / INDEX_ITEM_BYTES;
        if len < header.slots_end() || header.item_count as u64 > items_room {
            return Err(TieredError::corrupt(
                &what,
                format!("{len} bytes cannot hold {} slots and {} items", header.slot_count, header.item_count),
            ));
        }
        Ok(LocalIndexFile { id, path: path.to_path_buf(), file, header, max_items: items_room as u32 })
    }

    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> &IndexHeader {
        &self.header
    }
    pub fn is_sealed(&self) -> bool {
        self.header.is_sealed()
    }
    pub fn is_empty(&self) -> bool {
        self.header.item_count == 0
    }

    fn item_at(&self, index: u32) -> u64 {
        self.header.slots_end() + u64::from(index - 1) * INDEX_ITEM_BYTES
    }

    /// Adds one key (RocketMQ's `putKey`): the item links to the bucket's previous newest.
    pub fn put(
        &mut self,
        hash: i32,
        topic_id: i32,
        queue_id: i32,
        offset: i64,
        size: i32,
        store_ts_ms: i64,
    ) -> Result<IndexPut, TieredError> {
        if self.is_sealed() || self.header.item_count as u32 >= self.max_items {
            return Ok(IndexPut::Full);
        }
        if self.header.item_count == 0 {
            self.header.begin_ts_ms = store_ts_ms;
            self.header.end_ts_ms = store_ts_ms;
        }
        let slot_at = INDEX_HEADER_BYTES + self.header.slot_of(hash) * INDEX_SLOT_BYTES;
        let mut slot = [0u8; 8];
        self.file.read_at(slot_at, &mut slot)?;
        let prev = i32_at(&slot, 0);
        let index = self.header.item_count as u32 + 1;
        let diff = (store_ts_ms.saturating_sub(self.header.begin_ts_ms)).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        let item = IndexItem { hash, topic_id, queue_id, offset, size, time_diff_ms: diff };
        self.file.write_at(self.item_at(index), &item.encode_linked(prev))?;
        slot[0..4].copy_from_slice(&(index as i32).to_be_bytes());
        self.file.write_at(slot_at, &slot)?;
        self.header.item_count = index as i32;
        self.header.begin_ts_ms = self.header.begin_ts_ms.min(store_ts_ms);
        self.header.end_ts_ms = self.header.end_ts_ms.max(store_ts_ms);
        self.file.write_at(0, &self.header.encode())?;
        Ok(IndexPut::Added)
    }

    /// Makes everything put so far durable.
    pub async fn sync(&self) -> Result<(), TieredError> {
        let used = self.header.slots_end() + self.header.item_count as u64 * INDEX_ITEM_BYTES;
        Ok(self.file.sync_range(0, used).await?)
    }

    /// Takes no more keys (END magic), durably.
    pub async fn seal(&mut self) -> Result<(), TieredError> {
        self.header.magic = END_MAGIC;
        self.file.write_at(0, &self.header.encode())?;
        self.sync().await
    }

    /// Every item, oldest first (for compaction).
    pub fn items(&self) -> Result<Vec<IndexItem>, TieredError> {
        let n = self.header.item_count as usize;
        let mut buf = vec![0u8; n * INDEX_ITEM_BYTES as usize];
        if n > 0 {
            self.file.read_at(self.item_at(1), &mut buf)?;
        }
        Ok(buf.chunks_exact(INDEX_ITEM_BYTES as usize).map(IndexItem::decode_compact).collect())
    }

    /// Items of `hash` within `[begin_ms, end_ms]`, walking the bucket's chain newest to
    /// oldest. A link that does not point at an older item ends the walk (a torn file after a
    /// power loss): what it found so far is returned, with `Err` only for I/O.
    pub fn query(&self, hash: i32, begin_ms: i64, end_ms: i64) -> Result<Vec<IndexItem>, TieredError> {
        let mut slot = [0u8; 8];
        self.file.read_at(INDEX_HEADER_BYTES + self.header.slot_of(hash) * INDEX_SLOT_BYTES, &mut slot)?;
        let mut next = i32_at(&slot, 0);
        let mut limit = self.header.item_count;
        let mut out = Vec::new();
        let mut b = [0u8; 32];
        while next > 0 {
            if next > limit {
                crate::probe!("tiered.index-chain-broken");
                tracing::warn!(file = %self.path.display(), link = next, "tiered index: a chain link out of range; walk ends");
                break;
            }
            self.file.read_at(self.item_at(next as u32), &mut b)?;
            let item = IndexItem::decode_compact(&b);
            out.push(item);
            limit = next - 1;
            next = i32_at(&b, 28);
        }
        Ok(matching(out.into_iter(), &self.header, hash, begin_ms, end_ms))
    }
}

/// Writes the compacted form of `local` into the scratch directory and returns it.
pub fn compact_to_scratch(
    storage: &dyn Storage,
    scratch: &Path,
    local: &LocalIndexFile,
    bugs: &BugSet,
) -> Result<Bytes, TieredError> {
    let bytes = compact(local.header(), &local.items()?, bugs);
    let path = scratch.join(file_name(local.id()));
    if storage.exists(&path) {
        // Left by an earlier attempt.
        storage.remove_file(&path)?;
    }
    let f = storage.create(&path)?;
    f.write_at(0, &bytes)?;
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(slots: i32) -> IndexHeader {
        IndexHeader { magic: BEGIN_MAGIC, begin_ts_ms: 1000, end_ts_ms: 5000, slot_count: slots, item_count: 0 }
    }

    fn items(n: i32) -> Vec<IndexItem> {
        (0..n)
            .map(|i| IndexItem {
                hash: i * 7 + 1,
                topic_id: 3,
                queue_id: i % 2,
                offset: i as i64 * 100,
                size: 100,
                time_diff_ms: i,
            })
            .collect()
    }

    #[test]
    fn compaction_keeps_every_item_in_its_bucket() {
        let its = items(50);
        let h = IndexHeader { item_count: 50, ..header(8) };
        let bytes = compact(&h, &its, &BugSet::none());
        assert_eq!(bytes.len() as u64, h.compacted_len());
        for it in &its {
            let found = query_compacted("t", &bytes, it.hash, 0, i64::MAX).unwrap();
            assert_eq!(found, vec![*it]);
        }
        assert!(query_compacted("t", &bytes, 2, 0, i64::MAX).unwrap().is_empty());
        // The time range filters on the item's own timestamp.
        assert!(query_compacted("t", &bytes, its[10].hash, 0, 1000 + 9).unwrap().is_empty());
    }

    #[test]
    fn the_compaction_bug_drops_exactly_the_last_bucket() {
        let its = items(50);
        let h = IndexHeader { item_count: 50, ..header(8) };
        let bytes = compact(&h, &its, &BugSet::of(&[Bug::TieredIndexCompactionDropsLastBucket]));
        let lost: Vec<_> =
            its.iter().filter(|it| query_compacted("t", &bytes, it.hash, 0, i64::MAX).unwrap().is_empty()).collect();
        assert!(!lost.is_empty());
        assert!(lost.iter().all(|it| h.slot_of(it.hash) == 7), "{lost:?}");
    }

    #[test]
    fn headers_that_do_not_add_up_are_corrupt() {
        let its = items(5);
        let h = IndexHeader { item_count: 5, ..header(4) };
        let bytes = compact(&h, &its, &BugSet::none());
        assert!(query_compacted("t", &bytes[..bytes.len() - 1], 1, 0, i64::MAX).is_err());
        assert!(query_compacted("t", &bytes[..20], 1, 0, i64::MAX).is_err());
        let mut bad = bytes.clone();
        bad[20..24].copy_from_slice(&0i32.to_be_bytes());
        assert!(query_compacted("t", &bad, 1, 0, i64::MAX).is_err());
        let mut bad = bytes.clone();
        // Slot 1's run pointed past the end.
        bad[28 + 8..28 + 12].copy_from_slice(&10_000i32.to_be_bytes());
        assert!(query_compacted("t", &bad, 1, 0, i64::MAX).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..600), hash in any::<i32>()) {
            let _ = query_compacted("g", &bytes, hash, i64::MIN, i64::MAX);
            if let Ok(h) = IndexHeader::decode("g", &bytes) {
                let _ = decode_compact_slot("g", &h, bytes.get(28..36).unwrap_or(&[]));
                let _ = decode_compact_run("g", &h, &bytes[28..], hash, i64::MIN, i64::MAX);
            }
        }

        #[test]
        fn a_damaged_compacted_file_never_panics(n in 0i32..40, cut in 0usize..2000, flip in 0usize..2000, byte in any::<u8>()) {
            let h = IndexHeader { item_count: n, ..header(4) };
            let mut bytes = compact(&h, &items(n), &BugSet::none());
            if !bytes.is_empty() {
                let i = flip % bytes.len();
                bytes[i] = byte;
            }
            bytes.truncate(cut.min(bytes.len()));
            for hash in 0..8 {
                let _ = query_compacted("d", &bytes, hash, i64::MIN, i64::MAX);
            }
        }
    }
}
