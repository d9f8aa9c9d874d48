//! Coverage: which probes (`engine::probe!`: fault kinds played, recovery branches taken,
//! failures handled) a sweep of seeds reached, and in how many runs. The catalogue of every
//! probe (`coverage/probes.txt`) says what the sweep never tried; each scenario's must-reach
//! list (`coverage/<scenario>-must-reach.txt`) names the probes a test sweep must reach.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::explore::ExploreReport;

const CATALOGUE: &str = include_str!("../coverage/probes.txt");
const BROKER_MUST_REACH: &str = include_str!("../coverage/broker-must-reach.txt");

/// One catalogued probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeInfo {
    pub name: &'static str,
    pub meaning: &'static str,
}

/// Lines of a probe list: `name [meaning]`, `#` comments and blank lines skipped.
fn entries(text: &'static str) -> impl Iterator<Item = (&'static str, &'static str)> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|l| match l.split_once(' ') {
        Some((name, meaning)) => (name, meaning.trim()),
        None => (l, ""),
    })
}

/// Every probe the engine and the simulation can emit.
pub fn catalogue() -> Vec<ProbeInfo> {
    entries(CATALOGUE).map(|(name, meaning)| ProbeInfo { name, meaning }).collect()
}

/// The probes a test sweep of `scenario` must reach (empty for a scenario without a list).
pub fn must_reach(scenario: &str) -> Vec<&'static str> {
    match scenario {
        "broker" => entries(BROKER_MUST_REACH).map(|(name, _)| name).collect(),
        _ => Vec::new(),
    }
}

/// One probe's line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeCoverage {
    pub name: String,
    /// Runs that reached it at least once.
    pub runs: u64,
    /// Times it was reached over all runs.
    pub hits: u64,
}

/// What a sweep reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverageReport {
    pub scenario: String,
    pub runs: u64,
    /// Every catalogued probe (and any uncatalogued one reached), by name.
    pub probes: Vec<ProbeCoverage>,
}

impl CoverageReport {
    /// Counts, from a sweep run with `collect_probes`, the runs that reached each probe.
    pub fn of(report: &ExploreReport) -> CoverageReport {
        let mut by_name: BTreeMap<String, ProbeCoverage> = catalogue()
            .into_iter()
            .map(|p| (p.name.to_string(), ProbeCoverage { name: p.name.to_string(), runs: 0, hits: 0 }))
            .collect();
        for result in &report.results {
            for (name, hits) in &result.probes {
                let entry = by_name.entry(name.clone()).or_insert_with(|| ProbeCoverage {
                    name: name.clone(),
                    runs: 0,
                    hits: 0,
                });
                entry.runs += 1;
                entry.hits += hits;
            }
        }
        CoverageReport { scenario: report.scenario.clone(), runs: report.runs, probes: by_name.into_values().collect() }
    }

    pub fn runs_reaching(&self, name: &str) -> u64 {
        self.probes.iter().find(|p| p.name == name).map_or(0, |p| p.runs)
    }

    /// Probes no run reached.
    pub fn never_hit(&self) -> Vec<&str> {
        self.probes.iter().filter(|p| p.runs == 0).map(|p| p.name.as_str()).collect()
    }

    /// Probes that were reached.
    pub fn hit_count(&self) -> usize {
        self.probes.iter().filter(|p| p.runs > 0).count()
    }

    /// The scenario's must-reach probes this sweep did not reach.
    pub fn missing_must_reach(&self) -> Vec<&'static str> {
        must_reach(&self.scenario).into_iter().filter(|name| self.runs_reaching(name) == 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// Every probe name literal (`probe!` with a string) in the Rust files under `dir`.
    fn probes_in_source(dir: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                probes_in_source(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source file");
                for piece in text.split("probe!(\"").skip(1) {
                    let name = piece.split('"').next().unwrap_or_default();
                    // The macro's own documentation names a probe as an example.
                    if path.ends_with("probe.rs") || name.starts_with("test.") {
                        continue;
                    }
                    found.insert(name.to_string());
                }
            }
        }
    }

    #[test]
    fn the_catalogue_lists_exactly_the_probes_in_the_source() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut in_source = BTreeSet::new();
        for dir in ["engine/src", "sim/src", "scenarios/src"] {
            probes_in_source(&root.join(dir), &mut in_source);
        }
        let listed: BTreeSet<String> = catalogue().iter().map(|p| p.name.to_string()).collect();
        assert_eq!(catalogue().len(), listed.len(), "a probe is listed twice");
        let unlisted: Vec<_> = in_source.difference(&listed).collect();
        let stale: Vec<_> = listed.difference(&in_source).collect();
        assert!(unlisted.is_empty(), "probes missing from coverage/probes.txt: {unlisted:?}");
        assert!(stale.is_empty(), "coverage/probes.txt lists probes no code emits: {stale:?}");
        assert!(catalogue().iter().all(|p| !p.meaning.is_empty()), "every probe says what it means");
    }

    fn sweep(probes_per_run: &[&[&str]]) -> ExploreReport {
        let results = probes_per_run
            .iter()
            .enumerate()
            .map(|(seed, names)| crate::explore::SeedResult {
                seed: seed as u64,
                passed: true,
                violations: Vec::new(),
                trace_hash: String::new(),
                sim_time_ms: 0,
                events: 0,
                wall_ms: 0,
                case_file: None,
                probes: names.iter().map(|n| (n.to_string(), 2)).collect(),
            })
            .collect::<Vec<_>>();
        ExploreReport {
            scenario: "broker".into(),
            bugs: BTreeSet::new(),
            shard: crate::explore::Shard::WHOLE,
            runs: results.len() as u64,
            failed_runs: 0,
            violations_by_checker: BTreeMap::new(),
            wall_seconds: 1.0,
            simulated_seconds: 0.0,
            seeds_per_second: 0.0,
            simulated_seconds_per_wall_second: 0.0,
            events: 0,
            results,
        }
    }

    #[test]
    fn runs_are_counted_per_probe_and_unreached_must_reach_probes_are_named() {
        let must = must_reach("broker");
        let all_but_first: Vec<&str> = must[1..].to_vec();
        let report = sweep(&[&all_but_first, &["fault.kill", "uncatalogued.probe"], &[]]);
        let coverage = CoverageReport::of(&report);
        assert_eq!(coverage.runs, 3);
        assert_eq!(coverage.missing_must_reach(), vec![must[0]]);
        assert_eq!(coverage.runs_reaching("fault.kill"), 2);
        let kill = coverage.probes.iter().find(|p| p.name == "fault.kill").expect("listed");
        assert_eq!(kill.hits, 4);
        assert!(coverage.never_hit().contains(&must[0]));
        assert!(coverage.never_hit().contains(&"fault.object-store-outage"));
        assert_eq!(coverage.runs_reaching("uncatalogued.probe"), 1, "a probe missing from the catalogue still shows");
        assert_eq!(coverage.probes.len(), catalogue().len() + 1);
        let everything = sweep(&[&must]);
        assert!(CoverageReport::of(&everything).missing_must_reach().is_empty());
    }

    #[test]
    fn must_reach_lists_only_catalogued_probes() {
        let listed: BTreeSet<&str> = catalogue().iter().map(|p| p.name).collect();
        let must = must_reach("broker");
        assert!(!must.is_empty());
        for name in must {
            assert!(listed.contains(name), "{name} is not in coverage/probes.txt");
        }
    }
}
