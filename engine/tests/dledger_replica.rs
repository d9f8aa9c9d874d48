//! A DLedger replica as a broker runs it (`dledger::replica`), as a group of one: puts
//! committed and dispatched into consume queues and read back, across a crash (abnormal
//! recovery), a clean shutdown (normal recovery), with #8032 switched on (the queues of tagged
//! messages lost: the check needs a property to look at),
//! and a term file created but never written (a crash right after creating it).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use engine::dledger::raft::Role;
use engine::dledger::replica::{PutRequest, Replica, ReplicaConfig};
use engine::dledger::{DLedgerConfig, DLedgerError};
use engine::io::real::RealStorage;
use engine::io::{Clock, Storage, SystemClock};
use engine::{Bug, BugSet};

fn config(root: &Path, bugs: BugSet) -> ReplicaConfig {
    ReplicaConfig {
        root: root.to_path_buf(),
        self_id: 1,
        members: BTreeSet::from([1]),
        log: DLedgerConfig {
            data_file_size_bytes: 8 * 1024,
            index_units_per_file: 64,
            max_entry_bytes: 2048,
            os_page_size_bytes: 4096,
        },
        cq_units_per_file: 16,
        bugs,
    }
}

async fn open(root: &Path, bugs: BugSet) -> Replica {
    let storage: Arc<dyn Storage> = Arc::new(RealStorage::new());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Replica::open(storage, clock, config(root, bugs)).await.unwrap()
}

/// Elects the replica (a group of one), puts `n` messages, commits and dispatches them.
async fn put_committed(r: &mut Replica, from: u64, n: u64) {
    if r.member.raft.role != Role::Leader {
        r.member.start_election().await.unwrap();
    }
    for i in from..from + n {
        let body = format!("m{i}").into_bytes();
        let a = r
            .put(PutRequest { topic: "T", queue_id: (i % 2) as u32, body: &body, tags: Some("t"), keys: &[] })
            .unwrap();
        assert_eq!(a.queue_offset, i / 2);
    }
    r.member.flush().await.unwrap();
    r.dispatch().unwrap();
}

fn bodies(r: &Replica, queue_id: u32) -> Vec<String> {
    r.get("T", queue_id, 0, 1000).unwrap().into_iter().map(|m| String::from_utf8(m.body).unwrap()).collect()
}

#[tokio::test]
async fn puts_survive_crashes_and_clean_restarts_and_offsets_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), BugSet::none()).await;
    assert!(matches!(
        r.put(PutRequest { topic: "T", queue_id: 0, body: b"x", tags: None, keys: &[] }),
        Err(DLedgerError::NotLeader { .. })
    ));
    put_committed(&mut r, 0, 40).await;
    assert_eq!(bodies(&r, 0).len(), 20);
    drop(r);
    let mut r = open(dir.path(), BugSet::none()).await;
    assert!(r.store_report.abnormal, "no clean shutdown: the abort file stayed");
    assert_eq!(bodies(&r, 1), (0..20).map(|i| format!("m{}", 2 * i + 1)).collect::<Vec<_>>());
    put_committed(&mut r, 40, 10).await;
    r.shutdown().await.unwrap();
    drop(r);
    let r = open(dir.path(), BugSet::none()).await;
    assert!(!r.store_report.abnormal);
    assert_eq!(bodies(&r, 0).len(), 25, "offsets continued after the crash");
}

#[tokio::test]
async fn bug_8032_empties_the_queues_of_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), BugSet::none()).await;
    put_committed(&mut r, 0, 20).await;
    drop(r);
    let r = open(dir.path(), BugSet::of(&[Bug::RecoveryCheckFlagMiswired])).await;
    assert!(bodies(&r, 0).is_empty() && bodies(&r, 1).is_empty(), "every unit cut, never rebuilt");
    assert_eq!(r.queue_ends().values().sum::<u64>(), 0);
}

#[tokio::test]
async fn a_term_file_created_but_never_written_is_term_zero() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path(), BugSet::none()).await;
    drop(r);
    // A crash after the term file was created and before its first record was synced.
    let term = dir.path().join("dledger-n1").join("currterm");
    std::fs::write(&term, vec![0u8; 4096]).unwrap();
    let r = open(dir.path(), BugSet::none()).await;
    assert_eq!((r.member.raft.term, r.member.raft.voted_for), (0, None));
    // Garbage is still an error, never a guess.
    drop(r);
    std::fs::write(&term, b"currTerm=zz\n").unwrap();
    let storage: Arc<dyn Storage> = Arc::new(RealStorage::new());
    assert!(Replica::open(storage, Arc::new(SystemClock), config(dir.path(), BugSet::none())).await.is_err());
}
