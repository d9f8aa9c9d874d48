//! Targeted fault shapes: sequences a timed plan drawn event by event almost never lines up,
//! played by a nemesis that watches the group (who leads, when a leader's commit moves) and
//! cuts links or cuts power at those moments. Each shape is one key of the case's `[shapes]`
//! table, so `shrink` drops whole shapes; everything it does is traced (`nemesis.*`,
//! `partition.cut`/`partition.heal`, `fault`).
//!
//! - `minority_partition = [member, at_ms, duration_ms]`: one member cut off from the other
//!   two, then healed.
//! - `leader_isolation = [at_ms, duration_ms]`: the leader of the moment cut off from the
//!   other two (the majority elects anew), then healed.
//! - `leader_power_loss = [at_ms, restart_after_ms]`: the leader of the moment loses power,
//!   inside the window in which its followers' copies commit entries it has not synced.
//! - `figure8 = [at_ms, hold_ms]`: Raft's figure 8 on three members. The leader A of term t
//!   is cut off and keeps appending its clients' puts; B wins term t+1 with C's vote and is
//!   cut off from C the moment it wins (its entries reach nobody); after `hold_ms` A and C
//!   meet again and A wins a later term; the moment A's commit first moves A is cut off from
//!   C again, and B and C meet. A correct A commits only once C holds an entry of A's new
//!   term, which keeps B from winning; an A committing its old term's entries by counting
//!   lets B win with C's vote and overwrite them.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sim::fault_plan::Fault;

use super::{node_name, Shared, MEMBERS};

/// The shapes a run plays (none: the fixed configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shapes {
    pub minority_partition: Option<[u64; 3]>,
    pub leader_isolation: Option<[u64; 2]>,
    pub leader_power_loss: Option<[u64; 2]>,
    pub figure8: Option<[u64; 2]>,
}

/// Longest a shape waits for the group to reach the state it acts on.
const WAIT_MS: u64 = 3_000;
const POLL_MS: u64 = 10;

impl Shapes {
    pub fn validate(&self) -> Result<(), String> {
        if let Some([m, ..]) = self.minority_partition {
            if !MEMBERS.contains(&(m as u32)) || m > u64::from(u32::MAX) {
                return Err(format!("minority_partition names member {m}, not one of {MEMBERS:?}"));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self == &Shapes::default()
    }
}

/// Where the figure-8 shape stands; moved by the driver and by the nodes' hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Figure8 {
    #[default]
    Off,
    /// A is cut off; waiting for another member to win.
    Isolated { a: u32 },
    /// B won and was cut off from C: all three apart.
    Split { a: u32, b: u32 },
    /// A and C meet again; waiting for A to win.
    Rejoined { a: u32, b: u32 },
    /// A leads `term`, its commit at `base`; waiting for the commit to move.
    Leading { a: u32, b: u32, term: u64, base: Option<u64> },
    /// A's commit moved and A was cut off from C.
    Committed { a: u32, b: u32 },
}

fn third(a: u32, b: u32) -> u32 {
    MEMBERS.into_iter().find(|&m| m != a && m != b).expect("three members")
}

fn cut(sh: &Shared, a: u32, b: u32) {
    sh.world.cut(node_name(a), node_name(b));
}

fn heal(sh: &Shared, a: u32, b: u32) {
    sh.world.heal(node_name(a), node_name(b));
}

fn cut_off(sh: &Shared, m: u32) {
    MEMBERS.into_iter().filter(|&p| p != m).for_each(|p| cut(sh, m, p));
}

fn rejoin(sh: &Shared, m: u32) {
    MEMBERS.into_iter().filter(|&p| p != m).for_each(|p| heal(sh, m, p));
}

fn trace(sh: &Shared, what: &'static str, detail: String) {
    sim::trace!(sh.world.trace(), "world", what, "{detail}");
}

/// Member `id` won `term` (called by the winner, under its replica's lock, before it sends
/// anything as leader).
pub fn on_leader(sh: &Shared, id: u32, term: u64, commit: Option<u64>) {
    let mut f = sh.figure8();
    match *f {
        Figure8::Isolated { a } if id != a => {
            cut(sh, id, third(a, id));
            *f = Figure8::Split { a, b: id };
            trace(sh, "nemesis.figure8", format!("n{id} won term {term}: cut off from n{}", third(a, id)));
        }
        Figure8::Rejoined { a, b } if id == a => {
            *f = Figure8::Leading { a, b, term, base: commit };
            trace(sh, "nemesis.figure8", format!("n{a} leads again in term {term}"));
        }
        _ => {}
    }
}

/// Leader `id` of `term` has commit index `commit` (called after anything that may move it,
/// before the leader sends again).
pub fn on_commit(sh: &Shared, id: u32, term: u64, commit: Option<u64>) {
    let mut f = sh.figure8();
    if let Figure8::Leading { a, b, term: t, base } = *f {
        if id == a && term == t && commit > base {
            cut(sh, a, third(a, b));
            *f = Figure8::Committed { a, b };
            trace(sh, "nemesis.figure8", format!("n{a} committed {commit:?} in term {term}: cut off again"));
        }
    }
}

/// Plays every shape of `shapes`, each in its own task on the caller's node (the harness).
pub fn play(sh: &Arc<Shared>, shapes: &Shapes) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some([m, at_ms, duration_ms]) = shapes.minority_partition {
        let s = sh.clone();
        tasks.push(tokio::spawn(async move {
            sleep_until(&s, at_ms).await;
            let m = m as u32;
            trace(&s, "nemesis.minority-partition", format!("n{m} for {duration_ms} ms"));
            cut_off(&s, m);
            tokio::time::sleep(Duration::from_millis(duration_ms)).await;
            rejoin(&s, m);
        }));
    }
    if let Some([at_ms, duration_ms]) = shapes.leader_isolation {
        let s = sh.clone();
        tasks.push(tokio::spawn(async move {
            sleep_until(&s, at_ms).await;
            let Some(l) = wait_leader(&s).await else { return };
            trace(&s, "nemesis.leader-isolation", format!("n{l} for {duration_ms} ms"));
            cut_off(&s, l);
            tokio::time::sleep(Duration::from_millis(duration_ms)).await;
            rejoin(&s, l);
        }));
    }
    if let Some([at_ms, restart_after_ms]) = shapes.leader_power_loss {
        let s = sh.clone();
        tasks.push(tokio::spawn(async move {
            sleep_until(&s, at_ms).await;
            let Some(l) = wait_leader(&s).await else { return };
            let fault = Fault::PowerLoss { node: node_name(l).to_string(), restart_after_ms, image: None };
            if let Some(restart) = s.world.inject(&fault) {
                let _ = restart.await;
            }
        }));
    }
    if let Some([at_ms, hold_ms]) = shapes.figure8 {
        let s = sh.clone();
        tasks.push(tokio::spawn(async move { figure8(&s, at_ms, hold_ms).await }));
    }
    tasks
}

async fn figure8(sh: &Shared, at_ms: u64, hold_ms: u64) {
    sleep_until(sh, at_ms).await;
    let Some(a) = wait_leader(sh).await else { return };
    trace(sh, "nemesis.figure8", format!("n{a} leads: cut off"));
    cut_off(sh, a);
    *sh.figure8() = Figure8::Isolated { a };
    let split = wait_state(sh, |f| matches!(f, Figure8::Split { .. })).await;
    let Some(Figure8::Split { a, b }) = split else {
        end_figure8(sh, a);
        return;
    };
    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
    let c = third(a, b);
    *sh.figure8() = Figure8::Rejoined { a, b };
    trace(sh, "nemesis.figure8", format!("n{a} and n{c} meet again"));
    heal(sh, a, c);
    if wait_state(sh, |f| matches!(f, Figure8::Committed { .. })).await.is_some() {
        trace(sh, "nemesis.figure8", format!("n{b} and n{c} meet again"));
        heal(sh, b, c);
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
    }
    end_figure8(sh, a);
}

/// Heals every link between members and turns the hooks off.
fn end_figure8(sh: &Shared, a: u32) {
    *sh.figure8() = Figure8::Off;
    trace(sh, "nemesis.figure8", "over: every link healed".to_string());
    rejoin(sh, a);
    let others: Vec<u32> = MEMBERS.into_iter().filter(|&m| m != a).collect();
    heal(sh, others[0], others[1]);
}

async fn sleep_until(sh: &Shared, at_ms: u64) {
    let now = sh.now_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}

/// The member leading now, waiting up to `WAIT_MS` for one.
async fn wait_leader(sh: &Shared) -> Option<u32> {
    for _ in 0..WAIT_MS / POLL_MS {
        if let Some(l) = sh.leader_now().await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    None
}

/// The figure-8 state once `reached` holds, waiting up to `WAIT_MS`.
async fn wait_state(sh: &Shared, reached: impl Fn(&Figure8) -> bool) -> Option<Figure8> {
    for _ in 0..WAIT_MS / POLL_MS {
        let f = *sh.figure8();
        if reached(&f) {
            return Some(f);
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    None
}
