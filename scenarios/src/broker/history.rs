//! The history of a broker run: every send with its outcome, every consumer read, and one
//! epoch per broker boot with what the store claimed during it (committed and flushed
//! watermarks) and how it ended. The checkers judge recovered state against it.
//!
//! The history is kept outside the nodes (shared memory of the test harness), so it survives
//! every crash, as a real test's client-side log would.

use std::collections::BTreeMap;

use engine::FlushMode;
use sim::Violation;

/// A message's identity: (producer number, sequence number). Carried in the body.
pub type MsgId = (u32, u64);

/// Marks a body as one of ours.
const BODY_MAGIC: &[u8; 8] = b"BRKMSG01";
pub const BODY_HEADER_BYTES: usize = 8 + 4 + 8;

/// The body of message `id`: a header naming it, then filler derived from it, so that a
/// checker can tell a genuine message from garbage that happens to checksum.
pub fn body_for(id: MsgId) -> Vec<u8> {
    let x = (u64::from(id.0) << 40 ^ id.1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    body_from(id, x, BODY_HEADER_BYTES + 24 + (x % 200) as usize)
}

/// A body of message `id` of `len` bytes (at least the header), for the swarm's message
/// sizes. Its filler depends on the length too, so a body cut short is not a shorter body of
/// the same message.
pub fn body_sized(id: MsgId, len: usize) -> Vec<u8> {
    let x = (u64::from(id.0) << 40 ^ id.1 ^ (len as u64) << 20).wrapping_mul(0xd6e8_feb8_6659_fd93) | 1;
    body_from(id, x, len.max(BODY_HEADER_BYTES))
}

fn body_from(id: MsgId, mut x: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(BODY_MAGIC);
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(&id.1.to_be_bytes());
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// The id a body claims, if it is a well-formed body of ours (header and filler).
pub fn id_of_body(body: &[u8]) -> Option<MsgId> {
    if body.len() < BODY_HEADER_BYTES || &body[..8] != BODY_MAGIC {
        return None;
    }
    let producer = u32::from_be_bytes(body[8..12].try_into().ok()?);
    let seq = u64::from_be_bytes(body[12..20].try_into().ok()?);
    let id = (producer, seq);
    (body_for(id) == body || body_sized(id, body.len()) == body).then_some(id)
}

/// What the broker answered for one put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub phy_offset: u64,
    pub size_bytes: u32,
    pub queue_offset: u64,
    pub store_timestamp_ms: i64,
    /// The broker boot (epoch index) that appended it.
    pub epoch: usize,
}

impl Ack {
    pub fn end(&self) -> u64 {
        self.phy_offset + u64::from(self.size_bytes)
    }
}

/// The outcome of a send as the producer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Sent, no answer yet.
    Pending,
    Acked(Ack),
    /// The broker answered with an error: the message may or may not be in the log.
    Failed(String),
    /// No answer in time: may or may not be in the log.
    Unknown,
}

/// What the checkers have learnt about a message over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tracking {
    /// In the page cache (survives a process crash): acked in async mode, covered by a
    /// committed watermark, or seen in the log at a recovery.
    pub cached: bool,
    /// Durable (survives a power loss): acked in sync mode or covered by a flushed watermark.
    pub durable: bool,
    /// Where it sat in the log at the last recovery that saw it (offset, size), and the epoch
    /// whose recovery saw it.
    pub present_at: Option<(u64, u32, usize)>,
    /// Lost (legitimately) at this epoch's recovery: it must never come back.
    pub lost_at_epoch: Option<usize>,
}

/// One send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub id: MsgId,
    pub topic: String,
    pub queue_id: u32,
    pub tags: Option<String>,
    pub keys: Vec<String>,
    pub outcome: SendOutcome,
    pub tracking: Tracking,
}

/// One message the consumer read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub msg: crate::broker::state::LogMsg,
    pub at_ms: u64,
}

/// How an epoch (one broker boot) ended, as the broker itself reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanStop {
    /// `shutdown()` returned Ok.
    pub ok: bool,
    pub writeable: bool,
    /// Dispatch lag after shutdown.
    pub behind_bytes: u64,
    pub took_ms: u64,
}

impl CleanStop {
    /// The store promises to delete the abort file exactly in this case.
    pub fn is_clean(&self) -> bool {
        self.writeable && self.behind_bytes == 0
    }
}

/// Disk counters at a boot, to tell what happened since the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrashCounts {
    pub crashes: u64,
    pub power_losses: u64,
    pub bit_flips: u64,
}

/// One broker boot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Epoch {
    pub started_ms: u64,
    pub counts_at_boot: CrashCounts,
    /// `Store::open` returned Ok (recovery done, the abort file durable).
    pub open_completed: bool,
    /// Highest `committed_offset` / `flushed_offset` the store reported during this epoch.
    pub committed_wm: u64,
    pub flushed_wm: u64,
    /// A clean shutdown began (it may have been cut short by a crash before it reported).
    pub stop_started: bool,
    pub clean_stop: Option<CleanStop>,
}

/// What happened between the previous epoch and this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinceLastBoot {
    pub crashes: u64,
    pub power_losses: u64,
    /// Bit flips over the whole run so far.
    pub bit_flips_total: u64,
    /// Bit flips while this boot's open ran: recovery may have verified a record before the
    /// flip hit it, so the checker's later decode cannot bind the store's recovered end.
    pub bit_flips_during_open: u64,
}

/// The run's history.
#[derive(Debug, Default)]
pub struct History {
    pub mode: FlushMode,
    pub sends: BTreeMap<MsgId, Send>,
    pub reads: Vec<Read>,
    pub epochs: Vec<Epoch>,
    pub violations: Vec<Violation>,
}

impl History {
    pub fn new(mode: FlushMode) -> History {
        History { mode, ..History::default() }
    }

    pub fn record_send(&mut self, send: Send) {
        self.sends.insert(send.id, send);
    }

    /// Records a producer's outcome; an ack raises the tracking the mode promises at once.
    pub fn record_outcome(&mut self, id: MsgId, outcome: SendOutcome) {
        let mode = self.mode;
        let Some(s) = self.sends.get_mut(&id) else { return };
        if matches!(s.outcome, SendOutcome::Acked(_)) {
            // The broker recorded the ack; a lost reply does not undo the store's promise.
            return;
        }
        if let SendOutcome::Acked(_) = outcome {
            match mode {
                FlushMode::Sync => (s.tracking.cached, s.tracking.durable) = (true, true),
                FlushMode::Async => s.tracking.cached = true,
                FlushMode::TransientPool => {}
            }
        }
        s.outcome = outcome;
    }

    pub fn current_epoch(&self) -> Option<usize> {
        self.epochs.len().checked_sub(1)
    }

    /// Raises the current epoch's watermarks (the store's own claims).
    pub fn observe_watermarks(&mut self, committed: u64, flushed: u64) {
        if let Some(e) = self.epochs.last_mut() {
            e.committed_wm = e.committed_wm.max(committed);
            e.flushed_wm = e.flushed_wm.max(flushed);
        }
    }

    /// Applies epoch `epoch`'s watermarks to the messages present in it (acked in it, or
    /// seen at its recovery): they were in the page cache / durable at those offsets.
    pub fn settle_epoch(&mut self, epoch: usize) {
        let Some(e) = self.epochs.get(epoch).cloned() else { return };
        for s in self.sends.values_mut() {
            let Some(end) = end_in_epoch(s, epoch) else { continue };
            if end <= e.committed_wm {
                s.tracking.cached = true;
            }
            if end <= e.flushed_wm {
                s.tracking.cached = true;
                s.tracking.durable = true;
            }
        }
    }

    pub fn violation(&mut self, checker: &str, message: String, at_ms: u64) {
        self.violations.push(Violation { checker: checker.to_string(), message, at_ms });
    }
}

/// Where a message ends in the log during `epoch`, if it was there.
fn end_in_epoch(s: &Send, epoch: usize) -> Option<u64> {
    if let SendOutcome::Acked(a) = &s.outcome {
        if a.epoch == epoch {
            return Some(a.end());
        }
    }
    match s.tracking.present_at {
        Some((phy, size, e)) if e == epoch => Some(phy + u64::from(size)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_their_id_and_reject_forgeries() {
        let b = body_for((2, 77));
        assert_eq!(id_of_body(&b), Some((2, 77)));
        let mut forged = b.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(id_of_body(&forged), None);
        assert_eq!(id_of_body(b"short"), None);
    }

    #[test]
    fn sized_bodies_name_their_id_and_a_cut_one_is_rejected() {
        for len in [BODY_HEADER_BYTES, 21, 300, 60_000] {
            let b = body_sized((1, 9), len);
            assert_eq!(b.len(), len);
            assert_eq!(id_of_body(&b), Some((1, 9)), "len {len}");
        }
        let long = body_sized((1, 9), 5_000);
        assert_eq!(id_of_body(&long[..4_000]), None);
        let fixed = body_for((1, 9));
        assert_eq!(id_of_body(&fixed[..fixed.len() - 1]), None);
    }
}
