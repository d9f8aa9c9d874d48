//! The DLedger log of one replica on the real disk in a temporary directory: appends that
//! roll files, reads by index, a follower's appends and truncation, and recovery from crafted
//! damage (torn and flipped entries, a wrong or missing index, garbage checkpoints), each
//! asserting the exact recovered end and index.

use std::path::Path;
use std::sync::Arc;

use engine::dledger::entry::{decode_entry, DecodedEntry, EntryDecodeOptions, ENTRY_HEADER_BYTES};
use engine::dledger::index_unit::INDEX_UNIT_BYTES;
use engine::dledger::{CheckpointLoad, DLedgerConfig, DLedgerError, DLedgerPaths, EntryLog, EntryRecoveryReport};
use engine::io::real::RealStorage;
use engine::io::{Holds, Storage};
use engine::mapped_file_queue::DirSyncs;
use engine::message::{decode, DecodeOptions, Decoded, Message};

fn cfg() -> DLedgerConfig {
    DLedgerConfig {
        data_file_size_bytes: 8 * 1024,
        index_units_per_file: 16,
        max_entry_bytes: 2048,
        os_page_size_bytes: 4096,
    }
}

async fn open(root: &Path) -> (EntryLog, EntryRecoveryReport) {
    try_open(root).await.unwrap()
}

async fn try_open(root: &Path) -> Result<(EntryLog, EntryRecoveryReport), DLedgerError> {
    let storage: Arc<dyn Storage> = Arc::new(RealStorage::new());
    EntryLog::open(storage, DLedgerPaths::new(root, "n0"), cfg(), Holds::new(), Arc::new(DirSyncs::new(false))).await
}

fn record(phy: u64, i: u64) -> Message {
    Message {
        queue_id: (i % 2) as u32,
        queue_offset: i / 2,
        phy_offset: phy,
        born_timestamp_ms: 1_700_000_000_000,
        store_timestamp_ms: 1_700_000_000_000 + i as i64,
        body: vec![b'a' + (i % 26) as u8; 100 + (i as usize * 37) % 300],
        topic: "T".into(),
        properties: vec![("KEYS".into(), format!("k{i}"))],
        ..Message::default()
    }
}

/// Appends `n` entries (term `term`), each body a record whose PHYSICALOFFSET is its position.
fn append_n(log: &mut EntryLog, from: u64, n: u64, term: u64) -> Vec<engine::dledger::EntryHeader> {
    (from..from + n)
        .map(|i| {
            let len = record(0, i).record_len();
            log.append(term, len, |phy, out| record(phy, i).encode_into(out).unwrap()).unwrap()
        })
        .collect()
}

async fn flush(log: &mut EntryLog) {
    let plan = log.flush_plan();
    EntryLog::run_flush(log.storage(), log.dirs(), &plan).await.unwrap();
    log.flushed(&plan);
}

async fn commit(log: &mut EntryLog, index: u64) {
    flush(log).await;
    log.set_committed(index);
    let (file, c) = log.checkpoint(false);
    file.write(&c).await.unwrap();
}

fn data_file(root: &Path, pos: u64) -> std::path::PathBuf {
    let size = cfg().data_file_size_bytes;
    root.join("dledger-n0").join("data").join(format!("{:020}", pos / size * size))
}

fn poke(path: &Path, at: u64, bytes: &[u8]) {
    RealStorage::new().open(path).unwrap().write_at(at, bytes).unwrap();
}

fn poke_data(root: &Path, pos: u64, bytes: &[u8]) {
    poke(&data_file(root, pos), pos % cfg().data_file_size_bytes, bytes);
}

#[tokio::test]
async fn appends_roll_files_and_read_back_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, rep) = open(dir.path()).await;
    assert_eq!(rep.tail.next_index, 0);
    let hs = append_n(&mut log, 0, 60, 1);
    assert!(log.end_pos() > 3 * cfg().data_file_size_bytes, "several files rolled");
    commit(&mut log, 59).await;
    drop(log);
    let (log, rep) = open(dir.path()).await;
    assert_eq!(rep.tail.next_index, 60);
    assert_eq!(rep.stopped_at, None);
    assert_eq!(rep.index_rewritten_from, None);
    assert_eq!(rep.committed_index, Some(59));
    assert_eq!(rep.committed_pos, hs[59].end_pos());
    assert!(rep.scan_start_pos > 0, "the scan starts at the third-last file");
    let mut buf = Vec::new();
    for (i, h) in hs.iter().enumerate() {
        assert_eq!(log.read_entry(i as u64, &mut buf).unwrap(), *h);
        let Decoded::Valid(m, _) = decode(&buf[ENTRY_HEADER_BYTES as usize..], &DecodeOptions::default()) else {
            panic!("entry {i} carries a record")
        };
        assert_eq!(m.phy_offset, h.pos + ENTRY_HEADER_BYTES, "PHYSICALOFFSET is the entry position + 48");
        assert_eq!(m, record(h.body_pos(), i as u64));
    }
    assert!(matches!(log.read_entry(60, &mut buf), Err(DLedgerError::NoSuchEntry { .. })));
}

#[tokio::test]
async fn a_follower_takes_the_leaders_bytes_and_truncates_its_uncommitted_suffix() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut leader, _) = open(a.path()).await;
    let (mut follower, _) = open(b.path()).await;
    append_n(&mut leader, 0, 40, 1);
    let mut buf = Vec::new();
    for i in 0..40 {
        leader.read_entry(i, &mut buf).unwrap();
        follower.append_replicated(&buf).unwrap();
    }
    assert_eq!(follower.tail(), leader.tail());
    assert_eq!(follower.end_pos(), leader.end_pos());
    // Out of order, repeated, or from a forked history: refused, nothing written.
    leader.read_entry(39, &mut buf).unwrap();
    assert!(matches!(follower.append_replicated(&buf), Err(DLedgerError::Discontinuous { .. })));
    let mut garbage = buf.clone();
    garbage[60] ^= 0xFF;
    assert!(matches!(follower.append_replicated(&garbage), Err(DLedgerError::CorruptEntry { .. })));
    assert!(matches!(follower.append_replicated(&buf[..30]), Err(DLedgerError::CorruptEntry { .. })));
    commit(&mut follower, 29).await;
    assert!(matches!(follower.truncate_from(20, false), Err(DLedgerError::TruncatesCommitted { .. })));
    follower.truncate_from(30, false).unwrap();
    assert_eq!(follower.tail().next_index, 30);
    // A new leader's entries of term 2 continue the kept prefix.
    let mut other = leader;
    other.truncate_from(30, true).unwrap();
    let new = append_n(&mut other, 30, 15, 2);
    for i in 30..45 {
        other.read_entry(i, &mut buf).unwrap();
        follower.append_replicated(&buf).unwrap();
    }
    flush(&mut follower).await;
    drop(follower);
    let (follower, rep) = open(b.path()).await;
    assert_eq!(rep.tail.next_index, 45);
    assert_eq!(rep.tail.last_term, 2);
    assert_eq!(rep.stopped_at, None);
    assert_eq!(rep.committed_index, Some(29));
    assert_eq!(follower.read_entry(44, &mut buf).unwrap(), new[14]);
}

async fn setup(n: u64) -> (tempfile::TempDir, Vec<engine::dledger::EntryHeader>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path()).await;
    let hs = append_n(&mut log, 0, n, 1);
    commit(&mut log, n / 2).await;
    (dir, hs)
}

#[tokio::test]
async fn a_torn_last_entry_is_cut_and_zeroed() {
    let (dir, hs) = setup(30).await;
    let last = hs[29];
    poke_data(dir.path(), last.pos + 60, &vec![0u8; (last.size_bytes() - 60) as usize]);
    let (mut log, rep) = open(dir.path()).await;
    assert_eq!(rep.end_pos, last.pos);
    assert_eq!(rep.tail.next_index, 29);
    assert!(rep.stopped_at.is_some());
    assert_eq!(rep.committed_index, Some(15));
    let raw = std::fs::read(data_file(dir.path(), last.pos)).unwrap();
    let at = (last.pos % cfg().data_file_size_bytes) as usize;
    assert!(raw[at..].iter().all(|&b| b == 0), "the cut tail is zeroed");
    // The next entry takes the cut one's place.
    let h = append_n(&mut log, 29, 1, 1)[0];
    assert_eq!((h.index, h.pos), (29, last.pos));
}

#[tokio::test]
async fn a_flipped_body_in_the_middle_cuts_the_log_there() {
    let (dir, hs) = setup(40).await;
    let bad = hs[35];
    poke_data(dir.path(), bad.pos + ENTRY_HEADER_BYTES + 20, &[0xEE]);
    let (log, rep) = open(dir.path()).await;
    assert_eq!(rep.tail.next_index, 35);
    assert_eq!(rep.end_pos, bad.pos);
    assert!(rep.stopped_at.as_ref().unwrap().1.contains("BodyCrc"), "{:?}", rep.stopped_at);
    assert!(log.index_unit(35).is_err(), "the index is cut after the last entry");
    let idx =
        std::fs::read(dir.path().join("dledger-n0/index").join(format!("{:020}", 32 * INDEX_UNIT_BYTES))).unwrap();
    let at = ((35 - 32) * INDEX_UNIT_BYTES) as usize;
    assert!(idx[at..].iter().all(|&b| b == 0), "stale index units are zeroed");
}

#[tokio::test]
async fn a_header_flip_no_crc_covers_breaks_the_chain() {
    let (dir, hs) = setup(30).await;
    let bad = hs[27];
    // The channel field (offset 32) is covered only by the chain CRC.
    poke_data(dir.path(), bad.pos + 35, &[0x01]);
    let (_, rep) = open(dir.path()).await;
    assert_eq!(rep.tail.next_index, 27);
    assert!(rep.stopped_at.as_ref().unwrap().1.contains("chain"), "{:?}", rep.stopped_at);
}

#[tokio::test]
async fn a_wrong_or_missing_index_is_rewritten_from_the_data() {
    let (dir, hs) = setup(40).await;
    let index_dir = dir.path().join("dledger-n0/index");
    // Garbage in the unit of entry 33, and the last index file removed.
    poke(&index_dir.join(format!("{:020}", 32 * INDEX_UNIT_BYTES)), INDEX_UNIT_BYTES, &[7u8; 32]);
    let (log, rep) = open(dir.path()).await;
    assert_eq!(rep.index_rewritten_from, Some(33));
    assert_eq!(rep.index_units_rewritten, 7);
    assert_eq!(rep.tail.next_index, 40);
    let mut buf = Vec::new();
    for i in 0..40 {
        assert_eq!(log.read_entry(i, &mut buf).unwrap(), hs[i as usize]);
    }
    drop(log);
    for name in std::fs::read_dir(&index_dir).unwrap() {
        std::fs::remove_file(name.unwrap().path()).unwrap();
    }
    let (log, rep) = open(dir.path()).await;
    assert_eq!(rep.index_rewritten_from, Some(0));
    assert_eq!(rep.scan_start_pos, 0, "no file's first entry matches its unit: scan from the first");
    assert_eq!(log.read_entry(39, &mut buf).unwrap(), hs[39]);
}

#[tokio::test]
async fn a_garbage_checkpoint_commits_nothing_and_one_ahead_of_the_log_is_bounded() {
    let (dir, _) = setup(30).await;
    let ckpt = dir.path().join("dledger-n0/checkpoint");
    poke(&ckpt, 3, b"garbage");
    let (mut log, rep) = open(dir.path()).await;
    assert!(matches!(rep.checkpoint, Some(CheckpointLoad::Corrupt(_))));
    assert_eq!(rep.committed_index, None);
    assert_eq!(rep.tail.next_index, 30, "no entry is lost for a bad checkpoint");
    // A checkpoint written ahead of durable entries (the catalogued bug) is bounded at load.
    log.set_committed(29);
    log.truncate_from(30, false).unwrap();
    let (file, c) = log.checkpoint(true);
    file.write(&engine::dledger::DLedgerCheckpoint { committed_index: Some(90), ..c }).await.unwrap();
    drop(log);
    let (_, rep) = open(dir.path()).await;
    assert!(rep.checkpoint_ahead_of_log);
    assert_eq!(rep.committed_index, Some(29));
}

#[tokio::test]
async fn entries_too_large_and_bad_configs_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path()).await;
    let r = log.append(1, 4000, |_, out| out.resize(out.len() + 4000, 0));
    assert!(matches!(r, Err(DLedgerError::EntryTooLarge { .. })));
    append_n(&mut log, 0, 1, 3);
    assert!(matches!(
        log.append(2, 10, |_, out| out.resize(out.len() + 10, 0)),
        Err(DLedgerError::Discontinuous { .. })
    ));
    let bad = DLedgerConfig { max_entry_bytes: 9000, ..cfg() };
    let storage: Arc<dyn Storage> = Arc::new(RealStorage::new());
    let r =
        EntryLog::open(storage, DLedgerPaths::new(dir.path(), "n1"), bad, Holds::new(), Arc::new(DirSyncs::new(false)))
            .await;
    assert!(matches!(r, Err(DLedgerError::Config(_))));
}

#[tokio::test]
async fn a_blank_is_decoded_at_every_file_end() {
    let (dir, hs) = setup(60).await;
    let size = cfg().data_file_size_bytes;
    let files = hs.last().unwrap().pos / size;
    let opts = EntryDecodeOptions::default();
    for f in 0..files {
        let raw = std::fs::read(data_file(dir.path(), f * size)).unwrap();
        let last = hs.iter().filter(|h| h.pos / size == f).last().unwrap();
        let at = (last.end_pos() % size) as usize;
        assert_eq!(decode_entry(&raw[at..], &opts), DecodedEntry::Blank { remaining_bytes: size - at as u64 });
    }
}

/// A small deterministic generator for the damage below (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

#[tokio::test]
async fn random_damage_never_panics_and_recovers_a_prefix() {
    for seed in 1..=60u64 {
        let (dir, hs) = setup(30).await;
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let node = dir.path().join("dledger-n0");
        let mut targets: Vec<std::path::PathBuf> = vec![node.join("checkpoint")];
        for sub in ["data", "index"] {
            for e in std::fs::read_dir(node.join(sub)).unwrap() {
                targets.push(e.unwrap().path());
            }
        }
        targets.sort();
        for _ in 0..1 + rng.below(4) {
            let path = &targets[rng.below(targets.len() as u64) as usize];
            let len = std::fs::metadata(path).unwrap().len();
            let at = rng.below(len);
            match rng.below(3) {
                0 => poke(path, at, &[rng.below(256) as u8]),
                1 => poke(path, at, &vec![0u8; rng.below(300) as usize + 1]),
                _ => poke(path, at, &(0..8).map(|_| rng.below(256) as u8).collect::<Vec<_>>()),
            }
        }
        let Ok((log, rep)) = try_open(dir.path()).await else { continue };
        assert!(rep.tail.next_index <= 30, "seed {seed}: {rep:?}");
        let mut buf = Vec::new();
        for i in 0..rep.tail.next_index {
            if let Ok(h) = log.read_entry(i, &mut buf) {
                assert_eq!(h, hs[i as usize], "seed {seed}: entry {i} is the one appended");
            }
        }
        if let Some(c) = rep.committed_index {
            assert!(c < rep.tail.next_index, "seed {seed}: committed within the log");
        }
    }
}

#[tokio::test]
async fn the_term_and_vote_survive_a_restart_and_garbage_is_an_error() {
    use engine::dledger::term::{TermFile, TermRecord};
    let dir = tempfile::tempdir().unwrap();
    let st = RealStorage::new();
    let path = dir.path().join("currterm");
    let (file, rec) = TermFile::open(&st, &path).unwrap();
    assert_eq!(rec, TermRecord::default());
    file.write(&TermRecord { term: 7, voted_for: Some(3) }).await.unwrap();
    let (_, rec) = TermFile::open(&st, &path).unwrap();
    assert_eq!(rec, TermRecord { term: 7, voted_for: Some(3) });
    poke(&path, 5, b"xx");
    assert!(matches!(TermFile::open(&st, &path), Err(DLedgerError::BadRecord { .. })));
}

#[tokio::test]
async fn a_flush_planned_before_a_truncation_does_not_vouch_for_later_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path()).await;
    append_n(&mut log, 0, 10, 1);
    flush(&mut log).await;
    assert_eq!(log.durable_next_index(), 10);
    append_n(&mut log, 10, 5, 1);
    let plan = log.flush_plan();
    log.truncate_from(12, false).unwrap();
    append_n(&mut log, 12, 4, 2);
    EntryLog::run_flush(log.storage(), log.dirs(), &plan).await.unwrap();
    log.flushed(&plan);
    assert!(log.durable_next_index() <= 12, "entries 12.. of term 2 were written after the plan");
    flush(&mut log).await;
    assert_eq!(log.durable_next_index(), 16);
}

/// The first entry that rolled to a new file, and its index.
fn first_roll(hs: &[engine::dledger::EntryHeader]) -> usize {
    let size = cfg().data_file_size_bytes;
    hs.iter().position(|h| h.pos > 0 && h.pos % size == 0).expect("an entry rolled")
}

#[tokio::test]
async fn a_roll_that_never_finished_ends_the_log_at_its_blank() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path()).await;
    let hs = append_n(&mut log, 0, 30, 1);
    let k = first_roll(&hs);
    flush(&mut log).await;
    drop(log);
    // The new file is gone (its creation failed after the blank was written): the entry that
    // rolled and everything after it never existed.
    for h in &hs[k..] {
        let _ = std::fs::remove_file(data_file(dir.path(), h.pos));
    }
    let (mut log, rep) = open(dir.path()).await;
    assert_eq!(rep.tail.next_index, k as u64);
    assert_eq!(rep.end_pos, hs[k - 1].end_pos(), "the log ends at the blank, not at the file's end");
    // The next entry decides anew: a small one fits where the blank was, as on a replica that
    // never saw the roll.
    let h = log.append(2, 10, |_, out| out.extend_from_slice(&[7; 10])).unwrap();
    assert_eq!(h.pos, hs[k - 1].end_pos());
}

#[tokio::test]
async fn a_truncation_before_a_rolled_entry_drops_the_blank_too() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path()).await;
    let hs = append_n(&mut log, 0, 30, 1);
    let k = first_roll(&hs);
    log.truncate_from(k as u64, false).unwrap();
    assert_eq!(log.end_pos(), hs[k - 1].end_pos());
    let h = log.append(2, 10, |_, out| out.extend_from_slice(&[7; 10])).unwrap();
    assert_eq!(h.pos, hs[k - 1].end_pos());
    flush(&mut log).await;
    drop(log);
    let (log, rep) = open(dir.path()).await;
    assert_eq!(rep.tail.next_index, k as u64 + 1);
    assert_eq!(log.end_pos(), h.end_pos());
}
