//! Replays every saved case in `seeds/` and asserts its expected outcome. A case that expects
//! a failure with bugs switched on must also pass with them off: that is what makes it a
//! witness of the bug rather than of something else.

use std::path::PathBuf;

use scenarios::zoo::passes_without_bugs;
use scenarios::{run_case, Case, ExpectedOutcome};

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("seeds")
}

fn cases() -> Vec<(PathBuf, Case)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(seeds_dir())
        .expect("seeds/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths.into_iter().map(|p| (p.clone(), Case::load(&p).unwrap_or_else(|e| panic!("{e}")))).collect()
}

#[test]
fn every_saved_case_replays_as_expected() {
    sim::install_quiet_panic_hook();
    let cases = cases();
    assert!(!cases.is_empty(), "seeds/ holds no cases");
    let mut failures = Vec::new();
    for (path, case) in &cases {
        let outcome = run_case(case, false).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ok = match case.expect.outcome {
            ExpectedOutcome::Pass => outcome.passed(),
            ExpectedOutcome::Fail => {
                outcome.violations.iter().any(|v| Some(&v.checker) == case.expect.checker.as_ref())
            }
        };
        if !ok {
            failures.push(format!(
                "{}: expected {:?} {:?}, got {:?}",
                path.display(),
                case.expect.outcome,
                case.expect.checker,
                outcome.violations
            ));
        }
        if !case.bugs.is_empty() && !passes_without_bugs(case) {
            failures.push(format!("{}: still fails with its bugs switched off", path.display()));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn every_catalogued_bug_has_a_witness_case() {
    let cases = cases();
    for scenario in scenarios::SCENARIOS {
        for bug in (scenario.bugs)() {
            let found = cases.iter().any(|(_, c)| c.scenario == scenario.name && c.bugs.contains(bug));
            assert!(
                found,
                "no case in seeds/ switches on {bug} in scenario {}; run `cargo dst zoo --scenario {} --save-to seeds`",
                scenario.name, scenario.name
            );
        }
    }
}
