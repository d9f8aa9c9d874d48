//! The clients: two producers sending batches to several topics and queues, with keys and
//! tags, recording every send and its outcome; one consumer reading every queue and
//! recording what it read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::history::{body_for, Read, Send, SendOutcome, Tracking};
use super::rpc::{Client, PutMsg, Reply, Request};
use super::state::LogMsg;
use super::Shared;

pub const TOPICS: [&str; 3] = ["TopicA", "TopicB", "TopicC"];
pub const QUEUES_PER_TOPIC: u32 = 4;
/// The clients stop after this much simulated time.
pub const WORKLOAD_MS: u64 = 12_000;
const PUT_TIMEOUT: Duration = Duration::from_millis(3_000);
const GET_TIMEOUT: Duration = Duration::from_millis(1_000);
const CONSUMER_CLIENT: u64 = 100;

fn make_msg(rng: &mut ChaCha8Rng, producer: u32, seq: u64) -> PutMsg {
    let id = (producer, seq);
    let mut keys = Vec::new();
    if rng.gen_bool(0.7) {
        keys.push(format!("k{producer}-{seq}"));
        if rng.gen_bool(0.2) {
            keys.push(format!("x{producer}-{seq}"));
        }
    }
    PutMsg {
        id,
        topic: TOPICS[rng.gen_range(0..TOPICS.len())].to_string(),
        queue_id: rng.gen_range(0..QUEUES_PER_TOPIC),
        body: body_for(id),
        tags: rng.gen_bool(0.5).then(|| format!("tag{}", seq % 3)),
        keys,
    }
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

/// A producer node: batches of 1–4 messages every 20–80 ms until `WORKLOAD_MS`.
pub async fn producer(sh: Arc<Shared>, producer: u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(sh.seed ^ (0x9d0d_0000 + u64::from(producer)));
    let Ok(mut client) = Client::new(u64::from(producer), sh.broker_addr).await else { return };
    let mut seq = 0u64;
    while sh.now_ms() < WORKLOAD_MS {
        let n = rng.gen_range(1..=4);
        let msgs: Vec<PutMsg> = (0..n)
            .map(|_| {
                seq += 1;
                make_msg(&mut rng, producer, seq)
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
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..80))).await;
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
        for topic in TOPICS {
            for q in 0..QUEUES_PER_TOPIC {
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
