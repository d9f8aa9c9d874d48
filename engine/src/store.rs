//! The message store (`DefaultMessageStore`): open (lock, load, recover, catch up dispatch),
//! start (background services), put/get/query, inspection for checkers, and clean shutdown.
//! The background services live in `flush`, `dispatch`, `expiry` and `allocate`, recovery
//! in `recovery`; the store makes the parts they share (`parts`) and hands each service the
//! ones it uses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::allocate::Allocator;
use crate::bugs::Bug;
use crate::checkpoint::CheckpointData;
use crate::commit_log::{read_message, read_record, CommitLog, PutRef, PutRequest, RecordAt};
use crate::config::{FlushMode, StoreConfig};
use crate::continued::Continued;
use crate::dispatch::Reput;
use crate::error::{Result, StoreError};
use crate::expiry::{Expiry, ExpiryReport};
use crate::flush::Flusher;
use crate::io::{BufferPool, Clock, FileLock, Holds, IoError, Storage};
use crate::mapped_file_queue::DirSyncs;
use crate::message::{DecodeOptions, Decoded, Message};
use crate::parts::{Checkpoint, Counters, GroupRequest, Health, Logics, Progress, QueueFiles, Wakes};
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

/// Tiered storage takes the engine's mutex helper from here.
pub(crate) use crate::locks::lock;
pub use crate::parts::StorePaths;

/// State shared by the store handle and the services it owns (each service holds only the
/// parts it uses, see `parts`).
struct Inner {
    cfg: Arc<StoreConfig>,
    paths: StorePaths,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    holds: Holds,
    dirs: Arc<DirSyncs>,
    files: QueueFiles,
    /// Shared with the allocation service, which prepares the log's spare files.
    cl: Arc<Mutex<CommitLog>>,
    logics: Arc<Logics>,
    ckpt: Arc<Checkpoint>,
    health: Arc<Health>,
    progress: Arc<Progress>,
    wakes: Arc<Wakes>,
    counters: Arc<Counters>,
    shutting_down: AtomicBool,
    /// Set while the background services run: a producer that waits when they do not (the
    /// store was not started, or is stopping) is answered at once instead.
    services_running: AtomicBool,
    recovery: Mutex<RecoveryReport>,
    flusher: Arc<Flusher>,
    reput: Arc<Reput>,
}

/// What the store has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Commit-log syncs made by group commit (sync flush) for waiting producers.
    pub group_commit_syncs: u64,
    /// Producers acknowledged by those syncs: acks per sync is the group-commit batch.
    pub group_commit_acks: u64,
}

impl Inner {
    /// The parts the allocation service works with.
    fn allocator(&self) -> Allocator {
        Allocator {
            cl: self.cl.clone(),
            storage: self.storage.clone(),
            dir: self.paths.commit_log.clone(),
            file_size_bytes: self.cfg.commit_log_file_size_bytes,
            zero_fill: self.cfg.flush_mode == FlushMode::Sync,
            wake: self.wakes.allocate.clone(),
            stopping: self.wakes.stopping.clone(),
        }
    }

    /// The parts the expiry service works with.
    fn expiry(&self) -> Expiry {
        Expiry {
            cfg: self.cfg.clone(),
            clock: self.clock.clone(),
            storage: self.storage.clone(),
            holds: self.holds.clone(),
            dirs: self.dirs.clone(),
            cl: self.cl.clone(),
            logics: self.logics.clone(),
            ckpt: self.ckpt.clone(),
            progress: self.progress.clone(),
            wakes: self.wakes.clone(),
        }
    }

    fn bug(&self, b: Bug) -> bool {
        self.cfg.bugs.has(b)
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Answers the waiting producers when no group-commit service will: the durable ones are
    /// acked, the others fail (not acked).
    fn settle_group_requests_without_service(&self) {
        let flushed = lock(&self.cl).queue().flushed_offset();
        let timeout_ms = self.cfg.sync_flush_timeout_ms;
        let shutting_down = self.shutting_down.load(Ordering::SeqCst);
        self.health.answer_group_requests(|r| {
            Some(if r.end_offset <= flushed {
                Ok(())
            } else if shutting_down {
                Err(StoreError::ShutDown)
            } else {
                Err(StoreError::FlushTimeout { offset: r.end_offset, timeout_ms })
            })
        });
    }

    fn max_phy_offset(&self) -> u64 {
        lock(&self.cl).max_offset()
    }

    fn decode_limit(&self) -> u64 {
        self.cfg.max_message_size_bytes
    }

    fn put_inner(&self, req: &PutRef<'_>, now_ms: i64) -> Result<crate::commit_log::AppendResult> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(StoreError::ShutDown);
        }
        if let Some(e) = self.health.not_writeable_error() {
            return Err(e);
        }
        let mut cl = lock(&self.cl);
        let r = cl.append(self.storage.as_ref(), req, now_ms);
        if cl.wants_spare() {
            // The last file is half full and there is no spare: prepare the next.
            self.wakes.allocate.notify_one();
        }
        r
    }

    /// Appends `req`, stored at `now_ms` (or later: store timestamps never go back).
    async fn put(&self, req: PutRef<'_>, now_ms: i64) -> Result<PutResult> {
        req.validate()?;
        let r = self.put_inner(&req, now_ms)?;
        if self.cfg.flush_mode != FlushMode::Sync {
            // Under sync flush the bytes become readable only at the group's commit, which
            // wakes dispatch itself.
            self.wakes.reput.notify_one();
        }
        let result = PutResult {
            phy_offset: r.phy_offset,
            queue_offset: r.queue_offset,
            store_timestamp_ms: r.store_timestamp_ms,
            size_bytes: r.size_bytes,
        };
        if self.cfg.flush_mode == FlushMode::Sync {
            if self.bug(Bug::AckBeforeSync) {
                self.wakes.group.notify_one();
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
        lock(&self.health.group_requests).push(GroupRequest { end_offset, deadline, done: tx });
        if !self.services_running.load(Ordering::SeqCst) {
            // Checked after the push: `stop_services` clears the flag before its last answer
            // to the waiting producers, so every request is answered by one side or the other.
            self.settle_group_requests_without_service();
        }
        self.wakes.group.notify_one();
        rx.await.unwrap_or(Err(StoreError::ShutDown))
    }

    fn get(&self, topic: &str, queue_id: u32, queue_offset: u64, max_count: usize) -> Result<Vec<StoredMessage>> {
        let units = {
            let cqs = lock(&self.logics.cqs);
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

    fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        begin_ms: i64,
        end_ms: i64,
        max: usize,
    ) -> Result<Vec<StoredMessage>> {
        let phys = lock(&self.logics.index).query(topic, key, begin_ms, end_ms, max.saturating_mul(4).max(32))?;
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
        let files = QueueFiles {
            storage: storage.clone(),
            root: paths.root.clone(),
            units_per_file: config.cq_units_per_file,
            holds: holds.clone(),
            dirs: dirs.clone(),
        };
        let (parts, loaded) = crate::recovery::load(&config, &paths, &files, pool)?;
        let cfg = Arc::new(config);
        let cl = Arc::new(Mutex::new(parts.cl));
        let logics = Arc::new(Logics { cqs: Mutex::new(parts.cqs), index: Mutex::new(parts.index) });
        let ckpt = Arc::new(Checkpoint::new(parts.ckpt_file, parts.ckpt));
        let health = Arc::new(Health::new(cfg.sync_flush_timeout_ms));
        let progress = Arc::new(Progress::new(parts.ckpt.logics_msg_timestamp_ms));
        let wakes = Arc::new(Wakes::default());
        let counters = Arc::new(Counters::default());
        let flusher = Arc::new(Flusher {
            cfg: cfg.clone(),
            storage: storage.clone(),
            dirs: dirs.clone(),
            cl: cl.clone(),
            logics: logics.clone(),
            ckpt: ckpt.clone(),
            health: health.clone(),
            progress: progress.clone(),
            wakes: wakes.clone(),
            counters: counters.clone(),
        });
        let reput = Arc::new(Reput {
            cfg: cfg.clone(),
            clock: clock.clone(),
            files: files.clone(),
            cl: cl.clone(),
            logics: logics.clone(),
            ckpt: ckpt.clone(),
            health: health.clone(),
            progress: progress.clone(),
            wakes: wakes.clone(),
        });
        let report = crate::recovery::recover(&reput, loaded).await?;
        let inner = Arc::new(Inner {
            cfg,
            paths,
            storage,
            clock,
            holds,
            dirs,
            files,
            cl,
            logics,
            ckpt,
            health,
            progress,
            wakes,
            counters,
            shutting_down: AtomicBool::new(false),
            services_running: AtomicBool::new(false),
            recovery: Mutex::new(report),
            flusher,
            reput,
        });
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
        tasks.extend(crate::flush::spawn_services(&self.inner.flusher));
        tasks.push(crate::dispatch::spawn_reput(&self.inner.reput));
        if self.inner.cfg.preallocate_commit_log {
            tasks.push(crate::allocate::spawn_allocator(self.inner.allocator()));
        }
        if self.inner.cfg.file_retention_ms.is_some() {
            tasks.push(crate::expiry::spawn_expiry(&Arc::new(self.inner.expiry())));
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
        lock(&self.inner.logics.cqs).get(&(topic.to_string(), queue_id)).map_or(0, |c| c.min_offset_in_queue())
    }

    /// Next queue offset to be dispatched (0 for an unknown queue).
    pub fn max_offset(&self, topic: &str, queue_id: u32) -> u64 {
        lock(&self.inner.logics.cqs).get(&(topic.to_string(), queue_id)).map_or(0, |c| c.max_offset_in_queue())
    }

    /// The consume-queue unit at `queue_offset`, if the queue has one (blank units included).
    pub fn cq_unit(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> Result<Option<crate::consume_queue::CqUnit>> {
        let cqs = lock(&self.inner.logics.cqs);
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
        &self.inner.progress.dispatched
    }

    /// Deletes the commit-log files older than `file_retention_ms` from the head of the log
    /// (never the last file, one dispatch has not passed, or one not durable with its queue
    /// units; a held file stops the pass and is named in the report), then the consume-queue
    /// files wholly below the log's new start (never a queue's last file), and moves each
    /// queue's minimum to its first message still in the log. Without a retention nothing is
    /// deleted. The removed directory entries are synced by the next flush (the expiry
    /// service, started by `start` when a retention is set, syncs them at once).
    pub fn delete_expired(&self) -> Result<ExpiryReport> {
        crate::expiry::delete_expired(&self.inner.expiry())
    }

    /// Continues an empty store above an old log (a replaced container): the commit log
    /// starts at the first file boundary at or above `phy_floor`, and each queue of
    /// `queue_floors` hands out queue offsets from at least its floor. Fails with
    /// `StoreError::LogNotEmpty` once the log holds a record. Call it before any put.
    ///
    /// Nothing is synced: after a restart that finds the log still empty, call it again
    /// (with the same floors); once the log holds a record, recovery brings it all back.
    pub fn continue_from(&self, phy_floor: u64, queue_floors: &BTreeMap<(String, u32), u64>) -> Result<()> {
        let inner = &self.inner;
        let parts = Continued {
            cl: &inner.cl,
            cqs: &inner.logics.cqs,
            files: &inner.files,
            reput_offset: &inner.progress.reput_offset,
        };
        crate::continued::continue_from(parts, phy_floor, queue_floors)
    }

    /// Every known (topic, queue id).
    pub fn queues(&self) -> Vec<(String, u32)> {
        lock(&self.inner.logics.cqs).keys().cloned().collect()
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
        self.inner.progress.reput_offset.load(Ordering::SeqCst)
    }
    pub fn dispatch_behind_bytes(&self) -> u64 {
        self.inner.reput.behind_bytes()
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
        *lock(&self.inner.ckpt.data)
    }
    pub fn is_writeable(&self) -> bool {
        self.inner.health.is_writeable()
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
        crate::flush::final_flush(&self.inner.flusher).await
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
        let mut first_err = crate::flush::final_commit_log_flush(&inner.flusher).await.err();
        if !inner.bug(Bug::AbortDeletedWhileBehind) {
            let max_wait = Duration::from_millis(inner.cfg.shutdown_dispatch_wait_ms);
            crate::dispatch::wait_caught_up(&inner.reput, max_wait).await;
        }
        self.stop_services().await;
        if let Err(e) = crate::flush::final_logics_flush(&inner.flusher).await {
            first_err.get_or_insert(e);
        }
        inner.health.fail_group_requests(StoreError::ShutDown);
        let behind = inner.reput.behind_bytes();
        let clean = inner.health.is_writeable() && (behind == 0 || inner.bug(Bug::AbortDeletedWhileBehind));
        if clean {
            crate::probe!("shutdown.clean");
            if let Err(e) = remove_abort(inner).await {
                first_err.get_or_insert(e);
            }
        } else {
            tracing::warn!(behind, writeable = inner.health.is_writeable(), "shutdown abnormally: abort file kept");
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
        let w = &self.inner.wakes;
        w.stopping.store(true, Ordering::SeqCst);
        for n in [&w.stop, &w.flush, &w.commit, &w.reput, &w.group, &*w.allocate] {
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
    inner.dirs.sync(inner.storage.as_ref()).await?;
    Ok(())
}

impl Drop for Store {
    /// A drop without shutdown is a crash: background tasks are aborted where they stand
    /// (nothing is flushed, the abort file stays) and the lock is released.
    fn drop(&mut self) {
        self.inner.wakes.stopping.store(true, Ordering::SeqCst);
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}
