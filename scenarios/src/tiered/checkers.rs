//! The `tiered` scenario's checkers, written against what the tiered store promises, never
//! against a catalogued bug. The remote ones decode the object store's contents themselves
//! (keys, segment bytes) and read the metadata file from the broker's disk image.
//!
//! - `tiered-contiguity`: a flat file's segments are contiguous (base + committed extent =
//!   next base; a consume queue's extent in whole units) and the metadata's size equals the
//!   remote size for every segment but the last of its flat file (only the last may lag: its
//!   newest commit may not be saved yet).
//! - `tiered-readable`: every unit in the object store lies inside the queue's uploaded
//!   commit-log bytes and decodes to the message with that queue offset, whose body is the one
//!   the producer sent for that queue (and its acked offset, if acked); reads return genuine
//!   messages of the queue asked for, at their acked offsets.
//! - `tiered-progress`: once faults stop, every queue's tiered offset reaches its local
//!   maximum: within a bound, or later only while the dispatcher keeps moving (a stall of
//!   a few seconds with a queue behind fails it), and within a hard cap in any case.
//! - `tiered-durability`: after a clean shutdown and a replaced disk, everything the tiered
//!   store reported committed reads back, and new messages never reuse a queue offset.
//! - `index-complete`: after a clean shutdown that reported nothing left and a replaced disk,
//!   the keys of messages the tiered store committed are found by a key query (every key of
//!   the newest messages of each queue, and a spread of the others); a query returns only
//!   genuine messages carrying the key.
//! - `routing`: with an empty local log, a read returns what the tiered store holds.

use std::collections::BTreeMap;

use bytes::Bytes;
use engine::tiered::fetcher::decode_checked;
use engine::tiered::flat_message::{decode_units, TieredUnit};
use engine::tiered::{keys, FileKind, QueueKey, TieredError, TieredStore, TIERED_CQ_UNIT_BYTES};
use engine::{Store, StoredMessage};
use sim::Violation;

use super::history::{id_of_body, History, MsgId, Queue};
use super::KEY_PREFIX;

pub const TIERED_CONTIGUITY: &str = "tiered-contiguity";
pub const TIERED_READABLE: &str = "tiered-readable";
pub const TIERED_PROGRESS: &str = "tiered-progress";
pub const TIERED_DURABILITY: &str = "tiered-durability";
pub const INDEX_COMPLETE: &str = "index-complete";
pub const ROUTING: &str = "routing";

fn v(checker: &str, message: String, now_ms: u64) -> Violation {
    Violation { checker: checker.to_string(), message, at_ms: now_ms }
}

/// The object store's segments, per flat file, in base order.
type Flats = BTreeMap<(QueueKey, FileKind), Vec<(u64, Bytes)>>;

fn flats(objects: &BTreeMap<String, Bytes>) -> Flats {
    let mut out: Flats = BTreeMap::new();
    for (key, bytes) in objects {
        if let Some((q, kind, base)) = keys::parse(KEY_PREFIX, key).filter(|(_, k, _)| *k != FileKind::Index) {
            out.entry((q, kind)).or_default().push((base, bytes.clone()));
        }
    }
    out.values_mut().for_each(|segs| segs.sort_by_key(|(b, _)| *b));
    out
}

/// A segment's extent in its flat file's offsets: whole units for a consume queue.
fn extent(kind: FileKind, len: usize) -> u64 {
    let unit = kind.unit_bytes();
    len as u64 / unit * unit
}

/// `tiered-contiguity`.
pub fn contiguity(
    objects: &BTreeMap<String, Bytes>,
    metadata: Option<&[u8]>,
    when: &str,
    now_ms: u64,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for ((q, kind), segs) in flats(objects) {
        for w in segs.windows(2) {
            let end = w[0].0 + extent(kind, w[0].1.len());
            if end != w[1].0 {
                out.push(v(
                    TIERED_CONTIGUITY,
                    format!(
                        "{when}: {q} {}: segment at {} ends at {end}, the next starts at {}",
                        kind.dir_name(),
                        w[0].0,
                        w[1].0
                    ),
                    now_ms,
                ));
            }
        }
    }
    let Some(meta) = metadata else { return out };
    let parsed: serde_json::Value = match serde_json::from_slice(meta) {
        Ok(m) => m,
        Err(e) => {
            out.push(v(TIERED_CONTIGUITY, format!("{when}: the metadata file does not parse: {e}"), now_ms));
            return out;
        }
    };
    let Some(segments) = parsed.get("segments").and_then(|s| s.as_object()) else {
        out.push(v(TIERED_CONTIGUITY, format!("{when}: the metadata file has no segment table"), now_ms));
        return out;
    };
    // Index objects are whole files, not a flat file's segments.
    let keys: Vec<&String> = segments
        .keys()
        .filter(|k| keys::parse(KEY_PREFIX, k).is_some_and(|(_, kind, _)| kind != FileKind::Index))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let dir = &key[..key.rfind('/').unwrap_or(0)];
        let last = keys.get(i + 1).is_none_or(|next| !next.starts_with(&format!("{dir}/")));
        if last {
            continue;
        }
        let size = segments[*key].get("size").and_then(|s| s.as_u64());
        let remote = objects.get(*key).map(|b| b.len() as u64);
        if size != Some(remote.unwrap_or(0)) {
            out.push(v(
                TIERED_CONTIGUITY,
                format!(
                    "{when}: metadata says sealed segment {key} holds {size:?} bytes, the object store {}",
                    remote.map_or("has no such object".to_string(), |r| format!("{r}"))
                ),
                now_ms,
            ));
        }
    }
    out
}

/// The record at `[start, end)` of a queue's commit log, if one uploaded segment holds it.
fn record(segs: &[(u64, Bytes)], start: u64, end: u64) -> Option<&[u8]> {
    let (base, bytes) = segs.iter().rev().find(|(b, _)| *b <= start)?;
    bytes.get((start - base) as usize..(end - base) as usize)
}

/// `tiered-readable` over the object store's contents. Returns the violations and, per queue
/// offset, the id of the message the object store holds (`None` for a blank unit).
pub fn readable(
    objects: &BTreeMap<String, Bytes>,
    h: &History,
    when: &str,
    now_ms: u64,
) -> (Vec<Violation>, BTreeMap<(Queue, u64), Option<MsgId>>) {
    let all = flats(objects);
    let mut out = Vec::new();
    let mut ids = BTreeMap::new();
    let no_segments = Vec::new();
    for ((q, kind), cq_segs) in &all {
        if *kind != FileKind::ConsumeQueue {
            continue;
        }
        let cl_segs = all.get(&(q.clone(), FileKind::CommitLog)).unwrap_or(&no_segments);
        let queue: Queue = (q.topic.clone(), q.queue_id);
        for (base, bytes) in cq_segs {
            let whole = extent(FileKind::ConsumeQueue, bytes.len()) as usize;
            let Ok(units) = decode_units("", &bytes[..whole]) else { continue };
            for (i, unit) in units.iter().enumerate() {
                let offset = base / TIERED_CQ_UNIT_BYTES + i as u64;
                match check_unit(q, offset, unit, cl_segs, h) {
                    Ok(id) => {
                        ids.insert((queue.clone(), offset), id);
                    }
                    Err(reason) => out.push(v(TIERED_READABLE, format!("{when}: {q} unit {offset}: {reason}"), now_ms)),
                }
            }
        }
    }
    (out, ids)
}

fn check_unit(
    q: &QueueKey,
    offset: u64,
    unit: &TieredUnit,
    cl_segs: &[(u64, Bytes)],
    h: &History,
) -> Result<Option<MsgId>, String> {
    if unit.is_blank() {
        return Ok(None);
    }
    let (start, end) = unit.range().ok_or_else(|| format!("not a unit: {unit:?}"))?;
    let rec = record(cl_segs, start, end)
        .ok_or_else(|| format!("points at commit-log bytes [{start}, {end}) no uploaded segment holds"))?;
    let m = decode_checked(q, offset, rec).map_err(|e| e.to_string())?;
    let id = check_message(h, &q.topic, q.queue_id, offset, &m.body)?;
    Ok(Some(id))
}

/// A message read at `offset` of a queue is one the producers sent to that queue, at its acked
/// offset if it was acked.
fn check_message(h: &History, topic: &str, queue_id: u32, offset: u64, body: &[u8]) -> Result<MsgId, String> {
    let id = id_of_body(body).ok_or("the body is not one a producer sent")?;
    match h.sends.get(&id) {
        Some((t, q)) if t == topic && *q == queue_id => {}
        Some((t, q)) => return Err(format!("message {id:?} was sent to {t}/{q}")),
        None => return Err(format!("message {id:?} was never sent")),
    }
    if let Some(acked) = h.acks.get(&id) {
        if *acked != offset {
            return Err(format!("message {id:?} was acked at queue offset {acked}"));
        }
    }
    Ok(id)
}

/// Reads the consumer got: genuine messages of the queue, in order from `from`.
pub fn check_reads(
    h: &History,
    topic: &str,
    queue_id: u32,
    from: u64,
    msgs: &[StoredMessage],
    now_ms: u64,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut prev = None;
    for m in msgs {
        if m.queue_offset < from || prev.is_some_and(|p| m.queue_offset <= p) {
            out.push(v(
                TIERED_READABLE,
                format!("read of {topic}/{queue_id} from {from} returned offset {} out of order", m.queue_offset),
                now_ms,
            ));
        }
        prev = Some(m.queue_offset);
        if m.topic != topic || m.queue_id != queue_id {
            out.push(v(
                TIERED_READABLE,
                format!("read of {topic}/{queue_id} returned a message of {}/{}", m.topic, m.queue_id),
                now_ms,
            ));
            continue;
        }
        if let Err(reason) = check_message(h, topic, queue_id, m.queue_offset, &m.body) {
            out.push(v(TIERED_READABLE, format!("read {topic}/{queue_id}@{}: {reason}", m.queue_offset), now_ms));
        }
    }
    out
}

/// `tiered-durability`: on a replaced disk, every offset the tiered store reported committed
/// at its last clean stop reads back as the message the object store held.
pub async fn durability_after_replacement(
    tiered: &TieredStore,
    committed: &BTreeMap<Queue, (u64, u64)>,
    ids: &BTreeMap<(Queue, u64), Option<MsgId>>,
    now_ms: u64,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for ((topic, q), &(min, commit)) in committed {
        let mut got: BTreeMap<u64, MsgId> = BTreeMap::new();
        let mut from = min;
        let mut failures = 0;
        while from < commit {
            match tiered.get(topic, *q, from, 64).await {
                Ok(msgs) if msgs.is_empty() => break,
                Ok(msgs) => {
                    from = msgs.last().map_or(commit, |m| m.queue_offset + 1);
                    for m in msgs {
                        if let Some(id) = id_of_body(&m.body) {
                            got.insert(m.queue_offset, id);
                        }
                    }
                }
                Err(e) if failures < READ_RETRIES && is_transient(&e) => {
                    // The object store still fails now and then: a reader tries again.
                    failures += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => {
                    out.push(v(
                        TIERED_DURABILITY,
                        format!("{topic}/{q}: read at {from} on a replaced disk failed: {e}"),
                        now_ms,
                    ));
                    break;
                }
            }
        }
        for offset in min..commit {
            let queue = (topic.clone(), *q);
            let expected = ids.get(&(queue, offset));
            match (expected, got.get(&offset)) {
                (Some(None), None) => {}
                (Some(Some(id)), Some(g)) if id == g => {}
                (expected, got) => {
                    out.push(v(
                        TIERED_DURABILITY,
                        format!(
                            "{topic}/{q}@{offset} (committed [{min}, {commit})): the object store held {expected:?}, a replaced disk reads {got:?}"
                        ),
                        now_ms,
                    ));
                    break;
                }
            }
        }
    }
    out
}

/// Reads of one queue a replaced-disk check retries after transient object-store failures.
const READ_RETRIES: u32 = 20;

fn is_transient(e: &TieredError) -> bool {
    matches!(e, TieredError::Object(o) if o.is_transient())
}

/// After a replaced disk a new message of a queue lands after everything tiered: queue
/// offsets are never reused.
pub async fn offsets_continue(store: &Store, committed: &BTreeMap<Queue, (u64, u64)>, now_ms: u64) -> Vec<Violation> {
    let mut out = Vec::new();
    for ((topic, q), &(_, commit)) in committed {
        if commit == 0 {
            continue;
        }
        match store.put(topic, *q, b"after the replaced disk", None, &[]).await {
            Ok(r) if r.queue_offset >= commit => {}
            Ok(r) => out.push(v(
                TIERED_DURABILITY,
                format!("{topic}/{q}: a new message got queue offset {}, below the tiered {commit}", r.queue_offset),
                now_ms,
            )),
            Err(e) => {
                out.push(v(TIERED_DURABILITY, format!("{topic}/{q}: a put on a replaced disk failed: {e}"), now_ms))
            }
        }
    }
    out
}

/// A key the index must find: the message committed at `offset` of `queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedKey {
    pub queue: Queue,
    pub offset: u64,
    pub id: MsgId,
    pub key: String,
}

/// Every key of the newest messages of each committed queue and a spread of the others (at
/// most `max`), from what the object store held (`ids`) within the committed ranges.
pub fn expected_keys(h: &History, max: usize) -> Vec<ExpectedKey> {
    let mut all = Vec::new();
    for ((topic, q), &(min, commit)) in &h.committed {
        for offset in min..commit {
            let queue = (topic.clone(), *q);
            let Some(Some(id)) = h.remote_ids.get(&(queue.clone(), offset)) else { continue };
            for key in h.keys.get(id).into_iter().flatten() {
                all.push((commit - offset, ExpectedKey { queue: queue.clone(), offset, id: *id, key: key.clone() }));
            }
        }
    }
    const NEWEST: u64 = 8;
    let (mut out, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|(age, _)| *age <= NEWEST);
    let room = max.saturating_sub(out.len()).max(1);
    let step = rest.len().div_ceil(room).max(1);
    out.extend(rest.into_iter().step_by(step));
    out.into_iter().map(|(_, e)| e).collect()
}

/// The most results one `index-complete` query asks for.
const QUERY_MAX: usize = 64;
/// Query attempts per key while the object store fails transiently.
const QUERY_ATTEMPTS: u32 = 5;

/// `index-complete`: each expected key is found (a query that keeps failing transiently says
/// nothing; one failing otherwise is a violation). Every result must carry its key.
pub async fn index_complete(tiered: &TieredStore, expected: &[ExpectedKey], when: &str, now_ms: u64) -> Vec<Violation> {
    let mut out = Vec::new();
    for e in expected {
        let (topic, q) = &e.queue;
        let mut attempt = 0;
        let got = loop {
            attempt += 1;
            match tiered.query_by_key(topic, &e.key, 0, i64::MAX, QUERY_MAX).await {
                Ok(msgs) => break Some(msgs),
                Err(err) if is_transient(&err) && attempt < QUERY_ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(err) if is_transient(&err) => break None,
                // A local disk in an error window says nothing about the index.
                Err(TieredError::Io(_) | TieredError::Store(_)) => break None,
                Err(err) => {
                    out.push(v(
                        INDEX_COMPLETE,
                        format!("{when}: query of {topic} key {} failed: {err}", e.key),
                        now_ms,
                    ));
                    break None;
                }
            }
        };
        let Some(msgs) = got else { continue };
        for m in &msgs {
            if m.topic != *topic || !(m.keys.contains(&e.key) || m.uniq_key.as_deref() == Some(&e.key)) {
                out.push(v(
                    INDEX_COMPLETE,
                    format!(
                        "{when}: query of {topic} key {} returned {}/{}@{} without it",
                        e.key, m.topic, m.queue_id, m.queue_offset
                    ),
                    now_ms,
                ));
            }
        }
        let found =
            msgs.iter().any(|m| m.queue_id == *q && m.queue_offset == e.offset && id_of_body(&m.body) == Some(e.id));
        // A key shared by more messages than a query returns may leave this one out.
        if !found && msgs.len() < QUERY_MAX {
            out.push(v(
                INDEX_COMPLETE,
                format!(
                    "{when}: key {} of {topic}/{q}@{} ({:?}), committed to the tiered store, is not found ({} results)",
                    e.key,
                    e.offset,
                    e.id,
                    msgs.len()
                ),
                now_ms,
            ));
        }
    }
    out
}

/// `routing`: with the local log empty, a read of each committed queue from its tiered
/// minimum returns what the tiered store holds there (not nothing, and the same messages as
/// far as both reads go).
pub async fn routing(
    store: &Store,
    tiered: &TieredStore,
    committed: &BTreeMap<Queue, (u64, u64)>,
    when: &str,
    now_ms: u64,
) -> Vec<Violation> {
    let mut out = Vec::new();
    if store.min_phy_offset() < store.max_phy_offset() {
        return out;
    }
    for ((topic, q), &(min, commit)) in committed {
        if commit <= min {
            continue;
        }
        let (Ok(tiered_msgs), Ok(routed)) =
            (tiered.get_tiered(topic, *q, min, 16).await, tiered.get(topic, *q, min, 16).await)
        else {
            continue;
        };
        if tiered_msgs.is_empty() {
            continue;
        }
        let offsets = |m: &[StoredMessage]| m.iter().map(|m| m.queue_offset).collect::<Vec<_>>();
        // The dispatcher may commit more between the two reads: their common part must agree.
        let n = routed.len().min(tiered_msgs.len());
        if routed.is_empty() || offsets(&routed[..n]) != offsets(&tiered_msgs[..n]) {
            out.push(v(
                ROUTING,
                format!(
                    "{when}: with an empty local log a read of {topic}/{q} from {min} returned offsets {:?}, the tiered store holds {:?}",
                    offsets(&routed),
                    offsets(&tiered_msgs)
                ),
                now_ms,
            ));
        }
    }
    out
}

/// A key query's results: genuine messages of the topic carrying the key.
pub fn check_query(h: &History, topic: &str, key: &str, msgs: &[StoredMessage], now_ms: u64) -> Vec<Violation> {
    let mut out = Vec::new();
    for m in msgs {
        if m.topic != topic || !(m.keys.iter().any(|k| k == key) || m.uniq_key.as_deref() == Some(key)) {
            out.push(v(
                INDEX_COMPLETE,
                format!("query of {topic} key {key} returned {}/{}@{} without it", m.topic, m.queue_id, m.queue_offset),
                now_ms,
            ));
            continue;
        }
        if let Err(reason) = check_message(h, topic, m.queue_id, m.queue_offset, &m.body) {
            out.push(v(
                TIERED_READABLE,
                format!("query of {topic} key {key}: {}@{}: {reason}", m.queue_id, m.queue_offset),
                now_ms,
            ));
        }
    }
    out
}
