//! Fault plans as data: a list of timed fault events plus the per-run background fault
//! probabilities, drawn from the seed (swarm testing) or read from a case file.
//!
//! Because a plan is data, a failing run can be saved, replayed after refactors and shrunk:
//! `dst shrink` removes events and zeroes probabilities while the failure persists.

use std::collections::BTreeSet;
use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::disk::CrashImage;

/// One fault, applied at a point of simulated time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// Process crash: the node dies, its page cache survives; restarted after a pause.
    Kill { node: String, restart_after_ms: u64 },
    /// Power loss: the node dies and unsynced pages are kept, dropped or torn: as drawn from
    /// the seed, or as `image` says (a crash state `dst crash-states` enumerated).
    PowerLoss {
        node: String,
        restart_after_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<CrashImage>,
    },
    /// Graceful stop (racing with whatever is in flight), then a restart. If the stop has not
    /// finished when the restart is due, the node is killed: a crash during shutdown.
    CleanShutdown { node: String, restart_after_ms: u64 },
    /// A window of disk errors on one node.
    DiskErrors { node: String, read_eio_prob: f64, write_eio_prob: f64, sync_eio_prob: f64, duration_ms: u64 },
    /// The disk is full (ENOSPC beyond its current usage) for a while.
    DiskFull { node: String, duration_ms: u64 },
    /// One bit flips in one durable sector of the node's disk.
    BitFlip { node: String },
    /// A window of object-store faults.
    ObjectStoreErrors {
        error_prob: f64,
        ack_lost_prob: f64,
        partial_append_prob: f64,
        size_fail_prob: f64,
        duration_ms: u64,
    },
    /// The object store is unreachable for a while.
    ObjectStoreOutage { duration_ms: u64 },
    /// The node's wall clock jumps by `delta_ms` (negative: backwards).
    ClockJump { node: String, delta_ms: i64 },
    /// The node's wall clock stands still for a while (every reading repeats), then runs on
    /// from the real time.
    ClockFreeze { node: String, duration_ms: u64 },
    /// No traffic between `a` and `b` for a while.
    Partition { a: String, b: String, duration_ms: u64 },
}

impl Fault {
    /// The node a fault targets, if it targets one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Fault::Kill { node, .. }
            | Fault::PowerLoss { node, .. }
            | Fault::CleanShutdown { node, .. }
            | Fault::DiskErrors { node, .. }
            | Fault::DiskFull { node, .. }
            | Fault::BitFlip { node }
            | Fault::ClockJump { node, .. }
            | Fault::ClockFreeze { node, .. } => Some(node),
            Fault::ObjectStoreErrors { .. } | Fault::ObjectStoreOutage { .. } | Fault::Partition { .. } => None,
        }
    }

    /// Short kind name, as used in traces and summaries.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Kill { .. } => FaultKind::Kill,
            Fault::PowerLoss { .. } => FaultKind::PowerLoss,
            Fault::CleanShutdown { .. } => FaultKind::CleanShutdown,
            Fault::DiskErrors { .. } => FaultKind::DiskErrors,
            Fault::DiskFull { .. } => FaultKind::DiskFull,
            Fault::BitFlip { .. } => FaultKind::BitFlip,
            Fault::ObjectStoreErrors { .. } => FaultKind::ObjectStoreErrors,
            Fault::ObjectStoreOutage { .. } => FaultKind::ObjectStoreOutage,
            Fault::ClockJump { .. } => FaultKind::ClockJump,
            Fault::ClockFreeze { .. } => FaultKind::ClockFreeze,
            Fault::Partition { .. } => FaultKind::Partition,
        }
    }

    /// How long after it starts the fault's effects last (0 for instantaneous faults, the
    /// restart pause for crashes).
    pub fn duration_ms(&self) -> u64 {
        match self {
            Fault::Kill { restart_after_ms, .. }
            | Fault::PowerLoss { restart_after_ms, .. }
            | Fault::CleanShutdown { restart_after_ms, .. } => *restart_after_ms,
            Fault::DiskErrors { duration_ms, .. }
            | Fault::DiskFull { duration_ms, .. }
            | Fault::ObjectStoreErrors { duration_ms, .. }
            | Fault::ObjectStoreOutage { duration_ms }
            | Fault::ClockFreeze { duration_ms, .. }
            | Fault::Partition { duration_ms, .. } => *duration_ms,
            Fault::BitFlip { .. } | Fault::ClockJump { .. } => 0,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

/// The kinds of fault a plan can draw, for swarm selection and `--faults` filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    Kill,
    PowerLoss,
    CleanShutdown,
    DiskErrors,
    DiskFull,
    BitFlip,
    ObjectStoreErrors,
    ObjectStoreOutage,
    ClockJump,
    Partition,
    /// Not in any scenario's independent draw (that would move every saved seed's plan):
    /// drawn in chained sequences.
    ClockFreeze,
}

impl FaultKind {
    pub const ALL: [FaultKind; 11] = [
        FaultKind::Kill,
        FaultKind::PowerLoss,
        FaultKind::CleanShutdown,
        FaultKind::DiskErrors,
        FaultKind::DiskFull,
        FaultKind::BitFlip,
        FaultKind::ObjectStoreErrors,
        FaultKind::ObjectStoreOutage,
        FaultKind::ClockJump,
        FaultKind::Partition,
        FaultKind::ClockFreeze,
    ];
}

/// A fault at a point of simulated time (milliseconds since the run started).
/// (No `deny_unknown_fields` here: serde does not support it with `flatten`; `Fault` itself
/// rejects unknown fields.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimedFault {
    pub at_ms: u64,
    #[serde(flatten)]
    pub fault: Fault,
}

/// Background probabilities in force for the whole run (outside any fault window).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Background {
    /// Per dirty page at a power loss: survives whole.
    pub power_loss_keep_page_prob: f64,
    /// Per dirty page at a power loss: torn at sector granularity (else dropped).
    pub power_loss_tear_page_prob: f64,
    /// Per pending directory operation at a power loss: survives (a prefix survives).
    pub power_loss_keep_dir_op_prob: f64,
    /// Network packet loss between all nodes.
    pub packet_loss_prob: f64,
    /// Object-store requests whose acknowledgement is lost although they were applied.
    pub object_ack_lost_prob: f64,
    /// Object-store requests that fail outright.
    pub object_error_prob: f64,
}

impl Default for Background {
    fn default() -> Background {
        Background {
            power_loss_keep_page_prob: 0.5,
            power_loss_tear_page_prob: 0.2,
            power_loss_keep_dir_op_prob: 0.5,
            packet_loss_prob: 0.0,
            object_ack_lost_prob: 0.0,
            object_error_prob: 0.0,
        }
    }
}

/// A run's faults: what happens when, and the background probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    #[serde(default)]
    pub events: Vec<TimedFault>,
    #[serde(default)]
    pub background: Background,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("malformed fault plan: {0}")]
    Malformed(String),
    #[error("fault plan event {index} ({fault}): {reason}")]
    Invalid { index: usize, fault: String, reason: String },
}

/// What a generator may draw from: the scenario's nodes and how long faults may go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpace {
    /// Nodes whose process/disk/clock may be faulted (brokers).
    pub nodes: Vec<String>,
    /// Nodes that may be partitioned from each other (brokers, clients, the object store).
    pub network_nodes: Vec<String>,
    /// Faults happen within `[0, fault_window_ms)`; the scenario runs quietly after it.
    pub fault_window_ms: u64,
    /// At most this many timed events.
    pub max_events: usize,
    /// Kinds that may be drawn; each run enables a random subset (swarm testing).
    pub kinds: BTreeSet<FaultKind>,
}

impl FaultPlan {
    /// Parses a plan from TOML or JSON text (JSON if it starts with `{`).
    pub fn parse(text: &str) -> Result<FaultPlan, PlanError> {
        let plan: FaultPlan = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| PlanError::Malformed(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| PlanError::Malformed(e.to_string()))?
        };
        plan.validate()?;
        Ok(plan)
    }

    /// Checks ranges: probabilities in [0, 1], events in time order, names non-empty.
    pub fn validate(&self) -> Result<(), PlanError> {
        let b = &self.background;
        for (name, p) in [
            ("power_loss_keep_page_prob", b.power_loss_keep_page_prob),
            ("power_loss_tear_page_prob", b.power_loss_tear_page_prob),
            ("power_loss_keep_dir_op_prob", b.power_loss_keep_dir_op_prob),
            ("packet_loss_prob", b.packet_loss_prob),
            ("object_ack_lost_prob", b.object_ack_lost_prob),
            ("object_error_prob", b.object_error_prob),
        ] {
            check_prob(p).map_err(|reason| PlanError::Malformed(format!("background.{name}: {reason}")))?;
        }
        if b.power_loss_keep_page_prob + b.power_loss_tear_page_prob > 1.0 {
            return Err(PlanError::Malformed("background: keep + tear page probabilities exceed 1".into()));
        }
        let mut last_ms = 0;
        for (index, event) in self.events.iter().enumerate() {
            let invalid = |reason: String| PlanError::Invalid { index, fault: event.fault.to_string(), reason };
            if event.at_ms < last_ms {
                return Err(invalid(format!("at_ms {} is before the previous event's {last_ms}", event.at_ms)));
            }
            last_ms = event.at_ms;
            if event.fault.node().is_some_and(str::is_empty) {
                return Err(invalid("empty node name".into()));
            }
            for p in event_probs(&event.fault) {
                check_prob(p).map_err(invalid)?;
            }
        }
        Ok(())
    }

    /// Draws a plan from `seed`: a random subset of `space.kinds` is enabled (swarm testing),
    /// then up to `max_events` events of the enabled kinds at random times.
    pub fn generate(seed: u64, space: &PlanSpace) -> FaultPlan {
        // A stream of its own, so that the plan does not change when the simulation's use of
        // the runtime RNG does.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0fa1_7b1a_4e5e_ed00);
        let enabled: Vec<FaultKind> = space.kinds.iter().copied().filter(|_| rng.gen_bool(0.6)).collect();
        let background = Background {
            power_loss_keep_page_prob: prob(&mut rng, 0.7),
            power_loss_tear_page_prob: prob(&mut rng, 0.3),
            power_loss_keep_dir_op_prob: prob(&mut rng, 1.0),
            packet_loss_prob: if rng.gen_bool(0.3) { prob(&mut rng, 0.05) } else { 0.0 },
            object_ack_lost_prob: if rng.gen_bool(0.3) { prob(&mut rng, 0.1) } else { 0.0 },
            object_error_prob: if rng.gen_bool(0.3) { prob(&mut rng, 0.1) } else { 0.0 },
        };
        let mut events = Vec::new();
        if !enabled.is_empty() && !space.nodes.is_empty() && space.fault_window_ms > 0 {
            let count = rng.gen_range(1..=space.max_events.max(1));
            for _ in 0..count {
                let kind = enabled[rng.gen_range(0..enabled.len())];
                if let Some(fault) = draw_fault(&mut rng, kind, space) {
                    events.push(TimedFault { at_ms: rng.gen_range(0..space.fault_window_ms), fault });
                }
            }
        }
        events.sort_by_key(|e| e.at_ms);
        FaultPlan { events, background }
    }

    /// The time after which no fault is in effect any more.
    pub fn quiet_after_ms(&self) -> u64 {
        self.events.iter().map(|e| e.at_ms.saturating_add(e.fault.duration_ms())).max().unwrap_or(0)
    }
}

/// Draws one fault of `kind` from its own small seed: the building block for property tests
/// that generate plans event by event (and shrink them by dropping events).
pub fn draw_fault_from_seed(seed: u64, kind: FaultKind, space: &PlanSpace) -> Option<Fault> {
    draw_fault(&mut ChaCha8Rng::seed_from_u64(seed), kind, space)
}

/// Chained fault sequences: faults whose order and spacing matter, which independent timed
/// events reach only by chance. `count` chains of the kinds `space` allows, each starting in
/// the first half of the fault window (its steps may run past it):
/// - a failed sync, a crash inside that window, recovery, a clean shutdown (everything
///   flushed), then a power loss;
/// - a clean shutdown, the restart, a backward clock jump around it (or a frozen clock),
///   then a power loss;
/// - a power loss, then another one while the store is recovering from it.
///
/// Returned in time order.
pub fn draw_chains(rng: &mut ChaCha8Rng, space: &PlanSpace, count: usize) -> Vec<TimedFault> {
    use FaultKind as K;
    let has = |kinds: &[FaultKind]| kinds.iter().all(|k| space.kinds.contains(k));
    let mut chains: Vec<fn(&mut ChaCha8Rng, &str, u64) -> Vec<TimedFault>> = Vec::new();
    if has(&[K::DiskErrors, K::Kill, K::CleanShutdown, K::PowerLoss]) {
        chains.push(chain_failed_sync);
    }
    if has(&[K::CleanShutdown, K::ClockJump, K::PowerLoss]) {
        chains.push(chain_clock_back_after_restart);
    }
    if has(&[K::PowerLoss]) {
        chains.push(chain_power_loss_in_recovery);
    }
    let mut events = Vec::new();
    if chains.is_empty() || space.fault_window_ms < 2 {
        return events;
    }
    for _ in 0..count {
        let Some(node) = pick(rng, &space.nodes).cloned() else { return events };
        let start_ms = rng.gen_range(0..space.fault_window_ms / 2);
        let chain = chains[rng.gen_range(0..chains.len())];
        events.extend(chain(rng, &node, start_ms));
    }
    events.sort_by_key(|e| e.at_ms);
    events
}

fn chain_failed_sync(rng: &mut ChaCha8Rng, node: &str, at_ms: u64) -> Vec<TimedFault> {
    let node = node.to_string();
    let window_ms = rng.gen_range(50..500);
    let kill_ms = at_ms + rng.gen_range(0..window_ms);
    let restart_ms = rng.gen_range(10..300);
    let shutdown_ms = kill_ms + restart_ms + rng.gen_range(50..1_500);
    let shutdown_restart_ms = rng.gen_range(500..3_000);
    let power_ms = shutdown_ms + shutdown_restart_ms + rng.gen_range(20..1_500);
    let sync_failure = Fault::DiskErrors {
        node: node.clone(),
        read_eio_prob: 0.0,
        write_eio_prob: 0.0,
        sync_eio_prob: 1.0,
        duration_ms: window_ms,
    };
    vec![
        TimedFault { at_ms, fault: sync_failure },
        TimedFault { at_ms: kill_ms, fault: Fault::Kill { node: node.clone(), restart_after_ms: restart_ms } },
        TimedFault {
            at_ms: shutdown_ms,
            fault: Fault::CleanShutdown { node: node.clone(), restart_after_ms: shutdown_restart_ms },
        },
        TimedFault {
            at_ms: power_ms,
            fault: Fault::PowerLoss { node, restart_after_ms: rng.gen_range(10..1_000), image: None },
        },
    ]
}

fn chain_clock_back_after_restart(rng: &mut ChaCha8Rng, node: &str, at_ms: u64) -> Vec<TimedFault> {
    let node = node.to_string();
    let restart_after_ms = rng.gen_range(500..3_000);
    // Just before the restart, or while the store recovers and starts writing again.
    let jump_ms = at_ms + restart_after_ms - rng.gen_range(0..100) + rng.gen_range(0..300);
    let power_ms = jump_ms + rng.gen_range(10..2_000);
    let clock = if rng.gen_bool(0.3) {
        // Standing still until after the power loss: the store's timestamps repeat across it.
        Fault::ClockFreeze { node: node.clone(), duration_ms: power_ms - jump_ms + rng.gen_range(0..2_000) }
    } else {
        Fault::ClockJump { node: node.clone(), delta_ms: -rng.gen_range(1..60_000) }
    };
    vec![
        TimedFault { at_ms, fault: Fault::CleanShutdown { node: node.clone(), restart_after_ms } },
        TimedFault { at_ms: jump_ms, fault: clock },
        TimedFault {
            at_ms: power_ms,
            fault: Fault::PowerLoss { node, restart_after_ms: rng.gen_range(10..1_000), image: None },
        },
    ]
}

fn chain_power_loss_in_recovery(rng: &mut ChaCha8Rng, node: &str, at_ms: u64) -> Vec<TimedFault> {
    let mut events = Vec::new();
    let mut t = at_ms;
    for _ in 0..rng.gen_range(2..=3) {
        let restart_after_ms = rng.gen_range(10..500);
        events.push(TimedFault {
            at_ms: t,
            fault: Fault::PowerLoss { node: node.to_string(), restart_after_ms, image: None },
        });
        // Recovery takes a few sync latencies: land inside it.
        t += restart_after_ms + rng.gen_range(0..40);
    }
    events
}

fn check_prob(p: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(format!("probability {p} is outside [0, 1]"))
    }
}

fn event_probs(fault: &Fault) -> Vec<f64> {
    match fault {
        Fault::DiskErrors { read_eio_prob, write_eio_prob, sync_eio_prob, .. } => {
            vec![*read_eio_prob, *write_eio_prob, *sync_eio_prob]
        }
        Fault::ObjectStoreErrors { error_prob, ack_lost_prob, partial_append_prob, size_fail_prob, .. } => {
            vec![*error_prob, *ack_lost_prob, *partial_append_prob, *size_fail_prob]
        }
        _ => Vec::new(),
    }
}

/// A probability in `[0, max)`, rounded to 4 decimals so that case files stay readable and
/// survive a round trip through TOML/JSON exactly.
fn prob(rng: &mut ChaCha8Rng, max: f64) -> f64 {
    (rng.gen_range(0.0..max) * 10_000.0).floor() / 10_000.0
}

fn pick<'a>(rng: &mut ChaCha8Rng, names: &'a [String]) -> Option<&'a String> {
    (!names.is_empty()).then(|| &names[rng.gen_range(0..names.len())])
}

fn draw_fault(rng: &mut ChaCha8Rng, kind: FaultKind, space: &PlanSpace) -> Option<Fault> {
    let node = pick(rng, &space.nodes)?.clone();
    let window_ms = rng.gen_range(100..5_000);
    let restart_after_ms = rng.gen_range(10..2_000);
    Some(match kind {
        FaultKind::Kill => Fault::Kill { node, restart_after_ms },
        FaultKind::PowerLoss => Fault::PowerLoss { node, restart_after_ms, image: None },
        FaultKind::CleanShutdown => Fault::CleanShutdown { node, restart_after_ms: rng.gen_range(500..5_000) },
        FaultKind::DiskErrors => Fault::DiskErrors {
            node,
            read_eio_prob: prob(rng, 0.05),
            write_eio_prob: prob(rng, 0.05),
            sync_eio_prob: prob(rng, 0.3),
            duration_ms: window_ms,
        },
        FaultKind::DiskFull => Fault::DiskFull { node, duration_ms: window_ms },
        FaultKind::BitFlip => Fault::BitFlip { node },
        FaultKind::ObjectStoreErrors => Fault::ObjectStoreErrors {
            error_prob: prob(rng, 0.5),
            ack_lost_prob: prob(rng, 0.5),
            partial_append_prob: prob(rng, 0.3),
            size_fail_prob: prob(rng, 0.3),
            duration_ms: window_ms,
        },
        FaultKind::ObjectStoreOutage => Fault::ObjectStoreOutage { duration_ms: window_ms },
        FaultKind::ClockJump => Fault::ClockJump { node, delta_ms: rng.gen_range(-120_000..120_000) },
        FaultKind::ClockFreeze => Fault::ClockFreeze { node, duration_ms: window_ms },
        FaultKind::Partition => {
            let a = pick(rng, &space.network_nodes)?.clone();
            let b = pick(rng, &space.network_nodes)?.clone();
            if a == b {
                return None;
            }
            Fault::Partition { a, b, duration_ms: window_ms }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> PlanSpace {
        PlanSpace {
            nodes: vec!["broker".into()],
            network_nodes: vec!["broker".into(), "client".into(), "objstore".into()],
            fault_window_ms: 10_000,
            max_events: 8,
            kinds: FaultKind::ALL.into_iter().collect(),
        }
    }

    #[test]
    fn generation_is_a_function_of_the_seed() {
        assert_eq!(FaultPlan::generate(7, &space()), FaultPlan::generate(7, &space()));
        let distinct: BTreeSet<String> =
            (0..20).map(|s| serde_json::to_string(&FaultPlan::generate(s, &space())).unwrap()).collect();
        assert!(distinct.len() > 15, "seeds should give different plans, got {}", distinct.len());
    }

    #[test]
    fn generated_plans_are_valid_and_round_trip_through_toml_and_json() {
        for seed in 0..50 {
            let plan = FaultPlan::generate(seed, &space());
            plan.validate().unwrap();
            let toml_text = toml::to_string(&plan).unwrap();
            assert_eq!(FaultPlan::parse(&toml_text).unwrap(), plan, "toml:\n{toml_text}");
            let json_text = serde_json::to_string(&plan).unwrap();
            assert_eq!(FaultPlan::parse(&json_text).unwrap(), plan);
        }
    }

    #[test]
    fn malformed_plans_are_typed_errors() {
        for text in [
            "events = 3",
            "[[events]]\nat_ms = 5\nfault = \"meteor\"\nnode = \"b\"",
            "[[events]]\nat_ms = 5\nfault = \"kill\"",
            "[background]\npacket_loss_prob = 2.0",
            "[[events]]\nat_ms = 9\nfault = \"bit-flip\"\nnode = \"b\"\n[[events]]\nat_ms = 1\nfault = \"bit-flip\"\nnode = \"b\"",
            "[[events]]\nat_ms = 1\nfault = \"disk-errors\"\nnode = \"b\"\nread_eio_prob = -1.0\nwrite_eio_prob = 0.0\nsync_eio_prob = 0.0\nduration_ms = 5",
            "{ \"events\": [ { \"at_ms\": -1 } ] }",
            "unknown_key = 1",
            "[[events]]\nat_ms = 5\nfault = \"bit-flip\"\nnode = \"b\"\ntypo = 1",
            "\u{0}\u{1}garbage",
        ] {
            let err = FaultPlan::parse(text).expect_err(text);
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn chains_keep_their_order_and_validate() {
        let mut kinds_seen = BTreeSet::new();
        for seed in 0..200 {
            let events = draw_chains(&mut ChaCha8Rng::seed_from_u64(seed), &space(), 2);
            assert!(events.len() >= 4, "two chains have at least two steps each");
            let plan = FaultPlan { events, background: Background::default() };
            plan.validate().unwrap();
            kinds_seen.extend(plan.events.iter().map(|e| e.fault.kind()));
        }
        for k in [
            FaultKind::DiskErrors,
            FaultKind::Kill,
            FaultKind::CleanShutdown,
            FaultKind::PowerLoss,
            FaultKind::ClockJump,
            FaultKind::ClockFreeze,
        ] {
            assert!(kinds_seen.contains(&k), "{k:?} never drawn in a chain");
        }
        let only_power = PlanSpace { kinds: [FaultKind::PowerLoss].into_iter().collect(), ..space() };
        let events = draw_chains(&mut ChaCha8Rng::seed_from_u64(1), &only_power, 1);
        assert!(events.iter().all(|e| e.fault.kind() == FaultKind::PowerLoss) && events.len() >= 2);
        let none = PlanSpace { kinds: [FaultKind::BitFlip].into_iter().collect(), ..space() };
        assert!(draw_chains(&mut ChaCha8Rng::seed_from_u64(1), &none, 2).is_empty());
    }

    #[test]
    fn quiet_after_covers_every_window() {
        let plan = FaultPlan {
            events: vec![
                TimedFault { at_ms: 100, fault: Fault::DiskFull { node: "b".into(), duration_ms: 1_000 } },
                TimedFault { at_ms: 500, fault: Fault::BitFlip { node: "b".into() } },
            ],
            background: Background::default(),
        };
        assert_eq!(plan.quiet_after_ms(), 1_100);
    }
}
