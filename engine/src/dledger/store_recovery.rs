//! The store's recovery in DLedger mode (RocketMQ's `DLedgerCommitLog`), run after the
//! entry log's own recovery: the consume queues are rebuilt from the messages inside the
//! entries (a message sits at entry position + 48 and takes the entry's size less 48).
//!
//! - Normal (clean shutdown): the consume queues are cut at the committed position if they
//!   reach past it.
//! - Abnormal (5.2's `dledgerRecoverAbnormally`, with 5.3's fix): from the newest data file
//!   whose first message is not newer than the store checkpoint, every committed message is
//!   checked and dispatched, and the consume queues are cut at where the scan ended.
//!
//! Then dispatch resumes at the committed position (5.x: the confirm offset). Two catalogued
//! bugs live here: #8032, the record check called with the flag that had come to mean "check
//! DUP_INFO" (the first message fails, the cut falls at the start file and takes every unit
//! with it, and dispatch resumes past them), and #9084, the scan's end counted in message
//! sizes without the 48-byte entry header, so the cut falls short and takes the queues' tail.

use std::collections::BTreeMap;

use crate::bugs::{Bug, BugSet};
use crate::consume_queue::ConsumeQueue;
use crate::dispatch::Dispatcher;
use crate::mapped_file::SyncPlan;
use crate::message::{decode_ref, DecodeOptions, DecodedRef, MessageRef};
use crate::message_log::{CqMap, QueueFiles};

use super::entry::{DecodedEntry, EntryDecodeOptions, BLANK_BYTES};
use super::error::{DLedgerError, Result};
use super::log::{read_entry_at, EntryLog};

/// The consume queues by (topic, queue id).
pub type Queues = CqMap;

/// The switches of this path (the catalogued bugs #8032 and #9084; both off is 5.3's fix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreRecoveryBugs {
    /// #8032: the abnormal scan checks DUP_INFO, which no message carries.
    pub check_flag_miswired: bool,
    /// #9084: the abnormal scan adds message sizes without the 48-byte header.
    pub size_without_header: bool,
}

impl StoreRecoveryBugs {
    pub fn from_bugs(bugs: &BugSet) -> StoreRecoveryBugs {
        StoreRecoveryBugs {
            check_flag_miswired: bugs.has(Bug::RecoveryCheckFlagMiswired),
            size_without_header: bugs.has(Bug::DledgerSizeWithoutHeader),
        }
    }
}

/// What the store's DLedger recovery did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreRecoveryReport {
    pub abnormal: bool,
    /// Start of the data file the abnormal scan began in.
    pub scan_start_pos: u64,
    /// Where the scan says the valid data ends (`processOffset`).
    pub process_offset: u64,
    /// Where and why the scan stopped before the committed position.
    pub stopped_at: Option<(u64, String)>,
    pub redispatched_messages: u64,
    /// The offset the consume queues were cut at, if they were.
    pub cq_truncated_to: Option<u64>,
    /// Units removed per queue ("topic/queue").
    pub cq_units_removed: BTreeMap<String, u64>,
    /// Where dispatch resumes: the committed position.
    pub reput_from: u64,
}

/// How a scan over the entries' messages ended.
#[derive(Debug, Default)]
pub struct MessageScan {
    /// The entry position after the last message accepted.
    pub end_pos: u64,
    /// `processOffset`: the file start plus what the scan counted in its last file.
    pub process_offset: u64,
    pub stopped_at: Option<(u64, String)>,
    pub messages: u64,
}

/// Calls `on_message` for each message of the entries in `[from_pos, to_pos)` (`from_pos`
/// an entry's start), stopping at the first entry or message that does not check out.
pub fn scan_messages(
    log: &EntryLog,
    from_pos: u64,
    to_pos: u64,
    opts: DecodeOptions,
    size_without_header: bool,
    mut on_message: impl FnMut(&MessageRef<'_>, u32) -> crate::error::Result<()>,
) -> Result<MessageScan> {
    let entry_opts = EntryDecodeOptions { check_body_crc: opts.check_crc, ..log.config().decode_options() };
    let mut scan = MessageScan { end_pos: from_pos, process_offset: from_pos, ..MessageScan::default() };
    let mut buf = Vec::new();
    let files = log.data_files();
    let Some(first) = files.iter().position(|f| f.1 <= from_pos && from_pos < f.1 + f.2) else { return Ok(scan) };
    let mut counted = from_pos - files[first].1;
    'files: for (file, from, size) in &files[first..] {
        let mut pos = if *from <= from_pos { from_pos - from } else { 0 };
        if *from > from_pos {
            counted = 0;
            scan.process_offset = *from;
        }
        while from + pos < to_pos && pos + BLANK_BYTES <= *size {
            let stop = |why: String| Some((from + pos, why));
            let e = match read_entry_at(file.as_ref(), *from, *size, pos, &entry_opts, &mut buf)? {
                DecodedEntry::Entry(e) => e,
                DecodedEntry::Blank { .. } => continue 'files,
                DecodedEntry::End => break 'files,
                DecodedEntry::Corrupt(reason) => {
                    scan.stopped_at = stop(reason.to_string());
                    break 'files;
                }
            };
            let mo = DecodeOptions { expected_phy_offset: Some(e.header.body_pos()), bytes_left_in_file: None, ..opts };
            let (m, msg_size) = match decode_ref(e.body, &mo) {
                DecodedRef::Valid(m, n) if u64::from(n) == u64::from(e.header.body_len) => (m, n),
                DecodedRef::Valid(_, n) => {
                    scan.stopped_at = stop(format!("message of {n} bytes in a body of {}", e.header.body_len));
                    break 'files;
                }
                DecodedRef::Blank { .. } => {
                    scan.stopped_at = stop("a blank record inside an entry".to_string());
                    break 'files;
                }
                DecodedRef::Corrupt(c) => {
                    scan.stopped_at = stop(c.reason.to_string());
                    break 'files;
                }
            };
            on_message(&m, msg_size).map_err(DLedgerError::from)?;
            scan.messages += 1;
            pos += e.header.size_bytes();
            counted += if size_without_header { u64::from(msg_size) } else { e.header.size_bytes() };
            scan.end_pos = from + pos;
            scan.process_offset = from + counted;
        }
        if from + pos >= to_pos {
            break;
        }
    }
    Ok(scan)
}

/// The newest data file whose first message is stored no later than `min_ts_ms`
/// (`isMmapFileMatchedRecover`); the first file if none is.
fn abnormal_start(log: &EntryLog, min_ts_ms: i64, opts: DecodeOptions) -> Result<u64> {
    let files = log.data_files();
    for (_, from, _) in files.iter().rev() {
        // A scan up to one byte past the file start reads its first entry only.
        let mut first_ts = None;
        scan_messages(log, *from, from + 1, DecodeOptions { check_crc: false, ..opts }, false, |m, _| {
            first_ts.get_or_insert(m.store_timestamp_ms);
            Ok(())
        })?;
        if first_ts.is_some_and(|ts| ts != 0 && ts <= min_ts_ms) {
            return Ok(*from);
        }
    }
    Ok(files.first().map_or(0, |f| f.1))
}

/// The largest commit-log end any queue covers.
fn max_cq_end(queues: &Queues) -> u64 {
    queues.values().map(ConsumeQueue::max_physic_offset).max().unwrap_or(0)
}

/// Cuts every queue reaching `cut` or past it.
fn cut_queues(
    files: &QueueFiles,
    queues: &mut Queues,
    cut: u64,
    report: &mut StoreRecoveryReport,
    syncs: &mut Vec<SyncPlan>,
) -> crate::error::Result<()> {
    if max_cq_end(queues) < cut {
        return Ok(());
    }
    report.cq_truncated_to = Some(cut);
    for ((topic, q), cq) in queues.iter_mut() {
        let (removed, zeroed) = cq.truncate_dirty(files.storage.as_ref(), cut, false, false)?;
        syncs.extend(zeroed);
        if removed > 0 {
            report.cq_units_removed.insert(format!("{topic}/{q}"), removed);
        }
    }
    Ok(())
}

/// The store's recovery over a recovered entry log. `min_ts_ms` is the store checkpoint's
/// minimum timestamp. Returns the report and the consume-queue syncs to make before
/// anything new is made durable.
pub fn recover_store(
    log: &EntryLog,
    files: &QueueFiles,
    queues: &mut Queues,
    clean: bool,
    min_ts_ms: i64,
    opts: DecodeOptions,
    bugs: StoreRecoveryBugs,
) -> Result<(StoreRecoveryReport, Vec<SyncPlan>)> {
    let committed_pos = committed_pos(log)?;
    let mut report = StoreRecoveryReport { abnormal: !clean, reput_from: committed_pos, ..Default::default() };
    let mut syncs = Vec::new();
    if clean {
        report.process_offset = committed_pos;
        cut_queues(files, queues, committed_pos, &mut report, &mut syncs)?;
        return Ok((report, syncs));
    }
    let start = abnormal_start(log, min_ts_ms, opts)?;
    report.scan_start_pos = start;
    let scan_opts = DecodeOptions { check_dup_info: bugs.check_flag_miswired, ..opts };
    // The store's dispatch, without an index (a DLedger replica keeps none).
    let mut d = Dispatcher::new(files, queues, 0);
    let scan = scan_messages(log, start, committed_pos, scan_opts, bugs.size_without_header, |m, n| {
        d.dispatch_unindexed(m, n)
    })?;
    drop(d);
    report.redispatched_messages = scan.messages;
    report.stopped_at = scan.stopped_at;
    report.process_offset = scan.process_offset;
    cut_queues(files, queues, scan.process_offset, &mut report, &mut syncs)?;
    syncs.extend(rewrite_queues(queues)?);
    Ok((report, syncs))
}

/// Rewrites every unit the queues kept and returns the syncs that make them durable. After
/// an abnormal end nothing proves a kept unit durable: a sync that failed before left its
/// page clean in the page cache but never written (fsyncgate), so the unit reads back, the
/// scan's put finds it in place and skips it, no later sync covers it, and a power loss then
/// drops it. Found by the dledger scenario (seed 10018: a failed consume-queue sync, a
/// fail-stop, a reopen, a power loss; the no-op at offset 0 was gone).
fn rewrite_queues(queues: &Queues) -> crate::error::Result<Vec<SyncPlan>> {
    let mut plans = Vec::new();
    for cq in queues.values() {
        let files = cq.files();
        files.rewrite_range(files.min_offset(), files.max_offset())?;
        plans.extend(files.files().iter().filter(|f| f.wrote() > 0).map(|f| SyncPlan {
            file: f.file().clone(),
            from_offset: f.from_offset(),
            sync_from: 0,
            sync_to: f.wrote(),
            last_store_ts_ms: 0,
        }));
    }
    Ok(plans)
}

/// Where the committed entries end (`committedPos`; 0 with none committed).
pub fn committed_pos(log: &EntryLog) -> Result<u64> {
    Ok(match log.committed_index() {
        Some(i) => {
            let u = log.index_unit(i)?;
            u.pos + u64::from(u.size_bytes)
        }
        None => log.data_files().first().map_or(0, |f| f.1),
    })
}
