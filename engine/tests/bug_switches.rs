//! Every catalogued bug: the switched path behaves differently from the fixed one.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use engine::checkpoint::CheckpointData;
use engine::{Bug, BugSet, FlushMode, PutResult, Store, StoreConfig, StoreError};

struct Run {
    _dir: tempfile::TempDir,
    cfg: StoreConfig,
    storage: Arc<TestStorage>,
    clock: Arc<ManualClock>,
    puts: Vec<(u32, PutResult)>,
    end: u64,
}

/// `n` messages, then a clean shutdown (`crash == false`) or a flush and a crash.
async fn run(n: usize, body: usize, crash: bool, tweak: impl Fn(&mut StoreConfig)) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    tweak(&mut cfg);
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    let puts = put_n(&store, &clock, n, 2, body, 100).await;
    let end = store.max_phy_offset();
    if crash {
        while store.dispatch_behind_bytes() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        store.flush_all().await.unwrap();
        drop(store);
    } else {
        store.shutdown().await.unwrap();
    }
    Run { _dir: dir, cfg, storage, clock, puts, end }
}

async fn reopen(r: &Run, bugs: &[Bug]) -> Store {
    let mut cfg = r.cfg.clone();
    cfg.bugs = BugSet::of(bugs);
    Store::open(cfg, r.storage.clone(), r.clock.clone()).await.unwrap()
}

/// Flips a body byte of message `k` and reopens with `bugs`.
async fn flipped(k: usize, bugs: &[Bug]) -> (Run, Store) {
    let r = run(200, 500, false, |_| {}).await;
    poke_cl(&r.cfg, r.puts[k].1.phy_offset + 100, &[0xAB]);
    let s = reopen(&r, bugs).await;
    (r, s)
}

#[tokio::test]
async fn skip_half_written_record() {
    let (r, fixed) = flipped(150, &[]).await;
    let bad = r.puts[150].1.phy_offset;
    assert_eq!(fixed.last_recovery().commit_log_end, bad);
    let (r, buggy) = flipped(150, &[Bug::SkipHalfWrittenRecord]).await;
    assert_eq!(buggy.last_recovery().commit_log_end, r.end, "skipped instead of cut");
    assert_eq!(buggy.last_recovery().skipped_records, vec![bad]);
}

#[tokio::test]
async fn no_crc_on_recovery() {
    let (r, buggy) = flipped(150, &[Bug::NoCrcOnRecovery]).await;
    assert_eq!(buggy.last_recovery().commit_log_end, r.end, "a corrupt body is accepted");
    assert_eq!(buggy.last_recovery().stopped_at.unwrap().0, r.end, "stops only at the end of the data");
}

#[tokio::test]
async fn no_zero_on_truncate() {
    let (r, fixed) = flipped(150, &[]).await;
    drop(fixed);
    let cut = r.puts[150].1.phy_offset;
    assert!(peek_cl(&r.cfg, cut, 256).iter().all(|&b| b == 0));
    let (r, buggy) = flipped(150, &[Bug::NoZeroOnTruncate]).await;
    drop(buggy);
    assert!(peek_cl(&r.cfg, cut, 256).iter().any(|&b| b != 0), "stale records stay after the cut");
}

#[tokio::test]
async fn cq_truncate_off_by_one() {
    let (_, fixed) = flipped(150, &[]).await;
    assert_eq!(fixed.max_offset("T", 0), 75);
    assert_eq!(fixed.max_offset("T", 1), 75);
    let (_, buggy) = flipped(150, &[Bug::CqTruncateOffByOne]).await;
    assert_eq!(buggy.max_offset("T", 0), 76, "one unit past the log end stays");
    assert!(buggy.get("T", 0, 75, 1).is_err(), "and it points at nothing valid");
}

#[tokio::test]
async fn recovery_check_flag_miswired() {
    let r = run(200, 500, true, |_| {}).await;
    let fixed = reopen(&r, &[]).await;
    assert_eq!(fixed.max_offset("T", 0), 100);
    drop(fixed);
    let r = run(200, 500, true, |_| {}).await;
    let buggy = reopen(&r, &[Bug::RecoveryCheckFlagMiswired]).await;
    let rep = buggy.last_recovery();
    assert_eq!(rep.commit_log_end, r.end, "the log itself is intact");
    assert_eq!(rep.cq_truncated_to, Some(rep.scan_start_offset));
    assert!(buggy.max_offset("T", 0) < 100, "queues cut to the scan start and never rebuilt");
    // New messages reuse queue offsets consumers have already seen.
    let p = buggy.put("T", 0, b"x", None, &[]).await.unwrap();
    assert!(p.queue_offset < 100);
}

#[tokio::test]
async fn destroy_current_index() {
    // 250 small messages: index files of 127 messages, commit-log files of ~190.
    let r = run(250, 200, true, |_| {}).await;
    let fixed = reopen(&r, &[]).await;
    assert!(!fixed.last_recovery().index_files_destroyed.is_empty());
    assert_eq!(fixed.query_by_key("T", "k150", 0, i64::MAX, 5).unwrap().len(), 1);
    drop(fixed);
    let r = run(250, 200, true, |_| {}).await;
    let buggy = reopen(&r, &[Bug::DestroyCurrentIndex]).await;
    assert!(buggy.last_recovery().scan_start_offset > 0);
    assert!(buggy.query_by_key("T", "k150", 0, i64::MAX, 5).unwrap().is_empty(), "key lost");
    assert_eq!(buggy.query_by_key("T", "k249", 0, i64::MAX, 5).unwrap().len(), 1);
}

async fn dispatched_checkpoint(bugs: &[Bug]) -> (CheckpointData, i64) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.flush_interval_cq_ms = 1_000_000;
    cfg.flush_cq_thorough_interval_ms = 1_000_000;
    cfg.bugs = BugSet::of(bugs);
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    let puts = put_n(&store, &clock, 10, 1, 100, 10).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.dispatch_behind_bytes(), 0);
    (store.checkpoint(), puts.last().unwrap().1.store_timestamp_ms)
}

#[tokio::test]
async fn checkpoint_ahead_of_cq() {
    let (fixed, _) = dispatched_checkpoint(&[]).await;
    assert_eq!(fixed.logics_msg_timestamp_ms, 0, "no CQ flush yet: logics timestamp stays");
    let (buggy, last) = dispatched_checkpoint(&[Bug::CheckpointAheadOfCq]).await;
    assert_eq!(buggy.logics_msg_timestamp_ms, last, "follows dispatch, ahead of durable CQ data");
}

async fn shutdown_behind(bugs: &[Bug]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.shutdown_dispatch_wait_ms = 10;
    cfg.bugs = BugSet::of(bugs);
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    // No services: dispatch never runs.
    put_n(&store, &clock, 10, 1, 100, 10).await;
    assert!(store.dispatch_behind_bytes() > 0);
    store.shutdown().await.unwrap();
    abort_exists(&cfg)
}

#[tokio::test]
async fn abort_deleted_while_behind() {
    assert!(shutdown_behind(&[]).await, "fixed: abort kept while dispatch is behind");
    assert!(!shutdown_behind(&[Bug::AbortDeletedWhileBehind]).await);
}

async fn sync_put_with(bugs: &[Bug], fail_all: bool) -> Result<PutResult, StoreError> {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.flush_mode = FlushMode::Sync;
    // The failure injected below is for the group commit's sync, not a spare file's.
    cfg.preallocate_commit_log = false;
    cfg.bugs = BugSet::of(bugs);
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    if fail_all {
        storage.c.fail_syncs.store(true, Ordering::SeqCst);
    } else {
        storage.c.fail_next_sync.store(true, Ordering::SeqCst);
    }
    store.put("T", 0, b"m", None, &[]).await
}

#[tokio::test]
async fn ack_before_sync() {
    assert!(sync_put_with(&[], true).await.is_err());
    assert!(sync_put_with(&[Bug::AckBeforeSync], true).await.is_ok(), "acked although no sync succeeded");
}

#[tokio::test]
async fn retry_failed_sync() {
    assert!(matches!(sync_put_with(&[], false).await, Err(StoreError::NotWriteable { .. })));
    assert!(sync_put_with(&[Bug::RetryFailedSync], false).await.is_ok(), "a later sync 'succeeds'");
}

async fn dir_syncs(bugs: &[Bug]) -> u64 {
    let r = run(10, 100, false, |c| c.bugs = BugSet::of(bugs)).await;
    r.storage.c.dir_syncs.load(Ordering::SeqCst)
}

#[tokio::test]
async fn no_dir_sync() {
    assert!(dir_syncs(&[]).await > 0);
    assert_eq!(dir_syncs(&[Bug::NoDirSync]).await, 0);
}

#[test]
fn every_bug_has_a_test_here() {
    let src = include_str!("bug_switches.rs");
    for b in Bug::ALL {
        let name = b.id().replace('-', "_");
        assert!(src.contains(&format!("async fn {name}()")), "no test for {b}");
    }
}
