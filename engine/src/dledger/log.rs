//! One replica's DLedger log (`DLedgerMmapFileStore`): data files of entries, the index of
//! 32-byte units, and the checkpoint holding the committed index. The leader appends entries
//! it builds (`append`), a follower the bytes the leader sent (`append_replicated`), and a
//! follower drops an uncommitted suffix that conflicts with its leader (`truncate_from`).
//! Syncs are planned under the owner's lock and awaited outside it (`flush_plan`,
//! `run_flush`, `flushed`), as for the commit log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{Holds, Storage, StorageFile};
use crate::mapped_file::SyncPlan;
use crate::mapped_file_queue::{DirSyncs, MappedFileQueue};

use super::checkpoint::{CheckpointLoad, DLedgerCheckpoint, DLedgerCheckpointFile};
use super::entry::{
    chain_crc, decode_entry, encode_blank, entry_extent, peek_entry, seal_entry, DecodedEntry, EntryCorruptReason,
    EntryDecodeOptions, EntryHeader, BLANK_BYTES, ENTRY_HEADER_BYTES,
};
use super::error::{DLedgerError, Result};
use super::index_unit::{IndexUnit, INDEX_UNIT_BYTES};
use super::recovery::{recover_entries, EntryRecoveryReport};

/// Reads and decodes what lies at `pos` of a data file starting at `from` of `size` bytes:
/// its first 8 bytes say how much more to read. The entry must lie where it says and within
/// the file.
pub fn read_entry_at<'b>(
    file: &dyn StorageFile,
    from: u64,
    size: u64,
    pos: u64,
    opts: &EntryDecodeOptions,
    buf: &'b mut Vec<u8>,
) -> Result<DecodedEntry<'b>> {
    let left = size.saturating_sub(pos);
    if left < BLANK_BYTES {
        return Ok(DecodedEntry::Corrupt(EntryCorruptReason::Truncated { have_bytes: left, need_bytes: BLANK_BYTES }));
    }
    let opts = EntryDecodeOptions { expected_pos: Some(from + pos), bytes_left_in_file: Some(left), ..*opts };
    let mut head = [0u8; BLANK_BYTES as usize];
    file.read_at(pos, &mut head)?;
    let (magic, size_field) = peek_entry(&head).expect("8 bytes");
    let extent = entry_extent(magic, size_field, &opts).unwrap_or(BLANK_BYTES);
    buf.clear();
    buf.resize(extent as usize, 0);
    file.read_at(pos, buf)?;
    Ok(decode_entry(buf, &opts))
}

/// Writes `[from, to)` of `file` back over itself, so that its pages are dirty and the sync
/// that follows writes them. After a failed sync (fsyncgate) the kernel marks the pages it
/// dropped clean: the page cache still shows the entries, a later sync reports success
/// without writing them, and a power loss then takes entries this replica had synced since,
/// and counted for a majority, with them (recovery stops at the first missing one).
fn rewrite_range(file: &dyn StorageFile, from: u64, to: u64) -> Result<()> {
    const CHUNK_BYTES: u64 = 64 * 1024;
    let to = to.min(file.len()?);
    let mut buf = Vec::new();
    let mut at = from;
    while at < to {
        let n = (to - at).min(CHUNK_BYTES);
        buf.resize(n as usize, 0);
        file.read_at(at, &mut buf)?;
        file.write_at(at, &buf)?;
        at += n;
    }
    Ok(())
}

/// Sizes of one replica's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLedgerConfig {
    pub data_file_size_bytes: u64,
    pub index_units_per_file: u64,
    /// The largest entry, header included.
    pub max_entry_bytes: u64,
    pub os_page_size_bytes: u64,
}

impl DLedgerConfig {
    /// Small files, so that simulated runs roll them often.
    pub fn small() -> DLedgerConfig {
        DLedgerConfig {
            data_file_size_bytes: 64 * 1024,
            index_units_per_file: 1024,
            max_entry_bytes: 16 * 1024,
            os_page_size_bytes: 4096,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |s: &str| Err(DLedgerError::Config(s.to_string()));
        if self.max_entry_bytes <= ENTRY_HEADER_BYTES {
            return bad("max_entry_bytes must exceed the 48-byte entry header");
        }
        if self.max_entry_bytes + BLANK_BYTES > self.data_file_size_bytes || self.max_entry_bytes > i32::MAX as u64 {
            return bad("an entry of max_entry_bytes and a blank must fit one data file");
        }
        if self.index_units_per_file == 0 || self.os_page_size_bytes == 0 {
            return bad("index_units_per_file and os_page_size_bytes must be positive");
        }
        Ok(())
    }

    pub fn index_file_size_bytes(&self) -> u64 {
        self.index_units_per_file * INDEX_UNIT_BYTES
    }

    pub(crate) fn decode_options(&self) -> EntryDecodeOptions {
        EntryDecodeOptions { max_entry_bytes: self.max_entry_bytes, ..EntryDecodeOptions::default() }
    }
}

/// A replica's directories under the store root: `dledger-{self_id}/{data,index,checkpoint}`.
#[derive(Debug, Clone)]
pub struct DLedgerPaths {
    pub root: PathBuf,
    pub data: PathBuf,
    pub index: PathBuf,
    pub checkpoint: PathBuf,
    pub term: PathBuf,
}

impl DLedgerPaths {
    pub fn new(store_root: &Path, self_id: &str) -> DLedgerPaths {
        let root = store_root.join(format!("dledger-{self_id}"));
        DLedgerPaths {
            data: root.join("data"),
            index: root.join("index"),
            checkpoint: root.join("checkpoint"),
            term: root.join("currterm"),
            root,
        }
    }
}

/// Where the log ends: what the next entry continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogTail {
    /// The index the next entry gets (the last entry's + 1; the first index when empty).
    pub next_index: u64,
    /// The last entry's term (0 when empty).
    pub last_term: u64,
    /// The last entry's chain CRC (0 when empty): the next entry's `prev`.
    pub last_chain_crc: u32,
}

impl LogTail {
    pub fn after(h: &EntryHeader) -> LogTail {
        LogTail { next_index: h.index + 1, last_term: h.term, last_chain_crc: h.chain_crc }
    }

    pub fn last_index(&self) -> Option<u64> {
        self.next_index.checked_sub(1)
    }
}

/// Syncs that make the log durable up to `next_index` (exclusive), taken under the lock.
#[derive(Debug)]
pub struct FlushPlan {
    pub syncs: Vec<SyncPlan>,
    pub next_index: u64,
    /// The log's truncation count when the plan was taken.
    truncations: u64,
    /// How many of `syncs`, first, are zeroed truncation tails.
    tails: usize,
}

/// One replica's log.
#[derive(Debug)]
pub struct EntryLog {
    cfg: DLedgerConfig,
    paths: DLedgerPaths,
    storage: Arc<dyn Storage>,
    dirs: Arc<DirSyncs>,
    pub(crate) data: MappedFileQueue,
    pub(crate) index: MappedFileQueue,
    first_index: u64,
    tail: LogTail,
    /// Entries below this index are durable.
    durable_next_index: u64,
    committed: Option<u64>,
    ckpt: DLedgerCheckpointFile,
    /// Zeroed tails left by truncations: synced by the next flush, before anything after them.
    pending_syncs: Vec<SyncPlan>,
    /// Truncations so far: a flush planned before one says nothing of the entries after it.
    truncations: u64,
    /// Set by a failed write: what the files hold no longer matches the tail, so no more
    /// appends until recovery.
    failed: Option<String>,
    /// The leader's entry buffer, reused so that an append does not allocate.
    buf: Vec<u8>,
}

impl EntryLog {
    /// Opens (creating if missing) and recovers a replica's log (§3.7). Every recovered byte
    /// is durable when this returns: the recovered files are written back and synced, since
    /// the page cache may show bytes a failed sync never wrote (`rewrite_range`).
    pub async fn open(
        storage: Arc<dyn Storage>,
        paths: DLedgerPaths,
        cfg: DLedgerConfig,
        holds: Holds,
        dirs: Arc<DirSyncs>,
    ) -> Result<(EntryLog, EntryRecoveryReport)> {
        cfg.validate()?;
        let st = storage.as_ref();
        dirs.ensure_dir(st, &paths.root)?;
        let (data, _) =
            MappedFileQueue::load(st, paths.data.clone(), cfg.data_file_size_bytes, holds.clone(), dirs.clone())?;
        let (index, _) =
            MappedFileQueue::load(st, paths.index.clone(), cfg.index_file_size_bytes(), holds, dirs.clone())?;
        let (ckpt, ckpt_load) = DLedgerCheckpointFile::open(st, &paths.checkpoint)?;
        if ckpt_load == CheckpointLoad::Missing {
            dirs.mark(&paths.root);
        }
        let mut log = EntryLog {
            cfg,
            paths,
            storage,
            dirs,
            data,
            index,
            first_index: 0,
            tail: LogTail::default(),
            durable_next_index: 0,
            committed: None,
            ckpt,
            pending_syncs: Vec::new(),
            truncations: 0,
            failed: None,
            buf: Vec::new(),
        };
        let (report, syncs) = recover_entries(&mut log, ckpt_load)?;
        log.first_index = report.first_index;
        log.tail = report.tail;
        log.durable_next_index = report.tail.next_index;
        log.committed = report.committed_index;
        for p in syncs {
            rewrite_range(p.file.as_ref(), p.sync_from, p.sync_to)?;
            p.file.sync_range(p.sync_from, p.sync_to - p.sync_from).await?;
        }
        // Directory syncs pending in a boot that failed are not remembered by this one: the
        // entries of the files recovered here may never have been synced.
        for dir in [&log.paths.root, &log.paths.data, &log.paths.index] {
            log.dirs.mark(dir);
        }
        if let Some(parent) = log.paths.root.parent() {
            log.dirs.mark(parent);
        }
        log.dirs.sync(log.storage.as_ref()).await?;
        Ok((log, report))
    }

    pub fn config(&self) -> &DLedgerConfig {
        &self.cfg
    }
    pub fn paths(&self) -> &DLedgerPaths {
        &self.paths
    }
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }
    pub fn storage_arc(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }
    pub fn tail(&self) -> LogTail {
        self.tail
    }
    pub fn first_index(&self) -> u64 {
        self.first_index
    }
    /// The position the next entry is written at, unless it must roll to a new file.
    pub fn end_pos(&self) -> u64 {
        self.data.max_offset()
    }
    pub fn committed_index(&self) -> Option<u64> {
        self.committed
    }
    /// Entries below this index are durable on this replica.
    pub fn durable_next_index(&self) -> u64 {
        self.durable_next_index
    }
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn check_writeable(&self) -> Result<()> {
        match &self.failed {
            Some(reason) => Err(DLedgerError::Discontinuous {
                index: self.tail.next_index,
                term: self.tail.last_term,
                pos: self.end_pos(),
                reason: format!("the log failed a write and awaits recovery: {reason}"),
            }),
            None => Ok(()),
        }
    }

    fn check_size(&self, size_bytes: u64) -> Result<()> {
        if size_bytes > self.cfg.max_entry_bytes {
            return Err(DLedgerError::EntryTooLarge { size_bytes, limit_bytes: self.cfg.max_entry_bytes });
        }
        Ok(())
    }

    /// Makes room for an entry of `size_bytes` in the last data file: if it does not fit
    /// with room for a blank after it, the file is ended by a blank and the next created.
    fn roll_if_needed(&mut self, size_bytes: u64) -> Result<()> {
        if self.data.last().is_some_and(|f| f.remaining() >= size_bytes + BLANK_BYTES) {
            return Ok(());
        }
        let next_from = match self.data.last_mut() {
            Some(f) => {
                let left = f.remaining();
                if left > 0 {
                    debug_assert!(left >= BLANK_BYTES, "every entry leaves room for a blank");
                    f.append(&encode_blank(left), 0)?;
                    f.fill_to_end();
                }
                f.end_offset()
            }
            None => 0,
        };
        self.data.create_file(self.storage.as_ref(), next_from, None)?;
        Ok(())
    }

    /// Appends the index unit of `h` at `h.index * 32`, creating the index file it falls in.
    pub(crate) fn append_index_unit(&mut self, unit: &IndexUnit) -> Result<()> {
        let at = unit.index * INDEX_UNIT_BYTES;
        if self.index.last().is_none_or(|f| f.end_offset() <= at) {
            let size = self.cfg.index_file_size_bytes();
            let from = self.index.last().map_or(at / size * size, |f| f.end_offset());
            self.index.create_file(self.storage.as_ref(), from, None)?;
        }
        let f = self.index.last_mut().expect("just ensured");
        if f.from_offset() + f.wrote() != at {
            // Index files that end short of the data (lost, or cut by damage) cannot take
            // this unit in order.
            return Err(DLedgerError::BadIndexUnit { index: unit.index });
        }
        f.append(&unit.encode(), 0)?;
        Ok(())
    }

    /// Writes a sealed entry at the end of the last data file and its index unit.
    fn write_entry(&mut self, bytes: &[u8], h: &EntryHeader) -> Result<()> {
        let f = self.data.last_mut().expect("rolled before writing");
        debug_assert_eq!(f.from_offset() + f.wrote(), h.pos);
        let written =
            f.append(bytes, 0).map_err(DLedgerError::from).and_then(|()| self.append_index_unit(&IndexUnit::of(h)));
        if let Err(e) = &written {
            self.failed.get_or_insert_with(|| e.to_string());
        }
        written?;
        self.tail = LogTail::after(h);
        Ok(())
    }

    /// The leader's append: an entry of `term` whose body (`body_len` bytes) `fill_body`
    /// appends to the buffer it is given, knowing the body's position (the record's
    /// PHYSICALOFFSET).
    pub fn append(
        &mut self,
        term: u64,
        body_len: u64,
        fill_body: impl FnOnce(u64, &mut Vec<u8>),
    ) -> Result<EntryHeader> {
        self.check_writeable()?;
        let size = ENTRY_HEADER_BYTES + body_len;
        self.check_size(size)?;
        if term < self.tail.last_term {
            return Err(DLedgerError::Discontinuous {
                index: self.tail.next_index,
                term,
                pos: self.end_pos(),
                reason: format!("term below the last entry's {}", self.tail.last_term),
            });
        }
        self.roll_if_needed(size)?;
        let pos = self.end_pos();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(ENTRY_HEADER_BYTES as usize, 0);
        fill_body(pos + ENTRY_HEADER_BYTES, &mut buf);
        assert_eq!(buf.len() as u64, size, "the body is as long as announced");
        let h = seal_entry(&mut buf, self.tail.next_index, term, pos, self.tail.last_chain_crc);
        let written = self.write_entry(&buf, &h);
        self.buf = buf;
        written.map(|()| h)
    }

    /// A follower's append of an entry as the leader encoded it: it must continue this log
    /// (next index, term not below the last, chain CRC over this log's last entry, and the
    /// position this log's own rolling gives it).
    pub fn append_replicated(&mut self, bytes: &[u8]) -> Result<EntryHeader> {
        self.check_writeable()?;
        let h = match decode_entry(bytes, &self.cfg.decode_options()) {
            DecodedEntry::Entry(e) if e.bytes.len() == bytes.len() => e.header,
            DecodedEntry::Corrupt(reason) => return Err(DLedgerError::CorruptEntry { pos: self.end_pos(), reason }),
            other => {
                return Err(DLedgerError::Discontinuous {
                    index: self.tail.next_index,
                    term: 0,
                    pos: self.end_pos(),
                    reason: format!("not one whole entry: {other:?}"),
                })
            }
        };
        let disc = |reason: String| DLedgerError::Discontinuous { index: h.index, term: h.term, pos: h.pos, reason };
        if h.index != self.tail.next_index {
            return Err(disc(format!("the log's next index is {}", self.tail.next_index)));
        }
        if h.term < self.tail.last_term {
            return Err(disc(format!("term below the last entry's {}", self.tail.last_term)));
        }
        let chain = chain_crc(self.tail.last_chain_crc, h.index, h.term, h.pos, h.channel, h.body_len, h.body_crc);
        if chain != h.chain_crc {
            return Err(disc("chain CRC does not follow the log's last entry".to_string()));
        }
        self.roll_if_needed(h.size_bytes())?;
        if h.pos != self.end_pos() {
            return Err(disc(format!("this log places it at {}", self.end_pos())));
        }
        self.write_entry(bytes, &h)?;
        Ok(h)
    }

    /// The index unit of entry `index` (which must be in the log).
    pub fn index_unit(&self, index: u64) -> Result<IndexUnit> {
        if index < self.first_index || index >= self.tail.next_index {
            return Err(DLedgerError::NoSuchEntry { index, first: self.first_index, next: self.tail.next_index });
        }
        let at = index * INDEX_UNIT_BYTES;
        let f = self.index.find(at).ok_or(DLedgerError::BadIndexUnit { index })?;
        let mut b = [0u8; INDEX_UNIT_BYTES as usize];
        f.read(at - f.from_offset(), &mut b)?;
        IndexUnit::decode(&b).filter(|u| u.index == index).ok_or(DLedgerError::BadIndexUnit { index })
    }

    /// The term of entry `index`; `None` before the first entry (Raft's index 0, term 0).
    pub fn term_at(&self, index: Option<u64>) -> Result<u64> {
        match index {
            None => Ok(0),
            Some(i) if Some(i) == self.tail.last_index() => Ok(self.tail.last_term),
            Some(i) => Ok(self.index_unit(i)?.term),
        }
    }

    /// Reads entry `index` whole into `out` (cleared first) and returns its header.
    pub fn read_entry(&self, index: u64, out: &mut Vec<u8>) -> Result<EntryHeader> {
        let u = self.index_unit(index)?;
        let f = self.data.find(u.pos).ok_or(DLedgerError::BadIndexUnit { index })?;
        let in_file = u.pos - f.from_offset();
        if in_file + u64::from(u.size_bytes) > f.size() {
            return Err(DLedgerError::BadIndexUnit { index });
        }
        out.clear();
        out.resize(u.size_bytes as usize, 0);
        f.read(in_file, out)?;
        let opts = EntryDecodeOptions {
            expected_pos: Some(u.pos),
            bytes_left_in_file: Some(f.size() - in_file),
            ..self.cfg.decode_options()
        };
        match decode_entry(out, &opts) {
            DecodedEntry::Entry(e) if u.matches(&e.header) => Ok(e.header),
            DecodedEntry::Corrupt(reason) => Err(DLedgerError::CorruptEntry { pos: u.pos, reason }),
            _ => Err(DLedgerError::BadIndexUnit { index }),
        }
    }

    /// Drops entries from `from_index` on (a follower's uncommitted suffix that conflicts
    /// with its leader). Committed entries are never dropped unless `allow_committed` (a new
    /// leader's own uncommitted suffix in tests, or `Bug::DledgerFollowerTruncatesCommitted`).
    pub fn truncate_from(&mut self, from_index: u64, allow_committed: bool) -> Result<()> {
        if from_index >= self.tail.next_index {
            return Ok(());
        }
        if let Some(c) = self.committed.filter(|&c| from_index <= c && !allow_committed) {
            return Err(DLedgerError::TruncatesCommitted { from_index, committed: c });
        }
        let prev = match from_index.checked_sub(1).filter(|&p| p >= self.first_index) {
            Some(p) => Some(self.read_entry(p, &mut Vec::new())?),
            None => None,
        };
        // Cut right after the entry kept, not at the first entry dropped: a blank between
        // them (the dropped entry rolled to a new file) goes too, so the next entry decides
        // anew whether it fits, as the new leader did.
        let pos = match &prev {
            Some(p) => p.pos + p.size_bytes(),
            None => self.index_unit(from_index)?.pos,
        };
        let st = self.storage.as_ref();
        let t = self.data.truncate_dirty(st, pos, false)?;
        self.pending_syncs.extend(t.zeroed_tail);
        let t = self.index.truncate_dirty(st, from_index * INDEX_UNIT_BYTES, false)?;
        self.pending_syncs.extend(t.zeroed_tail);
        self.tail = prev.as_ref().map_or(LogTail { next_index: from_index, ..LogTail::default() }, LogTail::after);
        self.durable_next_index = self.durable_next_index.min(from_index);
        self.truncations += 1;
        self.committed = self.committed.map(|c| c.min(from_index.saturating_sub(1))).filter(|_| from_index > 0);
        Ok(())
    }

    /// Records that entries up to `index` are committed (never moves back).
    pub fn set_committed(&mut self, index: u64) {
        assert!(index < self.tail.next_index, "commit of entry {index} beyond the log's end");
        if self.committed.is_none_or(|c| c < index) {
            self.committed = Some(index);
        }
    }

    /// The syncs making everything appended durable (zeroed truncation tails first).
    pub fn flush_plan(&mut self) -> FlushPlan {
        let page = self.cfg.os_page_size_bytes;
        let mut syncs = std::mem::take(&mut self.pending_syncs);
        let tails = syncs.len();
        syncs.extend(self.data.sync_plans(0, page));
        syncs.extend(self.index.sync_plans(0, page));
        FlushPlan { syncs, next_index: self.tail.next_index, truncations: self.truncations, tails }
    }

    /// Awaits a plan's syncs (outside the owner's lock) and the directory entries.
    pub async fn run_flush(storage: &dyn Storage, dirs: &DirSyncs, plan: &FlushPlan) -> Result<()> {
        for p in &plan.syncs {
            p.file.sync_range(p.sync_from, p.sync_to - p.sync_from).await?;
        }
        dirs.sync(storage).await?;
        Ok(())
    }

    /// `run_flush` with the data and index files synced at once (after the zeroed truncation
    /// tails, in order): one sync's wait instead of two in an append's path, for a real disk
    /// that overlaps them.
    pub async fn run_flush_overlapped(storage: &dyn Storage, dirs: &DirSyncs, plan: &FlushPlan) -> Result<()> {
        let (tails, rest) = plan.syncs.split_at(plan.tails);
        for p in tails {
            p.file.sync_range(p.sync_from, p.sync_to - p.sync_from).await?;
        }
        futures::future::try_join_all(rest.iter().map(|p| p.file.sync_range(p.sync_from, p.sync_to - p.sync_from)))
            .await?;
        dirs.sync(storage).await?;
        Ok(())
    }

    /// Records a successful `run_flush` of `plan`. After a truncation since the plan was
    /// taken, the entries appended since are not covered by it: durability does not move.
    pub fn flushed(&mut self, plan: &FlushPlan) {
        for p in &plan.syncs {
            if p.file.path().starts_with(&self.paths.data) {
                self.data.mark_flushed(p);
            } else {
                self.index.mark_flushed(p);
            }
        }
        if plan.truncations == self.truncations {
            self.durable_next_index = self.durable_next_index.max(plan.next_index.min(self.tail.next_index));
        }
    }

    pub fn dirs(&self) -> &Arc<DirSyncs> {
        &self.dirs
    }

    /// The checkpoint to write now: the committed index, never past what is durable here
    /// unless `ahead_of_durable` (`Bug::DledgerCommitBeforeDurable`).
    pub fn checkpoint(&self, ahead_of_durable: bool) -> (DLedgerCheckpointFile, DLedgerCheckpoint) {
        let durable_last = self.durable_next_index.checked_sub(1);
        let committed = if ahead_of_durable { self.committed } else { self.committed.min(durable_last) };
        (self.ckpt.clone(), DLedgerCheckpoint { committed_index: committed, end_index: self.tail.last_index() })
    }

    /// The data files, for scans: (file, start offset, size).
    pub fn data_files(&self) -> Vec<(Arc<dyn StorageFile>, u64, u64)> {
        self.data.files().iter().map(|f| (f.file().clone(), f.from_offset(), f.size())).collect()
    }
}
