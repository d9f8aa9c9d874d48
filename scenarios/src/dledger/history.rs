//! The history of a DLedger run, kept by the harness outside the nodes (it survives every
//! crash): sends and acknowledgements, consumer reads, the leader of each term, and the
//! ledger of committed entries as the replicas reported them. Checkers judge against it.

use std::collections::BTreeMap;

use sim::Violation;

use crate::broker::history::MsgId;

/// A message inside a committed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMsg {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    /// `None`: not one of the workload's bodies (the leader's no-op).
    pub id: Option<MsgId>,
}

/// A committed entry as the first replica that reported it saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEntry {
    pub term: u64,
    pub chain_crc: u32,
    pub msg: Option<EntryMsg>,
    pub reported_by: u32,
}

/// An acknowledged put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedPut {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub index: u64,
    pub term: u64,
    pub by: u32,
}

/// A consumer read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub id: Option<MsgId>,
    pub at_ms: u64,
}

#[derive(Debug, Default)]
pub struct History {
    pub sent: u64,
    pub acked: BTreeMap<MsgId, AckedPut>,
    pub reads: Vec<Read>,
    /// The member that won each term's election.
    pub leaders: BTreeMap<u64, u32>,
    pub ledger: BTreeMap<u64, CommittedEntry>,
    /// Boots per member (seeds each boot's timers).
    pub boots: BTreeMap<u32, u64>,
    pub violations: Vec<Violation>,
}

impl History {
    pub fn violation(&mut self, checker: &str, message: String, at_ms: u64) {
        self.violations.push(Violation { checker: checker.to_string(), message, at_ms });
    }
}
