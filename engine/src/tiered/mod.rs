//! Tiered storage (RocketMQ 5.3's `tieredstore`): every queue of the local store copied, in
//! order, to an object store, so its messages stay readable after the local files expire and
//! after the local disk is lost.
//!
//! It wraps the local store the way `TieredMessageStore` wraps `next`, and sees it only
//! through `source::MessageSource` (consume-queue units and messages by offset, min and max
//! offsets, a notification that new messages were dispatched).
//!
//! - `segment`: one remote object (`FileSegment`): base offset, commit position (bytes known
//!   uploaded), append position (bytes accepted), pending buffers and the batch in flight;
//!   a lost acknowledgement or a partial append is resolved by asking the remote size.
//! - `flat_file`: a list of segments with one offset space (`FlatAppendFile`), rolling at a
//!   maximum size; recovery against the object store.
//! - `flat_message`: per queue a tiered commit log and consume queue (`FlatMessageFile`),
//!   committed commit log first.
//! - `metadata`: every segment's base, committed size, status and timestamps, persisted
//!   atomically.
//! - `dispatcher`: the background task moving each queue from the local store.
//! - `fetcher`: reads by queue offset and by key, routed between local and tiered.
//! - `index_file`: the tiered index file's layout, writable and compacted (`IndexStoreFile`).
//! - `index_service`: the index files of the store (`IndexStoreService`): keys of committed
//!   messages in, sealed files compacted and uploaded, queries across local and uploaded
//!   files, the bounded upload at shutdown, recovery.
//! - `store`: `TieredStore`, the whole of it: open (recover), start, reads, shutdown,
//!   inspection for checkers.

pub mod dispatcher;
pub mod fetcher;
pub mod flat_file;
pub mod flat_message;
pub mod index_file;
pub mod index_service;
pub mod metadata;
pub mod segment;
pub mod source;
pub mod store;

use std::fmt;

use crate::error::StoreError;
use crate::io::{IoError, ObjectError};

pub use index_service::{IndexLeft, IndexStatus};
pub use store::{TieredStats, TieredStore};

/// Size of a tiered consume-queue unit: tiered commit-log offset (i64), size (i32), tags code (i64).
pub const TIERED_CQ_UNIT_BYTES: u64 = 20;

/// What a flat file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    CommitLog,
    ConsumeQueue,
    /// A compacted index file (one object per file, never appended to).
    Index,
}

impl FileKind {
    /// The path component naming the kind in object keys.
    pub fn dir_name(self) -> &'static str {
        match self {
            FileKind::CommitLog => "commitlog",
            FileKind::ConsumeQueue => "consumequeue",
            FileKind::Index => "index",
        }
    }

    pub fn from_dir_name(s: &str) -> Option<FileKind> {
        match s {
            "commitlog" => Some(FileKind::CommitLog),
            "consumequeue" => Some(FileKind::ConsumeQueue),
            "index" => Some(FileKind::Index),
            _ => None,
        }
    }

    /// Bytes of one addressable entry: offsets of a consume queue move in whole units.
    pub fn unit_bytes(self) -> u64 {
        match self {
            FileKind::CommitLog | FileKind::Index => 1,
            FileKind::ConsumeQueue => TIERED_CQ_UNIT_BYTES,
        }
    }
}

/// The tiered store's settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TieredConfig {
    /// First component of every object key (RocketMQ's cluster and broker names).
    pub key_prefix: String,
    /// A tiered commit-log segment rolls once its next message would pass this.
    pub commit_log_segment_bytes: u64,
    /// A tiered consume-queue segment rolls at this size (a multiple of 20).
    pub consume_queue_segment_bytes: u64,
    /// The hold branch dispatches a queue once this many messages are pending, or
    /// `batch_max_bytes` of them...
    pub group_commit_count: u64,
    /// ...or once its oldest pending message is this old (store timestamp).
    pub group_commit_timeout_ms: u64,
    /// One batch moves at most this many messages...
    pub batch_max_count: u64,
    /// ...and stops once it holds this many bytes.
    pub batch_max_bytes: u64,
    /// How often the dispatcher looks at every queue when nothing wakes it.
    pub dispatch_interval_ms: u64,
    /// Queues dispatched at once (RocketMQ's semaphore).
    pub dispatch_permits: u64,
    /// Remote segments whose newest message is older than this are deleted (None: never).
    pub remote_retention_ms: Option<u64>,
    /// Hash slots of an index file.
    pub index_slots: u32,
    /// Keys an index file takes before it is sealed.
    pub index_max_items: u32,
    /// How often sealed index files are compacted and uploaded (RocketMQ's 10 s loop).
    pub index_upload_interval_ms: u64,
    /// Shutdown uploads every pending index file for at most this long, then returns and
    /// reports what it left (the next start uploads it from the local disk).
    pub shutdown_upload_bound_ms: u64,
}

impl TieredConfig {
    /// Small sizes for simulation: segments roll every few batches.
    pub fn small(key_prefix: &str) -> TieredConfig {
        TieredConfig {
            key_prefix: key_prefix.to_string(),
            commit_log_segment_bytes: 8 * 1024,
            consume_queue_segment_bytes: 32 * TIERED_CQ_UNIT_BYTES,
            group_commit_count: 16,
            group_commit_timeout_ms: 400,
            batch_max_count: 32,
            batch_max_bytes: 16 * 1024,
            dispatch_interval_ms: 100,
            dispatch_permits: 4,
            remote_retention_ms: None,
            index_slots: 32,
            index_max_items: 128,
            index_upload_interval_ms: 1_000,
            shutdown_upload_bound_ms: 2_000,
        }
    }

    /// RocketMQ's proportions, for the real build.
    pub fn production(key_prefix: &str) -> TieredConfig {
        TieredConfig {
            key_prefix: key_prefix.to_string(),
            commit_log_segment_bytes: 1 << 30,
            consume_queue_segment_bytes: 100 * 1024 * 1024,
            group_commit_count: 4096,
            group_commit_timeout_ms: 30_000,
            batch_max_count: 4096,
            batch_max_bytes: 4 * 1024 * 1024,
            dispatch_interval_ms: 20,
            dispatch_permits: 16,
            remote_retention_ms: None,
            index_slots: 5_000_000,
            index_max_items: 20_000_000,
            index_upload_interval_ms: 10_000,
            shutdown_upload_bound_ms: 30_000,
        }
    }

    pub fn validate(&self) -> Result<(), TieredError> {
        let bad = |m: &str| Err(TieredError::Config(m.to_string()));
        if self.key_prefix.is_empty() || crate::io::object_store::validate_key(&self.key_prefix).is_err() {
            return bad("key_prefix must be a valid object key");
        }
        if self.commit_log_segment_bytes == 0 {
            return bad("commit_log_segment_bytes must be positive");
        }
        if self.consume_queue_segment_bytes == 0 || self.consume_queue_segment_bytes % TIERED_CQ_UNIT_BYTES != 0 {
            return bad("consume_queue_segment_bytes must be a positive multiple of 20");
        }
        if self.index_slots == 0
            || self.index_slots as i64 > i64::from(index_file::MAX_SLOTS)
            || self.index_max_items == 0
            || self.index_max_items as i64 > i64::from(index_file::MAX_ITEMS)
        {
            return bad("index_slots and index_max_items must be positive and within the index file's limits");
        }
        if self.batch_max_count == 0 || self.batch_max_bytes == 0 || self.dispatch_permits == 0 {
            return bad("batch_max_count, batch_max_bytes and dispatch_permits must be positive");
        }
        Ok(())
    }
}

/// Errors of the tiered store. Garbage from the object store is `Corrupt`, never a panic.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TieredError {
    #[error("object store: {0}")]
    Object(#[from] ObjectError),
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    #[error("local disk: {0}")]
    Io(#[from] IoError),
    #[error("corrupt tiered data in {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("tiered metadata {path}: {reason}")]
    Metadata { path: String, reason: String },
    #[error("{queue}: offsets [{from}, {to}) cannot be read from the tiered store: {reason}")]
    Unreadable { queue: String, from: u64, to: u64, reason: String },
    #[error("{what} is not ready: {reason}")]
    NotReady { what: String, reason: String },
    #[error("invalid tiered configuration: {0}")]
    Config(String),
    #[error("tiered store is shut down")]
    ShutDown,
}

impl TieredError {
    pub fn corrupt(what: impl fmt::Display, reason: impl fmt::Display) -> TieredError {
        TieredError::Corrupt { what: what.to_string(), reason: reason.to_string() }
    }
}

/// The queue a flat file belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    pub topic: String,
    pub queue_id: u32,
}

impl fmt::Display for QueueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.queue_id)
    }
}

/// Object keys: `{prefix}/{topic}/{queue}/{commitlog|consumequeue}/{base:020}`. The base offset
/// in the name is what lets a replaced container rebuild the whole tiered view from a listing.
pub mod keys {
    use super::{FileKind, QueueKey};

    pub fn flat_dir(prefix: &str, q: &QueueKey, kind: FileKind) -> String {
        format!("{prefix}/{}/{}/{}", q.topic, q.queue_id, kind.dir_name())
    }

    pub fn segment(prefix: &str, q: &QueueKey, kind: FileKind, base: u64) -> String {
        format!("{}/{base:020}", flat_dir(prefix, q, kind))
    }

    /// Parses a segment key under `prefix`; `None` for anything else (foreign objects under the
    /// prefix are ignored, never trusted).
    pub fn parse(prefix: &str, key: &str) -> Option<(QueueKey, FileKind, u64)> {
        let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let (topic, queue, kind, base) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || topic.is_empty() || base.len() != 20 || !base.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let queue_id: u32 = queue.parse().ok().filter(|q: &u32| q.to_string() == queue)?;
        let kind = FileKind::from_dir_name(kind)?;
        Some((QueueKey { topic: topic.to_string(), queue_id }, kind, base.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_reject_garbage() {
        let q = QueueKey { topic: "TopicA".into(), queue_id: 3 };
        let k = keys::segment("tiered", &q, FileKind::ConsumeQueue, 640);
        assert_eq!(k, "tiered/TopicA/3/consumequeue/00000000000000000640");
        assert_eq!(keys::parse("tiered", &k), Some((q.clone(), FileKind::ConsumeQueue, 640)));
        for bad in [
            "tiered/TopicA/3/consumequeue/640",
            "tiered/TopicA/03/consumequeue/00000000000000000640",
            "tiered/TopicA/3/idx/00000000000000000640",
            "tiered/TopicA/3/commitlog/0000000000000000064x",
            "tiered/TopicA/3/commitlog/00000000000000000640/x",
            "other/TopicA/3/commitlog/00000000000000000640",
            "tiered/TopicA/99999999999/commitlog/00000000000000000640",
            "tiered/TopicA/3/commitlog/99999999999999999999",
            "tiered",
            "",
        ] {
            assert_eq!(keys::parse("tiered", bad), None, "{bad}");
        }
    }

    #[test]
    fn config_validation_names_the_setting() {
        assert!(TieredConfig::small("t").validate().is_ok());
        assert!(TieredConfig::production("t").validate().is_ok());
        let mut c = TieredConfig::small("t");
        c.consume_queue_segment_bytes = 30;
        assert!(matches!(c.validate(), Err(TieredError::Config(m)) if m.contains("multiple of 20")));
        let mut c = TieredConfig::small("/bad");
        c.key_prefix = "/bad".into();
        assert!(c.validate().is_err());
    }
}
