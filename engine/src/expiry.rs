//! Expiry of local files (RocketMQ's `CleanCommitLogService` and `CleanConsumeQueueService`):
//! commit-log files whose messages are all older than the retention are deleted from the
//! head of the log, then the consume-queue and index files that only point into them, and
//! each queue's minimum moves to its first unit still in the log (`correctMinOffset`).
//!
//! Deletion goes oldest first, one file at a time, and each removal is a directory entry
//! marked in `DirSyncs`: whatever a crash or power loss keeps of it is a prefix removal,
//! which `load` accepts as a log that starts later.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::commit_log::{read_record, CommitLog, RecordAt};
use crate::config::StoreConfig;
use crate::error::Result;
use crate::io::{Clock, HoldKind, Holds, Storage};
use crate::locks::lock;
use crate::mapped_file::MappedFile;
use crate::mapped_file_queue::DirSyncs;
use crate::message::{DecodeOptions, Decoded};
use crate::parts::{Checkpoint, Logics, Progress, Wakes};

/// What expiry works with, handed over by the store that owns it.
pub(crate) struct Expiry {
    pub cfg: Arc<StoreConfig>,
    pub clock: Arc<dyn Clock>,
    pub storage: Arc<dyn Storage>,
    pub holds: Holds,
    pub dirs: Arc<DirSyncs>,
    pub cl: Arc<Mutex<CommitLog>>,
    pub logics: Arc<Logics>,
    /// Read only: how far the consume-queue units are durable.
    pub ckpt: Arc<Checkpoint>,
    /// Read only: how far dispatch has got.
    pub progress: Arc<Progress>,
    pub wakes: Arc<Wakes>,
}

/// What one expiry pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiryReport {
    pub commit_log_files_deleted: u64,
    pub cq_files_deleted: u64,
    /// Index files whose every key points below the log's new start.
    pub index_files_deleted: u64,
    /// The commit log's first offset after the pass.
    pub new_min_phy_offset: u64,
    /// The expired commit-log file the pass stopped at because it is held (a reader has it).
    pub blocked_by_hold: Option<String>,
}

/// What became of the commit log's first file.
enum Head {
    Deleted,
    Kept,
    /// Expired, but held: the pass stops there.
    Held(String),
}

/// One expiry pass (`Store::delete_expired`). Without a retention it deletes nothing.
pub(crate) fn delete_expired(x: &Expiry) -> Result<ExpiryReport> {
    let mut report = ExpiryReport::default();
    if let Some(retention_ms) = x.cfg.file_retention_ms {
        let cutoff_ms = x.clock.now_ms().saturating_sub(retention_ms as i64);
        loop {
            match expire_head_file(x, cutoff_ms)? {
                Head::Deleted => {
                    crate::probe!("expiry.commit-log-file-deleted");
                    report.commit_log_files_deleted += 1
                }
                Head::Kept => break,
                Head::Held(name) => {
                    tracing::warn!(file = %name, "an expired commit-log file is held; not deleted");
                    crate::probe!("expiry.blocked-by-hold");
                    report.blocked_by_hold = Some(name);
                    break;
                }
            }
        }
    }
    let min_phy = lock(&x.cl).min_offset();
    report.new_min_phy_offset = min_phy;
    if x.cfg.file_retention_ms.is_some() {
        // Also after a pass that deleted no commit-log file: an earlier one may have been
        // cut short (an error, a crash) between the commit log and the queues.
        report.cq_files_deleted = expire_consume_queues(x, min_phy)?;
        report.index_files_deleted = lock(&x.logics.index).expire_below(x.storage.as_ref(), min_phy)?;
    }
    Ok(report)
}

/// Deletes the commit log's first file if it may go: it is not the last file, dispatch has
/// passed it, it is durable and so are the consume-queue units of its messages (a power loss
/// must not take back units a queue's offsets depend on), its newest message is older than
/// `cutoff_ms`, and nobody holds it.
fn expire_head_file(x: &Expiry, cutoff_ms: i64) -> Result<Head> {
    let units_durable_before_ms = lock(&x.ckpt.data).logics_msg_timestamp_ms;
    let mut cl = lock(&x.cl);
    let q = cl.queue();
    let [head, next, ..] = q.files() else { return Ok(Head::Kept) };
    let end = head.end_offset();
    if x.progress.reput_offset.load(Ordering::SeqCst) < end || q.flushed_offset() < end {
        return Ok(Head::Kept);
    }
    // Store timestamps never decrease in log order: the next file's first message is at
    // least as new as every message of this one (reading this file's last one would mean
    // scanning the whole file).
    let Some(newest_bound_ms) = first_store_ts_ms(next, x.cfg.max_message_size_bytes)? else { return Ok(Head::Kept) };
    if newest_bound_ms >= cutoff_ms || newest_bound_ms >= units_durable_before_ms {
        return Ok(Head::Kept);
    }
    if x.holds.count_on(HoldKind::MappedFile, head.name()) > 0 {
        return Ok(Head::Held(head.name().to_string()));
    }
    cl.queue_mut().remove_first(x.storage.as_ref())?;
    Ok(Head::Deleted)
}

/// The store timestamp of a file's first message, if it has a readable one.
fn first_store_ts_ms(f: &MappedFile, max_record_bytes: u64) -> Result<Option<i64>> {
    let opts = DecodeOptions { check_crc: false, max_record_bytes, ..DecodeOptions::default() };
    let rec = read_record(f.file().as_ref(), f.from_offset(), 0, f.committed(), f.size(), opts)?;
    Ok(match rec {
        RecordAt::Decoded(Decoded::Valid(m, _)) => Some(m.store_timestamp_ms),
        _ => None,
    })
}

/// Moves every queue's minimum to `min_phy`, then deletes the queue files wholly below it
/// (a queue's last file stays). The minimum moves first: a reader never sees a minimum
/// below the queue's first file. Returns the files deleted.
fn expire_consume_queues(x: &Expiry, min_phy: u64) -> Result<u64> {
    let st = x.storage.as_ref();
    let mut deleted = 0;
    let mut cqs = lock(&x.logics.cqs);
    for cq in cqs.values_mut() {
        cq.correct_min_offset(min_phy)?;
        while cq.expire_first_file(st, min_phy)? {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Spawns the expiry service: a pass every `expiry_interval_ms`, then the directory syncs
/// that make its removals durable.
pub(crate) fn spawn_expiry(x: &Arc<Expiry>) -> tokio::task::JoinHandle<()> {
    let x = x.clone();
    tokio::spawn(async move {
        let interval = Duration::from_millis(x.cfg.expiry_interval_ms.max(1));
        while !x.wakes.stopping.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(interval, x.wakes.stop.notified()).await;
            if x.wakes.stopping.load(Ordering::SeqCst) {
                break;
            }
            match delete_expired(&x) {
                Ok(r) if r.commit_log_files_deleted + r.cq_files_deleted + r.index_files_deleted > 0 => {
                    tracing::info!(?r, "expired local files");
                    if let Err(e) = x.dirs.sync(x.storage.as_ref()).await {
                        tracing::error!(error = %e, "directory sync after expiry failed");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "expiry failed"),
            }
        }
    })
}
