//! The bug zoo: for every catalogued bug a scenario can switch on, how many seeds and how long
//! until a checker catches it, which checker, and whether the witness case passes with the bug
//! switched off again. It scores the checkers: a bug nobody catches is a blind spot.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::case::{Case, Expectation, ExpectedOutcome};
use crate::explore::{explore, Budget, ExploreOptions, Shard};
use crate::scenario::{drawn_case, run_case, Scenario};

/// One bug's result.
#[derive(Debug, Clone, Serialize)]
pub struct ZooEntry {
    pub bug: String,
    pub origin: String,
    pub expected_checker: String,
    /// The lowest failing seed found, if any.
    pub seed: Option<u64>,
    /// Seeds from the start of the range up to and including the witness (or all run).
    pub seeds_to_catch: u64,
    pub wall_seconds: f64,
    /// The checker of the witness's first violation.
    pub checker: Option<String>,
    /// Whether some violation of the witness came from the expected checker.
    pub expected_checker_fired: bool,
    /// Whether the witness passes with the bug switched off.
    pub passes_with_bug_off: Option<bool>,
    pub case_file: Option<String>,
}

impl ZooEntry {
    pub fn caught(&self) -> bool {
        self.seed.is_some()
    }
}

pub struct ZooOptions<'a> {
    pub scenario: &'static Scenario,
    pub max_seeds: u64,
    pub jobs: usize,
    /// Where each bug's witness case is written (`<dir>/<scenario>-<bug>.toml`); `None`: not written.
    pub save_dir: Option<&'a Path>,
    /// Only these bugs (empty: all the scenario supports).
    pub only: BTreeSet<String>,
    /// Hunt with the scenario's fixed configuration instead of one drawn from each seed.
    pub fixed_config: bool,
}

/// Hunts every bug in turn.
pub fn zoo(opts: &ZooOptions<'_>, on_entry: &dyn Fn(&ZooEntry)) -> Vec<ZooEntry> {
    let bugs: Vec<&str> =
        (opts.scenario.bugs)().into_iter().filter(|b| opts.only.is_empty() || opts.only.contains(*b)).collect();
    bugs.into_iter()
        .map(|bug| {
            let entry = hunt(opts, bug);
            on_entry(&entry);
            entry
        })
        .collect()
}

fn hunt(opts: &ZooOptions<'_>, bug_id: &str) -> ZooEntry {
    let started = Instant::now();
    let info = bug_id.parse::<engine::Bug>().map(|b| b.info());
    let (origin, expected) = info.map(|i| (i.origin, i.checker)).unwrap_or(("ours", "?"));
    let bugs: BTreeSet<String> = [bug_id.to_string()].into_iter().collect();
    let explore_opts = ExploreOptions {
        scenario: opts.scenario,
        budget: Budget::Seeds(opts.max_seeds),
        start_seed: 0,
        bugs: bugs.clone(),
        jobs: opts.jobs,
        shard: Shard::WHOLE,
        save_dir: None,
        stop_at_first_failure: true,
        collect_probes: false,
        fixed_config: opts.fixed_config,
    };
    let report = explore(&explore_opts, &|_| {});
    let witness = report.failures().min_by_key(|r| r.seed).cloned();
    let mut entry = ZooEntry {
        bug: bug_id.to_string(),
        origin: origin.to_string(),
        expected_checker: expected.to_string(),
        seed: witness.as_ref().map(|w| w.seed),
        seeds_to_catch: witness.as_ref().map_or(report.runs, |w| w.seed + 1),
        wall_seconds: 0.0,
        checker: witness.as_ref().map(|w| w.violations[0].checker.clone()),
        expected_checker_fired: witness.as_ref().is_some_and(|w| w.violations.iter().any(|v| v.checker == expected)),
        passes_with_bug_off: None,
        case_file: None,
    };
    if let Some(w) = witness {
        let mut case = drawn_case(opts.scenario, w.seed, &bugs, !opts.fixed_config);
        let checker = if entry.expected_checker_fired { expected.to_string() } else { w.violations[0].checker.clone() };
        case.expect = Expectation { outcome: ExpectedOutcome::Fail, checker: Some(checker) };
        case.note = format!("bug zoo witness for {bug_id} ({origin}): {}", w.violations[0]);
        entry.passes_with_bug_off = Some(passes_without_bugs(&case));
        if let Some(dir) = opts.save_dir {
            let path = dir.join(format!("{}-{bug_id}.toml", opts.scenario.name));
            if case.save(&path).is_ok() {
                entry.case_file = Some(path.display().to_string());
            }
        }
    }
    entry.wall_seconds = started.elapsed().as_secs_f64();
    entry
}

/// Whether `case` passes once every bug is switched off.
pub fn passes_without_bugs(case: &Case) -> bool {
    let mut fixed = case.clone();
    fixed.bugs.clear();
    run_case(&fixed, false).is_ok_and(|o| o.passed())
}
