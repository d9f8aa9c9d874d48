//! `dledger`: a group of three brokers in DLedger mode (the commit log replicated by Raft,
//! `engine::dledger::replica`) over madsim's network, two producers acknowledged on a
//! majority's commit and a consumer reading committed messages from the leader, under
//! partitions, kills, power loss on one member or on all three at once, clean shutdowns,
//! disk errors, a full disk and clock jumps. Every boot of a member runs the recovery
//! checkers; at the end the leader must serve every acknowledged message, then every member
//! shuts down cleanly and is checked once more.
//!
//! - `rpc`: the messages; `node`: a broker; `workload`: the clients;
//! - `history`: acks, reads, leaders, the ledger of committed entries; `checkers`;
//! - `settings`: the case's configuration; `shapes`: targeted fault shapes and the nemesis
//!   that plays them (minority and majority partitions, a power loss on the leader, figure 8).

pub mod checkers;
pub mod history;
pub mod node;
pub mod rpc;
pub mod settings;
pub mod shapes;
pub mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use engine::dledger::raft::Role;
use engine::dledger::replica::ReplicaConfig;
use engine::{Bug, BugSet};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::fault_plan::{Fault, FaultKind, FaultPlan, PlanSpace, TimedFault};
use sim::world::{NodeLife, World, WorldConfig};
use sim::LatencyProfile;
use sim::Violation;

use crate::broker::checkers::LIVENESS;
use crate::broker::{config_violation, parse_bugs, wait_for};
use crate::scenario::RunInput;
use history::History;
use node::Node;
use settings::Settings;
use shapes::Figure8;

/// The group's member ids; member `i` is node `NODES[i - 1]`.
pub const MEMBERS: [u32; 3] = [1, 2, 3];
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const PRODUCERS: [&str; 2] = ["producer-1", "producer-2"];
const CONSUMER: &str = "consumer";
const ROOT: &str = "/store";
/// Liveness bound after the faults: a leader that committed in its term, serving.
const BOUND_MS: u64 = 10_000;

pub fn node_name(id: u32) -> &'static str {
    NODES[(id - 1) as usize]
}

/// The bugs this scenario can switch on: those of DLedger mode's paths its checkers catch
/// within the zoo's 500 seeds (each with a witness in `seeds/`).
/// `dledger-follower-truncates-committed` is not among them: a follower is asked to drop an
/// entry it counts committed only by a leader whose log lacks a committed entry, which Raft's
/// leader completeness rules out while every other rule holds; engine tests show it.
pub fn bugs() -> Vec<&'static str> {
    [
        Bug::RecoveryCheckFlagMiswired,
        Bug::DledgerSizeWithoutHeader,
        Bug::DledgerDoubleVote,
        Bug::DledgerCommitBeforeDurable,
        Bug::DledgerCommitOlderTermByCount,
    ]
    .map(Bug::id)
    .to_vec()
}

/// The fault kinds, on the three members, within a 10 s window (the workload runs 12 s).
/// No bit flips: a replica whose durable entries rot is beyond what Raft tolerates.
pub fn plan_space() -> PlanSpace {
    let mut network_nodes: Vec<String> = NODES.iter().map(|n| n.to_string()).collect();
    network_nodes.extend(PRODUCERS.iter().map(|p| p.to_string()));
    network_nodes.push(CONSUMER.to_string());
    PlanSpace {
        nodes: NODES.iter().map(|n| n.to_string()).collect(),
        network_nodes,
        fault_window_ms: 10_000,
        max_events: 10,
        kinds: [
            FaultKind::Kill,
            FaultKind::PowerLoss,
            FaultKind::CleanShutdown,
            FaultKind::DiskErrors,
            FaultKind::DiskFull,
            FaultKind::ClockJump,
            FaultKind::Partition,
        ]
        .into_iter()
        .collect(),
    }
}

/// State shared by the run's nodes and the driver (the harness's memory, not a node's).
pub struct Shared {
    pub world: Arc<World>,
    pub seed: u64,
    bugs: BugSet,
    pub settings: Settings,
    history: Mutex<History>,
    nodes: Mutex<BTreeMap<u32, Weak<Node>>>,
    figure8: Mutex<Figure8>,
    /// Boots whose recovery checks have finished.
    pub checks_done: AtomicU64,
}

impl Shared {
    pub fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn nodes(&self) -> MutexGuard<'_, BTreeMap<u32, Weak<Node>>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn figure8(&self) -> MutexGuard<'_, Figure8> {
        self.figure8.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The serving member that leads the newest term, if any.
    pub async fn leader_now(&self) -> Option<u32> {
        let mut best = None;
        for id in MEMBERS {
            let Some(node) = self.node(id) else { continue };
            let r = node.replica.lock().await;
            let raft = &r.member.raft;
            if raft.role == Role::Leader && best.is_none_or(|(t, _)| raft.term > t) {
                best = Some((raft.term, id));
            }
        }
        best.map(|(_, id)| id)
    }

    pub fn now_ms(&self) -> u64 {
        self.world.trace().now_us() / 1_000
    }

    /// Member `id`'s address: the world numbers nodes 10.0.0.11, .12, ... in creation order,
    /// and the members are created first.
    pub fn addr(&self, id: u32) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 10 + id as u8], rpc::BROKER_PORT))
    }

    pub fn set_node(&self, id: u32, node: &Arc<Node>) {
        self.nodes().insert(id, Arc::downgrade(node));
    }

    pub fn clear_node(&self, id: u32) {
        self.nodes().remove(&id);
    }

    /// Member `id`'s serving boot, if it is up.
    fn node(&self, id: u32) -> Option<Arc<Node>> {
        let up = self.world.life(node_name(id)) == Some(NodeLife::Up);
        self.nodes().get(&id).and_then(Weak::upgrade).filter(|_| up)
    }

    pub fn replica_config(&self, id: u32) -> ReplicaConfig {
        ReplicaConfig {
            root: PathBuf::from(ROOT),
            self_id: id,
            members: MEMBERS.into_iter().collect(),
            log: self.settings.log,
            cq_units_per_file: self.settings.cq_units_per_file,
            bugs: self.bugs.clone(),
        }
    }
}

/// A power loss on all three members at once, restarted together: drawn from the seed
/// (`group_power_loss = false` in the case's config turns it off).
fn group_power_loss(settings: &Settings, seed: u64) -> Option<(u64, u64)> {
    if !settings.group_power_loss {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6a0e_9f0f);
    rng.gen_bool(0.3).then(|| (rng.gen_range(1_000..9_000), rng.gen_range(100..1_500)))
}

/// The members' disks' sync latency, drawn from the seed: with slow syncs a leader's own
/// flush often trails its followers' acknowledgements, the window in which its commit runs
/// ahead of what it holds durably.
fn sync_latency(seed: u64) -> LatencyProfile {
    let profiles =
        [LatencyProfile::CLOUD_VM, LatencyProfile::CONSUMER_NVME, LatencyProfile { p50_us: 2_000, p99_us: 30_000 }];
    profiles[ChaCha8Rng::seed_from_u64(seed ^ 0x5c_1a7e).gen_range(0..profiles.len())]
}

/// The plan with the group power loss added: one power loss per member at the same time,
/// played by the world like any other (a later crash supersedes a pending restart).
fn with_group_power_loss(mut plan: FaultPlan, group: Option<(u64, u64)>) -> FaultPlan {
    if let Some((at_ms, restart_after_ms)) = group {
        for name in NODES {
            let fault = Fault::PowerLoss { node: name.to_string(), restart_after_ms, image: None };
            plan.events.push(TimedFault { at_ms, fault });
        }
        plan.events.sort_by_key(|e| e.at_ms);
    }
    plan
}

/// Runs the scenario in the current simulation; returns the checkers' violations.
pub async fn run(input: RunInput) -> Vec<Violation> {
    let bugs = match parse_bugs(&input.bugs) {
        Ok(b) => b,
        Err(e) => return config_violation(e),
    };
    let settings = match settings::parse(&input.config) {
        Ok(s) => s,
        Err(e) => return config_violation(e),
    };
    let group_loss = group_power_loss(&settings, input.seed);
    let plan = with_group_power_loss(input.plan, group_loss);
    let mut world_config = WorldConfig::default();
    match &settings.disk {
        Some(disk) => world_config.disk = disk.clone(),
        None => world_config.disk.sync_latency = sync_latency(input.seed),
    }
    let latency = world_config.disk.sync_latency;
    let world = World::new(input.seed, input.trace.clone(), plan, world_config);
    sim::trace!(
        input.trace,
        "world",
        "dledger.config",
        "bugs={:?} group_power_loss={group_loss:?} sync_latency={latency:?}",
        input.bugs
    );
    let sh = Arc::new(Shared {
        world: world.clone(),
        seed: input.seed,
        bugs,
        settings,
        history: Mutex::new(History::default()),
        nodes: Mutex::new(BTreeMap::new()),
        figure8: Mutex::new(Figure8::Off),
        checks_done: AtomicU64::new(0),
    });
    let mut ids = Vec::new();
    for id in MEMBERS {
        let s = sh.clone();
        ids.push(world.add_node(node_name(id), move || node::broker_process(s.clone(), id)));
    }
    for (i, name) in PRODUCERS.iter().enumerate() {
        let s = sh.clone();
        world.add_node(name, move || workload::producer(s.clone(), i as u32 + 1));
    }
    let s = sh.clone();
    world.add_node(CONSUMER, move || workload::consumer(s.clone()));
    let shapes = shapes::play(&sh, &sh.settings.shapes);
    world.play_faults().await;
    for s in shapes {
        let _ = s.await;
    }
    let workload_end = Duration::from_millis(workload::WORKLOAD_MS + 500);
    let elapsed = Duration::from_millis(sh.now_ms());
    if elapsed < workload_end {
        tokio::time::sleep(workload_end - elapsed).await;
    }
    final_phase(&sh, &ids).await;
    let now_ms = sh.now_ms();
    let violations = {
        let mut h = sh.history();
        let mut found = checkers::queue_offsets(&h.ledger, now_ms);
        found.extend(checkers::reads_committed(&h, now_ms));
        h.violations.extend(found);
        std::mem::take(&mut h.violations)
    };
    sh.world.kill_all();
    violations
}

/// The leader, once it has committed an entry of its own term and dispatched everything
/// committed, and a majority of the serving members are in its term (a leader cut off and
/// healed goes on leading an old term until it hears of the new one).
async fn settled_leader(sh: &Shared) -> Option<Arc<Node>> {
    let mut terms = Vec::new();
    let mut found = None;
    for id in MEMBERS {
        let Some(node) = sh.node(id) else { continue };
        let r = node.replica.lock().await;
        let raft = &r.member.raft;
        terms.push(raft.term);
        let own_term = raft.commit.is_some_and(|c| r.member.log.term_at(Some(c)).ok() == Some(raft.term));
        let caught_up = r.committed_pos().is_ok_and(|p| r.reput_pos() >= p);
        if raft.role == Role::Leader && own_term && caught_up && found.as_ref().is_none_or(|(t, _)| raft.term > *t) {
            found = Some((raft.term, node.clone()));
        }
    }
    let (term, node) = found?;
    let newest = terms.iter().all(|&t| t <= term);
    (newest && terms.iter().filter(|&&t| t == term).count() > MEMBERS.len() / 2).then_some(node)
}

/// After the faults: a leader must serve every acknowledged message; then every member shuts
/// down cleanly and boots once more, running the recovery checks.
async fn final_phase(sh: &Arc<Shared>, ids: &[madsim::task::NodeId]) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(BOUND_MS);
    let mut leader = None;
    while leader.is_none() && tokio::time::Instant::now() < deadline {
        leader = settled_leader(sh).await;
        if leader.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    match leader {
        None => {
            let now = sh.now_ms();
            sh.history().violation(LIVENESS, format!("no leader settled within {BOUND_MS} ms of the faults"), now);
        }
        Some(node) => {
            let acked: Vec<_> = sh.history().acked.iter().map(|(id, a)| (*id, a.clone())).collect();
            let r = node.replica.lock().await;
            let mut missing = Vec::new();
            for (id, a) in &acked {
                let got = r.get(&a.topic, a.queue_id, a.queue_offset, 1);
                let ok = got.as_ref().is_ok_and(|v| {
                    v.first().is_some_and(|m| {
                        m.queue_offset == a.queue_offset && crate::broker::history::id_of_body(&m.body) == Some(*id)
                    })
                });
                if !ok {
                    missing.push(format!(
                        "{id:?} at {}/{} offset {} (entry {})",
                        a.topic, a.queue_id, a.queue_offset, a.index
                    ));
                }
            }
            drop(r);
            if !missing.is_empty() {
                let now = sh.now_ms();
                let msg = format!(
                    "n{}: {} of {} acknowledged messages not readable, e.g. {}",
                    node.id,
                    missing.len(),
                    acked.len(),
                    missing[..missing.len().min(3)].join("; ")
                );
                sh.history().violation(checkers::ACKED_READABLE, msg, now);
            }
        }
    }
    // Every member serving first: a ctrl-c reaching a process that has not asked for it yet
    // (just restarted) kills it.
    if !wait_for(BOUND_MS, || MEMBERS.iter().all(|&id| sh.node(id).is_some())).await {
        let now = sh.now_ms();
        sh.history().violation(LIVENESS, format!("not every member serving within {BOUND_MS} ms of the faults"), now);
    }
    let handle = madsim::runtime::Handle::current();
    for (i, &id) in ids.iter().enumerate() {
        if sh.world.life(NODES[i]) == Some(NodeLife::Up) {
            handle.send_ctrl_c(id);
        }
    }
    let all_stopped = || NODES.iter().all(|n| sh.world.life(n) == Some(NodeLife::Stopped));
    if !wait_for(BOUND_MS, all_stopped).await {
        let now = sh.now_ms();
        sh.history().violation(LIVENESS, "not every member shut down cleanly in time".into(), now);
    }
    let boots = sh.checks_done.load(Ordering::SeqCst);
    for (i, &id) in ids.iter().enumerate() {
        let stopped = sh.world.life(NODES[i]) == Some(NodeLife::Stopped);
        // Killed first even when stopped: madsim's restart alone leaves the node's sockets bound.
        handle.kill(id);
        if !stopped {
            sh.world.disk(NODES[i]).crash(sim::disk::CrashKind::ProcessCrash);
        }
        handle.restart(id);
        sh.world.report_up(NODES[i]);
    }
    if !wait_for(BOUND_MS, || sh.checks_done.load(Ordering::SeqCst) >= boots + 3).await {
        let now = sh.now_ms();
        sh.history().violation(LIVENESS, "the final restarts did not finish recovery".into(), now);
    }
}
