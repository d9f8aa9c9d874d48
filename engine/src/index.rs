//! The key index (§2.3): files of a 40-byte header, `slots` i32 hash slots and `items`
//! 20-byte chained items; key `topic#key` hashed with Java's `String.hashCode`. Dispatch
//! adds UNIQ_KEY and every KEYS token; queries walk the chain newest to oldest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::io::{Hold, HoldCounter, HoldKind, Holds, IoError, Storage, StorageFile};
use crate::java_hash::{index_key_hash_of, IndexKeyHasher};
use crate::mapped_file::SyncPlan;
use crate::mapped_file_queue::DirSyncs;
use crate::message::{DispatchProperties, MessageRef};

pub const INDEX_HEADER_BYTES: u64 = 40;
pub const INDEX_SLOT_BYTES: u64 = 4;
pub const INDEX_ITEM_BYTES: u64 = 20;

pub fn index_file_size(slots: u32, items: u32) -> u64 {
    INDEX_HEADER_BYTES + u64::from(slots) * INDEX_SLOT_BYTES + u64::from(items) * INDEX_ITEM_BYTES
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexHeader {
    pub begin_timestamp_ms: i64,
    pub end_timestamp_ms: i64,
    pub begin_phy_offset: i64,
    pub end_phy_offset: i64,
    pub hash_slot_count: i32,
    pub index_count: i32,
}

impl IndexHeader {
    pub fn encode(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[0..8].copy_from_slice(&self.begin_timestamp_ms.to_be_bytes());
        b[8..16].copy_from_slice(&self.end_timestamp_ms.to_be_bytes());
        b[16..24].copy_from_slice(&self.begin_phy_offset.to_be_bytes());
        b[24..32].copy_from_slice(&self.end_phy_offset.to_be_bytes());
        b[32..36].copy_from_slice(&self.hash_slot_count.to_be_bytes());
        b[36..40].copy_from_slice(&self.index_count.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; 40]) -> IndexHeader {
        let i64_at = |o: usize| i64::from_be_bytes(b[o..o + 8].try_into().expect("8"));
        let i32_at = |o: usize| i32::from_be_bytes(b[o..o + 4].try_into().expect("4"));
        IndexHeader {
            begin_timestamp_ms: i64_at(0),
            end_timestamp_ms: i64_at(8),
            begin_phy_offset: i64_at(16),
            end_phy_offset: i64_at(24),
            hash_slot_count: i32_at(32),
            index_count: i32_at(36).max(1),
        }
    }
}

/// `yyyyMMddHHmmssSSS` (UTC) of `ms`, RocketMQ's index file name.
pub fn timestamp_name(ms: i64) -> String {
    let ms = ms.max(0);
    let (days, rem_ms) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, milli) = (rem_ms / 3_600_000, rem_ms / 60_000 % 60, rem_ms / 1000 % 60, rem_ms % 1000);
    format!("{y:04}{m:02}{d:02}{h:02}{mi:02}{s:02}{milli:03}")
}

#[derive(Debug)]
pub struct IndexFile {
    file: Arc<dyn StorageFile>,
    name: String,
    header: IndexHeader,
    slots: u32,
    items: u32,
    /// `index_count` at the last sync (-1: never synced).
    synced_count: i32,
    holds: HoldCounter,
}

impl IndexFile {
    fn create(
        storage: &dyn Storage,
        dir: &Path,
        name: String,
        slots: u32,
        items: u32,
        seed: Option<&IndexHeader>,
        holds: Holds,
    ) -> Result<IndexFile> {
        let path = dir.join(&name);
        let file = match storage.create(&path) {
            // A leftover of an earlier creation whose `set_len` failed (ENOSPC/EIO) and whose
            // removal failed too: no index holds it, so it is replaced.
            Err(IoError::AlreadyExists { .. }) => {
                storage.remove_file(&path)?;
                storage.create(&path)?
            }
            r => r?,
        };
        if let Err(e) = file.set_len(index_file_size(slots, items)) {
            // Without this the empty file stayed behind, `next_name` kept choosing its name
            // after a clock jump back, and dispatch failed for good after a full disk.
            let _ = storage.remove_file(&path);
            return Err(e.into());
        }
        let mut header = IndexHeader { index_count: 1, ..IndexHeader::default() };
        if let Some(prev) = seed {
            header.begin_phy_offset = prev.end_phy_offset;
            header.end_phy_offset = prev.end_phy_offset;
            header.begin_timestamp_ms = prev.end_timestamp_ms;
            header.end_timestamp_ms = prev.end_timestamp_ms;
        }
        file.write_at(0, &header.encode())?;
        let holds = Self::hold_counter(&holds, &name);
        Ok(IndexFile { file, name, header, slots, items, synced_count: -1, holds })
    }

    /// Opens a file; `None` if its size or header cannot be what this store wrote.
    fn open(
        storage: &dyn Storage,
        path: &Path,
        name: String,
        slots: u32,
        items: u32,
        holds: Holds,
    ) -> Result<Option<IndexFile>> {
        let file = storage.open(path)?;
        if file.len()? != index_file_size(slots, items) {
            return Ok(None);
        }
        let mut b = [0u8; 40];
        file.read_at(0, &mut b)?;
        let header = IndexHeader::decode(&b);
        let sane = header.index_count as u64 <= u64::from(items)
            && header.hash_slot_count >= 0
            && header.begin_timestamp_ms <= header.end_timestamp_ms
            && header.begin_phy_offset <= header.end_phy_offset
            && header.begin_phy_offset >= 0;
        let synced_count = header.index_count;
        let holds = Self::hold_counter(&holds, &name);
        Ok(sane.then_some(IndexFile { file, name, header, slots, items, synced_count, holds }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn header(&self) -> &IndexHeader {
        &self.header
    }
    pub fn is_full(&self) -> bool {
        self.header.index_count as u64 >= u64::from(self.items)
    }

    fn hold_counter(holds: &Holds, name: &str) -> HoldCounter {
        holds.counter(HoldKind::MappedFile, &format!("index/{name}"))
    }

    fn hold(&self) -> Hold {
        self.holds.acquire()
    }

    fn read_i32(&self, at: u64) -> Result<i32> {
        let mut b = [0u8; 4];
        self.file.read_at(at, &mut b)?;
        Ok(i32::from_be_bytes(b))
    }

    fn slot_at(&self, key_hash: i32) -> u64 {
        INDEX_HEADER_BYTES + (key_hash as u64 % u64::from(self.slots)) * INDEX_SLOT_BYTES
    }

    fn item_at(&self, n: i32) -> u64 {
        INDEX_HEADER_BYTES + u64::from(self.slots) * INDEX_SLOT_BYTES + n as u64 * INDEX_ITEM_BYTES
    }

    /// `IndexFile.putKey`; false if the file is full.
    fn put_key(&mut self, hash: i32, phy: u64, store_ts_ms: i64) -> Result<bool> {
        if self.is_full() {
            return Ok(false);
        }
        let _hold = self.hold();
        let slot_pos = self.slot_at(hash);
        let count = self.header.index_count;
        let mut slot_value = self.read_i32(slot_pos)?;
        if slot_value <= 0 || slot_value > count {
            slot_value = 0;
        }
        let time_diff_s = if self.header.begin_timestamp_ms <= 0 || count <= 1 {
            0
        } else {
            ((store_ts_ms - self.header.begin_timestamp_ms) / 1000).clamp(0, i64::from(i32::MAX)) as i32
        };
        let mut item = [0u8; 20];
        item[0..4].copy_from_slice(&hash.to_be_bytes());
        item[4..12].copy_from_slice(&(phy as i64).to_be_bytes());
        item[12..16].copy_from_slice(&time_diff_s.to_be_bytes());
        item[16..20].copy_from_slice(&slot_value.to_be_bytes());
        // Item, then header, then slot; the in-memory header moves only once the header is
        // written. RocketMQ's order (item, slot, header) with the header updated first in
        // memory let a failed header write leave the slot on disk pointing at item `count`,
        // which the header on disk does not count: the file was then sealed and synced as it
        // was, kept after a crash (its stale end is below the index timestamp), and the
        // rebuild wrote another key's item at `count`, splicing that slot's chain onto the
        // other key's and losing every older key of the slot (broker seed 38703). In this
        // order a failed write leaves at worst an item no slot points to.
        self.file.write_at(self.item_at(count), &item)?;
        let mut header = self.header;
        if count <= 1 {
            header.begin_phy_offset = phy as i64;
            header.begin_timestamp_ms = store_ts_ms;
        }
        if slot_value == 0 {
            header.hash_slot_count += 1;
        }
        header.index_count += 1;
        header.end_phy_offset = phy as i64;
        header.end_timestamp_ms = store_ts_ms;
        self.file.write_at(0, &header.encode())?;
        self.header = header;
        self.file.write_at(slot_pos, &count.to_be_bytes())?;
        Ok(true)
    }

    fn time_matched(&self, begin: i64, end: i64) -> bool {
        let (b, e) = (self.header.begin_timestamp_ms, self.header.end_timestamp_ms);
        (begin < b && end > e) || (begin >= b && begin <= e) || (end >= b && end <= e)
    }

    /// `IndexFile.selectPhyOffset`: the chain for `key`, bounded by the item count so that
    /// corrupt chains cannot loop.
    fn select(&self, hash: i32, begin: i64, end: i64, max: usize, out: &mut Vec<u64>) -> Result<()> {
        let _hold = self.hold();
        let count = self.header.index_count;
        let mut next = self.read_i32(self.slot_at(hash))?;
        if next <= 0 || next > count || count <= 1 {
            return Ok(());
        }
        for _ in 0..count {
            if out.len() >= max {
                break;
            }
            let mut item = [0u8; 20];
            self.file.read_at(self.item_at(next), &mut item)?;
            let hash_read = i32::from_be_bytes(item[0..4].try_into().expect("4"));
            let phy = i64::from_be_bytes(item[4..12].try_into().expect("8"));
            let diff_s = i32::from_be_bytes(item[12..16].try_into().expect("4"));
            let prev = i32::from_be_bytes(item[16..20].try_into().expect("4"));
            if diff_s < 0 {
                break;
            }
            let time = self.header.begin_timestamp_ms.saturating_add(i64::from(diff_s) * 1000);
            if hash_read == hash && begin <= time && time <= end && phy >= 0 {
                out.push(phy as u64);
            }
            if prev <= 0 || prev > count || prev == next || time < begin {
                break;
            }
            next = prev;
        }
        Ok(())
    }

    fn sync_plan(&self) -> SyncPlan {
        SyncPlan {
            file: self.file.clone(),
            from_offset: 0,
            sync_from: 0,
            sync_to: index_file_size(self.slots, self.items),
            last_store_ts_ms: self.header.end_timestamp_ms,
        }
    }
}

/// What `IndexService::load` did on an abnormal start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexLoad {
    /// Names of destroyed files (not known durable, or unreadable).
    pub destroyed: Vec<String>,
}

/// An index file that filled up and must be synced before the checkpoint's index timestamp
/// may move to `end_timestamp_ms`.
#[derive(Debug, Clone)]
pub struct SealedIndex {
    pub plan: SyncPlan,
    pub end_timestamp_ms: i64,
}

#[derive(Debug)]
pub struct IndexService {
    dir: PathBuf,
    files: Vec<IndexFile>,
    slots: u32,
    items: u32,
    holds: Holds,
    dirs: Arc<DirSyncs>,
}

impl IndexService {
    /// Loads `dir`. Unreadable files are destroyed; after a crash (`!clean`) so is every
    /// file not known durable: `end >= index_ts`. A file synced when its end was `index_ts`
    /// may have been written again since with items of that same store timestamp (several
    /// per millisecond, or clamped while the clock was set back), even up to full, so
    /// neither `end == index_ts` nor fullness proves that what is on disk was synced.
    pub fn load(
        storage: &dyn Storage,
        dir: PathBuf,
        slots: u32,
        items: u32,
        holds: Holds,
        dirs: Arc<DirSyncs>,
        clean: bool,
        index_ts_ms: i64,
    ) -> Result<(IndexService, IndexLoad)> {
        dirs.ensure_dir(storage, &dir)?;
        let mut svc = IndexService { dir, files: Vec::new(), slots, items, holds, dirs };
        let mut report = IndexLoad::default();
        // Decide first, then remove: every file is opened before any is removed, so an error
        // on a later file cannot leave a half-destroyed suffix behind.
        for entry in storage.list_dir(&svc.dir)? {
            let path = svc.dir.join(&entry.name);
            let named = entry.name.len() == 17 && entry.name.bytes().all(|b| b.is_ascii_digit()) && !entry.is_dir;
            let file = if named {
                IndexFile::open(storage, &path, entry.name.clone(), slots, items, svc.holds.clone())?
            } else {
                None
            };
            let keep = file.filter(|f| clean || f.header.end_timestamp_ms < index_ts_ms);
            match keep {
                Some(f) if report.destroyed.is_empty() => svc.files.push(f),
                _ => report.destroyed.push(entry.name),
            }
        }
        // Newest first: until the last removal, the first destroyed file is still there, so a
        // load cut short (an I/O error, a crash) decides the same suffix again. Removing it
        // first would let a later file whose end timestamp passes (the clock was set back)
        // be kept behind a gap that `indexed_up_to` does not see, and its keys never rebuilt.
        for name in report.destroyed.iter().rev() {
            storage.remove_file(&svc.dir.join(name))?;
            svc.dirs.mark(&svc.dir);
            crate::probe!("recovery.index-file-destroyed");
        }
        Ok((svc, report))
    }

    pub fn files(&self) -> &[IndexFile] {
        &self.files
    }

    /// The commit-log offset from which messages are not (durably) indexed: the last kept
    /// file's `endPhyOffset`, or 0.
    pub fn indexed_up_to(&self) -> u64 {
        self.files.last().map_or(0, |f| f.header.end_phy_offset.max(0) as u64)
    }

    /// Destroys files that index anything at or beyond `cl_end` (the commit log was cut
    /// below them). Returns their names.
    pub fn drop_beyond(&mut self, storage: &dyn Storage, cl_end: u64) -> Result<Vec<String>> {
        let mut out = Vec::new();
        while let Some(f) = self.files.last() {
            let has_items = f.header.index_count > 1;
            if !(has_items && f.header.end_phy_offset as u64 >= cl_end) {
                break;
            }
            let name = f.name.clone();
            storage.remove_file(&self.dir.join(&name))?;
            self.dirs.mark(&self.dir);
            self.files.pop();
            out.push(name);
        }
        Ok(out)
    }

    /// Removes the oldest files whose every item points below commit-log offset `min_phy`
    /// (expiry), never the last file. Returns how many went.
    pub fn expire_below(&mut self, storage: &dyn Storage, min_phy: u64) -> Result<u64> {
        let mut n = 0;
        while self.files.len() > 1 && (self.files[0].header.end_phy_offset.max(0) as u64) < min_phy {
            storage.remove_file(&self.dir.join(&self.files[0].name))?;
            self.files.remove(0);
            self.dirs.mark(&self.dir);
            n += 1;
        }
        Ok(n)
    }

    fn next_name(&self, now_ms: i64) -> String {
        let name = timestamp_name(now_ms);
        match self.files.last() {
            Some(last) if name.as_str() <= last.name.as_str() => {
                let n: u64 = last.name.parse().unwrap_or(0);
                format!("{:017}", n + 1)
            }
            _ => name,
        }
    }

    /// `buildIndex`: adds UNIQ_KEY and the KEYS of `msg` (`props`, its dispatch properties).
    /// Returns a file that filled up.
    pub fn build(
        &mut self,
        storage: &dyn Storage,
        msg: &MessageRef<'_>,
        props: &DispatchProperties<'_>,
        now_ms: i64,
    ) -> Result<Option<SealedIndex>> {
        if !msg.is_dispatchable() {
            return Ok(None);
        }
        if let Some(last) = self.files.last() {
            if (msg.phy_offset as i64) < last.header.end_phy_offset {
                return Ok(None);
            }
        }
        let mut sealed = None;
        let hasher = IndexKeyHasher::new(msg.topic);
        for key in props.index_keys() {
            let hash = hasher.hash(key);
            loop {
                let needs_new = self.files.last().is_none_or(|f| f.is_full());
                if needs_new {
                    if let Some(full) = self.files.last() {
                        sealed = Some(SealedIndex {
                            plan: full.sync_plan(),
                            end_timestamp_ms: full.header.end_timestamp_ms,
                        });
                    }
                    let name = self.next_name(now_ms);
                    let seed = self.files.last().map(|f| f.header);
                    let f = IndexFile::create(
                        storage,
                        &self.dir,
                        name,
                        self.slots,
                        self.items,
                        seed.as_ref(),
                        self.holds.clone(),
                    )?;
                    self.dirs.mark(&self.dir);
                    self.files.push(f);
                }
                let f = self.files.last_mut().expect("exists");
                if f.put_key(hash, msg.phy_offset, msg.store_timestamp_ms)? {
                    break;
                }
            }
        }
        Ok(sealed)
    }

    /// `IndexService.queryOffset`: physical offsets of messages whose `topic#key` hashes like
    /// this one's, newest file first. Hash collisions are returned; callers filter.
    pub fn query(&self, topic: &str, key: &str, begin_ms: i64, end_ms: i64, max: usize) -> Result<Vec<u64>> {
        let hash = index_key_hash_of(topic, key);
        let mut out = Vec::new();
        for f in self.files.iter().rev() {
            if out.len() >= max {
                break;
            }
            if f.time_matched(begin_ms, end_ms) {
                f.select(hash, begin_ms, end_ms, max, &mut out)?;
            }
            if f.header.begin_timestamp_ms < begin_ms {
                break;
            }
        }
        Ok(out)
    }

    /// Sync plans for every file written since its last sync (with the item count each
    /// covers), and the end timestamp the checkpoint may take once they are durable.
    pub fn dirty_plans(&self) -> (Vec<(SyncPlan, i32)>, i64) {
        let plans = self
            .files
            .iter()
            .filter(|f| f.synced_count != f.header.index_count)
            .map(|f| (f.sync_plan(), f.header.index_count))
            .collect();
        (plans, self.files.last().map_or(0, |f| f.header.end_timestamp_ms))
    }

    /// Records that `plans` were synced; files written since stay dirty.
    pub fn mark_synced(&mut self, plans: &[(SyncPlan, i32)]) {
        for f in &mut self.files {
            if let Some((_, count)) = plans.iter().find(|(p, _)| Arc::ptr_eq(&p.file, &f.file)) {
                f.synced_count = *count;
            }
        }
    }

    /// True when every file is synced.
    pub fn is_clean(&self) -> bool {
        self.files.iter().all(|f| f.synced_count == f.header.index_count)
    }

    pub fn destroy_all(&mut self, storage: &dyn Storage) -> Result<Vec<String>> {
        let mut out = Vec::new();
        while let Some(f) = self.files.pop() {
            storage.remove_file(&self.dir.join(&f.name))?;
            self.dirs.mark(&self.dir);
            out.push(f.name);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_utc_timestamps() {
        assert_eq!(timestamp_name(0), "19700101000000000");
        assert_eq!(timestamp_name(1_700_000_000_123), "20231114221320123");
    }
}
