//! A directory of equal-sized mapped files named by their 20-digit start offset (RocketMQ's
//! `MappedFileQueue`), plus the registry of directories whose entries still need a sync.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Result, StoreError};
use crate::io::{Holds, IoError, PooledBuffer, Storage};
use crate::mapped_file::{parse_file_name, rewrite_range, MappedFile, SyncPlan};

/// Directories with unsynced entries (files created or removed). A flush that makes data
/// durable syncs these too: a synced file whose directory entry is lost is lost.
#[derive(Debug, Default)]
pub struct DirSyncs {
    pending: Mutex<BTreeSet<PathBuf>>,
    /// Held for the whole of a `sync`: see there.
    turn: tokio::sync::Mutex<()>,
    /// The `no-dir-sync` bug: never sync directories.
    disabled: bool,
}

impl DirSyncs {
    pub fn new(disabled: bool) -> DirSyncs {
        DirSyncs { pending: Mutex::new(BTreeSet::new()), turn: tokio::sync::Mutex::new(()), disabled }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mark(&self, dir: &Path) {
        self.pending().insert(dir.to_path_buf());
    }

    pub fn is_empty(&self) -> bool {
        self.pending().is_empty()
    }

    /// Syncs every pending directory. On failure the failed one stays pending. One caller at
    /// a time: a sync takes the whole pending set, so a second caller that did not wait would
    /// find it empty and return at once while the first one's directory syncs are still in
    /// flight, and its caller would then call durable a file whose entry that sync may yet
    /// fail to persist (broker seed 56482: the commit-log flush acknowledged 734 bytes while
    /// the consume-queue flush's sync of the commit-log directory was failing).
    pub async fn sync(&self, storage: &dyn Storage) -> Result<(), IoError> {
        let _turn = self.turn.lock().await;
        if self.disabled {
            self.pending().clear();
            return Ok(());
        }
        let dirs: BTreeSet<PathBuf> = std::mem::take(&mut *self.pending());
        let mut dirs = dirs.into_iter();
        while let Some(dir) = dirs.next() {
            if let Err(e) = storage.sync_dir(&dir).await {
                let mut p = self.pending();
                p.insert(dir);
                p.extend(dirs);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Creates `dir` (and missing parents), marking each parent whose entries changed.
    pub fn ensure_dir(&self, storage: &dyn Storage, dir: &Path) -> Result<(), IoError> {
        if storage.exists(dir) {
            return Ok(());
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.ensure_dir(storage, parent)?;
            storage.create_dir_all(dir)?;
            self.mark(parent);
        } else {
            storage.create_dir_all(dir)?;
        }
        Ok(())
    }
}

/// What `load` found wrong and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadRepairs {
    /// Short files (their length was not durable) extended with zeros.
    pub extended_files: Vec<PathBuf>,
    /// Files after a gap in the offsets or after a short file, removed (they cannot be part of
    /// a valid prefix).
    pub removed_after_gap: Vec<PathBuf>,
}

/// The commit log's spare file, prepared ahead of need (`preallocate_commit_log`),
/// renamed to the next file's name when the log rolls. Only a name in the log's directory:
/// `load` removes it, whatever it holds. It cannot be trusted after a restart: a power loss
/// can undo the rename that took it into use (the directory was not synced yet) and leave
/// unacknowledged records in it under this name.
pub const SPARE_FILE_NAME: &str = "spare";
/// The spare while it is being prepared; renamed to `SPARE_FILE_NAME` once ready.
pub const SPARE_TMP_FILE_NAME: &str = "spare.tmp";
const SPARE_FILE_NAMES: [&str; 2] = [SPARE_FILE_NAME, SPARE_TMP_FILE_NAME];

/// What a truncation did.
#[derive(Debug, Default)]
pub struct Truncation {
    /// Start offsets of the removed files.
    pub removed_files: Vec<u64>,
    /// The zeroed tail of the file the cut fell in, to be synced.
    pub zeroed_tail: Option<SyncPlan>,
}

#[derive(Debug)]
pub struct MappedFileQueue {
    dir: PathBuf,
    file_size: u64,
    files: Vec<MappedFile>,
    holds: Holds,
    dirs: Arc<DirSyncs>,
    /// Every file gets `StorageFile::hint_small_syncs`.
    small_syncs: bool,
}

impl MappedFileQueue {
    pub fn new(dir: PathBuf, file_size: u64, holds: Holds, dirs: Arc<DirSyncs>) -> MappedFileQueue {
        MappedFileQueue { dir, file_size, files: Vec::new(), holds, dirs, small_syncs: false }
    }

    /// Passes `StorageFile::hint_small_syncs` to every file, now and when created.
    pub fn hint_small_syncs(&mut self) {
        self.small_syncs = true;
        for f in &self.files {
            f.file().hint_small_syncs();
        }
    }

    /// Opens every file of `dir` (creating the directory if missing). Files must be
    /// `file_size` long, except that a short file is extended with zeros and ends the queue:
    /// after a power loss the length of every file written since the last sync may be lost
    /// (with small files or a long flush interval, several), while unsynced pages of a later
    /// file may happen to survive with theirs. The missing bytes were never durable, so nothing
    /// after them is part of a valid prefix: the later files are removed, as after a gap. A
    /// file longer than `file_size` is refused.
    pub fn load(
        storage: &dyn Storage,
        dir: PathBuf,
        file_size: u64,
        holds: Holds,
        dirs: Arc<DirSyncs>,
    ) -> Result<(MappedFileQueue, LoadRepairs)> {
        dirs.ensure_dir(storage, &dir)?;
        let mut q = MappedFileQueue::new(dir, file_size, holds, dirs);
        let mut repairs = LoadRepairs::default();
        let mut names = Vec::new();
        for entry in storage.list_dir(&q.dir)? {
            let path = q.dir.join(&entry.name);
            if SPARE_FILE_NAMES.contains(&entry.name.as_str()) && !entry.is_dir {
                // Never data: a spare being prepared, or ready but maybe renamed back by a
                // power loss after it was taken into use (see `SPARE_FILE_NAME`).
                storage.remove_file(&path)?;
                q.dirs.mark(&q.dir);
                continue;
            }
            match parse_file_name(&entry.name) {
                Some(off) if !entry.is_dir && off % file_size == 0 => names.push((off, path)),
                _ => return Err(StoreError::BadFileName { path }),
            }
        }
        names.sort();
        // Set once a short file was extended: it ends the queue.
        let mut ended = false;
        for (off, path) in names {
            let expected = q.files.last().map_or(off, |f| f.end_offset());
            if off != expected || ended {
                storage.remove_file(&path)?;
                q.dirs.mark(&q.dir);
                repairs.removed_after_gap.push(path);
                continue;
            }
            let file = storage.open(&path)?;
            let len = file.len()?;
            if len != file_size {
                if len > file_size {
                    return Err(StoreError::BadFileSize { path, expected_bytes: file_size, actual_bytes: len });
                }
                file.set_len(file_size)?;
                repairs.extended_files.push(path);
                ended = true;
            }
            let name = crate::mapped_file::file_name(off);
            q.files.push(MappedFile::wrap(file, name, off, file_size, q.holds.clone()));
        }
        Ok((q, repairs))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn file_size(&self) -> u64 {
        self.file_size
    }
    pub fn files(&self) -> &[MappedFile] {
        &self.files
    }
    pub fn files_mut(&mut self) -> &mut [MappedFile] {
        &mut self.files
    }
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
    pub fn last(&self) -> Option<&MappedFile> {
        self.files.last()
    }
    pub fn last_mut(&mut self) -> Option<&mut MappedFile> {
        self.files.last_mut()
    }

    /// Offset of the first byte of the first file (0 when empty).
    pub fn min_offset(&self) -> u64 {
        self.files.first().map_or(0, |f| f.from_offset())
    }
    /// Absolute end of what was appended.
    pub fn max_offset(&self) -> u64 {
        self.files.last().map_or(0, |f| f.from_offset() + f.wrote())
    }
    /// Absolute end of what is in the files (readable): the first file with uncommitted
    /// bytes bounds it, as for `flushed_offset`. Not the last file's position: in
    /// transient-pool mode a full file may still hold its tail in the write buffer after the
    /// next file was created, and claiming the next file's start would promise that tail is
    /// in the page cache (a process crash then loses it).
    pub fn max_committed_offset(&self) -> u64 {
        self.contiguous_end(MappedFile::committed)
    }
    /// Absolute end of what is durable (the first file with unsynced bytes bounds it).
    pub fn flushed_offset(&self) -> u64 {
        self.contiguous_end(MappedFile::flushed)
    }
    /// Absolute end of the prefix in which every file has `position` at its size: the first
    /// file short of it bounds the prefix at its position.
    fn contiguous_end(&self, position: impl Fn(&MappedFile) -> u64) -> u64 {
        match self.files.iter().find(|f| position(f) < f.size()) {
            Some(f) => f.from_offset() + position(f),
            None => self.files.last().map_or(0, |f| f.end_offset()),
        }
    }

    /// Rewrites (`mapped_file::rewrite_range`) absolute `[from, to)` across the files.
    pub fn rewrite_range(&self, from: u64, to: u64) -> Result<()> {
        for f in &self.files {
            let (a, b) = (from.max(f.from_offset()), to.min(f.end_offset()));
            if a < b {
                rewrite_range(f.file().as_ref(), a - f.from_offset(), b - f.from_offset())?;
            }
        }
        Ok(())
    }

    /// Index of the file containing absolute `offset`.
    pub fn index_of(&self, offset: u64) -> Option<usize> {
        let first = self.files.first()?.from_offset();
        let i = usize::try_from(offset.checked_sub(first)? / self.file_size).ok()?;
        (i < self.files.len()).then_some(i)
    }

    pub fn find(&self, offset: u64) -> Option<&MappedFile> {
        self.index_of(offset).map(|i| &self.files[i])
    }

    /// Creates the file starting at `from_offset`, which must follow the last one.
    pub fn create_file(
        &mut self,
        storage: &dyn Storage,
        from_offset: u64,
        write_buffer: Option<PooledBuffer>,
    ) -> Result<&mut MappedFile> {
        self.assert_next(from_offset);
        self.dirs.ensure_dir(storage, &self.dir)?;
        let mf = MappedFile::create(storage, &self.dir, from_offset, self.file_size, self.holds.clone(), write_buffer)?;
        Ok(self.push_new(mf))
    }

    /// Makes the file at `spare` (in this directory, zeros, `file_size` long) the next file,
    /// starting at `from_offset`, by renaming it; it is written through `write_buffer`, which
    /// is taken only once nothing can fail any more (on an error the caller still has it for
    /// `create_file`).
    pub fn adopt_spare(
        &mut self,
        storage: &dyn Storage,
        from_offset: u64,
        spare: &Path,
        write_buffer: &mut Option<PooledBuffer>,
    ) -> Result<&mut MappedFile> {
        self.assert_next(from_offset);
        let name = crate::mapped_file::file_name(from_offset);
        let path = self.dir.join(&name);
        storage.rename(spare, &path)?;
        // Before anything written into it is acknowledged, the new name must be durable.
        self.dirs.mark(&self.dir);
        let file = storage.open(&path)?;
        let len = file.len()?;
        if len != self.file_size {
            // A leftover under the next name is replaced by `create_file`.
            return Err(StoreError::BadFileSize { path, expected_bytes: self.file_size, actual_bytes: len });
        }
        let mf = MappedFile::fresh(file, name, from_offset, self.file_size, self.holds.clone(), write_buffer.take());
        Ok(self.push_new(mf))
    }

    fn assert_next(&self, from_offset: u64) {
        let expected = self.files.last().map(|f| f.end_offset());
        assert!(expected.is_none_or(|e| e == from_offset), "files must be contiguous");
        assert_eq!(from_offset % self.file_size, 0, "file offsets are multiples of the file size");
    }

    fn push_new(&mut self, mf: MappedFile) -> &mut MappedFile {
        if self.small_syncs {
            mf.file().hint_small_syncs();
        }
        self.dirs.mark(&self.dir);
        self.files.push(mf);
        self.files.last_mut().expect("just pushed")
    }

    /// Truncates to absolute `offset` (`truncateDirtyFiles`): files wholly after it are
    /// removed, the file containing it gets its positions set there (and, unless `keep_stale`,
    /// its tail zeroed so that stale records cannot come back; the returned plan must be
    /// synced before new data is made durable).
    pub fn truncate_dirty(&mut self, storage: &dyn Storage, offset: u64, keep_stale: bool) -> Result<Truncation> {
        let mut out = Truncation::default();
        while let Some(last) = self.files.last() {
            if last.from_offset() <= offset {
                break;
            }
            out.removed_files.push(last.from_offset());
            let path = last.path_buf();
            self.files.pop();
            storage.remove_file(&path)?;
            self.dirs.mark(&self.dir);
        }
        if let Some(last) = self.files.last_mut() {
            let pos = (offset - last.from_offset()).min(last.size());
            if pos < last.size() && !keep_stale {
                last.zero_tail(pos)?;
                out.zeroed_tail = Some(SyncPlan {
                    file: last.file().clone(),
                    from_offset: last.from_offset(),
                    sync_from: pos,
                    sync_to: last.size(),
                    last_store_ts_ms: 0,
                });
            }
            last.set_positions(pos);
        }
        Ok(out)
    }

    /// Collects the syncs needed to make everything committed durable (one plan per file).
    pub fn sync_plans(&self, least_pages: u64, page: u64) -> Vec<SyncPlan> {
        self.files.iter().filter_map(|f| f.sync_plan(least_pages, page)).collect()
    }

    /// Records a successful sync of a plan.
    pub fn mark_flushed(&mut self, plan: &SyncPlan) {
        if let Some(i) = self.index_of(plan.from_offset) {
            self.files[i].mark_flushed(plan.sync_to);
        }
    }

    /// Removes the first file (expiry, `deleteExpiredFile`): the queue then starts at the
    /// next one. Never the last file. Removing from the head only, one file at a time, leaves
    /// whatever a crash keeps of the directory's entries a prefix removal: no gap.
    pub fn remove_first(&mut self, storage: &dyn Storage) -> Result<()> {
        assert!(self.files.len() > 1, "the last file is never removed from the head");
        storage.remove_file(self.files[0].path())?;
        self.files.remove(0);
        self.dirs.mark(&self.dir);
        Ok(())
    }

    /// Removes every file (`destroyLogics`).
    pub fn destroy(&mut self, storage: &dyn Storage) -> Result<()> {
        while let Some(f) = self.files.pop() {
            storage.remove_file(f.path())?;
            self.dirs.mark(&self.dir);
        }
        Ok(())
    }
}
