//! Coverage probes: `probe!("recovery.abnormal")` marks that a run reached a branch worth
//! reaching (a fault handled, a recovery path taken). It is one `tracing` event at DEBUG on
//! the fixed target [`TARGET`] with a `name` field, so the engine keeps no state and needs no
//! test harness: with no subscriber interested it costs a disabled callsite check. The
//! simulation collects the names per run (`sim::probes`) and `dst coverage` counts the runs
//! that reached each one, listing those no seed reached.
//!
//! Names are `area.what`, lower case, fixed strings (never formatted), so a coverage report
//! and the checked-in must-reach list can name them.

/// The `tracing` target every probe is emitted on.
pub const TARGET: &str = "probe";

/// `probe!("area.what")`: this run reached the branch named.
#[macro_export]
macro_rules! probe {
    ($name:literal) => {
        $crate::__tracing::debug!(target: "probe", name = $name)
    };
}
