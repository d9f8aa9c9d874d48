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

/// A log of entry terms, for Raft's rules.
struct Terms(Vec<u64>);

impl engine::dledger::raft::LogView for Terms {
    fn last(&self) -> Option<(u64, u64)> {
        self.0.last().map(|&t| (self.0.len() as u64 - 1, t))
    }
    fn term_of(&self, index: u64) -> Option<u64> {
        self.0.get(index as usize).copied()
    }
}

fn raft(id: u32, term: u64, bugs: &[Bug]) -> engine::dledger::raft::Raft {
    use engine::dledger::raft::{Raft, RaftBugs};
    Raft::new(id, [1, 2, 3].into(), term, None, RaftBugs::from_bugs(&BugSet::of(bugs)))
}

#[tokio::test]
async fn dledger_double_vote() {
    let log = Terms(vec![1]);
    for (bugs, second) in [(&[][..], false), (&[Bug::DledgerDoubleVote][..], true)] {
        let mut voter = raft(2, 1, bugs);
        let (a, c) = (raft(1, 1, &[]).start_election(&log), raft(3, 1, &[]).start_election(&log));
        assert!(voter.on_vote_request(&a, &log).granted);
        assert_eq!(voter.on_vote_request(&c, &log).granted, second);
    }
}

#[tokio::test]
async fn dledger_commit_older_term_by_count() {
    use engine::dledger::raft::{AppendReply, VoteReply};
    for (bugs, commit) in [(&[][..], None), (&[Bug::DledgerCommitOlderTermByCount][..], Some(1))] {
        // Leader of term 4 whose last entry (index 1) is of term 2, now held by a majority.
        let log = Terms(vec![1, 2]);
        let mut leader = raft(1, 3, bugs);
        leader.start_election(&log);
        assert!(leader.on_vote_reply(&VoteReply { term: 4, from: 2, granted: true }, &log));
        let reply = AppendReply { term: 4, from: 2, matched: Some(1), success: true, next_hint: 0 };
        assert_eq!(leader.on_append_reply(&reply, &log), commit);
    }
}

#[tokio::test]
async fn dledger_commit_before_durable() {
    use engine::dledger::{DLedgerConfig, DLedgerPaths, EntryLog};
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn engine::io::Storage> = Arc::new(engine::io::real::RealStorage::new());
    let paths = DLedgerPaths::new(dir.path(), "n0");
    let dirs = Arc::new(engine::mapped_file_queue::DirSyncs::new(false));
    let (mut log, _) =
        EntryLog::open(storage, paths, DLedgerConfig::small(), engine::io::Holds::new(), dirs).await.unwrap();
    for _ in 0..3 {
        log.append(1, 10, |_, out| out.extend([7u8; 10])).unwrap();
    }
    log.set_committed(2);
    assert_eq!(log.checkpoint(false).1.committed_index, None, "nothing is durable yet");
    assert_eq!(log.checkpoint(true).1.committed_index, Some(2));
}

#[test]
fn every_bug_has_a_test_here() {
    // DLedger's bugs that need a replica's files or a group, and tiered storage's, are tested
    // beside them.
    let src = [
        include_str!("bug_switches.rs"),
        include_str!("dledger_store_recovery.rs"),
        include_str!("dledger_group.rs"),
        include_str!("tiered.rs"),
    ]
    .concat();
    for b in Bug::ALL {
        let name = b.id().replace('-', "_");
        assert!(src.contains(&format!("async fn {name}()")), "no test for {b}");
    }
}
