//! Exploration: many seeds of one scenario on all cores, each a fresh deterministic run; every
//! failure saved as a case file. Seeds split deterministically into shards (`k/n`) so a sweep
//! can run across the machines of a CI matrix or a job array and the JSON results merge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sim::Violation;

use crate::case::{Expectation, ExpectedOutcome};
use crate::scenario::{drawn_case, run_case_observed, Observe, Scenario};

/// Which part of the seed space this process runs: shard `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// Parses `k/n` with `1 <= k <= n`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (k, n) = text.split_once('/').ok_or_else(|| format!("shard {text:?} is not of the form k/n"))?;
        let index: u64 = k.trim().parse().map_err(|_| format!("shard index {k:?} is not a number"))?;
        let count: u64 = n.trim().parse().map_err(|_| format!("shard count {n:?} is not a number"))?;
        if count == 0 || index == 0 || index > count {
            return Err(format!("shard {text:?} needs 1 <= k <= n"));
        }
        Ok(Shard { index, count })
    }

    /// The `i`-th seed of this shard, counting from `start`.
    pub fn seed(&self, start: u64, i: u64) -> u64 {
        start.wrapping_add(self.index - 1).wrapping_add(i.wrapping_mul(self.count))
    }

    /// How many of the seeds `[start, start + total)` fall in this shard.
    pub fn share_of(&self, total: u64) -> u64 {
        let first = self.index - 1;
        if total <= first {
            0
        } else {
            (total - first).div_ceil(self.count)
        }
    }
}

/// When to stop.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// Run this many seeds of the whole seed range (this shard runs its share).
    Seeds(u64),
    /// Run until this much wall time has passed.
    Time(Duration),
}

pub struct ExploreOptions {
    pub scenario: &'static Scenario,
    pub budget: Budget,
    pub start_seed: u64,
    pub bugs: BTreeSet<String>,
    pub jobs: usize,
    pub shard: Shard,
    /// Where failing cases are written; `None`: not written.
    pub save_dir: Option<PathBuf>,
    /// Stop at the first failure (used by `zoo`).
    pub stop_at_first_failure: bool,
    /// Collect each run's coverage probes into its `SeedResult` (`dst coverage`).
    pub collect_probes: bool,
    /// Run the scenario's fixed configuration instead of one drawn from each seed.
    pub fixed_config: bool,
}

/// One seed's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    pub passed: bool,
    pub violations: Vec<Violation>,
    pub trace_hash: String,
    pub sim_time_ms: u64,
    pub events: u64,
    pub wall_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_file: Option<String>,
    /// Coverage probes reached, with their hit counts (only when collected).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probes: BTreeMap<String, u64>,
}

/// The whole exploration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExploreReport {
    pub scenario: String,
    pub bugs: BTreeSet<String>,
    pub shard: Shard,
    pub runs: u64,
    pub failed_runs: u64,
    pub violations_by_checker: BTreeMap<String, u64>,
    pub wall_seconds: f64,
    pub simulated_seconds: f64,
    pub seeds_per_second: f64,
    pub simulated_seconds_per_wall_second: f64,
    pub events: u64,
    pub results: Vec<SeedResult>,
}

impl ExploreReport {
    pub fn failures(&self) -> impl Iterator<Item = &SeedResult> {
        self.results.iter().filter(|r| !r.passed)
    }
}

/// Runs one seed, saving its case if it failed.
fn run_seed(opts: &ExploreOptions, seed: u64) -> SeedResult {
    let started = Instant::now();
    let mut case = drawn_case(opts.scenario, seed, &opts.bugs, !opts.fixed_config);
    let observe = Observe { keep_trace: false, collect_probes: opts.collect_probes };
    let outcome = run_case_observed(&case, observe).expect("scenario exists");
    let mut result = SeedResult {
        seed,
        passed: outcome.passed(),
        violations: outcome.violations.clone(),
        trace_hash: format!("{:016x}", outcome.trace_hash),
        sim_time_ms: outcome.sim_time_ms,
        events: outcome.events,
        wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        case_file: None,
        probes: outcome.probes.clone(),
    };
    if let (false, Some(dir)) = (result.passed, &opts.save_dir) {
        case.expect =
            Expectation { outcome: ExpectedOutcome::Fail, checker: Some(outcome.violations[0].checker.clone()) };
        case.note = format!("found by dst explore: {}", outcome.violations[0]);
        let path = dir.join(format!("{}-{}.toml", opts.scenario.name, seed));
        match case.save(&path) {
            Ok(()) => result.case_file = Some(path.display().to_string()),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    result
}

/// Explores; `on_result` is called for every finished seed (progress display).
pub fn explore(opts: &ExploreOptions, on_result: &(dyn Fn(&SeedResult) + Sync)) -> ExploreReport {
    let started = Instant::now();
    let limit = match opts.budget {
        Budget::Seeds(total) => opts.shard.share_of(total),
        Budget::Time(_) => u64::MAX,
    };
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Budget::Time(limit) = opts.budget {
                    if started.elapsed() >= limit {
                        break;
                    }
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    break;
                }
                let result = run_seed(opts, opts.shard.seed(opts.start_seed, i));
                let runaway = result.violations.iter().any(|v| v.checker == sim::runner::WALL_LIMIT);
                if runaway {
                    eprintln!("seed {} ran away (no simulated progress); stopping the exploration", result.seed);
                }
                if runaway || (!result.passed && opts.stop_at_first_failure) {
                    stop.store(true, Ordering::Relaxed);
                }
                on_result(&result);
                results.lock().unwrap_or_else(|e| e.into_inner()).push(result);
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| r.seed);
    summarize(opts, results, started.elapsed())
}

fn summarize(opts: &ExploreOptions, results: Vec<SeedResult>, wall: Duration) -> ExploreReport {
    let mut by_checker = BTreeMap::new();
    for v in results.iter().flat_map(|r| &r.violations) {
        *by_checker.entry(v.checker.clone()).or_insert(0) += 1;
    }
    let wall_seconds = wall.as_secs_f64().max(1e-9);
    let simulated_seconds = results.iter().map(|r| r.sim_time_ms as f64 / 1_000.0).sum::<f64>();
    ExploreReport {
        scenario: opts.scenario.name.to_string(),
        bugs: opts.bugs.clone(),
        shard: opts.shard,
        runs: results.len() as u64,
        failed_runs: results.iter().filter(|r| !r.passed).count() as u64,
        violations_by_checker: by_checker,
        wall_seconds,
        simulated_seconds,
        seeds_per_second: results.len() as f64 / wall_seconds,
        simulated_seconds_per_wall_second: simulated_seconds / wall_seconds,
        events: results.iter().map(|r| r.events).sum(),
        results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_seed_range() {
        let total = 103;
        let mut seen = BTreeSet::new();
        for k in 1..=4 {
            let shard = Shard { index: k, count: 4 };
            for i in 0..shard.share_of(total) {
                assert!(seen.insert(shard.seed(1000, i)), "seed run twice");
            }
        }
        assert_eq!(seen, (1000..1000 + total).collect());
    }

    #[test]
    fn shard_parsing_rejects_nonsense() {
        assert_eq!(Shard::parse("2/5"), Ok(Shard { index: 2, count: 5 }));
        for bad in ["0/5", "6/5", "1/0", "x/2", "3", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }
}
