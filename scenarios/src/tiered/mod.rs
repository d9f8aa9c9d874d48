//! `tiered`: a broker whose store is tiered to the simulated object store. Small local files
//! and small segments roll often; two producers write, a consumer tails every queue and reads
//! old offsets only the object store may still have. Faults: kills, power loss, clean
//! shutdowns, disk errors, object-store errors, lost acknowledgements, partial appends and
//! outages, partitions from the object store, clock jumps; local files expire on their own.
//! The consumer also queries keys. Half of the clean stops that uploaded every index file come
//! back as a replaced container. At the end: progress, leaks, a clean shutdown (in half of the
//! runs while the object store is out: it must stay bounded), and a replaced container — a new,
//! empty disk and the same object store — from which everything the tiered store committed
//! must read back, reads must be routed to the tiered store, and committed keys be found.
//!
//! - `history`: sends, acks, reads, what the tiered store reported at its last clean stop.
//! - `checkers`: the named checkers, pure functions over the object store's contents, the
//!   metadata file and the history.
//! - `node`: the broker process; `workload`: the clients.

pub mod checkers;
pub mod history;
pub mod node;
pub mod workload;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use engine::tiered::{TieredConfig, TieredStore};
use engine::{FlushMode, Store, StoreConfig};
use sim::fault_plan::{FaultKind, PlanSpace};
use sim::object_store::ObjectStoreConfig;
use sim::world::{NodeLife, World, WorldConfig};
use sim::Violation;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::broker::{config_violation, flush_mode, parse_bugs, trace_config, wait_for};
use crate::scenario::RunInput;
use crate::swarm;
use history::History;

pub const BROKER: &str = "broker";
pub const ROOT: &str = "/store";
pub const KEY_PREFIX: &str = "tiered";
const PRODUCERS: [&str; 2] = ["producer-1", "producer-2"];
const CONSUMER: &str = "consumer";
/// The world gives nodes 10.0.0.11, .12, ... in creation order; the broker is created first.
const BROKER_IP: [u8; 4] = [10, 0, 0, 11];
/// A clean shutdown ends within this.
const BOUND_MS: u64 = 5_000;
/// Serving again within this after the faults: a broker whose local log came back empty (a
/// power loss after every durable file expired) first learns the tiered offsets from the
/// object store, whose lost requests cost 2 s each.
const SERVING_BOUND_MS: u64 = 15_000;
/// Once faults stop, every queue's tiered offset reaches its local maximum within this, or
/// the dispatcher must still be moving: how long a healthy drain takes depends on the drawn
/// configuration (tiny segments and one permit give a few dozen messages per second), so a
/// fixed deadline would judge the configuration, not the code.
const PROGRESS_BOUND_MS: u64 = 15_000;
/// Past `PROGRESS_BOUND_MS`, a stall is this long without any queue's tiered offset moving
/// while one is behind. With faults cleared each request takes well under a second and a
/// hold ends after the group-commit time-out (at most 1 s as drawn).
const PROGRESS_STALL_MS: u64 = 5_000;
/// However it moves, every queue is tiered within this once faults stop.
const PROGRESS_CAP_MS: u64 = 120_000;
/// A broker on a replaced disk lists and checks every segment (under the background faults)
/// before it serves: within this.
const REPLACED_BOOT_BOUND_MS: u64 = 60_000;
/// Local commit-log files expire after this: consumers of old offsets need the object store.
const LOCAL_RETENTION_MS: u64 = 4_000;

/// The fault kinds of this scenario, within a 10 s window (the workload runs 12 s).
pub fn plan_space() -> PlanSpace {
    let mut network_nodes =
        vec![BROKER.to_string(), CONSUMER.to_string(), sim::object_store::OBJECT_STORE_NODE.to_string()];
    network_nodes.extend(PRODUCERS.iter().map(|p| p.to_string()));
    PlanSpace {
        nodes: vec![BROKER.to_string()],
        network_nodes,
        fault_window_ms: 10_000,
        max_events: 8,
        kinds: [
            FaultKind::Kill,
            FaultKind::PowerLoss,
            FaultKind::CleanShutdown,
            FaultKind::DiskErrors,
            FaultKind::ObjectStoreErrors,
            FaultKind::ObjectStoreOutage,
            FaultKind::ClockJump,
            FaultKind::Partition,
        ]
        .into_iter()
        .collect(),
    }
}

/// The tiered store's settings in this scenario: segments roll every few batches.
pub fn tiered_config() -> TieredConfig {
    let mut t = TieredConfig::small(KEY_PREFIX);
    t.commit_log_segment_bytes = 4 * 1024;
    t.consume_queue_segment_bytes = 16 * 20;
    t
}

/// The local store's settings: small files, expiring.
pub fn store_config(mode: FlushMode, bugs: engine::BugSet) -> StoreConfig {
    let mut c = StoreConfig::small(ROOT);
    c.commit_log_file_size_bytes = 16 * 1024;
    c.max_message_size_bytes = 4 * 1024;
    c.flush_mode = mode;
    c.bugs = bugs;
    c.file_retention_ms = Some(LOCAL_RETENTION_MS);
    c
}

/// State shared by the run's nodes and the driver (the harness's memory, not a node's).
pub struct Shared {
    pub world: Arc<World>,
    pub seed: u64,
    pub config: StoreConfig,
    pub tiered: TieredConfig,
    pub broker_addr: SocketAddr,
    pub workload: swarm::Workload,
    history: Mutex<History>,
    serving: Mutex<(Weak<Store>, Weak<TieredStore>)>,
    /// Boots whose checks have finished.
    pub boots: AtomicU64,
}

impl Shared {
    pub fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serving_slot(&self) -> MutexGuard<'_, (Weak<Store>, Weak<TieredStore>)> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The serving broker's stores, if it is up.
    pub fn serving(&self) -> Option<(Arc<Store>, Arc<TieredStore>)> {
        if self.world.life(BROKER) != Some(NodeLife::Up) {
            return None;
        }
        let slot = self.serving_slot();
        Some((slot.0.upgrade()?, slot.1.upgrade()?))
    }

    pub fn now_ms(&self) -> u64 {
        self.world.trace().now_us() / 1_000
    }

    fn violation(&self, checker: &str, message: String) {
        let now = self.now_ms();
        self.history().violations.push(Violation { checker: checker.to_string(), message, at_ms: now });
    }
}

/// Runs the scenario in the current simulation; returns the checkers' violations.
pub async fn run(input: RunInput) -> Vec<Violation> {
    let bugs = match parse_bugs(&input.bugs) {
        Ok(b) => b,
        Err(e) => return config_violation(e),
    };
    let mode = match flush_mode(&input.config, input.seed) {
        Ok(m) => m,
        Err(e) => return config_violation(e),
    };
    let drawn = swarm::apply(&input.config, &store_config(mode, bugs), &[swarm::TIERED])
        .and_then(|a| Ok((a, swarm::section(&input.config, swarm::TIERED, &tiered_config())?)));
    let (swarm::Applied { store: config, disk, workload }, tiered) = match drawn {
        Ok(d) => d,
        Err(e) => return config_violation(e),
    };
    let world_config = WorldConfig { disk, object_store: Some(ObjectStoreConfig::default()) };
    let world = World::new(input.seed, input.trace.clone(), input.plan, world_config);
    sim::trace!(input.trace, "world", "tiered.config", "flush_mode={mode:?} bugs={:?}", input.bugs);
    trace_config(&input.trace, &input.config);
    let sh = Arc::new(Shared {
        world: world.clone(),
        seed: input.seed,
        config,
        tiered,
        broker_addr: SocketAddr::from((BROKER_IP, crate::broker::rpc::BROKER_PORT)),
        workload,
        history: Mutex::new(History::default()),
        serving: Mutex::new((Weak::new(), Weak::new())),
        boots: AtomicU64::new(0),
    });
    let s = sh.clone();
    let broker = world.add_node(BROKER, move || node::broker_process(s.clone()));
    for (i, name) in PRODUCERS.iter().enumerate() {
        let s = sh.clone();
        world.add_node(name, move || workload::producer(s.clone(), i as u32 + 1));
    }
    let s = sh.clone();
    world.add_node(CONSUMER, move || workload::consumer(s.clone()));
    world.play_faults().await;
    let workload_end = Duration::from_millis(workload::WORKLOAD_MS + 500);
    let elapsed = Duration::from_millis(sh.now_ms());
    if elapsed < workload_end {
        tokio::time::sleep(workload_end - elapsed).await;
    }
    final_phase(&sh, broker).await;
    let violations = std::mem::take(&mut sh.history().violations);
    sh.world.kill_all();
    violations
}

/// The end of a queue's durable messages: the local store tiers nothing beyond what survives
/// a power loss (a store that lost its writeability keeps unsynced messages it never syncs).
fn durable_max(store: &Store, topic: &str, q: u32) -> u64 {
    let durable = store.flushed_offset();
    let mut end = store.max_offset(topic, q);
    let min = store.min_offset(topic, q);
    while end > min {
        match store.cq_unit(topic, q, end - 1) {
            Ok(Some(u)) if u.is_blank() || u.end() <= durable => break,
            _ => end -= 1,
        }
    }
    end
}

/// The queues whose tiered commit offset has not reached their durable local maximum, and
/// the sum of every queue's tiered offset (whether the dispatcher moved).
async fn behind(store: &Store, tiered: &TieredStore) -> (Vec<String>, u64) {
    let states = tiered.queue_states().await;
    let moved = states.iter().map(|s| s.commit_queue_offset).sum();
    let mut behind = Vec::new();
    for (topic, q) in store.queues() {
        let local = durable_max(store, &topic, q);
        let st = states.iter().find(|s| s.queue.topic == topic && s.queue.queue_id == q);
        let tiered_at = st.map_or(0, |s| s.commit_queue_offset);
        if tiered_at < local {
            behind.push(format!("{topic}/{q} tiered {tiered_at} of {local}"));
        }
    }
    (behind, moved)
}

/// Waits for every queue to be tiered: past `PROGRESS_BOUND_MS` only while the dispatcher
/// keeps moving, and never past `PROGRESS_CAP_MS`. What is still behind, and why it gave up.
async fn wait_tiered(store: &Store, tiered: &TieredStore) -> (Vec<String>, String) {
    let start = tokio::time::Instant::now();
    let (mut last_moved, mut moved_at) = (None, start);
    loop {
        let (b, moved) = behind(store, tiered).await;
        let now = tokio::time::Instant::now();
        if last_moved != Some(moved) {
            (last_moved, moved_at) = (Some(moved), now);
        }
        let elapsed_ms = now.duration_since(start).as_millis() as u64;
        let still_ms = now.duration_since(moved_at).as_millis() as u64;
        if b.is_empty() {
            return (b, String::new());
        }
        if elapsed_ms >= PROGRESS_BOUND_MS && still_ms >= PROGRESS_STALL_MS {
            return (b, format!("{elapsed_ms} ms after the faults, nothing tiered for {still_ms} ms"));
        }
        if elapsed_ms >= PROGRESS_CAP_MS {
            return (b, format!("{elapsed_ms} ms after the faults, still moving"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After the faults: progress and leaks on the idle store, a clean shutdown, the remote
/// checks, and a replaced container that must read back everything committed.
async fn final_phase(sh: &Arc<Shared>, broker: madsim::task::NodeId) {
    // The bounds count from the end of the last fault window (a window may outlast the workload).
    let quiet_ms = sh.world.plan().quiet_after_ms();
    if sh.now_ms() < quiet_ms {
        tokio::time::sleep(Duration::from_millis(quiet_ms - sh.now_ms())).await;
    }
    // A boot on a replaced disk lists and checks every segment before it serves.
    let bound_ms = if sh.history().replaced_boot_running { REPLACED_BOOT_BOUND_MS } else { SERVING_BOUND_MS };
    let serving = wait_for(bound_ms, || sh.serving().is_some()).await;
    if !serving {
        sh.violation(
            crate::broker::checkers::LIVENESS,
            format!("the broker is not serving {bound_ms} ms after the faults"),
        );
    }
    // The faults stop: the object store's background errors and the network's packet loss too
    // (restored for the replaced disk's boot below).
    let object_store = sh.world.object_store().expect("object store").clone();
    let background = sim::world::background_object_faults(sh.world.plan());
    object_store.clear_faults();
    let net = madsim::net::NetSim::current();
    net.update_config(|c| c.packet_loss_rate = 0.0);
    if let Some((store, tiered)) = sh.serving() {
        let (behind, why) = wait_tiered(&store, &tiered).await;
        if !behind.is_empty() {
            let alive = tiered.dispatcher_alive();
            sh.violation(
                checkers::TIERED_PROGRESS,
                format!(
                    "{why}, {} queue(s) behind (dispatcher {}): {}",
                    behind.len(),
                    if alive { "running" } else { "dead" },
                    behind.join(", ")
                ),
            );
        }
    }
    let handle = madsim::runtime::Handle::current();
    // Half of the runs shut down while the object store is out: the shutdown stays bounded.
    let outage = ChaCha8Rng::seed_from_u64(sh.seed ^ 0x07a6e).gen_bool(0.5);
    if sh.serving().is_some() {
        if outage {
            object_store.set_unavailable(true);
        }
        handle.send_ctrl_c(broker);
        let stopped_cleanly = wait_for(BOUND_MS, || sh.world.life(BROKER) == Some(NodeLife::Stopped)).await;
        if !stopped_cleanly {
            let during = if outage { " (the object store out)" } else { "" };
            sh.violation(
                crate::broker::checkers::LIVENESS,
                format!("a clean shutdown did not end within {BOUND_MS} ms{during}"),
            );
        }
        object_store.set_unavailable(false);
    }
    handle.kill(broker);
    node::remote_checks(sh, "after the final shutdown");
    // A replaced container: a new, empty disk; the same object store, failing again.
    object_store.set_faults(background);
    let loss = sh.world.plan().background.packet_loss_prob;
    net.update_config(|c| c.packet_loss_rate = loss);
    sh.world.replace_disk(BROKER);
    let boots = sh.boots.load(Ordering::SeqCst);
    handle.restart(broker);
    sh.world.report_up(BROKER);
    let reopened =
        wait_for(REPLACED_BOOT_BOUND_MS, || sh.boots.load(Ordering::SeqCst) > boots && sh.serving().is_some()).await;
    let Some((store, tiered)) = sh.serving().filter(|_| reopened) else {
        sh.violation(checkers::TIERED_DURABILITY, "the broker did not come back on a replaced disk".into());
        return;
    };
    let (committed, ids, expected) = {
        let h = sh.history();
        let expected = if h.index_uploaded { checkers::expected_keys(&h, node::EXPECTED_KEYS) } else { Vec::new() };
        (h.committed.clone(), h.remote_ids.clone(), expected)
    };
    // On the broker's node: the object store answers its clients by node.
    let now_ms = sh.now_ms();
    let node = handle.get_node(broker).expect("the broker node exists");
    let check = node.spawn(async move {
        let when = "on the final replaced disk";
        let mut found = checkers::routing(&store, &tiered, &committed, when, now_ms).await;
        found.extend(checkers::index_complete(&tiered, &expected, when, now_ms).await);
        found.extend(checkers::durability_after_replacement(&tiered, &committed, &ids, now_ms).await);
        found.extend(checkers::offsets_continue(&store, &committed, now_ms).await);
        found
    });
    match check.await {
        Ok(found) => sh.history().violations.extend(found),
        Err(e) => {
            sh.violation(checkers::TIERED_DURABILITY, format!("the check on a replaced disk did not finish: {e}"))
        }
    }
}

/// The bugs this scenario can switch on.
pub fn bugs() -> Vec<&'static str> {
    engine::Bug::tiered().into_iter().map(|b| b.id()).collect()
}
