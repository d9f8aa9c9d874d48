//! Crash-state enumeration end to end: a catalogued recovery bug is caught at its witness's
//! first crash point, the failing state is written as a case that replays as failing, and
//! with the bug off the same point's states pass.

use std::path::Path;

use scenarios::crash_states::{at_point, crash_points, crash_states, CrashStateOptions};
use scenarios::{run_case, Case, ExpectedOutcome};
use sim::{CrashImage, Fault};

fn witness() -> Case {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds/broker-no-zero-on-truncate.toml");
    Case::load(&path).expect("the witness case loads")
}

#[test]
fn crash_points_are_the_crash_events_in_time_order() {
    let case = witness();
    let points = crash_points(&case);
    assert!(!points.is_empty());
    let times: Vec<u64> = points.iter().map(|&i| case.plan.events[i].at_ms).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    let at = at_point(&case, points[0], CrashImage::Index(3));
    assert!(matches!(at.plan.events[points[0]].fault, Fault::PowerLoss { image: Some(CrashImage::Index(3)), .. }));
}

#[test]
fn a_recovery_bug_is_caught_at_the_first_crash_point_and_replays() {
    let dir = std::env::temp_dir().join(format!("crash-states-test-{}", std::process::id()));
    let opts =
        CrashStateOptions { points: Some(1), at_syncs: None, max_states: 32, jobs: 1, save_dir: Some(dir.clone()) };
    let report = crash_states(&witness(), &opts, &|| {}).unwrap();
    let point = report.failing().expect("the bug is caught at the first crash point");
    assert_eq!(point.point, 1);
    let failing = point.failing.as_ref().unwrap();
    let saved = Case::load(Path::new(failing.case_file.as_ref().unwrap())).unwrap();
    assert_eq!(saved.expect.outcome, ExpectedOutcome::Fail);
    let outcome = run_case(&saved, false).unwrap();
    assert!(!outcome.passed());
    assert_eq!(outcome.violations[0], failing.violation, "the saved state replays the same violation");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn with_the_bug_off_the_first_points_states_pass() {
    let mut case = witness();
    case.bugs.clear();
    let opts = CrashStateOptions { points: Some(1), at_syncs: None, max_states: 8, jobs: 1, save_dir: None };
    let report = crash_states(&case, &opts, &|| {}).unwrap();
    assert!(report.failing().is_none(), "{:?}", report.failing());
    assert_eq!(report.states_checked, 8);
    assert!(report.points[0].legal.is_some_and(|n| n > 8), "a broker power loss has many legal images");
}

#[test]
fn crash_points_can_be_added_at_sync_boundaries() {
    let mut case = witness();
    case.bugs.clear();
    let opts = CrashStateOptions { points: None, at_syncs: Some(3), max_states: 2, jobs: 1, save_dir: None };
    let report = crash_states(&case, &opts, &|| {}).unwrap();
    assert_eq!(report.points.len(), 3, "three sync boundaries before the first crash");
    let first_crash = case.plan.events[crash_points(&case)[0]].at_ms;
    assert!(report.points.iter().all(|p| p.at_ms < first_crash && p.event == case.plan.events.len()));
    assert!(report.points.iter().all(|p| p.legal.is_some()), "the broker was up at each");
    assert!(report.failing().is_none());
}
