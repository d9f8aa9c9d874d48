//! The clients: two producers sending batches to a few queues, recording every send and ack;
//! a consumer tailing every queue and, every second, reading one queue from its start, which
//! after local expiry only the object store still has.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checkers;
use super::history::body_for;
use super::Shared;
use crate::broker::rpc::{Client, PutMsg, Reply, Request};

pub const TOPICS: [&str; 2] = ["TopicA", "TopicB"];
pub const QUEUES_PER_TOPIC: u32 = 2;
/// The clients stop after this much simulated time.
pub const WORKLOAD_MS: u64 = 12_000;
const PUT_TIMEOUT: Duration = Duration::from_millis(3_000);
const GET_TIMEOUT: Duration = Duration::from_millis(3_000);
const CONSUMER_CLIENT: u64 = 100;

fn make_msg(rng: &mut ChaCha8Rng, producer: u32, seq: u64) -> PutMsg {
    let id = (producer, seq);
    let keys = if rng.gen_bool(0.7) { vec![format!("k{producer}-{seq}")] } else { Vec::new() };
    PutMsg {
        id,
        topic: TOPICS[rng.gen_range(0..TOPICS.len())].to_string(),
        queue_id: rng.gen_range(0..QUEUES_PER_TOPIC),
        body: body_for(id),
        tags: rng.gen_bool(0.5).then(|| format!("tag{}", seq % 3)),
        keys,
    }
}

/// A producer node: batches of 1–4 messages every 20–80 ms until `WORKLOAD_MS`.
pub async fn producer(sh: Arc<Shared>, producer: u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(sh.seed ^ (0x7e1e_0000 + u64::from(producer)));
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
            for m in &msgs {
                h.sends.insert(m.id, (m.topic.clone(), m.queue_id));
                h.keys.insert(m.id, m.keys.clone());
            }
        }
        let ids: Vec<_> = msgs.iter().map(|m| m.id).collect();
        if let Some(Reply::Put(results)) = client.call(Request::Put(msgs), PUT_TIMEOUT).await {
            let mut h = sh.history();
            for (id, r) in ids.iter().zip(results) {
                if let Ok(ack) = r {
                    h.acks.insert(*id, ack.queue_offset);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..80))).await;
    }
}

/// The consumer node: tails every queue every 200 ms; every fifth round reads one queue
/// from offset 0; every round queries the key of one acked message.
pub async fn consumer(sh: Arc<Shared>) {
    let Ok(mut client) = Client::new(CONSUMER_CLIENT, sh.broker_addr).await else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(sh.seed ^ 0xc0_5e_4e_e7);
    let mut cursors: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let mut round = 0u64;
    while sh.now_ms() < WORKLOAD_MS {
        round += 1;
        for topic in TOPICS {
            for q in 0..QUEUES_PER_TOPIC {
                let old = round % 5 == 0 && (round / 5) % u64::from(QUEUES_PER_TOPIC * 2) == u64::from(q);
                let cursor = cursors.entry((topic.to_string(), q)).or_insert(0);
                let from = if old { 0 } else { *cursor };
                let req = Request::Get { topic: topic.to_string(), queue_id: q, offset: from, max: 32 };
                if let Some(Reply::Get(Ok(msgs))) = client.call(req, GET_TIMEOUT).await {
                    let now = sh.now_ms();
                    let mut h = sh.history();
                    h.reads += msgs.len() as u64;
                    let found = checkers::check_reads(&h, topic, q, from, &msgs, now);
                    h.violations.extend(found);
                    if !old {
                        if let Some(last) = msgs.last() {
                            *cursor = (*cursor).max(last.queue_offset + 1);
                        }
                    }
                }
            }
        }
        query_one_key(&sh, &mut client, &mut rng).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Queries the key of a random acked message; what comes back must carry the key.
async fn query_one_key(sh: &Shared, client: &mut Client, rng: &mut ChaCha8Rng) {
    let target = {
        let h = sh.history();
        let keyed: Vec<_> = h.acks.keys().filter(|id| h.keys.get(id).is_some_and(|k| !k.is_empty())).collect();
        if keyed.is_empty() {
            return;
        }
        let id = keyed[rng.gen_range(0..keyed.len())];
        let topic = h.sends.get(id).map(|(t, _)| t.clone()).unwrap_or_default();
        (topic, h.keys[id][0].clone())
    };
    let (topic, key) = target;
    let req = Request::QueryKey { topic: topic.clone(), key: key.clone(), max: 16 };
    if let Some(Reply::Get(Ok(msgs))) = client.call(req, GET_TIMEOUT).await {
        let now = sh.now_ms();
        let mut h = sh.history();
        h.queries += 1;
        let found = checkers::check_query(&h, &topic, &key, &msgs, now);
        h.violations.extend(found);
    }
}
