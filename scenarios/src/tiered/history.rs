//! The history of a tiered run: every send and its ack, what the tiered store reported
//! committed at its last clean stop, and what the checker itself decoded from the object
//! store. Kept outside the nodes, so it survives every crash and the replaced disk.

use std::collections::BTreeMap;

use sim::Violation;

pub use crate::broker::history::{body_for, id_of_body, MsgId};

/// A queue: (topic, queue id).
pub type Queue = (String, u32);

#[derive(Debug, Default)]
pub struct History {
    /// Every message sent, with its queue.
    pub sends: BTreeMap<MsgId, Queue>,
    /// The keys each message was sent with.
    pub keys: BTreeMap<MsgId, Vec<String>>,
    /// Key queries the consumer made.
    pub queries: u64,
    /// Acked messages: their queue offset.
    pub acks: BTreeMap<MsgId, u64>,
    /// Messages the consumer read.
    pub reads: u64,
    /// At the last clean stop, per queue: `[min, commit)` the tiered store reported committed.
    pub committed: BTreeMap<Queue, (u64, u64)>,
    /// Whether the last clean stop reported every committed key uploaded (nothing left).
    pub index_uploaded: bool,
    /// The next boot comes on a replaced disk (a clean stop that left nothing drew it).
    pub replace_at_boot: bool,
    /// A boot on a replaced disk is under way (it lists and checks every segment first).
    pub replaced_boot_running: bool,
    /// What the checker decoded from the object store at its last look: per queue offset the
    /// message id, `None` for a blank unit.
    pub remote_ids: BTreeMap<(Queue, u64), Option<MsgId>>,
    pub violations: Vec<Violation>,
}
