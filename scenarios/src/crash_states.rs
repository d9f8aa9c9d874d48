//! Crash-state enumeration: at a crash point of a case, try every legal disk image a power
//! loss may leave there (exhaustively up to a bound, sampled from the seed above it), recover
//! each and run the scenario's checkers on it.
//!
//! A crash point is a crash event of the case's plan (a kill or a power loss), taken in time
//! order. At point `p` the event becomes a power loss whose image is named
//! (`Fault::PowerLoss { image }`, see `sim::disk::ImageSpace`): image 0 is the durable state
//! alone; the probe run at image 0 also reports how many legal images there are. Each image is
//! recovered in its own run of the case: the run up to the crash point is deterministic, so
//! every image starts from the same disk, and the run's checkers (every recovery check, then
//! the rest of the workload and its final checks) judge it. The first failing image is
//! written as a case file that `dst replay` reproduces bit for bit.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sim::{CrashImage, Fault, Outcome, TimedFault, Violation};

use crate::case::{Case, Expectation, ExpectedOutcome};
use crate::scenario::{run_case_observed, Observe};

/// How far to go.
#[derive(Debug, Clone)]
pub struct CrashStateOptions {
    /// Crash points to try, from the first (`None`: all).
    pub points: Option<usize>,
    /// Instead of the plan's crash events: power losses added just after this many sync
    /// boundaries of the run (successful file syncs of the crashed node), evenly spaced over
    /// those before the plan's first crash (or the run's end).
    pub at_syncs: Option<usize>,
    /// Images per point: all of them if there are at most this many, else this many sampled.
    pub max_states: u64,
    pub jobs: usize,
    /// Where the first failing state is written; `None`: not written.
    pub save_dir: Option<PathBuf>,
}

/// A failing state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailingState {
    pub image: CrashImage,
    pub violation: Violation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_file: Option<String>,
}

/// What one crash point gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointReport {
    /// 1-based, in time order.
    pub point: usize,
    /// Index of the crash event in the case's plan.
    pub event: usize,
    pub at_ms: u64,
    pub node: String,
    /// Legal images at the point (choices; saturated at u128::MAX), as text for JSON; `-`
    /// when the node was not running there.
    pub legal_states: String,
    /// `None`: the node was not running at the point, no image to try.
    #[serde(skip)]
    pub legal: Option<u128>,
    pub checked: u64,
    pub exhaustive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing: Option<FailingState>,
}

/// The whole enumeration of one case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrashStatesReport {
    pub scenario: String,
    pub seed: u64,
    pub points: Vec<PointReport>,
    pub states_checked: u64,
    pub wall_seconds: f64,
}

impl CrashStatesReport {
    pub fn failing(&self) -> Option<&PointReport> {
        self.points.iter().find(|p| p.failing.is_some())
    }
}

/// The crash events of a plan (kills and power losses), in time order: indices into `events`.
pub fn crash_points(case: &Case) -> Vec<usize> {
    let mut points: Vec<(u64, usize)> = case
        .plan
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.fault, Fault::Kill { .. } | Fault::PowerLoss { .. }))
        .map(|(i, e)| (e.at_ms, i))
        .collect();
    points.sort();
    points.into_iter().map(|(_, i)| i).collect()
}

/// The case with crash event `event` turned into a power loss leaving `image`.
pub fn at_point(case: &Case, event: usize, image: CrashImage) -> Case {
    let mut case = case.clone();
    if let Some(e) = case.plan.events.get_mut(event) {
        if let Fault::Kill { node, restart_after_ms } | Fault::PowerLoss { node, restart_after_ms, .. } = &e.fault {
            e.fault = Fault::PowerLoss { node: node.clone(), restart_after_ms: *restart_after_ms, image: Some(image) };
        }
    }
    case
}

/// How long the node stays down after an added crash point.
const ADDED_RESTART_AFTER_MS: u64 = 500;

/// Crash points just after `n` sync boundaries of `node`: the case with a power loss added
/// at the millisecond after each chosen sync, and that event's index.
pub fn sync_points(case: &Case, node: &str, n: usize) -> Result<Vec<(Case, usize)>, String> {
    let first_crash = crash_points(case).first().map_or(u64::MAX, |&i| case.plan.events[i].at_ms);
    let run = run_case_observed(case, Observe { keep_trace: true, collect_probes: false })?;
    let mut syncs: Vec<u64> = run
        .records
        .iter()
        .filter(|r| r.kind == "disk.sync" && r.node == node)
        .map(|r| r.time_us / 1_000 + 1)
        .filter(|&ms| ms < first_crash)
        .collect();
    syncs.dedup();
    if syncs.is_empty() || n == 0 {
        return Ok(Vec::new());
    }
    let chosen: BTreeSet<u64> = (0..n.min(syncs.len())).map(|i| syncs[i * syncs.len() / n.min(syncs.len())]).collect();
    Ok(chosen
        .into_iter()
        .map(|at_ms| {
            let mut c = case.clone();
            let fault =
                Fault::PowerLoss { node: node.to_string(), restart_after_ms: ADDED_RESTART_AFTER_MS, image: None };
            c.plan.events.push(TimedFault { at_ms, fault });
            let event = c.plan.events.len() - 1;
            (c, event)
        })
        .collect())
}

/// The legal-state count the disk traced at the enumerated power loss, if it happened.
fn legal_states(outcome: &Outcome) -> Option<u128> {
    outcome
        .records
        .iter()
        .filter(|r| r.kind == "disk.crash" && r.detail.contains(" image="))
        .find_map(|r| r.detail.split(" legal_states=").nth(1)?.split_whitespace().next()?.parse().ok())
}

/// The images to try at a point with `legal` images: all, or image 0 and samples.
fn images(legal: u128, max_states: u64, seed: u64, event: usize) -> (Vec<CrashImage>, bool) {
    let max = u128::from(max_states.max(1));
    if legal <= max {
        return ((0..legal as u64).map(CrashImage::Index).collect(), true);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc4a5_0000 ^ event as u64);
    let mut samples = BTreeSet::new();
    let mut out = vec![CrashImage::Index(0)];
    while (out.len() as u64) < max_states {
        // 63 bits: TOML integers are signed.
        let s = rng.gen::<u64>() >> 1;
        if samples.insert(s) {
            out.push(CrashImage::Sample(s));
        }
    }
    (out, false)
}

/// Runs `cases` on `jobs` threads in order until one fails; returns how many ran and the
/// first failure by position.
fn run_until_failure(cases: &[Case], jobs: usize, on_state: &(dyn Fn() + Sync)) -> (u64, Option<(usize, Outcome)>) {
    let next = AtomicU64::new(0);
    let ran = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failed: Mutex<Option<(usize, Outcome)>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(case) = cases.get(i) else { break };
                let outcome = run_case_observed(case, Observe::default()).expect("scenario exists");
                ran.fetch_add(1, Ordering::Relaxed);
                on_state();
                if !outcome.passed() {
                    stop.store(true, Ordering::Relaxed);
                    let mut f = failed.lock().unwrap_or_else(|e| e.into_inner());
                    if f.as_ref().is_none_or(|(j, _)| i < *j) {
                        *f = Some((i, outcome));
                    }
                }
            });
        }
    });
    (ran.into_inner(), failed.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Enumerates the crash states of `case`. Stops at the first failing state.
pub fn crash_states(
    case: &Case,
    opts: &CrashStateOptions,
    on_state: &(dyn Fn() + Sync),
) -> Result<CrashStatesReport, String> {
    let started = Instant::now();
    let mut report = CrashStatesReport {
        scenario: case.scenario.clone(),
        seed: case.seed,
        points: Vec::new(),
        states_checked: 0,
        wall_seconds: 0.0,
    };
    let points: Vec<(Case, usize)> = match opts.at_syncs {
        Some(n) => {
            let space = crate::find_scenario(&case.scenario).map(|s| (s.plan_space)()).ok_or("unknown scenario")?;
            let node = space.nodes.first().ok_or("the scenario has no node to crash")?;
            sync_points(case, node, n)?
        }
        None => crash_points(case).into_iter().map(|e| (case.clone(), e)).collect(),
    };
    for (n, (case, event)) in points.iter().take(opts.points.unwrap_or(usize::MAX)).enumerate() {
        let (case, event) = (case, *event);
        let e = &case.plan.events[event];
        let mut point = PointReport {
            point: n + 1,
            event,
            at_ms: e.at_ms,
            node: e.fault.node().unwrap_or_default().to_string(),
            legal_states: "0".to_string(),
            legal: None,
            checked: 0,
            exhaustive: true,
            failing: None,
        };
        // The probe: image 0, which also says how many images there are.
        let probe_case = at_point(case, event, CrashImage::Index(0));
        let probe = run_case_observed(&probe_case, Observe { keep_trace: true, collect_probes: false })?;
        on_state();
        point.checked = 1;
        point.legal = legal_states(&probe);
        let legal = point.legal.unwrap_or(1);
        point.legal_states = point.legal.map_or_else(|| "-".to_string(), |n| n.to_string());
        let mut failure = (!probe.passed()).then_some((probe_case, probe));
        if failure.is_none() && point.legal.is_some() {
            let (images, exhaustive) = images(legal, opts.max_states, case.seed, event);
            point.exhaustive = exhaustive;
            let cases: Vec<Case> = images[1..].iter().map(|&image| at_point(case, event, image)).collect();
            let (ran, failed) = run_until_failure(&cases, opts.jobs, on_state);
            point.checked += ran;
            failure = failed.map(|(i, outcome)| (cases[i].clone(), outcome));
        }
        report.states_checked += point.checked;
        if let Some((failing_case, outcome)) = failure {
            point.failing = Some(save_failure(failing_case, &outcome, &point, opts));
            report.points.push(point);
            break;
        }
        report.points.push(point);
    }
    report.wall_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The failing state as a case file expecting its first violation.
fn save_failure(mut case: Case, outcome: &Outcome, point: &PointReport, opts: &CrashStateOptions) -> FailingState {
    let violation = outcome.violations[0].clone();
    let image = match &case.plan.events[point.event].fault {
        Fault::PowerLoss { image: Some(image), .. } => *image,
        _ => CrashImage::Index(0),
    };
    case.expect = Expectation { outcome: ExpectedOutcome::Fail, checker: Some(violation.checker.clone()) };
    case.note = format!(
        "found by dst crash-states: crash point {} (plan event {}) image {image} of {}: {violation}",
        point.point, point.event, point.legal_states
    );
    let case_file = opts.save_dir.as_ref().and_then(|dir| {
        let name = format!("{}-{}-crash-{}-{}.toml", case.scenario, case.seed, point.event, image).replace(':', "-");
        let path = dir.join(name);
        match case.save(&path) {
            Ok(()) => Some(path.display().to_string()),
            Err(e) => {
                eprintln!("warning: {e}");
                None
            }
        }
    });
    FailingState { image, violation, case_file }
}

/// A crash-state sweep over generated cases: many seeds, each enumerated at its first
/// `points` crash points.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    pub scenario: String,
    pub bugs: BTreeSet<String>,
    pub seeds: u64,
    /// Seeds whose plan has at least one crash point reached with the node running.
    pub seeds_with_points: u64,
    pub points: u64,
    pub states_checked: u64,
    /// Points whose images were all tried.
    pub exhaustive_points: u64,
    /// Legal images per point: minimum, median, maximum (saturated), as text.
    pub legal_states_min_median_max: [String; 3],
    pub wall_seconds: f64,
    pub states_per_second: f64,
    /// Seeds with a failing state, and the case written for it.
    pub failures: Vec<(u64, FailingState)>,
}

/// Enumerates the crash states of `seeds` generated cases from `start_seed`, one seed per job.
pub fn crash_sweep(
    scenario: &'static crate::Scenario,
    start_seed: u64,
    seeds: u64,
    bugs: &BTreeSet<String>,
    opts: &CrashStateOptions,
    on_seed: &(dyn Fn(&CrashStatesReport) + Sync),
) -> Result<SweepReport, String> {
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let reports: Mutex<Vec<CrashStatesReport>> = Mutex::new(Vec::new());
    let error: Mutex<Option<String>> = Mutex::new(None);
    let one = CrashStateOptions { jobs: 1, ..opts.clone() };
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= seeds {
                    break;
                }
                let case = crate::scenario::generated_case(scenario, start_seed.wrapping_add(i), bugs);
                match crash_states(&case, &one, &|| {}) {
                    Ok(r) => {
                        on_seed(&r);
                        reports.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    }
                    Err(e) => *error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e),
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut reports = reports.into_inner().unwrap_or_else(|e| e.into_inner());
    reports.sort_by_key(|r| r.seed);
    let reached: Vec<&PointReport> = reports.iter().flat_map(|r| &r.points).filter(|p| p.legal.is_some()).collect();
    let mut legal: Vec<u128> = reached.iter().filter_map(|p| p.legal).collect();
    legal.sort_unstable();
    let pick = |i: usize| legal.get(i).map_or_else(|| "-".to_string(), |n| n.to_string());
    let states_checked = reports.iter().map(|r| r.states_checked).sum::<u64>();
    let wall_seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok(SweepReport {
        scenario: scenario.name.to_string(),
        bugs: bugs.clone(),
        seeds,
        seeds_with_points: reports.iter().filter(|r| r.points.iter().any(|p| p.legal.is_some())).count() as u64,
        points: reached.len() as u64,
        states_checked,
        exhaustive_points: reached.iter().filter(|p| p.exhaustive).count() as u64,
        legal_states_min_median_max: [pick(0), pick(legal.len() / 2), pick(legal.len().wrapping_sub(1))],
        wall_seconds,
        states_per_second: states_checked as f64 / wall_seconds,
        failures: reports.iter().filter_map(|r| Some((r.seed, r.failing()?.failing.clone()?))).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_spaces_are_enumerated_and_large_ones_sampled_from_the_seed() {
        let (all, exhaustive) = images(5, 64, 1, 0);
        assert!(exhaustive);
        assert_eq!(all, (0..5).map(CrashImage::Index).collect::<Vec<_>>());
        let (some, exhaustive) = images(u128::MAX, 10, 1, 0);
        assert!(!exhaustive);
        assert_eq!(some.len(), 10);
        assert_eq!(some[0], CrashImage::Index(0));
        assert_eq!(some, images(u128::MAX, 10, 1, 0).0, "drawn from the seed");
        assert_ne!(some, images(u128::MAX, 10, 2, 0).0);
    }
}
