//! Fuzzed fault plans: proptest generates plans event by event for the main scenario (and the
//! disk scenario), runs each in the simulation, and shrinks any failing plan to a small one by
//! dropping events and reducing times.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use scenarios::scenario::DEFAULT_SCENARIO;
use scenarios::{find_scenario, run_case, Case, Expectation, ExpectedOutcome};
use sim::fault_plan::{draw_fault_from_seed, PlanSpace};
use sim::{Background, FaultPlan, TimedFault};

/// Plans over `space`: up to `max_events` events, each a (time, kind, parameter seed).
fn arb_plan(space: PlanSpace) -> impl Strategy<Value = FaultPlan> {
    let kinds: Vec<_> = space.kinds.iter().copied().collect();
    let window_ms = space.fault_window_ms.max(1);
    let events = prop::collection::vec((0..window_ms, 0..kinds.len(), any::<u64>()), 0..=space.max_events);
    (events, 0.0..0.7f64, 0.0..0.3f64).prop_map(move |(raw, keep, tear)| {
        let mut events: Vec<TimedFault> = raw
            .into_iter()
            .filter_map(|(at_ms, k, seed)| {
                draw_fault_from_seed(seed, kinds[k], &space).map(|fault| TimedFault { at_ms, fault })
            })
            .collect();
        events.sort_by_key(|e| e.at_ms);
        let background = Background {
            power_loss_keep_page_prob: (keep * 1e4).floor() / 1e4,
            power_loss_tear_page_prob: (tear * 1e4).floor() / 1e4,
            ..Background::default()
        };
        FaultPlan { events, background }
    })
}

fn case(scenario: &str, seed: u64, plan: FaultPlan, bugs: &BTreeSet<String>) -> Case {
    Case {
        format_version: scenarios::case::FORMAT_VERSION,
        scenario: scenario.to_string(),
        seed,
        note: String::new(),
        bugs: bugs.clone(),
        config: toml::Table::new(),
        expect: Expectation { outcome: ExpectedOutcome::Pass, checker: None },
        plan,
    }
}

/// Runs generated plans of `scenario`; returns proptest's verdict.
fn fuzz(scenario: &str, bugs: &BTreeSet<String>, cases: u32) -> Result<(), TestError<(u64, FaultPlan)>> {
    sim::install_quiet_panic_hook();
    let space = (find_scenario(scenario).expect("scenario").plan_space)();
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 64, ..Config::default() };
    let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
    let mut runner = TestRunner::new_with_rng(config, rng);
    runner.run(&(0u64..1_000, arb_plan(space)), |(seed, plan)| {
        let outcome = run_case(&case(scenario, seed, plan, bugs), false).map_err(TestCaseError::fail)?;
        prop_assert!(outcome.passed(), "violations: {:?}", outcome.violations);
        Ok(())
    })
}

#[test]
fn generated_plans_never_break_the_main_scenario() {
    if let Err(e) = fuzz(DEFAULT_SCENARIO, &BTreeSet::new(), 64) {
        panic!("{e}");
    }
}

#[test]
fn generated_plans_never_break_the_disk_scenario() {
    if let Err(e) = fuzz("disk-log", &BTreeSet::new(), 48) {
        panic!("{e}");
    }
}

/// With a bug switched on, the fuzzer must find a failing plan and shrink it to one that
/// still fails and is no larger.
#[test]
fn a_failing_plan_is_found_and_shrunk() {
    let bugs: BTreeSet<String> = [engine::Bug::AckBeforeSync.id().to_string()].into_iter().collect();
    match fuzz("disk-log", &bugs, 64) {
        Ok(()) => panic!("ack-before-sync was not caught by 64 generated plans"),
        Err(TestError::Fail(reason, (seed, plan))) => {
            assert!(plan.events.len() <= 10, "shrunk plan still has {} events", plan.events.len());
            let outcome = run_case(&case("disk-log", seed, plan.clone(), &bugs), false).expect("runs");
            assert!(!outcome.passed(), "the shrunk plan must still fail ({reason})");
            assert!(outcome.violations.iter().any(|v| v.checker == "durability"), "{:?}", outcome.violations);
        }
        Err(e) => panic!("unexpected: {e}"),
    }
}
