//! The storage seam: directories and files with positional reads and writes that land in
//! the page cache, and asynchronous syncs that make them durable.
//!
//! Semantics every backend keeps (checked by the conformance suite in `sim/tests`):
//! - `write_at` is synchronous and visible to every later `read_at` of the same path, but
//!   durable only after a `sync_range` covering it returns `Ok`.
//! - Writing past the end extends the file; the gap reads as zeros.
//! - `read_at` fills the whole buffer or fails with `ReadPastEnd`; it never returns short.
//! - Namespace changes (create, rename, remove) are durable only after `sync_dir` of the
//!   parent directory.
//! - A failed sync may have dropped the dirty pages it covered (Linux): the caller must treat
//!   the data as possibly lost, not retry and assume success.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::BoxFuture;

/// The operation that failed, for error messages and fault targeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IoOp {
    Read,
    Write,
    Sync,
    Create,
    Open,
    Remove,
    Rename,
    List,
    Truncate,
    Lock,
    Metadata,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Typed storage errors. Backends map their native errors onto these so that the engine and
/// the checkers can tell "the disk failed" from "the caller asked for something absurd".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    #[error("{op}: not found: {}", path.display())]
    NotFound { op: IoOp, path: PathBuf },
    #[error("{op}: already exists: {}", path.display())]
    AlreadyExists { op: IoOp, path: PathBuf },
    #[error("read past end of {}: offset {offset} + {len} bytes > length {file_len}", path.display())]
    ReadPastEnd { path: PathBuf, offset: u64, len: u64, file_len: u64 },
    #[error("{op}: I/O error (EIO) on {}", path.display())]
    Eio { op: IoOp, path: PathBuf },
    #[error("{op}: no space left on device (ENOSPC) for {}", path.display())]
    NoSpace { op: IoOp, path: PathBuf },
    #[error("{op}: {} is locked by another store", path.display())]
    Locked { op: IoOp, path: PathBuf },
    #[error("{op}: {} is a directory, or a directory is not empty", path.display())]
    NotAFile { op: IoOp, path: PathBuf },
    #[error("{op}: handle to {} is stale: the process that opened it crashed", path.display())]
    StaleHandle { op: IoOp, path: PathBuf },
    #[error("{op}: {} : {message}", path.display())]
    Other { op: IoOp, path: PathBuf, message: String },
}

impl IoError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            IoError::NotFound { path, .. }
            | IoError::AlreadyExists { path, .. }
            | IoError::ReadPastEnd { path, .. }
            | IoError::Eio { path, .. }
            | IoError::NoSpace { path, .. }
            | IoError::Locked { path, .. }
            | IoError::NotAFile { path, .. }
            | IoError::StaleHandle { path, .. }
            | IoError::Other { path, .. } => path,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, IoError::NotFound { .. })
    }

    /// Maps a std error onto the typed error. Used by the real backends.
    pub fn from_std(op: IoOp, path: &Path, err: &std::io::Error) -> IoError {
        let path = path.to_path_buf();
        match err.kind() {
            std::io::ErrorKind::NotFound => IoError::NotFound { op, path },
            std::io::ErrorKind::AlreadyExists => IoError::AlreadyExists { op, path },
            std::io::ErrorKind::StorageFull => IoError::NoSpace { op, path },
            std::io::ErrorKind::IsADirectory
            | std::io::ErrorKind::NotADirectory
            | std::io::ErrorKind::DirectoryNotEmpty => IoError::NotAFile { op, path },
            std::io::ErrorKind::WouldBlock => IoError::Locked { op, path },
            _ => IoError::Other { op, path, message: err.to_string() },
        }
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
}

/// An exclusive lock on a path, released when dropped (or when the process dies).
pub struct FileLock {
    path: PathBuf,
    _guard: Box<dyn Send + Sync>,
}

impl FileLock {
    pub fn new(path: PathBuf, guard: Box<dyn Send + Sync>) -> FileLock {
        FileLock { path, _guard: guard }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for FileLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLock").field("path", &self.path).finish()
    }
}

/// A directory tree of files. Paths are absolute or relative to the backend's root, as the
/// backend documents; the engine only ever joins names onto the store root it was given.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates a directory and its parents; succeeds if it exists.
    fn create_dir_all(&self, path: &Path) -> Result<(), IoError>;
    /// Creates a new, empty file. Fails with `AlreadyExists` if the path exists.
    fn create(&self, path: &Path) -> Result<Arc<dyn StorageFile>, IoError>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> Result<Arc<dyn StorageFile>, IoError>;
    /// Removes a file (not a directory).
    fn remove_file(&self, path: &Path) -> Result<(), IoError>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> Result<(), IoError>;
    /// Atomically renames `from` to `to`, replacing `to` if it is a file.
    fn rename(&self, from: &Path, to: &Path) -> Result<(), IoError>;
    /// The entries of a directory, sorted by name.
    fn list_dir(&self, path: &Path) -> Result<Vec<DirEntry>, IoError>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Takes an exclusive lock on `path` (creating the file if needed). A second lock on the
    /// same path fails with `Locked` until the first is dropped or its process dies.
    fn lock(&self, path: &Path) -> Result<FileLock, IoError>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<(), IoError>>;
}

/// An open file. Handles are shared (`Arc`) between the writer and readers.
pub trait StorageFile: Send + Sync + fmt::Debug {
    fn path(&self) -> &Path;
    /// Fills `buf` from `offset`, or fails with `ReadPastEnd` without reading anything.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError>;
    /// Writes `data` at `offset` into the page cache, extending the file if needed.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError>;
    /// The current length, as later reads see it.
    fn len(&self) -> Result<u64, IoError>;
    /// Truncates or extends (with zeros) to `len_bytes`.
    fn set_len(&self, len_bytes: u64) -> Result<(), IoError>;
    /// Makes `[offset, offset + len)` and the file's length durable.
    fn sync_range(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), IoError>>;
    /// A hint that `[offset, offset + len)` will be written soon: a backend may bring those
    /// pages into memory, blocking the caller while it does (so the caller is not the
    /// writer). Never needed for correctness, never fails; the default does nothing (the
    /// simulated disk has no page faults).
    fn prepare_write(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }
    /// Writes zeros over the whole file and makes them durable, so that every block of it
    /// exists on disk: a later sync of data written into it then writes only that data (on
    /// ext4 a sync over newly allocated blocks also writes the allocation). Only for a file
    /// that holds no data. The real backend does it on tokio's blocking pool.
    fn preallocate(&self) -> BoxFuture<'_, Result<(), IoError>> {
        Box::pin(async move {
            self.write_zeros(0, self.len()?)?;
            self.sync_all().await
        })
    }
    /// Allocates the blocks of the whole file without writing them (`fallocate`): writes
    /// into it then need no block allocation, neither when their pages first fault nor when
    /// writeback makes them durable. The content stays what it was (zeros in a new file);
    /// nothing becomes durable. Never needed for correctness; the default does nothing, and
    /// a file system without the call is left as it is. The real backend does it on tokio's
    /// blocking pool: on a busy disk it can wait for block bitmaps to be read.
    fn reserve_blocks(&self) -> BoxFuture<'_, Result<(), IoError>> {
        Box::pin(async { Ok(()) })
    }
    /// A hint that this file will be synced in many small ranges (the commit log under sync
    /// flush): a backend may then give up read-ahead on it, which otherwise makes every small
    /// sync write back a large folio, and write it without a writable mapping. Never needed
    /// for correctness; the default does nothing.
    fn hint_small_syncs(&self) {}
}

/// Convenience helpers shared by every backend user.
pub trait StorageFileExt: StorageFile {
    /// Makes the whole file durable.
    fn sync_all(&self) -> BoxFuture<'_, Result<(), IoError>> {
        self.sync_range(0, u64::MAX)
    }

    /// Writes zeros over `[from, to)`, a MiB at a time.
    fn write_zeros(&self, from: u64, to: u64) -> Result<(), IoError> {
        write_zeros_with(from, to, |at, zeros| self.write_at(at, zeros))
    }

    /// Reads the whole file.
    fn read_all(&self) -> Result<Vec<u8>, IoError> {
        let len = self.len()?;
        let len = usize::try_from(len).map_err(|_| IoError::Other {
            op: IoOp::Read,
            path: self.path().to_path_buf(),
            message: format!("file of {len} bytes does not fit in memory"),
        })?;
        let mut buf = vec![0u8; len];
        self.read_at(0, &mut buf)?;
        Ok(buf)
    }
}

impl<T: StorageFile + ?Sized> StorageFileExt for T {}

/// Writes zeros over `[from, to)` through `write`, a MiB at a time.
pub(crate) fn write_zeros_with<E>(
    from: u64,
    to: u64,
    mut write: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    const CHUNK_BYTES: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK_BYTES.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(CHUNK_BYTES) as usize;
        write(at, &zeros[..n])?;
        at += n as u64;
    }
    Ok(())
}
