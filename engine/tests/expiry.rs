//! Expiry of local files (`Store::delete_expired` and its service), recovery after expiry
//! and after a deletion cut short, and a continued log (`Store::continue_from`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use engine::io::HoldKind;
use engine::recovery::RecoveryKind;
use engine::{PutResult, Store, StoreConfig, StoreError};

const T0_MS: i64 = 1_700_000_000_000;
const RETENTION_MS: u64 = 1_000;

async fn wait_dispatch(store: &Store) {
    for _ in 0..1000 {
        if store.dispatch_behind_bytes() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("dispatch did not catch up");
}

/// The 20-digit files of a directory, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
        .unwrap_or_default();
    names.retain(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()));
    names.sort();
    names
}

fn cl_dir(cfg: &StoreConfig) -> PathBuf {
    cfg.root_dir.join("commitlog")
}

fn cq_dir(cfg: &StoreConfig, q: u32) -> PathBuf {
    cfg.root_dir.join("consumequeue").join("T").join(q.to_string())
}

/// A temporary store directory with its config, storage and clock (at `T0_MS`).
struct Env {
    _dir: tempfile::TempDir,
    cfg: StoreConfig,
    storage: Arc<TestStorage>,
    clock: Arc<ManualClock>,
}

impl Env {
    fn new(file_retention_ms: Option<u64>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig { file_retention_ms, ..small_config(dir.path()) };
        Env { _dir: dir, cfg, storage: TestStorage::new(), clock: ManualClock::new(T0_MS) }
    }

    async fn open(&self) -> Store {
        open(&self.cfg, &self.storage, &self.clock).await
    }
}

struct Setup {
    e: Env,
    puts: Vec<(u32, PutResult)>,
}

/// 300 messages of 700 bytes over 3 queues, 10 ms apart (four 64 KiB commit-log files, two
/// consume-queue files of 64 units per queue), everything flushed and dispatched. The store
/// is running without a retention (no expiry service); `Env::open` opens with one.
async fn setup() -> (Setup, Store) {
    let e = Env::new(Some(RETENTION_MS));
    let store = open(&StoreConfig { file_retention_ms: None, ..e.cfg.clone() }, &e.storage, &e.clock).await;
    store.start().unwrap();
    let puts = put_n(&store, &e.clock, 300, 3, 700, 10).await;
    wait_dispatch(&store).await;
    store.flush_all().await.unwrap();
    assert!(files_in(&cl_dir(&e.cfg)).len() >= 4, "several commit-log files");
    (Setup { e, puts }, store)
}

/// `setup`, shut down cleanly.
async fn setup_shut_down() -> Setup {
    let (s, store) = setup().await;
    store.shutdown().await.unwrap();
    s
}

/// What a queue must hold once the commit log starts at `min_phy`: the puts at or above it.
fn live(puts: &[(u32, PutResult)], q: u32, min_phy: u64) -> Vec<PutResult> {
    puts.iter().filter(|(pq, r)| *pq == q && r.phy_offset >= min_phy).map(|(_, r)| *r).collect()
}

/// Every queue's min and max offsets and contents match the puts still in the log, read
/// from 0 (below the minimum) and from the minimum.
fn assert_reads_after_expiry(store: &Store, puts: &[(u32, PutResult)], per_queue: u64) {
    let min_phy = store.min_phy_offset();
    for q in 0..3 {
        let want = live(puts, q, min_phy);
        let min = want.first().map_or(per_queue, |r| r.queue_offset);
        assert_eq!(store.min_offset("T", q), min, "queue {q} minimum");
        assert_eq!(store.max_offset("T", q), per_queue, "queue {q} end");
        let from_min = store.get("T", q, min, 10_000).expect("get from the minimum");
        assert_eq!(
            from_min.iter().map(|m| m.phy_offset).collect::<Vec<_>>(),
            want.iter().map(|r| r.phy_offset).collect::<Vec<_>>()
        );
        assert!(from_min.iter().zip(&want).all(|(m, r)| m.queue_offset == r.queue_offset));
        let from_zero = store.get("T", q, 0, 10_000).expect("a get below the minimum is no error");
        assert_eq!(from_zero, from_min, "a get below the minimum returns the messages from it");
    }
}

#[test]
fn expiry_settings_are_validated() {
    let cfg = StoreConfig::small("x");
    assert_eq!(cfg.file_retention_ms, None, "never expire by default");
    assert_eq!(StoreConfig::default().file_retention_ms, None);
    cfg.validate().unwrap();
    for bad in [
        StoreConfig { file_retention_ms: Some(0), ..cfg.clone() },
        StoreConfig { file_retention_ms: Some(u64::MAX), ..cfg.clone() },
        StoreConfig { expiry_interval_ms: 0, ..cfg.clone() },
    ] {
        assert!(matches!(bad.validate(), Err(StoreError::Config(_))), "{bad:?}");
    }
}

#[tokio::test]
async fn expired_files_go_from_the_head_and_reads_follow() {
    let s = setup_shut_down().await;
    let store = s.e.open().await;
    let files_before = files_in(&cl_dir(&s.e.cfg));
    let file_size = s.e.cfg.commit_log_file_size_bytes;

    // Not expired yet: at the time of the first put, every message is younger than the retention.
    s.e.clock.set(T0_MS);
    let r = store.delete_expired().unwrap();
    assert_eq!(r.commit_log_files_deleted, 0);
    assert_eq!(r.new_min_phy_offset, 0);

    // The first file's messages are all older than the cutoff once the second file's first
    // message is: exactly the files before the first one holding a message at or after it.
    s.e.clock.set(T0_MS + 1_500 + RETENTION_MS as i64);
    let cutoff = T0_MS + 1_500;
    let first_young = s.puts.iter().find(|(_, r)| r.store_timestamp_ms >= cutoff).unwrap().1.phy_offset;
    let want_min = first_young / file_size * file_size;
    assert!(want_min > 0);
    let r = store.delete_expired().unwrap();
    assert_eq!(r.new_min_phy_offset, want_min);
    assert_eq!(r.commit_log_files_deleted, want_min / file_size);
    assert_eq!(r.blocked_by_hold, None);
    assert_eq!(store.min_phy_offset(), want_min);
    assert_eq!(files_in(&cl_dir(&s.e.cfg)), files_before[(want_min / file_size) as usize..]);
    assert_reads_after_expiry(&store, &s.puts, 100);

    // Everything old: only the last commit-log file and each queue's last CQ file stay.
    let index_files_before = std::fs::read_dir(s.e.cfg.root_dir.join("index")).unwrap().count();
    s.e.clock.set(T0_MS + 1_000_000);
    let r = store.delete_expired().unwrap();
    let index_files_after = std::fs::read_dir(s.e.cfg.root_dir.join("index")).unwrap().count();
    assert!(r.index_files_deleted > 0, "{r:?}");
    assert_eq!(index_files_after, index_files_before - r.index_files_deleted as usize);
    assert!(store.query_by_key("T", "k0", 0, i64::MAX, 10).unwrap().is_empty(), "an expired key: no error, nothing");
    assert_eq!(store.query_by_key("T", "k299", 0, i64::MAX, 10).unwrap().len(), 1, "a live key is still found");
    let last = files_before.last().unwrap().clone();
    assert_eq!(files_in(&cl_dir(&s.e.cfg)), vec![last.clone()], "the last commit-log file is never expired");
    assert_eq!(r.new_min_phy_offset, last.parse::<u64>().unwrap());
    for q in 0..3 {
        assert_eq!(files_in(&cq_dir(&s.e.cfg, q)).len(), 1, "a queue's last CQ file is never expired");
    }
    assert!(r.cq_files_deleted >= 3, "{r:?}");
    assert_reads_after_expiry(&store, &s.puts, 100);
    // A second pass finds nothing more.
    let again = store.delete_expired().unwrap();
    assert_eq!((again.commit_log_files_deleted, again.cq_files_deleted), (0, 0));

    // Queue offsets go on; both restarts see the same state.
    store.start().unwrap();
    let next = store.put("T", 1, b"after expiry", None, &[]).await.unwrap();
    assert_eq!(next.queue_offset, 100);
    wait_dispatch(&store).await;
    let mut puts = s.puts.clone();
    puts.push((1, next));
    let min_phy = store.min_phy_offset();
    store.shutdown().await.unwrap();
    drop(store);
    for crash in [false, true] {
        let store = s.e.open().await;
        let kind = store.last_recovery().kind;
        assert_eq!(kind, if crash { RecoveryKind::Abnormal } else { RecoveryKind::Normal });
        assert_eq!(store.min_phy_offset(), min_phy, "the log starts where expiry left it");
        for q in 0..3 {
            let per_queue = puts.iter().filter(|(pq, _)| *pq == q).count() as u64;
            let want = live(&puts, q, min_phy);
            assert_eq!(store.max_offset("T", q), per_queue, "queue {q}'s end survives the restart");
            assert_eq!(store.min_offset("T", q), want[0].queue_offset);
            let got = store.get("T", q, 0, 10_000).unwrap();
            assert_eq!(
                got.iter().map(|m| m.queue_offset).collect::<Vec<_>>(),
                want.iter().map(|r| r.queue_offset).collect::<Vec<_>>()
            );
        }
        store.start().unwrap();
        let r = store.put("T", 2, b"x", None, &[]).await.unwrap();
        let queue_2_before = puts.iter().filter(|(pq, _)| *pq == 2).count() as u64;
        assert_eq!(r.queue_offset, queue_2_before, "queue offsets are never reused");
        wait_dispatch(&store).await;
        store.flush_all().await.unwrap();
        puts.push((2, r));
        if crash {
            store.shutdown().await.unwrap();
        }
        drop(store); // the first round ends in a crash, the second cleanly
    }
}

#[tokio::test]
async fn a_held_file_stops_expiry_and_is_named() {
    let (s, store) = setup().await;
    s.e.clock.set(T0_MS + 1_000_000);
    assert_eq!(store.delete_expired().unwrap(), engine::ExpiryReport::default(), "without a retention nothing expires");
    store.shutdown().await.unwrap();
    drop(store);

    let store = s.e.open().await;
    let head = files_in(&cl_dir(&s.e.cfg))[0].clone();
    let hold = store.holds().acquire(HoldKind::MappedFile, &head);
    let r = store.delete_expired().unwrap();
    assert_eq!(r.blocked_by_hold.as_deref(), Some(head.as_str()));
    assert_eq!(r.commit_log_files_deleted, 0);
    assert_eq!(r.cq_files_deleted, 0, "consume queues follow the commit log");
    assert_eq!(store.min_phy_offset(), 0);
    assert_eq!(files_in(&cl_dir(&s.e.cfg))[0], head);
    drop(hold);
    let r = store.delete_expired().unwrap();
    assert_eq!(r.blocked_by_hold, None);
    assert!(r.commit_log_files_deleted > 0);
}

#[tokio::test]
async fn files_dispatch_has_not_passed_stay() {
    let e = Env::new(Some(RETENTION_MS));
    // Not started: nothing dispatches.
    let store = e.open().await;
    let puts = put_n(&store, &e.clock, 300, 3, 700, 10).await;
    store.flush_all().await.unwrap();
    assert_eq!(store.reput_offset(), 0);
    e.clock.set(T0_MS + 1_000_000);
    let r = store.delete_expired().unwrap();
    assert_eq!(r.commit_log_files_deleted, 0, "dispatch has not passed any file");
    store.start().unwrap();
    wait_dispatch(&store).await;
    // Dispatched, but the units are durable only after the next consume-queue flush.
    let r = store.delete_expired().unwrap();
    assert_eq!(r.commit_log_files_deleted, 0, "the queue units of the messages are not durable yet");
    store.flush_all().await.unwrap();
    let r = store.delete_expired().unwrap();
    assert!(r.commit_log_files_deleted > 0);
    assert_reads_after_expiry(&store, &puts, 100);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_service_expires_files_while_running() {
    let s = setup_shut_down().await;
    let store = s.e.open().await;
    store.start().unwrap();
    s.e.clock.set(T0_MS + 1_000_000);
    let last = files_in(&cl_dir(&s.e.cfg)).pop().unwrap();
    for _ in 0..100 {
        if store.min_phy_offset() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(s.e.cfg.expiry_interval_ms)).await;
    }
    assert_eq!(store.min_phy_offset(), last.parse::<u64>().unwrap(), "the service expired every file but the last");
    store.shutdown().await.unwrap();
    assert_eq!(files_in(&cl_dir(&s.e.cfg)), vec![last]);
}

/// A deletion cut short by a crash leaves a prefix removal: the first commit-log files gone,
/// the consume-queue files not yet (or only some of them). Recovery, reads and new puts work
/// from the new start, after a clean shutdown and after a crash.
#[tokio::test]
async fn a_deletion_cut_short_recovers() {
    for (crash, cl_files_gone, cq_files_gone) in [(true, 1, 0), (true, 3, 1), (false, 2, 0), (false, 3, 1)] {
        let (s, store) = setup().await;
        if crash {
            drop(store);
        } else {
            store.shutdown().await.unwrap();
            drop(store);
        }
        for name in &files_in(&cl_dir(&s.e.cfg))[..cl_files_gone] {
            std::fs::remove_file(cl_dir(&s.e.cfg).join(name)).unwrap();
        }
        let min_phy = cl_files_gone as u64 * s.e.cfg.commit_log_file_size_bytes;
        let units_per_file = s.e.cfg.cq_units_per_file as usize;
        let removed_units = live(&s.puts, 0, 0).into_iter().take(cq_files_gone * units_per_file);
        assert!(removed_units.into_iter().all(|r| r.phy_offset < min_phy), "only CQ files wholly below the log go");
        for name in &files_in(&cq_dir(&s.e.cfg, 0))[..cq_files_gone] {
            std::fs::remove_file(cq_dir(&s.e.cfg, 0).join(name)).unwrap();
        }
        let store = s.e.open().await;
        assert_eq!(store.min_phy_offset(), min_phy);
        assert!(store.last_recovery().load_repairs.is_empty(), "{:?}", store.last_recovery().load_repairs);
        assert_reads_after_expiry(&store, &s.puts, 100);
        store.start().unwrap();
        let r = store.put("T", 0, b"x", None, &[]).await.unwrap();
        assert_eq!(r.queue_offset, 100, "crash={crash}: queue offsets are never reused");
        // The rest of the deletion completes.
        s.e.clock.set(T0_MS + 1_000_000);
        wait_dispatch(&store).await;
        store.flush_all().await.unwrap();
        let rep = store.delete_expired().unwrap();
        assert_eq!(files_in(&cl_dir(&s.e.cfg)).len(), 1, "{rep:?}");
        store.shutdown().await.unwrap();
    }
}

/// A gap between commit-log files is still repaired as before (the files after it go); only
/// a missing head is normal.
#[tokio::test]
async fn a_gap_between_files_is_still_cut() {
    let s = setup_shut_down().await;
    let names = files_in(&cl_dir(&s.e.cfg));
    std::fs::remove_file(cl_dir(&s.e.cfg).join(&names[0])).unwrap();
    std::fs::remove_file(cl_dir(&s.e.cfg).join(&names[2])).unwrap();
    let store = s.e.open().await;
    let rep = store.last_recovery();
    assert!(rep.load_repairs.iter().any(|r| r.starts_with("removed after gap")), "{:?}", rep.load_repairs);
    let size = s.e.cfg.commit_log_file_size_bytes;
    assert_eq!(store.min_phy_offset(), size);
    assert_eq!(store.max_phy_offset(), 2 * size, "the log ends at the gap");
}

fn floors(q0: u64) -> BTreeMap<(String, u32), u64> {
    BTreeMap::from([(("T".to_string(), 0), q0)])
}

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn a_continued_log_goes_on_above_the_old_offsets() {
    let e = Env::new(None);
    let store = e.open().await;
    store.continue_from(10 * MIB, &floors(500)).unwrap();
    assert_eq!((store.min_phy_offset(), store.max_phy_offset()), (10 * MIB, 10 * MIB));
    assert_eq!((store.min_offset("T", 0), store.max_offset("T", 0)), (500, 500));
    assert_eq!(store.dispatch_behind_bytes(), 0);
    store.start().unwrap();
    let puts = put_n(&store, &e.clock, 200, 2, 700, 10).await;
    assert_eq!(puts[0].1.phy_offset, 10 * MIB, "the first record at the floor");
    assert_eq!(puts[0].1.queue_offset, 500);
    assert_eq!(puts[1].1.queue_offset, 0, "an unnamed queue starts at 0");
    let err = store.continue_from(20 * MIB, &floors(900)).unwrap_err();
    assert!(matches!(err, StoreError::LogNotEmpty { .. }), "{err:?}");
    wait_dispatch(&store).await;
    let check = |store: &Store, puts: &[(u32, PutResult)]| {
        for (q, first) in [(0u32, 500u64), (1, 0)] {
            let want: Vec<_> = puts.iter().filter(|(pq, _)| *pq == q).map(|(_, r)| *r).collect();
            assert_eq!(store.min_offset("T", q), first);
            assert_eq!(store.max_offset("T", q), first + want.len() as u64);
            for from in [0, first] {
                let got = store.get("T", q, from, 10_000).unwrap();
                assert_eq!(got.len(), want.len(), "queue {q} from {from}");
                for (m, r) in got.iter().zip(&want) {
                    assert_eq!((m.queue_offset, m.phy_offset), (r.queue_offset, r.phy_offset));
                }
            }
        }
        assert_eq!(store.min_phy_offset(), 10 * MIB);
    };
    check(&store, &puts);
    let mut puts = puts;
    store.shutdown().await.unwrap();
    drop(store);
    for crash in [false, true] {
        let store = e.open().await;
        assert_eq!(store.last_recovery().kind, if crash { RecoveryKind::Abnormal } else { RecoveryKind::Normal });
        check(&store, &puts);
        store.start().unwrap();
        let r = store.put("T", 0, b"more", None, &[]).await.unwrap();
        assert_eq!(r.queue_offset, 500 + puts.iter().filter(|(q, _)| *q == 0).count() as u64);
        puts.push((0, r));
        wait_dispatch(&store).await;
        check(&store, &puts);
        if crash {
            store.shutdown().await.unwrap();
        }
        drop(store); // the first round ends in a crash, the second cleanly
    }
}

/// A restart with the log still empty may have lost the continuation: the caller continues
/// again, and the floors hold.
#[tokio::test]
async fn an_empty_continued_log_is_continued_again_after_a_restart() {
    let e = Env::new(None);
    let store = e.open().await;
    let err = store.continue_from(10 * MIB, &floors(u64::MAX)).unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "an impossible floor: {err:?}");
    store.continue_from(10 * MIB + 1, &floors(500)).unwrap();
    let start = 10 * MIB + e.cfg.commit_log_file_size_bytes;
    assert_eq!(store.min_phy_offset(), start, "the next file boundary");
    drop(store); // a crash with the log empty
    let store = e.open().await;
    store.continue_from(10 * MIB + 1, &floors(500)).unwrap();
    assert_eq!(store.min_phy_offset(), start);
    assert_eq!(store.max_offset("T", 0), 500);
    store.start().unwrap();
    let r = store.put("T", 0, b"first", None, &[]).await.unwrap();
    assert_eq!((r.phy_offset, r.queue_offset), (start, 500));
    store.shutdown().await.unwrap();
}

/// A tiered store that holds only blanks (every message expired locally before it was
/// tiered) knows the queues' floors but no physical end: the continued log starts where the
/// floors can sit, never refuses them.
#[tokio::test]
async fn queue_floors_without_a_physical_end_start_the_log_above_them() {
    let e = Env::new(None);
    let store = e.open().await;
    store.continue_from(0, &floors(30)).unwrap();
    let start = store.min_phy_offset();
    let size = e.cfg.commit_log_file_size_bytes;
    assert!(start >= 30 * engine::message::FIXED_RECORD_BYTES, "start {start}");
    assert_eq!(start % size, 0, "a file boundary");
    store.start().unwrap();
    let r = store.put("T", 0, b"first", None, &[]).await.unwrap();
    assert_eq!((r.phy_offset, r.queue_offset), (start, 30));
    store.shutdown().await.unwrap();
}
