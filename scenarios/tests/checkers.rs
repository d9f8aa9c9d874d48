//! Every broker checker fails on a hand-made bad state and passes the good one it was made
//! from: an acked message missing, garbage and holes in the log, a consume-queue entry past
//! the log end, a missing key, an abort file after a clean shutdown, a checkpoint ahead of
//! the log, dispatch that never catches up, a leaked hold.

use engine::checkpoint::CheckpointData;
use engine::consume_queue::CqUnit;
use engine::io::{HoldKind, HoldSummary};
use engine::FlushMode;
use scenarios::broker::checkers::{self, BootFacts, CheckInput, CqClaim, LivenessFacts};
use scenarios::broker::history::{Ack, CleanStop, Epoch, History, Send, SendOutcome, SinceLastBoot, Tracking};
use scenarios::broker::state::{DecodedLog, LogMsg, QueueView, StoreView};
use sim::Violation;

const SIZE: u32 = 100;

/// A good state: `n` messages acked in epoch 0 (async mode), all in the log, the consume
/// queue and the index; checked at epoch 1 after a process crash.
struct State {
    history: History,
    log: DecodedLog,
    view: StoreView,
    since: SinceLastBoot,
    boot: BootFacts,
}

fn msg(seq: u64) -> LogMsg {
    LogMsg {
        phy: seq * u64::from(SIZE),
        size: SIZE,
        topic: "T".into(),
        queue_id: 0,
        queue_offset: seq,
        store_timestamp_ms: 1_000 + seq as i64,
        tags: None,
        keys: vec![format!("k{seq}")],
        id: Some((1, seq)),
    }
}

fn send(m: &LogMsg) -> Send {
    Send {
        id: m.id.unwrap(),
        topic: m.topic.clone(),
        queue_id: m.queue_id,
        tags: None,
        keys: m.keys.clone(),
        outcome: SendOutcome::Pending,
        tracking: Tracking::default(),
    }
}

fn good(n: u64) -> State {
    let mut history = History::new(FlushMode::Async);
    history.epochs.push(Epoch { open_completed: true, ..Epoch::default() });
    let msgs: Vec<LogMsg> = (0..n).map(msg).collect();
    for m in &msgs {
        history.record_send(send(m));
        let ack = Ack {
            phy_offset: m.phy,
            size_bytes: SIZE,
            queue_offset: m.queue_offset,
            store_timestamp_ms: m.store_timestamp_ms,
            epoch: 0,
        };
        history.record_outcome(m.id.unwrap(), SendOutcome::Acked(ack));
    }
    history.epochs.push(Epoch::default());
    let log = DecodedLog { msgs: msgs.iter().map(|m| (m.phy, m.clone())).collect(), end: n * 100, stopped: None };
    let queue = QueueView { min_offset: 0, max_offset: n, entries: Ok(msgs.clone()) };
    let view = StoreView {
        max_phy_offset: n * 100,
        queues: [(("T".to_string(), 0), queue)].into_iter().collect(),
        key_hits: msgs.iter().map(|m| (("T".to_string(), m.keys[0].clone()), Ok(vec![m.clone()]))).collect(),
        holds: Vec::new(),
        behind_bytes: 0,
        recovery_scan_start: 0,
    };
    let since = SinceLastBoot { crashes: 1, ..SinceLastBoot::default() };
    let boot =
        BootFacts { abort_existed: true, log_max_timestamp_ms: Some(1_000 + n as i64 - 1), ..BootFacts::default() };
    State { history, log, view, since, boot }
}

fn check(s: &State) -> Vec<Violation> {
    let input = CheckInput { history: &s.history, log: &s.log, view: &s.view, since: s.since, epoch: 1, now_ms: 9 };
    checkers::check_recovery(&input, &s.boot)
}

fn assert_caught(s: &State, checker: &str) {
    let v = check(s);
    assert!(v.iter().any(|v| v.checker == checker), "{checker} should fire, got {v:#?}");
}

#[test]
fn the_good_state_passes_every_checker() {
    assert_eq!(check(&good(5)), Vec::new());
}

/// Removes message `seq` from the log, its queue and the index (as a truncation would).
fn remove(s: &mut State, seq: u64) {
    let phy = seq * u64::from(SIZE);
    s.log.msgs.remove(&phy);
    let q = s.view.queues.get_mut(&("T".to_string(), 0)).unwrap();
    if let Ok(e) = &mut q.entries {
        e.retain(|m| m.phy != phy);
    }
    q.max_offset = q.entries.as_ref().map_or(0, |e| e.len() as u64);
    s.view.key_hits.remove(&("T".to_string(), format!("k{seq}")));
}

#[test]
fn durability_catches_a_lost_acked_message_but_allows_async_loss_on_power_loss() {
    let mut s = good(5);
    for seq in [4, 3] {
        remove(&mut s, seq);
    }
    s.log.end = 300;
    s.view.max_phy_offset = 300;
    s.boot.log_max_timestamp_ms = Some(1_002);
    assert_caught(&s, checkers::DURABILITY);
    // Async acks are only in the page cache: a power loss may take the tail.
    s.since.power_losses = 1;
    assert_eq!(check(&s), Vec::new());
    // Unless the store said they were flushed.
    s.history.sends.values_mut().for_each(|m| m.tracking.durable = true);
    assert_caught(&s, checkers::DURABILITY);
}

#[test]
fn log_prefix_catches_a_phantom_garbage_a_hole_and_a_wrong_end() {
    let mut s = good(5);
    let mut phantom = msg(5);
    phantom.id = Some((9, 9));
    s.log.msgs.insert(phantom.phy, phantom);
    assert_caught(&s, checkers::LOG_PREFIX);

    let mut s = good(5);
    s.view.key_hits.get_mut(&("T".to_string(), "k2".to_string())).unwrap().as_mut().unwrap()[0].id = None;
    assert_caught(&s, checkers::LOG_PREFIX);

    let mut s = good(5);
    remove(&mut s, 2);
    s.since.power_losses = 1; // the loss itself is allowed; the hole is not
    let v = check(&s);
    assert!(v.iter().any(|v| v.checker == checkers::LOG_PREFIX && v.message.contains("hole")), "{v:#?}");

    let mut s = good(5);
    s.view.max_phy_offset = 600;
    assert_caught(&s, checkers::LOG_PREFIX);
}

#[test]
fn consume_queue_catches_an_entry_past_the_log_end_and_reused_offsets() {
    let mut s = good(5);
    s.view.queues.get_mut(&("T".to_string(), 0)).unwrap().max_offset = 6;
    let v = check(&s);
    assert!(v.iter().any(|v| v.checker == checkers::CONSUME_QUEUE && v.message.contains("past the log end")), "{v:#?}");

    let mut s = good(5);
    s.log.msgs.get_mut(&400).unwrap().queue_offset = 3;
    assert_caught(&s, checkers::CONSUME_QUEUE);

    let mut s = good(5);
    remove(&mut s, 1);
    s.log.msgs.insert(100, msg(1));
    assert_caught(&s, checkers::CONSUME_QUEUE);
}

#[test]
fn key_index_catches_a_missing_key() {
    let mut s = good(5);
    s.view.key_hits.insert(("T".to_string(), "k3".to_string()), Ok(Vec::new()));
    assert_caught(&s, checkers::KEY_INDEX);
}

#[test]
fn abort_checkpoint_catches_an_abort_after_a_clean_shutdown_a_missing_abort_and_a_checkpoint_ahead() {
    let mut s = good(5);
    s.history.epochs[0].clean_stop = Some(CleanStop { ok: true, writeable: true, behind_bytes: 0, took_ms: 3 });
    s.since.crashes = 0;
    assert_caught(&s, checkers::ABORT_CHECKPOINT);
    s.boot.abort_existed = false;
    assert_eq!(check(&s), Vec::new());
    // Clean-looking shutdown while dispatch was behind: the abort file must stay.
    s.history.epochs[0].clean_stop = Some(CleanStop { ok: true, writeable: true, behind_bytes: 77, took_ms: 3 });
    assert_caught(&s, checkers::ABORT_CHECKPOINT);

    let mut s = good(5);
    s.boot.abort_existed = false; // crashed after open, yet no abort file
    assert_caught(&s, checkers::ABORT_CHECKPOINT);
    // Unless a clean shutdown had begun: a kill may have cut it short after it removed the file.
    s.history.epochs[0].stop_started = true;
    assert_eq!(check(&s), Vec::new());

    let mut s = good(5);
    s.boot.checkpoint = Some(CheckpointData {
        physic_msg_timestamp_ms: 5_000,
        logics_msg_timestamp_ms: 1_000,
        index_msg_timestamp_ms: 1_000,
    });
    assert_caught(&s, checkers::ABORT_CHECKPOINT);
}

#[test]
fn abort_checkpoint_catches_a_consume_queue_timestamp_ahead_of_the_queue_on_disk() {
    let mut s = good(5);
    let claim = |m: &LogMsg, unit_on_disk| CqClaim {
        phy: m.phy,
        size_bytes: m.size,
        queue_offset: m.queue_offset,
        store_timestamp_ms: m.store_timestamp_ms,
        unit_on_disk,
    };
    let unit = |m: &LogMsg| Some(CqUnit { phy_offset: m.phy as i64, size: m.size as i32, tags_code: 0 });
    s.boot.checkpoint = Some(CheckpointData {
        physic_msg_timestamp_ms: 1_000,
        logics_msg_timestamp_ms: 1_003,
        index_msg_timestamp_ms: 1_000,
    });
    s.boot.cq_claims = (0..3).map(|i| claim(&msg(i), unit(&msg(i)))).collect();
    assert_eq!(check(&s), Vec::new());
    // The last vouched-for unit never reached the disk...
    s.boot.cq_claims[2] = claim(&msg(2), None);
    assert_caught(&s, checkers::ABORT_CHECKPOINT);
    // ...or the disk holds a stale unit of an earlier log there.
    s.boot.cq_claims[2] = claim(&msg(2), unit(&msg(1)));
    assert_caught(&s, checkers::ABORT_CHECKPOINT);
}

#[test]
fn a_bit_flip_waives_survival_but_not_detection() {
    let mut s = good(5);
    remove(&mut s, 4);
    s.since.bit_flips_total = 1;
    assert_eq!(check(&s), Vec::new(), "a flipped durable record may be lost");
    s.view.queues.get_mut(&("T".to_string(), 0)).unwrap().entries.as_mut().unwrap()[0].id = None;
    assert_caught(&s, checkers::LOG_PREFIX);
}

#[test]
fn liveness_catches_lag_and_a_hanging_shutdown() {
    let ok = LivenessFacts {
        serving: true,
        behind_bytes: Some(0),
        shutdown_took_ms: Some(40),
        bound_ms: 5_000,
        flipped: false,
    };
    assert_eq!(checkers::liveness(&ok, 1), Vec::new());
    // After a bit flip, dispatch stopped at the flipped record is detection, not a hang; a
    // hanging shutdown still is one.
    let flipped = LivenessFacts { flipped: true, ..ok };
    assert_eq!(checkers::liveness(&LivenessFacts { behind_bytes: Some(10), ..flipped }, 1), Vec::new());
    assert!(!checkers::liveness(&LivenessFacts { shutdown_took_ms: None, ..flipped }, 1).is_empty());
    for bad in [
        LivenessFacts { behind_bytes: Some(10), ..ok },
        LivenessFacts { shutdown_took_ms: None, ..ok },
        LivenessFacts { serving: false, ..ok },
    ] {
        let v = checkers::liveness(&bad, 1);
        assert!(!v.is_empty() && v.iter().all(|v| v.checker == checkers::LIVENESS), "{bad:?}: {v:?}");
    }
}

#[test]
fn no_leak_catches_a_leaked_hold_and_allows_the_active_pool_buffer() {
    let hold = |kind, count| HoldSummary { kind, resource: "00000000000000000000".into(), count };
    assert_eq!(checkers::no_leak(&[], FlushMode::Async, false, 1), Vec::new());
    let leaked = checkers::no_leak(&[hold(HoldKind::MappedFile, 1)], FlushMode::Async, true, 1);
    assert_eq!(leaked.len(), 1);
    assert_eq!(leaked[0].checker, checkers::NO_LEAK);
    let active = [hold(HoldKind::PooledBuffer, 1)];
    assert_eq!(checkers::no_leak(&active, FlushMode::TransientPool, true, 1), Vec::new());
    assert_eq!(checkers::no_leak(&active, FlushMode::TransientPool, false, 1).len(), 1, "shutdown returns it");
    assert_eq!(checkers::no_leak(&active, FlushMode::Async, true, 1).len(), 1);
}

#[test]
fn consumer_reads_of_garbage_are_caught() {
    let mut s = good(2);
    let mut m = msg(0);
    s.history.reads.push(scenarios::broker::history::Read { msg: m.clone(), at_ms: 1 });
    assert_eq!(checkers::check_reads(&s.history, false, 2), Vec::new());
    m.id = None;
    s.history.reads.push(scenarios::broker::history::Read { msg: m, at_ms: 1 });
    assert_eq!(checkers::check_reads(&s.history, false, 2)[0].checker, checkers::LOG_PREFIX);
}

#[test]
fn after_a_bit_flip_the_store_must_still_stop_at_a_corrupt_record_it_rereads() {
    let mut s = good(5);
    s.since.bit_flips_total = 1;
    // The checker's own decode stops at the flipped record at offset 300 (body CRC)...
    let cut = 3 * u64::from(SIZE);
    s.log.msgs.retain(|phy, _| *phy < cut);
    s.log.end = cut;
    s.log.stopped = Some((cut, "body CRC mismatch".into()));
    // ...inside the range the store's recovery re-verified, yet the store kept going.
    let end_violation = |v: &Violation| v.checker == checkers::LOG_PREFIX && v.message.contains("longest valid prefix");
    assert!(check(&s).iter().any(end_violation), "{:#?}", check(&s));
    // Damage before the recovery's scan start is never re-read: not something the store promises.
    s.view.recovery_scan_start = cut + 1;
    assert!(!check(&s).iter().any(end_violation), "{:#?}", check(&s));
    // Nor is a flip that landed while recovery ran (it may have read the record before).
    s.view.recovery_scan_start = 0;
    s.since.bit_flips_during_open = 1;
    assert!(!check(&s).iter().any(end_violation), "{:#?}", check(&s));
}
