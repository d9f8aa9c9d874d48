//! The DLedger scenario's checkers, functions over the history and what a replica holds:
//!
//! - `committed-prefix`: a replica's recovery never ends its log below the committed index
//!   its checkpoint names.
//! - `committed-entries`: an index committed once always holds the same entry (same term and
//!   chain CRC) on every replica that reports it committed, and a replica's committed index
//!   never moves back while it runs.
//! - `one-leader-per-term`: at most one member wins each term.
//! - `consume-queue`: after a restart the consume-queue cut is never below the committed
//!   position, and each queue holds exactly the committed messages of its replica's log.
//! - `queue-offsets`: in the committed ledger each queue's offsets only grow.
//! - `acked-readable`: every acknowledged message is readable from the leader at the end,
//!   at its queue offset.
//! - `reads-committed`: every message a consumer read is the committed one at that offset.

use std::collections::BTreeMap;

use sim::Violation;

use super::history::{CommittedEntry, History};

pub const COMMITTED_PREFIX: &str = "committed-prefix";
pub const COMMITTED_ENTRIES: &str = "committed-entries";
pub const ONE_LEADER_PER_TERM: &str = "one-leader-per-term";
pub const CONSUME_QUEUE: &str = "consume-queue";
pub const QUEUE_OFFSETS: &str = "queue-offsets";
pub const ACKED_READABLE: &str = "acked-readable";
pub const READS_COMMITTED: &str = "reads-committed";

/// How many mismatches one check reports before it stops listing them.
const MAX_REPORTED: usize = 5;

fn violation(checker: &str, message: String, at_ms: u64) -> Violation {
    Violation { checker: checker.to_string(), message, at_ms }
}

/// Member `id` won term `term`.
pub fn leader_elected(h: &mut History, term: u64, id: u32, now_ms: u64) {
    match h.leaders.get(&term) {
        Some(&other) if other != id => {
            h.violation(ONE_LEADER_PER_TERM, format!("term {term} has two leaders: n{other} and n{id}"), now_ms)
        }
        Some(_) => {}
        None => {
            h.leaders.insert(term, id);
        }
    }
}

/// Replica `e.reported_by` counts entry `index` committed.
pub fn committed(h: &mut History, index: u64, e: CommittedEntry, now_ms: u64) {
    match h.ledger.get(&index) {
        Some(old) if (old.term, old.chain_crc) != (e.term, e.chain_crc) => {
            let msg = format!(
                "committed entry {index} changed: term {} crc {:#x} (n{}) and now term {} crc {:#x} (n{})",
                old.term, old.chain_crc, old.reported_by, e.term, e.chain_crc, e.reported_by
            );
            h.violation(COMMITTED_ENTRIES, msg, now_ms);
        }
        Some(_) => {}
        None => {
            h.ledger.insert(index, e);
        }
    }
}

/// A replica's committed index moved from `before` to `now` while it ran.
pub fn commit_moved(id: u32, before: Option<u64>, now: Option<u64>, at_ms: u64) -> Option<Violation> {
    (now < before).then(|| {
        violation(
            COMMITTED_ENTRIES,
            format!("n{id} dropped committed entries: committed index {before:?} -> {now:?}"),
            at_ms,
        )
    })
}

/// Each queue's offsets in the committed ledger, in index order, only grow.
pub fn queue_offsets(ledger: &BTreeMap<u64, CommittedEntry>, at_ms: u64) -> Vec<Violation> {
    let mut last: BTreeMap<(&str, u32), (u64, u64)> = BTreeMap::new();
    let mut out = Vec::new();
    for (&index, e) in ledger {
        let Some(m) = &e.msg else { continue };
        let key = (m.topic.as_str(), m.queue_id);
        if let Some(&(prev_index, prev_qo)) = last.get(&key) {
            if m.queue_offset <= prev_qo && out.len() < MAX_REPORTED {
                let msg = format!(
                    "{}/{}: committed entry {index} has queue offset {} after entry {prev_index} had {prev_qo}",
                    m.topic, m.queue_id, m.queue_offset
                );
                out.push(violation(QUEUE_OFFSETS, msg, at_ms));
            }
        }
        last.insert(key, (index, m.queue_offset));
    }
    out
}

/// Every consumer read names the committed message at its queue offset.
pub fn reads_committed(h: &History, at_ms: u64) -> Vec<Violation> {
    let mut at: BTreeMap<(&str, u32, u64), (u64, &CommittedEntry)> = BTreeMap::new();
    for (&i, e) in &h.ledger {
        if let Some(m) = &e.msg {
            at.entry((m.topic.as_str(), m.queue_id, m.queue_offset)).or_insert((i, e));
        }
    }
    let mut out = Vec::new();
    for r in &h.reads {
        let found = at.get(&(r.topic.as_str(), r.queue_id, r.queue_offset));
        let ok = found.is_some_and(|(_, e)| e.msg.as_ref().is_some_and(|m| m.id == r.id));
        if !ok && out.len() < MAX_REPORTED {
            let what = found.map(|(i, e)| format!("entry {i} holds {:?}", e.msg.as_ref().and_then(|m| m.id)));
            let msg = format!(
                "{}/{} offset {}: read {:?} at {} ms, committed: {}",
                r.topic,
                r.queue_id,
                r.queue_offset,
                r.id,
                r.at_ms,
                what.unwrap_or_else(|| "nothing".to_string())
            );
            out.push(violation(READS_COMMITTED, msg, at_ms));
        }
    }
    out
}

/// The consume queues of one replica against the committed messages of its log:
/// `expected` maps each queue to its messages' `(queue offset -> (phy, size))` (the first
/// message at an offset), `unit` reads a queue's unit, `ends` is each queue's next offset.
pub fn queues_match_log(
    id: u32,
    expected: &BTreeMap<(String, u32), BTreeMap<u64, (u64, u32)>>,
    mut unit: impl FnMut(&str, u32, u64) -> Result<Option<(u64, u32)>, String>,
    ends: &BTreeMap<(String, u32), u64>,
    at_ms: u64,
) -> Vec<Violation> {
    let mut problems = Vec::new();
    for ((topic, q), msgs) in expected {
        for (&qo, &want) in msgs {
            match unit(topic, *q, qo) {
                Ok(Some(got)) if got == want => {}
                got => problems.push(format!("{topic}/{q} offset {qo}: log has {want:?}, queue has {got:?}")),
            }
        }
        let want_end = msgs.keys().next_back().map_or(0, |&o| o + 1);
        let end = ends.get(&(topic.clone(), *q)).copied().unwrap_or(0);
        if end > want_end {
            problems.push(format!("{topic}/{q}: queue ends at {end}, its committed messages at {want_end}"));
        }
    }
    for ((topic, q), &end) in ends {
        if end > 0 && !expected.contains_key(&(topic.clone(), *q)) {
            problems.push(format!("{topic}/{q}: {end} units, no committed message"));
        }
    }
    problems
        .into_iter()
        .take(MAX_REPORTED)
        .map(|p| violation(CONSUME_QUEUE, format!("n{id} after restart: {p}"), at_ms))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::history::EntryMsg;
    use super::*;

    fn entry(term: u64, crc: u32, qo: u64) -> CommittedEntry {
        let msg = EntryMsg { topic: "T".into(), queue_id: 0, queue_offset: qo, id: Some((1, qo)) };
        CommittedEntry { term, chain_crc: crc, msg: Some(msg), reported_by: 1 }
    }

    #[test]
    fn a_changed_committed_entry_and_a_second_leader_are_caught() {
        let mut h = History::default();
        committed(&mut h, 3, entry(1, 7, 0), 0);
        committed(&mut h, 3, entry(1, 7, 0), 0);
        assert!(h.violations.is_empty());
        committed(&mut h, 3, entry(2, 9, 0), 5);
        assert_eq!(h.violations[0].checker, COMMITTED_ENTRIES);
        leader_elected(&mut h, 4, 1, 0);
        leader_elected(&mut h, 4, 1, 0);
        assert_eq!(h.violations.len(), 1);
        leader_elected(&mut h, 4, 2, 0);
        assert_eq!(h.violations[1].checker, ONE_LEADER_PER_TERM);
        assert!(commit_moved(1, Some(5), Some(3), 0).is_some());
        assert!(commit_moved(1, Some(3), Some(5), 0).is_none());
    }

    #[test]
    fn reused_queue_offsets_and_foreign_reads_are_caught() {
        let ledger: BTreeMap<u64, CommittedEntry> = [(0, entry(1, 1, 0)), (1, entry(1, 2, 1))].into();
        assert!(queue_offsets(&ledger, 0).is_empty());
        let reused: BTreeMap<u64, CommittedEntry> = [(0, entry(1, 1, 0)), (1, entry(1, 2, 0))].into();
        assert_eq!(queue_offsets(&reused, 0).len(), 1);
        let mut h = History { ledger, ..History::default() };
        h.reads.push(super::super::history::Read {
            topic: "T".into(),
            queue_id: 0,
            queue_offset: 1,
            id: Some((1, 1)),
            at_ms: 0,
        });
        assert!(reads_committed(&h, 0).is_empty());
        h.reads.push(super::super::history::Read {
            topic: "T".into(),
            queue_id: 0,
            queue_offset: 2,
            id: Some((1, 2)),
            at_ms: 0,
        });
        assert_eq!(reads_committed(&h, 0).len(), 1);
    }

    #[test]
    fn queues_must_hold_exactly_the_committed_messages() {
        let expected: BTreeMap<(String, u32), BTreeMap<u64, (u64, u32)>> =
            [(("T".to_string(), 0), [(0, (48, 100)), (1, (196, 100))].into())].into();
        let ends = [(("T".to_string(), 0), 2)].into();
        let full = |_: &str, _: u32, qo: u64| Ok(expected[&("T".to_string(), 0)].get(&qo).copied());
        assert!(queues_match_log(1, &expected, full, &ends, 0).is_empty());
        let emptied = [(("T".to_string(), 0), 0)].into();
        let none = |_: &str, _: u32, _: u64| Ok(None);
        assert_eq!(queues_match_log(1, &expected, none, &emptied, 0).len(), 2);
    }
}
