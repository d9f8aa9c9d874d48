//! The clock seam: wall-clock milliseconds for store timestamps and the checkpoint.
//!
//! Only wall time goes through here: RocketMQ compares store timestamps with the checkpoint,
//! so a clock that jumps (backwards too) is a fault the simulation must be able to inject.
//! Durations and timers use `tokio::time`, which madsim simulates.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch, as this machine believes it to be.
    fn now_ms(&self) -> i64;
}

/// The machine's clock. Under madsim, `SystemTime::now` is the simulator's virtual time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            // A clock before 1970 is a fault the engine must survive, not a panic.
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }
}
