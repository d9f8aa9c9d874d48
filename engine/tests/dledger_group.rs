//! Three DLedger members exchanging Raft's messages in-process (no network): an election,
//! replication and commitment on a majority, a leader that crashes with an uncommitted
//! suffix, a new leader in a new term, and the old leader, restarted, dropping that suffix for
//! the new leader's entries. Every member's files are recovered from disk at restart.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use engine::dledger::member::Member;
use engine::dledger::raft::{AppendRequest, Role};
use engine::dledger::{DLedgerConfig, DLedgerError, DLedgerPaths};
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

async fn open(root: &Path, id: u32) -> Member {
    open_with(root, id, BugSet::none()).await
}

async fn open_with(root: &Path, id: u32, bugs: BugSet) -> Member {
    let storage: Arc<dyn Storage> = Arc::new(RealStorage::new());
    let paths = DLedgerPaths::new(root, &format!("n{id}"));
    let members = BTreeSet::from([1, 2, 3]);
    let dirs = Arc::new(DirSyncs::new(false));
    Member::open(storage, paths, cfg(), Holds::new(), dirs, id, members, bugs).await.unwrap().0
}

/// `member` wins an election with the votes of `voters`.
async fn elect(member: &mut Member, voters: &mut [&mut Member]) {
    let req = member.start_election().await.unwrap();
    for v in voters.iter_mut() {
        let reply = v.on_vote_request(&req).await.unwrap();
        assert!(reply.granted, "member {} votes for {}", v.raft.id, member.raft.id);
        member.on_vote_reply(&reply).await.unwrap();
    }
    assert_eq!(member.raft.role, Role::Leader);
}

fn append(leader: &mut Member, tag: u8, n: usize) {
    for k in 0..n {
        let len = 20 + k as u64;
        leader.append(len, |_, out| out.extend(std::iter::repeat_n(tag, len as usize))).unwrap();
    }
}

/// Replicates to `follower` until it matches the leader (stepping back on conflicts).
async fn replicate(leader: &mut Member, follower: &mut Member) -> Option<u64> {
    let mut committed = None;
    for _ in 0..64 {
        let out = leader.append_for(follower.raft.id, 8).unwrap();
        let reply = follower.on_append(&out.request, &out.entries).await.unwrap();
        committed = leader.on_append_reply(&reply).await.unwrap().or(committed);
        if reply.success && out.entries.is_empty() {
            return committed;
        }
    }
    panic!("replication did not converge");
}

fn entry_bytes(m: &Member, index: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    m.log.read_entry(index, &mut buf).unwrap();
    buf
}

#[tokio::test]
async fn elect_replicate_commit_and_drop_an_uncommitted_suffix() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut m1 = open(dirs[0].path(), 1).await;
    let mut m2 = open(dirs[1].path(), 2).await;
    let mut m3 = open(dirs[2].path(), 3).await;
    elect(&mut m1, &mut [&mut m2, &mut m3]).await;
    assert!(matches!(m2.append(10, |_, o| o.extend([0u8; 10])), Err(DLedgerError::NotLeader { .. })));
    append(&mut m1, b'a', 10);
    assert_eq!(m1.flush().await.unwrap(), None, "one durable copy is not a majority");
    assert_eq!(replicate(&mut m1, &mut m2).await, Some(9), "two of three commit");
    replicate(&mut m1, &mut m3).await;
    for m in [&m2, &m3] {
        assert_eq!(m.log.committed_index(), Some(9), "followers learn the commit");
        assert_eq!(entry_bytes(m, 9), entry_bytes(&m1, 9));
    }
    // The leader appends five more, durably, that reach nobody, and crashes.
    append(&mut m1, b'x', 5);
    m1.flush().await.unwrap();
    assert_eq!(m1.log.committed_index(), Some(9));
    drop(m1);
    // Member 2 leads term 2 and commits three entries with member 3.
    elect(&mut m2, &mut [&mut m3]).await;
    assert_eq!(m2.raft.term, 2);
    append(&mut m2, b'b', 3);
    m2.flush().await.unwrap();
    assert_eq!(replicate(&mut m2, &mut m3).await, Some(12));
    // Member 1 restarts from its files: term 1, its vote, 15 entries, 10 committed.
    let mut m1 = open(dirs[0].path(), 1).await;
    assert_eq!((m1.raft.term, m1.raft.voted_for), (1, Some(1)));
    assert_eq!(m1.log.tail().next_index, 15);
    assert_eq!(m1.log.committed_index(), Some(9));
    replicate(&mut m2, &mut m1).await;
    assert_eq!(m1.raft.term, 2, "the newer term is adopted (and persisted)");
    assert_eq!(m1.log.tail(), m2.log.tail(), "the uncommitted suffix of term 1 is gone");
    for i in 0..13 {
        assert_eq!(entry_bytes(&m1, i), entry_bytes(&m2, i), "entry {i}");
    }
    assert_eq!(m1.log.committed_index(), Some(12));
    drop(m1);
    let m1 = open(dirs[0].path(), 1).await;
    assert_eq!((m1.raft.term, m1.log.tail().next_index), (2, 13));
    // A forged append from a leader of term 3 that would drop committed entries is refused.
    let mut m3 = m3;
    let forged = AppendRequest { term: 3, leader: 1, prev: Some((4, 1)), entries: 1, leader_commit: None };
    let mut alien = entry_bytes(&m2, 5);
    alien[16..24].copy_from_slice(&3i64.to_be_bytes());
    let r = m3.on_append(&forged, &[alien]).await;
    assert!(matches!(r, Err(DLedgerError::TruncatesCommitted { .. })), "{r:?}");
}

#[tokio::test]
async fn one_vote_per_term_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut voter = open(dir.path(), 2).await;
    let mut c1 = open(a.path(), 1).await;
    let mut c3 = open(b.path(), 3).await;
    let r1 = c1.start_election().await.unwrap();
    assert!(voter.on_vote_request(&r1).await.unwrap().granted);
    drop(voter);
    let mut voter = open(dir.path(), 2).await;
    let r3 = c3.start_election().await.unwrap();
    assert_eq!(r1.term, r3.term);
    assert!(!voter.on_vote_request(&r3).await.unwrap().granted, "the vote of term 1 was persisted");
}

#[tokio::test]
async fn dledger_follower_truncates_committed() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut m1 = open(a.path(), 1).await;
    let mut m2 = open(b.path(), 2).await;
    let mut m3 = open_with(c.path(), 3, BugSet::of(&[engine::Bug::DledgerFollowerTruncatesCommitted])).await;
    elect(&mut m1, &mut [&mut m2, &mut m3]).await;
    append(&mut m1, b'a', 10);
    m1.flush().await.unwrap();
    replicate(&mut m1, &mut m3).await;
    replicate(&mut m1, &mut m3).await;
    assert_eq!(m3.log.committed_index(), Some(9));
    let forged = AppendRequest { term: 3, leader: 2, prev: Some((4, 1)), entries: 1, leader_commit: None };
    let mut alien = entry_bytes(&m1, 5);
    alien[16..24].copy_from_slice(&3i64.to_be_bytes());
    assert!(m3.on_append(&forged, &[alien]).await.is_err(), "the forged entry's chain CRC does not follow");
    assert_eq!(m3.log.tail().next_index, 5, "but entries 5..9, committed, are gone");
}
