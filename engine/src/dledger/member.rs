//! One member of a DLedger group: Raft's rules (`raft`), the entry log (`log`) and the term
//! file (`term`) together, in the order of durability Raft needs: the term and vote are
//! synced before any answer that depends on them, a follower's entries are synced before it
//! reports them held, and a leader counts itself for a majority only with entries it has
//! synced. The network is the caller's: it carries the requests and replies these methods
//! take and return.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::bugs::{Bug, BugSet};
use crate::io::{Holds, Storage};
use crate::mapped_file_queue::DirSyncs;

use super::entry::{decode_entry, DecodedEntry, EntryHeader};
use super::error::{DLedgerError, Result};
use super::log::{DLedgerConfig, DLedgerPaths, EntryLog, FlushPlan};
use super::raft::{AppendReply, AppendRequest, LogView, MemberId, Raft, RaftBugs, Role, VoteReply, VoteRequest};
use super::recovery::EntryRecoveryReport;
use super::term::{TermFile, TermRecord};

impl LogView for EntryLog {
    fn last(&self) -> Option<(u64, u64)> {
        let t = self.tail();
        t.last_index().map(|i| (i, t.last_term))
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        self.term_at(Some(index)).ok()
    }
}

/// An append to send: the request and the entries' bytes.
#[derive(Debug, Clone)]
pub struct OutgoingAppend {
    pub request: AppendRequest,
    pub entries: Vec<Vec<u8>>,
}

/// One member.
#[derive(Debug)]
pub struct Member {
    pub raft: Raft,
    pub log: EntryLog,
    term_file: TermFile,
    persisted: TermRecord,
    bugs: BugSet,
    /// The checkpoint file is written by the caller (`persist_checkpoint`), not on every
    /// move of the commit (`defer_checkpoint`).
    checkpoint_deferred: bool,
    /// The log's syncs overlapped (`EntryLog::run_flush_overlapped`, `overlap_syncs`).
    syncs_overlapped: bool,
}

impl Member {
    /// Opens a member's log (recovering it) and its term file.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        storage: Arc<dyn Storage>,
        paths: DLedgerPaths,
        cfg: DLedgerConfig,
        holds: Holds,
        dirs: Arc<DirSyncs>,
        id: MemberId,
        members: BTreeSet<MemberId>,
        bugs: BugSet,
    ) -> Result<(Member, EntryRecoveryReport)> {
        let (log, report) = EntryLog::open(storage.clone(), paths.clone(), cfg, holds, dirs.clone()).await?;
        let (term_file, persisted) = TermFile::open(storage.as_ref(), &paths.term)?;
        dirs.mark(&paths.root);
        dirs.sync(storage.as_ref()).await?;
        let mut raft = Raft::new(id, members, persisted.term, persisted.voted_for, RaftBugs::from_bugs(&bugs));
        raft.commit = log.committed_index();
        Ok((
            Member { raft, log, term_file, persisted, bugs, checkpoint_deferred: false, syncs_overlapped: false },
            report,
        ))
    }

    /// Syncs the term and vote if they changed.
    async fn persist_term(&mut self) -> Result<()> {
        let now = TermRecord { term: self.raft.term, voted_for: self.raft.voted_for };
        if now != self.persisted {
            self.term_file.write(&now).await?;
            self.persisted = now;
        }
        Ok(())
    }

    async fn sync_log(&mut self) -> Result<()> {
        let plan = self.log.flush_plan();
        self.run_flush(&plan).await?;
        self.log.flushed(&plan);
        Ok(())
    }

    /// Awaits `plan`'s syncs, overlapped if asked.
    pub async fn run_flush(&self, plan: &FlushPlan) -> Result<()> {
        let (storage, dirs) = (self.log.storage(), self.log.dirs());
        if self.syncs_overlapped {
            EntryLog::run_flush_overlapped(storage, dirs, plan).await
        } else {
            EntryLog::run_flush(storage, dirs, plan).await
        }
    }

    /// With `on`, the log's data and index files are synced at once (a real disk overlaps
    /// them), not one after the other.
    pub fn overlap_syncs(&mut self, on: bool) {
        self.syncs_overlapped = on;
    }

    /// Records the committed index in the log (bounded by what it holds) and the checkpoint.
    async fn write_checkpoint(&mut self) -> Result<()> {
        if let (Some(c), Some(last)) = (self.raft.commit, self.log.tail().last_index()) {
            self.log.set_committed(c.min(last));
        }
        if self.checkpoint_deferred {
            return Ok(());
        }
        self.persist_checkpoint().await
    }

    /// Writes and syncs the checkpoint: the committed index as the log records it.
    pub async fn persist_checkpoint(&self) -> Result<()> {
        let (file, c) = self.log.checkpoint(self.bugs.has(Bug::DledgerCommitBeforeDurable));
        file.write(&c).await
    }

    /// With `on`, a move of the commit is recorded in the log only, and the checkpoint file
    /// waits for `persist_checkpoint` (DLedger writes it periodically): a sync less in every
    /// append's path. Safe for what was acknowledged: the entries themselves are synced
    /// before they count, recovery keeps every valid entry past a stale checkpoint, and the
    /// group commits them again (the next leader's first entry covers them).
    pub fn defer_checkpoint(&mut self, on: bool) {
        self.checkpoint_deferred = on;
    }

    pub async fn start_election(&mut self) -> Result<VoteRequest> {
        let req = self.raft.start_election(&self.log);
        self.persist_term().await?;
        Ok(req)
    }

    pub async fn on_vote_request(&mut self, req: &VoteRequest) -> Result<VoteReply> {
        let reply = self.raft.on_vote_request(req, &self.log);
        self.persist_term().await?;
        Ok(reply)
    }

    /// Returns whether this member just became leader.
    pub async fn on_vote_reply(&mut self, reply: &VoteReply) -> Result<bool> {
        let won = self.raft.on_vote_reply(reply, &self.log);
        self.persist_term().await?;
        Ok(won)
    }

    /// The leader's append of one entry (`log::EntryLog::append`); not durable, not counted
    /// for commitment until `flush`.
    pub fn append(&mut self, body_len: u64, fill_body: impl FnOnce(u64, &mut Vec<u8>)) -> Result<EntryHeader> {
        if self.raft.role != Role::Leader {
            return Err(DLedgerError::NotLeader { leader: self.raft.leader });
        }
        self.log.append(self.raft.term, body_len, fill_body)
    }

    /// Syncs the log; a leader then counts its own entries and may commit.
    pub async fn flush(&mut self) -> Result<Option<u64>> {
        let plan = self.log.flush_plan();
        self.run_flush(&plan).await?;
        self.flushed(&plan).await
    }

    /// Records a successful `EntryLog::run_flush` of `plan` (taken by `log.flush_plan()`,
    /// awaited outside the caller's lock): a leader then counts its own entries and may
    /// commit. Returns the new commit index if it moved.
    pub async fn flushed(&mut self, plan: &FlushPlan) -> Result<Option<u64>> {
        let before = self.raft.commit;
        self.log.flushed(plan);
        if let Some(last) = self.log.durable_next_index().checked_sub(1) {
            self.raft.on_local_append(last, &self.log);
        }
        self.write_checkpoint().await?;
        Ok((self.raft.commit != before).then_some(self.raft.commit).flatten())
    }

    /// The leader's next append to `member`: up to `max_entries` from where it stands.
    pub fn append_for(&self, member: MemberId, max_entries: u64) -> Result<OutgoingAppend> {
        self.append_from(self.raft.next_for(member), max_entries)
    }

    /// The leader's append of up to `max_entries` from index `next` on (a replicator that
    /// pipelines sends past what its member has acknowledged).
    pub fn append_from(&self, next: u64, max_entries: u64) -> Result<OutgoingAppend> {
        if self.raft.role != Role::Leader {
            return Err(DLedgerError::NotLeader { leader: self.raft.leader });
        }
        let next = next.max(self.log.first_index());
        let prev = match next.checked_sub(1) {
            Some(p) => Some((p, self.log.term_at(Some(p))?)),
            None => None,
        };
        let end = self.log.tail().next_index.min(next + max_entries);
        let mut entries = Vec::new();
        for i in next..end {
            let mut buf = Vec::new();
            self.log.read_entry(i, &mut buf)?;
            entries.push(buf);
        }
        let request = AppendRequest {
            term: self.raft.term,
            leader: self.raft.id,
            prev,
            entries: entries.len(),
            leader_commit: self.raft.commit,
        };
        Ok(OutgoingAppend { request, entries })
    }

    /// A follower's handling of an append: drops a conflicting uncommitted suffix, appends
    /// what it lacks, syncs, records the leader's commit, and only then replies.
    pub async fn on_append(&mut self, req: &AppendRequest, entries: &[Vec<u8>]) -> Result<AppendReply> {
        if req.entries != entries.len() {
            return Err(DLedgerError::Discontinuous {
                index: req.prev.map_or(0, |(i, _)| i + 1),
                term: req.term,
                pos: 0,
                reason: format!("request announces {} entries, {} came", req.entries, entries.len()),
            });
        }
        let opts = self.log.config().decode_options();
        let mut terms = Vec::with_capacity(entries.len());
        for b in entries {
            match decode_entry(b, &opts) {
                DecodedEntry::Entry(e) => terms.push((e.header.index, e.header.term)),
                DecodedEntry::Corrupt(reason) => return Err(DLedgerError::CorruptEntry { pos: 0, reason }),
                other => {
                    return Err(DLedgerError::Discontinuous {
                        index: 0,
                        term: req.term,
                        pos: 0,
                        reason: format!("not an entry: {other:?}"),
                    })
                }
            }
        }
        let (reply, plan) = self.raft.on_append(req, &terms, &self.log);
        self.persist_term().await?;
        if let Some(plan) = plan {
            if let Some(from) = plan.truncate_from {
                self.log.truncate_from(from, self.bugs.has(Bug::DledgerFollowerTruncatesCommitted))?;
            }
            for b in &entries[plan.skip..] {
                self.log.append_replicated(b)?;
            }
            self.sync_log().await?;
            self.write_checkpoint().await?;
        }
        Ok(reply)
    }

    /// The leader's handling of an append reply; returns the new commit index if it moved.
    pub async fn on_append_reply(&mut self, reply: &AppendReply) -> Result<Option<u64>> {
        let moved = self.raft.on_append_reply(reply, &self.log);
        self.persist_term().await?;
        if moved.is_some() {
            self.write_checkpoint().await?;
        }
        Ok(moved)
    }
}
