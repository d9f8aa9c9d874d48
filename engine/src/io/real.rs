//! The production backends: files on a real disk (memmap2 for reads and writes inside a
//! file's mapped length, positional I/O outside it), a local directory as object store, and
//! the system clock (`clock::SystemClock`).
//!
//! Nothing here sleeps, so the same code works under real tokio and inside a simulation test
//! that uses a temporary directory. In the real build, syncs and preallocation run on
//! tokio's blocking pool; in the simulation build (no threads there) syncs run inline.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use memmap2::MmapRaw;

use super::object_store::{validate_key, ObjectError, ObjectStore, TMP_PUT_SUFFIX};
use super::storage::{write_zeros_with, DirEntry, FileLock, IoError, IoOp, Storage, StorageFile};
use super::BoxFuture;

/// Files on the real disk, rooted at nothing in particular: paths are used as given.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealStorage;

impl RealStorage {
    pub fn new() -> RealStorage {
        RealStorage
    }
}

fn err(op: IoOp, path: &Path) -> impl FnOnce(std::io::Error) -> IoError + '_ {
    move |e| IoError::from_std(op, path, &e)
}

impl Storage for RealStorage {
    fn create_dir_all(&self, path: &Path) -> Result<(), IoError> {
        fs::create_dir_all(path).map_err(err(IoOp::Create, path))
    }

    fn create(&self, path: &Path) -> Result<Arc<dyn StorageFile>, IoError> {
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(path).map_err(err(IoOp::Create, path))?;
        Ok(Arc::new(RealFile::new(path, file)?))
    }

    fn open(&self, path: &Path) -> Result<Arc<dyn StorageFile>, IoError> {
        if path.is_dir() {
            return Err(IoError::NotAFile { op: IoOp::Open, path: path.to_path_buf() });
        }
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(err(IoOp::Open, path))?;
        Ok(Arc::new(RealFile::new(path, file)?))
    }

    fn remove_file(&self, path: &Path) -> Result<(), IoError> {
        fs::remove_file(path).map_err(err(IoOp::Remove, path))
    }

    fn remove_dir(&self, path: &Path) -> Result<(), IoError> {
        fs::remove_dir(path).map_err(err(IoOp::Remove, path))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), IoError> {
        fs::rename(from, to).map_err(err(IoOp::Rename, from))
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<DirEntry>, IoError> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(path).map_err(err(IoOp::List, path))? {
            let entry = entry.map_err(err(IoOp::List, path))?;
            let is_dir = entry.file_type().map_err(err(IoOp::List, path))?.is_dir();
            // Names that are not UTF-8 were not written by the engine; list them lossily so
            // that the caller can report them rather than silently skip them.
            entries.push(DirEntry { name: entry.file_name().to_string_lossy().into_owned(), is_dir });
        }
        entries.sort();
        Ok(entries)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn lock(&self, path: &Path) -> Result<FileLock, IoError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(err(IoOp::Lock, path))?;
        match file.try_lock() {
            Ok(()) => Ok(FileLock::new(path.to_path_buf(), Box::new(file))),
            Err(fs::TryLockError::WouldBlock) => Err(IoError::Locked { op: IoOp::Lock, path: path.to_path_buf() }),
            Err(fs::TryLockError::Error(e)) => Err(IoError::from_std(IoOp::Lock, path, &e)),
        }
    }

    fn sync_dir<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<(), IoError>> {
        Box::pin(async move { File::open(path).and_then(|d| d.sync_all()).map_err(err(IoOp::Sync, path)) })
    }
}

/// A real file. While the file has a non-zero length it is memory-mapped over that length;
/// reads and writes inside the mapping are memcpys, outside it positional syscalls (Linux
/// keeps both coherent through the one page cache). `set_len` remaps.
///
/// Reads and writes both take the mapping's lock shared: only `set_len` changes the mapping.
/// With writes taking it exclusively, the commit-log writer waited behind every read of the
/// dispatcher (measured: a sixth of the writer's time). The store never reads bytes while
/// they are being written (readers stay below a file's committed position, and each file has
/// one writer at a time, under the store's locks), so shared access never overlaps.
#[derive(Debug)]
pub struct RealFile {
    path: PathBuf,
    /// Shared so that a blocking-pool thread can sync or preallocate the file.
    file: Arc<File>,
    map: Arc<RwLock<Option<MmapRaw>>>,
    /// Set by `hint_small_syncs`: maps are made without read-ahead.
    small_syncs: AtomicBool,
}

/// No fault read-ahead: the store's files are sparse and written through the map, and with
/// read-ahead (8 MiB on virtio disks) the first write fault zero-fills a large folio.
/// Writeback works in whole folios, so every later small sync rewrote the whole folio around a
/// few new KiB (measured: ~20x the bytes appended written to disk under sync flush). Not for
/// every file: page-by-page faults cost async appends ~30% of their throughput. Only a hint:
/// if the kernel refuses it, nothing is wrong.
fn advise_no_readahead(map: &MmapRaw) {
    let _ = map.advise(memmap2::Advice::Random);
}

impl RealFile {
    fn new(path: &Path, file: File) -> Result<RealFile, IoError> {
        let real = RealFile {
            path: path.to_path_buf(),
            file: Arc::new(file),
            map: Arc::new(RwLock::new(None)),
            small_syncs: AtomicBool::new(false),
        };
        real.remap()?;
        Ok(real)
    }

    fn remap(&self) -> Result<(), IoError> {
        let len = self.file.metadata().map_err(err(IoOp::Metadata, &self.path))?.len();
        let map = if len == 0 {
            None
        } else {
            // The engine is the only writer of its store directory (the lock file enforces
            // it) and never truncates a file below a live mapping without remapping here
            // first, so the mapping stays valid for its lifetime.
            let m = MmapRaw::map_raw(&*self.file).map_err(err(IoOp::Open, &self.path))?;
            if self.small_syncs.load(Ordering::Relaxed) {
                advise_no_readahead(&m);
            }
            Some(m)
        };
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = map;
        Ok(())
    }

    /// Runs `work`, a write that may block for long, on tokio's blocking pool (inline
    /// outside a runtime, and in the simulation build).
    fn on_blocking_pool(
        &self,
        what: &'static str,
        work: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    ) -> BoxFuture<'_, Result<(), IoError>> {
        #[cfg(not(madsim))]
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            return Box::pin(async move {
                match rt.spawn_blocking(work).await {
                    Ok(r) => r.map_err(err(IoOp::Write, &self.path)),
                    Err(e) => Err(IoError::Other {
                        op: IoOp::Write,
                        path: self.path.clone(),
                        message: format!("{what} did not run: {e}"),
                    }),
                }
            });
        }
        let _ = what;
        Box::pin(async move { work().map_err(err(IoOp::Write, &self.path)) })
    }

    fn in_map(map: &Option<MmapRaw>, offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let map = map.as_ref()?;
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        (end <= map.len()).then_some(start..end)
    }
}

impl StorageFile for RealFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let (Some(range), Some(m)) = (Self::in_map(&map, offset, buf.len()), map.as_ref()) {
                // SAFETY: `range` lies inside the mapping, which the read guard keeps alive,
                // and no write overlaps a read (see the type's comment).
                unsafe { std::ptr::copy_nonoverlapping(m.as_ptr().add(range.start), buf.as_mut_ptr(), buf.len()) };
                return Ok(());
            }
        }
        let file_len = self.len()?;
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(IoError::ReadPastEnd { path: self.path.clone(), offset, len, file_len });
        }
        self.file.read_exact_at(buf, offset).map_err(err(IoOp::Read, &self.path))
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        if self.small_syncs.load(Ordering::Relaxed) {
            // A file synced every few KiB is written with pwrite: writeback write-protects the
            // mapped pages it cleans (a TLB shoot-down on every CPU running the process, per
            // sync) and the next mapped write to each faults again. Measured with 64 sync
            // producers, together with syncs off the workers: 102k -> 142k msgs/s.
            return self.file.write_all_at(data, offset).map_err(err(IoOp::Write, &self.path));
        }
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let (Some(range), Some(m)) = (Self::in_map(&map, offset, data.len()), map.as_ref()) {
                // SAFETY: as in `read_at`; the store has one writer per file at a time.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), m.as_mut_ptr().add(range.start), data.len()) };
                return Ok(());
            }
        }
        self.file.write_all_at(data, offset).map_err(err(IoOp::Write, &self.path))
    }

    fn len(&self) -> Result<u64, IoError> {
        Ok(self.file.metadata().map_err(err(IoOp::Metadata, &self.path))?.len())
    }

    fn set_len(&self, len_bytes: u64) -> Result<(), IoError> {
        // Unmap first: truncating below a live mapping turns later accesses into SIGBUS.
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.file.set_len(len_bytes).map_err(err(IoOp::Truncate, &self.path))?;
        self.remap()
    }

    fn sync_range(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), IoError>> {
        // On tokio's blocking pool (as tokio::fs does): a sync blocks for 50–500 µs, and on a
        // worker thread it would stall every task queued there, among them the producers that
        // could append the next group-commit batch while this one syncs.
        #[cfg(not(madsim))]
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (file, map) = (self.file.clone(), self.map.clone());
            return Box::pin(async move {
                match rt.spawn_blocking(move || datasync_range(&file, &map, offset, len)).await {
                    Ok(r) => r.map_err(err(IoOp::Sync, &self.path)),
                    // The pool is shutting down: sync here instead.
                    Err(_) => datasync_range(&self.file, &self.map, offset, len).map_err(err(IoOp::Sync, &self.path)),
                }
            });
        }
        Box::pin(async move { datasync_range(&self.file, &self.map, offset, len).map_err(err(IoOp::Sync, &self.path)) })
    }

    /// Zero-fills with `pwrite` (the file is not written through its mapping: no page faults,
    /// no mapping lock) and syncs, on the blocking pool: it writes the whole file to disk.
    fn preallocate(&self) -> BoxFuture<'_, Result<(), IoError>> {
        let file = self.file.clone();
        self.on_blocking_pool("preallocation", move || {
            write_zeros_with(0, file.metadata()?.len(), |at, zeros| file.write_all_at(zeros, at))?;
            file.sync_data()
        })
    }

    fn reserve_blocks(&self) -> BoxFuture<'_, Result<(), IoError>> {
        let file = self.file.clone();
        self.on_blocking_pool("block reservation", move || {
            use std::os::fd::AsRawFd;
            let len = libc::off_t::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
            // SAFETY: plain syscall on a descriptor `file` keeps open.
            if len > 0 && unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return Err(e);
                }
            }
            Ok(())
        })
    }

    fn hint_small_syncs(&self) {
        self.small_syncs.store(true, Ordering::Relaxed);
        if let Some(m) = self.map.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            advise_no_readahead(m);
        }
    }

    /// Brings the range into memory, on the calling thread (the engine calls it off the
    /// writer's path), so that the writer, holding the commit-log lock, copies into ready
    /// pages instead of faulting on each. A file written through the mapping gets its pages
    /// faulted in writable (`MADV_POPULATE_WRITE`, Linux 5.14): measured with async appends,
    /// the producer's system time fell from 0.32-1.04 to 0.06-0.38 us per message. A file
    /// written with pwrite (or a kernel refusing the advice) gets the range read into the page
    /// cache (the files are sparse: this allocates and zero-fills the pages there). Does
    /// nothing in the simulation build; a refused hint only leaves the writer faulting.
    fn prepare_write(&self, offset: u64, len: u64) {
        #[cfg(not(madsim))]
        {
            let mapped_writes = !self.small_syncs.load(Ordering::Relaxed);
            if !(mapped_writes && populate_writable(&self.map, offset, len)) {
                read_ahead(&self.file, offset, len);
            }
        }
        #[cfg(madsim)]
        let _ = (offset, len);
    }
}

/// Makes `[offset, offset + len)` and the file's length durable. Inside the mapping it is
/// `msync` of the range (Linux: `vfs_fsync_range`, fdatasync restricted to the range, for
/// pages dirtied through the map or by `pwrite` alike); otherwise `fdatasync` of the file.
/// (Not `sync_file_range(2)`, which makes nothing durable.) The range matters under async
/// flush: `fdatasync` also wrote back the pages prepared ahead of the writer (dirty zeros),
/// which write-protected them, so the writer faulted on each of them again. The mapping's
/// read lock, held throughout, keeps it alive and does not stop writers (they take it
/// shared).
fn datasync_range(file: &File, map: &RwLock<Option<MmapRaw>>, offset: u64, len: u64) -> std::io::Result<()> {
    let map = map.read().unwrap_or_else(|e| e.into_inner());
    match (usize::try_from(len).ok().and_then(|len| RealFile::in_map(&map, offset, len)), map.as_ref()) {
        (Some(range), Some(m)) if !range.is_empty() => m.flush_range(range.start, range.len()),
        _ => file.sync_data(),
    }
}

/// Faults `[offset, offset + len)` of the mapping in writable; false if it could not.
#[cfg(not(madsim))]
fn populate_writable(map: &RwLock<Option<MmapRaw>>, offset: u64, len: u64) -> bool {
    // The read lock keeps the mapping alive: `set_len` remaps under the write lock.
    let map = map.read().unwrap_or_else(|e| e.into_inner());
    let Some(range) = RealFile::in_map(&map, offset, usize::try_from(len).unwrap_or(usize::MAX)) else {
        return false;
    };
    let Some(m) = map.as_ref() else { return false };
    m.advise_range(memmap2::Advice::PopulateWrite, range.start, range.len()).is_ok()
}

/// Reads `[offset, offset + len)` into the page cache (`POSIX_FADV_WILLNEED`).
#[cfg(not(madsim))]
fn read_ahead(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else { return };
    // SAFETY: plain syscall on a descriptor the caller keeps open.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), off, len, libc::POSIX_FADV_WILLNEED) };
}

/// A local directory used as an object store: one file per key, appends checked against the
/// expected offset, every mutation fsynced before it is acknowledged.
#[derive(Debug, Clone)]
pub struct LocalObjectStore {
    root: PathBuf,
}

impl LocalObjectStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<LocalObjectStore, ObjectError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| io_err("open", &root.display().to_string(), &e))?;
        Ok(LocalObjectStore { root })
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, ObjectError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn size_now(&self, key: &str) -> Result<u64, ObjectError> {
        let path = self.path_of(key)?;
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(ObjectError::NotFound { key: key.to_string() }),
            // Below an object ("a/b" when "a" is an object) is nothing either, not an I/O error.
            Err(e) if is_missing(&e) => Err(ObjectError::NotFound { key: key.to_string() }),
            Err(e) => Err(io_err("size", key, &e)),
        }
    }

    fn put_now(&self, key: &str, data: &[u8]) -> Result<(), ObjectError> {
        let path = self.path_of(key)?;
        let io = |e: std::io::Error| io_err("put", key, &e);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        // Write aside and rename, so a reader never sees half an object.
        // The suffix is appended, not swapped for the extension: keys "x.log" and "x.idx" must
        // not share a temporary file. `validate_key` keeps user keys from ending with it.
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(TMP_PUT_SUFFIX);
        let tmp = path.with_file_name(tmp_name);
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(data).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)
    }

    fn append_now(&self, key: &str, expected_offset: u64, data: &[u8]) -> Result<u64, ObjectError> {
        let path = self.path_of(key)?;
        let io = |e: std::io::Error| io_err("append", key, &e);
        let actual = match self.size_now(key) {
            Ok(size) => size,
            Err(ObjectError::NotFound { .. }) => 0,
            Err(e) => return Err(e),
        };
        if actual != expected_offset {
            return Err(ObjectError::OffsetMismatch { key: key.to_string(), expected: expected_offset, actual });
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        f.write_all_at(data, expected_offset).map_err(io)?;
        f.sync_data().map_err(io)?;
        Ok(expected_offset + data.len() as u64)
    }

    fn get_now(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, ObjectError> {
        let size = self.size_now(key)?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ObjectError::RangeOutOfBounds { key: key.to_string(), offset, len, size });
        }
        let path = self.path_of(key)?;
        let f = File::open(&path).map_err(|e| io_err("get", key, &e))?;
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        f.read_exact_at(&mut buf, offset).map_err(|e| io_err("get", key, &e))?;
        Ok(Bytes::from(buf))
    }

    fn list_now(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let mut keys = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).map_err(|e| io_err("list", prefix, &e))? {
                let entry = entry.map_err(|e| io_err("list", prefix, &e))?;
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else { continue };
                let key = rel.to_string_lossy().into_owned();
                if !key.ends_with(TMP_PUT_SUFFIX) && key.starts_with(prefix) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn delete_now(&self, key: &str) -> Result<(), ObjectError> {
        let path = self.path_of(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            // No object by that key: missing, below an object, or only a prefix of other keys
            // (a directory here). Deleting a missing object succeeds.
            Err(e) if is_missing(&e) || e.kind() == std::io::ErrorKind::IsADirectory => Ok(()),
            Err(e) => Err(io_err("delete", key, &e)),
        }
    }
}

/// True when the error means "no file at this path", including a path that runs through a file.
fn is_missing(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory)
}

fn io_err(op: &str, key: &str, e: &std::io::Error) -> ObjectError {
    ObjectError::Io { op: op.to_string(), key: key.to_string(), message: e.to_string() }
}

impl ObjectStore for LocalObjectStore {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(async move { self.put_now(key, &data) })
    }

    fn append<'a>(
        &'a self,
        key: &'a str,
        expected_offset: u64,
        data: Bytes,
    ) -> BoxFuture<'a, Result<u64, ObjectError>> {
        Box::pin(async move { self.append_now(key, expected_offset, &data) })
    }

    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFuture<'a, Result<Bytes, ObjectError>> {
        Box::pin(async move { self.get_now(key, offset, len) })
    }

    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, ObjectError>> {
        Box::pin(async move { self.size_now(key) })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, ObjectError>> {
        Box::pin(async move { self.list_now(prefix) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(async move { self.delete_now(key) })
    }
}
