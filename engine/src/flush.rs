//! Flush services (§3.2): the commit-log flush (async mode: interval, least dirty pages,
//! thorough interval), group commit (sync mode: acks only once durable; concurrent producers
//! share a sync), the transient-pool commit, and the consume-queue flush whose thorough pass
//! advances the checkpoint's logics timestamp only after the CQ data it describes is durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::bugs::Bug;
use crate::config::FlushMode;
use crate::error::Result;
use crate::mapped_file::SyncPlan;
use crate::store::{lock, Inner};

/// Syncs `plans`; a failure makes the store unwriteable (unless the `retry-failed-sync` bug
/// is on, which just reports it and lets a later sync "succeed").
async fn sync_plans(inner: &Inner, plans: &[SyncPlan], what: &str) -> Result<()> {
    for p in plans {
        if let Err(e) = p.file.sync_range(p.sync_from, p.sync_to - p.sync_from).await {
            crate::probe!("flush.sync-failed");
            if !inner.bug(Bug::RetryFailedSync) {
                inner.mark_not_writeable(format!("{what} sync failed: {e}"));
            }
            return Err(e.into());
        }
    }
    if let Err(e) = inner.sync_dirs().await {
        crate::probe!("flush.dir-sync-failed");
        if !inner.bug(Bug::RetryFailedSync) {
            inner.mark_not_writeable(format!("directory sync failed: {e}"));
        }
        return Err(e.into());
    }
    Ok(())
}

fn refuse_if_failed(inner: &Inner) -> Result<()> {
    match inner.not_writeable_error() {
        Some(e) if !inner.bug(Bug::RetryFailedSync) => {
            crate::probe!("flush.refused-after-failed-sync");
            Err(e)
        }
        _ => Ok(()),
    }
}

/// Flushes the commit log if at least `least_pages` are dirty (0: everything committed).
/// Returns whether anything was synced.
pub(crate) async fn flush_commit_log(inner: &Inner, least_pages: u64) -> Result<bool> {
    refuse_if_failed(inner)?;
    let page = inner.cfg.os_page_size_bytes;
    let plans = lock(&inner.cl).queue().sync_plans(least_pages, page);
    if plans.is_empty() {
        if !inner.dirs.is_empty() {
            sync_plans(inner, &[], "commit log").await?;
        }
        resolve_group_requests(inner);
        return Ok(false);
    }
    sync_plans(inner, &plans, "commit log").await?;
    {
        let mut cl = lock(&inner.cl);
        for p in &plans {
            cl.queue_mut().mark_flushed(p);
        }
    }
    let ts = plans.iter().map(|p| p.last_store_ts_ms).max().unwrap_or(0);
    {
        let mut c = lock(&inner.ckpt);
        c.physic_msg_timestamp_ms = c.physic_msg_timestamp_ms.max(ts);
    }
    resolve_group_requests(inner);
    Ok(true)
}

/// Acks every waiting producer whose bytes are now durable.
fn resolve_group_requests(inner: &Inner) {
    let flushed = lock(&inner.cl).queue().flushed_offset();
    let acked = inner.answer_group_requests(|r| (r.end_offset <= flushed).then_some(Ok(())));
    inner.counters.group_commit_acks.fetch_add(acked as u64, Ordering::SeqCst);
}

/// Commits write buffers into the files (transient pool).
pub(crate) fn commit_commit_log(inner: &Inner, least_pages: u64) -> Result<bool> {
    let committed = lock(&inner.cl).commit(least_pages, inner.cfg.os_page_size_bytes)?;
    if committed {
        inner.wake_reput.notify_one();
    }
    Ok(committed)
}

/// Flushes every consume queue (`FlushConsumeQueueService.doFlush`). A thorough pass
/// snapshots the dispatched timestamp before collecting what to sync and records it in the
/// checkpoint only after the syncs succeeded.
pub(crate) async fn flush_consume_queues(inner: &Inner, least_pages: u64, thorough: bool) -> Result<()> {
    refuse_if_failed(inner)?;
    let ahead_bug = inner.bug(Bug::CheckpointAheadOfCq);
    let snapshot = inner.logics_dispatched_ts.load(Ordering::SeqCst);
    if thorough && ahead_bug {
        inner.write_checkpoint().await?;
    }
    let least = if thorough { 0 } else { least_pages };
    let page = inner.cfg.os_page_size_bytes;
    let plans: Vec<(_, SyncPlan)> = lock(&inner.cqs)
        .iter()
        .flat_map(|(k, cq)| cq.files().sync_plans(least, page).into_iter().map(move |p| (k.clone(), p)))
        .collect();
    let only: Vec<SyncPlan> = plans.iter().map(|(_, p)| p.clone()).collect();
    sync_plans(inner, &only, "consume queue").await?;
    {
        let mut cqs = lock(&inner.cqs);
        for (k, p) in &plans {
            if let Some(cq) = cqs.get_mut(k) {
                cq.files_mut().mark_flushed(p);
            }
        }
    }
    if thorough {
        {
            let mut c = lock(&inner.ckpt);
            c.logics_msg_timestamp_ms = c.logics_msg_timestamp_ms.max(snapshot);
        }
        inner.write_checkpoint().await?;
    }
    Ok(())
}

/// Syncs every index file written since its last sync and lets the checkpoint's index
/// timestamp cover them.
pub(crate) async fn flush_index(inner: &Inner) -> Result<()> {
    let (plans, end_ts) = lock(&inner.index).dirty_plans();
    if plans.is_empty() {
        return Ok(());
    }
    let only: Vec<SyncPlan> = plans.iter().map(|(p, _)| p.clone()).collect();
    sync_plans(inner, &only, "index").await?;
    let mut index = lock(&inner.index);
    index.mark_synced(&plans);
    if index.is_clean() {
        let mut c = lock(&inner.ckpt);
        c.index_msg_timestamp_ms = c.index_msg_timestamp_ms.max(end_ts);
    }
    Ok(())
}

/// Commits and flushes the commit log completely (RocketMQ retries the final flush).
pub(crate) async fn final_commit_log_flush(inner: &Inner) -> Result<()> {
    commit_commit_log(inner, 0)?;
    for _ in 0..10 {
        flush_commit_log(inner, 0).await?;
        let cl = lock(&inner.cl);
        if cl.queue().flushed_offset() >= cl.readable_offset() {
            break;
        }
    }
    // Pooled write buffers go back once everything they held is in the files.
    let mut cl = lock(&inner.cl);
    for f in cl.queue_mut().files_mut() {
        if f.has_write_buffer() && f.committed() == f.wrote() {
            f.drop_write_buffer();
        }
    }
    Ok(())
}

/// Flushes consume queues and index, then writes the checkpoint.
pub(crate) async fn final_logics_flush(inner: &Inner) -> Result<()> {
    flush_consume_queues(inner, 0, true).await?;
    flush_index(inner).await?;
    inner.write_checkpoint().await
}

/// Everything durable, without stopping.
pub(crate) async fn final_flush(inner: &Inner) -> Result<()> {
    commit_commit_log(inner, 0)?;
    flush_commit_log(inner, 0).await?;
    final_logics_flush(inner).await
}

fn interval_ms(ms: u64) -> Duration {
    Duration::from_millis(ms.max(1))
}

async fn wait(inner: &Inner, d: Duration, wake: &tokio::sync::Notify) {
    if inner.stopping.load(Ordering::SeqCst) {
        return;
    }
    let _ = tokio::time::timeout(d, wake.notified()).await;
}

/// `FlushRealTimeService`: periodic flush, thorough every `thorough_interval`.
async fn async_flush_loop(inner: Arc<Inner>) {
    let cfg = &inner.cfg;
    let mut last_thorough = tokio::time::Instant::now();
    while !inner.stopping.load(Ordering::SeqCst) {
        wait(&inner, interval_ms(cfg.flush_interval_commit_log_ms), &inner.wake_flush).await;
        let thorough = last_thorough.elapsed() >= interval_ms(cfg.flush_commit_log_thorough_interval_ms);
        let least = if thorough { 0 } else { cfg.flush_commit_log_least_pages };
        if thorough {
            last_thorough = tokio::time::Instant::now();
        }
        if let Err(e) = flush_commit_log(&inner, least).await {
            tracing::error!(error = %e, "commit-log flush failed");
        }
    }
}

/// `CommitRealTimeService`: periodic commit of the write buffers, then a wake-up of the flush.
async fn commit_loop(inner: Arc<Inner>) {
    let cfg = &inner.cfg;
    let mut last_thorough = tokio::time::Instant::now();
    while !inner.stopping.load(Ordering::SeqCst) {
        wait(&inner, interval_ms(cfg.commit_interval_commit_log_ms), &inner.wake_commit).await;
        let thorough = last_thorough.elapsed() >= interval_ms(cfg.commit_commit_log_thorough_interval_ms);
        let least = if thorough { 0 } else { cfg.commit_commit_log_least_pages };
        if thorough {
            last_thorough = tokio::time::Instant::now();
        }
        match commit_commit_log(&inner, least) {
            Ok(true) => inner.wake_flush.notify_one(),
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
async fn group_commit_loop(inner: Arc<Inner>) {
    let d = interval_ms(inner.cfg.group_commit_interval_ms);
    while !inner.stopping.load(Ordering::SeqCst) {
        wait(&inner, d, &inner.wake_group).await;
        inner.expire_group_requests();
        // Appends left uncommitted by a failed commit are committed too, even with nobody
        // waiting for them: readers and dispatch see the log only up to what is committed.
        let waiting = !lock(&inner.group_requests).is_empty()
            || inner.bug(Bug::AckBeforeSync)
            || lock(&inner.cl).has_uncommitted();
        if waiting {
            gather_group(&inner).await;
            inner.counters.group_commit_syncs.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = commit_and_flush_expiring(&inner, d).await {
                tracing::error!(error = %e, "group commit failed");
                if inner.bug(Bug::RetryFailedSync) {
                    continue;
                }
                inner.fail_group_requests(e);
            }
        }
    }
}

/// Rounds of `gather_group` at most: a bound on what a steady stream of producers can delay
/// a sync by.
const GATHER_MAX_ROUNDS: usize = 8;

/// Yields to the producers that are ready to append while the group grows (at most
/// `GATHER_MAX_ROUNDS` times): one yield lets every runnable task run once.
async fn gather_group(inner: &Inner) {
    let mut size = lock(&inner.group_requests).len();
    for _ in 0..GATHER_MAX_ROUNDS {
        tokio::task::yield_now().await;
        let grown = lock(&inner.group_requests).len();
        if grown == size {
            return;
        }
        size = grown;
    }
}

/// The group's appends wait in batches: one write for all of them, then one sync.
async fn commit_and_flush(inner: &Inner) -> Result<bool> {
    commit_commit_log(inner, 0)?;
    flush_commit_log(inner, 0).await
}

/// `commit_and_flush`, expiring the waiting producers' deadlines every `tick` meanwhile: a
/// slow sync does not hold producers past their timeout.
async fn commit_and_flush_expiring(inner: &Inner, tick: Duration) -> Result<bool> {
    let flush = commit_and_flush(inner);
    tokio::pin!(flush);
    loop {
        tokio::select! {
            biased;
            r = &mut flush => return r,
            _ = tokio::time::sleep(tick) => inner.expire_group_requests(),
        }
    }
}

/// `FlushConsumeQueueService`.
async fn cq_flush_loop(inner: Arc<Inner>) {
    let cfg = &inner.cfg;
    let mut last_thorough = tokio::time::Instant::now();
    while !inner.stopping.load(Ordering::SeqCst) {
        wait(&inner, interval_ms(cfg.flush_interval_cq_ms), &inner.stop_notify).await;
        if inner.stopping.load(Ordering::SeqCst) {
            break;
        }
        let thorough = last_thorough.elapsed() >= interval_ms(cfg.flush_cq_thorough_interval_ms);
        if thorough {
            last_thorough = tokio::time::Instant::now();
        }
        if let Err(e) = flush_consume_queues(&inner, cfg.flush_cq_least_pages, thorough).await {
            tracing::error!(error = %e, "consume-queue flush failed");
        }
    }
}

/// Spawns the services of the configured flush mode.
pub(crate) fn spawn_services(inner: &Arc<Inner>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    match inner.cfg.flush_mode {
        FlushMode::Async => tasks.push(tokio::spawn(async_flush_loop(inner.clone()))),
        FlushMode::Sync => tasks.push(tokio::spawn(group_commit_loop(inner.clone()))),
        FlushMode::TransientPool => {
            tasks.push(tokio::spawn(commit_loop(inner.clone())));
            tasks.push(tokio::spawn(async_flush_loop(inner.clone())));
        }
    }
    tasks.push(tokio::spawn(cq_flush_loop(inner.clone())));
    tasks
}
