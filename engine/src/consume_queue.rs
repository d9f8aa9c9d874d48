//! Consume queues (§2.2): per topic and queue, a file queue of 20-byte units
//! `[i64 phyOffset][i32 size][i64 tagsCode]` at `consumequeue/{topic}/{queueId}/{20-digit
//! byte offset}`. Dispatch appends units idempotently; recovery keeps the valid prefix of
//! the last three files; truncation follows `truncateDirtyLogicFiles` (§3.5).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, StoreError};
use crate::io::{Holds, Storage};
use crate::mapped_file::SyncPlan;
use crate::mapped_file_queue::{DirSyncs, LoadRepairs, MappedFileQueue};

pub const CQ_UNIT_SIZE: u64 = 20;
/// The unit that fills the prefix of a queue whose first file starts past offset 0.
pub const BLANK_UNIT: CqUnit = CqUnit { phy_offset: 0, size: i32::MAX, tags_code: 0 };

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqUnit {
    pub phy_offset: i64,
    pub size: i32,
    pub tags_code: i64,
}

impl CqUnit {
    pub fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&self.phy_offset.to_be_bytes());
        b[8..12].copy_from_slice(&self.size.to_be_bytes());
        b[12..].copy_from_slice(&self.tags_code.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; 20]) -> CqUnit {
        CqUnit {
            phy_offset: i64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            size: i32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
            tags_code: i64::from_be_bytes(b[12..].try_into().expect("8 bytes")),
        }
    }

    /// RocketMQ's validity test during recovery and truncation.
    pub fn looks_valid(&self) -> bool {
        self.phy_offset >= 0 && self.size > 0
    }

    pub fn is_blank(&self) -> bool {
        *self == BLANK_UNIT
    }

    /// `phyOffset + size`, the commit-log end this unit covers.
    pub fn end(&self) -> u64 {
        (self.phy_offset as u64).saturating_add(self.size as u64)
    }
}

/// The directory of one queue.
pub fn queue_dir(root: &Path, topic: &str, queue_id: u32) -> PathBuf {
    root.join("consumequeue").join(topic).join(queue_id.to_string())
}

/// The outcome of putting a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutUnit {
    Written,
    /// Already covered (`offset + size <= maxPhysicOffset`): a re-dispatch.
    Duplicate,
    /// Queue offset behind the queue's end: a unit for this offset exists.
    Behind,
}

#[derive(Debug)]
pub struct ConsumeQueue {
    topic: String,
    queue_id: u32,
    files: MappedFileQueue,
    /// End (`phy + size`) of the last unit, in commit-log bytes.
    max_physic_offset: u64,
    /// Byte offset of the first real unit (after a blank prefix).
    min_logic_offset: u64,
}

impl ConsumeQueue {
    pub fn load(
        storage: &dyn Storage,
        root: &Path,
        topic: &str,
        queue_id: u32,
        units_per_file: u64,
        holds: Holds,
        dirs: Arc<DirSyncs>,
    ) -> Result<(ConsumeQueue, LoadRepairs)> {
        let dir = queue_dir(root, topic, queue_id);
        let (files, repairs) = MappedFileQueue::load(storage, dir, units_per_file * CQ_UNIT_SIZE, holds, dirs)?;
        let min = files.min_offset();
        let cq =
            ConsumeQueue { topic: topic.to_string(), queue_id, files, max_physic_offset: 0, min_logic_offset: min };
        Ok((cq, repairs))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }
    pub fn files(&self) -> &MappedFileQueue {
        &self.files
    }
    pub fn files_mut(&mut self) -> &mut MappedFileQueue {
        &mut self.files
    }
    pub fn max_physic_offset(&self) -> u64 {
        self.max_physic_offset
    }
    /// Next queue offset to be written.
    pub fn max_offset_in_queue(&self) -> u64 {
        self.files.max_offset() / CQ_UNIT_SIZE
    }
    /// First queue offset holding a real unit.
    pub fn min_offset_in_queue(&self) -> u64 {
        (self.min_logic_offset / CQ_UNIT_SIZE).min(self.max_offset_in_queue())
    }

    fn read_unit_at(&self, byte_offset: u64) -> Result<Option<CqUnit>> {
        let Some(f) = self.files.find(byte_offset) else { return Ok(None) };
        let pos = byte_offset - f.from_offset();
        if pos + CQ_UNIT_SIZE > f.committed() {
            return Ok(None);
        }
        let mut b = [0u8; 20];
        f.read(pos, &mut b)?;
        Ok(Some(CqUnit::decode(&b)))
    }

    /// The unit at queue offset `index`, if written.
    pub fn unit(&self, index: u64) -> Result<Option<CqUnit>> {
        match index.checked_mul(CQ_UNIT_SIZE) {
            Some(b) if index < self.max_offset_in_queue() => self.read_unit_at(b),
            _ => Ok(None),
        }
    }

    /// Rewrites (see `MappedFileQueue::rewrite_range`) the units of records at or after
    /// commit-log offset `phy`, with the blank units just before them (a blank prefix or
    /// hole was written with the unit after it).
    pub fn rewrite_units_from(&self, phy: u64) -> Result<()> {
        let mut first = self.max_offset_in_queue();
        while first > 0 {
            match self.unit(first - 1)? {
                Some(u) if u.is_blank() || u.phy_offset as u64 >= phy => first -= 1,
                _ => break,
            }
        }
        self.files.rewrite_range(first * CQ_UNIT_SIZE, self.files.max_offset())
    }

    /// Reads a whole file's units (recovery, truncation).
    fn file_units(&self, i: usize) -> Result<Vec<CqUnit>> {
        let f = &self.files.files()[i];
        let mut buf = vec![0u8; f.size() as usize];
        f.read(0, &mut buf)?;
        Ok(buf.chunks_exact(20).map(|c| CqUnit::decode(c.try_into().expect("20 bytes"))).collect())
    }

    /// Keeps the valid prefix of the last three files (`ConsumeQueue.recover`). A unit is
    /// valid if `phy >= 0 && size > 0` (RocketMQ) and, beyond RocketMQ, its physical offset
    /// is past the previous unit's end (a torn page can zero one field and keep the other).
    /// Returns the removed bytes' plan to sync, if a tail was zeroed.
    pub fn recover(&mut self, storage: &dyn Storage, keep_stale: bool) -> Result<Option<SyncPlan>> {
        let n = self.files.files().len();
        if n == 0 {
            return Ok(None);
        }
        let mut i = n.saturating_sub(3);
        let mut prev_end: Option<u64> = None;
        let mut max_phy = 0u64;
        let process = loop {
            let units = self.file_units(i)?;
            let from = self.files.files()[i].from_offset();
            let mut valid = 0u64;
            for u in &units {
                if u.is_blank() && prev_end.is_none() {
                    valid += 1;
                    continue;
                }
                if !u.looks_valid() || prev_end.is_some_and(|e| (u.phy_offset as u64) < e) {
                    break;
                }
                prev_end = Some(u.end());
                max_phy = u.end();
                valid += 1;
            }
            if valid as usize == units.len() && i + 1 < n {
                i += 1;
                continue;
            }
            break from + valid * CQ_UNIT_SIZE;
        };
        self.max_physic_offset = max_phy;
        let t = self.files.truncate_dirty(storage, process, keep_stale)?;
        self.fix_min_logic_offset()?;
        Ok(t.zeroed_tail)
    }

    fn fix_min_logic_offset(&mut self) -> Result<()> {
        let mut off = self.files.min_offset();
        while let Some(u) = self.read_unit_at(off)? {
            if !u.is_blank() {
                break;
            }
            off += CQ_UNIT_SIZE;
        }
        self.min_logic_offset = off;
        Ok(())
    }

    /// Moves the queue's minimum to its first unit of a message at or above commit-log offset
    /// `min_phy` (`correctMinOffset`): the units below point into expired commit-log files.
    /// Blank units are skipped as before. The search starts at the current minimum: the log's
    /// start only ever rises.
    pub fn correct_min_offset(&mut self, min_phy: u64) -> Result<()> {
        let live = |u: &CqUnit| !u.is_blank() && u.phy_offset as u64 >= min_phy;
        let mut off = self.min_logic_offset.max(self.files.min_offset());
        // Whole files first (units ascend in the log), then unit by unit.
        let files = self.files.files();
        for f in files.iter().take(files.len().saturating_sub(1)) {
            if f.end_offset() <= off {
                continue;
            }
            match self.read_unit_at(f.end_offset() - CQ_UNIT_SIZE)? {
                Some(u) if !u.is_blank() && !live(&u) => off = f.end_offset(),
                _ => break,
            }
        }
        while let Some(u) = self.read_unit_at(off)? {
            if live(&u) {
                break;
            }
            off += CQ_UNIT_SIZE;
        }
        self.min_logic_offset = off;
        Ok(())
    }

    /// Removes the queue's first file if every unit in it is blank or ends at or below
    /// commit-log offset `min_phy`, unless it is the queue's last file: that one keeps the
    /// queue's end, so that queue offsets survive a restart and are never handed out twice.
    /// Returns whether the file went.
    pub fn expire_first_file(&mut self, storage: &dyn Storage, min_phy: u64) -> Result<bool> {
        let files = self.files.files();
        if files.len() < 2 {
            return Ok(false);
        }
        let (from, mut at) = (files[0].from_offset(), files[0].end_offset());
        // The newest real unit decides (units ascend in the log; blanks carry no message).
        while at > from {
            at -= CQ_UNIT_SIZE;
            match self.read_unit_at(at)? {
                Some(u) if u.is_blank() => continue,
                Some(u) if u.end() <= min_phy => break,
                _ => return Ok(false),
            }
        }
        self.files.remove_first(storage)?;
        self.min_logic_offset = self.min_logic_offset.max(self.files.min_offset());
        Ok(true)
    }

    /// Raises the queue's next offset to at least `next_offset` with blank units (a continued
    /// log, `Store::continue_from`): a queue without files starts with a blank prefix.
    pub fn extend_to(&mut self, storage: &dyn Storage, next_offset: u64) -> Result<()> {
        let target = next_offset
            .checked_mul(CQ_UNIT_SIZE)
            .ok_or_else(|| StoreError::InvalidArgument(format!("queue offset {next_offset}")))?;
        if self.files.max_offset() >= target {
            return Ok(());
        }
        if self.files.is_empty() {
            return self.create_with_blank_prefix(storage, target);
        }
        while self.files.max_offset() < target {
            self.append_unit(storage, BLANK_UNIT)?;
        }
        Ok(())
    }

    /// Appends the unit for `queue_offset` (`putMessagePositionInfo`).
    pub fn put(&mut self, storage: &dyn Storage, unit: CqUnit, queue_offset: u64) -> Result<PutUnit> {
        debug_assert!(unit.looks_valid());
        if unit.end() <= self.max_physic_offset {
            return Ok(PutUnit::Duplicate);
        }
        // The decoder bounds a record's queue offset by its physical offset, so this cannot
        // overflow and a hole below is at most as long as the log before the record allows.
        debug_assert!(queue_offset <= unit.phy_offset as u64 / crate::message::FIXED_RECORD_BYTES);
        let expected = queue_offset * CQ_UNIT_SIZE;
        if self.files.is_empty() && expected > 0 {
            self.create_with_blank_prefix(storage, expected)?;
        }
        let current = self.files.max_offset();
        if expected < current {
            tracing::warn!(topic = %self.topic, queue = self.queue_id, expected, current, "unit behind the queue end");
            crate::probe!("consume-queue.unit-behind");
            return Ok(PutUnit::Behind);
        }
        if expected > current {
            // "[BUG]logic queue order maybe wrong": RocketMQ writes anyway, leaving a hole.
            tracing::error!(topic = %self.topic, queue = self.queue_id, expected, current, "consume queue hole");
            crate::probe!("consume-queue.hole");
            while self.files.max_offset() < expected {
                self.append_unit(storage, BLANK_UNIT)?;
            }
        }
        self.append_unit(storage, unit)?;
        self.max_physic_offset = unit.end();
        Ok(PutUnit::Written)
    }

    fn append_unit(&mut self, storage: &dyn Storage, unit: CqUnit) -> Result<()> {
        if self.files.last().is_none_or(|f| f.is_full()) {
            let from = self.files.last().map_or(0, |f| f.end_offset());
            self.files.create_file(storage, from, None)?;
        }
        let f = self.files.last_mut().expect("created");
        f.append(&unit.encode(), 0)
    }

    /// First file of a queue starting at `expected` bytes: the units before it are blank.
    fn create_with_blank_prefix(&mut self, storage: &dyn Storage, expected: u64) -> Result<()> {
        let size = self.files.file_size();
        let from = expected - expected % size;
        self.files.create_file(storage, from, None)?;
        while self.files.max_offset() < expected {
            self.append_unit(storage, BLANK_UNIT)?;
        }
        self.min_logic_offset = expected;
        Ok(())
    }

    /// Keeps exactly the units whose commit-log offset is below `phy_offset`
    /// (`truncateDirtyLogicFiles`). With `off_by_one` (a catalogued bug) one more unit stays.
    /// Returns how many units were removed and the zeroed tail to sync.
    pub fn truncate_dirty(
        &mut self,
        storage: &dyn Storage,
        phy_offset: u64,
        off_by_one: bool,
        keep_stale: bool,
    ) -> Result<(u64, Option<SyncPlan>)> {
        let before = self.max_offset_in_queue();
        let mut keep_bytes = self.files.min_offset();
        let mut max_phy = 0u64;
        let mut zeroed = None;
        for i in (0..self.files.files().len()).rev() {
            let from = self.files.files()[i].from_offset();
            let units = self.file_units(i)?;
            let written = (self.files.files()[i].wrote() / CQ_UNIT_SIZE) as usize;
            let first = units.first().filter(|u| u.looks_valid() && !u.is_blank());
            if first.is_some_and(|u| u.phy_offset as u64 >= phy_offset) && i > 0 {
                continue; // the whole file goes
            }
            if written == 0 && i > 0 {
                // Nothing written (a file created just before a power loss that kept its
                // directory entry but not its units): it goes, and the cut is looked for in
                // the file before it. Stopping here kept that file's units past the log's end
                // (broker seed 87842).
                continue;
            }
            let mut keep = 0usize;
            for u in units.iter().take(written) {
                if u.is_blank() {
                    keep += 1;
                    continue;
                }
                if !u.looks_valid() || u.phy_offset as u64 >= phy_offset {
                    break;
                }
                keep += 1;
                max_phy = u.end();
            }
            if off_by_one && keep < written {
                max_phy = units[keep].end();
                keep += 1;
            }
            keep_bytes = from + keep as u64 * CQ_UNIT_SIZE;
            break;
        }
        let t = self.files.truncate_dirty(storage, keep_bytes, keep_stale)?;
        if let Some(z) = t.zeroed_tail {
            zeroed = Some(z);
        }
        self.max_physic_offset = max_phy;
        self.fix_min_logic_offset()?;
        let after = self.max_offset_in_queue();
        Ok((before.saturating_sub(after), zeroed))
    }

    /// Removes every file of the queue.
    pub fn destroy(&mut self, storage: &dyn Storage) -> Result<()> {
        self.files.destroy(storage)?;
        self.max_physic_offset = 0;
        self.min_logic_offset = 0;
        Ok(())
    }

    pub fn check_unit_size(size: u32) -> Result<i32> {
        i32::try_from(size).map_err(|_| StoreError::InvalidArgument(format!("unit size {size}")))
    }
}
