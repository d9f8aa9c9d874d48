//! One fixed-size file with RocketMQ's three positions: `wrote` (appended), `committed` (in
//! the file's page cache) and `flushed` (durable). Appending directly, the first two are
//! equal; in transient-pool mode appends land in a pooled buffer, and under group commit in a
//! batch, and `commit` copies them into the file. Every read of a file is bracketed by a
//! counted hold (`io::Holds`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::io::{Hold, HoldCounter, HoldKind, Holds, IoError, PooledBuffer, Storage, StorageFile};

/// The 20-digit zero-padded decimal name of a file starting at `offset`.
pub fn file_name(offset: u64) -> String {
    format!("{offset:020}")
}

/// Parses a 20-digit name back to an offset.
pub fn parse_file_name(name: &str) -> Option<u64> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit())).then(|| name.parse().ok()).flatten()
}

/// Ranges are rewritten in chunks of this many bytes.
const REWRITE_CHUNK_BYTES: usize = 64 * 1024;

/// How far ahead of the writer a file's pages are prepared (`StorageFile::prepare_write`).
/// Pages prepared but not yet written are dirty zeros that the kernel's own writeback may
/// write out for nothing (the store's flush syncs only the written range): a few MiB at most.
const PREPARE_AHEAD_BYTES: u64 = 4 << 20;

/// Ranges are prepared in steps of at least this much (or up to the end of the file).
const PREPARE_STEP_BYTES: u64 = 1 << 20;

/// Reads `[from, to)` of `file` and writes the same bytes back: the pages become dirty
/// again, so the next sync writes them even if the page cache held them clean but unwritten.
pub fn rewrite_range(file: &dyn StorageFile, from: u64, to: u64) -> Result<(), IoError> {
    let mut buf = vec![0u8; REWRITE_CHUNK_BYTES];
    let mut at = from;
    while at < to {
        let n = (to - at).min(REWRITE_CHUNK_BYTES as u64) as usize;
        file.read_at(at, &mut buf[..n])?;
        file.write_at(at, &buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// A pending sync of one file range, taken under the owner's lock and awaited outside it.
#[derive(Debug, Clone)]
pub struct SyncPlan {
    pub file: Arc<dyn StorageFile>,
    pub from_offset: u64,
    pub sync_from: u64,
    pub sync_to: u64,
    /// Store timestamp of the last message inside `[0, sync_to)`.
    pub last_store_ts_ms: i64,
}

/// A range of a file to prepare for writing (`StorageFile::prepare_write`).
pub struct PrepareRange {
    pub file: Arc<dyn StorageFile>,
    pub offset: u64,
    pub len: u64,
}

impl PrepareRange {
    pub fn prepare(self) {
        self.file.prepare_write(self.offset, self.len);
    }
}

pub struct MappedFile {
    file: Arc<dyn StorageFile>,
    name: String,
    from_offset: u64,
    size: u64,
    wrote: u64,
    committed: u64,
    flushed: u64,
    write_buffer: Option<PooledBuffer>,
    /// Group commit (sync flush): the appended bytes not yet in the file, from `committed`
    /// (the rest of `[committed, wrote)`, after `fill_to_end`, is zeros the file already
    /// holds). The group's commit writes them at once: one write per group of producers
    /// instead of one per message (the pwrite per message was ~13% of the samples with 64
    /// producers).
    batch: Option<Vec<u8>>,
    last_ts_wrote_ms: i64,
    last_ts_committed_ms: i64,
    /// Pages below this were announced to the storage (`next_range_to_prepare`).
    prepared_to: u64,
    holds: HoldCounter,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("name", &self.name)
            .field("wrote", &self.wrote)
            .field("committed", &self.committed)
            .field("flushed", &self.flushed)
            .finish()
    }
}

impl MappedFile {
    /// Creates `dir/{from_offset}` of `size` bytes (zeros).
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        from_offset: u64,
        size: u64,
        holds: Holds,
        write_buffer: Option<PooledBuffer>,
    ) -> Result<MappedFile> {
        let name = file_name(from_offset);
        let path = dir.join(&name);
        let file = match storage.create(&path) {
            // A leftover of an earlier creation that failed half-way (its `set_len` hit
            // ENOSPC or EIO and its removal failed too): no queue holds it, so it is replaced.
            Err(IoError::AlreadyExists { .. }) => {
                storage.remove_file(&path)?;
                storage.create(&path)?
            }
            r => r?,
        };
        if let Err(e) = file.set_len(size) {
            // Without this the empty file stayed behind and every retry failed with
            // AlreadyExists: a full disk stopped dispatch for good.
            let _ = storage.remove_file(&path);
            return Err(e.into());
        }
        Ok(MappedFile::fresh(file, name, from_offset, size, holds, write_buffer))
    }

    /// Wraps a new file of zeros (just created, or a preallocated spare) to be written from
    /// its start (through `write_buffer` if there is one: transient-pool mode).
    pub fn fresh(
        file: Arc<dyn StorageFile>,
        name: String,
        from_offset: u64,
        size: u64,
        holds: Holds,
        write_buffer: Option<PooledBuffer>,
    ) -> MappedFile {
        let mut mf = MappedFile::wrap(file, name, from_offset, size, holds);
        mf.set_positions(0);
        if let Some(buf) = write_buffer {
            assert_eq!(buf.as_slice().len() as u64, size, "a write buffer is exactly one file long");
            mf.write_buffer = Some(buf);
        }
        mf
    }

    /// Wraps an existing file, initially marked full (RocketMQ's `load`); recovery fixes the
    /// positions.
    pub fn wrap(file: Arc<dyn StorageFile>, name: String, from_offset: u64, size: u64, holds: Holds) -> MappedFile {
        MappedFile {
            file,
            from_offset,
            size,
            wrote: size,
            committed: size,
            flushed: size,
            write_buffer: None,
            batch: None,
            last_ts_wrote_ms: 0,
            last_ts_committed_ms: 0,
            prepared_to: size,
            holds: holds.counter(HoldKind::MappedFile, &name),
            name,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn path(&self) -> &Path {
        self.file.path()
    }
    pub fn path_buf(&self) -> PathBuf {
        self.file.path().to_path_buf()
    }
    pub fn file(&self) -> &Arc<dyn StorageFile> {
        &self.file
    }
    pub fn from_offset(&self) -> u64 {
        self.from_offset
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn wrote(&self) -> u64 {
        self.wrote
    }
    pub fn committed(&self) -> u64 {
        self.committed
    }
    pub fn flushed(&self) -> u64 {
        self.flushed
    }
    pub fn remaining(&self) -> u64 {
        self.size - self.wrote
    }
    pub fn is_full(&self) -> bool {
        self.wrote == self.size
    }
    pub fn has_write_buffer(&self) -> bool {
        self.write_buffer.is_some()
    }
    /// Whether appends wait in a write buffer or a batch for `commit`.
    pub fn has_uncommitted(&self) -> bool {
        self.wrote > self.committed
    }

    /// From now on appends collect in a batch that `commit` writes (group commit). A file
    /// with a pooled write buffer keeps it.
    pub fn batch_appends(&mut self) {
        if self.write_buffer.is_some() || self.batch.is_some() {
            return;
        }
        assert_eq!(self.wrote, self.committed, "{}: appended directly, yet uncommitted", self.name);
        self.batch = Some(Vec::new());
    }
    pub fn end_offset(&self) -> u64 {
        self.from_offset + self.size
    }

    /// A counted hold on this file, for the duration of a read.
    pub fn hold(&self) -> Hold {
        self.holds.acquire()
    }

    /// Sets all three positions (recovery, truncation).
    pub fn set_positions(&mut self, pos: u64) {
        assert!(pos <= self.size, "position {pos} beyond file {} of {} bytes", self.name, self.size);
        self.wrote = pos;
        self.committed = pos;
        self.flushed = pos;
        self.prepared_to = pos;
        if let Some(batch) = &mut self.batch {
            batch.clear();
        }
    }

    /// Appends `data` at `wrote` (into the write buffer or the batch if there is one).
    pub fn append(&mut self, data: &[u8], store_ts_ms: i64) -> Result<()> {
        let end = self.wrote + data.len() as u64;
        assert!(end <= self.size, "append of {} bytes overflows {}", data.len(), self.name);
        match (&mut self.write_buffer, &mut self.batch) {
            (Some(buf), _) => buf.as_mut_slice()[self.wrote as usize..end as usize].copy_from_slice(data),
            (None, Some(batch)) => {
                debug_assert_eq!(self.committed + batch.len() as u64, self.wrote, "a batch holds what is uncommitted");
                batch.extend_from_slice(data);
            }
            (None, None) => {
                self.file.write_at(self.wrote, data)?;
                self.committed = end;
                self.last_ts_committed_ms = store_ts_ms;
            }
        }
        self.wrote = end;
        self.last_ts_wrote_ms = store_ts_ms;
        Ok(())
    }

    /// The next range ahead of the writer to hand to `StorageFile::prepare_write`, taken as
    /// prepared: up to `PREPARE_AHEAD_BYTES` past `wrote`, once a step's worth is due. The
    /// caller prepares it outside its lock, off the writer's path.
    pub fn next_range_to_prepare(&mut self) -> Option<PrepareRange> {
        // A writer that has overtaken the prepared pages faults its own for a step: preparing
        // right where it writes only had the two fault the same pages in, and under a
        // writeback's load neither got ahead again for the rest of the file.
        let behind = self.prepared_to < self.wrote;
        let from = if behind { (self.wrote + PREPARE_STEP_BYTES).min(self.size) } else { self.prepared_to };
        let to = (self.wrote + PREPARE_AHEAD_BYTES).min(self.size);
        if to <= from || (to - from < PREPARE_STEP_BYTES && to < self.size) {
            return None;
        }
        self.prepared_to = to;
        Some(PrepareRange { file: self.file.clone(), offset: from, len: to - from })
    }

    /// Declares the rest of the file written (after an end-of-file blank). A pooled buffer
    /// holds whatever its last file left in it: the rest is zeroed there before `commit`
    /// writes it into the file.
    pub fn fill_to_end(&mut self) {
        if let Some(buf) = &mut self.write_buffer {
            buf.as_mut_slice()[self.wrote as usize..].fill(0);
        }
        self.wrote = self.size;
        if self.write_buffer.is_none() && self.batch.is_none() {
            self.committed = self.size;
        }
    }

    fn pages(pos: u64, page: u64) -> u64 {
        pos / page
    }

    /// Copies written-but-uncommitted bytes from the write buffer into the file, if at least
    /// `least_pages` are pending (0: any). Returns whether anything was committed. A full,
    /// committed file gives its buffer back to the pool.
    pub fn commit(&mut self, least_pages: u64, page: u64) -> Result<bool> {
        if self.batch.is_some() {
            return self.commit_batch();
        }
        let Some(buf) = &self.write_buffer else {
            return Ok(false);
        };
        let able = self.is_full()
            || if least_pages > 0 {
                Self::pages(self.wrote, page) - Self::pages(self.committed, page) >= least_pages
            } else {
                self.wrote > self.committed
            };
        if !able || self.wrote == self.committed {
            self.release_buffer_if_done();
            return Ok(false);
        }
        let (from, to) = (self.committed as usize, self.wrote as usize);
        self.file.write_at(self.committed, &buf.as_slice()[from..to])?;
        self.committed = self.wrote;
        self.last_ts_committed_ms = self.last_ts_wrote_ms;
        self.release_buffer_if_done();
        Ok(true)
    }

    /// Writes the batch into the file. On failure the batch stays, for the next commit.
    fn commit_batch(&mut self) -> Result<bool> {
        let Some(batch) = &mut self.batch else { return Ok(false) };
        if self.wrote == self.committed {
            return Ok(false);
        }
        assert!(self.committed + batch.len() as u64 <= self.wrote, "{}: batch beyond the appended bytes", self.name);
        self.file.write_at(self.committed, batch)?;
        batch.clear();
        self.committed = self.wrote;
        self.last_ts_committed_ms = self.last_ts_wrote_ms;
        Ok(true)
    }

    fn release_buffer_if_done(&mut self) {
        if self.is_full() && self.committed == self.size {
            self.write_buffer = None;
        }
    }

    /// Drops the write buffer (and whatever it held that was not committed).
    pub fn drop_write_buffer(&mut self) {
        self.write_buffer = None;
        self.wrote = self.committed;
    }

    /// The range to sync if at least `least_pages` dirty pages are pending (0: any).
    pub fn sync_plan(&self, least_pages: u64, page: u64) -> Option<SyncPlan> {
        if self.committed <= self.flushed {
            return None;
        }
        let able = self.committed == self.size
            || least_pages == 0
            || Self::pages(self.committed, page) - Self::pages(self.flushed, page) >= least_pages;
        able.then(|| SyncPlan {
            file: self.file.clone(),
            from_offset: self.from_offset,
            sync_from: self.flushed,
            sync_to: self.committed,
            last_store_ts_ms: self.last_ts_committed_ms,
        })
    }

    /// Records a successful sync up to `pos`.
    pub fn mark_flushed(&mut self, pos: u64) {
        if pos > self.flushed && pos <= self.committed {
            self.flushed = pos;
        }
    }

    /// Reads `buf.len()` bytes at `pos` (which must lie below the committed position).
    pub fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        let _hold = self.hold();
        self.file.read_at(pos, buf)?;
        Ok(())
    }

    /// Overwrites `[pos, size)` with zeros so that stale bytes after a truncation point can
    /// never be read back as records.
    ///
    /// Done by shrinking and re-extending the file (the extension reads as zeros), which on a
    /// real disk frees the blocks instead of writing a gigabyte of zeros. The caller must
    /// sync `[pos, size)` before new data after `pos` is made durable.
    pub fn zero_tail(&self, pos: u64) -> Result<()> {
        self.file.set_len(pos)?;
        self.file.set_len(self.size)?;
        Ok(())
    }

    pub fn last_store_ts_wrote_ms(&self) -> i64 {
        self.last_ts_wrote_ms
    }

    pub fn set_last_store_ts_ms(&mut self, ts: i64) {
        self.last_ts_wrote_ms = ts;
        self.last_ts_committed_ms = ts;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::real::RealStorage;

    const MIB: u64 = 1 << 20;

    fn range(mf: &mut MappedFile) -> Option<(u64, u64)> {
        mf.next_range_to_prepare().map(|r| (r.offset / MIB, (r.offset + r.len) / MIB))
    }

    /// A pooled write buffer comes back as its last file left it: what the file declares
    /// written without appending it (the end after a blank) reaches the file as zeros.
    #[test]
    fn a_reused_write_buffer_commits_zeros_after_the_blank() {
        let dir = tempfile::tempdir().unwrap();
        let size = 64 * 1024;
        let pool = crate::io::BufferPool::new("transient", 1, size as usize, Holds::new());
        let mut used = pool.borrow().unwrap();
        used.as_mut_slice().fill(0xEE);
        drop(used);
        let buf = pool.borrow();
        let st = RealStorage::new();
        let mut mf = MappedFile::create(&st, dir.path(), 0, size, Holds::new(), buf).unwrap();
        mf.append(&[1u8; 100], 1).unwrap();
        mf.fill_to_end();
        assert!(mf.commit(0, 4096).unwrap());
        let mut back = vec![0u8; size as usize];
        mf.read(0, &mut back).unwrap();
        assert_eq!(&back[..100], &[1u8; 100][..]);
        assert!(back[100..].iter().all(|&b| b == 0), "stale bytes of the buffer's last file reached this one");
    }

    /// Pages are prepared up to 4 MiB ahead of the writer in steps of at least 1 MiB; a writer
    /// that overtook them is left a step of its own; the end of the file ends the last range.
    #[test]
    fn ranges_to_prepare_stay_ahead_of_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let size = 10 * MIB;
        let mut mf = MappedFile::create(&RealStorage::new(), dir.path(), 0, size, Holds::new(), None).unwrap();
        assert_eq!(range(&mut mf), Some((0, 4)), "a fresh file: its first 4 MiB");
        assert_eq!(range(&mut mf), None, "nothing new is due");
        let chunk = vec![7u8; (MIB / 2) as usize];
        mf.append(&chunk, 1).unwrap();
        assert_eq!(range(&mut mf), None, "less than a step since");
        mf.append(&chunk, 1).unwrap();
        assert_eq!(range(&mut mf), Some((4, 5)), "one step further");
        for _ in 0..10 {
            mf.append(&chunk, 1).unwrap();
        }
        assert_eq!(mf.wrote(), 6 * MIB);
        assert_eq!(range(&mut mf), Some((7, 10)), "overtaken at 5 MiB: a step left to the writer, up to the end");
        assert_eq!(range(&mut mf), None);
    }
}
