//! What the checkers look at besides the history: the commit log as decoded by the checker
//! itself from the disk (`DecodedLog`, with the engine's one decoder), and a snapshot of what
//! the store answers (`StoreView`: consume queues read through `get`, key lookups, holds).
//!
//! Both are plain data so that tests can build bad states by hand.

use std::collections::BTreeMap;
use std::path::Path;

use engine::io::HoldSummary;
use engine::message::{decode, DecodeOptions, Decoded};
use engine::{Store, StoredMessage};

use super::history::{id_of_body, MsgId};

/// One valid record of the commit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMsg {
    pub phy: u64,
    pub size: u32,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub store_timestamp_ms: i64,
    pub tags: Option<String>,
    pub keys: Vec<String>,
    /// `None`: the body is not one of ours.
    pub id: Option<MsgId>,
}

impl LogMsg {
    pub fn from_stored(m: &StoredMessage) -> LogMsg {
        LogMsg {
            phy: m.phy_offset,
            size: m.size_bytes,
            topic: m.topic.clone(),
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            store_timestamp_ms: m.store_timestamp_ms,
            tags: m.tags.clone(),
            keys: m.keys.clone(),
            id: id_of_body(&m.body),
        }
    }
}

/// The longest valid prefix of the commit log, decoded from the files' bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodedLog {
    pub msgs: BTreeMap<u64, LogMsg>,
    /// End of the valid prefix.
    pub end: u64,
    /// Where and why decoding stopped before the end of the last file.
    pub stopped: Option<(u64, String)>,
}

impl DecodedLog {
    /// Where each of our ids sits (several places: a duplicate).
    pub fn by_id(&self) -> BTreeMap<MsgId, Vec<u64>> {
        let mut out: BTreeMap<MsgId, Vec<u64>> = BTreeMap::new();
        for m in self.msgs.values() {
            if let Some(id) = m.id {
                out.entry(id).or_default().push(m.phy);
            }
        }
        out
    }

    /// Is message `id` at `phy`?
    pub fn has_at(&self, id: MsgId, phy: u64) -> bool {
        self.msgs.get(&phy).is_some_and(|m| m.id == Some(id))
    }

    pub fn max_store_timestamp_ms(&self) -> Option<i64> {
        self.msgs.values().map(|m| m.store_timestamp_ms).max()
    }
}

/// Decodes commit-log files `(start offset, bytes)` as recovery should: from the first file,
/// record after record, a blank moving to the next file, stopping at the first record that
/// is not valid (CRC checked) or at a gap between files.
pub fn decode_log(files: &[(u64, Vec<u8>)], max_record_bytes: u64) -> DecodedLog {
    let mut log = DecodedLog { end: files.first().map_or(0, |f| f.0), ..DecodedLog::default() };
    for (start, bytes) in files {
        if *start != log.end {
            log.stopped = Some((log.end, format!("next file starts at {start}")));
            return log;
        }
        if let Err(stop) = decode_file(*start, bytes, max_record_bytes, &mut log) {
            log.stopped = Some(stop);
            return log;
        }
    }
    log
}

/// Decodes one file into `log`; `Err((offset, reason))` where the valid prefix ends.
fn decode_file(start: u64, bytes: &[u8], max_record_bytes: u64, log: &mut DecodedLog) -> Result<(), (u64, String)> {
    let len = bytes.len() as u64;
    let mut pos = 0u64;
    while pos < len {
        let opts = DecodeOptions {
            check_crc: true,
            check_dup_info: false,
            expected_phy_offset: Some(start + pos),
            bytes_left_in_file: Some(len - pos),
            max_record_bytes,
        };
        match decode(&bytes[pos as usize..], &opts) {
            Decoded::Valid(m, size) => {
                let stored = StoredMessage::from_message(m, size);
                log.msgs.insert(start + pos, LogMsg::from_stored(&stored));
                pos += u64::from(size);
                log.end = start + pos;
            }
            Decoded::Blank { .. } => break,
            Decoded::Corrupt(c) => return Err((start + pos, c.reason.to_string())),
        }
    }
    log.end = start + len;
    Ok(())
}

/// Reads the commit-log files of the store at `root` from a disk image function (the checker
/// reads the disk as an observer, without fault injection).
pub fn read_commit_log(names: &[String], root: &Path, image: impl Fn(&Path) -> Option<Vec<u8>>) -> Vec<(u64, Vec<u8>)> {
    let mut files: Vec<(u64, Vec<u8>)> = names
        .iter()
        .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|n| Some((n.parse::<u64>().ok()?, image(&root.join("commitlog").join(n))?)))
        .collect();
    files.sort_by_key(|f| f.0);
    files
}

/// One consume queue as the store serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    pub min_offset: u64,
    pub max_offset: u64,
    /// Every message from `min_offset` to `max_offset` through `get`, or its error.
    pub entries: Result<Vec<LogMsg>, String>,
}

/// A snapshot of what the store answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreView {
    pub max_phy_offset: u64,
    pub queues: BTreeMap<(String, u32), QueueView>,
    /// `query_by_key` results for every key of every message in the decoded log.
    pub key_hits: BTreeMap<(String, String), Result<Vec<LogMsg>, String>>,
    pub holds: Vec<HoldSummary>,
    pub behind_bytes: u64,
    /// Where the store's last recovery began re-verifying the log (older files are trusted).
    pub recovery_scan_start: u64,
}

/// How many messages a key query asks for at least.
const KEY_QUERY_MAX: usize = 8;
/// How many messages one `get` asks for while capturing.
const GET_CHUNK: usize = 64;

impl StoreView {
    /// Reads every queue (those the store knows and those the log has) and looks up every
    /// key of the log. Any error is the store's answer: the caller pauses injected disk
    /// faults while it captures.
    pub fn capture(store: &Store, log: &DecodedLog) -> StoreView {
        let mut names: std::collections::BTreeSet<(String, u32)> = store.queues().into_iter().collect();
        names.extend(log.msgs.values().map(|m| (m.topic.clone(), m.queue_id)));
        let queues = names.into_iter().map(|k| (k.clone(), capture_queue(store, &k.0, k.1))).collect();
        // A key the swarm's workload shares between messages is asked for all of them.
        let mut per_key: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for m in log.msgs.values() {
            for key in &m.keys {
                *per_key.entry((&m.topic, key)).or_default() += 1;
            }
        }
        let mut key_hits = BTreeMap::new();
        for m in log.msgs.values() {
            for key in &m.keys {
                if key_hits.contains_key(&(m.topic.clone(), key.clone())) {
                    continue;
                }
                let max = per_key[&(m.topic.as_str(), key.as_str())].max(KEY_QUERY_MAX);
                let hits = store
                    .query_by_key(&m.topic, key, i64::MIN / 2, i64::MAX / 2, max)
                    .map(|v| v.iter().map(LogMsg::from_stored).collect())
                    .map_err(|e| e.to_string());
                key_hits.insert((m.topic.clone(), key.clone()), hits);
            }
        }
        StoreView {
            max_phy_offset: store.max_phy_offset(),
            queues,
            key_hits,
            holds: store.holds().outstanding(),
            behind_bytes: store.dispatch_behind_bytes(),
            recovery_scan_start: store.last_recovery().scan_start_offset,
        }
    }
}

fn capture_queue(store: &Store, topic: &str, queue_id: u32) -> QueueView {
    let (min_offset, max_offset) = (store.min_offset(topic, queue_id), store.max_offset(topic, queue_id));
    let mut entries = Vec::new();
    let mut next = min_offset;
    while next < max_offset {
        match store.get(topic, queue_id, next, GET_CHUNK) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => {
                next = batch.last().map_or(next, |m| m.queue_offset + 1);
                entries.extend(batch.iter().map(LogMsg::from_stored));
            }
            Err(e) => return QueueView { min_offset, max_offset, entries: Err(e.to_string()) },
        }
    }
    QueueView { min_offset, max_offset, entries: Ok(entries) }
}
