//! The clients: two producers sending batches to several topics and queues, with keys and
//! tags, recording every send and its outcome; one consumer reading every queue and
//! recording what it read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::history::{body_for, body_sized, MsgId, Read, Send, SendOutcome, Tracking, BODY_HEADER_BYTES};
use super::rpc::{Client, PutMsg, Reply, Request};
use super::state::LogMsg;
use super::Shared;
use crate::swarm::Workload;

/// The topics a run may write; the fixed workload writes the first `TOPICS`.
pub const TOPIC_NAMES: [&str; 6] = ["TopicA", "TopicB", "TopicC", "TopicD", "TopicE", "TopicF"];
pub const TOPICS: usize = 3;
pub const QUEUES_PER_TOPIC: u32 = 4;
const MAX_BATCH: u32 = 4;
/// The clients stop after this much simulated time.
pub const WORKLOAD_MS: u64 = 12_000;
const PUT_TIMEOUT: Duration = Duration::from_millis(3_000);
const GET_TIMEOUT: Duration = Duration::from_millis(1_000);
const CONSUMER_CLIENT: u64 = 100;

/// The topics and queues a run's clients use.
fn topics(w: &Workload) -> &'static [&'static str] {
    &TOPIC_NAMES[..w.topics.unwrap_or(TOPICS).clamp(1, TOPIC_NAMES.len())]
}

fn queues(w: &Workload) -> u32 {
    w.queues_per_topic.unwrap_or(QUEUES_PER_TOPIC).max(1)
}

/// One message. The swarm's knobs draw only when set, so the fixed workload draws exactly
/// what it always did.
fn make_msg(rng: &mut ChaCha8Rng, w: &Workload, producer: u32, seq: u64) -> PutMsg {
    let id = (producer, seq);
    let mut keys = Vec::new();
    if rng.gen_bool(0.7) {
        keys.push(message_key(rng, w, id));
        if rng.gen_bool(0.2) {
            keys.push(format!("x{producer}-{seq}"));
        }
    }
    let topics = topics(w);
    PutMsg {
        id,
        topic: topics[rng.gen_range(0..topics.len())].to_string(),
        queue_id: rng.gen_range(0..queues(w)),
        body: message_body(rng, w, id),
        tags: rng.gen_bool(0.5).then(|| format!("tag{}", seq % 3)),
        keys,
    }
}

/// A keyed message's key: its own, or (the swarm's key reuse) one of a shared pool.
pub(crate) fn message_key(rng: &mut ChaCha8Rng, w: &Workload, id: MsgId) -> String {
    if w.key_reuse_prob.is_some_and(|p| rng.gen_bool(p)) {
        format!("r{}", rng.gen_range(0..w.key_pool.unwrap_or(1).max(1)))
    } else {
        format!("k{}-{}", id.0, id.1)
    }
}

/// A message's body: the usual one, or (the swarm's sizes) one of a drawn length.
pub(crate) fn message_body(rng: &mut ChaCha8Rng, w: &Workload, id: MsgId) -> Vec<u8> {
    match (w.sized_body_prob, w.body_max_bytes) {
        (Some(p), Some(max)) if rng.gen_bool(p) => {
            let min = BODY_HEADER_BYTES as u64;
            body_sized(id, rng.gen_range(min..=max.max(min)) as usize)
        }
        _ => body_for(id),
    }
}

/// The pause before a producer's next batch: 20–80 ms, or a burst (none) or an idle gap.
pub(crate) fn pause_ms(rng: &mut ChaCha8Rng, w: &Workload) -> u64 {
    if w.burst_prob.is_some_and(|p| rng.gen_bool(p)) {
        return 0;
    }
    if w.idle_prob.is_some_and(|p| rng.gen_bool(p)) {
        return w.idle_ms.unwrap_or(1_000);
    }
    rng.gen_range(20..80)
}

fn pending(m: &PutMsg) -> Send {
    Send {
        id: m.id,
        topic: m.topic.clone(),
        queue_id: m.queue_id,
        tags: m.tags.clone(),
        keys: m.keys.clone(),
        outcome: SendOutcome::Pending,
        tracking: Tracking::default(),
    }
}

/// A producer node: batches of 1–4 messages every 20–80 ms until `WORKLOAD_MS` (the
/// swarm's knobs change the batch sizes and pauses).
pub async fn producer(sh: Arc<Shared>, producer: u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(sh.seed ^ (0x9d0d_0000 + u64::from(producer)));
    let Ok(mut client) = Client::new(u64::from(producer), sh.broker_addr).await else { return };
    let mut seq = 0u64;
    while sh.now_ms() < WORKLOAD_MS {
        let w = &sh.workload;
        let n = rng.gen_range(1..=w.max_batch.unwrap_or(MAX_BATCH).max(1));
        let msgs: Vec<PutMsg> = (0..n)
            .map(|_| {
                seq += 1;
                make_msg(&mut rng, w, producer, seq)
            })
            .collect();
        {
            let mut h = sh.history();
            msgs.iter().for_each(|m| h.record_send(pending(m)));
        }
        let ids: Vec<_> = msgs.iter().map(|m| m.id).collect();
        let node = super::PRODUCERS[producer as usize - 1];
        sim::trace!(sh.world.trace(), node, "client.send", "n={} first={:?}", ids.len(), ids[0]);
        let reply = client.call(Request::Put(msgs), PUT_TIMEOUT).await;
        record_put_reply(&sh, node, &ids, reply);
        tokio::time::sleep(Duration::from_millis(pause_ms(&mut rng, &sh.workload))).await;
    }
}

/// Failures and time-outs as the producer saw them (acks were recorded by the broker).
/// The trace gets one `client.reply` line per batch: acked, failed and unanswered counts.
fn record_put_reply(sh: &Shared, node: &str, ids: &[(u32, u64)], reply: Option<Reply>) {
    let (mut acked, mut failed) = (0, 0);
    let mut h = sh.history();
    match reply {
        Some(Reply::Put(results)) => {
            for (id, r) in ids.iter().zip(results) {
                match r {
                    Ok(_) => acked += 1,
                    Err(e) => {
                        failed += 1;
                        h.record_outcome(*id, SendOutcome::Failed(e));
                    }
                }
            }
        }
        _ => ids.iter().for_each(|id| h.record_outcome(*id, SendOutcome::Unknown)),
    }
    drop(h);
    let unknown = ids.len() - acked - failed;
    sim::trace!(sh.world.trace(), node, "client.reply", "acked={acked} failed={failed} unknown={unknown}");
}

/// The consumer node: reads every queue from where it left off, every 200 ms.
pub async fn consumer(sh: Arc<Shared>) {
    let Ok(mut client) = Client::new(CONSUMER_CLIENT, sh.broker_addr).await else { return };
    let mut cursors: BTreeMap<(String, u32), u64> = BTreeMap::new();
    while sh.now_ms() < WORKLOAD_MS {
        for &topic in topics(&sh.workload) {
            for q in 0..queues(&sh.workload) {
                let cursor = cursors.entry((topic.to_string(), q)).or_insert(0);
                let req = Request::Get { topic: topic.to_string(), queue_id: q, offset: *cursor, max: 32 };
                if let Some(Reply::Get(Ok(msgs))) = client.call(req, GET_TIMEOUT).await {
                    let at_ms = sh.now_ms();
                    if !msgs.is_empty() {
                        let n = msgs.len();
                        sim::trace!(sh.world.trace(), super::CONSUMER, "client.read", "{topic}/{q} n={n}");
                    }
                    let mut h = sh.history();
                    for m in &msgs {
                        *cursor = (*cursor).max(m.queue_offset + 1);
                        h.reads.push(Read { msg: LogMsg::from_stored(m), at_ms });
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
