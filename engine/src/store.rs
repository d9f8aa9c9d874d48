//! The message store (`DefaultMessageStore`): open (lock, load, recover, catch up dispatch),
//! start (background services), put/get/query, inspection for checkers, and clean shutdown.
//! The background services live in `flush` and `dispatch`, recovery in `recovery`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::bugs::Bug;
use crate::checkpoint::{CheckpointData, CheckpointFile};
use crate::commit_log::{read_message, read_record, CommitLog, PutRef, PutRequest, RecordAt};
use crate::config::{FlushMode, StoreConfig};
use crate::consume_queue::ConsumeQueue;
use crate::error::{Result, StoreError};
use crate::expiry::ExpiryReport;
use crate::index::IndexService;
use crate::io::{BufferPool, Clock, FileLock, Holds, IoError, Storage};
use crate::mapped_file_queue::DirSyncs;
use crate::message::{DecodeOptions, Decoded, Message};
use crate::recovery::RecoveryReport;

/// Where a put landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    pub phy_offset: u64,
    pub queue_offset: u64,
    pub store_timestamp_ms: i64,
    pub size_bytes: u32,
}

/// A message read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub phy_offset: u64,
    pub size_bytes: u32,
    pub store_timestamp_ms: i64,
    pub born_timestamp_ms: i64,
    pub body: Vec<u8>,
    pub tags: Option<String>,
    pub keys: Vec<String>,
    pub uniq_key: Option<String>,
    pub properties: Vec<(String, String)>,
}

impl StoredMessage {
    pub fn from_message(m: Message, size_bytes: u32) -> StoredMessage {
        StoredMessage {
            tags: m.tags().map(str::to_string),
            keys: m.keys().into_iter().map(str::to_string).collect(),
            uniq_key: m.uniq_key().map(str::to_string),
            topic: m.topic,
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            phy_offset: m.phy_offset,
            size_bytes,
            store_timestamp_ms: m.store_timestamp_ms,
            born_timestamp_ms: m.born_timestamp_ms,
            body: m.body,
            properties: m.properties,
        }
    }
}

/// The store's paths.
#[derive(Debug, Clone)]
pub struct StorePaths {
    pub root: PathBuf,
    pub commit_log: PathBuf,
    pub consume_queue: PathBuf,
    pub index: PathBuf,
    pub checkpoint: PathBuf,
    pub abort: PathBuf,
    pub lock: PathBuf,
}

impl StorePaths {
    pub fn new(root: &std::path::Path) -> StorePaths {
        StorePaths {
            root: root.to_path_buf(),
            commit_log: root.join("commitlog"),
            consume_queue: root.join("consumequeue"),
            index: root.join("index"),
            checkpoint: root.join("checkpoint"),
            abort: root.join("abort"),
            lock: root.join("lock"),
        }
    }
}

pub(crate) type CqMap = BTreeMap<(String, u32), ConsumeQueue>;

/// A producer waiting for its bytes to be durable (group commit). The service answers it:
/// acked once durable, failed with the sync's error, or with `FlushTimeout` once `deadline`
/// passes (RocketMQ 4.9's `GroupCommitRequest.deadLine`). A timer per producer (timer-wheel
/// insert and removal per put) was ~9% of the samples with 64 producers.
pub(crate) struct GroupRequest {
    pub end_offset: u64,
    pub deadline: tokio::time::Instant,
    pub done: oneshot::Sender<Result<()>>,
}

/// State shared by the store handle and its services.
pub(crate) struct Inner {
    pub cfg: StoreConfig,
    pub paths: StorePaths,
    pub storage: Arc<dyn Storage>,
    pub clock: Arc<dyn Clock>,
    pub holds: Holds,
    pub dirs: Arc<DirSyncs>,
    /// Shared with the allocation service, which prepares the log's spare files.
    pub cl: Arc<Mutex<CommitLog>>,
    pub cqs: Mutex<CqMap>,
    pub index: Mutex<IndexService>,
    pub ckpt_file: tokio::sync::Mutex<CheckpointFile>,
    /// Checkpoint values backed by durable data (what a checkpoint write records).
    pub ckpt: Mutex<CheckpointData>,
    /// Store timestamp of the newest message dispatched to a consume queue.
    pub logics_dispatched_ts: AtomicI64,
    pub reput_offset: AtomicU64,
    /// Where dispatch last stopped at a corrupt record of unknown size (`u64::MAX`: never).
    /// Dispatch is stuck while it equals `reput_offset`.
    pub reput_stopped_at: AtomicU64,
    pub not_writeable: Mutex<Option<String>>,
    /// Set once `not_writeable` is: the put path's lock-free check.
    pub writeable_lost: AtomicBool,
    pub shutting_down: AtomicBool,
    pub stopping: Arc<AtomicBool>,
    /// Set while the background services run: a producer that waits when they do not (the
    /// store was not started, or is stopping) is answered at once instead.
    pub services_running: AtomicBool,
    pub wake_flush: Notify,
    pub wake_commit: Notify,
    pub wake_reput: Notify,
    pub wake_group: Notify,
    /// Wakes the allocation service: the last commit-log file is half full and has no spare.
    pub wake_allocate: Arc<Notify>,
    pub stop_notify: Notify,
    /// Woken (`notify_waiters`) after each dispatch run: consumers of dispatched messages
    /// (tiered storage) wait on it instead of polling.
    pub dispatched: Notify,
    pub group_requests: Mutex<Vec<GroupRequest>>,
    pub recovery: Mutex<RecoveryReport>,
    pub counters: Counters,
}

/// Running totals the services keep (read through `Store::stats`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub group_commit_syncs: AtomicU64,
    pub group_commit_acks: AtomicU64,
}

/// What the store has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Commit-log syncs made by group commit (sync flush) for waiting producers.
    pub group_commit_syncs: u64,
    /// Producers acknowledged by those syncs: acks per sync is the group-commit batch.
    pub group_commit_acks: u64,
}

pub(crate) use crate::locks::lock;

impl Inner {
    /// The parts the allocation service works with.
    pub(crate) fn allocator(&self) -> crate::allocate::Allocator {
        crate::allocate::Allocator {
            cl: self.cl.clone(),
            storage: self.storage.clone(),
            dir: self.paths.commit_log.clone(),
            file_size_bytes: self.cfg.commit_log_file_size_bytes,
            zero_fill: self.cfg.flush_mode == FlushMode::Sync,
            wake: self.wake_allocate.clone(),
            stopping: self.stopping.clone(),
        }
    }

    pub fn bug(&self, b: Bug) -> bool {
        self.cfg.bugs.has(b)
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn is_writeable(&self) -> bool {
        lock(&self.not_writeable).is_none()
    }

    /// A failed sync: the data it covered may be gone (Linux drops the dirty pages), so the
    /// store stops accepting writes and never acks what that sync covered.
    pub fn mark_not_writeable(&self, reason: String) {
        tracing::error!(%reason, "store is no longer writeable");
        crate::probe!("store.not-writeable");
        let mut nw = lock(&self.not_writeable);
        if nw.is_none() {
            *nw = Some(reason.clone());
        }
        self.writeable_lost.store(true, Ordering::SeqCst);
        drop(nw);
        self.fail_group_requests(StoreError::NotWriteable { reason });
    }

    pub fn not_writeable_error(&self) -> Option<StoreError> {
        // Every put asks; the lock is taken only once the answer can be yes.
        if !self.writeable_lost.load(Ordering::SeqCst) {
            return None;
        }
        lock(&self.not_writeable).clone().map(|reason| StoreError::NotWriteable { reason })
    }

    /// Answers the waiting producers that `answer` has an answer for (outside the lock, in
    /// the order they came) and keeps the others waiting. Returns how many were answered.
    pub fn answer_group_requests(&self, answer: impl Fn(&GroupRequest) -> Option<Result<()>>) -> usize {
        let mut reqs = lock(&self.group_requests);
        let mut answered = Vec::new();
        let mut waiting = Vec::with_capacity(reqs.len());
        for r in std::mem::take(&mut *reqs) {
            match answer(&r) {
                Some(a) => answered.push((r, a)),
                None => waiting.push(r),
            }
        }
        *reqs = waiting;
        drop(reqs);
        let n = answered.len();
        for (r, a) in answered {
            let _ = r.done.send(a);
        }
        n
    }

    /// Fails every waiting producer whose deadline has passed.
    pub fn expire_group_requests(&self) {
        let now = tokio::time::Instant::now();
        let timeout_ms = self.cfg.sync_flush_timeout_ms;
        self.answer_group_requests(|r| {
            (r.deadline <= now).then(|| Err(StoreError::FlushTimeout { offset: r.end_offset, timeout_ms }))
        });
    }

    /// Answers the waiting producers when no group-commit service will: the durable ones are
    /// acked, the others fail (not acked).
    fn settle_group_requests_without_service(&self) {
        let flushed = lock(&self.cl).queue().flushed_offset();
        let timeout_ms = self.cfg.sync_flush_timeout_ms;
        let shutting_down = self.shutting_down.load(Ordering::SeqCst);
        self.answer_group_requests(|r| {
            Some(if r.end_offset <= flushed {
                Ok(())
            } else if shutting_down {
                Err(StoreError::ShutDown)
            } else {
                Err(StoreError::FlushTimeout { offset: r.end_offset, timeout_ms })
            })
        });
    }

    pub fn fail_group_requests(&self, err: StoreError) {
        self.answer_group_requests(|_| Some(Err(err.clone())));
    }

    pub fn max_phy_offset(&self) -> u64 {
        lock(&self.cl).max_offset()
    }

    pub fn dispatch_behind_bytes(&self) -> u64 {
        self.max_phy_offset().saturating_sub(self.reput_offset.load(Ordering::SeqCst))
    }

    pub fn decode_limit(&self) -> u64 {
        self.cfg.max_message_size_bytes
    }

    /// Writes the checkpoint with the current durable-backed values.
    pub async fn write_checkpoint(&self) -> Result<()> {
        let file = self.ckpt_file.lock().await;
        let data = *lock(&self.ckpt);
        if let Err(e) = file.write(&data).await {
            self.mark_not_writeable(format!("checkpoint sync failed: {e}"));
            return Err(e);
        }
        Ok(())
    }

    /// Syncs directories with new or removed entries.
    pub async fn sync_dirs(&self) -> Result<(), IoError> {
        self.dirs.sync(self.storage.as_ref()).await
    }

    fn put_inner(&self, req: &PutRef<'_>, now_ms: i64) -> Result<crate::commit_log::AppendResult> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(StoreError::ShutDown);
        }
        if let Some(e) = self.not_writeable_error() {
            return Err(e);
        }
        let mut cl = lock(&self.cl);
        let r = cl.append(self.storage.as_ref(), req, now_ms);
        if cl.wants_spare() {
            // The last file is half full and there is no spare: prepare the next.
            self.wake_allocate.notify_one();
        }
        r
    }

    /// Appends `req`, stored at `now_ms` (or later: store timestamps never go back).
    pub async fn put(&self, req: PutRef<'_>, now_ms: i64) -> Result<PutResult> {
        req.validate()?;
        let r = self.put_inner(&req, now_ms)?;
        if self.cfg.flush_mode != FlushMode::Sync {
            // Under sync flush the bytes become readable only at the group's commit, which
            // wakes dispatch itself.
            self.wake_reput.notify_one();
        }
        let result = PutResult {
            phy_offset: r.phy_offset,
            queue_offset: r.queue_offset,
            store_timestamp_ms: r.store_timestamp_ms,
            size_bytes: r.size_bytes,
        };
        if self.cfg.flush_mode == FlushMode::Sync {
            if self.bug(Bug::AckBeforeSync) {
                self.wake_group.notify_one();
                return Ok(result);
            }
            self.wait_durable(r.end_offset).await?;
        }
        Ok(result)
    }

    /// Group commit: waits until `end_offset` is durable (or fails, or times out).
    async fn wait_durable(&self, end_offset: u64) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.sync_flush_timeout_ms);
        lock(&self.group_requests).push(GroupRequest { end_offset, deadline, done: tx });
        if !self.services_running.load(Ordering::SeqCst) {
            // Checked after the push: `stop_services` clears the flag before its last answer
            // to the waiting producers, so every request is answered by one side or the other.
            self.settle_group_requests_without_service();
        }
        self.wake_group.notify_one();
        rx.await.unwrap_or(Err(StoreError::ShutDown))
    }

    pub fn get(&self, topic: &str, queue_id: u32, queue_offset: u64, max_count: usize) -> Result<Vec<StoredMessage>> {
        let units = {
            let cqs = lock(&self.cqs);
            let Some(cq) = cqs.get(&(topic.to_string(), queue_id)) else { return Ok(Vec::new()) };
            let end = cq.max_offset_in_queue().min(queue_offset.saturating_add(max_count as u64));
            let mut units = Vec::new();
            for i in queue_offset.max(cq.min_offset_in_queue())..end {
                match cq.unit(i)? {
                    Some(u) if u.is_blank() => continue,
                    Some(u) => units.push((i, u)),
                    None => break,
                }
            }
            units
        };
        let mut out = Vec::with_capacity(units.len());
        for (i, u) in units {
            let phy = u.phy_offset as u64;
            let what = || format!("{topic}/{queue_id} unit {i} (commit log offset {phy})");
            let view = {
                let cl = lock(&self.cl);
                if phy < cl.min_offset() {
                    continue; // expired after the units were read
                }
                cl.view(phy).ok_or_else(|| StoreError::corrupt(what(), "no commit-log file"))?
            };
            let size = u32::try_from(u.size).map_err(|_| StoreError::corrupt(what(), "negative size"))?;
            let m = read_message(&view, phy, size, self.decode_limit())?;
            if m.topic != topic || m.queue_id != queue_id || m.queue_offset != i {
                return Err(StoreError::corrupt(
                    what(),
                    format!("record is {}/{}@{}", m.topic, m.queue_id, m.queue_offset),
                ));
            }
            out.push(StoredMessage::from_message(m, size));
        }
        Ok(out)
    }

    pub fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        begin_ms: i64,
        end_ms: i64,
        max: usize,
    ) -> Result<Vec<StoredMessage>> {
        let phys = lock(&self.index).query(topic, key, begin_ms, end_ms, max.saturating_mul(4).max(32))?;
        let phys: std::collections::BTreeSet<u64> = phys.into_iter().collect();
        let mut out = Vec::new();
        for phy in phys {
            let Some(view) = lock(&self.cl).view(phy) else { continue };
            let pos = phy - view.from_offset;
            if pos >= view.readable {
                continue;
            }
            let opts = DecodeOptions { max_record_bytes: self.decode_limit(), ..DecodeOptions::default() };
            let rec = read_record(view.file.as_ref(), view.from_offset, pos, view.readable, view.size, opts)?;
            if let RecordAt::Decoded(Decoded::Valid(m, size)) = rec {
                let matches = m.topic == topic && (m.keys().contains(&key) || m.uniq_key() == Some(key));
                if matches {
                    out.push(StoredMessage::from_message(m, size));
                }
            }
        }
        out.truncate(max);
        Ok(out)
    }
}

/// The bytes of one message read from the log, with a hold on its mapped file for as long as
/// it lives (RocketMQ's `SelectMappedBufferResult`): a reader that forgets to drop it keeps the
/// file from being expired, and the hold shows in `Store::holds`.
pub struct SelectedMessage {
    pub phy_offset: u64,
    pub bytes: Vec<u8>,
    pub store_timestamp_ms: i64,
    pub hold: crate::io::Hold,
}

impl std::fmt::Debug for SelectedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelectedMessage").field("phy_offset", &self.phy_offset).field("len", &self.bytes.len()).finish()
    }
}

/// A running (or opened) store. Dropping it without `shutdown` is a crash: services stop
/// where they are and the abort file stays.
pub struct Store {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    file_lock: Mutex<Option<FileLock>>,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.inner.paths.root).finish()
    }
}

impl Store {
    /// Opens the store at `config.root_dir`: takes the lock, loads every file, recovers
    /// (normally after a clean shutdown, abnormally otherwise) and dispatches what the
    /// consume queues and index are missing. Call `start` to run the background services.
    pub async fn open(config: StoreConfig, storage: Arc<dyn Storage>, clock: Arc<dyn Clock>) -> Result<Store> {
        config.validate()?;
        let paths = StorePaths::new(&config.root_dir);
        let dirs = Arc::new(DirSyncs::new(config.bugs.has(Bug::NoDirSync)));
        dirs.ensure_dir(storage.as_ref(), &paths.root)?;
        let file_lock = match storage.lock(&paths.lock) {
            Ok(l) => l,
            Err(IoError::Locked { .. }) => return Err(StoreError::AlreadyLocked { path: paths.root.clone() }),
            Err(e) => return Err(e.into()),
        };
        let holds = Holds::new();
        let pool = (config.flush_mode == FlushMode::TransientPool).then(|| {
            BufferPool::new(
                "transient-store-pool",
                config.transient_pool_buffers,
                config.commit_log_file_size_bytes as usize,
                holds.clone(),
            )
        });
        let (inner, loaded) = crate::recovery::load(config, paths, storage, clock, holds, dirs, pool)?;
        let inner = Arc::new(inner);
        crate::recovery::recover(&inner, loaded).await?;
        if inner.cfg.preallocate_commit_log && lock(&inner.cl).queue().is_empty() {
            // A fresh store's first file is preallocated too (if that fails, it is created
            // sparse: the failure is logged and the service tries again later).
            let _ = crate::allocate::prepare_wanted_spare(&inner.allocator()).await;
        }
        Ok(Store {
            inner,
            tasks: Mutex::new(Vec::new()),
            file_lock: Mutex::new(Some(file_lock)),
            shut_down: AtomicBool::new(false),
        })
    }

    /// Starts the flush, commit, group-commit, consume-queue flush and reput services.
    pub fn start(&self) -> Result<()> {
        if self.shut_down.load(Ordering::SeqCst) {
            return Err(StoreError::ShutDown);
        }
        let mut tasks = lock(&self.tasks);
        if !tasks.is_empty() {
            return Ok(());
        }
        tasks.extend(crate::flush::spawn_services(&self.inner));
        tasks.push(crate::dispatch::spawn_reput(&self.inner));
        if self.inner.cfg.preallocate_commit_log {
            tasks.push(crate::allocate::spawn_allocator(self.inner.allocator()));
        }
        if self.inner.cfg.file_retention_ms.is_some() {
            tasks.push(crate::expiry::spawn_expiry(&self.inner));
        }
        self.inner.services_running.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Appends a message. Under `FlushMode::Sync` resolves only once it is durable.
    pub async fn put(
        &self,
        topic: &str,
        queue_id: u32,
        body: &[u8],
        tags: Option<&str>,
        keys: &[&str],
    ) -> Result<PutResult> {
        // One clock reading for both: born and stored in the same instant.
        let now_ms = self.inner.now_ms();
        let req = PutRef { born_timestamp_ms: now_ms, ..PutRef::new(topic, queue_id, body, tags, keys) };
        self.inner.put(req, now_ms).await
    }

    /// Appends a fully specified message.
    pub async fn put_request(&self, req: PutRequest) -> Result<PutResult> {
        let mut keys = Vec::new();
        self.inner.put(req.as_put(&mut keys), self.inner.now_ms()).await
    }

    /// Up to `max_count` messages of a queue from `queue_offset`.
    pub fn get(&self, topic: &str, queue_id: u32, queue_offset: u64, max_count: usize) -> Result<Vec<StoredMessage>> {
        self.inner.get(topic, queue_id, queue_offset, max_count)
    }

    /// Messages of `topic` with key (KEYS token or UNIQ_KEY) `key`, stored within
    /// `[begin_ms, end_ms]` (at the index's one-second resolution), at most `max`.
    pub fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        begin_ms: i64,
        end_ms: i64,
        max: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.inner.query_by_key(topic, key, begin_ms, end_ms, max)
    }

    /// First queue offset with a message (0 for an unknown queue).
    pub fn min_offset(&self, topic: &str, queue_id: u32) -> u64 {
        lock(&self.inner.cqs).get(&(topic.to_string(), queue_id)).map_or(0, |c| c.min_offset_in_queue())
    }

    /// Next queue offset to be dispatched (0 for an unknown queue).
    pub fn max_offset(&self, topic: &str, queue_id: u32) -> u64 {
        lock(&self.inner.cqs).get(&(topic.to_string(), queue_id)).map_or(0, |c| c.max_offset_in_queue())
    }

    /// The consume-queue unit at `queue_offset`, if the queue has one (blank units included).
    pub fn cq_unit(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> Result<Option<crate::consume_queue::CqUnit>> {
        let cqs = lock(&self.inner.cqs);
        let Some(cq) = cqs.get(&(topic.to_string(), queue_id)) else { return Ok(None) };
        if queue_offset < cq.min_offset_in_queue() {
            return Ok(None);
        }
        cq.unit(queue_offset)
    }

    /// The whole record of `size_bytes` at `phy_offset`, checked (CRC, PHYSICALOFFSET), with a
    /// hold on its file (`selectOneMessageByOffset`). `None` when no file holds it or it is not
    /// all readable yet (expired, truncated, or beyond the committed position).
    pub fn select_message(&self, phy_offset: u64, size_bytes: u32) -> Result<Option<SelectedMessage>> {
        let Some(view) = lock(&self.inner.cl).view(phy_offset) else { return Ok(None) };
        let pos = phy_offset - view.from_offset;
        if pos + u64::from(size_bytes) > view.readable {
            return Ok(None);
        }
        // One read: the bytes handed out are the bytes checked.
        let mut bytes = vec![0u8; size_bytes as usize];
        view.file.read_at(pos, &mut bytes)?;
        let opts = DecodeOptions {
            check_crc: true,
            expected_phy_offset: Some(phy_offset),
            bytes_left_in_file: Some(view.size - pos),
            max_record_bytes: self.inner.decode_limit(),
            ..DecodeOptions::default()
        };
        let what = || format!("commit log offset {phy_offset}");
        let store_timestamp_ms = match crate::message::decode_ref(&bytes, &opts) {
            crate::message::DecodedRef::Valid(m, s) if s == size_bytes => m.store_timestamp_ms,
            crate::message::DecodedRef::Valid(_, s) => {
                return Err(StoreError::corrupt(what(), format!("record is {s} bytes, unit says {size_bytes}")))
            }
            crate::message::DecodedRef::Blank { .. } => return Err(StoreError::corrupt(what(), "blank record")),
            crate::message::DecodedRef::Corrupt(c) => return Err(StoreError::corrupt(what(), c.reason.to_string())),
        };
        let hold = view.hold();
        Ok(Some(SelectedMessage { phy_offset, bytes, store_timestamp_ms, hold }))
    }

    /// Woken after every dispatch run (see `Inner::dispatched`).
    pub fn dispatched(&self) -> &Notify {
        &self.inner.dispatched
    }

    /// Deletes the commit-log files older than `file_retention_ms` from the head of the log
    /// (never the last file, one dispatch has not passed, or one not durable with its queue
    /// units; a held file stops the pass and is named in the report), then the consume-queue
    /// files wholly below the log's new start (never a queue's last file), and moves each
    /// queue's minimum to its first message still in the log. Without a retention nothing is
    /// deleted. The removed directory entries are synced by the next flush (the expiry
    /// service, started by `start` when a retention is set, syncs them at once).
    pub fn delete_expired(&self) -> Result<ExpiryReport> {
        crate::expiry::delete_expired(&self.inner)
    }

    /// Continues an empty store above an old log (a replaced container): the commit log
    /// starts at the first file boundary at or above `phy_floor`, and each queue of
    /// `queue_floors` hands out queue offsets from at least its floor. Fails with
    /// `StoreError::LogNotEmpty` once the log holds a record. Call it before any put.
    ///
    /// Nothing is synced: after a restart that finds the log still empty, call it again
    /// (with the same floors); once the log holds a record, recovery brings it all back.
    pub fn continue_from(&self, phy_floor: u64, queue_floors: &BTreeMap<(String, u32), u64>) -> Result<()> {
        crate::continued::continue_from(&self.inner, phy_floor, queue_floors)
    }

    /// Every known (topic, queue id).
    pub fn queues(&self) -> Vec<(String, u32)> {
        lock(&self.inner.cqs).keys().cloned().collect()
    }

    /// End of the commit log (what has been appended; after `open`, the recovered end).
    pub fn max_phy_offset(&self) -> u64 {
        self.inner.max_phy_offset()
    }
    /// The confirm offset: in this (non-replicated) store, the commit-log end.
    pub fn confirm_offset(&self) -> u64 {
        self.max_phy_offset()
    }
    /// End of what is in the files' page cache (differs from `max_phy_offset` in transient-pool mode).
    pub fn committed_offset(&self) -> u64 {
        lock(&self.inner.cl).readable_offset()
    }
    /// End of what is durable.
    pub fn flushed_offset(&self) -> u64 {
        lock(&self.inner.cl).queue().flushed_offset()
    }
    pub fn min_phy_offset(&self) -> u64 {
        lock(&self.inner.cl).min_offset()
    }
    pub fn reput_offset(&self) -> u64 {
        self.inner.reput_offset.load(Ordering::SeqCst)
    }
    pub fn dispatch_behind_bytes(&self) -> u64 {
        self.inner.dispatch_behind_bytes()
    }
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        StoreStats {
            group_commit_syncs: c.group_commit_syncs.load(Ordering::SeqCst),
            group_commit_acks: c.group_commit_acks.load(Ordering::SeqCst),
        }
    }
    /// What the last `open` recovered and truncated.
    pub fn last_recovery(&self) -> RecoveryReport {
        lock(&self.inner.recovery).clone()
    }
    /// The store's hold registry (mapped files being read, pooled buffers lent).
    pub fn holds(&self) -> Holds {
        self.inner.holds.clone()
    }
    /// The checkpoint values backed by durable data (as the next checkpoint write records them).
    pub fn checkpoint(&self) -> CheckpointData {
        *lock(&self.inner.ckpt)
    }
    pub fn is_writeable(&self) -> bool {
        self.inner.is_writeable()
    }
    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }
    pub fn paths(&self) -> &StorePaths {
        &self.inner.paths
    }

    /// Makes everything appended so far durable (commit, flush of the commit log and
    /// consume queues) without shutting down.
    pub async fn flush_all(&self) -> Result<()> {
        crate::flush::final_flush(&self.inner).await
    }

    /// Clean shutdown (`DefaultMessageStore.shutdown`): stop accepting puts, final commit and
    /// flush, wait (bounded) for dispatch to catch up, stop services, flush consume queues
    /// and index, write the checkpoint, and remove the abort file only if the store is still
    /// writeable and dispatch has caught up. Always ends.
    pub async fn shutdown(&self) -> Result<()> {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::SeqCst);
        let mut first_err = crate::flush::final_commit_log_flush(inner).await.err();
        if !inner.bug(Bug::AbortDeletedWhileBehind) {
            crate::dispatch::wait_caught_up(inner, Duration::from_millis(inner.cfg.shutdown_dispatch_wait_ms)).await;
        }
        self.stop_services().await;
        if let Err(e) = crate::flush::final_logics_flush(inner).await {
            first_err.get_or_insert(e);
        }
        inner.fail_group_requests(StoreError::ShutDown);
        let behind = inner.dispatch_behind_bytes();
        let clean = inner.is_writeable() && (behind == 0 || inner.bug(Bug::AbortDeletedWhileBehind));
        if clean {
            crate::probe!("shutdown.clean");
            if let Err(e) = remove_abort(inner).await {
                first_err.get_or_insert(e);
            }
        } else {
            tracing::warn!(behind, writeable = inner.is_writeable(), "shutdown abnormally: abort file kept");
            crate::probe!("shutdown.abort-file-kept");
        }
        lock(&self.file_lock).take();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn stop_services(&self) {
        self.inner.services_running.store(false, Ordering::SeqCst);
        self.inner.stopping.store(true, Ordering::SeqCst);
        for n in [
            &self.inner.stop_notify,
            &self.inner.wake_flush,
            &self.inner.wake_commit,
            &self.inner.wake_reput,
            &self.inner.wake_group,
            &*self.inner.wake_allocate,
        ] {
            n.notify_waiters();
        }
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.tasks));
        for t in tasks {
            let _ = t.await;
        }
    }
}

async fn remove_abort(inner: &Inner) -> Result<()> {
    if inner.storage.exists(&inner.paths.abort) {
        inner.storage.remove_file(&inner.paths.abort)?;
        inner.dirs.mark(&inner.paths.root);
    }
    inner.sync_dirs().await?;
    Ok(())
}

impl Drop for Store {
    /// A drop without shutdown is a crash: background tasks are aborted where they stand
    /// (nothing is flushed, the abort file stays) and the lock is released.
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}
