//! DLedger's typed errors: damage found on disk and requests that do not fit the log are
//! values, never panics.

use crate::error::StoreError;
use crate::io::IoError;

use super::entry::EntryCorruptReason;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DLedgerError {
    #[error(transparent)]
    Io(#[from] IoError),
    /// From the file queues the log is kept in.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt entry at position {pos}: {reason}")]
    CorruptEntry { pos: u64, reason: EntryCorruptReason },
    /// The index unit of an entry is missing or disagrees with the data (outside recovery,
    /// which rewrites it).
    #[error("index unit of entry {index} is missing or wrong")]
    BadIndexUnit { index: u64 },
    #[error("entry of {size_bytes} bytes does not fit the limit of {limit_bytes}")]
    EntryTooLarge { size_bytes: u64, limit_bytes: u64 },
    #[error("entry {index} is not in the log (it holds [{first}, {next}))")]
    NoSuchEntry { index: u64, first: u64, next: u64 },
    /// A replicated entry that does not continue this log where it ends.
    #[error("entry {index} (term {term}) at {pos} does not follow the log: {reason}")]
    Discontinuous { index: u64, term: u64, pos: u64, reason: String },
    /// Removing entries the log knows to be committed.
    #[error("truncation from entry {from_index} would remove committed entries (committed up to {committed})")]
    TruncatesCommitted { from_index: u64, committed: u64 },
    /// A record beside the log (the term file) that cannot be read, and must not be guessed.
    #[error("{}: {reason}", path.display())]
    BadRecord { path: std::path::PathBuf, reason: super::record::RecordDecodeError },
    /// A request only the leader serves; `leader` is who the member thinks leads.
    #[error("not the leader (the leader is {leader:?})")]
    NotLeader { leader: Option<u32> },
    #[error("invalid DLedger configuration: {0}")]
    Config(String),
}

impl From<DLedgerError> for StoreError {
    fn from(e: DLedgerError) -> StoreError {
        match e {
            DLedgerError::Io(e) => StoreError::Io(e),
            DLedgerError::Store(e) => e,
            DLedgerError::CorruptEntry { pos, reason } => {
                StoreError::corrupt(format!("dledger entry at {pos}"), reason.to_string())
            }
            DLedgerError::Config(s) => StoreError::Config(s),
            other => StoreError::InvalidArgument(other.to_string()),
        }
    }
}

pub type Result<T, E = DLedgerError> = std::result::Result<T, E>;
