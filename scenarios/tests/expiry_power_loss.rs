//! Expiry on the simulated disk: a power loss right after `Store::delete_expired` (its
//! directory removals not synced, or synced) keeps a prefix of them; the store recovers from
//! whatever the disk kept, reads the messages still in the log, keeps every queue's end and
//! hands out the next queue offsets, and a later pass finishes the deletion.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::io::Clock;
use engine::{PutResult, Store, StoreConfig};
use sim::{CrashKind, DiskConfig, SimDisk, Trace};

#[derive(Debug)]
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

const T0_MS: i64 = 1_700_000_000_000;
const QUEUES: u32 = 3;

/// Each queue's messages still in a log that starts at `min_phy`, read from offset 0, match
/// the puts at or above it; the queue's end is every put.
fn check_queues(store: &Store, puts: &[(u32, PutResult)], what: &str) {
    let min_phy = store.min_phy_offset();
    for q in 0..QUEUES {
        let all: Vec<PutResult> = puts.iter().filter(|(pq, _)| *pq == q).map(|(_, r)| *r).collect();
        let live: Vec<(u64, u64)> =
            all.iter().filter(|r| r.phy_offset >= min_phy).map(|r| (r.queue_offset, r.phy_offset)).collect();
        assert_eq!(store.max_offset("T", q), all.len() as u64, "{what}: queue {q}'s end");
        assert_eq!(store.min_offset("T", q), live.first().map_or(all.len() as u64, |l| l.0), "{what}: queue {q}'s min");
        let got = store.get("T", q, 0, 10_000).unwrap_or_else(|e| panic!("{what}: get {q}: {e}"));
        let got: Vec<(u64, u64)> = got.iter().map(|m| (m.queue_offset, m.phy_offset)).collect();
        assert_eq!(got, live, "{what}: queue {q}'s messages");
    }
}

/// Returns where the log started after the power loss.
async fn expire_then_lose_power(seed: u64) -> u64 {
    let disk = SimDisk::new("b", DiskConfig::default(), seed, Trace::new(false));
    let clock = Arc::new(ManualClock(AtomicI64::new(T0_MS)));
    let expiring = StoreConfig { file_retention_ms: Some(1_000), ..StoreConfig::small("/store") };
    let plain = StoreConfig { file_retention_ms: None, ..expiring.clone() };

    let store = Store::open(plain, disk.storage(), clock.clone()).await.expect("open");
    store.start().unwrap();
    let mut puts = Vec::new();
    for i in 0..300u32 {
        clock.0.fetch_add(10, Ordering::SeqCst);
        let r = store.put("T", i % QUEUES, &[i as u8; 700], None, &[]).await.expect("put");
        puts.push((i % QUEUES, r));
    }
    while store.dispatch_behind_bytes() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.shutdown().await.expect("shutdown");
    drop(store);

    let store = Store::open(expiring.clone(), disk.storage(), clock.clone()).await.expect("reopen");
    clock.0.store(T0_MS + 1_000_000, Ordering::SeqCst);
    let r = store.delete_expired().expect("expire");
    assert!(r.commit_log_files_deleted >= 3, "{r:?}");
    if seed % 2 == 1 {
        store.flush_all().await.expect("flush syncs the removals");
    }
    drop(store);
    disk.crash(CrashKind::PowerLoss);

    let store = Store::open(expiring, disk.storage(), clock.clone()).await.expect("open after the power loss");
    let size = store.config().commit_log_file_size_bytes;
    assert_eq!(store.min_phy_offset() % size, 0);
    assert!(store.min_phy_offset() <= r.new_min_phy_offset);
    if seed % 2 == 1 {
        assert_eq!(store.min_phy_offset(), r.new_min_phy_offset, "synced removals stay removed");
    }
    let kept_min_phy = store.min_phy_offset();
    check_queues(&store, &puts, "after the power loss");
    store.start().unwrap();
    let next = store.put("T", 0, b"next", None, &[]).await.expect("put");
    assert_eq!(next.queue_offset, 100, "queue offsets are never reused");
    puts.push((0, next));
    while store.dispatch_behind_bytes() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.flush_all().await.expect("flush");
    store.delete_expired().expect("expire again");
    assert_eq!(store.min_phy_offset(), r.new_min_phy_offset, "the second pass finishes the deletion");
    check_queues(&store, &puts, "after the second pass");
    store.shutdown().await.expect("shutdown");
    kept_min_phy
}

#[test]
fn a_power_loss_after_expiry_keeps_a_prefix_removal() {
    let starts = Arc::new(Mutex::new(BTreeSet::new()));
    for seed in 0..48 {
        let starts = starts.clone();
        let outcome = sim::run(sim::RunOptions::new(seed), move |_trace: Arc<Trace>| async move {
            let start = expire_then_lose_power(seed).await;
            if seed % 2 == 0 {
                starts.lock().unwrap().insert(start);
            }
            Vec::new()
        });
        assert!(outcome.passed(), "seed {seed}: {:?}", outcome.violations);
    }
    let starts = starts.lock().unwrap();
    assert!(starts.len() >= 3, "power losses kept different prefixes of the unsynced removals: {starts:?}");
}
