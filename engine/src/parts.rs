//! The parts of the store that its services share. The store makes them and hands each
//! service (flush, dispatch, expiry, recovery, continued, allocate) only the ones it uses:
//! the store owns its services and none of them sees the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};

use crate::checkpoint::{CheckpointData, CheckpointFile};
use crate::consume_queue::ConsumeQueue;
use crate::error::{Result, StoreError};
use crate::index::IndexService;
use crate::io::{Holds, IoError, Storage};
use crate::locks::lock;
use crate::mapped_file_queue::{DirSyncs, LoadRepairs};

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
    pub fn new(root: &Path) -> StorePaths {
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

/// The consume queues by (topic, queue id).
pub type CqMap = BTreeMap<(String, u32), ConsumeQueue>;

/// Where the consume queues live and how a queue's files are made: dispatch meets new queues.
#[derive(Clone)]
pub struct QueueFiles {
    pub storage: Arc<dyn Storage>,
    /// The store's root; a queue's files are under `consumequeue/{topic}/{queue id}`.
    pub root: PathBuf,
    pub units_per_file: u64,
    pub holds: Holds,
    pub dirs: Arc<DirSyncs>,
}

impl QueueFiles {
    /// Loads (or creates) the files of one queue.
    pub fn load(&self, topic: &str, queue_id: u32) -> Result<(ConsumeQueue, LoadRepairs)> {
        ConsumeQueue::load(
            self.storage.as_ref(),
            &self.root,
            topic,
            queue_id,
            self.units_per_file,
            self.holds.clone(),
            self.dirs.clone(),
        )
    }

    /// The queue of `key`, loaded (or created) into `queues` if it is not there yet.
    pub fn queue<'q>(&self, queues: &'q mut CqMap, key: &(String, u32)) -> Result<&'q mut ConsumeQueue> {
        if !queues.contains_key(key) {
            let (cq, _) = self.load(&key.0, key.1)?;
            queues.insert(key.clone(), cq);
        }
        Ok(queues.get_mut(key).expect("inserted"))
    }

    /// Syncs the directories with new or removed entries.
    pub async fn sync_dirs(&self) -> Result<(), IoError> {
        self.dirs.sync(self.storage.as_ref()).await
    }
}

/// The data derived from the log: consume queues and the key index.
pub(crate) struct Logics {
    pub cqs: Mutex<CqMap>,
    pub index: Mutex<IndexService>,
}

/// A producer waiting for its bytes to be durable (group commit). The service answers it:
/// acked once durable, failed with the sync's error, or with `FlushTimeout` once `deadline`
/// passes (RocketMQ 4.9's `GroupCommitRequest.deadLine`). A timer per producer (timer-wheel
/// insert and removal per put) was ~9% of the samples with 64 producers.
pub(crate) struct GroupRequest {
    pub end_offset: u64,
    pub deadline: tokio::time::Instant,
    pub done: oneshot::Sender<Result<()>>,
}

/// Whether the store still accepts writes, and the producers waiting for durability.
pub(crate) struct Health {
    not_writeable: Mutex<Option<String>>,
    /// Set once `not_writeable` is: the put path's lock-free check.
    writeable_lost: AtomicBool,
    pub group_requests: Mutex<Vec<GroupRequest>>,
    sync_flush_timeout_ms: u64,
}

impl Health {
    pub fn new(sync_flush_timeout_ms: u64) -> Health {
        Health {
            not_writeable: Mutex::new(None),
            writeable_lost: AtomicBool::new(false),
            group_requests: Mutex::new(Vec::new()),
            sync_flush_timeout_ms,
        }
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
        let timeout_ms = self.sync_flush_timeout_ms;
        self.answer_group_requests(|r| {
            (r.deadline <= now).then(|| Err(StoreError::FlushTimeout { offset: r.end_offset, timeout_ms }))
        });
    }

    pub fn fail_group_requests(&self, err: StoreError) {
        self.answer_group_requests(|_| Some(Err(err.clone())));
    }
}

/// The checkpoint file and the values backed by durable data (what a write records).
pub(crate) struct Checkpoint {
    file: tokio::sync::Mutex<CheckpointFile>,
    pub data: Mutex<CheckpointData>,
}

impl Checkpoint {
    pub fn new(file: CheckpointFile, data: CheckpointData) -> Checkpoint {
        Checkpoint { file: tokio::sync::Mutex::new(file), data: Mutex::new(data) }
    }

    /// Writes the checkpoint with the current durable-backed values; a failure makes the
    /// store unwriteable.
    pub async fn write(&self, health: &Health) -> Result<()> {
        let file = self.file.lock().await;
        let data = *lock(&self.data);
        if let Err(e) = file.write(&data).await {
            health.mark_not_writeable(format!("checkpoint sync failed: {e}"));
            return Err(e);
        }
        Ok(())
    }
}

/// How far dispatch has got.
pub(crate) struct Progress {
    pub reput_offset: AtomicU64,
    /// Where dispatch last stopped at a corrupt record of unknown size (`u64::MAX`: never).
    /// Dispatch is stuck while it equals `reput_offset`.
    pub reput_stopped_at: AtomicU64,
    /// Store timestamp of the newest message dispatched to a consume queue.
    pub logics_dispatched_ts: AtomicI64,
    /// Woken (`notify_waiters`) after each dispatch run: consumers of dispatched messages
    /// (tiered storage) wait on it instead of polling.
    pub dispatched: Notify,
}

impl Progress {
    pub fn new(logics_dispatched_ts: i64) -> Progress {
        Progress {
            reput_offset: AtomicU64::new(0),
            reput_stopped_at: AtomicU64::new(u64::MAX),
            logics_dispatched_ts: AtomicI64::new(logics_dispatched_ts),
            dispatched: Notify::new(),
        }
    }
}

/// The services' wake-ups and the stop flag.
#[derive(Default)]
pub(crate) struct Wakes {
    pub stopping: Arc<AtomicBool>,
    pub flush: Notify,
    pub commit: Notify,
    pub reput: Notify,
    pub group: Notify,
    /// Wakes the allocation service: the last commit-log file is half full and has no spare.
    pub allocate: Arc<Notify>,
    pub stop: Notify,
}

/// Running totals the services keep (read through `Store::stats`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub group_commit_syncs: AtomicU64,
    pub group_commit_acks: AtomicU64,
}
