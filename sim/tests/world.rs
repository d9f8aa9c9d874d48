//! The fault controller: crashes restart their node, an unfinished clean shutdown becomes a
//! crash, overlapping crashes restart once, fault windows close, and it is all deterministic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sim::{CrashKind, DiskFaults, Fault, FaultPlan, TimedFault, Trace, World, WorldConfig};

fn plan(events: Vec<(u64, Fault)>) -> FaultPlan {
    FaultPlan {
        events: events.into_iter().map(|(at_ms, fault)| TimedFault { at_ms, fault }).collect(),
        ..FaultPlan::default()
    }
}

/// Plays `plan` against one node "n" whose process counts its boots and, if `obey_ctrl_c`,
/// stops cleanly on ctrl-c. Returns (boots, trace counts).
fn play(plan: FaultPlan, obey_ctrl_c: bool) -> (u64, std::collections::BTreeMap<String, u64>, u64) {
    sim::runner::block_on(7, move || async move {
        let trace = Trace::new(false);
        trace.start_clock();
        let world = World::new(7, trace.clone(), plan, WorldConfig::default());
        let boots = Arc::new(AtomicU64::new(0));
        let (w, b) = (world.clone(), boots.clone());
        world.add_node("n", move || {
            let (w, b) = (w.clone(), b.clone());
            async move {
                b.fetch_add(1, Ordering::SeqCst);
                w.report_up("n");
                if obey_ctrl_c {
                    let _ = tokio::signal::ctrl_c().await;
                    w.report_stopped("n");
                } else {
                    std::future::pending::<()>().await;
                }
            }
        });
        world.play_faults().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        (boots.load(Ordering::SeqCst), trace.counts(), trace.hash())
    })
}

#[test]
fn crashes_and_clean_shutdowns_restart_the_node() {
    let (boots, counts, _) = play(
        plan(vec![
            (100, Fault::Kill { node: "n".into(), restart_after_ms: 50 }),
            (500, Fault::CleanShutdown { node: "n".into(), restart_after_ms: 200 }),
            (1_000, Fault::PowerLoss { node: "n".into(), restart_after_ms: 100, image: None }),
        ]),
        true,
    );
    assert_eq!(boots, 4, "first boot plus three restarts");
    assert_eq!(counts.get("node.restart"), Some(&3));
    assert_eq!(counts.get("node.stopped"), Some(&1));
    assert_eq!(counts.get("node.shutdown-unfinished"), None);
}

#[test]
fn an_unfinished_clean_shutdown_is_killed() {
    let (boots, counts, _) =
        play(plan(vec![(100, Fault::CleanShutdown { node: "n".into(), restart_after_ms: 300 })]), false);
    assert_eq!(boots, 2);
    assert_eq!(counts.get("node.shutdown-unfinished"), Some(&1));
}

#[test]
fn overlapping_crashes_restart_once_after_the_last() {
    let (boots, counts, _) = play(
        plan(vec![
            (100, Fault::Kill { node: "n".into(), restart_after_ms: 1_000 }),
            (200, Fault::PowerLoss { node: "n".into(), restart_after_ms: 100, image: None }),
        ]),
        true,
    );
    assert_eq!(boots, 2, "the first crash's restart is superseded by the second's");
    assert_eq!(counts.get("node.restart"), Some(&1));
}

#[test]
fn disk_fault_windows_close_and_plays_are_deterministic() {
    let faulty = plan(vec![
        (
            100,
            Fault::DiskErrors {
                node: "n".into(),
                read_eio_prob: 0.5,
                write_eio_prob: 0.5,
                sync_eio_prob: 0.5,
                duration_ms: 200,
            },
        ),
        (150, Fault::DiskFull { node: "n".into(), duration_ms: 100 }),
        (400, Fault::ClockJump { node: "n".into(), delta_ms: -5_000 }),
    ]);
    let faults_after = sim::runner::block_on(3, {
        let faulty = faulty.clone();
        move || async move {
            let trace = Trace::new(false);
            let world = World::new(3, trace, faulty, WorldConfig::default());
            world.add_node("n", || async {});
            world.play_faults().await;
            let disk = world.disk("n");
            disk.crash(CrashKind::ProcessCrash);
            (disk.faults(), world.clock("n").offset_ms())
        }
    });
    assert_eq!(faults_after, (DiskFaults::default(), -5_000));
    let (_, _, h1) = play(faulty.clone(), true);
    let (_, _, h2) = play(faulty, true);
    assert_eq!(h1, h2);
}

#[test]
fn a_frozen_clock_repeats_its_reading_then_runs_on() {
    use engine::io::Clock;
    let frozen = plan(vec![(100, Fault::ClockFreeze { node: "n".into(), duration_ms: 300 })]);
    let readings = sim::runner::block_on(5, move || async move {
        let trace = Trace::new(false);
        let world = World::new(5, trace, frozen, WorldConfig::default());
        world.add_node("n", || async {});
        let clock = world.clock("n");
        let w = world.clone();
        let play = tokio::spawn(async move { w.play_faults().await });
        let mut readings = Vec::new();
        for _ in 0..5 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            readings.push(clock.now_ms());
        }
        let _ = play.await;
        readings
    });
    // At 200 and 300 ms the clock stands at its 100 ms reading (the freeze's own instants, 100
    // and 400 ms, race with the reads); at 500 ms it has thawed and reads the running time.
    assert_eq!(readings[1], readings[0], "{readings:?}");
    assert_eq!(readings[2], readings[0], "{readings:?}");
    assert!(readings[4] >= readings[0] + 390, "{readings:?}");
}
