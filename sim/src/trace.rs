//! The run's trace: every disk operation, sync, crash, object-store request, network message,
//! fault and checker verdict, in order, folded into a rolling hash.
//!
//! The hash is the determinism contract: the same seed and build give the same hash in any
//! process. It covers the event's simulated time, node, kind and details, so a divergence in
//! data (not only in timing) changes it. Full records are kept only when asked for (replay),
//! because formatting is cheap but storing every event of every seed is not.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRecord {
    pub seq: u64,
    /// Simulated microseconds since the run started.
    pub time_us: u64,
    pub node: String,
    pub kind: &'static str,
    pub detail: String,
}

impl fmt::Display for TraceRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.time_us / 1_000_000;
        let micros = self.time_us % 1_000_000;
        write!(f, "{:>5}.{:06}s #{:<6} {:<10} {:<22} {}", secs, micros, self.seq, self.node, self.kind, self.detail)
    }
}

struct TraceState {
    hash: u64,
    seq: u64,
    counts: BTreeMap<&'static str, u64>,
    keep_records: bool,
    records: Vec<TraceRecord>,
    scratch: String,
    start: Option<Instant>,
    last_time_us: u64,
}

/// The trace of one run. Shared by every simulated component of the run.
pub struct Trace {
    state: Mutex<TraceState>,
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state();
        f.debug_struct("Trace").field("events", &s.seq).field("hash", &format_args!("{:016x}", s.hash)).finish()
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, chosen because it is stable across Rust versions and platforms (std's hashers are
/// not promised to be), so saved hashes stay comparable.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

impl Trace {
    /// A new trace. `keep_records` keeps every record for printing (replay); otherwise only the
    /// hash and the counts are kept.
    pub fn new(keep_records: bool) -> Arc<Trace> {
        Arc::new(Trace {
            state: Mutex::new(TraceState {
                hash: FNV_OFFSET,
                seq: 0,
                counts: BTreeMap::new(),
                keep_records,
                records: Vec::new(),
                scratch: String::new(),
                start: None,
                last_time_us: 0,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, TraceState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the start of simulated time for this run; call once inside the runtime.
    pub fn start_clock(&self) {
        self.state().start = Some(Instant::now());
    }

    /// Freezes the trace's clock at the newest event's time. The runner calls it when the
    /// runtime ends: after that `Instant` is real time, and reading it would make the hash
    /// depend on the wall clock.
    pub fn stop_clock(&self) {
        self.state().start = None;
    }

    /// Simulated microseconds since `start_clock` (0 before it, or outside a simulation).
    pub fn now_us(&self) -> u64 {
        let s = self.state();
        Self::elapsed_us(s.start, s.last_time_us)
    }

    fn elapsed_us(start: Option<Instant>, last_time_us: u64) -> u64 {
        match start {
            // Inside madsim `Instant::now` is virtual time; the trace never reads real time
            // because `start` is only set from inside the runtime.
            Some(start) => u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
            None => last_time_us,
        }
    }

    /// Appends one event. Prefer the `trace!` macro, which formats lazily into a reused buffer.
    pub fn record(&self, node: &str, kind: &'static str, detail: fmt::Arguments<'_>) {
        let mut guard = self.state();
        let s = &mut *guard;
        let time_us = Self::elapsed_us(s.start, s.last_time_us);
        s.last_time_us = time_us;
        s.scratch.clear();
        let _ = write!(s.scratch, "{time_us}|{node}|{kind}|{detail}");
        s.hash = fnv1a(s.hash, s.scratch.as_bytes());
        s.hash = fnv1a(s.hash, b"\n");
        s.seq += 1;
        *s.counts.entry(kind).or_insert(0) += 1;
        if s.keep_records {
            let detail = s.scratch.splitn(4, '|').nth(3).unwrap_or_default().to_string();
            let record = TraceRecord { seq: s.seq, time_us, node: node.to_string(), kind, detail };
            tracing::debug!(target: "dst::trace", "{record}");
            s.records.push(record);
        }
    }

    /// Simulated time of the newest event (usable after the runtime is gone).
    pub fn last_time_us(&self) -> u64 {
        self.state().last_time_us
    }

    /// The rolling hash of every event so far.
    pub fn hash(&self) -> u64 {
        self.state().hash
    }

    /// Number of events recorded.
    pub fn len(&self) -> u64 {
        self.state().seq
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events per kind.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.state().counts.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
    }

    /// Every kept record (empty unless the trace was created with `keep_records`).
    pub fn records(&self) -> Vec<TraceRecord> {
        self.state().records.clone()
    }
}

/// `trace!(trace, node, "kind", "fmt {}", args)` records one event.
#[macro_export]
macro_rules! trace {
    ($trace:expr, $node:expr, $kind:expr, $($arg:tt)*) => {
        $trace.record($node, $kind, format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_field_and_order() {
        let a = Trace::new(true);
        trace!(a, "broker", "disk.write", "file={} off={}", "x", 1);
        trace!(a, "broker", "disk.sync", "file={}", "x");
        let b = Trace::new(false);
        trace!(b, "broker", "disk.write", "file={} off={}", "x", 1);
        trace!(b, "broker", "disk.sync", "file={}", "x");
        assert_eq!(a.hash(), b.hash(), "keeping records must not change the hash");
        let c = Trace::new(false);
        trace!(c, "broker", "disk.sync", "file={}", "x");
        trace!(c, "broker", "disk.write", "file={} off={}", "x", 1);
        assert_ne!(a.hash(), c.hash(), "order matters");
        let d = Trace::new(false);
        trace!(d, "broker", "disk.write", "file={} off={}", "x", 2);
        trace!(d, "broker", "disk.sync", "file={}", "x");
        assert_ne!(a.hash(), d.hash(), "details matter");
        assert_eq!(a.records().len(), 2);
        assert_eq!(a.counts().get("disk.write"), Some(&1));
        assert!(b.records().is_empty());
    }
}
