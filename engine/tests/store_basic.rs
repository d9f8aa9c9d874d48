//! Put/get/query, restarts (clean → normal path, crash → abnormal path), flush modes.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use engine::recovery::RecoveryKind;
use engine::{FlushMode, Store, StoreError};

#[test]
#[cfg_attr(not(madsim), ignore = "guards the simulation build; the real build runs these tests too")]
fn simulation_build_is_on() {
    assert!(cfg!(madsim), "engine tests run in the simulation build");
}

#[tokio::test]
async fn put_get_query_and_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    let puts = put_n(&store, &clock, 300, 3, 700, 10).await;
    assert!(store.max_phy_offset() > 3 * cfg.commit_log_file_size_bytes, "several files rolled");
    store.flush_all().await.unwrap();
    wait_dispatched(&store).await;
    assert_queues(&store, &puts, u64::MAX);
    let found = store.query_by_key("T", "k7", 0, i64::MAX, 10).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].phy_offset, puts[7].1.phy_offset);
    assert_eq!(found[0].keys, vec!["k7".to_string()]);
    let uniq = found[0].uniq_key.clone().unwrap();
    assert_eq!(store.query_by_key("T", &uniq, 0, i64::MAX, 10).unwrap().len(), 1);
    let end = store.max_phy_offset();
    store.shutdown().await.unwrap();
    assert!(!abort_exists(&cfg), "clean shutdown removes the abort file");
    drop(store);

    let store = open(&cfg, &storage, &clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.kind, RecoveryKind::Normal);
    assert_eq!(rep.commit_log_end, end);
    assert_eq!(store.max_phy_offset(), end);
    assert!(rep.cq_units_removed.is_empty());
    assert_queues(&store, &puts, u64::MAX);
    // Keys of old messages survive a clean restart.
    assert_eq!(store.query_by_key("T", "k0", 0, i64::MAX, 10).unwrap().len(), 1);
    store.start().unwrap();
    let r = store.put("T", 0, b"next", None, &[]).await.unwrap();
    assert_eq!(r.queue_offset, 100, "queue offsets continue after restart");
    assert!(r.store_timestamp_ms >= puts.last().unwrap().1.store_timestamp_ms);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn crash_takes_the_abnormal_path_and_loses_nothing_in_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    let puts = put_n(&store, &clock, 200, 2, 500, 50).await;
    let end = store.max_phy_offset();
    drop(store); // crash: no shutdown
    assert!(abort_exists(&cfg));
    let store = open(&cfg, &storage, &clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.kind, RecoveryKind::Abnormal);
    assert_eq!(rep.commit_log_end, end, "a process crash keeps the page cache");
    assert_queues(&store, &puts, end);
    assert_eq!(store.query_by_key("T", "k199", 0, i64::MAX, 10).unwrap().len(), 1);
    store.start().unwrap();
    store.shutdown().await.unwrap();
    let store = open(&cfg, &storage, &clock).await;
    assert_eq!(store.last_recovery().kind, RecoveryKind::Normal);
}

#[tokio::test]
async fn clock_going_backwards_keeps_store_timestamps_monotone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    let a = store.put("T", 0, b"a", None, &[]).await.unwrap();
    clock.advance(-60_000);
    let b = store.put("T", 0, b"b", None, &[]).await.unwrap();
    assert_eq!(b.store_timestamp_ms, a.store_timestamp_ms);
    drop(store);
    let store = open(&cfg, &storage, &clock).await;
    let c = store.put("T", 0, b"c", None, &[]).await.unwrap();
    assert!(c.store_timestamp_ms >= a.store_timestamp_ms, "the floor survives a restart");
}

#[tokio::test]
async fn second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let storage = TestStorage::new();
    let clock = ManualClock::new(1);
    let store = open(&cfg, &storage, &clock).await;
    let err = Store::open(cfg.clone(), storage.clone(), clock.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyLocked { .. }), "{err:?}");
    store.shutdown().await.unwrap();
    drop(store);
    Store::open(cfg.clone(), storage.clone(), clock.clone()).await.expect("lock released by shutdown");
}

#[tokio::test]
async fn sync_mode_group_commit_shares_syncs_and_acks_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.flush_mode = FlushMode::Sync;
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = std::sync::Arc::new(open(&cfg, &storage, &clock).await);
    store.start().unwrap();
    let before = storage.c.syncs.load(Ordering::SeqCst);
    let writes_before = storage.c.commit_log_writes.load(Ordering::SeqCst);
    let mut handles = Vec::new();
    for p in 0..64u32 {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            let mut offs = Vec::new();
            for i in 0..10 {
                let r = s.put("T", p % 4, format!("p{p}-{i}").as_bytes(), None, &[]).await.unwrap();
                offs.push(r.phy_offset + r.size_bytes as u64);
            }
            offs
        }));
    }
    for h in handles {
        for end in h.await.unwrap() {
            assert!(store.flushed_offset() >= end, "acked only once durable");
        }
    }
    let syncs = storage.c.syncs.load(Ordering::SeqCst) - before;
    assert!(syncs < 640 / 4, "64 producers share syncs: {syncs} syncs for 640 puts");
    let writes = storage.c.commit_log_writes.load(Ordering::SeqCst) - writes_before;
    assert!(writes < 640 / 4, "a group's appends are written at once: {writes} writes for 640 puts");
    let stats = store.stats();
    assert_eq!(stats.group_commit_acks, 640, "every put acked by a group-commit sync");
    assert!(stats.group_commit_syncs >= 1 && stats.group_commit_syncs <= syncs, "{stats:?}, {syncs} syncs");
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn failed_sync_is_fatal_and_never_acked() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.flush_mode = FlushMode::Sync;
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    store.put("T", 0, b"ok", None, &[]).await.unwrap();
    storage.c.fail_next_sync.store(true, Ordering::SeqCst);
    let err = store.put("T", 0, b"lost", None, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::NotWriteable { .. }), "{err:?}");
    assert!(!store.is_writeable());
    let err = store.put("T", 0, b"after", None, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::NotWriteable { .. }));
    let _ = store.shutdown().await;
    assert!(abort_exists(&cfg), "an unwriteable store does not shut down clean");
}

/// Under group commit the appends wait in a batch until the group's write: a failed write
/// fails the group (nobody is acked), and the batch is written by a later commit even if no
/// producer waits for it any more, so readers and dispatch get to it.
#[tokio::test]
async fn sync_mode_failed_group_write_is_retried_and_never_acked() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.flush_mode = FlushMode::Sync;
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    let first = store.put("T", 0, b"first", None, &[]).await.unwrap();
    storage.c.fail_next_commit_log_write.store(true, Ordering::SeqCst);
    let err = store.put("T", 0, b"unlucky", None, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "the group's failed write fails its producers: {err:?}");
    assert!(store.is_writeable(), "a failed write is not a failed sync: nothing was dropped");
    for _ in 0..200 {
        if store.committed_offset() == store.max_phy_offset() && store.get("T", 0, 0, 8).unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(store.committed_offset(), store.max_phy_offset(), "the batch was written by a later commit");
    let got = store.get("T", 0, 0, 8).unwrap();
    assert_eq!(got.iter().map(|m| m.body.as_slice()).collect::<Vec<_>>(), [&b"first"[..], b"unlucky"]);
    let third = store.put("T", 0, b"third", None, &[]).await.unwrap();
    assert_eq!((first.queue_offset, third.queue_offset), (0, 2));
    store.shutdown().await.unwrap();
}

/// A producer is answered by its deadline even while the sync it waits for is still running
/// (the group-commit service expires deadlines during the sync), and is not acked; the
/// message may still become durable (RocketMQ's FLUSH_DISK_TIMEOUT).
#[tokio::test]
async fn sync_mode_times_out_during_a_slow_sync_without_acking() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.flush_mode = FlushMode::Sync;
    cfg.sync_flush_timeout_ms = 50;
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    let err = store.put("T", 0, b"before start", None, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::FlushTimeout { .. }), "no service runs to make it durable: {err:?}");
    store.start().unwrap();
    storage.c.slow_sync_ms.store(1_000, Ordering::SeqCst);
    let t0 = tokio::time::Instant::now();
    let err = store.put("T", 0, b"slow", None, &[]).await.unwrap_err();
    let waited_ms = t0.elapsed().as_millis();
    assert!(matches!(err, StoreError::FlushTimeout { timeout_ms: 50, .. }), "{err:?}");
    assert!((50..200).contains(&waited_ms), "answered by its deadline, not after the sync: {waited_ms} ms");
    storage.c.slow_sync_ms.store(0, Ordering::SeqCst);
    // The slow sync is still under way: the next group waits for it.
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let r = store.put("T", 0, b"fast", None, &[]).await.unwrap();
    assert_eq!(r.queue_offset, 2);
    assert!(store.flushed_offset() >= r.phy_offset + u64::from(r.size_bytes));
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn transient_pool_loses_uncommitted_on_crash_and_returns_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.flush_mode = FlushMode::TransientPool;
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    // No services: nothing is committed.
    store.put("T", 0, b"only in the write buffer", None, &[]).await.unwrap();
    assert_eq!(store.committed_offset(), 0, "the first file, a spare, is written through a pooled buffer");
    assert_eq!(store.holds().count(engine::io::HoldKind::PooledBuffer), 1);
    drop(store);
    let store = open(&cfg, &storage, &clock).await;
    assert_eq!(store.max_phy_offset(), 0, "uncommitted bytes die with the process");
    store.start().unwrap();
    let puts = put_n(&store, &clock, 150, 2, 600, 5).await;
    store.shutdown().await.unwrap();
    assert_eq!(store.holds().count(engine::io::HoldKind::PooledBuffer), 0, "buffers returned at shutdown");
    assert!(store.holds().outstanding().is_empty());
    drop(store);
    let store = open(&cfg, &storage, &clock).await;
    assert_eq!(store.last_recovery().kind, RecoveryKind::Normal);
    assert_queues(&store, &puts, u64::MAX);
}

#[tokio::test]
async fn async_flush_service_makes_data_durable_and_advances_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    let puts = put_n(&store, &clock, 50, 1, 1000, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await;
    assert_eq!(store.flushed_offset(), store.max_phy_offset(), "thorough flush ran");
    let ck = store.checkpoint();
    assert_eq!(ck.physic_msg_timestamp_ms, puts.last().unwrap().1.store_timestamp_ms);
    assert_eq!(ck.logics_msg_timestamp_ms, puts.last().unwrap().1.store_timestamp_ms, "CQ thorough flush ran");
    assert!(store.holds().outstanding().is_empty(), "no holds when idle");
    store.shutdown().await.unwrap();
}

/// Dispatch reads the commit log in pieces (256 KiB): records straddling a piece's end, and a
/// record larger than a whole piece, are dispatched whole and in order.
#[tokio::test]
async fn dispatch_reads_records_across_piece_ends_and_larger_than_a_piece() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.commit_log_file_size_bytes = 4 << 20;
    cfg.max_message_size_bytes = 1 << 20;
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    // Not started: everything is dispatched by the one `start` below, in pieces.
    let sizes: Vec<usize> = (0..400).map(|i| if i == 150 { 600 * 1024 } else { 1_500 + i * 7 }).collect();
    let mut puts = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        clock.advance(1);
        let body = vec![(i % 251) as u8; size];
        let key = format!("k{i}");
        puts.push(store.put("T", i as u32 % 3, &body, None, &[&key]).await.unwrap());
    }
    assert!(store.max_phy_offset() > 3 * 256 * 1024, "the log spans several pieces");
    assert_eq!(store.reput_offset(), 0);
    store.start().unwrap();
    wait_dispatched(&store).await;
    for q in 0..3u32 {
        let got = store.get("T", q, 0, 1_000).unwrap();
        let want: Vec<(usize, &engine::PutResult)> =
            puts.iter().enumerate().filter(|(i, _)| *i as u32 % 3 == q).collect();
        assert_eq!(got.len(), want.len(), "queue {q}");
        for (m, (i, r)) in got.iter().zip(want) {
            assert_eq!((m.phy_offset, m.body.len()), (r.phy_offset, sizes[i]), "message {i}");
            assert_eq!(m.keys, vec![format!("k{i}")]);
        }
    }
    let big = store.query_by_key("T", "k150", 0, i64::MAX, 4).unwrap();
    assert_eq!(big.len(), 1);
    assert_eq!(big[0].body.len(), 600 * 1024);
    store.shutdown().await.unwrap();
}

/// A property the decoder would reject is refused before anything is written.
#[tokio::test]
async fn malformed_extra_properties_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    store.put("T", 0, b"first", None, &[]).await.unwrap();
    let end = store.max_phy_offset();
    for (name, value) in [("", "v"), ("a\u{1}b", "v"), ("k", "v\u{2}w"), ("k", "v\u{1}w")] {
        let mut req = engine::commit_log::PutRequest::new("T", 0, b"x");
        req.extra_properties = vec![(name.to_string(), value.to_string())];
        let err = store.put_request(req).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{name:?}={value:?}: {err}");
    }
    assert_eq!(store.max_phy_offset(), end, "nothing appended");
    let r = store.put("T", 0, b"second", None, &[]).await.unwrap();
    assert_eq!(r.queue_offset, 1, "the refused puts took no queue offset");
    store.shutdown().await.unwrap();
}

/// On a full disk, dispatch (which cannot create a new queue's file) and the allocation
/// service (which cannot create a spare) retry at a bounded rate, not on every put.
#[tokio::test]
async fn failing_file_creation_is_retried_at_a_bounded_rate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    store.put("T", 0, b"first", None, &[]).await.unwrap();
    wait_dispatched(&store).await;
    storage.c.fail_creates.store(true, Ordering::SeqCst);
    let before = storage.c.creates.load(Ordering::SeqCst);
    // A new queue (its file cannot be created), and past half of the commit-log file (the
    // next spare cannot be created either), short of the file's end; a put every 5 ms for a
    // second.
    for i in 0..200u32 {
        clock.advance(5);
        store.put("U", 0, &[i as u8; 100], None, &[]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(store.max_phy_offset() > cfg.commit_log_file_size_bytes / 2);
    let attempts = storage.c.creates.load(Ordering::SeqCst) - before;
    // Dispatch retries every 100 ms, the allocation service every second.
    assert!((3..=20).contains(&attempts), "{attempts} creations attempted in a second");
    storage.c.fail_creates.store(false, Ordering::SeqCst);
    wait_dispatched(&store).await;
    assert_eq!(store.max_offset("U", 0), 200, "dispatch caught up once the disk had room");
    store.shutdown().await.unwrap();
}
