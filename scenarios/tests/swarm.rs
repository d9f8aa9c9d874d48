//! The configuration swarm as a contract: a drawn case written to TOML and read back runs the
//! same trace; the swarm adds to a seed's fault plan without moving its own events; a bad
//! configuration key fails the run with a `config` violation naming it.

use std::collections::BTreeSet;

use scenarios::scenario::{drawn_case, generated_case};
use scenarios::{find_scenario, run_case, Case};

#[test]
fn a_drawn_case_replays_exactly_from_its_file() {
    sim::install_quiet_panic_hook();
    for name in ["broker", "tiered", "dledger", "disk-log"] {
        let scenario = find_scenario(name).expect("scenario");
        for seed in 0..3 {
            let case = drawn_case(scenario, seed, &BTreeSet::new(), true);
            assert!(!case.config.is_empty(), "{name} seed {seed} drew no configuration");
            let text = case.to_toml();
            let back = Case::parse(&text, "drawn").expect("the drawn case parses");
            assert_eq!(back, case);
            let first = run_case(&case, false).expect("runs");
            let second = run_case(&back, false).expect("runs");
            assert_eq!(first.trace_hash, second.trace_hash, "{name} seed {seed}");
            assert!(first.passed(), "{name} seed {seed}: {:?}\n{text}", first.violations);
        }
    }
}

#[test]
fn the_swarm_keeps_the_seeds_own_fault_plan() {
    let scenario = find_scenario("broker").expect("scenario");
    let mut chained = 0;
    for seed in 0..40 {
        let fixed = generated_case(scenario, seed, &BTreeSet::new());
        let swarm = drawn_case(scenario, seed, &BTreeSet::new(), true);
        assert_eq!(drawn_case(scenario, seed, &BTreeSet::new(), false), fixed);
        assert_eq!(swarm.plan.background, fixed.plan.background);
        // Every independent event is still there, at its time; chains only add.
        let mut rest = swarm.plan.events.clone();
        for e in &fixed.plan.events {
            let i = rest.iter().position(|r| r == e).unwrap_or_else(|| panic!("seed {seed} lost {e:?}"));
            rest.remove(i);
        }
        chained += usize::from(!rest.is_empty());
    }
    assert!((5..=25).contains(&chained), "chains in {chained} of 40 seeds");
}

#[test]
fn a_bad_configuration_key_is_a_config_violation() {
    sim::install_quiet_panic_hook();
    for (name, config, key) in [
        ("broker", "[store]\ncommit_log_file_sizes = 4096", "commit_log_file_sizes"),
        ("dledger", "[dledger]\nheartbeat_millis = 5", "heartbeat_millis"),
        ("dledger", "[shapes]\nfigure9 = [1, 2]", "figure9"),
        ("disk-log", "[writer]\nrecords = 3", "records"),
    ] {
        let scenario = find_scenario(name).expect("scenario");
        let mut case = generated_case(scenario, 1, &BTreeSet::new());
        case.config = config.parse().expect("toml");
        let outcome = run_case(&case, false).expect("runs");
        assert_eq!(outcome.violations.len(), 1, "{name}: {:?}", outcome.violations);
        assert_eq!(outcome.violations[0].checker, "config");
        assert!(outcome.violations[0].message.contains(key), "{name}: {:?}", outcome.violations);
    }
}
