//! Reads from the tiered store (RocketMQ's `MessageStoreFetcherImpl` and the routing of
//! `TieredMessageStore.fetchFromCurrentStore`).
//!
//! Routing: a read goes to the local store when it holds the offset; to the tiered store when
//! the offset is below the local minimum or the local log is empty (RocketMQ's min offset -1,
//! #8654). Tiered reads stay within `[tiered minimum, tiered committed offset)` and check every
//! record they decode (CRC, topic, queue, queue offset): bytes from the object store are not
//! trusted, and garbage is a typed error, never a panic and never a wrong message.
//!
//! Key queries look the key up in the tiered index files (`index_service`) and read each
//! candidate record back from the queue's tiered commit log.

use std::collections::BTreeSet;

use super::flat_file::ReadPiece;
use super::flat_message::{decode_units, FlatMessageFile, TieredUnit};
use super::index_file::IndexItem;
use super::store::{FlatRef, TieredInner, TieredStore};
use super::{QueueKey, TieredError, TIERED_CQ_UNIT_BYTES};
use crate::bugs::Bug;
use crate::java_hash::{index_key_hash_of, java_string_hash};
use crate::message::{decode, DecodeOptions, Decoded, Message};
use crate::store::StoredMessage;

/// How many units a bulk read takes at most.
const MAX_UNITS_PER_READ: u64 = 1024;

impl TieredStore {
    /// Up to `max_count` messages of a queue from `queue_offset`, from the local store when it
    /// has them, else from the tiered store.
    pub async fn get(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        max_count: usize,
    ) -> Result<Vec<StoredMessage>, TieredError> {
        let inner = self.inner();
        let local_empty = inner.source.log_is_empty();
        if local_empty && inner.bugs.has(Bug::TieredFetcherLocalWhenEmpty) {
            // #8654: min offset -1 made every offset look local.
            return Ok(inner.source.get(topic, queue_id, queue_offset, max_count)?);
        }
        let local_min = inner.source.min_offset(topic, queue_id);
        let local_max = inner.source.max_offset(topic, queue_id);
        if !local_empty && queue_offset >= local_min && local_min < local_max {
            return Ok(inner.source.get(topic, queue_id, queue_offset, max_count)?);
        }
        let q = QueueKey { topic: topic.to_string(), queue_id };
        let Some(flat) = inner.flat(&q) else {
            return Ok(inner.source.get(topic, queue_id, queue_offset, max_count)?);
        };
        let limit = if local_empty || local_min >= local_max { u64::MAX } else { local_min };
        let mut out;
        let mut from = queue_offset;
        // A run of blank units (messages that expired locally before they were tiered) is
        // skipped, so a reader is never stuck before it.
        loop {
            let (msgs, next) = read_messages(inner, &flat, from, max_count as u64, limit).await?;
            out = msgs;
            if !out.is_empty() || next <= from {
                break;
            }
            from = next;
        }
        if out.len() < max_count && !local_empty {
            // The rest, if any, is local.
            let from = out.last().map_or(queue_offset, |m| m.queue_offset + 1).max(local_min);
            if from < local_max {
                out.extend(inner.source.get(topic, queue_id, from, max_count - out.len())?);
            }
        }
        Ok(out)
    }

    /// Up to `max_count` committed messages of a queue from `queue_offset`, read from the
    /// object store whatever the local store holds.
    pub async fn get_tiered(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        max_count: usize,
    ) -> Result<Vec<StoredMessage>, TieredError> {
        let q = QueueKey { topic: topic.to_string(), queue_id };
        let Some(flat) = self.inner().flat(&q) else { return Ok(Vec::new()) };
        Ok(read_messages(self.inner(), &flat, queue_offset, max_count as u64, u64::MAX).await?.0)
    }

    /// Messages of `topic` with key `key` stored within `[begin_ms, end_ms]`, local and tiered
    /// (through the tiered index), each once. Every tiered candidate is read back and kept
    /// only if it is a record of `topic` carrying `key` within the range: a hash collision, a
    /// stale item or garbage never yields a wrong message.
    pub async fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        begin_ms: i64,
        end_ms: i64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, TieredError> {
        let inner = self.inner();
        let local_empty = inner.source.log_is_empty();
        if local_empty && inner.bugs.has(Bug::TieredFetcherLocalWhenEmpty) {
            // #8654: min offset -1 looked like "everything is local".
            return Ok(inner.source.query_by_key(topic, key, begin_ms, end_ms, max)?);
        }
        let mut out =
            if local_empty { Vec::new() } else { inner.source.query_by_key(topic, key, begin_ms, end_ms, max)? };
        let mut seen: BTreeSet<(u32, u64)> = out.iter().map(|m| (m.queue_id, m.queue_offset)).collect();
        let hash = index_key_hash_of(topic, key);
        let topic_id = java_string_hash(topic);
        let items = super::index_service::query_items(&inner.index, inner.obj.as_ref(), hash, begin_ms, end_ms).await?;
        for item in items {
            if out.len() >= max {
                break;
            }
            if item.topic_id != topic_id || item.queue_id < 0 {
                continue;
            }
            let Some(m) = read_indexed(inner, topic, &item).await? else { continue };
            let in_time = m.store_timestamp_ms >= begin_ms && m.store_timestamp_ms <= end_ms;
            let has_key = m.keys.iter().any(|k| k == key) || m.uniq_key.as_deref() == Some(key);
            if m.topic == topic && in_time && has_key && seen.insert((m.queue_id, m.queue_offset)) {
                out.push(m);
            } else if !has_key || m.topic != topic {
                crate::probe!("tiered.index-candidate-rejected");
            }
        }
        Ok(out)
    }
}

/// The record an index item names, if its queue's committed commit log still holds it (an
/// item of an expired segment, or of bytes never committed, names nothing).
async fn read_indexed(
    inner: &TieredInner,
    topic: &str,
    item: &IndexItem,
) -> Result<Option<StoredMessage>, TieredError> {
    let q = QueueKey { topic: topic.to_string(), queue_id: item.queue_id as u32 };
    let Some(flat) = inner.flat(&q) else { return Ok(None) };
    let Some((start, end)) = item.range() else { return Ok(None) };
    let plan = match flat.lock().await.commit_log.read_plan(start, end - start) {
        Ok(p) => p,
        Err(TieredError::Unreadable { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let record = fetch_pieces(inner, plan).await?;
    match decode_record(&format!("{q} index item at {start}"), &record) {
        Ok(m) if m.queue_id == q.queue_id => Ok(Some(StoredMessage::from_message(m, record.len() as u32))),
        Ok(_) | Err(TieredError::Corrupt { .. }) => {
            crate::probe!("tiered.index-candidate-rejected");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Attempts of one ranged read while the object store fails transiently (a read is
/// idempotent; a time-out says nothing about the bytes).
const READ_ATTEMPTS: u32 = 3;
const READ_RETRY_MS: u64 = 100;

/// Reads exactly `len` bytes at `offset` of `key`, retrying transient failures.
async fn get_exact(inner: &TieredInner, key: &str, offset: u64, len: u64) -> Result<bytes::Bytes, TieredError> {
    let mut attempt = 1;
    loop {
        match inner.obj.get_range(key, offset, len).await {
            Ok(b) if b.len() as u64 == len => return Ok(b),
            Ok(b) => return Err(TieredError::corrupt(key, format!("asked {len} bytes, got {}", b.len()))),
            Err(e) if e.is_transient() && attempt < READ_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(READ_RETRY_MS)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The bytes of a read plan, in order.
async fn fetch_pieces(inner: &TieredInner, plan: Vec<ReadPiece>) -> Result<Vec<u8>, TieredError> {
    let mut out = Vec::with_capacity(plan.iter().map(|p| p.len as usize).sum());
    for piece in plan {
        out.extend_from_slice(&get_exact(inner, &piece.key, piece.offset, piece.len).await?);
    }
    Ok(out)
}

/// The committed units `[from, from + n)` of a queue (fewer at the committed end).
async fn read_units(inner: &TieredInner, flat: &FlatRef, from: u64, n: u64) -> Result<Vec<TieredUnit>, TieredError> {
    let (q, plan) = {
        let f = flat.lock().await;
        let to = f.commit_queue_offset().min(from.saturating_add(n));
        if from < f.min_queue_offset() || from >= to {
            return Ok(Vec::new());
        }
        (
            f.queue.to_string(),
            f.consume_queue.read_plan(from * TIERED_CQ_UNIT_BYTES, (to - from) * TIERED_CQ_UNIT_BYTES)?,
        )
    };
    decode_units(&q, &fetch_pieces(inner, plan).await?)
}

/// Reads the commit-log bytes `[start, end)` of a queue.
async fn read_commit_log(inner: &TieredInner, flat: &FlatRef, start: u64, end: u64) -> Result<Vec<u8>, TieredError> {
    let plan = flat.lock().await.commit_log.read_plan(start, end - start)?;
    fetch_pieces(inner, plan).await
}

/// The commit-log range of each non-blank unit of `units` (the first at queue offset `from`).
fn unit_ranges(q: &QueueKey, from: u64, units: &[TieredUnit]) -> Result<Vec<(u64, (u64, u64))>, TieredError> {
    units
        .iter()
        .enumerate()
        .filter(|(_, u)| !u.is_blank())
        .map(|(i, u)| {
            let offset = from + i as u64;
            u.range().map(|r| (offset, r)).ok_or_else(|| TieredError::corrupt(q, format!("unit {offset}: {u:?}")))
        })
        .collect()
}

/// The span of commit-log bytes the ranges cover.
fn span(ranges: &[(u64, (u64, u64))]) -> Option<(u64, u64)> {
    let start = ranges.iter().map(|(_, r)| r.0).min()?;
    Some((start, ranges.iter().map(|(_, r)| r.1).max()?))
}

/// Decodes each range's record out of the span's bytes (checked against its unit).
fn decode_ranges(
    q: &QueueKey,
    ranges: Vec<(u64, (u64, u64))>,
    span_start: u64,
    bytes: &[u8],
) -> Result<Vec<(u64, (u64, u64), Message)>, TieredError> {
    let mut out = Vec::with_capacity(ranges.len());
    for (offset, (start, end)) in ranges {
        let record = &bytes[(start - span_start) as usize..(end - span_start) as usize];
        out.push((offset, (start, end), decode_checked(q, offset, record)?));
    }
    Ok(out)
}

/// Up to `max` committed messages from queue offset `from`, below `limit`, and the offset
/// after the units read; blank units (messages lost locally before they were tiered) are
/// skipped.
pub(crate) async fn read_messages(
    inner: &TieredInner,
    flat: &FlatRef,
    from: u64,
    max: u64,
    limit: u64,
) -> Result<(Vec<StoredMessage>, u64), TieredError> {
    let (min, commit, q) = {
        let f = flat.lock().await;
        (f.min_queue_offset(), f.commit_queue_offset(), f.queue.clone())
    };
    let from = from.max(min);
    let to = commit.min(limit).min(from.saturating_add(max.min(MAX_UNITS_PER_READ)));
    if from >= to {
        return Ok((Vec::new(), from));
    }
    let units = read_units(inner, flat, from, to - from).await?;
    let next = from + units.len() as u64;
    let ranges = unit_ranges(&q, from, &units)?;
    let Some((span_start, span_end)) = span(&ranges) else { return Ok((Vec::new(), next)) };
    let bytes = read_commit_log(inner, flat, span_start, span_end).await?;
    let out = decode_ranges(&q, ranges, span_start, &bytes)?
        .into_iter()
        .map(|(_, (start, end), m)| StoredMessage::from_message(m, (end - start) as u32))
        .collect();
    Ok((out, next))
}

/// The committed records of a queue from `from` (at most `max` units), with their tiered
/// commit-log ranges, read while the caller holds the flat file; and the offset after them.
pub(crate) async fn committed_records(
    inner: &TieredInner,
    f: &FlatMessageFile,
    from: u64,
    max: u64,
) -> Result<(Vec<(u64, (u64, u64), Message)>, u64), TieredError> {
    let from = from.max(f.min_queue_offset());
    let to = f.commit_queue_offset().min(from.saturating_add(max.min(MAX_UNITS_PER_READ)));
    if from >= to {
        return Ok((Vec::new(), from));
    }
    let plan = f.consume_queue.read_plan(from * TIERED_CQ_UNIT_BYTES, (to - from) * TIERED_CQ_UNIT_BYTES)?;
    let units = decode_units(&f.queue.to_string(), &fetch_pieces(inner, plan).await?)?;
    let next = from + units.len() as u64;
    let ranges = unit_ranges(&f.queue, from, &units)?;
    let Some((span_start, span_end)) = span(&ranges) else { return Ok((Vec::new(), next)) };
    let bytes = fetch_pieces(inner, f.commit_log.read_plan(span_start, span_end - span_start)?).await?;
    Ok((decode_ranges(&f.queue, ranges, span_start, &bytes)?, next))
}

/// Decodes one tiered record and checks it is the message the unit names.
pub fn decode_checked(q: &QueueKey, queue_offset: u64, record: &[u8]) -> Result<Message, TieredError> {
    let what = format!("{q} unit {queue_offset}");
    let m = decode_record(&what, record)?;
    if m.topic != q.topic || m.queue_id != q.queue_id || m.queue_offset != queue_offset {
        return Err(TieredError::corrupt(what, format!("record is {}/{}@{}", m.topic, m.queue_id, m.queue_offset)));
    }
    Ok(m)
}

/// Decodes one whole tiered record (CRC checked).
pub fn decode_record(what: &str, record: &[u8]) -> Result<Message, TieredError> {
    let opts = DecodeOptions { check_crc: true, max_record_bytes: record.len() as u64, ..DecodeOptions::default() };
    match decode(record, &opts) {
        Decoded::Valid(m, size) if size as usize == record.len() => Ok(m),
        Decoded::Valid(_, size) => {
            Err(TieredError::corrupt(what, format!("record is {size} bytes, unit says {}", record.len())))
        }
        Decoded::Blank { .. } => Err(TieredError::corrupt(what, "a blank record")),
        Decoded::Corrupt(c) => Err(TieredError::corrupt(what, c.reason.to_string())),
    }
}

/// The end (PHYSICALOFFSET + size) in the local log of the last message a queue tiered; 0
/// when it tiered none.
pub(crate) async fn last_local_end(inner: &TieredInner, f: &FlatMessageFile) -> Result<u64, TieredError> {
    let (min, mut at) = (f.min_queue_offset(), f.commit_queue_offset());
    while at > min {
        let from = at.saturating_sub(64).max(min);
        let plan = f.consume_queue.read_plan(from * TIERED_CQ_UNIT_BYTES, (at - from) * TIERED_CQ_UNIT_BYTES)?;
        let mut units = Vec::new();
        for piece in plan {
            units.extend(decode_units(&piece.key, &get_exact(inner, &piece.key, piece.offset, piece.len).await?)?);
        }
        if let Some((i, (start, end))) = units.iter().enumerate().rev().find_map(|(i, u)| u.range().map(|r| (i, r))) {
            let plan = f.commit_log.read_plan(start, end - start)?;
            let mut record = Vec::new();
            for piece in plan {
                record.extend_from_slice(&get_exact(inner, &piece.key, piece.offset, piece.len).await?);
            }
            let m = decode_checked(&f.queue, from + i as u64, &record)?;
            return Ok(m.phy_offset + record.len() as u64);
        }
        at = from;
    }
    Ok(0)
}

/// The tiered commit-log offset of the first unit that stays when the consume queue's head
/// segments older than `cutoff_ms` go; `None` when nothing would go or no unit stays.
pub(crate) async fn first_cl_offset(
    inner: &TieredInner,
    f: &FlatMessageFile,
    cutoff_ms: i64,
) -> Result<Option<u64>, TieredError> {
    let segs = f.consume_queue.segments();
    let expirable = |i: usize| {
        let s = &segs[i];
        i + 1 < segs.len() && s.is_sealed() && s.end_ts_ms() > 0 && s.end_ts_ms() < cutoff_ms
    };
    let mut first = 0;
    while first < segs.len() && expirable(first) {
        first += 1;
    }
    if first == 0 {
        return Ok(None);
    }
    let Some(seg) = segs.get(first) else { return Ok(None) };
    let units_in = seg.commit_position() / TIERED_CQ_UNIT_BYTES;
    let n = units_in.min(64);
    if n == 0 {
        return Ok(None);
    }
    let bytes = seg.read(inner.obj.as_ref(), seg.base_offset(), n * TIERED_CQ_UNIT_BYTES).await?;
    Ok(decode_units(seg.key(), &bytes)?.iter().find_map(|u| u.range().map(|r| r.0)))
}
