//! The simulated world the engine runs in: a disk with a page cache and power loss, an object
//! store that loses acknowledgements and applies partial uploads, skewed clocks, fault plans
//! drawn from a seed, the runner that executes one seeded run, and the trace that makes a run
//! comparable bit for bit. `sim` implements `engine::io`'s seams and knows nothing of
//! message-store semantics.

pub mod clock;
pub mod disk;
pub mod fault_plan;
pub mod object_store;
pub mod probes;
pub mod runner;
pub mod trace;
pub mod world;

pub use clock::NodeClock;
pub use disk::{
    BitFlip, CrashImage, CrashKind, DiskConfig, DiskFaults, DiskStats, ImageSpace, Kindness, LatencyProfile,
    PowerLossModel, SimDisk,
};
pub use fault_plan::{Background, Fault, FaultKind, FaultPlan, PlanError, PlanSpace, TimedFault};
pub use object_store::{ObjectStoreConfig, ObjectStoreFaults, ObjectStoreStats, SimObjectStore};
pub use probes::{ProbeHit, ProbeLog};
pub use runner::{install_quiet_panic_hook, run, Outcome, RunOptions, Violation};
pub use trace::{Trace, TraceRecord};
pub use world::{NodeLife, World, WorldConfig};

/// Fails loudly if the simulation cfg is off: without it every madsim API is real tokio and
/// the "simulation" would silently run on the real clock and disk.
#[cfg(test)]
#[test]
fn simulation_cfg_is_on() {
    assert!(cfg!(madsim), "build with --cfg madsim (the workspace's .cargo/config.toml sets it)");
}
