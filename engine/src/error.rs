//! The store's error type. Corruption found on disk is an error value (never a panic): the
//! caller (recovery, a reader, a checker) decides what it means.

use std::path::PathBuf;

use crate::io::IoError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] IoError),
    /// Another store holds the directory's lock file.
    #[error("store directory {} is already in use by another store", path.display())]
    AlreadyLocked { path: PathBuf },
    /// A mapped file whose length is not the configured size (RocketMQ refuses to load).
    #[error("file {} has {actual_bytes} bytes, expected {expected_bytes}", path.display())]
    BadFileSize { path: PathBuf, expected_bytes: u64, actual_bytes: u64 },
    /// A file whose name is not what the store writes.
    #[error("unexpected file name {}", path.display())]
    BadFileName { path: PathBuf },
    #[error("corrupt data at {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("message of {size_bytes} bytes exceeds the limit of {limit_bytes}")]
    MessageTooLarge { size_bytes: u64, limit_bytes: u64 },
    /// A sync failed earlier: the store no longer accepts writes (its durability is unknown).
    #[error("store is not writeable: {reason}")]
    NotWriteable { reason: String },
    /// The sync-flush request was not durable within `sync_flush_timeout_ms`: not acked.
    #[error("flush of offset {offset} not durable within {timeout_ms} ms")]
    FlushTimeout { offset: u64, timeout_ms: u64 },
    /// `Store::continue_from` on a commit log that holds records.
    #[error("commit log is not empty (offsets {min_phy_offset}..{max_phy_offset}): it cannot be continued elsewhere")]
    LogNotEmpty { min_phy_offset: u64, max_phy_offset: u64 },
    #[error("store is shut down")]
    ShutDown,
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl StoreError {
    pub fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt { what: what.into(), reason: reason.into() }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
