//! The clients: two producers sending batches to the broker they believe leads (following
//! redirects, moving on after a time-out), and one consumer reading every queue from the
//! leader, recording what it read. The swarm's `[workload]` knobs (`swarm::Workload`:
//! topics, queues, batch sizes, body sizes, shared keys) draw only when set, so the fixed
//! workload draws exactly what it always did.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::history::Read;
use super::rpc::{Caller, PutMsg, Reply, Request};
use super::{Shared, MEMBERS};
use crate::broker::history::{body_for, body_sized, id_of_body, BODY_HEADER_BYTES};
use crate::broker::workload::TOPIC_NAMES;
use crate::swarm::Workload;

/// The fixed workload writes the first `TOPICS` of `TOPIC_NAMES`.
pub const TOPICS: usize = 2;
pub const QUEUES_PER_TOPIC: u32 = 2;
const MAX_BATCH: u32 = 3;
/// The clients stop after this much simulated time.
pub const WORKLOAD_MS: u64 = 12_000;
const PUT_TIMEOUT: Duration = Duration::from_millis(3_000);
const GET_TIMEOUT: Duration = Duration::from_millis(1_000);
const CONSUMER_CALLER: u64 = 100;
/// Redirects followed at once for one batch.
const MAX_REDIRECTS: u32 = 3;

fn next_member(id: u32) -> u32 {
    MEMBERS[id as usize % MEMBERS.len()]
}

/// The topics and queues a run's clients use.
pub fn topics(w: &Workload) -> &'static [&'static str] {
    &TOPIC_NAMES[..w.topics.unwrap_or(TOPICS).clamp(1, TOPIC_NAMES.len())]
}

pub fn queues(w: &Workload) -> u32 {
    w.queues_per_topic.unwrap_or(QUEUES_PER_TOPIC).max(1)
}

fn make_msg(rng: &mut ChaCha8Rng, w: &Workload, producer: u32, seq: u64) -> PutMsg {
    let id = (producer, seq);
    let topics = topics(w);
    let topic = topics[rng.gen_range(0..topics.len())].to_string();
    let queue_id = rng.gen_range(0..queues(w));
    let body = match (w.sized_body_prob, w.body_max_bytes) {
        (Some(p), Some(max)) if rng.gen_bool(p) => {
            let min = BODY_HEADER_BYTES as u64;
            body_sized(id, rng.gen_range(min..=max.max(min)) as usize)
        }
        _ => body_for(id),
    };
    let tags = rng.gen_bool(0.5).then(|| format!("tag{}", seq % 3));
    let keys = if rng.gen_bool(0.5) {
        let shared = w.key_reuse_prob.is_some_and(|p| rng.gen_bool(p));
        let pool = w.key_pool.unwrap_or(1).max(1);
        vec![if shared { format!("r{}", rng.gen_range(0..pool)) } else { format!("k{producer}-{seq}") }]
    } else {
        Vec::new()
    };
    PutMsg { id, topic, queue_id, body, tags, keys }
}

/// A producer node: batches of 1–3 messages every 20–80 ms until `WORKLOAD_MS`.
pub async fn producer(sh: Arc<Shared>, producer: u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(sh.seed ^ (0xd1ed_0000 + u64::from(producer)));
    let Ok(caller) = Caller::new(u64::from(producer)).await else { return };
    let mut target = MEMBERS[0];
    let mut seq = 0u64;
    while sh.now_ms() < WORKLOAD_MS {
        let w = &sh.settings.workload;
        let n = rng.gen_range(1..=u64::from(w.max_batch.unwrap_or(MAX_BATCH).max(1)));
        let msgs: Vec<PutMsg> = (0..n)
            .map(|_| {
                seq += 1;
                make_msg(&mut rng, w, producer, seq)
            })
            .collect();
        sh.history().sent += n;
        let node = super::PRODUCERS[producer as usize - 1];
        for _ in 0..=MAX_REDIRECTS {
            let reply = caller.call(sh.addr(target), Request::Put(msgs.clone()), PUT_TIMEOUT).await;
            match reply {
                Some(Reply::Redirect(Some(leader))) if leader != target => target = leader,
                Some(Reply::Put(results)) => {
                    let acked = results.iter().filter(|r| r.is_ok()).count();
                    sim::trace!(sh.world.trace(), node, "client.reply", "to=n{target} acked={acked}/{n}");
                    break;
                }
                _ => {
                    target = next_member(target);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..80))).await;
    }
}

/// The consumer node: reads every queue from where it left off, every 200 ms.
pub async fn consumer(sh: Arc<Shared>) {
    let Ok(caller) = Caller::new(CONSUMER_CALLER).await else { return };
    let mut target = MEMBERS[0];
    let mut cursors: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    while sh.now_ms() < WORKLOAD_MS {
        for &topic in topics(&sh.settings.workload) {
            for q in 0..queues(&sh.settings.workload) {
                let cursor = cursors.entry((topic, q)).or_insert(0);
                let req = Request::Get { topic: topic.to_string(), queue_id: q, offset: *cursor, max: 32 };
                match caller.call(sh.addr(target), req, GET_TIMEOUT).await {
                    Some(Reply::Get(Ok(msgs))) => {
                        let at_ms = sh.now_ms();
                        let mut h = sh.history();
                        for m in &msgs {
                            *cursor = (*cursor).max(m.queue_offset + 1);
                            let (topic, queue_id, queue_offset) = (m.topic.clone(), m.queue_id, m.queue_offset);
                            h.reads.push(Read { topic, queue_id, queue_offset, id: id_of_body(&m.body), at_ms });
                        }
                    }
                    Some(Reply::Redirect(Some(leader))) => target = leader,
                    Some(_) => {}
                    None => target = next_member(target),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
