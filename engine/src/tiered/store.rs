//! `TieredStore`: the tiered layer over a local store (RocketMQ's `TieredMessageStore`).
//!
//! `open` loads the metadata (or, without it, lists the object store: a replaced container
//! keeps everything the object store holds) and continues an empty local log above what the
//! tiered store holds; every queue is then checked against the object store by the
//! dispatcher before it moves anything. Reads are routed by `fetcher`. Shutdown stops the
//! dispatcher, uploads every pending index file within a bound and saves the metadata;
//! batches not committed are dispatched again after the next start, from each queue's
//! committed consume-queue offset.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::flat_file::Hole;
use super::flat_message::FlatMessageFile;
use super::index_service::{IndexLeft, IndexService, IndexStatus};
use super::metadata::{MetadataLoad, MetadataStore};
use super::source::MessageSource;
use super::{keys, FileKind, QueueKey, TieredConfig, TieredError};
use crate::bugs::{Bug, BugSet};
use crate::io::{Clock, HoldCounter, HoldKind, ObjectStore, Storage};
use crate::store::lock;

/// A queue's flat file, behind the flat-file lock (held across uploads: one writer per queue).
pub(crate) type FlatRef = Arc<tokio::sync::Mutex<FlatMessageFile>>;

/// Running totals (read through `TieredStore::stats`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub messages_tiered: AtomicU64,
    pub bytes_tiered: AtomicU64,
    pub batches_committed: AtomicU64,
    pub commit_failures: AtomicU64,
    pub dispatch_errors: AtomicU64,
    pub holds_branch: AtomicU64,
    pub blank_units: AtomicU64,
    pub segments_expired: AtomicU64,
    pub index_errors: AtomicU64,
}

/// What the tiered store has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TieredStats {
    pub messages_tiered: u64,
    pub bytes_tiered: u64,
    pub batches_committed: u64,
    pub commit_failures: u64,
    pub dispatch_errors: u64,
    /// Rounds in which a queue was left to gather a larger batch.
    pub holds_branch: u64,
    /// Units written for messages that expired locally before they were tiered.
    pub blank_units: u64,
    pub segments_expired: u64,
}

pub(crate) struct TieredInner {
    pub cfg: TieredConfig,
    pub bugs: BugSet,
    pub source: Arc<dyn MessageSource>,
    pub obj: Arc<dyn ObjectStore>,
    pub clock: Arc<dyn Clock>,
    pub meta: tokio::sync::Mutex<MetadataStore>,
    pub flats: Mutex<BTreeMap<QueueKey, FlatRef>>,
    /// Segment keys found by the listing at open, per queue (consumed by each queue's recovery).
    pub listed: Mutex<BTreeMap<QueueKey, Vec<(FileKind, u64)>>>,
    pub permits: HoldCounter,
    pub stopping: AtomicBool,
    pub stop_notify: Notify,
    /// False once the dispatcher task has ended (it only ends at shutdown, or under a bug).
    pub dispatcher_alive: AtomicBool,
    pub counters: Counters,
    pub index: tokio::sync::Mutex<IndexService>,
    /// Whether the metadata was loaded whole at open: a queue it has no indexed offset for
    /// was never indexed. Otherwise (a replaced disk) the object store's index files hold
    /// every committed key a clean shutdown uploaded.
    pub metadata_loaded: bool,
}

impl TieredInner {
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn flat(&self, q: &QueueKey) -> Option<FlatRef> {
        lock(&self.flats).get(q).cloned()
    }

    /// The queue's flat file, created if missing. A queue neither the metadata nor the listing
    /// at open knew has nothing in the object store: the metadata names every segment before
    /// any byte is uploaded to it.
    pub fn flat_or_create(&self, q: &QueueKey) -> FlatRef {
        lock(&self.flats)
            .entry(q.clone())
            .or_insert_with(|| {
                let mut f = FlatMessageFile::new(&self.cfg, q.clone());
                f.recovered = true;
                Arc::new(tokio::sync::Mutex::new(f))
            })
            .clone()
    }

    pub fn all_flats(&self) -> Vec<(QueueKey, FlatRef)> {
        lock(&self.flats).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Checks one queue against the object store (once per open).
    pub async fn recover_flat(&self, flat: &mut FlatMessageFile) -> Result<(), TieredError> {
        let listed = lock(&self.listed).get(&flat.queue).cloned().unwrap_or_default();
        let now = self.now_ms();
        flat.recover(self.obj.as_ref(), &self.meta, &listed, now).await?;
        crate::probe!("tiered.queue-recovered");
        let recorded = self.meta.lock().await.indexed(&flat.queue.to_string());
        let indexed = match recorded {
            Some(v) => v,
            None if self.metadata_loaded => 0,
            None => flat.commit_queue_offset(),
        };
        flat.indexed_queue_offset = indexed.min(flat.commit_queue_offset());
        let all_listed_recovered = {
            let mut l = lock(&self.listed);
            l.remove(&flat.queue);
            l.is_empty()
        };
        let mut meta = self.meta.lock().await;
        if all_listed_recovered {
            meta.set_complete(true);
        }
        meta.persist().await?;
        Ok(())
    }
}

/// The tiered layer over a local store.
pub struct TieredStore {
    inner: Arc<TieredInner>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredStore").field("prefix", &self.inner.cfg.key_prefix).finish()
    }
}

/// Where the metadata lives under the local store's root.
pub fn metadata_path(store_root: &std::path::Path) -> PathBuf {
    store_root.join("config").join("tieredStoreMetadata.json")
}

impl TieredStore {
    /// Opens the tiered layer over `source`. Without metadata (a fresh store, or a replaced
    /// disk) the object store is listed, retried every `retry_ms` until it answers or
    /// `give_up_after_ms` passes; with an empty local log and tiered data, the local log is
    /// continued above it so no physical or queue offset is ever reused.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        cfg: TieredConfig,
        bugs: BugSet,
        source: Arc<dyn MessageSource>,
        obj: Arc<dyn ObjectStore>,
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        store_root: &std::path::Path,
        give_up_after_ms: u64,
    ) -> Result<TieredStore, TieredError> {
        cfg.validate()?;
        let (mut meta, loaded) = MetadataStore::load(storage.clone(), &metadata_path(store_root))?;
        if let MetadataLoad::Unreadable(reason) = &loaded {
            tracing::error!(%reason, "tiered metadata unreadable: rebuilding from the object store");
        }
        let (listed, index_ids) = if loaded != MetadataLoad::Loaded {
            crate::probe!("tiered.rebuilt-from-listing");
            let (listed, index_ids) = list_with_retries(obj.as_ref(), &cfg.key_prefix, give_up_after_ms).await?;
            // Until every listed queue is recovered, a saved table may miss some of them.
            meta.set_complete(listed.is_empty());
            (listed, index_ids)
        } else {
            (BTreeMap::new(), Vec::new())
        };
        let index =
            IndexService::recover(storage, store_root, &cfg, &bugs, &mut meta, &index_ids, clock.now_ms()).await?;
        let permits = source.holds().counter(HoldKind::Permit, "tiered-dispatch-permits");
        let inner = Arc::new(TieredInner {
            cfg,
            bugs,
            source,
            obj,
            clock,
            meta: tokio::sync::Mutex::new(meta),
            flats: Mutex::new(BTreeMap::new()),
            listed: Mutex::new(listed),
            permits,
            stopping: AtomicBool::new(false),
            stop_notify: Notify::new(),
            dispatcher_alive: AtomicBool::new(false),
            counters: Counters::default(),
            index: tokio::sync::Mutex::new(index),
            metadata_loaded: loaded == MetadataLoad::Loaded,
        });
        let queues: Vec<QueueKey> = {
            let meta = inner.meta.lock().await;
            let from_meta = meta
                .segments()
                .keys()
                .filter_map(|k| keys::parse(&inner.cfg.key_prefix, k))
                .filter(|(_, kind, _)| *kind != FileKind::Index)
                .map(|p| p.0);
            let from_listing: Vec<QueueKey> = lock(&inner.listed).keys().cloned().collect();
            let mut all: Vec<QueueKey> = from_meta.chain(from_listing).collect();
            all.sort();
            all.dedup();
            all
        };
        for q in queues {
            let f = FlatMessageFile::new(&inner.cfg, q.clone());
            lock(&inner.flats).insert(q, Arc::new(tokio::sync::Mutex::new(f)));
        }
        if inner.source.log_is_empty() && !lock(&inner.flats).is_empty() {
            continue_local_log(&inner).await?;
        }
        Ok(TieredStore { inner, task: Mutex::new(None), shut_down: AtomicBool::new(false) })
    }

    /// Starts the dispatcher.
    pub fn start(&self) {
        let mut task = lock(&self.task);
        if task.is_none() && !self.shut_down.load(Ordering::SeqCst) {
            *task = Some(super::dispatcher::spawn(self.inner.clone()));
        }
    }

    /// Stops the dispatcher, indexes what is committed, uploads every pending index file (the
    /// newest included) and saves the metadata. Uncommitted batches are dropped: they are
    /// dispatched again after the next start. Bounded: a dispatcher still inside an upload
    /// after `SHUTDOWN_WAIT_MS` is aborted where it stands (recovery handles it as a crash),
    /// and the index uploads stop after `shutdown_upload_bound_ms`; what they left is
    /// returned, and uploaded by the next start from the local disk.
    pub async fn shutdown(&self) -> Result<IndexLeft, TieredError> {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return Ok(IndexLeft::default());
        }
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.stop_notify.notify_waiters();
        let task = lock(&self.task).take();
        if let Some(mut t) = task {
            if tokio::time::timeout(Duration::from_millis(SHUTDOWN_WAIT_MS), &mut t).await.is_err() {
                tracing::warn!("tiered dispatcher still uploading at shutdown: aborted");
                crate::probe!("tiered.shutdown-aborted-upload");
                t.abort();
                let _ = t.await;
                self.inner.dispatcher_alive.store(false, Ordering::SeqCst);
            }
        }
        let left = self.finish_index().await;
        if !left.is_empty() {
            crate::probe!("tiered.shutdown-left-index");
            tracing::warn!(files = ?left.files, queues = ?left.queues, "tiered index not finished at shutdown");
        }
        // The metadata lock may be held by the aborted upload's caller no longer: take it.
        self.inner.meta.lock().await.persist().await?;
        Ok(left)
    }

    /// Indexes every queue's committed messages, then seals and uploads every local index
    /// file, retrying until the bound (never, under `tiered-shutdown-unbounded`).
    async fn finish_index(&self) -> IndexLeft {
        let inner = &self.inner;
        let bound_ms = if inner.bugs.has(Bug::TieredShutdownUnbounded) {
            UNBOUNDED_MS
        } else {
            inner.cfg.shutdown_upload_bound_ms
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(bound_ms);
        let mut left = IndexLeft::default();
        for (q, flat) in inner.all_flats() {
            let mut f = flat.lock().await;
            if !f.recovered || f.has_uncommitted() {
                // Not checked against the object store since the start, or a batch whose
                // upload's outcome is unknown: what the object store holds of the queue, and
                // so whether its keys are all indexed, is not known.
                left.queues.push(q.clone());
                continue;
            }
            while f.indexed_queue_offset < f.commit_queue_offset() {
                match tokio::time::timeout(until(deadline), super::index_service::index_committed(inner, &mut f)).await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                        tracing::warn!(queue = %q, error = %e, "indexing at shutdown failed; retrying");
                        tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
                    }
                    _ => {
                        left.queues.push(q.clone());
                        break;
                    }
                }
            }
        }
        let ids = {
            let s = inner.index.lock().await;
            if inner.bugs.has(Bug::TieredIndexNewestNotUploaded) {
                // 5.3.0: shutdown closes the files and forgets them.
                Vec::new()
            } else if inner.bugs.has(Bug::TieredIndexForceUploadWrongFile) {
                // #8493's forced upload: the current write file only.
                s.newest_pending().into_iter().collect()
            } else {
                s.all_pending()
            }
        };
        for id in ids {
            loop {
                if tokio::time::Instant::now() >= deadline {
                    left.files.push(id);
                    break;
                }
                let attempt = super::index_service::upload_file(
                    &inner.index,
                    &inner.meta,
                    inner.obj.as_ref(),
                    &inner.bugs,
                    id,
                    inner.now_ms(),
                );
                match tokio::time::timeout(until(deadline), attempt).await {
                    Ok(Ok(true)) => break,
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::warn!(id, error = %e, "index upload at shutdown failed; retrying"),
                    Err(_) => {
                        left.files.push(id);
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
            }
        }
        left
    }

    /// Every index file's status, by id (tests and checkers).
    pub async fn index_statuses(&self) -> Vec<(u64, IndexStatus)> {
        self.inner.index.lock().await.statuses()
    }

    /// Dispatches every queue once, now, without the hold branch (tests and benches).
    pub async fn dispatch_now(&self) -> Result<(), TieredError> {
        super::dispatcher::round(&self.inner, true).await
    }

    pub fn stats(&self) -> TieredStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        TieredStats {
            messages_tiered: g(&c.messages_tiered),
            bytes_tiered: g(&c.bytes_tiered),
            batches_committed: g(&c.batches_committed),
            commit_failures: g(&c.commit_failures),
            dispatch_errors: g(&c.dispatch_errors),
            holds_branch: g(&c.holds_branch),
            blank_units: g(&c.blank_units),
            segments_expired: g(&c.segments_expired),
        }
    }

    /// Whether the dispatcher task is running.
    pub fn dispatcher_alive(&self) -> bool {
        self.inner.dispatcher_alive.load(Ordering::SeqCst)
    }

    pub fn config(&self) -> &TieredConfig {
        &self.inner.cfg
    }

    /// Every queue's tiered state (waits for a queue busy uploading).
    pub async fn queue_states(&self) -> Vec<QueueState> {
        let mut out = Vec::new();
        for (q, f) in self.inner.all_flats() {
            let f = f.lock().await;
            out.push(QueueState {
                queue: q,
                recovered: f.recovered,
                min_queue_offset: f.min_queue_offset(),
                commit_queue_offset: f.commit_queue_offset(),
                dispatch_queue_offset: f.dispatch_queue_offset(),
                uncommitted: f.has_uncommitted(),
                holes: f.holes.iter().map(|(k, h)| (*k, h.clone())).collect(),
            });
        }
        out
    }

    pub(crate) fn inner(&self) -> &Arc<TieredInner> {
        &self.inner
    }
}

/// One queue as the tiered store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueState {
    pub queue: QueueKey,
    pub recovered: bool,
    pub min_queue_offset: u64,
    /// Queue offsets below this are committed to the object store.
    pub commit_queue_offset: u64,
    pub dispatch_queue_offset: u64,
    pub uncommitted: bool,
    pub holes: Vec<(FileKind, Hole)>,
}

impl Drop for TieredStore {
    /// A drop without shutdown is a crash: the dispatcher is aborted where it stands.
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

/// What a listing found: the segments of each queue, and the index files' ids.
type Listing = (BTreeMap<QueueKey, Vec<(FileKind, u64)>>, Vec<u64>);

/// Lists every segment under the prefix, retrying while the object store fails.
async fn list_with_retries(
    obj: &dyn ObjectStore,
    key_prefix: &str,
    give_up_after_ms: u64,
) -> Result<Listing, TieredError> {
    let prefix = format!("{key_prefix}/");
    let keys = retry(give_up_after_ms, "list the object store", || obj.list(&prefix)).await?;
    let mut out: BTreeMap<QueueKey, Vec<(FileKind, u64)>> = BTreeMap::new();
    let mut index_ids = Vec::new();
    for k in keys {
        match keys::parse(key_prefix, &k) {
            Some((q, FileKind::Index, id)) if q == super::index_service::index_queue() => index_ids.push(id),
            Some((_, FileKind::Index, _)) => tracing::warn!(key = %k, "index object outside the index queue: ignored"),
            Some((q, kind, base)) => out.entry(q).or_default().push((kind, base)),
            None => tracing::warn!(key = %k, "object under the tiered prefix is not a segment: ignored"),
        }
    }
    Ok((out, index_ids))
}

const RETRY_MS: u64 = 200;
/// "For ever" (a year) under `tiered-shutdown-unbounded`.
const UNBOUNDED_MS: u64 = 365 * 24 * 3600 * 1000;

/// The time left until `deadline` (zero once passed).
fn until(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}
/// How long shutdown lets the dispatcher finish its current upload.
const SHUTDOWN_WAIT_MS: u64 = 1_000;

async fn retry<T, F, Fut>(give_up_after_ms: u64, what: &str, mut f: F) -> Result<T, TieredError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::io::ObjectError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_millis(give_up_after_ms);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(TieredError::NotReady { what: what.to_string(), reason: e.to_string() })
            }
            Err(e) => {
                tracing::warn!(error = %e, what, "object store failed; retrying");
                tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
            }
        }
    }
}

/// Queues a replaced container recovers at once: its boot costs round trips per queue, and
/// one queue after another it would grow with the number of queues times the object store's
/// latency (and time-outs).
const CONTINUE_RECOVERY_CONCURRENCY: usize = 16;

/// A replaced container: the local log is empty but the object store holds queues. Every
/// queue is recovered, then the local log continues above the highest local offset any tiered
/// message had, and each queue above its tiered end. Until the object store has answered all
/// of it the store cannot know which offsets are taken, so this retries for as long as it
/// takes (each queue's sizes already learned are kept across attempts).
async fn continue_local_log(inner: &Arc<TieredInner>) -> Result<(), TieredError> {
    let mut phy_floor = 0u64;
    let mut floors = BTreeMap::new();
    for group in inner.all_flats().chunks(CONTINUE_RECOVERY_CONCURRENCY) {
        let ends = futures::future::join_all(group.iter().map(|(q, flat)| queue_end(inner, q, flat))).await;
        for ((q, _), end) in group.iter().zip(ends) {
            if let Some((end, last)) = end? {
                floors.insert((q.topic.clone(), q.queue_id), end);
                phy_floor = phy_floor.max(last);
            }
        }
    }
    if floors.is_empty() {
        return Ok(());
    }
    tracing::info!(phy_floor, queues = floors.len(), "empty local log continued above the tiered store");
    crate::probe!("tiered.local-log-continued");
    inner.source.continue_from(phy_floor, &floors)?;
    Ok(())
}

/// One queue of a replaced container, recovered against the object store (retried until it
/// answers): its tiered end and the local end of its last tiered message, or `None` when it
/// holds nothing.
async fn queue_end(inner: &Arc<TieredInner>, q: &QueueKey, flat: &FlatRef) -> Result<Option<(u64, u64)>, TieredError> {
    let mut f = flat.lock().await;
    while let Err(e) = inner.recover_flat(&mut f).await {
        tracing::warn!(queue = %q, error = %e, "tiered recovery failed; retrying");
        tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
    }
    let end = f.commit_queue_offset();
    if end == 0 {
        return Ok(None);
    }
    loop {
        match super::fetcher::last_local_end(inner, &f).await {
            Ok(last) => return Ok(Some((end, last))),
            Err(TieredError::Object(e)) => {
                tracing::warn!(queue = %q, error = %e, "reading the last tiered message failed; retrying");
                tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
