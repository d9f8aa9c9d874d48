//! The member as the real node (`examples/dledger_node.rs`) drives it: appends pipelined from
//! the leader's own cursor (`Member::append_from`) ahead of the follower's replies, the
//! checkpoint left to the caller (`Member::defer_checkpoint`) and the log's syncs overlapped
//! (`Member::overlap_syncs`). The entries stay where Raft needs them, and a stale checkpoint
//! costs no entry at a restart.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use engine::dledger::member::Member;
use engine::dledger::raft::Role;
use engine::dledger::{DLedgerConfig, DLedgerPaths};
use engine::io::real::RealStorage;
use engine::io::{Holds, Storage};
use engine::mapped_file_queue::DirSyncs;
use engine::BugSet;

fn cfg() -> DLedgerConfig {
    DLedgerConfig {
        data_file_size_bytes: 4 * 1024,
        index_units_per_file: 16,
        max_entry_bytes: 1024,
        os_page_size_bytes: 4096,
    }
}

async fn open(root: &Path, id: u32) -> (Member, Option<u64>) {
    let storage: Arc<dyn Storage> = Arc::new(RealStorage::new());
    let paths = DLedgerPaths::new(root, &format!("n{id}"));
    let dirs = Arc::new(DirSyncs::new(false));
    let (mut m, report) =
        Member::open(storage, paths, cfg(), Holds::new(), dirs, id, BTreeSet::from([1, 2, 3]), BugSet::none())
            .await
            .unwrap();
    m.defer_checkpoint(true);
    m.overlap_syncs(true);
    (m, report.committed_index)
}

#[tokio::test]
async fn pipelined_appends_commit_and_a_deferred_checkpoint_loses_nothing() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut leader, _) = open(dirs[0].path(), 1).await;
    let (mut follower, _) = open(dirs[1].path(), 2).await;
    let req = leader.start_election().await.unwrap();
    let vote = follower.on_vote_request(&req).await.unwrap();
    assert!(leader.on_vote_reply(&vote).await.unwrap());
    assert_eq!(leader.raft.role, Role::Leader);
    for k in 0..10u8 {
        leader.append(40, |_, out| out.extend(std::iter::repeat_n(k, 40))).unwrap();
    }
    assert_eq!(leader.flush().await.unwrap(), None, "the leader alone is no majority");

    // Two appends leave before either reply is back: the second from where the first ended.
    let first = leader.append_from(0, 4).unwrap();
    let second = leader.append_from(4, 100).unwrap();
    assert_eq!((first.entries.len(), second.entries.len()), (4, 6));
    assert_eq!(second.request.prev.map(|(i, _)| i), Some(3));
    let r1 = follower.on_append(&first.request, &first.entries).await.unwrap();
    let r2 = follower.on_append(&second.request, &second.entries).await.unwrap();
    assert!(r1.success && r2.success);
    assert_eq!(leader.on_append_reply(&r1).await.unwrap(), Some(3));
    assert_eq!(leader.on_append_reply(&r2).await.unwrap(), Some(9));
    // A late duplicate of the first is harmless: the follower holds those entries already.
    let again = follower.on_append(&first.request, &first.entries).await.unwrap();
    assert!(again.success);
    assert_eq!(follower.log.tail().last_index(), Some(9), "nothing dropped by the duplicate");
    let heartbeat = leader.append_from(10, 100).unwrap();
    assert!(heartbeat.entries.is_empty());
    follower.on_append(&heartbeat.request, &heartbeat.entries).await.unwrap();
    assert_eq!(follower.log.committed_index(), Some(9));

    // Deferred: the follower's checkpoint file still says nothing is committed; its entries
    // are all recovered all the same.
    drop(follower);
    let (follower, committed) = open(dirs[1].path(), 2).await;
    assert_eq!(committed, None, "the checkpoint was not written");
    assert_eq!(follower.log.tail().last_index(), Some(9), "a stale checkpoint loses no entry");
    // Written on request, it names the commit the log recorded.
    leader.persist_checkpoint().await.unwrap();
    drop(leader);
    let (_, committed) = open(dirs[0].path(), 1).await;
    assert_eq!(committed, Some(9));
}
