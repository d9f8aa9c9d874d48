//! Per-node wall clocks: the simulator's virtual time plus an offset that the fault plan can
//! set and jump (backwards too). Implements the engine's `Clock` seam.
//!
//! Only wall time is skewed: RocketMQ's store timestamps and checkpoint compare wall times, so
//! a jump is exactly the fault that can break them. Timers stay on madsim's monotonic time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use engine::io::{Clock, SystemClock};

use crate::trace::Trace;

/// The wall clock of one node. It outlives the node's process, as a machine's clock does.
#[derive(Debug)]
pub struct NodeClock {
    node: String,
    offset_ms: AtomicI64,
    /// While frozen: the reading it is stuck at (`NOT_FROZEN` otherwise).
    frozen_at_ms: AtomicI64,
    /// Counts freezes, so that an older freeze's end does not thaw a newer one.
    freezes: AtomicU64,
    trace: Arc<Trace>,
}

const NOT_FROZEN: i64 = i64::MIN;

impl NodeClock {
    pub fn new(node: &str, initial_offset_ms: i64, trace: Arc<Trace>) -> Arc<NodeClock> {
        Arc::new(NodeClock {
            node: node.to_string(),
            offset_ms: AtomicI64::new(initial_offset_ms),
            frozen_at_ms: AtomicI64::new(NOT_FROZEN),
            freezes: AtomicU64::new(0),
            trace,
        })
    }

    /// Moves this node's clock by `delta_ms` (negative: backwards).
    pub fn jump(&self, delta_ms: i64) {
        let before = self.offset_ms.fetch_add(delta_ms, Ordering::SeqCst);
        crate::trace!(self.trace, &self.node, "clock.jump", "delta_ms={delta_ms} offset_ms={}", before + delta_ms);
    }

    /// Stops this node's clock at its current reading (every store timestamp repeats) until
    /// `thaw` with the returned token; then it reads the running time again.
    pub fn freeze(&self) -> u64 {
        let now = self.now_ms();
        self.frozen_at_ms.store(now, Ordering::SeqCst);
        crate::trace!(self.trace, &self.node, "clock.freeze", "at_ms={now}");
        self.freezes.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Ends the freeze `token` started, unless a later freeze replaced it.
    pub fn thaw(&self, token: u64) {
        if self.freezes.load(Ordering::SeqCst) == token {
            self.frozen_at_ms.store(NOT_FROZEN, Ordering::SeqCst);
            crate::trace!(self.trace, &self.node, "clock.thaw", "");
        }
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }

    pub fn node(&self) -> &str {
        &self.node
    }
}

impl Clock for NodeClock {
    fn now_ms(&self) -> i64 {
        match self.frozen_at_ms.load(Ordering::SeqCst) {
            NOT_FROZEN => SystemClock.now_ms().saturating_add(self.offset_ms()),
            frozen => frozen,
        }
    }
}
