//! The simulated world the engine runs in: a disk with a page cache and power loss, an object
//! store that loses acknowledgements and applies partial uploads, skewed clocks, fault plans
//! drawn from a seed, the runner that executes one seeded run, and the trace that makes a run
//! comparable bit for bit. `sim` implements `engine::io`'s seams and knows nothing of
//! message-store semantics.
//!
//! Everything but the trace needs madsim, so it only exists in the simulation build
//! (`--cfg madsim`, the workspace default).

pub mod trace;

pub use trace::{Trace, TraceRecord};
