//! DLedger mode (§2.5, §3.7): the commit log replicated by Raft over a group of brokers.
//! Each replica keeps entries (`entry`: a 48-byte header around one commit-log record) in
//! data files, an index of 32-byte units (`index_unit`), and a checkpoint with the committed
//! index (`checkpoint`); `log` appends, reads, truncates and flushes them, `recovery` is the
//! entry-level recovery that runs when a replica's log is opened, `store_recovery` the
//! store's recovery of its consume queues over it. `raft` holds Raft's rules for one member
//! (no I/O), `term` its persisted term and vote; `record` the small text records beside the
//! log; `member` puts a member's Raft state, log and term file together in the order of
//! durability Raft needs; `replica` is a member as a broker runs it, its committed entries
//! dispatched into consume queues, with the store's recovery at open and the leader's puts.
//! `wire` encodes the group's messages as frames for a byte stream; `tcp` (real build only)
//! carries them over TCP connections.

pub mod checkpoint;
pub mod entry;
pub mod error;
pub mod index_unit;
pub mod log;
pub mod member;
pub mod raft;
pub mod record;
pub mod recovery;
pub mod replica;
pub mod store_recovery;
#[cfg(not(madsim))]
pub mod tcp;
pub mod term;
pub mod wire;

pub use checkpoint::{CheckpointLoad, DLedgerCheckpoint};
pub use entry::{DecodedEntry, EntryHeader, ENTRY_HEADER_BYTES};
pub use error::DLedgerError;
pub use log::{DLedgerConfig, DLedgerPaths, EntryLog, FlushPlan, LogTail};
pub use recovery::EntryRecoveryReport;
