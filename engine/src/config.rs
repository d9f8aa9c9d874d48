//! Store configuration. Every size and interval is configurable so that a simulation can roll
//! files often (64 KiB commit-log files, a few dozen consume-queue units per file, tiny index
//! files). Defaults are RocketMQ 4.8's.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bugs::BugSet;
use crate::error::StoreError;

/// When a producer is acknowledged (RocketMQ §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FlushMode {
    /// Acked once in the page cache; a background service syncs periodically.
    #[default]
    Async,
    /// Acked only once durable; concurrent producers share syncs (group commit).
    Sync,
    /// Acked once in a pooled write buffer; committed into the file periodically, then
    /// synced. Uncommitted bytes are lost on a process crash.
    TransientPool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Root directory of the store (`commitlog/`, `consumequeue/`, `index/`, `checkpoint`, `abort`, `lock`).
    pub root_dir: PathBuf,
    pub commit_log_file_size_bytes: u64,
    /// Units (20 bytes each) per consume-queue file.
    pub cq_units_per_file: u64,
    /// Largest encoded record accepted.
    pub max_message_size_bytes: u64,
    pub flush_mode: FlushMode,
    /// The page size used to count dirty pages for `*_least_pages`.
    pub os_page_size_bytes: u64,
    // --- commit-log flush (async / transient pool)
    pub flush_interval_commit_log_ms: u64,
    pub flush_commit_log_least_pages: u64,
    pub flush_commit_log_thorough_interval_ms: u64,
    // --- transient pool commit
    pub commit_interval_commit_log_ms: u64,
    pub commit_commit_log_least_pages: u64,
    pub commit_commit_log_thorough_interval_ms: u64,
    /// Buffers in the transient pool (each one commit-log file long).
    pub transient_pool_buffers: usize,
    // --- sync flush (group commit)
    pub group_commit_interval_ms: u64,
    pub sync_flush_timeout_ms: u64,
    /// Commit-log files are prepared before the log writes into them, by a service that
    /// keeps one spare file ready (`allocate`): under sync flush written with zeros and synced
    /// (RocketMQ's `warmMapedFileEnable`; costs a second write of each file), otherwise only
    /// their blocks allocated (`StorageFile::reserve_blocks`). A roll that comes while the
    /// spare is still being prepared creates its file sparse. A fresh store's `open` waits
    /// for the first spare. Costs one file of disk space.
    pub preallocate_commit_log: bool,
    // --- consume-queue flush
    pub flush_interval_cq_ms: u64,
    pub flush_cq_least_pages: u64,
    pub flush_cq_thorough_interval_ms: u64,
    // --- key index
    pub message_index_enable: bool,
    pub index_max_hash_slots: u32,
    pub index_max_items: u32,
    // --- recovery and dispatch
    pub check_crc_on_recover: bool,
    /// Fallback poll interval of the reput service (it is also woken by every put).
    pub reput_interval_ms: u64,
    /// How long a clean shutdown waits for dispatch to catch up.
    pub shutdown_dispatch_wait_ms: u64,
    /// Written into STOREHOST (ip4 + port).
    pub store_host: [u8; 8],
    // --- expiry (`CleanCommitLogService`)
    /// Commit-log files whose messages are all older than this are deleted, with the
    /// consume-queue files that only point into them (`Store::delete_expired`). None: never.
    pub file_retention_ms: Option<u64>,
    /// How often the expiry service checks (started only when `file_retention_ms` is set).
    pub expiry_interval_ms: u64,
    /// Enabled catalogued bugs (default: none).
    pub bugs: BugSet,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            root_dir: PathBuf::from("store"),
            commit_log_file_size_bytes: 1 << 30,
            cq_units_per_file: 300_000,
            max_message_size_bytes: 4 * 1024 * 1024,
            flush_mode: FlushMode::Async,
            os_page_size_bytes: 4096,
            flush_interval_commit_log_ms: 500,
            flush_commit_log_least_pages: 4,
            flush_commit_log_thorough_interval_ms: 10_000,
            commit_interval_commit_log_ms: 200,
            commit_commit_log_least_pages: 4,
            commit_commit_log_thorough_interval_ms: 200,
            transient_pool_buffers: 5,
            group_commit_interval_ms: 10,
            sync_flush_timeout_ms: 5_000,
            preallocate_commit_log: true,
            flush_interval_cq_ms: 1_000,
            flush_cq_least_pages: 2,
            flush_cq_thorough_interval_ms: 60_000,
            message_index_enable: true,
            index_max_hash_slots: 5_000_000,
            index_max_items: 20_000_000,
            check_crc_on_recover: true,
            reput_interval_ms: 1,
            shutdown_dispatch_wait_ms: 5_000,
            store_host: [127, 0, 0, 1, 0, 0, 0x28, 0x9B],
            file_retention_ms: None,
            expiry_interval_ms: 10_000,
            bugs: BugSet::default(),
        }
    }
}

impl StoreConfig {
    /// Small sizes for simulations and tests: 64 KiB commit-log files, 64 units per
    /// consume-queue file, index files of 64 slots and 256 items, short intervals.
    pub fn small(root_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            root_dir: root_dir.into(),
            commit_log_file_size_bytes: 64 * 1024,
            cq_units_per_file: 64,
            max_message_size_bytes: 16 * 1024,
            index_max_hash_slots: 64,
            index_max_items: 256,
            flush_interval_commit_log_ms: 50,
            flush_commit_log_thorough_interval_ms: 500,
            commit_interval_commit_log_ms: 20,
            commit_commit_log_thorough_interval_ms: 100,
            transient_pool_buffers: 3,
            flush_interval_cq_ms: 100,
            flush_cq_thorough_interval_ms: 1_000,
            file_retention_ms: None,
            expiry_interval_ms: 100,
            ..StoreConfig::default()
        }
    }

    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |m: &str| Err(StoreError::Config(m.to_string()));
        if self.commit_log_file_size_bytes < 1024 {
            return bad("commit_log_file_size_bytes must be at least 1024");
        }
        if self.max_message_size_bytes + 8 > self.commit_log_file_size_bytes {
            return bad("max_message_size_bytes + 8 must fit in one commit-log file");
        }
        if self.max_message_size_bytes > i32::MAX as u64 {
            return bad("max_message_size_bytes must fit in an i32");
        }
        if self.cq_units_per_file == 0 || self.cq_units_per_file > (i32::MAX as u64) / 20 {
            return bad("cq_units_per_file out of range");
        }
        if self.index_max_hash_slots == 0 || self.index_max_items < 2 {
            return bad("index needs at least one slot and two items");
        }
        if self.os_page_size_bytes == 0 {
            return bad("os_page_size_bytes must be positive");
        }
        if self.transient_pool_buffers == 0 && self.flush_mode == FlushMode::TransientPool {
            return bad("transient pool mode needs at least one buffer");
        }
        if self.file_retention_ms == Some(0) || self.file_retention_ms.is_some_and(|r| r > i64::MAX as u64) {
            return bad("file_retention_ms must be positive and fit in an i64");
        }
        if self.expiry_interval_ms == 0 {
            return bad("expiry_interval_ms must be positive");
        }
        Ok(())
    }

    pub fn cq_file_size_bytes(&self) -> u64 {
        self.cq_units_per_file * crate::consume_queue::CQ_UNIT_SIZE
    }
}
