//! A DLedger replica as a broker runs it: a group member (`member`) whose committed entries
//! are dispatched into consume queues (a message's physical offset is its entry's position
//! + 48), the store's recovery in DLedger mode when it opens (`store_recovery`), reads served
//! from the consume queues (so only committed messages), and the leader's puts, whose queue
//! offsets continue everything in its log (committed or not: a leader never drops its own
//! entries, and the next leader's log holds every committed one).
//!
//! Transport-free: the caller carries Raft's messages between members and runs the timers.
//! An `abort` file beside the log marks a replica that did not shut down cleanly; its next
//! open runs the abnormal recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bugs::BugSet;
use crate::io::{Clock, Holds, Storage};
use crate::mapped_file::SyncPlan;
use crate::mapped_file_queue::DirSyncs;
use crate::message::{decode, DecodeOptions, Decoded, Message};
use crate::message_log::{dispatch_log, MessageLog, QueueFiles};
use crate::store::StoredMessage;

use super::entry::ENTRY_HEADER_BYTES;
use super::error::{DLedgerError, Result};
use super::log::{DLedgerConfig, DLedgerPaths};
use super::member::Member;
use super::raft::{MemberId, Role};
use super::recovery::EntryRecoveryReport;
use super::store_recovery::{committed_pos, recover_store, Queues, StoreRecoveryBugs, StoreRecoveryReport};

/// Where a replica lives and how its files are sized.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub root: PathBuf,
    pub self_id: MemberId,
    pub members: BTreeSet<MemberId>,
    pub log: DLedgerConfig,
    pub cq_units_per_file: u64,
    pub bugs: BugSet,
}

/// A put the leader appended: where it sits and what it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub index: u64,
    pub term: u64,
    pub phy_offset: u64,
    pub queue_offset: u64,
    pub store_timestamp_ms: i64,
}

/// One message to put.
#[derive(Debug, Clone, Copy)]
pub struct PutRequest<'a> {
    pub topic: &'a str,
    pub queue_id: u32,
    pub body: &'a [u8],
    pub tags: Option<&'a str>,
    pub keys: &'a [&'a str],
}

/// A replica.
pub struct Replica {
    pub member: Member,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    root: PathBuf,
    abort: PathBuf,
    dirs: Arc<DirSyncs>,
    /// Where the consume queues live, for dispatch.
    files: QueueFiles,
    queues: Queues,
    /// Dispatch has put every committed message before this position into the queues.
    reput_pos: u64,
    /// Leader only: the next queue offset of each queue, and the term it was computed for.
    next_queue_offset: BTreeMap<(String, u32), u64>,
    offsets_term: Option<u64>,
    pub entry_report: EntryRecoveryReport,
    pub store_report: StoreRecoveryReport,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("id", &self.member.raft.id).field("reput_pos", &self.reput_pos).finish()
    }
}

/// The consume queues found on disk under `root`, each recovered (`ConsumeQueue::recover`).
fn load_queues(files: &QueueFiles, syncs: &mut Vec<SyncPlan>) -> Result<Queues> {
    let mut queues = Queues::new();
    let cq_root = files.root.join("consumequeue");
    let topics = match files.storage.list_dir(&cq_root) {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Ok(queues),
        Err(e) => return Err(e.into()),
    };
    for topic in topics {
        for q in files.storage.list_dir(&cq_root.join(&topic.name))? {
            // A name that is not a queue id is not ours: left alone.
            let Ok(queue_id) = q.name.parse::<u32>() else { continue };
            let (mut cq, _) = files.load(&topic.name, queue_id)?;
            syncs.extend(cq.recover(files.storage.as_ref(), false)?);
            queues.insert((topic.name.clone(), queue_id), cq);
        }
    }
    Ok(queues)
}

async fn run_syncs(syncs: &[SyncPlan]) -> Result<()> {
    for p in syncs {
        p.file.sync_range(p.sync_from, p.sync_to - p.sync_from).await?;
    }
    Ok(())
}

impl Replica {
    /// Opens a replica: the entry log's recovery, the store's recovery of the consume queues
    /// (abnormal if the abort file is there), dispatch of the committed entries, and the abort
    /// file written for this run.
    pub async fn open(storage: Arc<dyn Storage>, clock: Arc<dyn Clock>, cfg: ReplicaConfig) -> Result<Replica> {
        let holds = Holds::new();
        let dirs = Arc::new(DirSyncs::new(false));
        dirs.ensure_dir(storage.as_ref(), &cfg.root)?;
        let abort = cfg.root.join("abort");
        let clean = !storage.exists(&abort);
        let paths = DLedgerPaths::new(&cfg.root, &format!("n{}", cfg.self_id));
        let (member, entry_report) = Member::open(
            storage.clone(),
            paths,
            cfg.log,
            holds.clone(),
            dirs.clone(),
            cfg.self_id,
            cfg.members.clone(),
            cfg.bugs.clone(),
        )
        .await?;
        let mut syncs = Vec::new();
        let files = QueueFiles {
            storage: storage.clone(),
            root: cfg.root.clone(),
            units_per_file: cfg.cq_units_per_file,
            holds,
            dirs: dirs.clone(),
        };
        let mut queues = load_queues(&files, &mut syncs)?;
        // A minimum timestamp of 0 matches no file: the abnormal scan starts at the first one.
        let bugs = StoreRecoveryBugs::from_bugs(&cfg.bugs);
        let (store_report, cut_syncs) =
            recover_store(&member.log, &files, &mut queues, clean, 0, DecodeOptions::default(), bugs)?;
        syncs.extend(cut_syncs);
        run_syncs(&syncs).await?;
        if !clean {
            crate::probe!("dledger.recover-abnormal");
        }
        let mut replica = Replica {
            member,
            storage: storage.clone(),
            clock,
            root: cfg.root.clone(),
            abort: abort.clone(),
            dirs,
            files,
            queues,
            reput_pos: store_report.reput_from,
            next_queue_offset: BTreeMap::new(),
            offsets_term: None,
            entry_report,
            store_report,
        };
        replica.dispatch()?;
        replica.flush_queues().await?;
        if clean {
            storage.create(&abort)?;
            replica.dirs.mark(&cfg.root);
        }
        replica.dirs.sync(storage.as_ref()).await?;
        Ok(replica)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Dispatch has put every committed message before this position into the queues.
    pub fn reput_pos(&self) -> u64 {
        self.reput_pos
    }

    /// Where the committed entries end.
    pub fn committed_pos(&self) -> Result<u64> {
        committed_pos(&self.member.log)
    }

    /// Puts the committed entries' messages not yet dispatched into the consume queues.
    pub fn dispatch(&mut self) -> Result<u64> {
        let run = dispatch_log(&self.member.log, self.reput_pos, &self.files, &mut self.queues)?;
        self.reput_pos = self.reput_pos.max(run.end);
        Ok(run.messages)
    }

    /// Syncs the consume queues' files.
    pub async fn flush_queues(&mut self) -> Result<()> {
        let page = self.member.log.config().os_page_size_bytes;
        for cq in self.queues.values_mut() {
            let plans = cq.files().sync_plans(0, page);
            run_syncs(&plans).await?;
            for p in &plans {
                cq.files_mut().mark_flushed(p);
            }
        }
        self.dirs.sync(self.storage.as_ref()).await?;
        Ok(())
    }

    /// The leader's next queue offsets, from the dispatched queues and every message of its
    /// log past them (computed once per term it leads).
    fn leader_offsets(&mut self) -> Result<()> {
        let term = self.member.raft.term;
        if self.offsets_term == Some(term) {
            return Ok(());
        }
        let mut next: BTreeMap<(String, u32), u64> =
            self.queues.iter().map(|(k, cq)| (k.clone(), cq.max_offset_in_queue())).collect();
        let end = self.member.log.end_pos();
        self.member.log.read_messages(self.reput_pos, end, DecodeOptions::default(), |m, _| {
            let n = next.entry((m.topic.to_string(), m.queue_id)).or_insert(0);
            *n = (*n).max(m.queue_offset + 1);
            Ok(())
        })?;
        self.next_queue_offset = next;
        self.offsets_term = Some(term);
        Ok(())
    }

    /// The leader's put of one message (appended, not yet durable nor committed).
    pub fn put(&mut self, req: PutRequest<'_>) -> Result<Appended> {
        if self.member.raft.role != Role::Leader {
            return Err(DLedgerError::NotLeader { leader: self.member.raft.leader });
        }
        self.leader_offsets()?;
        let key = (req.topic.to_string(), req.queue_id);
        let queue_offset = self.next_queue_offset.get(&key).copied().unwrap_or(0);
        let now_ms = self.clock.now_ms();
        let mut properties = Vec::new();
        if !req.keys.is_empty() {
            properties.push(("KEYS".to_string(), req.keys.join(" ")));
        }
        if let Some(t) = req.tags {
            properties.push(("TAGS".to_string(), t.to_string()));
        }
        let mut msg = Message {
            queue_id: req.queue_id,
            queue_offset,
            born_timestamp_ms: now_ms,
            store_timestamp_ms: now_ms,
            body: req.body.to_vec(),
            topic: req.topic.to_string(),
            properties,
            ..Message::default()
        };
        msg.validate().map_err(DLedgerError::from)?;
        let len = msg.record_len();
        let h = self.member.append(len, |phy, out| {
            msg.phy_offset = phy;
            msg.encode_into(out).expect("validated above");
        })?;
        self.next_queue_offset.insert(key, queue_offset + 1);
        Ok(Appended {
            index: h.index,
            term: h.term,
            phy_offset: h.body_pos(),
            queue_offset,
            store_timestamp_ms: now_ms,
        })
    }

    /// Up to `max` committed messages of a queue from `offset` on.
    pub fn get(&self, topic: &str, queue_id: u32, offset: u64, max: usize) -> Result<Vec<StoredMessage>> {
        let Some(cq) = self.queues.get(&(topic.to_string(), queue_id)) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let files = self.member.log.data_files();
        for qo in offset..cq.max_offset_in_queue().min(offset.saturating_add(max as u64)) {
            let Some(u) = cq.unit(qo)? else { break };
            if u.is_blank() {
                continue;
            }
            let (phy, size) = (u.phy_offset as u64, u.size as u64);
            let Some((file, from, fsize)) = files.iter().find(|f| f.1 <= phy && phy < f.1 + f.2) else {
                return Err(DLedgerError::NoSuchEntry { index: qo, first: 0, next: 0 });
            };
            if phy - from + size > *fsize || phy < from + ENTRY_HEADER_BYTES {
                return Err(DLedgerError::BadIndexUnit { index: qo });
            }
            buf.clear();
            buf.resize(size as usize, 0);
            file.read_at(phy - from, &mut buf)?;
            let opts = DecodeOptions { expected_phy_offset: Some(phy), ..DecodeOptions::default() };
            match decode(&buf, &opts) {
                Decoded::Valid(m, n) => out.push(StoredMessage::from_message(m, n)),
                Decoded::Blank { .. } => return Err(DLedgerError::BadIndexUnit { index: qo }),
                Decoded::Corrupt(c) => {
                    return Err(
                        crate::error::StoreError::corrupt(format!("message at {phy}"), c.reason.to_string()).into()
                    )
                }
            }
        }
        Ok(out)
    }

    /// The queues this replica holds, with their next offsets.
    pub fn queue_ends(&self) -> BTreeMap<(String, u32), u64> {
        self.queues.iter().map(|(k, cq)| (k.clone(), cq.max_offset_in_queue())).collect()
    }

    /// The unit at `queue_offset` of a queue: `(phy, size)`.
    pub fn unit(&self, topic: &str, queue_id: u32, queue_offset: u64) -> Result<Option<(u64, u32)>> {
        let Some(cq) = self.queues.get(&(topic.to_string(), queue_id)) else { return Ok(None) };
        Ok(cq.unit(queue_offset)?.filter(|u| !u.is_blank()).map(|u| (u.phy_offset as u64, u.size as u32)))
    }

    /// Clean shutdown: the log synced and its checkpoint written, everything committed
    /// dispatched, the queues synced, and only then the abort file removed.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.member.flush().await?;
        self.dispatch()?;
        self.flush_queues().await?;
        if self.storage.exists(&self.abort) {
            self.storage.remove_file(&self.abort)?;
            self.dirs.mark(&self.root);
        }
        self.dirs.sync(self.storage.as_ref()).await?;
        Ok(())
    }
}
