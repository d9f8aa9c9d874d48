//! Raft's rules for one member of a DLedger group, with no I/O: terms and votes (§5.2),
//! log matching (§5.3) and commitment (§5.4). The caller owns the log and the network: it
//! feeds requests and replies in, persists the term and vote before sending what a call
//! returns, and applies what a follower is told to keep, drop and append.
//!
//! Two catalogued bugs live here: granting a second vote in one term, and committing an entry
//! of an older term by counting replicas (the case of Raft's §5.4.2, figure 8).

use std::collections::{BTreeMap, BTreeSet};

/// A member's id within its group.
pub type MemberId = u32;

/// What a member sees of its log: the last entry and the term at an index.
pub trait LogView {
    /// `(last index, last term)`; `None` for an empty log.
    fn last(&self) -> Option<(u64, u64)>;
    /// The term of entry `index`, if the log holds it.
    fn term_of(&self, index: u64) -> Option<u64>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteRequest {
    pub term: u64,
    pub candidate: MemberId,
    pub last: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteReply {
    pub term: u64,
    pub from: MemberId,
    pub granted: bool,
}

/// An append request's header; the entries travel beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendRequest {
    pub term: u64,
    pub leader: MemberId,
    /// The entry just before the first one sent, `(index, term)`; `None`: from the start.
    pub prev: Option<(u64, u64)>,
    /// How many entries travel with it.
    pub entries: usize,
    pub leader_commit: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReply {
    pub term: u64,
    pub from: MemberId,
    /// The follower's log now matches the leader's up to here (on success).
    pub matched: Option<u64>,
    pub success: bool,
    /// On failure: the index the leader should send from next.
    pub next_hint: u64,
}

/// What a follower must do with an accepted append, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendPlan {
    /// Drop its entries from this index on (they conflict with the leader's).
    pub truncate_from: Option<u64>,
    /// Skip this many of the sent entries (it holds them already), append the rest.
    pub skip: usize,
}

/// The catalogued bugs of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RaftBugs {
    /// Grant a vote to any candidate of the current term, even after voting for another.
    pub double_vote: bool,
    /// Commit the newest index a majority holds, whatever its term.
    pub commit_older_term_by_count: bool,
}

impl RaftBugs {
    pub fn from_bugs(bugs: &crate::bugs::BugSet) -> RaftBugs {
        use crate::bugs::Bug;
        RaftBugs {
            double_vote: bugs.has(Bug::DledgerDoubleVote),
            commit_older_term_by_count: bugs.has(Bug::DledgerCommitOlderTermByCount),
        }
    }
}

/// One member's Raft state.
#[derive(Debug, Clone)]
pub struct Raft {
    pub id: MemberId,
    pub members: BTreeSet<MemberId>,
    pub term: u64,
    pub voted_for: Option<MemberId>,
    pub role: Role,
    pub leader: Option<MemberId>,
    pub commit: Option<u64>,
    votes: BTreeSet<MemberId>,
    /// Leader only: what each member is known to hold, and what to send it next.
    matched: BTreeMap<MemberId, Option<u64>>,
    next: BTreeMap<MemberId, u64>,
    bugs: RaftBugs,
}

/// `a` is at least as up to date as `b` (§5.4.1): later last term, or same term and not shorter.
fn up_to_date(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> bool {
    match (a, b) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some((ai, at)), Some((bi, bt))) => at > bt || (at == bt && ai >= bi),
    }
}

impl Raft {
    /// A member restarting with its persisted term and vote (a follower, no known leader).
    pub fn new(
        id: MemberId,
        members: BTreeSet<MemberId>,
        term: u64,
        voted_for: Option<MemberId>,
        bugs: RaftBugs,
    ) -> Raft {
        assert!(members.contains(&id), "a member belongs to its group");
        Raft {
            id,
            members,
            term,
            voted_for,
            role: Role::Follower,
            leader: None,
            commit: None,
            votes: BTreeSet::new(),
            matched: BTreeMap::new(),
            next: BTreeMap::new(),
            bugs,
        }
    }

    fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// Adopts a newer term seen in any message (§5.1): back to follower, no vote yet.
    fn observe_term(&mut self, term: u64) {
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.role = Role::Follower;
            self.leader = None;
        }
    }

    /// The election timer fired: stand for the next term, voting for itself.
    pub fn start_election(&mut self, log: &dyn LogView) -> VoteRequest {
        self.term += 1;
        self.role = Role::Candidate;
        self.leader = None;
        self.voted_for = Some(self.id);
        self.votes = BTreeSet::from([self.id]);
        if self.votes.len() >= self.majority() {
            self.become_leader(log);
        }
        VoteRequest { term: self.term, candidate: self.id, last: log.last() }
    }

    pub fn on_vote_request(&mut self, req: &VoteRequest, log: &dyn LogView) -> VoteReply {
        self.observe_term(req.term);
        let free = match self.voted_for {
            None => true,
            Some(c) => c == req.candidate || self.bugs.double_vote,
        };
        let granted = req.term == self.term && free && up_to_date(req.last, log.last());
        if granted {
            self.voted_for = Some(req.candidate);
        }
        VoteReply { term: self.term, from: self.id, granted }
    }

    /// Counts a vote; returns whether this member just became leader.
    pub fn on_vote_reply(&mut self, reply: &VoteReply, log: &dyn LogView) -> bool {
        self.observe_term(reply.term);
        if self.role != Role::Candidate || reply.term != self.term || !reply.granted {
            return false;
        }
        self.votes.insert(reply.from);
        if self.votes.len() >= self.majority() {
            self.become_leader(log);
            return true;
        }
        false
    }

    fn become_leader(&mut self, log: &dyn LogView) {
        self.role = Role::Leader;
        self.leader = Some(self.id);
        let next = log.last().map_or(0, |(i, _)| i + 1);
        self.matched = self.members.iter().map(|&m| (m, None)).collect();
        self.matched.insert(self.id, log.last().map(|(i, _)| i));
        self.next = self.members.iter().map(|&m| (m, next)).collect();
    }

    /// Where to start the next append to `member` (leader only).
    pub fn next_for(&self, member: MemberId) -> u64 {
        self.next.get(&member).copied().unwrap_or(0)
    }

    /// The leader appended entries up to `last` to its own log.
    pub fn on_local_append(&mut self, last: u64, log: &dyn LogView) {
        if self.role == Role::Leader {
            self.matched.insert(self.id, Some(last));
            self.advance_commit(log);
        }
    }

    /// A follower's answer to an append: the reply, and what to do to its log if accepted
    /// (`entry_terms`: the `(index, term)` of each entry sent).
    pub fn on_append(
        &mut self,
        req: &AppendRequest,
        entry_terms: &[(u64, u64)],
        log: &dyn LogView,
    ) -> (AppendReply, Option<AppendPlan>) {
        self.observe_term(req.term);
        let next = log.last().map_or(0, |(i, _)| i + 1);
        let fail = |s: &Raft, hint: u64| {
            (AppendReply { term: s.term, from: s.id, matched: None, success: false, next_hint: hint }, None)
        };
        if req.term < self.term {
            return fail(self, next);
        }
        self.role = Role::Follower;
        self.leader = Some(req.leader);
        if let Some((pi, pt)) = req.prev {
            match log.term_of(pi) {
                Some(t) if t == pt => {}
                // Missing: send from our end; conflicting: from the conflict (the leader steps back).
                None => return fail(self, next.min(pi)),
                Some(_) => return fail(self, pi),
            }
        }
        let mut plan = AppendPlan { truncate_from: None, skip: 0 };
        for &(i, t) in entry_terms {
            match log.term_of(i) {
                Some(have) if have == t => plan.skip += 1,
                Some(_) => {
                    plan.truncate_from = Some(i);
                    break;
                }
                None => break,
            }
        }
        let last_new = entry_terms.last().map(|&(i, _)| i).or(req.prev.map(|(i, _)| i));
        if let (Some(lc), Some(ln)) = (req.leader_commit, last_new) {
            let c = lc.min(ln);
            if self.commit.is_none_or(|old| old < c) {
                self.commit = Some(c);
            }
        }
        (AppendReply { term: self.term, from: self.id, matched: last_new, success: true, next_hint: 0 }, Some(plan))
    }

    /// The leader's handling of an append reply; returns the new commit index if it moved.
    pub fn on_append_reply(&mut self, reply: &AppendReply, log: &dyn LogView) -> Option<u64> {
        self.observe_term(reply.term);
        if self.role != Role::Leader || reply.term != self.term {
            return None;
        }
        if reply.success {
            let m = self.matched.entry(reply.from).or_insert(None);
            if reply.matched > *m {
                *m = reply.matched;
            }
            self.next.insert(reply.from, reply.matched.map_or(0, |i| i + 1));
        } else {
            let n = self.next.entry(reply.from).or_insert(0);
            *n = reply.next_hint.min(n.saturating_sub(1));
        }
        let before = self.commit;
        self.advance_commit(log);
        (self.commit != before).then_some(self.commit).flatten()
    }

    /// Commits the newest index a majority holds, if its entry is of the current term
    /// (§5.4.2: an older term's entry is committed only under one of the current term).
    fn advance_commit(&mut self, log: &dyn LogView) {
        let mut held: Vec<Option<u64>> = self.members.iter().map(|m| self.matched.get(m).copied().flatten()).collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        let Some(n) = held[self.majority() - 1] else { return };
        if self.commit.is_some_and(|c| c >= n) {
            return;
        }
        if self.bugs.commit_older_term_by_count || log.term_of(n) == Some(self.term) {
            self.commit = Some(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log as the list of its entries' terms.
    struct Terms(Vec<u64>);

    impl LogView for Terms {
        fn last(&self) -> Option<(u64, u64)> {
            self.0.last().map(|&t| (self.0.len() as u64 - 1, t))
        }
        fn term_of(&self, index: u64) -> Option<u64> {
            self.0.get(index as usize).copied()
        }
    }

    fn group(id: MemberId, term: u64, bugs: RaftBugs) -> Raft {
        Raft::new(id, BTreeSet::from([1, 2, 3]), term, None, bugs)
    }

    #[test]
    fn a_majority_elects_and_one_vote_per_term() {
        let log = Terms(vec![1, 1]);
        let mut a = group(1, 1, RaftBugs::default());
        let mut c = group(3, 1, RaftBugs::default());
        let mut voter = group(2, 1, RaftBugs::default());
        let ra = a.start_election(&log);
        let rc = c.start_election(&log);
        assert_eq!((ra.term, rc.term), (2, 2));
        let ya = voter.on_vote_request(&ra, &log);
        let yc = voter.on_vote_request(&rc, &log);
        assert!(ya.granted && !yc.granted, "one vote per term");
        assert!(a.on_vote_reply(&ya, &log));
        assert!(!c.on_vote_reply(&yc, &log));
        assert_eq!((a.role, c.role), (Role::Leader, Role::Candidate));
        // With the bug the same voter elects both: two leaders in term 2.
        let bugs = RaftBugs::from_bugs(&crate::bugs::BugSet::of(&[crate::bugs::Bug::DledgerDoubleVote]));
        let mut buggy = group(2, 1, bugs);
        assert!(buggy.on_vote_request(&ra, &log).granted);
        assert!(buggy.on_vote_request(&rc, &log).granted);
    }

    #[test]
    fn a_stale_log_gets_no_vote() {
        let mut voter = group(2, 3, RaftBugs::default());
        let longer = Terms(vec![1, 3, 3]);
        let req = VoteRequest { term: 4, candidate: 1, last: Some((5, 2)) };
        assert!(!voter.on_vote_request(&req, &longer).granted, "a lower last term loses");
        assert_eq!(voter.term, 4, "but the newer term is adopted");
        let req = VoteRequest { term: 4, candidate: 3, last: Some((2, 3)) };
        assert!(voter.on_vote_request(&req, &longer).granted);
    }

    #[test]
    fn log_matching_and_conflicting_suffixes() {
        let mut f = group(2, 2, RaftBugs::default());
        let log = Terms(vec![1, 1, 2, 2]);
        // prev (3, 3) conflicts: rejected, resend from 3.
        let req = AppendRequest { term: 3, leader: 1, prev: Some((3, 3)), entries: 0, leader_commit: None };
        let (r, plan) = f.on_append(&req, &[], &log);
        assert!(!r.success && plan.is_none());
        assert_eq!(r.next_hint, 3);
        // prev (1, 1) matches; entry 2 is ours, entry 3 conflicts: truncate from 3.
        let req = AppendRequest { term: 3, leader: 1, prev: Some((1, 1)), entries: 3, leader_commit: Some(4) };
        let (r, plan) = f.on_append(&req, &[(2, 2), (3, 3), (4, 3)], &log);
        assert!(r.success);
        assert_eq!(plan, Some(AppendPlan { truncate_from: Some(3), skip: 1 }));
        assert_eq!(r.matched, Some(4));
        assert_eq!(f.commit, Some(4));
        // A stale leader is refused.
        let req = AppendRequest { term: 2, leader: 3, prev: None, entries: 0, leader_commit: None };
        assert!(!f.on_append(&req, &[], &log).0.success);
    }

    /// Figure 8: the leader of term 4 holds an entry of term 2 at index 1 that a majority
    /// now holds; it must not count it committed until an entry of term 4 is.
    #[test]
    fn an_older_terms_entry_is_not_committed_by_counting() {
        for (bugs, committed) in [
            (RaftBugs::default(), None),
            (
                RaftBugs::from_bugs(&crate::bugs::BugSet::of(&[crate::bugs::Bug::DledgerCommitOlderTermByCount])),
                Some(1),
            ),
        ] {
            let log = Terms(vec![1, 2]);
            let mut l = group(1, 3, bugs);
            let req = l.start_election(&log);
            assert_eq!(req.term, 4);
            assert!(l.on_vote_reply(&VoteReply { term: 4, from: 2, granted: true }, &log));
            let reply = AppendReply { term: 4, from: 2, matched: Some(1), success: true, next_hint: 0 };
            assert_eq!(l.on_append_reply(&reply, &log), committed);
            // Once an entry of term 4 is on a majority, everything before it is committed.
            let log = Terms(vec![1, 2, 4]);
            l.on_local_append(2, &log);
            let reply = AppendReply { term: 4, from: 3, matched: Some(2), success: true, next_hint: 0 };
            assert_eq!(l.on_append_reply(&reply, &log), Some(2));
        }
    }
}
