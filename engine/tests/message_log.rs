//! One dispatch over either log: the same messages appended to a local commit log and to a
//! DLedger entry log give the same consume queues through `dispatch_log`, each unit pointing
//! at its record (on the entry log, the entry's position + 48), and dispatch never passes
//! the log's dispatch bound (the entry log's committed entries).

use std::sync::Arc;

use engine::commit_log::{CommitLog, PutRef};
use engine::consume_queue::CqUnit;
use engine::dledger::{DLedgerConfig, DLedgerPaths, EntryLog, ENTRY_HEADER_BYTES};
use engine::io::real::RealStorage;
use engine::io::{Holds, Storage};
use engine::java_hash::java_string_hash;
use engine::mapped_file_queue::DirSyncs;
use engine::message::Message;
use engine::message_log::{dispatch_log, CqMap, MessageLog, QueueFiles};

const N: u64 = 40;
const T0_MS: i64 = 1_700_000_000_000;

fn files(storage: &Arc<dyn Storage>, root: &std::path::Path) -> QueueFiles {
    QueueFiles {
        storage: storage.clone(),
        root: root.to_path_buf(),
        units_per_file: 16,
        holds: Holds::new(),
        dirs: Arc::new(DirSyncs::new(false)),
    }
}

fn body(i: u64) -> Vec<u8> {
    vec![b'a' + (i % 26) as u8; 10 + (i as usize * 7) % 40]
}

/// Every queue's units, in queue-offset order.
fn units(queues: &CqMap) -> Vec<((String, u32), Vec<CqUnit>)> {
    queues
        .iter()
        .map(|(k, cq)| (k.clone(), (0..cq.max_offset_in_queue()).map(|i| cq.unit(i).unwrap().unwrap()).collect()))
        .collect()
}

#[tokio::test]
async fn one_dispatch_over_the_local_and_the_dledger_log() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(RealStorage::new());
    let (holds, dirs) = (Holds::new(), Arc::new(DirSyncs::new(false)));

    // The local log: appends are written into the files, so all of it is dispatchable.
    let cl_dir = dir.path().join("local");
    let (mut cl, _) = CommitLog::load(
        storage.as_ref(),
        cl_dir.join("commitlog"),
        8 * 1024,
        holds.clone(),
        dirs.clone(),
        None,
        4096,
        [0; 8],
    )
    .unwrap();
    let mut local_phys = Vec::new();
    for i in 0..N {
        let b = body(i);
        let r = cl.append(storage.as_ref(), &PutRef::new("T", (i % 2) as u32, &b, Some("tag"), &[]), T0_MS).unwrap();
        assert_eq!(r.queue_offset, i / 2);
        local_phys.push((r.phy_offset, r.size_bytes));
    }
    assert_eq!(MessageLog::dispatch_bound(&cl).unwrap(), MessageLog::max_offset(&cl));

    // The entry log: the same messages, the last ten not committed.
    let paths = DLedgerPaths::new(&dir.path().join("dledger"), "n0");
    let cfg = DLedgerConfig {
        data_file_size_bytes: 8 * 1024,
        index_units_per_file: 64,
        max_entry_bytes: 2048,
        os_page_size_bytes: 4096,
    };
    let (mut log, _) = EntryLog::open(storage.clone(), paths, cfg, holds.clone(), dirs.clone()).await.unwrap();
    let mut entry_phys = Vec::new();
    for i in 0..N {
        let msg = |phy: u64| Message {
            queue_id: (i % 2) as u32,
            queue_offset: i / 2,
            phy_offset: phy,
            born_timestamp_ms: T0_MS,
            store_timestamp_ms: T0_MS,
            body: body(i),
            topic: "T".into(),
            properties: vec![("TAGS".into(), "tag".into())],
            ..Message::default()
        };
        let len = msg(0).record_len();
        let h = log.append(1, len, |phy, out| msg(phy).encode_into(out).unwrap()).unwrap();
        assert_eq!(h.body_pos(), h.pos + ENTRY_HEADER_BYTES);
        entry_phys.push((h.body_pos(), len as u32));
    }
    let plan = log.flush_plan();
    EntryLog::run_flush(log.storage(), log.dirs(), &plan).await.unwrap();
    log.flushed(&plan);
    log.set_committed(N - 11);
    assert!(MessageLog::dispatch_bound(&log).unwrap() < MessageLog::max_offset(&log));

    let mut local_queues = CqMap::new();
    let run = dispatch_log(&cl, 0, &files(&storage, &cl_dir), &mut local_queues).unwrap();
    assert_eq!((run.messages, run.end, run.stopped_at), (N, MessageLog::max_offset(&cl), None));
    let mut entry_queues = CqMap::new();
    let entry_root = dir.path().join("dledger");
    let run = dispatch_log(&log, 0, &files(&storage, &entry_root), &mut entry_queues).unwrap();
    assert_eq!(run.messages, N - 10, "only the committed entries are dispatched");
    assert_eq!(run.end, MessageLog::dispatch_bound(&log).unwrap());
    // Dispatching again from where it stopped finds nothing new; the units stay as they are.
    let again = dispatch_log(&log, run.end, &files(&storage, &entry_root), &mut entry_queues).unwrap();
    assert_eq!(again.messages, 0);

    let tags_code = i64::from(java_string_hash("tag"));
    for (queues, phys, count) in [(&local_queues, &local_phys, N), (&entry_queues, &entry_phys, N - 10)] {
        let got = units(queues);
        assert_eq!(got.len(), 2, "two queues");
        for ((topic, q), us) in got {
            assert_eq!(topic, "T");
            let expected: Vec<CqUnit> = (0..count)
                .filter(|i| i % 2 == u64::from(q))
                .map(|i| CqUnit { phy_offset: phys[i as usize].0 as i64, size: phys[i as usize].1 as i32, tags_code })
                .collect();
            assert_eq!(us, expected, "queue {q}: one unit per message, at its record");
        }
    }
}
