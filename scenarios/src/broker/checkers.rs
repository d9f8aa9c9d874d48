//! The broker scenario's checkers. Each is a named, pure function over the history, the
//! commit log as the checker decoded it, a snapshot of what the store answers, and what
//! happened since the last boot; each judges only what the store promises for its flush
//! mode (see `required`).
//!
//! Bit flips: a flipped bit in an acknowledged, durable record is media loss that a single
//! copy cannot survive. After any bit flip the checkers stop demanding survival and
//! completeness (durability, holes, consume-queue and index completeness, the recovered end)
//! and only demand detection: nothing invalid is ever returned as a valid message.

use std::collections::BTreeMap;

use engine::checkpoint::CheckpointData;
use engine::consume_queue::CqUnit;
use engine::io::HoldKind;
use engine::FlushMode;
use sim::Violation;

use super::history::{Epoch, History, MsgId, Send, SendOutcome, SinceLastBoot};
use super::state::{DecodedLog, LogMsg, StoreView};

pub const DURABILITY: &str = "durability";
pub const LOG_PREFIX: &str = "log-prefix";
pub const CONSUME_QUEUE: &str = "consume-queue";
pub const KEY_INDEX: &str = "key-index";
pub const ABORT_CHECKPOINT: &str = "abort-checkpoint";
pub const LIVENESS: &str = "liveness";
pub const NO_LEAK: &str = "no-leak";

/// Everything a recovery check looks at.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    pub history: &'a History,
    pub log: &'a DecodedLog,
    pub view: &'a StoreView,
    pub since: SinceLastBoot,
    /// The epoch (boot) being checked; acks of earlier epochs are judged.
    pub epoch: usize,
    pub now_ms: u64,
}

impl CheckInput<'_> {
    fn flipped(&self) -> bool {
        self.since.bit_flips_total > 0
    }

    fn violation(&self, checker: &str, message: String) -> Violation {
        Violation { checker: checker.to_string(), message, at_ms: self.now_ms }
    }
}

/// What the disk held before `Store::open` (for `abort-checkpoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootFacts {
    pub abort_existed: bool,
    pub checkpoint: Option<CheckpointData>,
    /// Newest store timestamp in the valid prefix of the log on disk before open.
    pub log_max_timestamp_ms: Option<i64>,
    /// Every message of the log on disk that the checkpoint's consume-queue timestamp vouches
    /// for (stored strictly before it), with the unit its queue's files hold for it.
    pub cq_claims: Vec<CqClaim>,
}

/// A message the checkpoint says is in its consume queue on disk, and what the queue's file
/// holds at its queue offset (`None`: no file, or the file ends before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqClaim {
    pub phy: u64,
    pub size_bytes: u32,
    pub queue_offset: u64,
    pub store_timestamp_ms: i64,
    pub unit_on_disk: Option<CqUnit>,
}

impl CqClaim {
    fn holds(&self) -> bool {
        self.unit_on_disk.is_some_and(|u| u.phy_offset == self.phy as i64 && u.size == self.size_bytes as i32)
    }
}

/// Runs every recovery checker.
pub fn check_recovery(input: &CheckInput<'_>, boot: &BootFacts) -> Vec<Violation> {
    let mut out = durability(input);
    out.extend(log_prefix(input));
    out.extend(consume_queue(input));
    out.extend(key_index(input));
    out.extend(abort_checkpoint(input, boot));
    out
}

/// Is message `s` promised to be in the log now? Sync acks are durable, async acks are in the
/// page cache, transient-pool acks are neither until a committed (flushed) watermark covers
/// them; a message seen in the log at a recovery is in the page cache. A power loss since the
/// last boot keeps only durable data, a process crash (or exit) the page cache too.
pub fn required(s: &Send, since: &SinceLastBoot) -> bool {
    if since.bit_flips_total > 0 || s.tracking.lost_at_epoch.is_some() {
        return false;
    }
    if since.power_losses > 0 {
        s.tracking.durable
    } else {
        s.tracking.cached || s.tracking.durable
    }
}

/// Where the log should hold `s`, if it was ever acked or seen (acked or last-seen offset).
fn expected_phy(s: &Send, epoch: usize) -> Option<u64> {
    if let Some((phy, _, _)) = s.tracking.present_at {
        return Some(phy);
    }
    match &s.outcome {
        SendOutcome::Acked(a) if a.epoch < epoch => Some(a.phy_offset),
        _ => None,
    }
}

/// `durability`: nothing the mode promises is lost.
pub fn durability(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    for s in input.history.sends.values() {
        let Some(phy) = expected_phy(s, input.epoch) else { continue };
        if input.log.has_at(s.id, phy) || !required(s, &input.since) {
            continue;
        }
        let promise = if s.tracking.durable { "durable" } else { "in the page cache" };
        out.push(input.violation(
            DURABILITY,
            format!(
                "message {:?} ({}/{}) at commit-log offset {phy} is lost although it was {promise} \
                 ({} crashes, {} power losses since the last boot; recovered end {})",
                s.id, s.topic, s.queue_id, input.since.crashes, input.since.power_losses, input.log.end
            ),
        ));
    }
    out
}

/// Is `m` genuinely the message its body names (same topic, queue, tags, keys)? After a bit
/// flip only the body is judged: the record format's CRC covers the body alone, so a flip in
/// the topic, tags or keys is media damage the store cannot detect and does not promise to.
fn genuine(history: &History, m: &LogMsg, flipped: bool) -> Result<MsgId, String> {
    let id = m.id.ok_or_else(|| "its body is not a message any producer sent".to_string())?;
    let s = history.sends.get(&id).ok_or_else(|| format!("its body names {id:?}, which was never sent"))?;
    if !flipped && (s.topic != m.topic || s.queue_id != m.queue_id || s.tags != m.tags || s.keys != m.keys) {
        return Err(format!("its body names {id:?} but its topic/queue/tags/keys differ from what was sent"));
    }
    Ok(id)
}

/// `log-prefix`: the recovered log is the longest valid prefix, every message in it is
/// genuine and unique, survivors form a prefix (no holes), nothing lost comes back, and
/// nothing the store returns is garbage or outside the valid log.
pub fn log_prefix(input: &CheckInput<'_>) -> Vec<Violation> {
    let (log, view, h) = (input.log, input.view, input.history);
    let mut out = Vec::new();
    // After a bit flip the checker's prefix may end early at damage the store never re-reads:
    // recovery re-verifies only from its scan start (the last files, or the checkpoint's), as
    // RocketMQ's does. Damage inside that range binds the store: a flipped body must stop
    // recovery there (CRC), and it is judged, unless the flip landed while recovery ran.
    let binding = !input.flipped()
        || (input.since.bit_flips_during_open == 0
            && log.stopped.as_ref().is_none_or(|(at, _)| *at >= view.recovery_scan_start));
    if binding && log.end != view.max_phy_offset {
        out.push(input.violation(
            LOG_PREFIX,
            format!(
                "the store recovered the commit log to {} but its longest valid prefix ends at {} ({:?})",
                view.max_phy_offset, log.end, log.stopped
            ),
        ));
    }
    for m in log.msgs.values() {
        if let Err(why) = genuine(h, m, input.flipped()) {
            out.push(input.violation(LOG_PREFIX, format!("garbage in the log at offset {}: {why}", m.phy)));
        }
    }
    for (id, phys) in log.by_id() {
        if phys.len() > 1 {
            out.push(
                input.violation(LOG_PREFIX, format!("message {id:?} is in the log {} times: {phys:?}", phys.len())),
            );
        }
        if let Some(e) = h.sends.get(&id).and_then(|s| s.tracking.lost_at_epoch) {
            out.push(input.violation(
                LOG_PREFIX,
                format!("message {id:?} was cut off at epoch {e}'s recovery and is back at offset {phys:?}"),
            ));
        }
    }
    out.extend(holes(input));
    out.extend(returned_garbage(input));
    out
}

/// Acked messages missing while a later message of the same epoch survived.
fn holes(input: &CheckInput<'_>) -> Vec<Violation> {
    if input.flipped() {
        return Vec::new();
    }
    let acked = || {
        input.history.sends.values().filter_map(|s| match &s.outcome {
            SendOutcome::Acked(a) if a.epoch < input.epoch && s.tracking.lost_at_epoch.is_none() => Some((s, *a)),
            _ => None,
        })
    };
    let mut last_present: BTreeMap<usize, u64> = BTreeMap::new();
    for (_, a) in acked().filter(|(s, a)| input.log.has_at(s.id, a.phy_offset)) {
        let e = last_present.entry(a.epoch).or_insert(0);
        *e = (*e).max(a.phy_offset);
    }
    let mut out = Vec::new();
    for (s, a) in acked() {
        let later = last_present.get(&a.epoch).copied().unwrap_or(0);
        if later > a.phy_offset && !input.log.has_at(s.id, a.phy_offset) {
            out.push(input.violation(
                LOG_PREFIX,
                format!(
                    "hole: message {:?} at offset {} is missing but a later message of the same boot at {later} survived",
                    s.id, a.phy_offset
                ),
            ));
        }
    }
    out
}

/// Messages returned by `get` / `query_by_key` that are garbage or not in the valid log.
fn returned_garbage(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut judge = |how: String, m: &LogMsg| {
        let why = genuine(input.history, m, input.flipped()).err().or_else(|| {
            (!input.flipped() && input.log.msgs.get(&m.phy) != Some(m))
                .then(|| "it is not the record at that offset of the valid log".to_string())
        });
        if let Some(why) = why {
            out.push(input.violation(LOG_PREFIX, format!("{how} returned the message at offset {}: {why}", m.phy)));
        }
    };
    for ((t, q), qv) in &input.view.queues {
        for m in qv.entries.iter().flatten() {
            judge(format!("get({t}/{q})"), m);
        }
    }
    for ((t, k), hits) in &input.view.key_hits {
        for m in hits.iter().flatten() {
            judge(format!("query_by_key({t}, {k})"), m);
        }
    }
    out
}

/// `consume-queue`: each queue equals the ordered messages of its queue in the log, with
/// consecutive queue offsets, no entry past the log end, and no queue offset reused while its
/// earlier holder survives.
pub fn consume_queue(input: &CheckInput<'_>) -> Vec<Violation> {
    if input.flipped() {
        return Vec::new();
    }
    let mut per_queue: BTreeMap<(String, u32), Vec<&LogMsg>> = BTreeMap::new();
    for m in input.log.msgs.values() {
        per_queue.entry((m.topic.clone(), m.queue_id)).or_default().push(m);
    }
    let mut out = Vec::new();
    for (key, msgs) in &per_queue {
        for (i, m) in msgs.iter().enumerate() {
            if m.queue_offset != i as u64 {
                out.push(input.violation(
                    CONSUME_QUEUE,
                    format!(
                        "{}/{}: the log's message #{i} (offset {}) has queue offset {} (reused or skipped)",
                        key.0, key.1, m.phy, m.queue_offset
                    ),
                ));
                break;
            }
        }
    }
    for (key, qv) in &input.view.queues {
        let msgs = per_queue.get(key).map(Vec::as_slice).unwrap_or(&[]);
        out.extend(compare_queue(input, key, qv, msgs));
    }
    for key in per_queue.keys().filter(|k| !input.view.queues.contains_key(*k)) {
        out.push(
            input.violation(CONSUME_QUEUE, format!("{}/{}: queue has messages but no consume queue", key.0, key.1)),
        );
    }
    out
}

fn compare_queue(
    input: &CheckInput<'_>,
    key: &(String, u32),
    qv: &super::state::QueueView,
    msgs: &[&LogMsg],
) -> Vec<Violation> {
    let name = format!("{}/{}", key.0, key.1);
    let n = msgs.len() as u64;
    let mut out = Vec::new();
    if qv.max_offset > n {
        let past = qv.max_offset - n;
        out.push(input.violation(
            CONSUME_QUEUE,
            format!(
                "{name}: consume queue ends at {} but the log has {n} messages: {past} entries past the log end",
                qv.max_offset
            ),
        ));
    } else if qv.max_offset < n {
        out.push(input.violation(
            CONSUME_QUEUE,
            format!("{name}: consume queue ends at {} but the log has {n} messages: entries missing", qv.max_offset),
        ));
    }
    match &qv.entries {
        Err(e) => out.push(input.violation(CONSUME_QUEUE, format!("{name}: get failed: {e}"))),
        Ok(entries) => {
            let want = msgs.iter().skip(qv.min_offset as usize);
            if let Some((i, (got, want))) = entries.iter().zip(want).enumerate().find(|(_, (g, w))| g.phy != w.phy) {
                out.push(input.violation(
                    CONSUME_QUEUE,
                    format!("{name}: entry {i} points at offset {} but the log's message is at {}", got.phy, want.phy),
                ));
            }
        }
    }
    out
}

/// `key-index`: every surviving keyed message is found by key.
pub fn key_index(input: &CheckInput<'_>) -> Vec<Violation> {
    if input.flipped() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for m in input.log.msgs.values() {
        for key in &m.keys {
            let hits = input.view.key_hits.get(&(m.topic.clone(), key.clone()));
            let found = matches!(hits, Some(Ok(v)) if v.iter().any(|h| h.phy == m.phy));
            if !found {
                let detail = match hits {
                    Some(Err(e)) => format!("query failed: {e}"),
                    _ => "not found".to_string(),
                };
                out.push(input.violation(
                    KEY_INDEX,
                    format!("key {key:?} of {}/{} at offset {}: {detail}", m.topic, m.queue_id, m.phy),
                ));
            }
        }
    }
    out
}

/// `abort-checkpoint`: before open, the abort file exists iff the previous boot did not end
/// in a clean shutdown; the checkpoint is never ahead of durable data.
pub fn abort_checkpoint(input: &CheckInput<'_>, boot: &BootFacts) -> Vec<Violation> {
    let mut out = Vec::new();
    let prev = input.epoch.checked_sub(1).and_then(|e| input.history.epochs.get(e));
    if let Some(expected) = expected_abort(prev) {
        if expected != boot.abort_existed {
            let why = match prev.and_then(|p| p.clean_stop) {
                Some(c) => format!("the last shutdown ended with {c:?}"),
                None if prev.is_some() => "the last run crashed after opening the store".to_string(),
                None => "the store is new".to_string(),
            };
            let state = if boot.abort_existed { "exists" } else { "is missing" };
            out.push(input.violation(ABORT_CHECKPOINT, format!("the abort file {state} at boot but {why}")));
        }
    }
    if let Some(ckpt) = boot.checkpoint.filter(|_| !input.flipped()) {
        let newest = boot.log_max_timestamp_ms.unwrap_or(0);
        if ckpt.physic_msg_timestamp_ms > newest {
            out.push(input.violation(
                ABORT_CHECKPOINT,
                format!(
                    "checkpoint commit-log timestamp {} is ahead of the newest message on disk ({newest})",
                    ckpt.physic_msg_timestamp_ms
                ),
            ));
        }
        // #678: the consume-queue timestamp may only cover units that are durable, because
        // an abnormal recovery starts its re-dispatch after what it covers.
        if let Some(c) = boot.cq_claims.iter().find(|c| !c.holds()) {
            let found = c.unit_on_disk.map_or("nothing".to_string(), |u| format!("{u:?}"));
            out.push(input.violation(
                ABORT_CHECKPOINT,
                format!(
                    "checkpoint consume-queue timestamp {} is ahead of the consume queues on disk: the message at {} \
                     (stored {}, queue offset {}) has {found} in its queue",
                    ckpt.logics_msg_timestamp_ms, c.phy, c.store_timestamp_ms, c.queue_offset
                ),
            ));
        }
    }
    out
}

/// Whether the abort file must exist at this boot: `None` when it cannot be known (the
/// previous boot crashed before the abort file was durable, its shutdown hit an error, or a
/// crash cut its shutdown short, maybe right after the abort file went).
fn expected_abort(prev: Option<&Epoch>) -> Option<bool> {
    let Some(prev) = prev else { return Some(false) };
    match prev.clean_stop {
        Some(c) if c.is_clean() => c.ok.then_some(false),
        Some(_) => Some(true),
        None => (prev.open_completed && !prev.stop_started).then_some(true),
    }
}

/// What the run measured once the faults stopped (for `liveness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessFacts {
    pub serving: bool,
    /// Dispatch lag at the end of the catch-up wait.
    pub behind_bytes: Option<u64>,
    /// How long the final clean shutdown took; `None`: it did not end within the bound.
    pub shutdown_took_ms: Option<u64>,
    pub bound_ms: u64,
    /// A bit flip happened during the run: dispatch may rightly stop at the flipped record
    /// (detection), so its lag is not judged (seed 191089).
    pub flipped: bool,
}

/// `liveness`: after the faults stop the broker serves, dispatch catches up (unless a bit
/// flipped: a corrupt record stops dispatch, as it stops RocketMQ's reput on a master) and a
/// clean shutdown ends within the bound.
pub fn liveness(f: &LivenessFacts, now_ms: u64) -> Vec<Violation> {
    let v = |message: String| Violation { checker: LIVENESS.to_string(), message, at_ms: now_ms };
    let mut out = Vec::new();
    if !f.serving {
        out.push(v(format!("the broker is not serving {} ms after the faults stopped", f.bound_ms)));
    }
    if let Some(behind) = f.behind_bytes.filter(|&b| b > 0 && !f.flipped) {
        out.push(v(format!("dispatch is still {behind} bytes behind {} ms after the faults stopped", f.bound_ms)));
    }
    if f.serving && f.shutdown_took_ms.is_none_or(|t| t > f.bound_ms) {
        out.push(v(format!("a clean shutdown did not end within {} ms", f.bound_ms)));
    }
    out
}

/// `no-leak`: no mapped-file hold and no pooled buffer is outstanding when the store is idle
/// or shut down, except (transient pool, while running) the one buffer the active
/// commit-log file keeps until it is full and committed; shutdown returns it.
/// `active_buffer_allowed`: the store is running (or its shutdown failed).
pub fn no_leak(
    holds: &[engine::io::HoldSummary],
    mode: FlushMode,
    active_buffer_allowed: bool,
    now_ms: u64,
) -> Vec<Violation> {
    let allowed_buffers = u64::from(active_buffer_allowed && mode == FlushMode::TransientPool);
    let when = if active_buffer_allowed { "idle" } else { "after shutdown" };
    let buffers: u64 = holds.iter().filter(|h| h.kind == HoldKind::PooledBuffer).map(|h| h.count).sum();
    let mut out = Vec::new();
    let v = |message: String| Violation { checker: NO_LEAK.to_string(), message, at_ms: now_ms };
    for h in holds.iter().filter(|h| h.kind == HoldKind::MappedFile) {
        out.push(v(format!("{when}: {} hold(s) on mapped file {} outstanding", h.count, h.resource)));
    }
    if buffers > allowed_buffers {
        out.push(v(format!("{when}: {buffers} pooled buffers outstanding (allowed {allowed_buffers})")));
    }
    for h in holds.iter().filter(|h| h.kind == HoldKind::Permit) {
        out.push(v(format!("{when}: {} permit(s) of {} not returned", h.count, h.resource)));
    }
    out
}

/// Updates the history with what this recovery kept: survivors are in the page cache now;
/// anything acked or seen before and missing now is lost for good (it must never return).
pub fn after_recovery(history: &mut History, log: &DecodedLog, epoch: usize) {
    let by_id = log.by_id();
    for s in history.sends.values_mut() {
        match by_id.get(&s.id).and_then(|v| v.first()).and_then(|p| log.msgs.get(p)) {
            Some(m) => {
                s.tracking.present_at = Some((m.phy, m.size, epoch));
                s.tracking.cached = true;
                s.tracking.lost_at_epoch = None;
            }
            None => {
                if expected_phy(s, epoch).is_some() && s.tracking.lost_at_epoch.is_none() {
                    s.tracking.lost_at_epoch = Some(epoch);
                    s.tracking.present_at = None;
                }
            }
        }
    }
}

/// Every message the consumer read was genuine (part of `log-prefix`: no garbage is ever
/// returned by `get`).
/// `flipped`: a bit flip happened during the run.
pub fn check_reads(history: &History, flipped: bool, now_ms: u64) -> Vec<Violation> {
    let mut out = Vec::new();
    for r in &history.reads {
        if let Err(why) = genuine(history, &r.msg, flipped) {
            out.push(Violation {
                checker: LOG_PREFIX.to_string(),
                message: format!("the consumer read garbage at offset {} at {} ms: {why}", r.msg.phy, r.at_ms),
                at_ms: now_ms,
            });
        }
    }
    out
}
