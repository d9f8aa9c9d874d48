//! Engine smoke test: the broker scenario with a fixed plan of one kill + restart (and one
//! with a power loss) passes every checker, recovery takes the abnormal path after the crash,
//! and messages acknowledged before the crash are readable after it. Plus regressions for
//! engine bugs the scenario found.

use std::collections::BTreeSet;
use std::sync::Arc;

use engine::{FlushMode, Store, StoreConfig};
use scenarios::case::{Case, Expectation, ExpectedOutcome, FORMAT_VERSION};
use sim::{Fault, FaultPlan, SimDisk, TimedFault, Trace};

fn case(fault: Fault, mode: &str) -> Case {
    let mut config = toml::Table::new();
    config.insert("flush_mode".into(), toml::Value::String(mode.into()));
    Case {
        format_version: FORMAT_VERSION,
        scenario: "broker".into(),
        seed: 7,
        note: String::new(),
        bugs: BTreeSet::new(),
        config,
        expect: Expectation { outcome: ExpectedOutcome::Pass, checker: None },
        plan: FaultPlan { events: vec![TimedFault { at_ms: 4_000, fault }], ..FaultPlan::default() },
    }
}

/// The `broker.recovered` trace details, in order.
fn recoveries(case: &Case) -> Vec<String> {
    let outcome = scenarios::run_case(case, true).expect("known scenario");
    assert!(outcome.passed(), "violations: {:#?}", outcome.violations);
    outcome.records.iter().filter(|r| r.kind == "broker.recovered").map(|r| r.detail.clone()).collect()
}

fn field(detail: &str, key: &str) -> u64 {
    let v = detail.split(' ').find_map(|kv| kv.strip_prefix(&format!("{key}="))).expect(key);
    v.parse().expect("number")
}

fn assert_crash_recovered(recs: &[String]) {
    // Boot, boot after the crash, final boot after a clean shutdown.
    assert_eq!(recs.len(), 3, "{recs:#?}");
    assert!(recs[0].contains("kind=Normal"), "{}", recs[0]);
    assert!(recs[1].contains("kind=Abnormal"), "after the crash: {}", recs[1]);
    assert!(field(&recs[1], "acked_present") > 50, "messages acked before the crash survive: {}", recs[1]);
    assert!(recs[2].contains("kind=Normal"), "after the final clean shutdown: {}", recs[2]);
}

#[test]
fn one_kill_and_restart_recovers_abnormally_and_keeps_acked_messages() {
    for mode in ["async", "sync", "transient-pool"] {
        let kill = Fault::Kill { node: "broker".into(), restart_after_ms: 500 };
        assert_crash_recovered(&recoveries(&case(kill, mode)));
    }
}

#[test]
fn one_power_loss_keeps_synced_messages() {
    let loss = Fault::PowerLoss { node: "broker".into(), restart_after_ms: 500, image: None };
    assert_crash_recovered(&recoveries(&case(loss, "sync")));
}

/// Regression: after a process crash, recovery said "flushed" for page-cache data of the dead
/// process that was never synced; a power loss then lost messages `flushed_offset` had
/// reported durable.
#[test]
fn recovered_region_is_durable_before_it_is_called_flushed() {
    let outcome = sim::run(sim::RunOptions::new(3), |trace: Arc<Trace>| async move {
        let config = sim::DiskConfig { power_loss: sim::PowerLossModel::LOSE_ALL, ..sim::DiskConfig::default() };
        let disk = SimDisk::new("b", config, 3, trace);
        let mut cfg = StoreConfig::small("/store");
        cfg.flush_mode = FlushMode::Async;
        let clock: Arc<dyn engine::io::Clock> = sim::NodeClock::new("b", 0, Trace::new(false));
        let store = Store::open(cfg.clone(), disk.storage(), clock.clone()).await.expect("open");
        for i in 0..50u32 {
            store.put("T", 0, &i.to_be_bytes(), None, &[]).await.expect("put");
        }
        drop(store);
        disk.crash(sim::CrashKind::ProcessCrash);
        let store = Store::open(cfg.clone(), disk.storage(), clock.clone()).await.expect("reopen");
        let claimed = store.flushed_offset();
        drop(store);
        disk.crash(sim::CrashKind::PowerLoss);
        let store = Store::open(cfg, disk.storage(), clock).await.expect("reopen after power loss");
        let mut v = Vec::new();
        if claimed == 0 || store.max_phy_offset() < claimed {
            v.push(sim::Violation {
                checker: "durability".into(),
                message: format!("flushed_offset said {claimed}, {} survived", store.max_phy_offset()),
                at_ms: 0,
            });
        }
        v
    });
    assert!(outcome.passed(), "{:?}", outcome.violations);
}
