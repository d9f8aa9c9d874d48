//! Scenarios (workloads with their checkers), the case files they are saved as, and the
//! machinery behind the `dst` tool: run a case, explore seeds, shrink a failing plan.

pub mod broker;
pub mod case;
pub mod coverage;
pub mod crash_states;
pub mod disk_log;
pub mod dledger;
pub mod explore;
pub mod merge;
pub mod scenario;
pub mod shrink;
pub mod swarm;
pub mod tiered;
pub mod timeline;
pub mod zoo;

pub use case::{Case, CaseError, Expectation, ExpectedOutcome};
pub use scenario::{find_scenario, run_case, Scenario, SCENARIOS};

#[cfg(test)]
#[test]
fn simulation_cfg_is_on() {
    assert!(cfg!(madsim), "build with --cfg madsim (the workspace's .cargo/config.toml sets it)");
}
