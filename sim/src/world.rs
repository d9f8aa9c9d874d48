//! The world of one run: its nodes, each node's disk and clock, the object store, and the
//! fault controller that plays the run's fault plan against them.
//!
//! The world outlives every node's process: disks, clocks and the object store are held here,
//! not by the nodes' futures, so a kill drops a node's memory but not its machine. Scenarios
//! build nodes with an `init` closure (madsim re-runs it on every restart) that opens the
//! node's disk through `World::disk(..).storage()`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use madsim::runtime::Handle;
use madsim::task::NodeId;

use crate::clock::NodeClock;
use crate::disk::{CrashImage, CrashKind, DiskConfig, DiskFaults, PowerLossModel, SimDisk};
use crate::fault_plan::{Fault, FaultPlan};
use crate::object_store::{ObjectStoreConfig, ObjectStoreFaults, SimObjectStore};
use crate::trace::Trace;

/// Where a node's process is in its life, as the fault controller and checkers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeLife {
    /// Booting or serving.
    Up,
    /// A clean shutdown was requested and has not finished.
    ShuttingDown,
    /// The process finished a clean shutdown.
    Stopped,
    /// Killed (process crash or power loss), waiting for its restart.
    Down,
}

#[derive(Debug)]
struct NodeEntry {
    id: NodeId,
    life: NodeLife,
    /// Bumped by every crash; a scheduled restart only fires if no later crash superseded it.
    restart_token: u64,
    disk_fault_token: u64,
    capacity_token: u64,
}

/// How the world's machines are built.
#[derive(Debug, Clone, Default)]
pub struct WorldConfig {
    pub disk: DiskConfig,
    /// `None`: no object store in this world.
    pub object_store: Option<ObjectStoreConfig>,
}

/// The world of one run.
pub struct World {
    seed: u64,
    trace: Arc<Trace>,
    plan: FaultPlan,
    config: WorldConfig,
    nodes: Mutex<BTreeMap<String, NodeEntry>>,
    disks: Mutex<BTreeMap<String, Arc<SimDisk>>>,
    clocks: Mutex<BTreeMap<String, Arc<NodeClock>>>,
    object_store: Option<Arc<SimObjectStore>>,
    object_fault_token: Mutex<u64>,
    /// Per node pair (sorted names): the newest partition, so an older window's end does not
    /// heal a newer one.
    partition_tokens: Mutex<BTreeMap<(String, String), u64>>,
    next_ip: Mutex<u8>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("seed", &self.seed).field("nodes", &*lock(&self.nodes)).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl World {
    /// Builds the world; call inside the run's runtime (it may start the object-store node).
    pub fn new(seed: u64, trace: Arc<Trace>, plan: FaultPlan, mut config: WorldConfig) -> Arc<World> {
        let b = plan.background;
        config.disk.power_loss = PowerLossModel {
            keep_page_prob: b.power_loss_keep_page_prob,
            tear_page_prob: b.power_loss_tear_page_prob,
            keep_dir_op_prob: b.power_loss_keep_dir_op_prob,
            ..config.disk.power_loss
        };
        let object_store = config.object_store.clone().map(|c| {
            let store = SimObjectStore::start(c, seed, trace.clone());
            store.set_faults(background_object_faults(&plan));
            store
        });
        let world = Arc::new(World {
            seed,
            trace,
            plan,
            config,
            nodes: Mutex::new(BTreeMap::new()),
            disks: Mutex::new(BTreeMap::new()),
            clocks: Mutex::new(BTreeMap::new()),
            object_store,
            object_fault_token: Mutex::new(0),
            partition_tokens: Mutex::new(BTreeMap::new()),
            next_ip: Mutex::new(10),
        });
        if let Some(store) = &world.object_store {
            world.register("objstore", store.node_id());
        }
        world
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn trace(&self) -> &Arc<Trace> {
        &self.trace
    }

    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    pub fn object_store(&self) -> Option<&Arc<SimObjectStore>> {
        self.object_store.as_ref()
    }

    fn register(&self, name: &str, id: NodeId) {
        let entry = NodeEntry { id, life: NodeLife::Up, restart_token: 0, disk_fault_token: 0, capacity_token: 0 };
        lock(&self.nodes).insert(name.to_string(), entry);
    }

    /// Creates a node whose process runs `init` (again after every restart). Its disk and
    /// clock are created now and survive every crash.
    pub fn add_node<F, Fut>(self: &Arc<Self>, name: &str, init: F) -> NodeId
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let disk_seed = self.seed ^ 0xd15c_0000;
        lock(&self.disks)
            .entry(name.to_string())
            .or_insert_with(|| SimDisk::new(name, self.config.disk.clone(), disk_seed, self.trace.clone()));
        lock(&self.clocks).entry(name.to_string()).or_insert_with(|| NodeClock::new(name, 0, self.trace.clone()));
        let ip = {
            let mut next = lock(&self.next_ip);
            *next = next.wrapping_add(1);
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, *next))
        };
        let node = Handle::current().create_node().name(name).ip(ip).init(init).build();
        self.register(name, node.id());
        crate::trace!(self.trace, name, "node.create", "ip={ip}");
        node.id()
    }

    /// Kills every node at the end of a run. madsim does not drop a node's tasks, nor the
    /// init closure it keeps for restarts, when the runtime is dropped; a scenario whose
    /// tasks or closures share state with the world (an `Arc` cycle through wakers) would
    /// otherwise leak that whole state, disk images included, on every run.
    pub fn kill_all(&self) {
        let handle = Handle::current();
        for entry in lock(&self.nodes).values() {
            handle.kill(entry.id);
        }
    }

    /// A node's disk. Panics on an unknown name: that is a scenario bug, not a fault.
    pub fn disk(&self, node: &str) -> Arc<SimDisk> {
        lock(&self.disks).get(node).cloned().unwrap_or_else(|| panic!("no disk for node {node}"))
    }

    /// Replaces a node's disk with a new, empty one (a replaced container: the process comes
    /// back on another machine). Call while the node is down; its old handles see the old disk.
    pub fn replace_disk(&self, node: &str) -> Arc<SimDisk> {
        let mut disks = lock(&self.disks);
        // Seeded by the time of the replacement: a second replacement gets other fates.
        let seed = self.seed ^ 0x5eed_d15c ^ self.trace.now_us();
        let disk = SimDisk::new(node, self.config.disk.clone(), seed, self.trace.clone());
        disks.insert(node.to_string(), disk.clone());
        crate::trace!(self.trace, node, "disk.replace", "a new, empty disk");
        disk
    }

    /// A node's wall clock.
    pub fn clock(&self, node: &str) -> Arc<NodeClock> {
        lock(&self.clocks).get(node).cloned().unwrap_or_else(|| panic!("no clock for node {node}"))
    }

    pub fn node_id(&self, node: &str) -> Option<NodeId> {
        lock(&self.nodes).get(node).map(|n| n.id)
    }

    pub fn life(&self, node: &str) -> Option<NodeLife> {
        lock(&self.nodes).get(node).map(|n| n.life)
    }

    /// Called by a node's process when it has finished a clean shutdown.
    pub fn report_stopped(&self, node: &str) {
        if let Some(n) = lock(&self.nodes).get_mut(node) {
            n.life = NodeLife::Stopped;
        }
        crate::trace!(self.trace, node, "node.stopped", "clean");
    }

    /// Called by a node's process when it (re)starts serving.
    pub fn report_up(&self, node: &str) {
        if let Some(n) = lock(&self.nodes).get_mut(node) {
            n.life = NodeLife::Up;
        }
    }

    /// Plays the plan: each event at its time, each window closed at its end, each crashed
    /// node restarted. Returns when the last event has been applied and every window closed.
    pub async fn play_faults(self: &Arc<Self>) {
        let start = tokio::time::Instant::now();
        let mut pending = Vec::new();
        for event in self.plan.events.clone() {
            tokio::time::sleep_until(start + Duration::from_millis(event.at_ms)).await;
            crate::trace!(self.trace, event.fault.node().unwrap_or("world"), "fault", "{}", event.fault);
            if let Some(task) = self.apply(&event.fault) {
                pending.push(task);
            }
        }
        for task in pending {
            let _ = task.await;
        }
    }

    /// Applies `fault` now, outside the plan (a scenario's nemesis reacting to what its
    /// nodes do: the leader of the moment, say), traced like a planned one. Returns the task
    /// that ends it (restart, window close), spawned on the caller's node.
    pub fn inject(self: &Arc<Self>, fault: &Fault) -> Option<tokio::task::JoinHandle<()>> {
        crate::trace!(self.trace, fault.node().unwrap_or("world"), "fault", "{fault}");
        self.apply(fault)
    }

    /// Cuts the link between `a` and `b` both ways until `heal` (or a planned partition of the
    /// pair ends); spawns nothing, so a node's own task may call it and the cut takes effect
    /// before that task's next send.
    pub fn cut(&self, a: &str, b: &str) {
        let (Some(ida), Some(idb)) = (self.node_id(a), self.node_id(b)) else { return };
        self.bump_partition_token(a, b);
        let net = madsim::net::NetSim::current();
        net.clog_link(ida, idb);
        net.clog_link(idb, ida);
        crate::trace!(self.trace, "world", "partition.cut", "{a} <-> {b}");
    }

    /// Heals the link between `a` and `b` (a pending planned window of the pair no longer
    /// heals it later, nor matters).
    pub fn heal(&self, a: &str, b: &str) {
        let (Some(ida), Some(idb)) = (self.node_id(a), self.node_id(b)) else { return };
        self.bump_partition_token(a, b);
        let net = madsim::net::NetSim::current();
        net.unclog_link(ida, idb);
        net.unclog_link(idb, ida);
        crate::trace!(self.trace, "world", "partition.heal", "{a} <-> {b}");
    }

    fn bump_partition_token(&self, a: &str, b: &str) -> u64 {
        let pair = if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) };
        let mut tokens = lock(&self.partition_tokens);
        let t = tokens.entry(pair).or_insert(0);
        *t += 1;
        *t
    }

    /// Applies one fault now; returns the task that ends it (restart, window close) if any.
    fn apply(self: &Arc<Self>, fault: &Fault) -> Option<tokio::task::JoinHandle<()>> {
        probe_fault(fault);
        match fault {
            Fault::Kill { node, restart_after_ms } => {
                self.crash(node, CrashKind::ProcessCrash, *restart_after_ms, None)
            }
            Fault::PowerLoss { node, restart_after_ms, image } => {
                self.crash(node, CrashKind::PowerLoss, *restart_after_ms, *image)
            }
            Fault::CleanShutdown { node, restart_after_ms } => self.clean_shutdown(node, *restart_after_ms),
            Fault::DiskErrors { node, read_eio_prob, write_eio_prob, sync_eio_prob, duration_ms } => {
                let faults = DiskFaults {
                    read_eio_prob: *read_eio_prob,
                    write_eio_prob: *write_eio_prob,
                    sync_eio_prob: *sync_eio_prob,
                };
                self.disk_fault_window(node, faults, *duration_ms)
            }
            Fault::DiskFull { node, duration_ms } => self.disk_full_window(node, *duration_ms),
            Fault::BitFlip { node } => {
                self.disk(node).inject_bit_flip();
                None
            }
            Fault::ObjectStoreErrors {
                error_prob,
                ack_lost_prob,
                partial_append_prob,
                size_fail_prob,
                duration_ms,
            } => {
                let faults = ObjectStoreFaults {
                    error_prob: *error_prob,
                    ack_lost_prob: *ack_lost_prob,
                    partial_append_prob: *partial_append_prob,
                    size_fail_prob: *size_fail_prob,
                    extra_latency_ms: 0,
                };
                self.object_fault_window(Some(faults), *duration_ms)
            }
            Fault::ObjectStoreOutage { duration_ms } => self.object_fault_window(None, *duration_ms),
            Fault::ClockJump { node, delta_ms } => {
                self.clock(node).jump(*delta_ms);
                None
            }
            Fault::ClockFreeze { node, duration_ms } => {
                let clock = self.clock(node);
                let token = clock.freeze();
                let duration = Duration::from_millis(*duration_ms);
                Some(tokio::spawn(async move {
                    tokio::time::sleep(duration).await;
                    clock.thaw(token);
                }))
            }
            Fault::Partition { a, b, duration_ms } => self.partition(a, b, *duration_ms),
        }
    }

    /// Kills `node` now (if it is up) and crashes its disk; restarts it after `restart_after_ms`
    /// unless a later crash pushed the restart further out.
    fn crash(
        self: &Arc<Self>,
        node: &str,
        kind: CrashKind,
        restart_after_ms: u64,
        image: Option<CrashImage>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (id, token) = {
            let mut nodes = lock(&self.nodes);
            let entry = nodes.get_mut(node)?;
            entry.life = NodeLife::Down;
            entry.restart_token += 1;
            (entry.id, entry.restart_token)
        };
        Handle::current().kill(id);
        if let Some(disk) = lock(&self.disks).get(node) {
            disk.crash_to(kind, image);
        }
        Some(self.restart_later(node, token, restart_after_ms))
    }

    fn restart_later(self: &Arc<Self>, node: &str, token: u64, after_ms: u64) -> tokio::task::JoinHandle<()> {
        let world = self.clone();
        let node = node.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            let id = {
                let mut nodes = lock(&world.nodes);
                let Some(entry) = nodes.get_mut(&node) else { return };
                if entry.restart_token != token {
                    return;
                }
                entry.life = NodeLife::Up;
                entry.id
            };
            crate::trace!(world.trace, &node, "node.restart", "");
            Handle::current().restart(id);
        })
    }

    /// Asks `node` to shut down cleanly. If it has not stopped when the restart is due, it is
    /// killed there and then: a crash in the middle of a shutdown.
    fn clean_shutdown(self: &Arc<Self>, node: &str, restart_after_ms: u64) -> Option<tokio::task::JoinHandle<()>> {
        let (id, token) = {
            let mut nodes = lock(&self.nodes);
            let entry = nodes.get_mut(node)?;
            if entry.life != NodeLife::Up {
                return None;
            }
            entry.life = NodeLife::ShuttingDown;
            entry.restart_token += 1;
            (entry.id, entry.restart_token)
        };
        Handle::current().send_ctrl_c(id);
        let world = self.clone();
        let node = node.to_string();
        Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(restart_after_ms)).await;
            let unfinished = {
                let mut nodes = lock(&world.nodes);
                let Some(entry) = nodes.get_mut(&node) else { return };
                if entry.restart_token != token {
                    return;
                }
                let unfinished = entry.life == NodeLife::ShuttingDown;
                entry.life = NodeLife::Up;
                unfinished
            };
            if unfinished {
                engine::probe!("fault.shutdown-unfinished");
                crate::trace!(world.trace, &node, "node.shutdown-unfinished", "killing");
                Handle::current().kill(id);
                world.disk(&node).crash(CrashKind::ProcessCrash);
            }
            crate::trace!(world.trace, &node, "node.restart", "");
            Handle::current().restart(id);
        }))
    }

    fn disk_fault_window(
        self: &Arc<Self>,
        node: &str,
        faults: DiskFaults,
        duration_ms: u64,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let token = {
            let mut nodes = lock(&self.nodes);
            let entry = nodes.get_mut(node)?;
            entry.disk_fault_token += 1;
            entry.disk_fault_token
        };
        self.disk(node).set_faults(faults);
        let world = self.clone();
        let node = node.to_string();
        Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(duration_ms)).await;
            if lock(&world.nodes).get(&node).is_some_and(|e| e.disk_fault_token == token) {
                world.disk(&node).clear_faults();
            }
        }))
    }

    fn disk_full_window(self: &Arc<Self>, node: &str, duration_ms: u64) -> Option<tokio::task::JoinHandle<()>> {
        let token = {
            let mut nodes = lock(&self.nodes);
            let entry = nodes.get_mut(node)?;
            entry.capacity_token += 1;
            entry.capacity_token
        };
        let disk = self.disk(node);
        disk.set_capacity(Some(disk.usage_bytes()));
        let world = self.clone();
        let node = node.to_string();
        Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(duration_ms)).await;
            if lock(&world.nodes).get(&node).is_some_and(|e| e.capacity_token == token) {
                world.disk(&node).set_capacity(world.config.disk.capacity_bytes);
            }
        }))
    }

    /// `Some(faults)`: an error window; `None`: an outage.
    fn object_fault_window(
        self: &Arc<Self>,
        faults: Option<ObjectStoreFaults>,
        duration_ms: u64,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let store = self.object_store.clone()?;
        let token = {
            let mut t = lock(&self.object_fault_token);
            *t += 1;
            *t
        };
        match faults {
            Some(f) => store.set_faults(f),
            None => store.set_unavailable(true),
        }
        let world = self.clone();
        Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(duration_ms)).await;
            if *lock(&world.object_fault_token) == token {
                store.set_unavailable(false);
                store.set_faults(background_object_faults(&world.plan));
            }
        }))
    }

    fn partition(self: &Arc<Self>, a: &str, b: &str, duration_ms: u64) -> Option<tokio::task::JoinHandle<()>> {
        let (ida, idb) = (self.node_id(a)?, self.node_id(b)?);
        let pair = if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) };
        let token = self.bump_partition_token(a, b);
        let net = madsim::net::NetSim::current();
        net.clog_link(ida, idb);
        net.clog_link(idb, ida);
        let world = self.clone();
        let trace = self.trace.clone();
        let (a, b) = (a.to_string(), b.to_string());
        Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(duration_ms)).await;
            if lock(&world.partition_tokens).get(&pair) != Some(&token) {
                return;
            }
            let net = madsim::net::NetSim::current();
            net.unclog_link(ida, idb);
            net.unclog_link(idb, ida);
            crate::trace!(trace, "world", "partition.heal", "{a} <-> {b}");
        }))
    }
}

/// One coverage probe per fault kind played.
fn probe_fault(fault: &Fault) {
    match fault {
        Fault::Kill { .. } => engine::probe!("fault.kill"),
        Fault::PowerLoss { .. } => engine::probe!("fault.power-loss"),
        Fault::CleanShutdown { .. } => engine::probe!("fault.clean-shutdown"),
        Fault::DiskErrors { .. } => engine::probe!("fault.disk-errors"),
        Fault::DiskFull { .. } => engine::probe!("fault.disk-full"),
        Fault::BitFlip { .. } => engine::probe!("fault.bit-flip"),
        Fault::ObjectStoreErrors { .. } => engine::probe!("fault.object-store-errors"),
        Fault::ObjectStoreOutage { .. } => engine::probe!("fault.object-store-outage"),
        Fault::ClockJump { .. } => engine::probe!("fault.clock-jump"),
        Fault::ClockFreeze { .. } => engine::probe!("fault.clock-freeze"),
        Fault::Partition { .. } => engine::probe!("fault.partition"),
    }
}

/// The object store's faults outside any fault window: the plan's background probabilities.
pub fn background_object_faults(plan: &FaultPlan) -> ObjectStoreFaults {
    ObjectStoreFaults {
        error_prob: plan.background.object_error_prob,
        ack_lost_prob: plan.background.object_ack_lost_prob,
        ..ObjectStoreFaults::default()
    }
}
