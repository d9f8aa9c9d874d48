//! The clients: two producers sending batches to a few queues, recording every send and ack;
//! a consumer tailing every queue and, every second, reading one queue from its start, which
//! after local expiry only the object store still has.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checkers;
use super::Shared;
use crate::broker::rpc::{Client, PutMsg, Reply, Request};
use crate::broker::workload::{message_body, message_key, pause_ms, TOPIC_NAMES};
use crate::swarm::Workload;

/// The fixed workload's topics (the first of `TOPIC_NAMES`) and queues per topic.
pub const TOPICS: usize = 2;
pub const QUEUES_PER_TOPIC: u32 = 2;
const MAX_BATCH: u32 = 4;
/// The clients stop after this much simulated time.
pub const WORKLOAD_MS: u64 = 12_000;
const PUT_TIMEOUT: Duration = Duration::from_millis(3_000);
const GET_TIMEOUT: Duration = Duration::from_millis(3_000);
const CONSUMER_CLIENT: u64 = 100;

fn topics(w: &Workload) -> &'static [&'static str] {
    &TOPIC_NAMES[..w.topics_or(TOPICS).clamp(1, TOPIC_NAMES.len())]
}

fn queues(w: &Workload) -> u32 {
    w.queues_per_topic.unwrap_or(QUEUES_PER_TOPIC).max(1)
}

/// One message. The swarm's knobs draw only when set, so the fixed workload draws exactly
/// what it always did.
fn make_msg(rng: &mut ChaCha8Rng, w: &Workload, producer: u32, seq: u64) -> PutMsg {
    let id = (producer, seq);
    let keys = if rng.gen_bool(0.7) { vec![message_key(rng, w, id)] } else { Vec::new() };
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

/// A producer node: batches of 1–4 messages every 20–80 ms until `WORKLOAD_MS` (the swarm's
/// knobs change the topics, queues, batch sizes, pauses, body sizes and keys).
pub async fn producer(sh: Arc<Shared>, producer: u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(sh.seed ^ (0x7e1e_0000 + u64::from(producer)));
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
        tokio::time::sleep(Duration::from_millis(pause_ms(&mut rng, &sh.workload))).await;
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
        let queues = queues(&sh.workload);
        for &topic in topics(&sh.workload) {
            for q in 0..queues {
                let old = round % 5 == 0 && (round / 5) % u64::from(queues * 2) == u64::from(q);
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
