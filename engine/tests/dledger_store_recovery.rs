//! The store's recovery in DLedger mode over a recovered entry log: consume queues rebuilt
//! from the messages inside the entries, with 5.3's fix, and with the catalogued #8032 and
//! #9084 mechanisms, each shown to lose consume-queue units the fix keeps.

use std::path::Path;
use std::sync::Arc;

use engine::consume_queue::ConsumeQueue;
use engine::dledger::store_recovery::{committed_pos, recover_store, Queues, StoreRecoveryBugs, StoreRecoveryReport};
use engine::dledger::{DLedgerConfig, DLedgerPaths, EntryLog};
use engine::io::real::RealStorage;
use engine::io::{Holds, Storage};
use engine::mapped_file_queue::DirSyncs;
use engine::message::{DecodeOptions, Message};
use engine::message_log::{dispatch_log, QueueFiles};

const N: u64 = 60;
const T0_MS: i64 = 1_700_000_000_000;

fn cfg() -> DLedgerConfig {
    DLedgerConfig {
        data_file_size_bytes: 8 * 1024,
        index_units_per_file: 64,
        max_entry_bytes: 2048,
        os_page_size_bytes: 4096,
    }
}

struct Env {
    dir: tempfile::TempDir,
    storage: Arc<dyn Storage>,
    holds: Holds,
    dirs: Arc<DirSyncs>,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            storage: Arc::new(RealStorage::new()),
            holds: Holds::new(),
            dirs: Arc::new(DirSyncs::new(false)),
        }
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn files(&self) -> QueueFiles {
        QueueFiles {
            storage: self.storage.clone(),
            root: self.root().to_path_buf(),
            units_per_file: 16,
            holds: self.holds.clone(),
            dirs: self.dirs.clone(),
        }
    }
    async fn open_log(&self) -> EntryLog {
        let paths = DLedgerPaths::new(self.root(), "n0");
        EntryLog::open(self.storage.clone(), paths, cfg(), self.holds.clone(), self.dirs.clone()).await.unwrap().0
    }
    /// The consume queues as a restart finds them (each recovered from its files).
    fn load_queues(&self) -> Queues {
        let mut qs = Queues::new();
        for q in 0..2u32 {
            let (mut cq, _) = ConsumeQueue::load(
                self.storage.as_ref(),
                self.root(),
                "T",
                q,
                16,
                self.holds.clone(),
                self.dirs.clone(),
            )
            .unwrap();
            cq.recover(self.storage.as_ref(), false).unwrap();
            qs.insert(("T".to_string(), q), cq);
        }
        qs
    }
}

fn record(phy: u64, i: u64) -> Message {
    Message {
        queue_id: (i % 2) as u32,
        queue_offset: i / 2,
        phy_offset: phy,
        born_timestamp_ms: T0_MS,
        store_timestamp_ms: T0_MS + i as i64 * 100,
        body: vec![b'a' + (i % 26) as u8; 10 + (i as usize * 7) % 40],
        topic: "T".into(),
        properties: vec![("KEYS".into(), format!("k{i}")), ("TAGS".into(), "tag".into())],
        ..Message::default()
    }
}

/// `N` committed, dispatched entries; then a crash (nothing shut down).
async fn setup() -> (Env, u64) {
    let env = Env::new();
    let mut log = env.open_log().await;
    for i in 0..N {
        let len = record(0, i).record_len();
        log.append(1, len, |phy, out| record(phy, i).encode_into(out).unwrap()).unwrap();
    }
    let plan = log.flush_plan();
    EntryLog::run_flush(log.storage(), log.dirs(), &plan).await.unwrap();
    log.flushed(&plan);
    log.set_committed(N - 1);
    let (file, c) = log.checkpoint(false);
    file.write(&c).await.unwrap();
    let mut queues = Queues::new();
    let run = dispatch_log(&log, 0, &env.files(), &mut queues).unwrap();
    assert_eq!(run.messages, N);
    let end = committed_pos(&log).unwrap();
    assert_eq!(run.end, end);
    (env, end)
}

/// Restart: the entry log recovers, then the store's recovery, then dispatch from where it
/// says. Returns the report and each queue's units as (queue offset, message position).
async fn restart(env: &Env, clean: bool, min_ts_ms: i64, bugs: StoreRecoveryBugs) -> (StoreRecoveryReport, Queues) {
    let log = env.open_log().await;
    let mut queues = env.load_queues();
    let (rep, _) =
        recover_store(&log, &env.files(), &mut queues, clean, min_ts_ms, DecodeOptions::default(), bugs).unwrap();
    dispatch_log(&log, rep.reput_from, &env.files(), &mut queues).unwrap();
    (rep, queues)
}

fn assert_complete(queues: &Queues) {
    for ((_, q), cq) in queues {
        assert_eq!(cq.max_offset_in_queue(), N / 2, "queue {q} holds every message");
        let mut last = 0;
        for i in 0..N / 2 {
            let u = cq.unit(i).unwrap().expect("unit");
            assert!(u.phy_offset as u64 > last, "units in log order");
            last = u.phy_offset as u64;
        }
    }
}

#[tokio::test]
async fn abnormal_recovery_keeps_every_consume_queue_complete() {
    let (env, end) = setup().await;
    // Checkpoint old enough to scan from the first file, and recent enough for a later one.
    for min_ts in [0, T0_MS + 50 * 100] {
        let (rep, queues) = restart(&env, false, min_ts, StoreRecoveryBugs::default()).await;
        assert_eq!(rep.process_offset, end, "the scan ends at the committed position");
        assert_eq!(rep.stopped_at, None);
        assert!(rep.cq_units_removed.is_empty(), "{:?}", rep.cq_units_removed);
        assert_eq!(rep.reput_from, end);
        assert_complete(&queues);
        if min_ts > 0 {
            assert!(rep.scan_start_pos > 0, "a checkpoint-matched start file");
        }
    }
    let (rep, queues) = restart(&env, true, 0, StoreRecoveryBugs::default()).await;
    assert!(!rep.abnormal);
    assert!(rep.cq_units_removed.is_empty());
    assert_complete(&queues);
}

#[tokio::test]
async fn bug_8032_deletes_every_consume_queue_and_never_rebuilds_them() {
    let (env, end) = setup().await;
    let bugs = StoreRecoveryBugs::from_bugs(&engine::BugSet::of(&[engine::Bug::RecoveryCheckFlagMiswired]));
    let (rep, queues) = restart(&env, false, 0, bugs).await;
    assert_eq!(rep.scan_start_pos, 0);
    assert_eq!(rep.process_offset, 0, "the first message fails the DUP_INFO check");
    assert!(rep.stopped_at.as_ref().unwrap().1.contains("DupInfo"), "{:?}", rep.stopped_at);
    assert_eq!(rep.reput_from, end, "dispatch resumes at the committed position");
    for cq in queues.values() {
        assert_eq!(cq.max_offset_in_queue(), 0, "every unit is gone and the next message reuses offset 0");
    }
}

/// #9084: the scan's end falls short and the consume queues lose their tail.
#[tokio::test]
async fn dledger_size_without_header() {
    let (env, end) = setup().await;
    let bugs = StoreRecoveryBugs::from_bugs(&engine::BugSet::of(&[engine::Bug::DledgerSizeWithoutHeader]));
    let (rep, queues) = restart(&env, false, T0_MS + 50 * 100, bugs).await;
    assert!(rep.process_offset < end, "sizes without the 48-byte header fall short");
    let removed: u64 = rep.cq_units_removed.values().sum();
    assert!(removed > 0, "{rep:?}");
    let held: u64 = queues.values().map(ConsumeQueue::max_offset_in_queue).sum();
    assert_eq!(held, N - removed, "the removed units are never rebuilt");
}
