//! One interface over the log whose records are dispatched into consume queues: the local
//! commit log (`CommitLog`, a record at its physical offset, readable once committed to its
//! file) or a DLedger replica's entry log (`EntryLog`, a record at its entry's position + 48,
//! readable once its entry is committed). `dispatch_log` runs the store's one dispatch
//! (`dispatch::Dispatcher`, which builds consume-queue units and index entries from records)
//! over either; both are generic, no `dyn`.
//!
//! The store's reput service does not read through `read_messages`: it reads the local log a
//! 256 KiB piece at a time outside the commit log's lock and takes the consume-queue and index
//! locks once per run of records (`dispatch.rs`), which a per-message visitor called under the
//! log's borrow could not do without holding the producers' lock during reads.
//!
//! Recovery's message scans stay one per log. The local scan (`recovery.rs`) is what finds
//! the log's end, so it reads whole files past any bound, and it carries per-record work of
//! its own: the checkpoint's proofs (where the unproven bytes to rewrite start) and the
//! `skip-half-written-record` switch, which goes on past a corrupt record. DLedger's scan
//! (`dledger::store_recovery`) runs after the entry log's recovery found the end, is bounded
//! by the committed position, and counts `processOffset` in entry sizes (or, with #9084,
//! message sizes), which only entry framing has. Both decode with `message::decode_ref` and
//! re-dispatch with the one `Dispatcher`.

use crate::commit_log::{read_record_ref, CommitLog};
use crate::dispatch::Dispatcher;
use crate::dledger::store_recovery::{committed_pos, scan_messages};
use crate::dledger::{DLedgerError, EntryLog};
use crate::error::StoreError;
use crate::message::{DecodeOptions, DecodedRef, MessageRef};

pub use crate::parts::{CqMap, QueueFiles};

/// How a read of a run of messages ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageRun {
    /// The physical offset after the last record read (where the next read starts).
    pub end: u64,
    /// Where and why the read stopped before its bound, at a record that does not check out.
    pub stopped_at: Option<(u64, String)>,
    /// Messages handed to the visitor.
    pub messages: u64,
}

/// What dispatch needs from a log.
pub trait MessageLog {
    type Error: From<StoreError>;

    /// The first physical offset a record may be read at.
    fn min_offset(&self) -> u64;

    /// The end of what is appended (readable or not).
    fn max_offset(&self) -> u64;

    /// How far dispatch may go: the local log's committed position (what is in its files),
    /// a DLedger log's committed entries' end (the confirm offset).
    fn dispatch_bound(&self) -> Result<u64, Self::Error>;

    /// Calls `visit` with each message (and its record's size) from `from`, a record's start,
    /// up to `to`; stops at the first record that does not check out or is not all readable.
    fn read_messages<F>(&self, from: u64, to: u64, opts: DecodeOptions, visit: F) -> Result<MessageRun, Self::Error>
    where
        F: FnMut(&MessageRef<'_>, u32) -> crate::error::Result<()>;
}

impl MessageLog for CommitLog {
    type Error = StoreError;

    fn min_offset(&self) -> u64 {
        CommitLog::min_offset(self)
    }

    fn max_offset(&self) -> u64 {
        CommitLog::max_offset(self)
    }

    fn dispatch_bound(&self) -> Result<u64, StoreError> {
        Ok(self.readable_offset())
    }

    fn read_messages<F>(&self, from: u64, to: u64, opts: DecodeOptions, mut visit: F) -> Result<MessageRun, StoreError>
    where
        F: FnMut(&MessageRef<'_>, u32) -> crate::error::Result<()>,
    {
        let mut run = MessageRun { end: from, ..MessageRun::default() };
        let mut buf = Vec::new();
        while run.end < to {
            let at = run.end;
            let Some(view) = self.view(at) else { break };
            let pos = at - view.from_offset;
            let readable = view.readable.min(to - view.from_offset);
            let decoded =
                read_record_ref(view.file.as_ref(), view.from_offset, pos, readable, view.size, opts, &mut buf)?;
            match decoded {
                None => break,
                Some(DecodedRef::Valid(m, size)) => {
                    visit(&m, size)?;
                    run.messages += 1;
                    run.end = at + u64::from(size);
                }
                Some(DecodedRef::Blank { .. }) => run.end = view.from_offset + view.size,
                Some(DecodedRef::Corrupt(c)) => {
                    run.stopped_at = Some((at, c.reason.to_string()));
                    break;
                }
            }
        }
        Ok(run)
    }
}

impl MessageLog for EntryLog {
    type Error = DLedgerError;

    fn min_offset(&self) -> u64 {
        self.data_files().first().map_or(0, |f| f.1)
    }

    fn max_offset(&self) -> u64 {
        self.end_pos()
    }

    fn dispatch_bound(&self) -> Result<u64, DLedgerError> {
        committed_pos(self)
    }

    fn read_messages<F>(&self, from: u64, to: u64, opts: DecodeOptions, visit: F) -> Result<MessageRun, DLedgerError>
    where
        F: FnMut(&MessageRef<'_>, u32) -> crate::error::Result<()>,
    {
        let scan = scan_messages(self, from, to, opts, false, visit)?;
        Ok(MessageRun { end: scan.end_pos, stopped_at: scan.stopped_at, messages: scan.messages })
    }
}

/// Dispatches the messages of `log` from `from` (a record's start) up to its dispatch bound
/// into the consume queues `cqs` (no key index), loading new queues from `files`.
pub fn dispatch_log<L: MessageLog>(
    log: &L,
    from: u64,
    files: &QueueFiles,
    cqs: &mut CqMap,
) -> Result<MessageRun, L::Error> {
    let to = log.dispatch_bound()?;
    let mut d = Dispatcher::new(files, cqs, 0);
    log.read_messages(from, to, DecodeOptions::default(), |m, size| d.dispatch_unindexed(m, size))
}
