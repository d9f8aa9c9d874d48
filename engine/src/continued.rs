//! A continued log (`Store::continue_from`): an empty store, standing in for one whose local
//! disk is gone (a replaced container), continues above the old log's offsets. Its commit log
//! starts at a file boundary at or above the old physical end (or above where the queues'
//! floors imply it reached, when that is higher), and each named queue's next
//! queue offset at or above the old queue's end, after a blank prefix. Physical offsets must
//! go on above the old ones: the decoder bounds a record's queue offset by its physical
//! offset (`message::queue_offset_possible`).
//!
//! Nothing here is synced: while the log is empty a restart may lose it, and the caller then
//! continues again. Once a message is durable, the flush that made it so synced the new
//! files' directory entries, and recovery brings the rest back (a lost blank prefix comes
//! back as the hole before the queue's first unit).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::commit_log::{CommitLog, PutRef};
use crate::error::{Result, StoreError};
use crate::locks::lock;
use crate::message::{queue_offset_possible, FIXED_RECORD_BYTES};
use crate::parts::{CqMap, QueueFiles};

/// The parts of the store a continued log changes.
pub(crate) struct Continued<'a> {
    pub cl: &'a Mutex<CommitLog>,
    pub cqs: &'a Mutex<CqMap>,
    pub files: &'a QueueFiles,
    pub reput_offset: &'a AtomicU64,
}

pub(crate) fn continue_from(
    c: Continued<'_>,
    phy_floor: u64,
    queue_floors: &BTreeMap<(String, u32), u64>,
) -> Result<()> {
    let st = c.files.storage.as_ref();
    let start = {
        let mut cl = lock(c.cl);
        if !cl.is_empty() {
            return Err(StoreError::LogNotEmpty { min_phy_offset: cl.min_offset(), max_phy_offset: cl.max_offset() });
        }
        let size = cl.file_size();
        // The old log reached at least where its queues' floors can sit: when nothing says
        // where it ended (a tiered store that holds only blanks for messages that expired
        // locally), the floors do.
        let mut implied = 0u64;
        for ((topic, queue_id), &floor) in queue_floors {
            let min_phy = floor
                .checked_mul(FIXED_RECORD_BYTES)
                .ok_or_else(|| StoreError::InvalidArgument(format!("queue floor {floor} of {topic}/{queue_id}")))?;
            implied = implied.max(min_phy);
        }
        let floor = phy_floor.max(implied);
        let start = floor
            .div_ceil(size)
            .checked_mul(size)
            .ok_or_else(|| StoreError::InvalidArgument(format!("commit-log floor {floor}")))?;
        for ((topic, queue_id), &floor) in queue_floors {
            PutRef::new(topic, *queue_id, &[], None, &[]).validate()?;
            if !queue_offset_possible(floor, start) {
                return Err(StoreError::InvalidArgument(format!(
                    "queue floor {floor} of {topic}/{queue_id} impossible at commit-log offset {start}"
                )));
            }
        }
        // A log continued before (and restarted empty) may already start at or above it.
        if cl.queue().last().is_none_or(|f| f.from_offset() < start) {
            cl.start_at(st, start)?;
        }
        for ((topic, queue_id), &floor) in queue_floors {
            cl.raise_queue_offset(topic, *queue_id, floor);
        }
        cl.min_offset()
    };
    c.reput_offset.fetch_max(start, Ordering::SeqCst);
    let mut cqs = lock(c.cqs);
    for ((topic, queue_id), &floor) in queue_floors {
        let cq = c.files.queue(&mut cqs, &(topic.clone(), *queue_id))?;
        cq.extend_to(st, floor)?;
        cq.correct_min_offset(start)?;
    }
    Ok(())
}
