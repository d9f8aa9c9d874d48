//! The scenario registry and the one way to run a case.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sim::fault_plan::PlanSpace;
use sim::{FaultPlan, Outcome, RunOptions, Trace, Violation};

use crate::case::Case;

/// Everything a scenario body receives.
pub struct RunInput {
    pub seed: u64,
    pub trace: Arc<Trace>,
    pub plan: FaultPlan,
    pub bugs: BTreeSet<String>,
    pub config: toml::Table,
}

pub type ScenarioFuture = Pin<Box<dyn Future<Output = Vec<Violation>>>>;

/// A named workload with its checkers.
pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    /// The checkers this scenario runs.
    pub checkers: &'static [&'static str],
    /// The catalogued bugs (ids) this scenario can switch on; `dst` rejects others.
    pub bugs: fn() -> Vec<&'static str>,
    /// What fault plans for it may contain.
    pub plan_space: fn() -> PlanSpace,
    pub run: fn(RunInput) -> ScenarioFuture,
}

pub static SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "broker",
        description: "a broker node runs the message store; two producers and a consumer talk to it over \
                      the network under kills, power loss, clean shutdowns, disk errors, a full disk, bit \
                      flips, clock jumps and partitions; recovery is checked after every restart",
        checkers: &[
            crate::broker::checkers::DURABILITY,
            crate::broker::checkers::LOG_PREFIX,
            crate::broker::checkers::CONSUME_QUEUE,
            crate::broker::checkers::KEY_INDEX,
            crate::broker::checkers::ABORT_CHECKPOINT,
            crate::broker::checkers::LIVENESS,
            crate::broker::checkers::NO_LEAK,
            sim::runner::NO_PANIC,
            sim::runner::TIME_LIMIT,
        ],
        bugs: local_store_bugs,
        plan_space: crate::broker::plan_space,
        run: |input| Box::pin(crate::broker::run(input)),
    },
    Scenario {
        name: "tiered",
        description: "a broker whose store is tiered to the object store: small files and segments, producers, \
                      a consumer of old offsets; kills, power loss, clean shutdowns, disk errors, object-store \
                      errors, lost acks, partial appends, outages and partitions; at the end a replaced disk \
                      must read back everything the tiered store committed",
        checkers: &[
            crate::tiered::checkers::TIERED_CONTIGUITY,
            crate::tiered::checkers::TIERED_READABLE,
            crate::tiered::checkers::TIERED_PROGRESS,
            crate::tiered::checkers::TIERED_DURABILITY,
            crate::tiered::checkers::INDEX_COMPLETE,
            crate::tiered::checkers::ROUTING,
            crate::broker::checkers::LIVENESS,
            crate::broker::checkers::NO_LEAK,
            sim::runner::NO_PANIC,
            sim::runner::TIME_LIMIT,
        ],
        bugs: crate::tiered::bugs,
        plan_space: crate::tiered::plan_space,
        run: |input| Box::pin(crate::tiered::run(input)),
    },
    Scenario {
        name: "dledger",
        description: "three brokers in DLedger mode (the commit log replicated by Raft) and their clients: \
                      partitions, leader kills, power loss on one member or all three, clean shutdowns, \
                      disk errors, a full disk and clock jumps; every member's recovery is checked after \
                      each restart, and the leader must serve every acknowledged message at the end",
        checkers: &[
            crate::dledger::checkers::COMMITTED_PREFIX,
            crate::dledger::checkers::COMMITTED_ENTRIES,
            crate::dledger::checkers::ONE_LEADER_PER_TERM,
            crate::dledger::checkers::CONSUME_QUEUE,
            crate::dledger::checkers::QUEUE_OFFSETS,
            crate::dledger::checkers::ACKED_READABLE,
            crate::dledger::checkers::READS_COMMITTED,
            crate::broker::checkers::LIVENESS,
            sim::runner::NO_PANIC,
            sim::runner::TIME_LIMIT,
        ],
        bugs: crate::dledger::bugs,
        plan_space: crate::dledger::plan_space,
        run: |input| Box::pin(crate::dledger::run(input)),
    },
    Scenario {
        name: "disk-log",
        description: "one node appends checksummed records to a file, syncing in batches, under crashes, \
                  power loss, failed syncs and a full disk; checks acknowledged records survive",
        checkers: &["durability", "log-prefix", "liveness", sim::runner::NO_PANIC, sim::runner::TIME_LIMIT],
        bugs: || vec![engine::Bug::AckBeforeSync.id()],
        plan_space: crate::disk_log::plan_space,
        run: |input| Box::pin(crate::disk_log::run(input.seed, input.trace, input.plan, input.bugs, input.config)),
    },
];

/// The scenario `dst` runs when none is named.
pub const DEFAULT_SCENARIO: &str = "broker";

pub fn find_scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// The local store's bugs: for scenarios that run the whole local store.
pub fn local_store_bugs() -> Vec<&'static str> {
    engine::Bug::local().into_iter().map(|b| b.id()).collect()
}

/// Checks bug ids against the catalogue and the scenario.
pub fn check_bugs<'a>(
    scenario: &Scenario,
    ids: impl IntoIterator<Item = &'a String>,
) -> Result<BTreeSet<String>, String> {
    let supported = (scenario.bugs)();
    let mut out = BTreeSet::new();
    for id in ids {
        let bug: engine::Bug = id.parse()?;
        if !supported.contains(&bug.id()) {
            return Err(format!(
                "scenario {} cannot switch on bug {id:?}; it supports: {}",
                scenario.name,
                supported.join(", ")
            ));
        }
        out.insert(bug.id().to_string());
    }
    Ok(out)
}

/// What a run keeps besides its verdict and trace hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observe {
    /// Every trace record (replay's timeline and picture).
    pub keep_trace: bool,
    /// The coverage probes reached (`dst coverage`).
    pub collect_probes: bool,
}

/// Runs one case on a fresh runtime and thread. An unknown scenario is reported as an error
/// outcome by the caller, so it is checked here first.
pub fn run_case(case: &Case, keep_trace: bool) -> Result<Outcome, String> {
    run_case_observed(case, Observe { keep_trace, collect_probes: false })
}

/// `run_case`, keeping what `observe` asks for.
pub fn run_case_observed(case: &Case, observe: Observe) -> Result<Outcome, String> {
    let scenario = find_scenario(&case.scenario).ok_or_else(|| format!("unknown scenario {:?}", case.scenario))?;
    let mut options = RunOptions::new(case.seed);
    options.keep_trace = observe.keep_trace;
    options.collect_probes = observe.collect_probes;
    options.net.packet_loss_rate = case.plan.background.packet_loss_prob;
    let (seed, plan, bugs, config, run) =
        (case.seed, case.plan.clone(), case.bugs.clone(), case.config.clone(), scenario.run);
    Ok(sim::run(options, move |trace| run(RunInput { seed, trace, plan, bugs, config })))
}

/// The case explore runs for `seed`: the scenario's plan drawn from the seed, and with
/// `swarm` its configuration and chained fault sequences too (`crate::swarm`); without, the
/// scenario's fixed configuration.
pub fn drawn_case(scenario: &Scenario, seed: u64, bugs: &BTreeSet<String>, swarm: bool) -> Case {
    let mut case = generated_case(scenario, seed, bugs);
    if swarm {
        case.config = crate::swarm::draw(scenario.name, seed);
        if !case.config.is_empty() {
            crate::swarm::add_chains(&mut case.plan, seed, &(scenario.plan_space)());
        }
    }
    case
}

/// The case for `seed` with the scenario's fixed configuration and its plan drawn from the seed.
pub fn generated_case(scenario: &Scenario, seed: u64, bugs: &BTreeSet<String>) -> Case {
    Case {
        format_version: crate::case::FORMAT_VERSION,
        scenario: scenario.name.to_string(),
        seed,
        note: String::new(),
        bugs: bugs.clone(),
        config: toml::Table::new(),
        expect: crate::case::Expectation { outcome: crate::case::ExpectedOutcome::Pass, checker: None },
        plan: FaultPlan::generate(seed, &(scenario.plan_space)()),
    }
}
