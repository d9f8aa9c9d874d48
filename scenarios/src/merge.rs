//! Merging the `--json` reports of a sweep's shards (`dst explore --shard k/n --json`) into
//! one summary, so a sweep split across a CI matrix or a job array reads as one. Reports of
//! different scenarios or bug sets, or that ran a seed twice, are refused with a typed error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::explore::{ExploreReport, SeedResult, Shard};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("no reports to merge")]
    Empty,
    #[error("cannot read report {path}: {message}")]
    Read { path: String, message: String },
    #[error("report {path} is not a `dst explore --json` report: {message}")]
    Malformed { path: String, message: String },
    #[error("report {path} is of scenario {found:?}, {first} of {expected:?}")]
    ScenarioMismatch { path: String, first: String, expected: String, found: String },
    #[error("report {path} ran with bugs {found:?}, {first} with {expected:?}")]
    BugsMismatch { path: String, first: String, expected: BTreeSet<String>, found: BTreeSet<String> },
    #[error("seed {seed} was run by both {first} and {second}: the shards overlap")]
    OverlappingSeeds { seed: u64, first: String, second: String },
    #[error("report {path} counts {runs} runs but lists {listed} results")]
    Inconsistent { path: String, runs: u64, listed: usize },
}

/// The merged summary.
#[derive(Debug, Clone, Serialize)]
pub struct MergedReport {
    pub scenario: String,
    pub bugs: BTreeSet<String>,
    /// The merged reports' shards, in the order given.
    pub shards: Vec<Shard>,
    pub runs: u64,
    pub failed_runs: u64,
    pub violations_by_checker: BTreeMap<String, u64>,
    /// The longest shard's wall time: the sweep's length when the shards ran side by side.
    pub wall_seconds: f64,
    /// Every shard's seeds/s added up: the sweep's throughput.
    pub seeds_per_second: f64,
    pub simulated_seconds: f64,
    pub events: u64,
    /// The failing seeds of every shard, by seed.
    pub failures: Vec<SeedResult>,
}

/// Reads one report file.
pub fn load(path: &Path) -> Result<ExploreReport, MergeError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| MergeError::Read { path: shown.clone(), message: e.to_string() })?;
    parse(&text, &shown)
}

/// Parses one report; `path` names it in errors.
pub fn parse(text: &str, path: &str) -> Result<ExploreReport, MergeError> {
    let report: ExploreReport = serde_json::from_str(text)
        .map_err(|e| MergeError::Malformed { path: path.to_string(), message: e.to_string() })?;
    if report.results.len() as u64 != report.runs {
        return Err(MergeError::Inconsistent {
            path: path.to_string(),
            runs: report.runs,
            listed: report.results.len(),
        });
    }
    Ok(report)
}

/// Merges `(name, report)` pairs; names are what errors call the reports (their paths).
pub fn merge(reports: &[(String, ExploreReport)]) -> Result<MergedReport, MergeError> {
    let (first_name, first) = reports.first().ok_or(MergeError::Empty)?;
    let mut seen: BTreeMap<u64, &str> = BTreeMap::new();
    let mut merged = MergedReport {
        scenario: first.scenario.clone(),
        bugs: first.bugs.clone(),
        shards: Vec::new(),
        runs: 0,
        failed_runs: 0,
        violations_by_checker: BTreeMap::new(),
        wall_seconds: 0.0,
        seeds_per_second: 0.0,
        simulated_seconds: 0.0,
        events: 0,
        failures: Vec::new(),
    };
    for (name, r) in reports {
        if r.scenario != first.scenario {
            return Err(MergeError::ScenarioMismatch {
                path: name.clone(),
                first: first_name.clone(),
                expected: first.scenario.clone(),
                found: r.scenario.clone(),
            });
        }
        if r.bugs != first.bugs {
            return Err(MergeError::BugsMismatch {
                path: name.clone(),
                first: first_name.clone(),
                expected: first.bugs.clone(),
                found: r.bugs.clone(),
            });
        }
        for result in &r.results {
            if let Some(other) = seen.insert(result.seed, name) {
                return Err(MergeError::OverlappingSeeds {
                    seed: result.seed,
                    first: other.to_string(),
                    second: name.clone(),
                });
            }
        }
        merged.shards.push(r.shard);
        merged.runs += r.runs;
        merged.failed_runs += r.failed_runs;
        for (checker, n) in &r.violations_by_checker {
            *merged.violations_by_checker.entry(checker.clone()).or_insert(0) += n;
        }
        merged.wall_seconds = merged.wall_seconds.max(r.wall_seconds);
        merged.seeds_per_second += r.seeds_per_second;
        merged.simulated_seconds += r.simulated_seconds;
        merged.events += r.events;
        merged.failures.extend(r.failures().cloned());
    }
    merged.failures.sort_by_key(|f| f.seed);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim::Violation;

    fn result(seed: u64, failing_checker: Option<&str>) -> SeedResult {
        SeedResult {
            seed,
            passed: failing_checker.is_none(),
            violations: failing_checker
                .map(|c| vec![Violation { checker: c.into(), message: "m".into(), at_ms: 5 }])
                .unwrap_or_default(),
            trace_hash: "0".into(),
            sim_time_ms: 1_000,
            events: 10,
            wall_ms: 1,
            case_file: None,
            probes: BTreeMap::new(),
        }
    }

    fn report(index: u64, count: u64, seeds: &[(u64, Option<&str>)], wall: f64) -> ExploreReport {
        let results: Vec<SeedResult> = seeds.iter().map(|(s, c)| result(*s, *c)).collect();
        let mut by_checker = BTreeMap::new();
        for v in results.iter().flat_map(|r| &r.violations) {
            *by_checker.entry(v.checker.clone()).or_insert(0) += 1;
        }
        ExploreReport {
            scenario: "broker".into(),
            bugs: BTreeSet::new(),
            shard: Shard { index, count },
            runs: results.len() as u64,
            failed_runs: results.iter().filter(|r| !r.passed).count() as u64,
            violations_by_checker: by_checker,
            wall_seconds: wall,
            simulated_seconds: results.len() as f64,
            seeds_per_second: results.len() as f64 / wall,
            simulated_seconds_per_wall_second: 1.0,
            events: 10 * results.len() as u64,
            results,
        }
    }

    fn named(reports: Vec<ExploreReport>) -> Vec<(String, ExploreReport)> {
        reports.into_iter().enumerate().map(|(i, r)| (format!("shard{i}.json"), r)).collect()
    }

    #[test]
    fn shards_merge_into_one_summary() {
        let a = report(1, 2, &[(0, None), (2, Some("durability")), (4, None)], 2.0);
        let b = report(2, 2, &[(1, Some("log-prefix")), (3, Some("durability"))], 4.0);
        let m = merge(&named(vec![a, b])).expect("merges");
        assert_eq!((m.runs, m.failed_runs, m.events), (5, 3, 50));
        assert_eq!(m.violations_by_checker.get("durability"), Some(&2));
        assert_eq!(m.violations_by_checker.get("log-prefix"), Some(&1));
        assert_eq!(m.wall_seconds, 4.0);
        assert!((m.seeds_per_second - (1.5 + 0.5)).abs() < 1e-9);
        assert_eq!(m.failures.iter().map(|f| f.seed).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn a_report_survives_its_json_round_trip() {
        let a = report(1, 1, &[(0, None), (1, Some("durability"))], 1.0);
        let text = serde_json::to_string_pretty(&a).expect("serializes");
        let back = parse(&text, "a.json").expect("parses");
        assert_eq!(back.runs, 2);
        assert_eq!(merge(&named(vec![back])).expect("merges").failed_runs, 1);
    }

    #[test]
    fn mismatched_or_malformed_reports_are_typed_errors() {
        let a = report(1, 2, &[(0, None)], 1.0);
        let mut other = report(2, 2, &[(1, None)], 1.0);
        other.scenario = "disk-log".into();
        assert!(matches!(merge(&named(vec![a.clone(), other])), Err(MergeError::ScenarioMismatch { .. })));
        let mut bugs = report(2, 2, &[(1, None)], 1.0);
        bugs.bugs.insert("ack-before-sync".into());
        assert!(matches!(merge(&named(vec![a.clone(), bugs])), Err(MergeError::BugsMismatch { .. })));
        let overlapping = report(2, 2, &[(1, None), (0, None)], 1.0);
        assert!(matches!(
            merge(&named(vec![a.clone(), overlapping])),
            Err(MergeError::OverlappingSeeds { seed: 0, .. })
        ));
        assert!(matches!(merge(&[]), Err(MergeError::Empty)));
        assert!(matches!(parse("{\"runs\": 3}", "x"), Err(MergeError::Malformed { .. })));
        assert!(matches!(parse("not json", "x"), Err(MergeError::Malformed { .. })));
        let mut text = serde_json::to_value(&a).expect("serializes");
        text["runs"] = 7.into();
        assert!(matches!(parse(&text.to_string(), "x"), Err(MergeError::Inconsistent { runs: 7, listed: 1, .. })));
        assert!(matches!(load(Path::new("/nonexistent/r.json")), Err(MergeError::Read { .. })));
    }
}
