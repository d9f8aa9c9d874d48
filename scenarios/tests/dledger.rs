//! The `dledger` scenario end to end: clean seeds pass, and a run is a function of its seed
//! (two runs of a seed in one process give the same trace).

use std::collections::BTreeSet;

use scenarios::scenario::{generated_case, run_case_observed, Observe};
use scenarios::{find_scenario, run_case};

#[test]
fn a_seed_replays_the_same_trace_in_one_process() {
    sim::install_quiet_panic_hook();
    let scenario = find_scenario("dledger").expect("registered");
    for seed in [std::env::var("DLEDGER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7u64)] {
        let case = generated_case(scenario, seed, &BTreeSet::new());
        let observe = Observe { keep_trace: true, collect_probes: false };
        let a = run_case_observed(&case, observe).expect("runs");
        let b = run_case_observed(&case, observe).expect("runs");
        if a.trace_hash != b.trace_hash {
            let first = a.records.iter().zip(&b.records).position(|(x, y)| format!("{x:?}") != format!("{y:?}"));
            let at = first.unwrap_or(a.records.len().min(b.records.len()));
            let show = |r: &[sim::trace::TraceRecord]| {
                r[at.saturating_sub(5)..(at + 3).min(r.len())]
                    .iter()
                    .map(|x| format!("{x:?}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "seed {seed}: traces differ at record {at}:\n--- first\n{}\n--- second\n{}",
                show(&a.records),
                show(&b.records)
            );
        }
    }
}

#[test]
fn clean_seeds_pass() {
    sim::install_quiet_panic_hook();
    let scenario = find_scenario("dledger").expect("registered");
    for seed in 0..4 {
        let outcome = run_case(&generated_case(scenario, seed, &BTreeSet::new()), false).expect("runs");
        assert!(outcome.passed(), "seed {seed}: {:?}", outcome.violations);
    }
}
