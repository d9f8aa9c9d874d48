//! DLedger's entry-level recovery (`DLedgerMmapFileStore.recover`, §3.7): choose the start
//! file, scan entries checking position, size, index and term continuity and the chain CRC,
//! check each entry's index unit and rewrite the index from the first one that disagrees,
//! and cut data and index after the last good entry (zeroing what follows, so that stale
//! entries cannot come back). The committed index comes from the checkpoint, bounded by the
//! recovered log.

use std::sync::Arc;

use crate::io::StorageFile;
use crate::mapped_file::SyncPlan;

use super::checkpoint::CheckpointLoad;
use super::entry::{chain_crc, DecodedEntry, EntryDecodeOptions, EntryHeader};
use super::error::Result;
use super::index_unit::{IndexUnit, INDEX_UNIT_BYTES};
use super::log::{read_entry_at, EntryLog, LogTail};

/// What entry-level recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryRecoveryReport {
    /// Start offset of the first data file scanned.
    pub scan_start_pos: u64,
    /// The recovered end of the data (where the next entry goes, unless it rolls).
    pub end_pos: u64,
    pub first_index: u64,
    pub tail: LogTail,
    /// Where the scan stopped at something other than the log's end, and why.
    pub stopped_at: Option<(u64, String)>,
    /// The first index whose unit disagreed with the data (rewritten from there on).
    pub index_rewritten_from: Option<u64>,
    pub index_units_rewritten: u64,
    /// Start offsets of data files removed because they lay wholly after the cut.
    pub data_files_removed: Vec<u64>,
    pub checkpoint: Option<CheckpointLoad>,
    /// The committed index: the checkpoint's, bounded by the recovered log.
    pub committed_index: Option<u64>,
    /// End of the committed entry (`committedPos`); 0 with nothing committed.
    pub committed_pos: u64,
    /// The checkpoint named a committed index the recovered log does not hold.
    pub checkpoint_ahead_of_log: bool,
}

type FileRef = (Arc<dyn StorageFile>, u64, u64);

/// What is at a position of a data file.
enum At {
    Entry(EntryHeader),
    /// A valid blank: the file's data ends here.
    Blank,
    /// Never written: the log ends here.
    End,
    Bad(String),
}

fn read_at(file: &FileRef, pos: u64, opts: &EntryDecodeOptions, buf: &mut Vec<u8>) -> Result<At> {
    Ok(match read_entry_at(file.0.as_ref(), file.1, file.2, pos, opts, buf)? {
        DecodedEntry::Entry(e) => At::Entry(e.header),
        DecodedEntry::Blank { .. } => At::Blank,
        DecodedEntry::End => At::End,
        DecodedEntry::Corrupt(reason) => At::Bad(reason.to_string()),
    })
}

/// The unit recorded for `index`, if the index files hold a readable one.
fn unit_at(log: &EntryLog, index: u64) -> Result<Option<IndexUnit>> {
    let at = index * INDEX_UNIT_BYTES;
    let Some(f) = log.index.find(at) else { return Ok(None) };
    let mut b = [0u8; INDEX_UNIT_BYTES as usize];
    f.file().read_at(at - f.from_offset(), &mut b)?;
    Ok(IndexUnit::decode(&b))
}

/// The scan's first file: from the third-last backwards, the first whose first entry is
/// whole and agrees with its index unit (the files before it are trusted); the first file
/// if none does.
fn start_file(log: &EntryLog, files: &[FileRef], opts: &EntryDecodeOptions, buf: &mut Vec<u8>) -> Result<usize> {
    for i in (0..files.len().saturating_sub(2)).rev() {
        if let At::Entry(h) = read_at(&files[i], 0, opts, buf)? {
            if unit_at(log, h.index)?.is_some_and(|u| u.matches(&h)) {
                return Ok(i);
            }
        }
    }
    Ok(0)
}

/// Why `h` cannot follow `prev` (the entry before it in the scan).
fn discontinuity(prev: Option<&EntryHeader>, h: &EntryHeader) -> Option<String> {
    match prev {
        Some(p) if h.index != p.index + 1 => Some(format!("index {} after {}", h.index, p.index)),
        Some(p) if h.term < p.term => Some(format!("term {} after {}", h.term, p.term)),
        Some(p) if h.chain_crc != chain_crc(p.chain_crc, h.index, h.term, h.pos, h.channel, h.body_len, h.body_crc) => {
            Some(format!("entry {} breaks the chain CRC", h.index))
        }
        None if h.index == 0 && h.chain_crc != chain_crc(0, 0, h.term, h.pos, h.channel, h.body_len, h.body_crc) => {
            Some("entry 0 breaks the chain CRC".to_string())
        }
        _ => None,
    }
}

/// Recovers `log`'s files in place; returns the report and the syncs that make every
/// recovered byte durable (after a crash the page cache may hold the dead process's writes
/// unsynced, while the positions now call them flushed).
pub(crate) fn recover_entries(
    log: &mut EntryLog,
    ckpt: CheckpointLoad,
) -> Result<(EntryRecoveryReport, Vec<SyncPlan>)> {
    let opts = log.config().decode_options();
    let files = log.data_files();
    let mut buf = Vec::new();
    let start = start_file(log, &files, &opts, &mut buf)?;
    let mut report = EntryRecoveryReport::default();
    report.scan_start_pos = files.get(start).map_or(0, |f| f.1);
    let mut prev: Option<EntryHeader> = None;
    let mut first: Option<u64> = None;
    let mut rewrite: Vec<IndexUnit> = Vec::new();
    let mut end = report.scan_start_pos;
    'files: for (i, file) in files.iter().enumerate().skip(start) {
        let (_, from, size) = *file;
        let mut pos = 0;
        while pos < size {
            match read_at(file, pos, &opts, &mut buf)? {
                At::Entry(h) => {
                    if let Some(why) = discontinuity(prev.as_ref(), &h) {
                        report.stopped_at = Some((from + pos, why));
                        break 'files;
                    }
                    let unit = IndexUnit::of(&h);
                    if rewrite.is_empty() && unit_at(log, h.index)? != Some(unit) {
                        report.index_rewritten_from = Some(h.index);
                    }
                    if report.index_rewritten_from.is_some() {
                        rewrite.push(unit);
                    }
                    first.get_or_insert(h.index);
                    pos += h.size_bytes();
                    end = from + pos;
                    prev = Some(h);
                }
                At::Blank => {
                    // The log ends at the blank unless an entry follows in the next file: a
                    // blank with nothing after it is a roll that never finished (the new
                    // file's creation failed, or its first entry was lost), and the next
                    // entry decides anew whether it fits. Every replica places entries by
                    // that rule from the same prefix; a blank kept here moved this
                    // replica's next entry to the next file and no follower ever agreed on
                    // its position again (dledger seed 461).
                    end = from + pos;
                    if i + 1 == files.len() {
                        break 'files;
                    }
                    continue 'files;
                }
                At::End => break 'files,
                At::Bad(why) => {
                    report.stopped_at = Some((from + pos, why));
                    break 'files;
                }
            }
        }
        // Only damage ends an entry exactly at a file's end (every entry leaves room for a blank).
        report.stopped_at = Some((from + size, "file ends without a blank".to_string()));
        end = from + size;
        break;
    }
    report.end_pos = end;
    report.tail = prev.as_ref().map_or_else(LogTail::default, LogTail::after);
    report.first_index = match (start, first) {
        (0, Some(f)) => f,
        (0, None) => 0,
        _ => first_index_of(&files, &opts, &mut buf)?.unwrap_or(first.unwrap_or(0)),
    };
    let mut syncs = cut(log, &mut report, &rewrite)?;
    commit_from_checkpoint(log, &mut report, ckpt)?;
    syncs.extend(recovered_region(log));
    Ok((report, syncs))
}

/// The index of the log's first entry (in the first data file), if readable.
fn first_index_of(files: &[FileRef], opts: &EntryDecodeOptions, buf: &mut Vec<u8>) -> Result<Option<u64>> {
    Ok(match files.first() {
        Some(f) => match read_at(f, 0, opts, buf)? {
            At::Entry(h) => Some(h.index),
            _ => None,
        },
        None => None,
    })
}

/// Cuts the data at the recovered end and the index after the last entry, then writes the
/// units that disagreed.
fn cut(log: &mut EntryLog, report: &mut EntryRecoveryReport, rewrite: &[IndexUnit]) -> Result<Vec<SyncPlan>> {
    let mut syncs = Vec::new();
    let st = log.storage_arc();
    let t = log.data.truncate_dirty(st.as_ref(), report.end_pos, false)?;
    report.data_files_removed = t.removed_files;
    syncs.extend(t.zeroed_tail);
    let index_cut = report.index_rewritten_from.unwrap_or(report.tail.next_index) * INDEX_UNIT_BYTES;
    let t = log.index.truncate_dirty(st.as_ref(), index_cut, false)?;
    syncs.extend(t.zeroed_tail);
    for u in rewrite {
        log.append_index_unit(u)?;
    }
    report.index_units_rewritten = rewrite.len() as u64;
    Ok(syncs)
}

/// `committedIndex` from the checkpoint, bounded by the recovered log, and its entry's end.
fn commit_from_checkpoint(log: &EntryLog, report: &mut EntryRecoveryReport, ckpt: CheckpointLoad) -> Result<()> {
    let claimed = ckpt.checkpoint().committed_index;
    let last = report.tail.last_index();
    report.checkpoint_ahead_of_log = claimed > last;
    report.committed_index = claimed.min(last).filter(|&c| c >= report.first_index);
    report.committed_pos = match report.committed_index {
        Some(c) => unit_at(log, c)?.map_or(0, |u| u.pos + u64::from(u.size_bytes)),
        None => 0,
    };
    report.checkpoint = Some(ckpt);
    Ok(())
}

/// Every data file and every index file, whole. Not only the files the scan read: a leader
/// that flushes lazily (its followers' copies commit its entries meanwhile) can leave more
/// than the scanned files unsynced when its process dies, and a power loss after this
/// recovery then took entries its checkpoint named committed (dledger seed 2441).
fn recovered_region(log: &EntryLog) -> Vec<SyncPlan> {
    let whole = |f: &crate::mapped_file::MappedFile| SyncPlan {
        file: f.file().clone(),
        from_offset: f.from_offset(),
        sync_from: 0,
        sync_to: f.size(),
        last_store_ts_ms: 0,
    };
    log.data.files().iter().chain(log.index.files().iter()).map(whole).collect()
}
