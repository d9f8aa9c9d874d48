//! The tiered index files of a store (RocketMQ 5.3's `IndexStoreService`).
//!
//! Keys come in only for messages committed to the tiered store: the dispatcher reads a
//! queue's committed records back from the object store and puts their keys (`topic#key`,
//! Java's `String.hashCode`) into the file being written, then syncs it before it records
//! the queue's indexed offset in the metadata. A full file is sealed and a new one started.
//!
//! Status of a file: unsealed (takes keys) → sealed (full, or compacted) → uploaded (one
//! INDEX object per file, named by the file id like every tiered segment). A sealed file is
//! compacted in the scratch directory and uploaded with a `put`; only once the upload is known
//! committed (acknowledged, or the object found at its full size after a lost answer) is it
//! recorded in the metadata and the local file removed. The upload loop, like RocketMQ's,
//! never takes the newest file: shutdown seals and uploads every pending file, the newest
//! included, within a bound, and reports what it left; the next start uploads that from the
//! local disk.
//!
//! Recovery removes the scratch directory, loads the local files (a file whose header does not
//! add up never held a synced key: it is removed), loads the uploaded files from the metadata
//! (or from the listing of a replaced disk), and drops a local file whose upload is known
//! committed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::flat_message::FlatMessageFile;
use super::index_file::{self, IndexHeader, IndexItem, IndexPut, LocalIndexFile};
use super::metadata::{MetadataStore, SegmentMeta};
use super::store::TieredInner;
use super::{keys, FileKind, QueueKey, TieredConfig, TieredError};
use crate::bugs::{Bug, BugSet};
use crate::io::{ObjectError, ObjectStore, Storage};
use crate::java_hash::{java_string_hash, IndexKeyHasher};
use crate::message::Message;

/// The topic and queue of the index objects (RocketMQ's `rmq_sys_INDEX`).
pub const INDEX_TOPIC: &str = "rmq_sys_INDEX";

pub fn index_queue() -> QueueKey {
    QueueKey { topic: INDEX_TOPIC.to_string(), queue_id: 0 }
}

/// The object key of index file `id`.
pub fn object_key(prefix: &str, id: u64) -> String {
    keys::segment(prefix, &index_queue(), FileKind::Index, id)
}

/// The local directory of the index files under the store's root.
pub fn index_dir(store_root: &Path) -> PathBuf {
    store_root.join("tiered_index_file")
}

fn scratch_dir(dir: &Path) -> PathBuf {
    dir.join("compacting")
}

/// Where an index file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexStatus {
    Unsealed,
    Sealed,
    Uploaded,
}

/// An uploaded index file; its header is read on first use.
#[derive(Debug, Clone)]
pub struct UploadedIndex {
    pub key: String,
    header: Option<IndexHeader>,
}

#[derive(Debug)]
enum IndexEntry {
    Local(LocalIndexFile),
    Uploaded(UploadedIndex),
}

/// One key to index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEntry {
    pub hash: i32,
    pub topic_id: i32,
    pub queue_id: i32,
    pub offset: i64,
    pub size: i32,
    pub store_ts_ms: i64,
}

/// What a bounded upload left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexLeft {
    /// Index files still only on the local disk.
    pub files: Vec<u64>,
    /// Queues whose committed messages are not all indexed yet.
    pub queues: Vec<QueueKey>,
}

impl IndexLeft {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.queues.is_empty()
    }
}

#[derive(Debug)]
pub struct IndexService {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    prefix: String,
    slots: u32,
    max_items: u32,
    bugs: BugSet,
    files: BTreeMap<u64, IndexEntry>,
    /// The next file's id is at least this (ids only grow, whatever the clock does).
    next_id: u64,
    dir_ready: bool,
    /// When the upload loop last ran (its first turn comes one interval after the start).
    last_upload: Option<tokio::time::Instant>,
}

/// A local file's compacted form, ready to upload.
#[derive(Debug, Clone)]
pub struct PreparedUpload {
    pub id: u64,
    pub key: String,
    pub bytes: Bytes,
    header: IndexHeader,
}

impl IndexService {
    /// Recovers the service from the local directory, the metadata and (after a listing) the
    /// index objects the listing found, which are recorded in the metadata.
    pub async fn recover(
        storage: Arc<dyn Storage>,
        store_root: &Path,
        cfg: &TieredConfig,
        bugs: &BugSet,
        meta: &mut MetadataStore,
        listed: &[u64],
        now_ms: i64,
    ) -> Result<IndexService, TieredError> {
        let dir = index_dir(store_root);
        let mut svc = IndexService {
            storage: storage.clone(),
            dir: dir.clone(),
            prefix: cfg.key_prefix.clone(),
            slots: cfg.index_slots,
            max_items: cfg.index_max_items,
            bugs: bugs.clone(),
            files: BTreeMap::new(),
            next_id: 1,
            dir_ready: false,
            last_upload: Some(tokio::time::Instant::now()),
        };
        let scratch = scratch_dir(&dir);
        if storage.exists(&scratch) {
            for e in storage.list_dir(&scratch)? {
                storage.remove_file(&scratch.join(&e.name))?;
            }
            storage.remove_dir(&scratch)?;
        }
        if storage.exists(&dir) {
            for e in storage.list_dir(&dir)? {
                let Some(id) = parse_file_name(&e.name).filter(|_| !e.is_dir) else { continue };
                let path = dir.join(&e.name);
                match LocalIndexFile::open(storage.as_ref(), &path, id) {
                    Ok(f) => {
                        svc.files.insert(id, IndexEntry::Local(f));
                    }
                    Err(TieredError::Corrupt { what, reason }) => {
                        // Never synced as a whole (the indexed offsets never counted on it).
                        crate::probe!("tiered.index-file-corrupt-removed");
                        tracing::warn!(%what, %reason, "tiered index file unreadable: removed");
                        storage.remove_file(&path)?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for &id in listed {
            let key = object_key(&svc.prefix, id);
            meta.put(&key, uploaded_meta(id, 0, None, now_ms));
        }
        let uploaded: Vec<(u64, String)> = meta
            .segments()
            .iter()
            .filter(|(_, m)| m.kind == FileKind::Index && m.sealed)
            .map(|(k, m)| (m.base_offset, k.clone()))
            .collect();
        for (id, key) in uploaded {
            if let Some(IndexEntry::Local(f)) = svc.files.get(&id) {
                crate::probe!("tiered.index-local-dropped-after-upload");
                storage.remove_file(f.path())?;
            }
            svc.files.insert(id, IndexEntry::Uploaded(UploadedIndex { key, header: None }));
        }
        // Only the newest local file may still take keys.
        let locals: Vec<u64> = svc.local_ids();
        for id in locals.iter().rev().skip(1) {
            if let Some(IndexEntry::Local(f)) = svc.files.get_mut(id) {
                if !f.is_sealed() {
                    f.seal().await?;
                }
            }
        }
        svc.next_id = svc.files.keys().next_back().map_or(1, |id| id + 1);
        Ok(svc)
    }

    fn local_ids(&self) -> Vec<u64> {
        self.files.iter().filter(|(_, e)| matches!(e, IndexEntry::Local(_))).map(|(id, _)| *id).collect()
    }

    /// Every file's status, by id.
    pub fn statuses(&self) -> Vec<(u64, IndexStatus)> {
        self.files
            .iter()
            .map(|(id, e)| {
                let s = match e {
                    IndexEntry::Local(f) if f.is_sealed() => IndexStatus::Sealed,
                    IndexEntry::Local(_) => IndexStatus::Unsealed,
                    IndexEntry::Uploaded(_) => IndexStatus::Uploaded,
                };
                (*id, s)
            })
            .collect()
    }

    /// The file taking keys, created if there is none.
    async fn writable(&mut self, now_ms: i64) -> Result<u64, TieredError> {
        if let Some((id, IndexEntry::Local(f))) = self.files.iter().next_back() {
            if !f.is_sealed() {
                return Ok(*id);
            }
        }
        if !self.dir_ready {
            if !self.storage.exists(&self.dir) {
                self.storage.create_dir_all(&self.dir)?;
                if let Some(parent) = self.dir.parent() {
                    self.storage.sync_dir(parent).await?;
                }
            }
            self.dir_ready = true;
        }
        let id = self.next_id.max(u64::try_from(now_ms).unwrap_or(0));
        self.next_id = id + 1;
        let f = LocalIndexFile::create(self.storage.as_ref(), &self.dir, id, self.slots, self.max_items)?;
        f.sync().await?;
        self.storage.sync_dir(&self.dir).await?;
        self.files.insert(id, IndexEntry::Local(f));
        Ok(id)
    }

    fn local_mut(&mut self, id: u64) -> &mut LocalIndexFile {
        match self.files.get_mut(&id) {
            Some(IndexEntry::Local(f)) => f,
            _ => unreachable!("index file {id} is local"),
        }
    }

    /// Puts the keys into the file being written (sealing full ones), then syncs it: once this
    /// returns, every key is durable.
    pub async fn put_keys(&mut self, entries: &[KeyEntry], now_ms: i64) -> Result<(), TieredError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut id = self.writable(now_ms).await?;
        for e in entries {
            let f = self.local_mut(id);
            if f.put(e.hash, e.topic_id, e.queue_id, e.offset, e.size, e.store_ts_ms)? == IndexPut::Full {
                crate::probe!("tiered.index-file-full");
                f.seal().await?;
                id = self.writable(now_ms).await?;
                let f = self.local_mut(id);
                if f.put(e.hash, e.topic_id, e.queue_id, e.offset, e.size, e.store_ts_ms)? == IndexPut::Full {
                    return Err(TieredError::Config("an index file cannot take one key".into()));
                }
            }
        }
        self.local_mut(id).sync().await
    }

    /// Local files the upload loop takes: sealed ones, never the newest file.
    pub fn sealed_pending(&self) -> Vec<u64> {
        let newest = self.files.keys().next_back().copied();
        self.files
            .iter()
            .filter(|(id, e)| {
                matches!(e, IndexEntry::Local(f) if f.is_sealed() && !f.is_empty()) && Some(**id) != newest
            })
            .map(|(id, _)| *id)
            .chain(
                // A sealed newest file (full, with no keys after it yet) is pending too.
                newest.filter(
                    |id| matches!(self.files.get(id), Some(IndexEntry::Local(f)) if f.is_sealed() && !f.is_empty()),
                ),
            )
            .collect()
    }

    /// Every local file holding keys (what shutdown must upload), oldest first.
    pub fn all_pending(&self) -> Vec<u64> {
        self.files
            .iter()
            .filter(|(_, e)| matches!(e, IndexEntry::Local(f) if !f.is_empty()))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The newest local file holding keys (the one being written).
    pub fn newest_pending(&self) -> Option<u64> {
        self.all_pending().last().copied()
    }

    /// Seals `id` if needed and compacts it into the scratch directory.
    pub async fn prepare(&mut self, id: u64) -> Result<Option<PreparedUpload>, TieredError> {
        let (storage, dir, bugs, prefix) =
            (self.storage.clone(), self.dir.clone(), self.bugs.clone(), self.prefix.clone());
        let Some(IndexEntry::Local(f)) = self.files.get_mut(&id) else { return Ok(None) };
        if !f.is_sealed() {
            f.seal().await?;
        }
        let scratch = scratch_dir(&dir);
        if !storage.exists(&scratch) {
            storage.create_dir_all(&scratch)?;
        }
        let bytes = index_file::compact_to_scratch(storage.as_ref(), &scratch, f, &bugs)?;
        let header = IndexHeader::decode("compacted index", &bytes)?;
        crate::probe!("tiered.index-compacted");
        Ok(Some(PreparedUpload { id, key: object_key(&prefix, id), bytes, header }))
    }

    /// Takes `up` as uploaded: queries go to its object from now on. Returns the local file
    /// to remove (after the caller has recorded the upload in the metadata).
    fn mark_uploaded(&mut self, up: &PreparedUpload) -> Option<PathBuf> {
        let entry = IndexEntry::Uploaded(UploadedIndex { key: up.key.clone(), header: Some(up.header) });
        match self.files.insert(up.id, entry) {
            Some(IndexEntry::Local(f)) => Some(f.path().to_path_buf()),
            _ => None,
        }
    }

    /// Removes a local file and its compacted copy, durably.
    async fn remove_local(&self, path: &Path) -> Result<(), TieredError> {
        if self.storage.exists(path) {
            self.storage.remove_file(path)?;
        }
        if let Some(name) = path.file_name() {
            let scratch = scratch_dir(&self.dir).join(name);
            if self.storage.exists(&scratch) {
                self.storage.remove_file(&scratch)?;
            }
        }
        Ok(self.storage.sync_dir(&self.dir).await?)
    }

    /// The files that may hold keys stored within `[begin_ms, end_ms]`: the items the local
    /// ones hold for `hash`, and the uploaded ones to read.
    fn lookup(
        &self,
        hash: i32,
        begin_ms: i64,
        end_ms: i64,
    ) -> Result<(Vec<IndexItem>, Vec<(u64, UploadedIndex)>), TieredError> {
        let mut items = Vec::new();
        let mut remote = Vec::new();
        for (id, e) in self.files.iter().rev() {
            match e {
                IndexEntry::Local(f) => {
                    if f.header().overlaps(begin_ms, end_ms) {
                        items.extend(f.query(hash, begin_ms, end_ms)?);
                    }
                }
                IndexEntry::Uploaded(u) => {
                    if u.header.is_none_or(|h| h.overlaps(begin_ms, end_ms)) {
                        remote.push((*id, u.clone()));
                    }
                }
            }
        }
        Ok((items, remote))
    }

    fn learn_header(&mut self, id: u64, h: IndexHeader) {
        if let Some(IndexEntry::Uploaded(u)) = self.files.get_mut(&id) {
            u.header = Some(h);
        }
    }
}

/// Items of `hash` stored within `[begin_ms, end_ms]` in every index file, local and uploaded.
/// Transient object-store failures are errors (the caller may retry); garbage is `Corrupt`.
pub(crate) async fn query_items(
    svc: &tokio::sync::Mutex<IndexService>,
    obj: &dyn ObjectStore,
    hash: i32,
    begin_ms: i64,
    end_ms: i64,
) -> Result<Vec<IndexItem>, TieredError> {
    let (mut items, remote) = svc.lock().await.lookup(hash, begin_ms, end_ms)?;
    for (id, u) in remote {
        let h = match u.header {
            Some(h) => h,
            None => {
                let b = obj.get_range(&u.key, 0, index_file::INDEX_HEADER_BYTES).await?;
                let h = IndexHeader::decode(&u.key, &b)?;
                if !h.is_sealed() {
                    return Err(TieredError::corrupt(&u.key, "an uploaded index is not sealed"));
                }
                svc.lock().await.learn_header(id, h);
                h
            }
        };
        if !h.overlaps(begin_ms, end_ms) {
            continue;
        }
        let slot_at = index_file::INDEX_HEADER_BYTES + h.slot_of(hash) * index_file::INDEX_SLOT_BYTES;
        let slot = obj.get_range(&u.key, slot_at, index_file::INDEX_SLOT_BYTES).await?;
        let Some((pos, len)) = index_file::decode_compact_slot(&u.key, &h, &slot)? else { continue };
        let run = obj.get_range(&u.key, pos, len).await?;
        if run.len() as u64 != len {
            return Err(TieredError::corrupt(&u.key, format!("asked {len} bytes at {pos}, got {}", run.len())));
        }
        items.extend(index_file::decode_compact_run(&u.key, &h, &run, hash, begin_ms, end_ms)?);
    }
    Ok(items)
}

/// One attempt to upload local file `id`. `Ok(true)` once its upload is known committed, the
/// metadata says so and the local file is gone.
pub(crate) async fn upload_file(
    svc: &tokio::sync::Mutex<IndexService>,
    meta: &super::metadata::Meta,
    obj: &dyn ObjectStore,
    bugs: &BugSet,
    id: u64,
    now_ms: i64,
) -> Result<bool, TieredError> {
    let Some(up) = svc.lock().await.prepare(id).await? else { return Ok(true) };
    if bugs.has(Bug::TieredIndexRemovedBeforeUpload) {
        // The local file goes as the upload starts, whatever becomes of it.
        let mut s = svc.lock().await;
        if let Some(path) = s.mark_uploaded(&up) {
            s.remove_local(&path).await?;
        }
    }
    if !upload(obj, &up).await? {
        return Ok(false);
    }
    {
        let mut m = meta.lock().await;
        m.put(&up.key, uploaded_meta(up.id, up.bytes.len() as u64, Some(&up.header), now_ms));
        m.persist().await?;
    }
    crate::probe!("tiered.index-uploaded");
    let mut s = svc.lock().await;
    if let Some(path) = s.mark_uploaded(&up) {
        s.remove_local(&path).await?;
    }
    Ok(true)
}

/// A file's metadata once uploaded: `sealed` marks the upload committed; `size` 0 when a
/// listing found it (read from its header on first use).
fn uploaded_meta(id: u64, size: u64, h: Option<&IndexHeader>, now_ms: i64) -> SegmentMeta {
    SegmentMeta {
        kind: FileKind::Index,
        base_offset: id,
        size,
        sealed: true,
        create_ts_ms: now_ms,
        begin_ts_ms: h.map_or(0, |h| h.begin_ts_ms),
        end_ts_ms: h.map_or(0, |h| h.end_ts_ms),
    }
}

fn parse_file_name(name: &str) -> Option<u64> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit())).then(|| name.parse().ok()).flatten()
}

/// Uploads a compacted file. `Ok(true)`: known committed; `Ok(false)` or `Err`: not known.
pub async fn upload(obj: &dyn ObjectStore, up: &PreparedUpload) -> Result<bool, TieredError> {
    match obj.put(&up.key, up.bytes.clone()).await {
        Ok(()) => Ok(true),
        Err(e) if e.outcome_unknown() => {
            // A put replaces the object whole: the full size means this put (the bytes of a
            // sealed file never change) was applied.
            match obj.size(&up.key).await {
                Ok(n) => Ok(n == up.bytes.len() as u64),
                Err(ObjectError::NotFound { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}
/// A record the dispatcher appended to a queue's flat commit log.
#[derive(Debug, Clone)]
pub(crate) struct AppendedRecord {
    pub cl_offset: u64,
    pub record: Bytes,
}

/// Indexes a batch the dispatcher just committed, `start..` in queue offsets (`None`: a blank
/// unit), from the bytes it uploaded: reading them back would double the object-store round
/// trips of every batch. Only when indexing had reached `start` and the whole batch is
/// committed; any other gap is left to `index_committed`, which reads it back.
pub(crate) async fn index_appended(
    inner: &TieredInner,
    f: &mut FlatMessageFile,
    start: u64,
    records: &[Option<AppendedRecord>],
) -> Result<(), TieredError> {
    let next = start + records.len() as u64;
    if f.indexed_queue_offset != start || f.commit_queue_offset() < next || f.has_uncommitted() {
        return Ok(());
    }
    let mut messages = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(r) = r {
            let m = super::fetcher::decode_checked(&f.queue, start + i as u64, &r.record)?;
            messages.push(((r.cl_offset, r.cl_offset + r.record.len() as u64), m));
        }
    }
    record_indexed(inner, f, messages.iter().map(|(range, m)| (*range, m)), next).await
}

/// Indexes a queue's committed messages above its indexed offset, read back from the object
/// store, and records the new offset in the metadata once the keys are durable.
pub(crate) async fn index_committed(inner: &TieredInner, f: &mut FlatMessageFile) -> Result<(), TieredError> {
    loop {
        let from = f.indexed_queue_offset.max(f.min_queue_offset());
        let (records, next) = if from < f.commit_queue_offset() {
            super::fetcher::committed_records(inner, f, from, inner.cfg.batch_max_count.max(1)).await?
        } else {
            (Vec::new(), from)
        };
        record_indexed(inner, f, records.iter().map(|(_, range, m)| (*range, m)), next).await?;
        if next <= from || next >= f.commit_queue_offset() {
            return Ok(());
        }
    }
}

/// Puts the keys of committed messages (each with its range in the flat commit log) into
/// the index, then records `next` as the queue's indexed offset once they are durable.
async fn record_indexed<'a>(
    inner: &TieredInner,
    f: &mut FlatMessageFile,
    messages: impl Iterator<Item = ((u64, u64), &'a Message)>,
    next: u64,
) -> Result<(), TieredError> {
    let hasher = IndexKeyHasher::new(&f.queue.topic);
    let topic_id = java_string_hash(&f.queue.topic);
    let mut entries = Vec::new();
    for ((start, end), m) in messages {
        for key in m.uniq_key().into_iter().chain(m.keys()) {
            entries.push(KeyEntry {
                hash: hasher.hash(key),
                topic_id,
                queue_id: f.queue.queue_id as i32,
                offset: start as i64,
                size: (end - start) as i32,
                store_ts_ms: m.store_timestamp_ms,
            });
        }
    }
    inner.index.lock().await.put_keys(&entries, inner.now_ms()).await?;
    f.indexed_queue_offset = next;
    let mut meta = inner.meta.lock().await;
    meta.set_indexed(&f.queue.to_string(), next);
    meta.persist().await
}

/// The upload loop's turn: every sealed file but the newest, once per upload interval.
pub(crate) async fn upload_sealed(inner: &TieredInner) {
    let ids = {
        let mut s = inner.index.lock().await;
        let now = tokio::time::Instant::now();
        let interval = std::time::Duration::from_millis(inner.cfg.index_upload_interval_ms);
        if s.last_upload.is_some_and(|t| now < t + interval) {
            return;
        }
        s.last_upload = Some(now);
        s.sealed_pending()
    };
    for id in ids {
        if inner.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match upload_file(&inner.index, &inner.meta, inner.obj.as_ref(), &inner.bugs, id, inner.now_ms()).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(id, error = %e, "tiered index upload failed; retried at the next turn");
                return;
            }
        }
    }
}
