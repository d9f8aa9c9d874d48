//! The narrow view the tiered store has of the local store: consume-queue units and messages by
//! offset, min and max offsets, what is durable, a notification that new messages were
//! dispatched, and local reads for routing. The tiered store never reaches further in.

use std::collections::BTreeMap;

use tokio::sync::Notify;

use crate::consume_queue::CqUnit;
use crate::error::Result;
use crate::io::Holds;
use crate::store::{SelectedMessage, Store, StoredMessage};

pub trait MessageSource: Send + Sync + 'static {
    /// Every (topic, queue id) with a consume queue.
    fn queues(&self) -> Vec<(String, u32)>;
    /// First queue offset the local store still holds.
    fn min_offset(&self, topic: &str, queue_id: u32) -> u64;
    /// Next queue offset to be dispatched locally.
    fn max_offset(&self, topic: &str, queue_id: u32) -> u64;
    fn cq_unit(&self, topic: &str, queue_id: u32, queue_offset: u64) -> Result<Option<CqUnit>>;
    /// A whole record with a hold on its file (`selectOneMessageByOffset`).
    fn select_message(&self, phy_offset: u64, size_bytes: u32) -> Result<Option<SelectedMessage>>;
    /// Commit-log bytes below this survive a power loss: only they are tiered, so the object
    /// store never holds a message the local log can lose and then reuse the offsets of.
    fn durable_offset(&self) -> u64;
    /// The local commit log holds no message (RocketMQ: min offset -1).
    fn log_is_empty(&self) -> bool;
    fn dispatched(&self) -> &Notify;
    fn holds(&self) -> Holds;
    fn get(&self, topic: &str, queue_id: u32, queue_offset: u64, max_count: usize) -> Result<Vec<StoredMessage>>;
    fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        begin_ms: i64,
        end_ms: i64,
        max: usize,
    ) -> Result<Vec<StoredMessage>>;
    /// Continues an empty log above `phy_floor` with each queue's offsets at least its floor
    /// (a replaced container).
    fn continue_from(&self, phy_floor: u64, queue_floors: &BTreeMap<(String, u32), u64>) -> Result<()>;
}

impl MessageSource for Store {
    fn queues(&self) -> Vec<(String, u32)> {
        Store::queues(self)
    }
    fn min_offset(&self, topic: &str, queue_id: u32) -> u64 {
        Store::min_offset(self, topic, queue_id)
    }
    fn max_offset(&self, topic: &str, queue_id: u32) -> u64 {
        Store::max_offset(self, topic, queue_id)
    }
    fn cq_unit(&self, topic: &str, queue_id: u32, queue_offset: u64) -> Result<Option<CqUnit>> {
        Store::cq_unit(self, topic, queue_id, queue_offset)
    }
    fn select_message(&self, phy_offset: u64, size_bytes: u32) -> Result<Option<SelectedMessage>> {
        Store::select_message(self, phy_offset, size_bytes)
    }
    fn durable_offset(&self) -> u64 {
        self.flushed_offset()
    }
    fn log_is_empty(&self) -> bool {
        self.min_phy_offset() >= self.max_phy_offset()
    }
    fn dispatched(&self) -> &Notify {
        Store::dispatched(self)
    }
    fn holds(&self) -> Holds {
        Store::holds(self)
    }
    fn get(&self, topic: &str, queue_id: u32, queue_offset: u64, max_count: usize) -> Result<Vec<StoredMessage>> {
        Store::get(self, topic, queue_id, queue_offset, max_count)
    }
    fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        begin_ms: i64,
        end_ms: i64,
        max: usize,
    ) -> Result<Vec<StoredMessage>> {
        Store::query_by_key(self, topic, key, begin_ms, end_ms, max)
    }
    fn continue_from(&self, phy_floor: u64, queue_floors: &BTreeMap<(String, u32), u64>) -> Result<()> {
        Store::continue_from(self, phy_floor, queue_floors)
    }
}
