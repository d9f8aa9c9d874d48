//! Determinism as a tested contract: the same seed gives the same trace hash in two separate
//! processes, and different seeds give different traces.
//!
//! The test re-executes its own binary as a child (`DST_DETERMINISM_CHILD=1`), which prints
//! the hashes it computes; the parent computes the same seeds in-process and compares.

use std::process::Command;

use scenarios::scenario::generated_case;
use scenarios::{find_scenario, run_case};

/// Wide enough that some runs fail with the bug on (about one seed in ten does): the
/// distinct-hash check below needs a bug-on run whose trace differs from its bug-off twin.
const SEEDS: std::ops::Range<u64> = 0..48;
const CHILD_ENV: &str = "DST_DETERMINISM_CHILD";

/// Hashes of every seed, with no bug and with a bug on (so that failing runs, whose
/// violations are traced after the runtime ends, are covered too).
fn hashes(scenario: &str) -> Vec<(u64, u64)> {
    let scenario = find_scenario(scenario).expect("scenario");
    let buggy: std::collections::BTreeSet<String> = [engine::Bug::AckBeforeSync.id().to_string()].into_iter().collect();
    SEEDS
        .flat_map(|seed| [(seed, Default::default()), (seed, buggy.clone())])
        .map(|(seed, bugs)| {
            let case = generated_case(scenario, seed, &bugs);
            let outcome = run_case(&case, false).expect("runs");
            (seed, outcome.trace_hash)
        })
        .collect()
}

fn render(hashes: &[(u64, u64)]) -> String {
    hashes.iter().map(|(s, h)| format!("seed={s} hash={h:016x}\n")).collect()
}

#[test]
fn same_seed_same_trace_hash_across_processes() {
    sim::install_quiet_panic_hook();
    if std::env::var_os(CHILD_ENV).is_some() {
        // The child: print and let the parent compare.
        print!("BEGIN\n{}END\n", render(&hashes("disk-log")));
        return;
    }
    let here = render(&hashes("disk-log"));
    let exe = std::env::current_exe().expect("own path");
    let child = Command::new(exe)
        .args(["--exact", "same_seed_same_trace_hash_across_processes", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("re-executing the test binary");
    let stdout = String::from_utf8_lossy(&child.stdout);
    let there = stdout
        .split_once("BEGIN\n")
        .and_then(|(_, rest)| rest.split_once("END\n"))
        .map(|(body, _)| body.to_string())
        .unwrap_or_else(|| panic!("child printed no hashes:\n{stdout}\n{}", String::from_utf8_lossy(&child.stderr)));
    assert_eq!(here, there, "same seeds, different trace hashes in another process");
    let distinct: std::collections::BTreeSet<&str> = here.lines().map(|l| &l[l.find("hash=").unwrap()..]).collect();
    assert!(distinct.len() > SEEDS.count(), "different seeds should give different traces:\n{here}");
    // The same process must also agree with itself (statics carrying state would break it).
    assert_eq!(here, render(&hashes("disk-log")), "a second pass in the same process differs");
}
