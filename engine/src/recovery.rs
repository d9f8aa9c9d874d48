//! Start-up (§3.4): load every structure, then recover. Normal recovery (clean shutdown)
//! scans the last three commit-log files; abnormal recovery (abort file present) starts at
//! the newest file whose first message is not newer than the checkpoint, re-dispatches every
//! valid message, and truncates the commit log and consume queues after the first invalid
//! record. Then dispatch catches up from the reput start offset and the topic-queue table is
//! rebuilt from the consume queues.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::bugs::Bug;
use crate::checkpoint::{CheckpointData, CheckpointFile, CheckpointState};
use crate::commit_log::{read_record, read_record_ref, CommitLog, RecordAt};
use crate::config::{FlushMode, StoreConfig};
use crate::dispatch::Reput;
use crate::error::{Result, StoreError};
use crate::index::{IndexLoad, IndexService};
use crate::io::{BufferPool, StorageFile};
use crate::locks::lock;
use crate::mapped_file::SyncPlan;
use crate::message::{CorruptReason, DecodeOptions, Decoded, DecodedRef};
use crate::parts::{CqMap, QueueFiles, StorePaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryKind {
    /// The abort file was absent: the last shutdown was clean (or the store is new).
    #[default]
    Normal,
    /// The abort file was present: the last run crashed.
    Abnormal,
}

/// The checkpoint as found at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointFound {
    Valid,
    #[default]
    Missing,
    /// Bad CRC: treated as no checkpoint.
    Corrupt,
}

/// What the last `open` recovered and truncated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    pub kind: RecoveryKind,
    pub checkpoint: CheckpointFound,
    pub checkpoint_data: crate::checkpoint::CheckpointData,
    /// Start offset of the first commit-log file scanned.
    pub scan_start_offset: u64,
    /// The recovered commit-log end (`processOffset`).
    pub commit_log_end: u64,
    /// Commit-log bytes that were in files after the recovered end (in the cut file and the
    /// removed ones), i.e. what recovery threw away, measured in file space.
    pub commit_log_files_removed: Vec<u64>,
    /// Where the scan stopped and why, if it stopped at an invalid record.
    pub stopped_at: Option<(u64, String)>,
    /// Records skipped instead of truncated (only with the `skip-half-written-record` bug).
    pub skipped_records: Vec<u64>,
    /// Messages dispatched by the abnormal scan.
    pub redispatched_messages: u64,
    /// The commit-log offset the consume queues were truncated to, if they were.
    pub cq_truncated_to: Option<u64>,
    /// Units removed per queue ("topic/queue").
    pub cq_units_removed: BTreeMap<String, u64>,
    /// Index files destroyed (not known durable, unreadable, or beyond the log end).
    pub index_files_destroyed: Vec<String>,
    /// The offset the reput service started from.
    pub reput_from: u64,
    /// Messages dispatched by the catch-up after recovery.
    pub caught_up_messages: u64,
    /// Files repaired while loading (short last files extended, files after a gap removed).
    pub load_repairs: Vec<String>,
}

/// What `load` found, for `recover`.
pub(crate) struct Loaded {
    clean: bool,
    ckpt: CheckpointState,
    index_load: IndexLoad,
    repairs: Vec<String>,
}

/// The structures `load` opened, for the store to put together.
pub(crate) struct LoadedParts {
    pub cl: CommitLog,
    pub cqs: CqMap,
    pub index: IndexService,
    pub ckpt_file: CheckpointFile,
    pub ckpt: CheckpointData,
}

fn load_cqs(files: &QueueFiles, paths: &StorePaths, repairs: &mut Vec<String>) -> Result<CqMap> {
    let storage = files.storage.as_ref();
    files.dirs.ensure_dir(storage, &paths.consume_queue)?;
    let mut map = CqMap::new();
    for topic in storage.list_dir(&paths.consume_queue)? {
        let tdir = paths.consume_queue.join(&topic.name);
        if !topic.is_dir {
            return Err(StoreError::BadFileName { path: tdir });
        }
        for q in storage.list_dir(&tdir)? {
            let qdir = tdir.join(&q.name);
            let id: u32 = match q.name.parse::<u32>() {
                Ok(id) if q.is_dir && q.name == id.to_string() => id,
                _ => return Err(StoreError::BadFileName { path: qdir }),
            };
            let (cq, r) = files.load(&topic.name, id)?;
            repairs.extend(r.extended_files.iter().map(|p| format!("extended {}", p.display())));
            repairs.extend(r.removed_after_gap.iter().map(|p| format!("removed after gap {}", p.display())));
            map.insert((topic.name.clone(), id), cq);
        }
    }
    Ok(map)
}

/// Loads every structure (`DefaultMessageStore.load`). The abort file is created here, before
/// anything is changed, so that a crash during recovery is itself seen as a crash.
pub(crate) fn load(
    cfg: &StoreConfig,
    paths: &StorePaths,
    files: &QueueFiles,
    pool: Option<BufferPool>,
) -> Result<(LoadedParts, Loaded)> {
    let st = files.storage.as_ref();
    let (holds, dirs) = (&files.holds, &files.dirs);
    let clean = !st.exists(&paths.abort);
    if clean {
        st.create(&paths.abort)?;
    }
    // Sync the root even when the abort file was found: it may be the undurable leftover of
    // an earlier `open` that failed before its directory sync (same process, no crash), and
    // a power loss would then lose it although this run crashed after opening.
    dirs.mark(&paths.root);
    let mut repairs = Vec::new();
    let (mut cl, r) = CommitLog::load(
        st,
        paths.commit_log.clone(),
        cfg.commit_log_file_size_bytes,
        holds.clone(),
        dirs.clone(),
        pool,
        cfg.max_message_size_bytes,
        cfg.store_host,
    )?;
    if cfg.flush_mode == FlushMode::Sync {
        cl.queue_mut().hint_small_syncs();
        cl.batch_appends();
    }
    if cfg.preallocate_commit_log {
        cl.use_spares();
    }
    repairs.extend(r.extended_files.iter().map(|p| format!("extended {}", p.display())));
    repairs.extend(r.removed_after_gap.iter().map(|p| format!("removed after gap {}", p.display())));
    let cqs = load_cqs(files, paths, &mut repairs)?;
    let (ckpt_file, ckpt) = CheckpointFile::open(st, &paths.checkpoint)?;
    if ckpt == CheckpointState::Missing {
        dirs.mark(&paths.root);
    }
    let (index, index_load) = IndexService::load(
        st,
        paths.index.clone(),
        cfg.index_max_hash_slots,
        cfg.index_max_items,
        holds.clone(),
        dirs.clone(),
        clean,
        ckpt.data().index_msg_timestamp_ms,
    )?;
    let parts = LoadedParts { cl, cqs, index, ckpt_file, ckpt: ckpt.data() };
    Ok((parts, Loaded { clean, ckpt, index_load, repairs }))
}

/// The result of scanning the commit log.
#[derive(Debug, Default)]
struct Scan {
    end: u64,
    last_store_ts_ms: i64,
    stopped: Option<(u64, CorruptReason)>,
    skipped: Vec<u64>,
    dispatched: u64,
    /// The first valid record stored at or after the checkpoint's commit-log timestamp:
    /// nothing proves it (or anything after it) was ever synced.
    cl_unproven_from: Option<u64>,
    /// Likewise for the consume-queue timestamp and the units of records from here on.
    cq_unproven_from: Option<u64>,
}

/// The checkpoint's proofs of durability: records stored before `physic_ms` were synced,
/// and so were the consume-queue units of records stored before `logics_ms`.
#[derive(Debug, Clone, Copy)]
struct Proven {
    physic_ms: i64,
    logics_ms: i64,
}

type FileRef = (Arc<dyn StorageFile>, u64, u64);

fn cl_files(r: &Reput) -> Vec<FileRef> {
    lock(&r.cl).queue().files().iter().map(|f| (f.file().clone(), f.from_offset(), f.size())).collect()
}

/// Scans from file `start` (`recoverNormally`/`recoverAbnormally`'s loop), dispatching each
/// valid message when `dispatch`.
async fn scan(
    r: &Reput,
    files: &[FileRef],
    start: usize,
    opts: DecodeOptions,
    dispatch: bool,
    proven: Proven,
) -> Result<Scan> {
    let mut s = Scan::default();
    let Some(first) = files.get(start) else { return Ok(s) };
    s.end = first.1;
    let skip_bug = r.cfg.bugs.has(Bug::SkipHalfWrittenRecord);
    let (mut idx, mut pos) = (start, 0u64);
    let mut buf = Vec::new();
    loop {
        let (file, from, size) = &files[idx];
        if pos >= *size {
            // Only damage can end a record exactly at the file end; go on with the next file.
            if idx + 1 < files.len() {
                (idx, pos) = (idx + 1, 0);
                continue;
            }
            s.end = from + size;
            return Ok(s);
        }
        let Some(decoded) = read_record_ref(file.as_ref(), *from, pos, *size, *size, opts, &mut buf)? else {
            unreachable!("a whole file is readable")
        };
        match decoded {
            DecodedRef::Valid(m, size_bytes) => {
                if dispatch {
                    crate::dispatch::dispatch_message(r, &m, size_bytes).await?;
                    s.dispatched += 1;
                }
                s.last_store_ts_ms = s.last_store_ts_ms.max(m.store_timestamp_ms);
                if m.store_timestamp_ms >= proven.physic_ms {
                    s.cl_unproven_from.get_or_insert(from + pos);
                }
                if m.store_timestamp_ms >= proven.logics_ms {
                    s.cq_unproven_from.get_or_insert(from + pos);
                }
                pos += u64::from(size_bytes);
                s.end = from + pos;
            }
            DecodedRef::Blank { .. } => {
                s.end = from + size;
                if idx + 1 < files.len() {
                    (idx, pos) = (idx + 1, 0);
                } else {
                    return Ok(s);
                }
            }
            DecodedRef::Corrupt(c) => {
                let skippable = c.declared_size.filter(|&d| d > 0 && pos + u64::from(d) <= *size);
                if let (true, Some(d)) = (skip_bug, skippable) {
                    s.skipped.push(from + pos);
                    pos += u64::from(d);
                    s.end = from + pos;
                    continue;
                }
                s.end = from + pos;
                s.stopped = Some((from + pos, c.reason));
                return Ok(s);
            }
        }
    }
}

/// `isMappedFileMatchedRecover`: the first record is a message with a non-zero store
/// timestamp not newer than `min_ts`.
fn file_matches(file: &FileRef, min_ts: i64, max_record: u64) -> Result<bool> {
    let opts = DecodeOptions { check_crc: false, max_record_bytes: max_record, ..DecodeOptions::default() };
    let rec = read_record(file.0.as_ref(), file.1, 0, file.2, file.2, opts)?;
    Ok(
        matches!(rec, RecordAt::Decoded(Decoded::Valid(m, _)) if m.store_timestamp_ms != 0 && m.store_timestamp_ms <= min_ts),
    )
}

/// The abnormal scan's first file.
fn abnormal_start(r: &Reput, files: &[FileRef], ckpt: &CheckpointState, index_from: Option<u64>) -> Result<usize> {
    let min_ts = ckpt.data().min_timestamp_ms();
    let mut start = 0;
    for i in (0..files.len()).rev() {
        if file_matches(&files[i], min_ts, r.decode_limit())? {
            crate::probe!("recovery.checkpoint-matched-start");
            start = i;
            break;
        }
    }
    if let Some(phy) = index_from {
        let by_index = lock(&r.cl).queue().index_of(phy).unwrap_or(0);
        if by_index < start {
            crate::probe!("recovery.start-lowered-for-index")
        }
        start = start.min(by_index);
    }
    Ok(start)
}

fn recovery_opts(r: &Reput) -> DecodeOptions {
    DecodeOptions {
        check_crc: r.cfg.check_crc_on_recover && !r.cfg.bugs.has(Bug::NoCrcOnRecovery),
        check_dup_info: false,
        expected_phy_offset: None,
        bytes_left_in_file: None,
        max_record_bytes: r.decode_limit(),
    }
}

/// Runs recovery and the dispatch catch-up (`recover` + the start of `start`).
pub(crate) async fn recover(r: &Reput, loaded: Loaded) -> Result<RecoveryReport> {
    let st = r.files.storage.as_ref();
    let keep_stale = r.cfg.bugs.has(Bug::NoZeroOnTruncate);
    let mut report = RecoveryReport {
        kind: if loaded.clean { RecoveryKind::Normal } else { RecoveryKind::Abnormal },
        checkpoint: match loaded.ckpt {
            CheckpointState::Valid(_) => CheckpointFound::Valid,
            CheckpointState::Missing => CheckpointFound::Missing,
            CheckpointState::Corrupt => CheckpointFound::Corrupt,
        },
        checkpoint_data: loaded.ckpt.data(),
        index_files_destroyed: loaded.index_load.destroyed.clone(),
        load_repairs: loaded.repairs.clone(),
        ..RecoveryReport::default()
    };
    if loaded.clean {
        crate::probe!("recovery.normal")
    } else {
        crate::probe!("recovery.abnormal")
    }
    if report.checkpoint == CheckpointFound::Corrupt {
        crate::probe!("recovery.checkpoint-corrupt")
    }
    if !report.load_repairs.is_empty() {
        crate::probe!("recovery.files-repaired-on-load")
    }
    // After a crash the checkpoint's index timestamp may vouch for more than the kept index
    // files hold (destroyed files, or files destroyed by an earlier open that then failed).
    // What is rebuilt in their place, or appended to the last kept file, is unsynced, so the
    // timestamp falls back to the kept files' end, durably, before anything is rebuilt:
    // otherwise a later abnormal load (after this open fails, or after a power loss) would
    // keep a partial or torn rebuilt file as known durable and append to its broken chains.
    if !loaded.clean {
        let kept_end = lock(&r.logics.index).files().last().map_or(0, |f| f.header().end_timestamp_ms);
        let lowered = {
            let mut c = lock(&r.ckpt.data);
            let lower = c.index_msg_timestamp_ms > kept_end;
            c.index_msg_timestamp_ms = c.index_msg_timestamp_ms.min(kept_end);
            lower
        };
        if lowered {
            crate::probe!("recovery.index-checkpoint-lowered");
            r.ckpt.write(&r.health).await?;
        }
    }
    let mut to_sync: Vec<SyncPlan> = Vec::new();
    // Consume queues first (`recoverConsumeQueue`).
    {
        let mut cqs = lock(&r.logics.cqs);
        for cq in cqs.values_mut() {
            to_sync.extend(cq.recover(st, keep_stale)?);
        }
    }
    // Index files the abnormal load destroyed must be rebuilt from where the kept ones end;
    // so after every crash, not only when this load destroyed some: an earlier open may have
    // destroyed files and failed before rebuilding them.
    let index_from =
        (!loaded.clean && !r.cfg.bugs.has(Bug::DestroyCurrentIndex)).then(|| lock(&r.logics.index).indexed_up_to());
    let files = cl_files(r);
    let opts = recovery_opts(r);
    let c = &report.checkpoint_data;
    let proven = Proven { physic_ms: c.physic_msg_timestamp_ms, logics_ms: c.logics_msg_timestamp_ms };
    let (cl_end, cq_cut, scan) = if loaded.clean {
        let start = files.len().saturating_sub(3);
        report.scan_start_offset = files.get(start).map_or(0, |f| f.1);
        let s = scan(r, &files, start, opts, false, proven).await?;
        (s.end, s.end, s)
    } else {
        let start = abnormal_start(r, &files, &loaded.ckpt, index_from)?;
        report.scan_start_offset = files.get(start).map_or(0, |f| f.1);
        let miswired = r.cfg.bugs.has(Bug::RecoveryCheckFlagMiswired);
        let s = scan(r, &files, start, DecodeOptions { check_dup_info: miswired, ..opts }, true, proven).await?;
        if miswired && matches!(s.stopped, Some((_, CorruptReason::DupInfoMissing))) {
            // The commit log itself is recovered correctly (as DLedger's own recovery would);
            // only the consume-queue cut uses the wrongly failed offset.
            let real = scan(r, &files, start, opts, false, proven).await?;
            (real.end, s.end, Scan { dispatched: s.dispatched, ..real })
        } else {
            (s.end, s.end, s)
        }
    };
    report.commit_log_end = cl_end;
    report.stopped_at = scan.stopped.as_ref().map(|(o, r)| (*o, r.to_string()));
    report.skipped_records = scan.skipped.clone();
    report.redispatched_messages = scan.dispatched;
    if matches!(&scan.stopped, Some((_, r)) if !matches!(r, CorruptReason::BadMagic(0))) {
        crate::probe!("recovery.truncated-at-invalid-record")
    }
    if matches!(scan.stopped, Some((_, CorruptReason::BodyCrcMismatch { .. }))) {
        crate::probe!("recovery.crc-mismatch-found")
    }
    if scan.dispatched > 0 {
        crate::probe!("recovery.consume-queues-rebuilt")
    }
    if !scan.skipped.is_empty() {
        crate::probe!("recovery.records-skipped")
    }
    truncate(r, &mut report, &mut to_sync, cl_end, cq_cut, files.is_empty(), keep_stale)?;
    if !loaded.clean {
        rewrite_unproven(r, &scan, cl_end)?;
        to_sync.extend(recovered_region_plans(r, report.scan_start_offset));
    }
    {
        let mut cl = lock(&r.cl);
        // New messages are stored at or after every checkpoint timestamp: the checkpoint
        // vouches for everything stored before them, and after a crash that cut the log's
        // tail that promise must not extend to messages written after recovery (#678).
        let c = &report.checkpoint_data;
        let floor = scan.last_store_ts_ms.max(c.physic_msg_timestamp_ms).max(c.logics_msg_timestamp_ms);
        cl.set_last_store_ts_ms(floor);
    }
    for p in &to_sync {
        p.file.sync_range(p.sync_from, p.sync_to - p.sync_from).await?;
    }
    r.files.sync_dirs().await?;
    let reput_from = reput_start(r, cl_end, index_from, report.index_files_destroyed.len());
    report.reput_from = reput_from;
    r.progress.reput_offset.store(reput_from, Ordering::SeqCst);
    report.caught_up_messages = crate::dispatch::dispatch_available(r).await?;
    if report.caught_up_messages > 0 {
        crate::probe!("recovery.dispatch-caught-up")
    }
    rebuild_topic_queue_table(r)?;
    Ok(report)
}

/// Rewrites, in place, every recovered byte nothing proves durable, so that the syncs that
/// end recovery really write it. A sync that failed before the crash left its pages clean in
/// the page cache but never written (fsyncgate): the bytes read back fine, a new sync skips
/// them, and a power loss then drops records recovery kept and consumers may have read.
/// Found by the broker scenario (seed 8065: a failed sync, a kill, a recovery, a power loss).
fn rewrite_unproven(r: &Reput, scan: &Scan, cl_end: u64) -> Result<()> {
    if let Some(from) = scan.cl_unproven_from {
        crate::probe!("recovery.unproven-log-rewritten");
        lock(&r.cl).queue().rewrite_range(from, cl_end)?;
    }
    if let Some(from) = scan.cq_unproven_from {
        for cq in lock(&r.logics.cqs).values() {
            cq.rewrite_units_from(from)?;
        }
    }
    Ok(())
}

/// After a crash the recovered files may still hold the dead process's dirty page cache
/// while their positions now say "flushed" (so the flush service would never sync them and
/// the checkpoint would move past them): every commit-log file from the scan start and every
/// consume-queue file is made durable before recovery ends. Found by the broker scenario: a
/// process crash, then a power loss, lost messages `flushed_offset` had reported durable.
fn recovered_region_plans(r: &Reput, scan_start: u64) -> Vec<SyncPlan> {
    let whole = |file: &Arc<dyn StorageFile>, from: u64, size: u64| SyncPlan {
        file: file.clone(),
        from_offset: from,
        sync_from: 0,
        sync_to: size,
        last_store_ts_ms: 0,
    };
    let mut plans: Vec<SyncPlan> =
        cl_files(r).iter().filter(|f| f.1 + f.2 > scan_start).map(|f| whole(&f.0, f.1, f.2)).collect();
    for cq in lock(&r.logics.cqs).values() {
        plans.extend(cq.files().files().iter().map(|f| whole(f.file(), f.from_offset(), f.size())));
    }
    plans
}

/// Cuts the commit log at `cl_end` and the consume queues at `cq_cut`; drops index files
/// that reference the cut-off part.
fn truncate(
    r: &Reput,
    report: &mut RecoveryReport,
    to_sync: &mut Vec<SyncPlan>,
    cl_end: u64,
    cq_cut: u64,
    no_files: bool,
    keep_stale: bool,
) -> Result<()> {
    let st = r.files.storage.as_ref();
    let t = lock(&r.cl).queue_mut().truncate_dirty(st, cl_end, keep_stale)?;
    report.commit_log_files_removed = t.removed_files;
    if !report.commit_log_files_removed.is_empty() {
        crate::probe!("recovery.commit-log-files-removed")
    }
    to_sync.extend(t.zeroed_tail);
    let off_by_one = r.cfg.bugs.has(Bug::CqTruncateOffByOne);
    let mut cqs = lock(&r.logics.cqs);
    for ((topic, q), cq) in cqs.iter_mut() {
        let removed = if no_files {
            let n = cq.max_offset_in_queue();
            cq.destroy(st)?;
            n
        } else if cq.max_physic_offset() > cq_cut || cq_cut < cl_end {
            let (n, z) = cq.truncate_dirty(st, cq_cut, off_by_one, keep_stale)?;
            to_sync.extend(z);
            report.cq_truncated_to = Some(cq_cut);
            if n > 0 {
                crate::probe!("recovery.consume-queue-truncated")
            }
            n
        } else {
            0
        };
        if removed > 0 {
            report.cq_units_removed.insert(format!("{topic}/{q}"), removed);
        }
    }
    drop(cqs);
    let dropped = lock(&r.logics.index).drop_beyond(st, cl_end)?;
    if !dropped.is_empty() {
        crate::probe!("recovery.index-dropped-beyond-log-end")
    }
    report.index_files_destroyed.extend(dropped);
    Ok(())
}

/// The reput start (4.8: the largest consume-queue end, at least the log's first offset),
/// lowered to where the index must be rebuilt from. Under the #8032 mechanism it is the
/// commit-log end (5.x: the confirm offset), so truncated queues are never rebuilt.
fn reput_start(r: &Reput, cl_end: u64, index_from: Option<u64>, index_destroyed: usize) -> u64 {
    if r.cfg.bugs.has(Bug::RecoveryCheckFlagMiswired) {
        return cl_end;
    }
    let max_cq = lock(&r.logics.cqs).values().map(|c| c.max_physic_offset()).max().unwrap_or(0);
    let min_cl = lock(&r.cl).min_offset();
    let mut from = max_cq.max(min_cl).min(cl_end);
    if let Some(i) = index_from {
        from = from.min(i);
    }
    if index_destroyed > 0 && !r.cfg.bugs.has(Bug::DestroyCurrentIndex) {
        crate::probe!("recovery.index-rebuilt");
        from = from.min(lock(&r.logics.index).indexed_up_to()).max(min_cl);
    }
    from
}

/// `recoverTopicQueueTable`: each queue's next offset is its consume queue's end, and its
/// minimum its first unit at or above the commit log's start (`correctMinOffset`: after
/// expiry the log may start later than the queue's first units point).
pub(crate) fn rebuild_topic_queue_table(r: &Reput) -> Result<()> {
    let min_phy = lock(&r.cl).min_offset();
    let mut cqs = lock(&r.logics.cqs);
    if min_phy > 0 {
        // (At 0 every queue's minimum is already its first unit: recovery put it there.)
        for cq in cqs.values_mut() {
            cq.correct_min_offset(min_phy)?;
        }
    }
    let table = cqs.iter().map(|(k, cq)| (k.clone(), cq.max_offset_in_queue())).collect();
    drop(cqs);
    lock(&r.cl).set_topic_queue_table(table);
    Ok(())
}
