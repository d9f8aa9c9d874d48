//! Flush services (§3.2): the commit-log flush (async mode: interval, least dirty pages,
//! thorough interval), group commit (sync mode: acks only once durable; concurrent producers
//! share a sync), the transient-pool commit, and the consume-queue flush whose thorough pass
//! advances the checkpoint's logics timestamp only after the CQ data it describes is durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use std::sync::Mutex;

use crate::bugs::Bug;
use crate::commit_log::CommitLog;
use crate::config::{FlushMode, StoreConfig};
use crate::error::Result;
use crate::io::{IoError, Storage};
use crate::locks::lock;
use crate::mapped_file::SyncPlan;
use crate::mapped_file_queue::DirSyncs;
use crate::parts::{Checkpoint, Counters, Health, Logics, Progress, Wakes};

/// What the flush services work with, handed over by the store that owns them.
pub(crate) struct Flusher {
    pub cfg: Arc<StoreConfig>,
    pub storage: Arc<dyn Storage>,
    pub dirs: Arc<DirSyncs>,
    pub cl: Arc<Mutex<CommitLog>>,
    pub logics: Arc<Logics>,
    pub ckpt: Arc<Checkpoint>,
    pub health: Arc<Health>,
    pub progress: Arc<Progress>,
    pub wakes: Arc<Wakes>,
    pub counters: Arc<Counters>,
}

impl Flusher {
    fn bug(&self, b: Bug) -> bool {
        self.cfg.bugs.has(b)
    }

    async fn sync_dirs(&self) -> Result<(), IoError> {
        self.dirs.sync(self.storage.as_ref()).await
    }

    async fn write_checkpoint(&self) -> Result<()> {
        self.ckpt.write(&self.health).await
    }
}

/// Syncs `plans`; a failure makes the store unwriteable (unless the `retry-failed-sync` bug
/// is on, which just reports it and lets a later sync "succeed").
async fn sync_plans(fl: &Flusher, plans: &[SyncPlan], what: &str) -> Result<()> {
    for p in plans {
        if let Err(e) = p.file.sync_range(p.sync_from, p.sync_to - p.sync_from).await {
            crate::probe!("flush.sync-failed");
            if !fl.bug(Bug::RetryFailedSync) {
                fl.health.mark_not_writeable(format!("{what} sync failed: {e}"));
            }
            return Err(e.into());
        }
    }
    if let Err(e) = fl.sync_dirs().await {
        crate::probe!("flush.dir-sync-failed");
        if !fl.bug(Bug::RetryFailedSync) {
            fl.health.mark_not_writeable(format!("directory sync failed: {e}"));
        }
        return Err(e.into());
    }
    Ok(())
}

fn refuse_if_failed(fl: &Flusher) -> Result<()> {
    match fl.health.not_writeable_error() {
        Some(e) if !fl.bug(Bug::RetryFailedSync) => {
            crate::probe!("flush.refused-after-failed-sync");
            Err(e)
        }
        _ => Ok(()),
    }
}

/// Flushes the commit log if at least `least_pages` are dirty (0: everything committed).
/// Returns whether anything was synced.
pub(crate) async fn flush_commit_log(fl: &Flusher, least_pages: u64) -> Result<bool> {
    refuse_if_failed(fl)?;
    let page = fl.cfg.os_page_size_bytes;
    let plans = lock(&fl.cl).queue().sync_plans(least_pages, page);
    if plans.is_empty() {
        if !fl.dirs.is_empty() {
            sync_plans(fl, &[], "commit log").await?;
        }
        resolve_group_requests(fl);
        return Ok(false);
    }
    sync_plans(fl, &plans, "commit log").await?;
    {
        let mut cl = lock(&fl.cl);
        for p in &plans {
            cl.queue_mut().mark_flushed(p);
        }
    }
    let ts = plans.iter().map(|p| p.last_store_ts_ms).max().unwrap_or(0);
    {
        let mut c = lock(&fl.ckpt.data);
        c.physic_msg_timestamp_ms = c.physic_msg_timestamp_ms.max(ts);
    }
    resolve_group_requests(fl);
    Ok(true)
}

/// Acks every waiting producer whose bytes are now durable.
fn resolve_group_requests(fl: &Flusher) {
    let flushed = lock(&fl.cl).queue().flushed_offset();
    let acked = fl.health.answer_group_requests(|r| (r.end_offset <= flushed).then_some(Ok(())));
    fl.counters.group_commit_acks.fetch_add(acked as u64, Ordering::SeqCst);
}

/// Commits write buffers into the files (transient pool).
pub(crate) fn commit_commit_log(fl: &Flusher, least_pages: u64) -> Result<bool> {
    let committed = lock(&fl.cl).commit(least_pages, fl.cfg.os_page_size_bytes)?;
    if committed {
        fl.wakes.reput.notify_one();
    }
    Ok(committed)
}

/// Flushes every consume queue (`FlushConsumeQueueService.doFlush`). A thorough pass
/// snapshots the dispatched timestamp before collecting what to sync and records it in the
/// checkpoint only after the syncs succeeded.
pub(crate) async fn flush_consume_queues(fl: &Flusher, least_pages: u64, thorough: bool) -> Result<()> {
    refuse_if_failed(fl)?;
    let ahead_bug = fl.bug(Bug::CheckpointAheadOfCq);
    let snapshot = fl.progress.logics_dispatched_ts.load(Ordering::SeqCst);
    if thorough && ahead_bug {
        fl.write_checkpoint().await?;
    }
    let least = if thorough { 0 } else { least_pages };
    let page = fl.cfg.os_page_size_bytes;
    let plans: Vec<(_, SyncPlan)> = lock(&fl.logics.cqs)
        .iter()
        .flat_map(|(k, cq)| cq.files().sync_plans(least, page).into_iter().map(move |p| (k.clone(), p)))
        .collect();
    let only: Vec<SyncPlan> = plans.iter().map(|(_, p)| p.clone()).collect();
    sync_plans(fl, &only, "consume queue").await?;
    {
        let mut cqs = lock(&fl.logics.cqs);
        for (k, p) in &plans {
            if let Some(cq) = cqs.get_mut(k) {
                cq.files_mut().mark_flushed(p);
            }
        }
    }
    if thorough {
        {
            let mut c = lock(&fl.ckpt.data);
            c.logics_msg_timestamp_ms = c.logics_msg_timestamp_ms.max(snapshot);
        }
        fl.write_checkpoint().await?;
    }
    Ok(())
}

/// Syncs every index file written since its last sync and lets the checkpoint's index
/// timestamp cover them.
pub(crate) async fn flush_index(fl: &Flusher) -> Result<()> {
    let (plans, end_ts) = lock(&fl.logics.index).dirty_plans();
    if plans.is_empty() {
        return Ok(());
    }
    let only: Vec<SyncPlan> = plans.iter().map(|(p, _)| p.clone()).collect();
    sync_plans(fl, &only, "index").await?;
    let mut index = lock(&fl.logics.index);
    index.mark_synced(&plans);
    if index.is_clean() {
        let mut c = lock(&fl.ckpt.data);
        c.index_msg_timestamp_ms = c.index_msg_timestamp_ms.max(end_ts);
    }
    Ok(())
}

/// Commits and flushes the commit log completely (RocketMQ retries the final flush).
pub(crate) async fn final_commit_log_flush(fl: &Flusher) -> Result<()> {
    commit_commit_log(fl, 0)?;
    for _ in 0..10 {
        flush_commit_log(fl, 0).await?;
        let cl = lock(&fl.cl);
        if cl.queue().flushed_offset() >= cl.readable_offset() {
            break;
        }
    }
    // Pooled write buffers go back once everything they held is in the files.
    let mut cl = lock(&fl.cl);
    for f in cl.queue_mut().files_mut() {
        if f.has_write_buffer() && f.committed() == f.wrote() {
            f.drop_write_buffer();
        }
    }
    Ok(())
}

/// Flushes consume queues and index, then writes the checkpoint.
pub(crate) async fn final_logics_flush(fl: &Flusher) -> Result<()> {
    flush_consume_queues(fl, 0, true).await?;
    flush_index(fl).await?;
    fl.write_checkpoint().await
}

/// Everything durable, without stopping.
pub(crate) async fn final_flush(fl: &Flusher) -> Result<()> {
    commit_commit_log(fl, 0)?;
    flush_commit_log(fl, 0).await?;
    final_logics_flush(fl).await
}

fn interval_ms(ms: u64) -> Duration {
    Duration::from_millis(ms.max(1))
}

async fn wait(fl: &Flusher, d: Duration, wake: &tokio::sync::Notify) {
    if fl.wakes.stopping.load(Ordering::SeqCst) {
        return;
    }
    let _ = tokio::time::timeout(d, wake.notified()).await;
}

/// `FlushRealTimeService`: periodic flush, thorough every `thorough_interval`.
async fn async_flush_loop(fl: Arc<Flusher>) {
    let cfg = &fl.cfg;
    let mut last_thorough = tokio::time::Instant::now();
    while !fl.wakes.stopping.load(Ordering::SeqCst) {
        wait(&fl, interval_ms(cfg.flush_interval_commit_log_ms), &fl.wakes.flush).await;
        let thorough = last_thorough.elapsed() >= interval_ms(cfg.flush_commit_log_thorough_interval_ms);
        let least = if thorough { 0 } else { cfg.flush_commit_log_least_pages };
        if thorough {
            last_thorough = tokio::time::Instant::now();
        }
        if let Err(e) = flush_commit_log(&fl, least).await {
            tracing::error!(error = %e, "commit-log flush failed");
        }
    }
}

/// `CommitRealTimeService`: periodic commit of the write buffers, then a wake-up of the flush.
async fn commit_loop(fl: Arc<Flusher>) {
    let cfg = &fl.cfg;
    let mut last_thorough = tokio::time::Instant::now();
    while !fl.wakes.stopping.load(Ordering::SeqCst) {
        wait(&fl, interval_ms(cfg.commit_interval_commit_log_ms), &fl.wakes.commit).await;
        let thorough = last_thorough.elapsed() >= interval_ms(cfg.commit_commit_log_thorough_interval_ms);
        let least = if thorough { 0 } else { cfg.commit_commit_log_least_pages };
        if thorough {
            last_thorough = tokio::time::Instant::now();
        }
        match commit_commit_log(&fl, least) {
            Ok(true) => fl.wakes.flush.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "commit failed"),
        }
    }
}

/// `GroupCommitService`: whenever producers wait, one write and one sync cover all of them.
/// Before syncing it lets the producers that are ready join the group (`gather_group`), so
/// that with many producers one group forms per sync instead of two alternating ones (one
/// appending while the other syncs). Measured with 64 producers: 64 instead of 32 acks per
/// sync, 164-177k instead of 126-142k msgs/s; one producer unchanged. (Before appends were
/// batched, each append was a write syscall, and gathering made appending and syncing take
/// turns: 102k vs 142k msgs/s.)
async fn group_commit_loop(fl: Arc<Flusher>) {
    let d = interval_ms(fl.cfg.group_commit_interval_ms);
    while !fl.wakes.stopping.load(Ordering::SeqCst) {
        wait(&fl, d, &fl.wakes.group).await;
        fl.health.expire_group_requests();
        // Appends left uncommitted by a failed commit are committed too, even with nobody
        // waiting for them: readers and dispatch see the log only up to what is committed.
        let waiting =
            !lock(&fl.health.group_requests).is_empty() || fl.bug(Bug::AckBeforeSync) || lock(&fl.cl).has_uncommitted();
        if waiting {
            gather_group(&fl).await;
            fl.counters.group_commit_syncs.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = commit_and_flush_expiring(&fl, d).await {
                tracing::error!(error = %e, "group commit failed");
                if fl.bug(Bug::RetryFailedSync) {
                    continue;
                }
                fl.health.fail_group_requests(e);
            }
        }
    }
}

/// Rounds of `gather_group` at most: a bound on what a steady stream of producers can delay
/// a sync by.
const GATHER_MAX_ROUNDS: usize = 8;

/// Yields to the producers that are ready to append while the group grows (at most
/// `GATHER_MAX_ROUNDS` times): one yield lets every runnable task run once.
async fn gather_group(fl: &Flusher) {
    let mut size = lock(&fl.health.group_requests).len();
    for _ in 0..GATHER_MAX_ROUNDS {
        tokio::task::yield_now().await;
        let grown = lock(&fl.health.group_requests).len();
        if grown == size {
            return;
        }
        size = grown;
    }
}

/// The group's appends wait in batches: one write for all of them, then one sync.
async fn commit_and_flush(fl: &Flusher) -> Result<bool> {
    commit_commit_log(fl, 0)?;
    flush_commit_log(fl, 0).await
}

/// `commit_and_flush`, expiring the waiting producers' deadlines every `tick` meanwhile: a
/// slow sync does not hold producers past their timeout.
async fn commit_and_flush_expiring(fl: &Flusher, tick: Duration) -> Result<bool> {
    let flush = commit_and_flush(fl);
    tokio::pin!(flush);
    loop {
        tokio::select! {
            biased;
            r = &mut flush => return r,
            _ = tokio::time::sleep(tick) => fl.health.expire_group_requests(),
        }
    }
}

/// `FlushConsumeQueueService`.
async fn cq_flush_loop(fl: Arc<Flusher>) {
    let cfg = &fl.cfg;
    let mut last_thorough = tokio::time::Instant::now();
    while !fl.wakes.stopping.load(Ordering::SeqCst) {
        wait(&fl, interval_ms(cfg.flush_interval_cq_ms), &fl.wakes.stop).await;
        if fl.wakes.stopping.load(Ordering::SeqCst) {
            break;
        }
        let thorough = last_thorough.elapsed() >= interval_ms(cfg.flush_cq_thorough_interval_ms);
        if thorough {
            last_thorough = tokio::time::Instant::now();
        }
        if let Err(e) = flush_consume_queues(&fl, cfg.flush_cq_least_pages, thorough).await {
            tracing::error!(error = %e, "consume-queue flush failed");
        }
    }
}

/// Spawns the services of the configured flush mode.
pub(crate) fn spawn_services(fl: &Arc<Flusher>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    match fl.cfg.flush_mode {
        FlushMode::Async => tasks.push(tokio::spawn(async_flush_loop(fl.clone()))),
        FlushMode::Sync => tasks.push(tokio::spawn(group_commit_loop(fl.clone()))),
        FlushMode::TransientPool => {
            tasks.push(tokio::spawn(commit_loop(fl.clone())));
            tasks.push(tokio::spawn(async_flush_loop(fl.clone())));
        }
    }
    tasks.push(tokio::spawn(cq_flush_loop(fl.clone())));
    tasks
}
