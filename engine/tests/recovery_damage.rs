//! Recovery from crafted damage, on the real disk in a temporary directory. Each test asserts
//! the exact recovered commit-log end and the consume-queue contents.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use engine::checkpoint::CheckpointData;
use engine::io::real::RealStorage;
use engine::io::Storage;
use engine::message::encode_blank;
use engine::recovery::{CheckpointFound, RecoveryKind};
use engine::{PutResult, StoreConfig, StoreError};

struct Setup {
    _dir: tempfile::TempDir,
    cfg: StoreConfig,
    storage: Arc<TestStorage>,
    clock: Arc<ManualClock>,
    puts: Vec<(u32, PutResult)>,
    end: u64,
}

/// 200 messages of 500 bytes over 2 queues (two 64 KiB files), clean shutdown.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    let puts = put_n(&store, &clock, 200, 2, 500, 100).await;
    let end = store.max_phy_offset();
    store.shutdown().await.unwrap();
    Setup { _dir: dir, cfg, storage, clock, puts, end }
}

fn cq_file(cfg: &StoreConfig, q: u32, unit: u64) -> PathBuf {
    let per = cfg.cq_units_per_file;
    cfg.root_dir.join("consumequeue").join("T").join(q.to_string()).join(format!("{:020}", unit / per * per * 20))
}

fn write_file(path: &std::path::Path, at: u64, data: &[u8]) {
    RealStorage::new().open(path).unwrap().write_at(at, data).unwrap();
}

#[tokio::test]
async fn truncated_last_record_is_cut_abnormal() {
    let s = setup().await;
    let (_, last) = s.puts.last().unwrap();
    let rec = peek_cl(&s.cfg, last.phy_offset, last.size_bytes as usize);
    let room = (s.cfg.commit_log_file_size_bytes - s.end % s.cfg.commit_log_file_size_bytes) as usize;
    poke_cl(&s.cfg, s.end, &rec[..(rec.len() / 2).min(room)]);
    make_abort(&s.cfg);
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.kind, RecoveryKind::Abnormal);
    assert_eq!(rep.commit_log_end, s.end);
    assert_eq!(rep.stopped_at.as_ref().map(|x| x.0), Some(s.end));
    assert_eq!(store.max_phy_offset(), s.end);
    assert_queues(&store, &s.puts, s.end);
    drop(store);
    let tail = peek_cl(&s.cfg, s.end, 64);
    assert!(tail.iter().all(|&b| b == 0), "the half record is zeroed");
}

#[tokio::test]
async fn flipped_body_crc_truncates_there_normal_path() {
    let s = setup().await;
    let k = 150;
    let (_, bad) = s.puts[k];
    poke_cl(&s.cfg, bad.phy_offset + 100, &[0xFF, 0xEE]);
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.kind, RecoveryKind::Normal);
    assert_eq!(rep.commit_log_end, bad.phy_offset);
    assert!(rep.stopped_at.as_ref().unwrap().1.contains("BodyCrcMismatch"), "{:?}", rep.stopped_at);
    assert_eq!(rep.cq_truncated_to, Some(bad.phy_offset));
    assert_eq!(rep.cq_units_removed.get("T/0"), Some(&25));
    assert_eq!(rep.cq_units_removed.get("T/1"), Some(&25));
    assert_queues(&store, &s.puts, bad.phy_offset);
    assert_eq!(store.max_offset("T", 0), 75);
    // The next message reuses the cut position and the next queue offset.
    store.start().unwrap();
    let r = store.put("T", 0, b"after", None, &[]).await.unwrap();
    assert_eq!((r.phy_offset, r.queue_offset), (bad.phy_offset, 75));
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn zeroed_tail_removes_later_files_abnormal() {
    let s = setup().await;
    let k = 60; // in the first file; the second file goes
    let (_, cut) = s.puts[k];
    let size = s.cfg.commit_log_file_size_bytes;
    assert!(cut.phy_offset < size && s.end > size);
    poke_cl(&s.cfg, cut.phy_offset, &vec![0u8; (size - cut.phy_offset) as usize]);
    // Without a checkpoint the abnormal scan starts at the first file (with one, it would
    // start at the newest file and never look at the damage, as RocketMQ does).
    std::fs::remove_file(s.cfg.root_dir.join("checkpoint")).unwrap();
    make_abort(&s.cfg);
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.checkpoint, CheckpointFound::Missing);
    assert_eq!(rep.commit_log_end, cut.phy_offset);
    assert_eq!(rep.commit_log_files_removed, vec![size]);
    assert!(rep.stopped_at.as_ref().unwrap().1.contains("BadMagic"));
    assert_queues(&store, &s.puts, cut.phy_offset);
    assert_eq!(store.max_offset("T", 0) + store.max_offset("T", 1), k as u64);
}

#[tokio::test]
async fn blank_in_the_wrong_place_is_corruption() {
    let s = setup().await;
    let (_, at) = s.puts[170];
    poke_cl(&s.cfg, at.phy_offset, &encode_blank(100));
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.commit_log_end, at.phy_offset);
    assert!(rep.stopped_at.as_ref().unwrap().1.contains("BlankMisplaced"));
    assert_queues(&store, &s.puts, at.phy_offset);
}

#[tokio::test]
async fn half_written_consume_queue_unit_is_dropped_and_rebuilt() {
    let s = setup().await;
    let n = 100u64; // units of queue 0
                    // Garbage after the last unit: a physical offset with a zero size.
    write_file(&cq_file(&s.cfg, 0, n), (n % s.cfg.cq_units_per_file) * 20, &[0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    // Queue 1: its last unit's size field torn to zero.
    let last = n - 1;
    write_file(&cq_file(&s.cfg, 1, last), (last % s.cfg.cq_units_per_file) * 20 + 8, &[0, 0, 0, 0]);
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.kind, RecoveryKind::Normal);
    assert_eq!(rep.commit_log_end, s.end);
    assert_eq!(rep.reput_from, s.puts[199].1.phy_offset, "re-dispatch of queue 1's last message");
    assert_eq!(rep.caught_up_messages, 1);
    assert_queues(&store, &s.puts, s.end);
}

/// A power loss kept a new consume-queue file's directory entry but none of its units, and
/// the commit log lost the messages the previous file's last units point to: truncation must
/// look past the empty file (broker seed 87842 kept a unit past the log's end).
#[tokio::test]
async fn empty_last_consume_queue_file_does_not_hide_units_past_the_log_end() {
    let s = setup().await;
    let per = s.cfg.cq_units_per_file;
    // Queue 0's second file (units 64..99) holds only zeros.
    write_file(&cq_file(&s.cfg, 0, per), 0, &vec![0u8; (per * 20) as usize]);
    // The log ends at queue 0's unit 63 (puts alternate between the two queues).
    let (q, cut) = s.puts[2 * (per as usize - 1)];
    assert_eq!((q, cut.queue_offset), (0, per - 1));
    let size = s.cfg.commit_log_file_size_bytes;
    let file_end = (cut.phy_offset / size + 1) * size;
    assert!(s.end <= file_end, "the cut is in the last file");
    poke_cl(&s.cfg, cut.phy_offset, &vec![0u8; (file_end - cut.phy_offset) as usize]);
    std::fs::remove_file(s.cfg.root_dir.join("checkpoint")).unwrap();
    make_abort(&s.cfg);
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.kind, RecoveryKind::Abnormal);
    assert_eq!(rep.commit_log_end, cut.phy_offset);
    assert_eq!(store.max_offset("T", 0), per - 1, "queue 0 ends before the lost message");
    assert_queues(&store, &s.puts, cut.phy_offset);
}

/// A flipped high bit in QUEUEOFFSET, which no CRC covers: RocketMQ would fill the queue
/// with blank units up to it (here: until memory ran out, found by the broker scenario, seed
/// 9035). The decoder must see that no queue can reach that offset by the record's position,
/// and recovery cut the log there.
#[tokio::test]
async fn impossible_queue_offset_is_corrupt_not_a_hole_to_fill() {
    let s = setup().await;
    let k = 150;
    let (q, bad) = s.puts[k];
    let mut field = peek_cl(&s.cfg, bad.phy_offset + 20, 8);
    field[2] ^= 0x40;
    poke_cl(&s.cfg, bad.phy_offset + 20, &field);
    write_checkpoint(
        &s.cfg,
        CheckpointData { physic_msg_timestamp_ms: 1, logics_msg_timestamp_ms: 1, index_msg_timestamp_ms: 1 },
    )
    .await;
    make_abort(&s.cfg);
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.commit_log_end, bad.phy_offset);
    assert!(rep.stopped_at.as_ref().unwrap().1.contains("ImpossibleQueueOffset"), "{:?}", rep.stopped_at);
    assert_queues(&store, &s.puts, bad.phy_offset);
    assert_eq!(store.max_offset("T", q), bad.queue_offset);
}

async fn write_checkpoint(cfg: &StoreConfig, data: CheckpointData) {
    write_file(&cfg.root_dir.join("checkpoint"), 0, &data.encode());
}

#[tokio::test]
async fn checkpoint_newer_than_data_starts_at_the_newest_file() {
    let s = setup().await;
    let far = i64::MAX / 2;
    write_checkpoint(
        &s.cfg,
        CheckpointData { physic_msg_timestamp_ms: far, logics_msg_timestamp_ms: far, index_msg_timestamp_ms: far },
    )
    .await;
    make_abort(&s.cfg);
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.checkpoint, CheckpointFound::Valid);
    let size = s.cfg.commit_log_file_size_bytes;
    assert_eq!(rep.scan_start_offset, (s.end / size) * size);
    let in_last = s.puts.iter().filter(|(_, r)| r.phy_offset >= rep.scan_start_offset).count() as u64;
    assert_eq!(rep.redispatched_messages, in_last);
    assert_eq!(rep.commit_log_end, s.end);
    assert_queues(&store, &s.puts, s.end);
}

/// A crash cut the log's tail after the checkpoint recorded consume-queue data for it (the
/// queues were flushed, the commit log was not), and the clock is behind that timestamp. New
/// messages must not be stored before it: the checkpoint would vouch for their units, and a
/// power loss before those are flushed would start the next recovery after them (#678).
#[tokio::test]
async fn new_messages_are_stored_at_or_after_the_checkpoint_consume_queue_timestamp() {
    let s = setup().await;
    let (_, last) = s.puts.last().unwrap();
    let logics_ms = last.store_timestamp_ms + 5_000;
    write_checkpoint(
        &s.cfg,
        CheckpointData {
            physic_msg_timestamp_ms: last.store_timestamp_ms,
            logics_msg_timestamp_ms: logics_ms,
            index_msg_timestamp_ms: last.store_timestamp_ms,
        },
    )
    .await;
    make_abort(&s.cfg);
    s.clock.set(last.store_timestamp_ms + 1);
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    assert_eq!(store.last_recovery().kind, RecoveryKind::Abnormal);
    store.start().unwrap();
    let r = store.put("T", 0, b"after", None, &[]).await.unwrap();
    assert!(
        r.store_timestamp_ms >= logics_ms,
        "stored at {} before the checkpoint's {logics_ms}",
        r.store_timestamp_ms
    );
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn checkpoint_older_than_data_rescans_everything() {
    let s = setup().await;
    write_checkpoint(
        &s.cfg,
        CheckpointData { physic_msg_timestamp_ms: 1, logics_msg_timestamp_ms: 1, index_msg_timestamp_ms: 1 },
    )
    .await;
    make_abort(&s.cfg);
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.scan_start_offset, 0);
    assert_eq!(rep.redispatched_messages, 200);
    assert_eq!(rep.commit_log_end, s.end);
    assert_queues(&store, &s.puts, s.end);
    assert_eq!(store.query_by_key("T", "k0", 0, i64::MAX, 5).unwrap().len(), 1);
}

#[tokio::test]
async fn garbage_checkpoint_means_no_checkpoint() {
    let s = setup().await;
    write_file(&s.cfg.root_dir.join("checkpoint"), 0, &[0x5A; 64]);
    make_abort(&s.cfg);
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.checkpoint, CheckpointFound::Corrupt);
    assert_eq!(rep.checkpoint_data, CheckpointData::default());
    assert_eq!(rep.scan_start_offset, 0);
    assert_eq!(rep.commit_log_end, s.end);
    assert_queues(&store, &s.puts, s.end);
}

#[tokio::test]
async fn a_longer_file_is_refused_but_a_short_last_file_is_extended() {
    let s = setup().await;
    let size = s.cfg.commit_log_file_size_bytes;
    // A short last file (its length was not durable): extended, data up to its length kept.
    let last = cl_file(&s.cfg, s.end);
    let keep = s.puts[150].1.phy_offset;
    RealStorage::new().open(&last).unwrap().set_len(keep % size).unwrap();
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.load_repairs.len(), 1, "{:?}", rep.load_repairs);
    assert_eq!(rep.commit_log_end, keep);
    assert_queues(&store, &s.puts, keep);
    store.shutdown().await.unwrap();
    drop(store);
    // A first file longer than the configured size: refused.
    RealStorage::new().open(&cl_file(&s.cfg, 0)).unwrap().set_len(size + 1).unwrap();
    let err = engine::Store::open(s.cfg.clone(), s.storage.clone(), s.clock.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::BadFileSize { actual_bytes, .. } if actual_bytes == size + 1), "{err:?}");
}

#[tokio::test]
async fn the_first_of_several_short_files_ends_the_log() {
    // Small files and a long flush interval: at a power loss the lengths of several of the
    // newest files may be lost, not only the last one's.
    let s = setup().await;
    let size = s.cfg.commit_log_file_size_bytes;
    // Cut inside the file before the last one.
    let before_last = (s.end / size).checked_sub(1).expect("the setup fills several files") * size;
    let keep = s.puts.iter().map(|p| p.1.phy_offset).find(|&o| o > before_last).expect("a message there");
    let first_short = keep - keep % size;
    assert!(s.end - first_short > size, "the test needs at least two files from the cut on");
    let mut shortened = 0;
    let mut start = first_short;
    while start <= s.end {
        let len = if start == first_short { keep % size } else { 0 };
        RealStorage::new().open(&cl_file(&s.cfg, start)).unwrap().set_len(len).unwrap();
        shortened += 1;
        start += size;
    }
    make_abort(&s.cfg);
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    // The first short file ends the log; the ones after it are removed.
    let extended = rep.load_repairs.iter().filter(|r| r.starts_with("extended")).count();
    let removed = rep.load_repairs.iter().filter(|r| r.starts_with("removed after gap")).count();
    assert_eq!((extended, removed), (1, shortened - 1), "{:?}", rep.load_repairs);
    assert_eq!(rep.commit_log_end, keep);
    assert_queues(&store, &s.puts, keep);
}

#[tokio::test]
async fn missing_consume_queue_directory_is_rebuilt() {
    let s = setup().await;
    std::fs::remove_dir_all(s.cfg.root_dir.join("consumequeue")).unwrap();
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    assert_eq!(rep.commit_log_end, s.end);
    assert_eq!(rep.reput_from, 0);
    assert_eq!(rep.caught_up_messages, 200);
    assert_queues(&store, &s.puts, s.end);
}

#[tokio::test]
async fn missing_commit_log_directory_empties_the_queues() {
    let s = setup().await;
    std::fs::remove_dir_all(s.cfg.root_dir.join("commitlog")).unwrap();
    let store = open(&s.cfg, &s.storage, &s.clock).await;
    assert_eq!(store.max_phy_offset(), 0);
    assert_eq!(store.max_offset("T", 0), 0);
    assert_eq!(store.max_offset("T", 1), 0);
    assert_eq!(store.last_recovery().cq_units_removed.get("T/0"), Some(&100));
    let r = store.put("T", 0, b"x", None, &[]).await.unwrap();
    assert_eq!((r.phy_offset, r.queue_offset), (0, 0));
}

#[tokio::test]
async fn missing_store_directory_is_a_fresh_store() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::small(dir.path().join("a/b/c"));
    let storage = TestStorage::new();
    let clock = ManualClock::new(5);
    let store = open(&cfg, &storage, &clock).await;
    assert_eq!(store.last_recovery().kind, RecoveryKind::Normal);
    assert_eq!(store.max_phy_offset(), 0);
    assert!(storage.real.exists(&cfg.root_dir.join("abort")));
}

/// A power loss can undo the rename that took the spare commit-log file into use, leaving the
/// last file's records under the spare's name (`SPARE_FILE_NAME`). Recovery must neither read
/// them as part of the log nor roll into them later: `load` removes every spare it finds.
#[tokio::test]
async fn spare_files_found_at_open_are_removed_never_used() {
    let s = setup().await;
    let size = s.cfg.commit_log_file_size_bytes;
    let cl_dir = s.cfg.root_dir.join("commitlog");
    let last = cl_file(&s.cfg, s.end);
    // The log's last file "renamed back", with its records, and a half-prepared spare.
    std::fs::rename(&last, cl_dir.join("spare")).unwrap();
    std::fs::write(cl_dir.join("spare.tmp"), b"half prepared").unwrap();
    let cfg = StoreConfig { flush_mode: engine::FlushMode::Sync, ..s.cfg.clone() };
    let store = open(&cfg, &s.storage, &s.clock).await;
    let rep = store.last_recovery();
    let kept_end = s.end - s.end % size;
    assert_eq!(rep.commit_log_end, kept_end, "the log ends where its last file began");
    assert_queues(&store, &s.puts, kept_end);
    assert!(!cl_dir.join("spare.tmp").exists() && !cl_dir.join("spare").exists(), "removed at load");
    // The next roll takes a fresh spare of zeros, not the stale records.
    store.start().unwrap();
    let more = put_n(&store, &s.clock, 20, 2, 500, 100).await;
    assert_eq!(more[0].1.phy_offset, kept_end);
    store.shutdown().await.unwrap();
    drop(store);
    let store = open(&cfg, &s.storage, &s.clock).await;
    let end = more.last().unwrap().1.phy_offset + u64::from(more.last().unwrap().1.size_bytes);
    assert_eq!(store.last_recovery().commit_log_end, end);
    let q0 = store.get("T", 0, 0, 10_000).unwrap();
    let kept_in_q0 = s.puts.iter().filter(|(q, r)| *q == 0 && r.phy_offset < kept_end).count();
    assert_eq!(q0.len(), kept_in_q0 + 10, "the stale records never came back");
    store.shutdown().await.unwrap();
}
