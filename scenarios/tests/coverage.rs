//! Coverage as a test: a sweep of `broker` seeds must reach every probe on the scenario's
//! must-reach list (`scenarios/coverage/broker-must-reach.txt`: the probes a 2,000-seed sweep
//! reaches in at least 1% of its runs). A probe nobody reaches any more is a fault kind no
//! longer played or a recovery branch no longer taken: the sweep went blind there.

use std::collections::BTreeSet;

use scenarios::coverage::{catalogue, must_reach, CoverageReport};
use scenarios::explore::{explore, Budget, ExploreOptions, Shard};
use scenarios::find_scenario;

/// Enough seeds to reach every must-reach probe; kept small so the debug build runs it fast.
const SEEDS: u64 = 250;

#[test]
fn a_broker_sweep_reaches_every_must_reach_probe() {
    sim::install_quiet_panic_hook();
    let opts = ExploreOptions {
        scenario: find_scenario("broker").expect("broker scenario"),
        budget: Budget::Seeds(SEEDS),
        start_seed: 0,
        bugs: BTreeSet::new(),
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        shard: Shard::WHOLE,
        save_dir: None,
        stop_at_first_failure: false,
        collect_probes: true,
        fixed_config: true,
    };
    let report = explore(&opts, &|_| {});
    assert_eq!(report.runs, SEEDS);
    let coverage = CoverageReport::of(&report);
    let missing = coverage.missing_must_reach();
    assert!(missing.is_empty(), "{} seeds of broker never reached these must-reach probes: {missing:?}", SEEDS);
    // Every reached probe is catalogued, and the collection is per run: a probe every run
    // passes (a new store's start) is counted once per run, not once per process.
    let catalogued: BTreeSet<&str> = catalogue().iter().map(|p| p.name).collect();
    for p in coverage.probes.iter().filter(|p| p.runs > 0) {
        assert!(catalogued.contains(p.name.as_str()), "probe {} is not in coverage/probes.txt", p.name);
    }
    assert_eq!(coverage.runs_reaching("recovery.normal"), SEEDS);
    assert!(!must_reach("broker").is_empty());
}

#[test]
fn probes_are_not_collected_unless_asked_for() {
    let case =
        scenarios::scenario::generated_case(find_scenario("broker").expect("broker scenario"), 3, &BTreeSet::new());
    let plain = scenarios::run_case(&case, false).expect("runs");
    assert!(plain.probes.is_empty());
    let observe = scenarios::scenario::Observe { keep_trace: false, collect_probes: true };
    let probed = scenarios::scenario::run_case_observed(&case, observe).expect("runs");
    assert!(probed.probes.contains_key("recovery.normal"), "{:?}", probed.probes);
    assert_eq!(plain.trace_hash, probed.trace_hash, "collecting probes must not change the run");
}
