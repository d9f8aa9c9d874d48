//! The tiered dispatcher (RocketMQ's `MessageStoreDispatcherImpl`): one background task that
//! moves every queue from the local consume queue to the tiered one.
//!
//! Each round visits every queue under a permit of a bounded pool: a queue not yet checked
//! against the object store is recovered; a queue with an uncommitted batch is committed
//! again (re-dispatch continues from the consume queue's committed offset); a queue whose
//! local minimum passed its tiered offset gets blank units for the messages it lost; a queue
//! with too little pending is held back until a batch is worth an upload (count or age); then
//! a batch bounded by count and bytes moves, commit log committed before consume queue, and
//! its keys go into the tiered index from the bytes just uploaded.
//!
//! Whatever happens on one queue — a failed upload, a missing unit, a missing message — is
//! logged and counted, never ends the task nor stops the other queues, and every hold and
//! permit it took is released on every path (class D).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::flat_file::FlatAppend;
use super::flat_message::{FlatMessageFile, TieredUnit};
use super::index_service::AppendedRecord;
use super::store::TieredInner;
use super::{QueueKey, TieredError};
use crate::bugs::Bug;
use crate::io::Hold;

/// How one queue's turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Nothing to move.
    Idle,
    /// Recovered against the object store.
    Recovered,
    /// Held back to gather a larger batch (the hold branch).
    Held,
    /// A batch (or a retried commit) reached the object store; more may wait.
    Moved { messages: u64 },
    /// The local store could not give what its offsets promised (expired, truncated), or it
    /// is not durable yet: tried again next round.
    Missing,
}

/// A failure of one queue's turn. `Fatal` exists only under `tiered-dispatcher-dies`.
#[derive(Debug)]
enum TurnError {
    Failed(TieredError),
    Fatal(String),
}

impl From<TieredError> for TurnError {
    fn from(e: TieredError) -> Self {
        TurnError::Failed(e)
    }
}

impl From<crate::error::StoreError> for TurnError {
    fn from(e: crate::error::StoreError) -> Self {
        TurnError::Failed(e.into())
    }
}

/// Spawns the dispatcher task.
pub(crate) fn spawn(inner: Arc<TieredInner>) -> tokio::task::JoinHandle<()> {
    inner.dispatcher_alive.store(true, Ordering::SeqCst);
    tokio::spawn(async move {
        let interval = Duration::from_millis(inner.cfg.dispatch_interval_ms.max(1));
        while !inner.stopping.load(Ordering::SeqCst) {
            if let Err(e) = round(&inner, false).await {
                // Only `tiered-dispatcher-dies` gets here: RocketMQ's thread ended on an
                // exception that escaped its loop.
                tracing::error!(error = %e, "tiered dispatcher task ends");
                break;
            }
            tokio::select! {
                biased;
                _ = inner.stop_notify.notified() => {}
                _ = inner.source.dispatched().notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
        inner.dispatcher_alive.store(false, Ordering::SeqCst);
    })
}

/// One pass over every queue, `dispatch_permits` queues at a time. `force` skips the hold
/// branch. Errs only when the task must end (`tiered-dispatcher-dies`).
pub(crate) async fn round(inner: &Arc<TieredInner>, force: bool) -> Result<(), TieredError> {
    for (topic, queue_id) in inner.source.queues() {
        let q = QueueKey { topic, queue_id };
        if inner.flat(&q).is_none() {
            inner.flat_or_create(&q);
        }
    }
    let flats = inner.all_flats();
    for group in flats.chunks(inner.cfg.dispatch_permits.max(1) as usize) {
        if inner.stopping.load(Ordering::SeqCst) {
            break;
        }
        let results = futures::future::join_all(group.iter().map(|(q, f)| queue_turns(inner, q, f, force))).await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
    }
    super::index_service::upload_sealed(inner).await;
    expire_remote(inner).await;
    Ok(())
}

/// How many full batches one queue may move in one round before the others get their turn.
const BATCHES_PER_ROUND: usize = 8;

/// A queue's turns in one round, under a permit: again while it moves full batches.
async fn queue_turns(
    inner: &TieredInner,
    q: &QueueKey,
    flat: &super::store::FlatRef,
    force: bool,
) -> Result<(), TieredError> {
    for _ in 0..BATCHES_PER_ROUND {
        if inner.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let permit = inner.permits.acquire();
        let mut f = flat.lock().await;
        let r = turn(inner, &mut f, force).await;
        if f.recovered && f.indexed_queue_offset < f.commit_queue_offset() {
            if let Err(e) = super::index_service::index_committed(inner, &mut f).await {
                inner.counters.index_errors.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(queue = %q, error = %e, "tiered indexing failed; retried at the next turn");
            }
        }
        drop(f);
        match r {
            Ok(Turn::Moved { messages }) if messages >= inner.cfg.batch_max_count => drop(permit),
            Ok(Turn::Recovered) => drop(permit),
            Ok(_) => {
                drop(permit);
                return Ok(());
            }
            Err(e) => {
                inner.counters.dispatch_errors.fetch_add(1, Ordering::SeqCst);
                if inner.bugs.has(Bug::TieredPermitNotReturned) {
                    permit.leak();
                } else {
                    drop(permit);
                }
                return match e {
                    TurnError::Failed(e) => {
                        tracing::warn!(queue = %q, error = %e, "tiered dispatch failed");
                        Ok(())
                    }
                    TurnError::Fatal(reason) => Err(TieredError::NotReady { what: format!("queue {q}"), reason }),
                };
            }
        }
    }
    Ok(())
}

/// One queue's turn.
async fn turn(inner: &TieredInner, f: &mut FlatMessageFile, force: bool) -> Result<Turn, TurnError> {
    if !f.recovered {
        inner.recover_flat(f).await?;
        return Ok(Turn::Recovered);
    }
    if f.has_uncommitted() {
        crate::probe!("tiered.commit-retried");
        commit(inner, f, Vec::new()).await?;
        return Ok(Turn::Moved { messages: 0 });
    }
    let q = f.queue.clone();
    let local_min = inner.source.min_offset(&q.topic, q.queue_id);
    let local_max = inner.source.max_offset(&q.topic, q.queue_id);
    let current = f.dispatch_queue_offset();
    if current < local_min {
        return blank_expired(inner, f, local_min).await;
    }
    if current >= local_max {
        return Ok(Turn::Idle);
    }
    let Some(first) = select(inner, &q, current)? else { return Ok(Turn::Missing) };
    let Selected::Message { ref msg, .. } = first else {
        return batch(inner, f, first, local_max).await;
    };
    let pending = local_max - current;
    let age_ms = inner.now_ms().saturating_sub(msg.store_timestamp_ms);
    // The bytes pending: from this message to the end of the queue's last unit.
    let pending_bytes = match inner.source.cq_unit(&q.topic, q.queue_id, local_max - 1) {
        Ok(Some(last)) if !last.is_blank() => last.end().saturating_sub(msg.phy_offset),
        _ => 0,
    };
    let now = tokio::time::Instant::now();
    let held_ms = f.held_since.map_or(0, |t| now.duration_since(t).as_millis() as u64);
    let worth_it = pending >= inner.cfg.group_commit_count
        || pending_bytes >= inner.cfg.batch_max_bytes
        || (age_ms as u64) >= inner.cfg.group_commit_timeout_ms
        || held_ms >= inner.cfg.group_commit_timeout_ms;
    if !force && !worth_it {
        f.held_since.get_or_insert(now);
        inner.counters.holds_branch.fetch_add(1, Ordering::SeqCst);
        crate::probe!("tiered.hold-branch");
        if inner.bugs.has(Bug::TieredHoldNotReleased) {
            // #8955: `return completedFuture(false)` before `message.release()`.
            if let Selected::Message { msg, .. } = first {
                msg.hold.leak();
            }
        }
        return Ok(Turn::Held);
    }
    f.held_since = None;
    batch(inner, f, first, local_max).await
}

/// What the local store gave for one queue offset.
enum Selected {
    Message {
        msg: crate::store::SelectedMessage,
        tags_code: i64,
    },
    /// A blank unit in the local queue (a hole the local store itself has).
    Blank,
}

/// The unit and message at `offset`; `None` when the local store no longer (or not yet) has
/// them durable. Under `tiered-dispatcher-dies` a missing one is an error that escapes the
/// task's loop, as RocketMQ's NullPointerException did.
fn select(inner: &TieredInner, q: &QueueKey, offset: u64) -> Result<Option<Selected>, TurnError> {
    let dies = inner.bugs.has(Bug::TieredDispatcherDies);
    // Before #8965 any exception escaped the thread's loop, a local read error as much as a null.
    let fatal = |e: crate::error::StoreError| -> TurnError {
        if dies {
            TurnError::Fatal(format!("reading unit {offset} of {q}: {e}"))
        } else {
            e.into()
        }
    };
    let Some(unit) = inner.source.cq_unit(&q.topic, q.queue_id, offset).map_err(fatal)? else {
        crate::probe!("tiered.local-message-missing");
        if dies {
            return Err(TurnError::Fatal(format!("consume-queue unit {offset} of {q} is null")));
        }
        return Ok(None);
    };
    if unit.is_blank() {
        return Ok(Some(Selected::Blank));
    }
    if unit.end() > inner.source.durable_offset() {
        return Ok(None);
    }
    let size =
        u32::try_from(unit.size).map_err(|_| TieredError::corrupt(q, format!("unit {offset}: size {}", unit.size)))?;
    match inner.source.select_message(unit.phy_offset as u64, size).map_err(fatal)? {
        Some(msg) => Ok(Some(Selected::Message { msg, tags_code: unit.tags_code })),
        None => {
            crate::probe!("tiered.local-message-missing");
            if dies {
                return Err(TurnError::Fatal(format!("message of unit {offset} of {q} is null")));
            }
            Ok(None)
        }
    }
}

/// The messages of `[current, local_min)` expired locally before they were tiered: their
/// offsets get blank units, so queue offsets stay aligned with the local store's.
async fn blank_expired(inner: &TieredInner, f: &mut FlatMessageFile, local_min: u64) -> Result<Turn, TurnError> {
    let from = f.dispatch_queue_offset();
    tracing::warn!(queue = %f.queue, from, to = local_min, "messages expired locally before they were tiered");
    crate::probe!("tiered.expired-before-tiered");
    // Blank units even when nothing is tiered yet: the object store is all a replaced
    // container has, and a queue that only moved its start in local metadata would be found
    // there empty, so the continued local log would hand its expired offsets out again.
    let now = inner.now_ms();
    let end = local_min.min(from + inner.cfg.batch_max_count);
    for _ in from..end {
        let r = f.append_unit(inner.obj.as_ref(), &inner.meta, TieredUnit::BLANK, now, &inner.bugs, now).await?;
        if r == FlatAppend::NotReady {
            break;
        }
        inner.counters.blank_units.fetch_add(1, Ordering::SeqCst);
    }
    commit(inner, f, Vec::new()).await?;
    Ok(Turn::Moved { messages: 0 })
}

/// Moves one batch starting with `first` and commits it.
async fn batch(
    inner: &TieredInner,
    f: &mut FlatMessageFile,
    first: Selected,
    local_max: u64,
) -> Result<Turn, TurnError> {
    let q = f.queue.clone();
    let start = f.dispatch_queue_offset();
    let end = local_max.min(start + inner.cfg.batch_max_count);
    let mut holds: Vec<Hold> = Vec::new();
    let mut records: Vec<Option<AppendedRecord>> = Vec::new();
    let mut bytes = 0u64;
    let mut moved = 0u64;
    let mut next = Some(first);
    let mut offset = start;
    while offset < end && bytes < inner.cfg.batch_max_bytes {
        let sel = match next.take() {
            Some(s) => s,
            None => match select(inner, &q, offset) {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(e) => {
                    release(inner, holds, false);
                    return Err(e);
                }
            },
        };
        let appended = append_one(inner, f, sel, &mut holds, &mut bytes).await;
        match appended {
            Ok(Some(record)) => {
                records.push(record);
                moved += 1;
                offset += 1;
            }
            Ok(None) => break,
            Err(e) => {
                release(inner, holds, false);
                return Err(e.into());
            }
        }
    }
    if moved == 0 && !f.has_uncommitted() {
        release(inner, holds, true);
        return Ok(Turn::Idle);
    }
    commit(inner, f, holds).await?;
    inner.counters.messages_tiered.fetch_add(moved, Ordering::SeqCst);
    inner.counters.bytes_tiered.fetch_add(bytes, Ordering::SeqCst);
    if let Err(e) = super::index_service::index_appended(inner, f, start, &records).await {
        inner.counters.index_errors.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(queue = %q, error = %e, "tiered indexing of a committed batch failed; read back later");
    }
    Ok(Turn::Moved { messages: moved })
}

/// Takes one selected unit into the queue's flat file. `Ok(None)`: not taken (a full segment
/// could not roll yet); `Ok(Some(None))`: a blank unit; otherwise the record and where it went.
async fn append_one(
    inner: &TieredInner,
    f: &mut FlatMessageFile,
    sel: Selected,
    holds: &mut Vec<Hold>,
    bytes: &mut u64,
) -> Result<Option<Option<AppendedRecord>>, TieredError> {
    let now = inner.now_ms();
    let (obj, meta) = (inner.obj.as_ref(), &inner.meta);
    match sel {
        Selected::Blank => Ok(match f.append_unit(obj, meta, TieredUnit::BLANK, now, &inner.bugs, now).await? {
            FlatAppend::At(_) => Some(None),
            FlatAppend::NotReady => None,
        }),
        Selected::Message { msg, tags_code } => {
            let len = msg.bytes.len() as u64;
            let ts = msg.store_timestamp_ms;
            // The buffer stays held until its batch's commit ends (RocketMQ's group-commit context).
            holds.push(msg.hold);
            let record = Bytes::from(msg.bytes);
            let r = f.append_message(obj, meta, record.clone(), tags_code, ts, &inner.bugs, now).await?;
            Ok(r.map(|cl_offset| {
                *bytes += len;
                Some(AppendedRecord { cl_offset, record })
            }))
        }
    }
}

/// Commits the queue's batch, then releases its buffers — on failure too, unless under
/// `tiered-failed-commit-buffers-kept` (#9069).
async fn commit(inner: &TieredInner, f: &mut FlatMessageFile, holds: Vec<Hold>) -> Result<(), TieredError> {
    let now = inner.now_ms();
    let r = f.commit(inner.obj.as_ref(), &inner.meta, &inner.bugs, now).await;
    let ok = r.is_ok();
    release(inner, holds, ok);
    if ok {
        inner.counters.batches_committed.fetch_add(1, Ordering::SeqCst);
    } else {
        inner.counters.commit_failures.fetch_add(1, Ordering::SeqCst);
    }
    r
}

fn release(inner: &TieredInner, holds: Vec<Hold>, committed: bool) {
    if !committed && inner.bugs.has(Bug::TieredFailedCommitBuffersKept) {
        holds.into_iter().for_each(Hold::leak);
    }
    // Dropping a hold releases it.
}

/// Deletes remote segments past their retention: the metadata first (persisted), then the
/// objects, so a crash between leaves an orphan object, never metadata naming a deleted one
/// in the middle of a queue.
async fn expire_remote(inner: &TieredInner) {
    let Some(retention_ms) = inner.cfg.remote_retention_ms else { return };
    let cutoff_ms = inner.now_ms().saturating_sub(retention_ms as i64);
    for (q, flat) in inner.all_flats() {
        let Ok(mut f) = flat.try_lock() else { continue };
        if !f.recovered {
            continue;
        }
        let first_cl = match super::fetcher::first_cl_offset(inner, &f, cutoff_ms).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(queue = %q, error = %e, "tiered expiry: reading the first unit failed");
                continue;
            }
        };
        let mut meta = inner.meta.lock().await;
        let gone = f.expire(&mut meta, cutoff_ms, first_cl);
        if gone.is_empty() {
            continue;
        }
        if let Err(e) = meta.persist().await {
            tracing::warn!(queue = %q, error = %e, "tiered expiry: metadata not saved");
            continue;
        }
        drop(meta);
        for key in gone {
            match inner.obj.delete(&key).await {
                Ok(()) => {
                    inner.counters.segments_expired.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => tracing::warn!(%key, error = %e, "tiered expiry: delete failed (orphan object left)"),
            }
        }
    }
}
