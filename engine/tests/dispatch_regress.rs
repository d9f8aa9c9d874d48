//! Regression: the reput service spun for ever (never yielding) when the file holding the
//! reput offset had nothing committed there while a later file had (transient pool: a full
//! file still in its write buffer, the next one written directly because the pool was empty).
//! Found by the broker scenario (seed 13 of the first sweep hung the simulation).

mod common;

use std::time::Duration;

use common::*;
use engine::FlushMode;

#[tokio::test]
async fn reput_waits_for_an_uncommitted_earlier_file_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.flush_mode = FlushMode::TransientPool;
    cfg.transient_pool_buffers = 1;
    // Nothing is committed during the test.
    cfg.commit_interval_commit_log_ms = 1_000_000;
    cfg.commit_commit_log_thorough_interval_ms = 1_000_000;
    cfg.commit_commit_log_least_pages = 1_000;
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    let body = vec![7u8; 1000];
    while store.max_phy_offset() < cfg.commit_log_file_size_bytes + 5_000 {
        store.put("T", 0, &body, None, &[]).await.unwrap();
    }
    // The first file sits in the only pooled buffer; the second is written directly.
    assert_ne!(peek_cl(&cfg, cfg.commit_log_file_size_bytes, 4), [0u8; 4], "second file written directly");
    assert_eq!(store.committed_offset(), 0, "the uncommitted first file bounds the committed offset");
    // Before the fix the reput service never yielded again and this sleep never returned.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.reput_offset(), 0, "nothing of the uncommitted first file is dispatched");
}

/// Regression (broker seed 191089): a bit flip in a record dispatch had not reached stopped
/// dispatch there for good, and a clean shutdown then waited the whole
/// `shutdown_dispatch_wait_ms` for a catch-up that could not come. It now gives up at once,
/// keeps the abort file (dispatch is behind), and the next recovery cuts the log there.
#[tokio::test]
async fn shutdown_does_not_wait_for_dispatch_stopped_at_a_corrupt_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.shutdown_dispatch_wait_ms = 600_000;
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    // Not started: nothing is dispatched yet.
    let puts = put_n(&store, &clock, 20, 1, 200, 10).await;
    let bad = puts[10].1.phy_offset;
    poke_cl(&cfg, bad + 4, &[0xDE, 0xAD, 0xBE, 0xEF]); // the magic code
    let end = store.max_phy_offset();
    store.start().unwrap();
    let t0 = std::time::Instant::now();
    while store.dispatch_behind_bytes() != end - bad {
        assert!(t0.elapsed() < Duration::from_secs(10), "dispatch never reached the corrupt record");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let shutdown = tokio::time::timeout(Duration::from_secs(30), store.shutdown()).await;
    assert!(shutdown.is_ok(), "shutdown waited for a dispatch that cannot move");
    assert!(abort_exists(&cfg), "dispatch is behind: the abort file stays");
    drop(store);
    let store = open(&cfg, &storage, &clock).await;
    assert_eq!(store.last_recovery().commit_log_end, bad, "the log is cut at the corrupt record");
    assert_eq!(store.max_offset("T", 0), 10);
    store.shutdown().await.unwrap();
}
