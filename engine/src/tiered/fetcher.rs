//! Reads from the tiered store (RocketMQ's `MessageStoreFetcherImpl` and the routing of
//! `TieredMessageStore.fetchFromCurrentStore`).
//!
//! Routing: a read goes to the local store when it holds the offset; to the tiered store when
//! the offset is below the local minimum or the local log is empty (RocketMQ's min offset -1,
//! #8654). Tiered reads stay within `[tiered minimum, tiered committed offset)` and check every
//! record they decode (CRC, topic, queue, queue offset): bytes from the object store are not
//! trusted, and garbage is a typed error, never a panic and never a wrong message.
//!
//! Key queries scan the committed messages of the topic's queues (bulk reads, two requests per
//! segment); the tiered index file replaces the scan.

use std::collections::BTreeSet;

use super::flat_message::{decode_units, FlatMessageFile, TieredUnit};
use super::store::{FlatRef, TieredInner, TieredStore};
use super::{QueueKey, TieredError, TIERED_CQ_UNIT_BYTES};
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

    /// Messages of `topic` with key `key` stored within `[begin_ms, end_ms]`, local and tiered,
    /// each once.
    pub async fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        begin_ms: i64,
        end_ms: i64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, TieredError> {
        let inner = self.inner();
        let mut out = if inner.source.log_is_empty() {
            Vec::new()
        } else {
            inner.source.query_by_key(topic, key, begin_ms, end_ms, max)?
        };
        let mut seen: BTreeSet<(u32, u64)> = out.iter().map(|m| (m.queue_id, m.queue_offset)).collect();
        for (q, flat) in inner.all_flats() {
            if q.topic != topic || out.len() >= max {
                continue;
            }
            let (min, commit) = {
                let f = flat.lock().await;
                (f.min_queue_offset(), f.commit_queue_offset())
            };
            let mut from = min;
            while from < commit && out.len() < max {
                let (msgs, next) = read_messages(inner, &flat, from, MAX_UNITS_PER_READ, u64::MAX).await?;
                if next <= from {
                    break;
                }
                from = next;
                for m in msgs {
                    let in_time = m.store_timestamp_ms >= begin_ms && m.store_timestamp_ms <= end_ms;
                    let has_key = m.keys.iter().any(|k| k == key) || m.uniq_key.as_deref() == Some(key);
                    if in_time && has_key && seen.insert((m.queue_id, m.queue_offset)) && out.len() < max {
                        out.push(m);
                    }
                }
            }
        }
        Ok(out)
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

/// The committed units `[from, from + n)` of a queue (fewer at the committed end).
async fn read_units(inner: &TieredInner, flat: &FlatRef, from: u64, n: u64) -> Result<Vec<TieredUnit>, TieredError> {
    let plan = {
        let f = flat.lock().await;
        let to = f.commit_queue_offset().min(from.saturating_add(n));
        if from < f.min_queue_offset() || from >= to {
            return Ok(Vec::new());
        }
        f.consume_queue.read_plan(from * TIERED_CQ_UNIT_BYTES, (to - from) * TIERED_CQ_UNIT_BYTES)?
    };
    let mut units = Vec::new();
    for piece in plan {
        let bytes = get_exact(inner, &piece.key, piece.offset, piece.len).await?;
        units.extend(decode_units(&piece.key, &bytes)?);
    }
    Ok(units)
}

/// Reads the commit-log bytes `[start, end)` of a queue.
async fn read_commit_log(inner: &TieredInner, flat: &FlatRef, start: u64, end: u64) -> Result<Vec<u8>, TieredError> {
    let plan = flat.lock().await.commit_log.read_plan(start, end - start)?;
    let mut out = Vec::with_capacity((end - start) as usize);
    for piece in plan {
        out.extend_from_slice(&get_exact(inner, &piece.key, piece.offset, piece.len).await?);
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
    let (min, commit) = {
        let f = flat.lock().await;
        (f.min_queue_offset(), f.commit_queue_offset())
    };
    let from = from.max(min);
    let to = commit.min(limit).min(from.saturating_add(max.min(MAX_UNITS_PER_READ)));
    if from >= to {
        return Ok((Vec::new(), from));
    }
    let q = flat.lock().await.queue.clone();
    let units = read_units(inner, flat, from, to - from).await?;
    let ranges: Vec<(u64, (u64, u64))> = units
        .iter()
        .enumerate()
        .filter(|(_, u)| !u.is_blank())
        .map(|(i, u)| {
            let offset = from + i as u64;
            u.range().map(|r| (offset, r)).ok_or_else(|| TieredError::corrupt(&q, format!("unit {offset}: {u:?}")))
        })
        .collect::<Result<_, _>>()?;
    let next = from + units.len() as u64;
    let Some(span_start) = ranges.iter().map(|(_, r)| r.0).min() else { return Ok((Vec::new(), next)) };
    let span_end = ranges.iter().map(|(_, r)| r.1).max().expect("non-empty");
    let bytes = read_commit_log(inner, flat, span_start, span_end).await?;
    let mut out = Vec::with_capacity(ranges.len());
    for (offset, (start, end)) in ranges {
        let record = &bytes[(start - span_start) as usize..(end - span_start) as usize];
        let m = decode_checked(&q, offset, record)?;
        out.push(StoredMessage::from_message(m, record.len() as u32));
    }
    Ok((out, next))
}

/// Decodes one tiered record and checks it is the message the unit names.
pub fn decode_checked(q: &QueueKey, queue_offset: u64, record: &[u8]) -> Result<Message, TieredError> {
    let what = || format!("{q} unit {queue_offset}");
    let opts = DecodeOptions { check_crc: true, max_record_bytes: record.len() as u64, ..DecodeOptions::default() };
    match decode(record, &opts) {
        Decoded::Valid(m, size) if size as usize == record.len() => {
            if m.topic != q.topic || m.queue_id != q.queue_id || m.queue_offset != queue_offset {
                return Err(TieredError::corrupt(
                    what(),
                    format!("record is {}/{}@{}", m.topic, m.queue_id, m.queue_offset),
                ));
            }
            Ok(m)
        }
        Decoded::Valid(_, size) => Err(TieredError::corrupt(what(), format!("record is {size} bytes, unit says {}", record.len()))),
        Decoded::Blank { .. } => Err(TieredError::corrupt(what(), "a blank record")),
        Decoded::Corrupt(c) => Err(TieredError::corrupt(what(), c.reason.to_string())),
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
        if let Some((i, (start, end))) =
            units.iter().enumerate().rev().find_map(|(i, u)| u.range().map(|r| (i, r)))
        {
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
