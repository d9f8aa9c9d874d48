//! The simulated disk of one node: a namespace of directories and files over a page-cache
//! model, with power loss, sync latency and injected faults. It implements the engine's
//! storage seam (`engine::io::Storage`), so the engine runs on it unchanged.
//!
//! Model, per file (inode): the *current* bytes (what reads see), the *durable* bytes (what
//! the medium holds), and the set of pages dirtied since their last sync. Both images are
//! stored sparsely, one boxed page per page index (a missing page reads as zeros), so a
//! preallocated or sparse file costs only the pages written to it. Invariants:
//! - a page that is neither dirty nor "lost" by a failed sync is equal in both images (within
//!   both lengths);
//! - stored bytes past an image's length are zero, so extending an image reads zeros;
//! - the durable length changes on a successful sync of the file, and at a power loss only
//!   if that file's unsynced length change happens to survive (`keep_len_prob`, off in runs
//!   by default; crash-state enumeration tries both).
//!
//! Namespace: the current tree, the durable tree, and one ordered log of pending namespace
//! operations between them (a journal). `sync_dir(d)` commits the log up to the last entry
//! that touches `d`; a power loss commits a random prefix. The durable tree plus the pending
//! log always replays to the current tree, which is why committing any prefix is infallible.
//!
//! # The contract: what each operation makes durable, and what it does not
//!
//! "Durable" means: survives a power loss. The model must allow every outcome Linux (ext4,
//! data=ordered) allows and none it forbids; `sim/tests/disk_contract.rs` holds each row from
//! both sides, and proves with the test-only `Kindness` switches that a kinder model fails.
//!
//! | operation | durable after it returns Ok | not durable (a power loss may undo it) |
//! |---|---|---|
//! | `write_at` | nothing | each written page: kept whole, dropped, or torn (each sector old or new) |
//! | `set_len` | nothing | the new length (a power loss leaves the durable length, or the new one with whatever pages survived) |
//! | `sync_range(o, n)` | the dirty pages overlapping `[o, o+n)` and the file's current length | dirty pages outside the range; the file's name (see `sync_dir`) |
//! | `sync_range` failing (EIO) | nothing; the pages it covered are marked clean (fsyncgate): lost at the next power loss unless rewritten, even after a later successful sync | — |
//! | create, remove, rename, mkdir, rmdir | nothing | the entry change; a power loss keeps a prefix of the pending changes, in order |
//! | `sync_dir(d)` | every pending entry change up to the last one touching `d`'s entries | file data and lengths (a file's bytes need its own sync) |
//! | `sync_dir` failing (EIO) | nothing; the changes stay pending (a later power loss may keep or lose them) | — |
//! | process crash (`CrashKind::ProcessCrash`) | — | nothing is lost: the kernel's page cache and namespace survive; handles and locks die |
//! | power loss (`CrashKind::PowerLoss`) | what was durable, plus a legal choice of the above | every unsynced page, length and entry change may be lost |
//!
//! Two allowed outcomes are narrowed on purpose: a failed sync always loses its pages (Linux
//! may have written some before the error; losing them is the outcome that breaks a writer
//! that retries), and seeded runs lose every unsynced length change (`keep_len_prob` 0, so
//! that existing seeds keep their traces; crash-state enumeration tries both lengths).
//!
//! Reads always see the current state, before and after a process crash; after a power loss
//! the current state is the surviving durable one. A power loss picks one legal image from
//! the seed, or, in crash-state enumeration, the image a `CrashImage` names (`ImageSpace`).
//!
//! The disk lives outside the node's futures (the world holds it), so it survives a kill.
//! `crash` bumps a generation number: every handle of an older generation is stale.
//! Everything random comes from one ChaCha8 generator seeded from the run seed and the node
//! name, and every state change is recorded in the run trace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use engine::io::storage::{DirEntry, FileLock, IoError, IoOp, Storage, StorageFile};
use engine::io::BoxFuture;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::trace::Trace;

// ---------------------------------------------------------------------------------------------
// Configuration

/// How a node went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CrashKind {
    /// The process died; the kernel (and its page cache) lives on: every write survives.
    ProcessCrash,
    /// The machine lost power: unsynced pages are kept, dropped or torn.
    PowerLoss,
}

/// Sync latency, described by two percentiles.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LatencyProfile {
    pub p50_us: u64,
    pub p99_us: u64,
}

impl LatencyProfile {
    /// No latency at all (unit tests).
    pub const INSTANT: LatencyProfile = LatencyProfile { p50_us: 0, p99_us: 0 };
    /// A network block device of a cloud VM.
    pub const CLOUD_VM: LatencyProfile = LatencyProfile { p50_us: 100, p99_us: 5_000 };
    /// An enterprise NVMe drive with power-loss protection (fsync hits its capacitor-backed cache).
    pub const NVME_PLP: LatencyProfile = LatencyProfile { p50_us: 30, p99_us: 200 };
    /// A consumer NVMe drive that really flushes its cache on fsync.
    pub const CONSUMER_NVME: LatencyProfile = LatencyProfile { p50_us: 1_000, p99_us: 5_000 };

    /// Draws one latency. Piecewise uniform on integers (half in [p50/2, p50], 49% in
    /// [p50, p99], 1% in [p99, 4·p99]) rather than log-normal: it hits both percentiles by
    /// construction and uses no libm transcendental, whose last bits may differ between
    /// machines and would change the trace hash.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        let p50_us = self.p50_us;
        let p99_us = self.p99_us.max(p50_us);
        let bucket = rng.gen_range(0..100u32);
        let us = if bucket < 50 {
            rng.gen_range(p50_us / 2..=p50_us)
        } else if bucket < 99 {
            rng.gen_range(p50_us..=p99_us)
        } else {
            rng.gen_range(p99_us..=p99_us.saturating_mul(4))
        };
        Duration::from_micros(us)
    }
}

impl Default for LatencyProfile {
    fn default() -> Self {
        LatencyProfile::CLOUD_VM
    }
}

/// What a power loss does to each unsynced page and each pending namespace operation. A page
/// is kept with `keep_page_prob`, torn with `tear_page_prob`, dropped otherwise.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PowerLossModel {
    pub keep_page_prob: f64,
    pub tear_page_prob: f64,
    /// Probability that each next pending namespace operation survives (the first one that
    /// does not ends the surviving prefix).
    pub keep_dir_op_prob: f64,
    /// Probability that a file's unsynced length change (append past the durable length,
    /// `set_len`) survives, as ext4 may commit a new size with its journal. 0 by default, so
    /// that seeded runs keep their traces; crash-state enumeration tries both lengths.
    pub keep_len_prob: f64,
}

impl PowerLossModel {
    /// Every unsynced page and namespace operation is lost: the durable image only.
    pub const LOSE_ALL: PowerLossModel =
        PowerLossModel { keep_page_prob: 0.0, tear_page_prob: 0.0, keep_dir_op_prob: 0.0, keep_len_prob: 0.0 };
    /// Every unsynced page, length and namespace operation happened to reach the medium.
    pub const KEEP_ALL: PowerLossModel =
        PowerLossModel { keep_page_prob: 1.0, tear_page_prob: 0.0, keep_dir_op_prob: 1.0, keep_len_prob: 1.0 };
}

impl Default for PowerLossModel {
    fn default() -> Self {
        PowerLossModel { keep_page_prob: 0.5, tear_page_prob: 0.2, keep_dir_op_prob: 0.5, keep_len_prob: 0.0 }
    }
}

/// One way to make the model kinder than Linux, for tests only: each must make a test of the
/// contract (`sim/tests/disk_contract.rs`) fail, which is what shows those tests bound the
/// model from the permissive side. Never set outside tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kindness {
    /// A power loss keeps every unsynced page whole.
    KeepsUnsyncedPages,
    /// A power loss never tears a page (a page it would tear survives whole).
    NeverTears,
    /// A power loss keeps every pending namespace operation.
    KeepsUnsyncedDirOps,
    /// A power loss keeps every unsynced length change.
    KeepsUnsyncedLength,
    /// `sync_range` makes the whole file durable, not only the range.
    SyncRangeSyncsWholeFile,
    /// A file sync also makes the file's own directory entry durable.
    FileSyncPersistsName,
    /// `sync_dir` also makes the data and length of the files in the directory durable.
    DirSyncPersistsData,
    /// A failed sync leaves its pages dirty, so a retry persists them (no fsyncgate).
    FailedSyncKeepsPagesDirty,
    /// A failed `sync_dir` commits its namespace operations anyway.
    FailedDirSyncCommits,
}

/// Probabilities of injected errors per operation. All zero: no faults.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiskFaults {
    pub read_eio_prob: f64,
    pub write_eio_prob: f64,
    /// Also applies to `sync_dir` (which then commits nothing; the operations stay pending).
    pub sync_eio_prob: f64,
}

/// The disk's shape and behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiskConfig {
    /// Unit of dirtiness and of power-loss survival. Must be a multiple of the sector size.
    pub page_size_bytes: u64,
    /// Unit of atomicity inside a torn page.
    pub sector_size_bytes: u64,
    /// ENOSPC when the total current size of all files would exceed this.
    pub capacity_bytes: Option<u64>,
    pub sync_latency: LatencyProfile,
    pub power_loss: PowerLossModel,
    /// Test-only: one way the model is made kinder than Linux (see `Kindness`).
    #[serde(skip)]
    pub kindness: Option<Kindness>,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            page_size_bytes: 4096,
            sector_size_bytes: 512,
            capacity_bytes: None,
            sync_latency: LatencyProfile::CLOUD_VM,
            power_loss: PowerLossModel::default(),
            kindness: None,
        }
    }
}

/// Largest page the model accepts; larger configured pages fall back to the default.
const MAX_PAGE_BYTES: u64 = 1 << 20;
/// `current_image`/`durable_image` refuse to materialise files larger than this.
const MAX_IMAGE_BYTES: u64 = 1 << 30;

impl DiskConfig {
    /// Why this configuration is unusable, if it is. `SimDisk::new` repairs such a config
    /// (see `Geometry::from_config`) rather than panicking, but callers can check first.
    pub fn validate(&self) -> Result<(), String> {
        let (page, sector) = (self.page_size_bytes, self.sector_size_bytes);
        if page == 0 || page > MAX_PAGE_BYTES {
            return Err(format!("page_size_bytes {page} must be in 1..={MAX_PAGE_BYTES}"));
        }
        if page.checked_rem(sector) != Some(0) {
            return Err(format!("sector_size_bytes {sector} must divide page_size_bytes {page}"));
        }
        let pl = &self.power_loss;
        for (name, p) in [
            ("keep_page_prob", pl.keep_page_prob),
            ("tear_page_prob", pl.tear_page_prob),
            ("keep_len_prob", pl.keep_len_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("power_loss.{name} {p} must be in [0, 1]"));
            }
        }
        if pl.keep_page_prob + pl.tear_page_prob > 1.0 + 1e-9 {
            return Err("power_loss.keep_page_prob + tear_page_prob must be <= 1".to_string());
        }
        Ok(())
    }
}

/// One injected bit flip: byte `offset` of the file durably named `path`, bit `bit` (0 = LSB).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitFlip {
    pub path: PathBuf,
    pub offset: u64,
    pub bit: u8,
}

/// Counters of what the disk did and suffered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStats {
    pub writes: u64,
    pub bytes_written: u64,
    pub reads: u64,
    /// Successful file syncs.
    pub syncs: u64,
    /// File syncs that returned EIO (and dropped the pages they covered).
    pub failed_syncs: u64,
    pub dir_syncs: u64,
    /// Crashes of either kind.
    pub crashes: u64,
    pub power_losses: u64,
    pub pages_kept: u64,
    pub pages_dropped: u64,
    pub pages_torn: u64,
    pub dir_ops_kept: u64,
    pub dir_ops_lost: u64,
    pub bit_flips: u64,
    /// Every injected EIO: reads, writes, file and directory syncs.
    pub eio: u64,
    pub enospc: u64,
}

// ---------------------------------------------------------------------------------------------
// Sparse byte images

/// Page and sector sizes, repaired so that the arithmetic below cannot fail.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    page_bytes: u64,
    sector_bytes: u64,
}

impl Geometry {
    fn from_config(config: &DiskConfig) -> Geometry {
        let mut page_bytes = config.page_size_bytes;
        if page_bytes == 0 || page_bytes > MAX_PAGE_BYTES {
            page_bytes = 4096;
        }
        let mut sector_bytes = config.sector_size_bytes;
        if page_bytes.checked_rem(sector_bytes) != Some(0) {
            // A sector (or zero) that does not tile the page: make the whole page atomic.
            sector_bytes = page_bytes;
        }
        Geometry { page_bytes, sector_bytes }
    }

    fn page_usize(&self) -> usize {
        // Bounded by MAX_PAGE_BYTES, so it fits.
        self.page_bytes as usize
    }

    /// Page indices overlapping `[start, end)`, as a half-open range.
    fn pages_overlapping(&self, start: u64, end: u64) -> std::ops::Range<u64> {
        if start >= end {
            return 0..0;
        }
        start / self.page_bytes..end.div_ceil(self.page_bytes)
    }
}

/// A sparse image of a file: its length and the pages that hold data. Bytes past `len_bytes`
/// inside a stored page are always zero.
#[derive(Debug, Clone, Default)]
struct Pages {
    len_bytes: u64,
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl Pages {
    /// Copies `[offset, offset + buf.len())` into `buf`; the caller has checked the bounds.
    fn read(&self, geo: Geometry, offset: u64, buf: &mut [u8]) {
        debug_assert!(offset.checked_add(buf.len() as u64).is_some_and(|end| end <= self.len_bytes));
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let in_page = (pos % geo.page_bytes) as usize;
            let n = (geo.page_usize() - in_page).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.pages.get(&(pos / geo.page_bytes)) {
                Some(page) => out.copy_from_slice(&page[in_page..in_page + n]),
                None => out.fill(0),
            }
            done += n;
        }
    }

    /// Writes `data` at `offset` and extends the length; the caller has checked for overflow.
    fn write(&mut self, geo: Geometry, offset: u64, data: &[u8]) {
        debug_assert!(offset.checked_add(data.len() as u64).is_some(), "caller checks for overflow");
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let in_page = (pos % geo.page_bytes) as usize;
            let n = (geo.page_usize() - in_page).min(data.len() - done);
            let page = self.page_mut(geo, pos / geo.page_bytes);
            page[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        self.len_bytes = self.len_bytes.max(offset + data.len() as u64);
    }

    fn page_mut(&mut self, geo: Geometry, index: u64) -> &mut [u8] {
        self.pages.entry(index).or_insert_with(|| vec![0u8; geo.page_usize()].into_boxed_slice())
    }

    /// Truncates (dropping pages, zeroing the tail of the last one) or extends with zeros.
    fn set_len(&mut self, geo: Geometry, len_bytes: u64) {
        if len_bytes < self.len_bytes {
            drop(self.pages.split_off(&len_bytes.div_ceil(geo.page_bytes)));
            let tail = (len_bytes % geo.page_bytes) as usize;
            if tail != 0 {
                if let Some(page) = self.pages.get_mut(&(len_bytes / geo.page_bytes)) {
                    page[tail..].fill(0);
                }
            }
        }
        self.len_bytes = len_bytes;
    }

    /// Copies bytes `[lo, hi)` of page `index` (offsets inside the page) from `src`, clipped
    /// to both lengths so that the zero-past-the-end invariant holds in `self`.
    fn copy_from(&mut self, geo: Geometry, src: &Pages, index: u64, lo: usize, hi: usize) {
        let page_start = index * geo.page_bytes;
        let limit = src.len_bytes.min(self.len_bytes).saturating_sub(page_start);
        let hi = hi.min(usize::try_from(limit).unwrap_or(usize::MAX));
        if lo >= hi {
            return;
        }
        match src.pages.get(&index) {
            Some(from) => self.page_mut(geo, index)[lo..hi].copy_from_slice(&from[lo..hi]),
            None => {
                if let Some(to) = self.pages.get_mut(&index) {
                    to[lo..hi].fill(0);
                }
            }
        }
    }

    /// The whole image, if it is small enough to materialise.
    fn image(&self, geo: Geometry) -> Option<Vec<u8>> {
        if self.len_bytes > MAX_IMAGE_BYTES {
            return None;
        }
        let mut out = vec![0u8; self.len_bytes as usize];
        self.read(geo, 0, &mut out);
        Some(out)
    }

    fn flip_bit(&mut self, geo: Geometry, offset: u64, bit: u8) {
        let in_page = (offset % geo.page_bytes) as usize;
        self.page_mut(geo, offset / geo.page_bytes)[in_page] ^= 1 << bit;
    }
}

// ---------------------------------------------------------------------------------------------
// Inodes and the namespace

type Ino = u64;

#[derive(Debug, Default)]
struct Inode {
    current: Pages,
    durable: Pages,
    /// Pages written (or exposed by growth) since their last sync.
    dirty: BTreeSet<u64>,
    /// Has a name in the current namespace (counts towards capacity).
    linked: bool,
    /// Open handles of the current generation (keep an unlinked inode alive, as POSIX does).
    open_handles: u32,
}

impl Inode {
    /// The current image grew from `old_len` to `new_len` with zeros: pages in that range
    /// whose durable copy holds older bytes now differ from it, so they become dirty. Pages
    /// absent from the durable image read zeros on both sides and need nothing.
    fn mark_grown(&mut self, geo: Geometry, old_len: u64, new_len: u64) {
        let hi = new_len.min(self.durable.len_bytes);
        let range = geo.pages_overlapping(old_len, hi);
        let stale: Vec<u64> = self.durable.pages.range(range).map(|(&i, _)| i).collect();
        self.dirty.extend(stale);
    }

    fn mark_written(&mut self, geo: Geometry, offset: u64, end: u64) {
        self.dirty.extend(geo.pages_overlapping(offset, end));
    }

    /// Sets the current length, keeping the dirty set consistent with it.
    fn set_current_len(&mut self, geo: Geometry, len_bytes: u64) {
        let old_len = self.current.len_bytes;
        self.current.set_len(geo, len_bytes);
        if len_bytes < old_len {
            drop(self.dirty.split_off(&len_bytes.div_ceil(geo.page_bytes)));
        } else {
            self.mark_grown(geo, old_len, len_bytes);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Ino),
}

/// One namespace change, as logged between the current and the durable tree.
#[derive(Debug, Clone)]
enum NsOp {
    Create { path: PathBuf, ino: Ino },
    Remove { path: PathBuf },
    Mkdir { path: PathBuf },
    Rmdir { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf },
}

impl NsOp {
    /// Whether `sync_dir(dir)` must make this operation durable: it changed an entry of `dir`.
    fn touches(&self, dir: &Path) -> bool {
        let parent_is = |p: &Path| p.parent() == Some(dir);
        match self {
            NsOp::Create { path, .. } | NsOp::Remove { path } | NsOp::Mkdir { path } | NsOp::Rmdir { path } => {
                parent_is(path)
            }
            NsOp::Rename { from, to } => parent_is(from) || parent_is(to),
        }
    }
}

impl NsOp {
    /// Whether this operation gave inode `ino` the name `path` (for a test-only kindness).
    fn names(&self, ino: Ino, path: &Path) -> bool {
        match self {
            NsOp::Create { path: p, ino: i } => *i == ino && p == path,
            NsOp::Rename { to, .. } => to == path,
            _ => false,
        }
    }
}

impl fmt::Display for NsOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NsOp::Create { path, ino } => write!(f, "create {} ino={ino}", path.display()),
            NsOp::Remove { path } => write!(f, "remove {}", path.display()),
            NsOp::Mkdir { path } => write!(f, "mkdir {}", path.display()),
            NsOp::Rmdir { path } => write!(f, "rmdir {}", path.display()),
            NsOp::Rename { from, to } => write!(f, "rename {} -> {}", from.display(), to.display()),
        }
    }
}

/// A directory tree as a flat map from normalised path to entry. `Path`'s ordering is by
/// component, so a directory's descendants are contiguous right after it.
#[derive(Debug, Clone, Default)]
struct Namespace {
    entries: BTreeMap<PathBuf, Entry>,
}

/// `/` and the empty relative root always exist and cannot be removed.
fn is_root(path: &Path) -> bool {
    path.parent().is_none()
}

/// Drops `.` components, repeated and trailing separators: `/store/./a/` is `/store/a`.
/// `..` is kept literally (the engine never produces it; we do not resolve it).
fn normalize(path: &Path) -> PathBuf {
    path.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

impl Namespace {
    fn lookup(&self, path: &Path) -> Option<Entry> {
        if is_root(path) {
            return Some(Entry::Dir);
        }
        self.entries.get(path).copied()
    }

    fn descendants<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = (&'a PathBuf, &'a Entry)> + 'a {
        use std::ops::Bound::{Excluded, Unbounded};
        self.entries.range::<Path, _>((Excluded(dir), Unbounded)).take_while(move |(p, _)| p.starts_with(dir))
    }

    fn children<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = (&'a PathBuf, &'a Entry)> + 'a {
        self.descendants(dir).filter(move |(p, _)| p.parent() == Some(dir))
    }

    fn has_children(&self, dir: &Path) -> bool {
        self.descendants(dir).next().is_some()
    }

    /// Applies an operation that was valid when logged against the current tree. Replaying a
    /// prefix of the log on the durable tree is therefore valid too.
    fn apply(&mut self, op: &NsOp) {
        match op {
            NsOp::Create { path, ino } => {
                self.entries.insert(path.clone(), Entry::File(*ino));
            }
            NsOp::Mkdir { path } => {
                self.entries.insert(path.clone(), Entry::Dir);
            }
            NsOp::Remove { path } | NsOp::Rmdir { path } => {
                self.entries.remove(path);
            }
            NsOp::Rename { from, to } => self.rename(from, to),
        }
    }

    fn rename(&mut self, from: &Path, to: &Path) {
        let Some(entry) = self.entries.remove(from) else {
            debug_assert!(false, "replayed rename of missing {}", from.display());
            return;
        };
        self.entries.remove(to);
        if entry == Entry::Dir {
            let moved: Vec<PathBuf> = self.descendants(from).map(|(p, _)| p.clone()).collect();
            for old in moved {
                if let (Some(e), Ok(rest)) = (self.entries.remove(&old), old.strip_prefix(from)) {
                    self.entries.insert(to.join(rest), e);
                }
            }
        }
        self.entries.insert(to.to_path_buf(), entry);
    }

    fn files(&self) -> impl Iterator<Item = (&PathBuf, Ino)> + '_ {
        self.entries.iter().filter_map(|(p, e)| match e {
            Entry::File(ino) => Some((p, *ino)),
            Entry::Dir => None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Crash images: the legal outcomes of one power loss, enumerable

/// Which legal image a power loss leaves, instead of fates drawn from the run's generator
/// (crash-state enumeration). Written into case files, so a failing image replays exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrashImage {
    /// The image with this number in the point's `ImageSpace` (mixed radix, first choice
    /// least significant): 0 is the durable image alone.
    Index(u64),
    /// Each choice drawn uniformly by a generator seeded with this value (state spaces too
    /// large to number; see `ImageSpace::sample`).
    Sample(u64),
}

impl fmt::Display for CrashImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrashImage::Index(k) => write!(f, "index:{k}"),
            CrashImage::Sample(s) => write!(f, "sample:{s}"),
        }
    }
}

/// One independent choice a power loss makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// How many pending namespace operations survive, as a prefix: `0..=pending`.
    DirOps { pending: usize },
    /// Whether a file's unsynced length change survives: drop (0) or keep (1).
    Len { ino: Ino },
    /// A dirty page: drop (0), keep (1), or (an edge page of a dirty run) keep only its
    /// first `s` sectors, `s` in `1..sectors` (2..=sectors).
    Page { ino: Ino, page: u64, tears: u64 },
}

impl Choice {
    fn radix(&self) -> u128 {
        match *self {
            Choice::DirOps { pending } => pending as u128 + 1,
            Choice::Len { .. } => 2,
            Choice::Page { tears, .. } => 2 + u128::from(tears),
        }
    }
}

/// The legal images of a power loss at this instant: every subset of the unsynced pages of
/// every file, torn sectors (a prefix of the page) at the edges of each run of dirty pages,
/// each unsynced length change kept or lost, and each prefix of the pending namespace log.
/// Choices, not images, are counted: two choices may leave the same bytes (a page dirtied
/// with its durable contents, pages past a length that was lost).
#[derive(Debug, Clone, Default)]
pub struct ImageSpace {
    choices: Vec<Choice>,
}

/// One decoded choice per `Choice`, in the same order.
type Decided = Vec<u64>;

impl ImageSpace {
    fn of(st: &State) -> ImageSpace {
        let sectors = st.geo.page_bytes / st.geo.sector_bytes;
        let mut choices = vec![Choice::DirOps { pending: st.pending.len() }];
        for (&ino, inode) in &st.inodes {
            if inode.current.len_bytes != inode.durable.len_bytes {
                choices.push(Choice::Len { ino });
            }
            for &page in &inode.dirty {
                let edge = page == 0 || !inode.dirty.contains(&(page - 1)) || !inode.dirty.contains(&(page + 1));
                let tears = if edge { sectors - 1 } else { 0 };
                choices.push(Choice::Page { ino, page, tears });
            }
        }
        ImageSpace { choices }
    }

    /// The number of legal choices (saturated at `u128::MAX`).
    pub fn legal_states(&self) -> u128 {
        self.choices.iter().fold(1u128, |n, c| n.saturating_mul(c.radix()))
    }

    /// Image number `k` (`k < legal_states()`; higher numbers wrap around each radix).
    fn decode(&self, mut k: u128) -> Decided {
        self.choices
            .iter()
            .map(|c| {
                let r = c.radix();
                let d = k % r;
                k /= r;
                d as u64
            })
            .collect()
    }

    /// Each choice uniformly among drop, keep and (if it may) tear, then the tear's sectors.
    fn sample(&self, seed: u64) -> Decided {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.choices
            .iter()
            .map(|c| match *c {
                Choice::DirOps { pending } => rng.gen_range(0..=pending as u64),
                Choice::Len { .. } => rng.gen_range(0..2),
                Choice::Page { tears: 0, .. } => rng.gen_range(0..2),
                Choice::Page { tears, .. } => match rng.gen_range(0..3) {
                    2 => 2 + rng.gen_range(0..tears),
                    d => d,
                },
            })
            .collect()
    }

    fn decide(&self, image: CrashImage) -> Decided {
        match image {
            CrashImage::Index(k) => self.decode(u128::from(k)),
            CrashImage::Sample(seed) => self.sample(seed),
        }
    }
}

/// What one power loss keeps, decided before it is applied (by `ImageSpace`, or drawn).
#[derive(Debug, Default)]
struct Fates {
    dir_ops_kept: usize,
    kept_len: BTreeSet<Ino>,
    pages: BTreeMap<(Ino, u64), PageFate>,
}

impl Fates {
    fn from_decided(space: &ImageSpace, decided: &[u64]) -> Fates {
        let mut fates = Fates::default();
        for (c, &d) in space.choices.iter().zip(decided) {
            match *c {
                Choice::DirOps { .. } => fates.dir_ops_kept = d as usize,
                Choice::Len { ino } => {
                    if d == 1 {
                        fates.kept_len.insert(ino);
                    }
                }
                Choice::Page { ino, page, .. } => {
                    let fate = match d {
                        0 => PageFate::Drop,
                        1 => PageFate::Keep,
                        s => PageFate::TearPrefix(s - 1),
                    };
                    fates.pages.insert((ino, page), fate);
                }
            }
        }
        fates
    }
}

// ---------------------------------------------------------------------------------------------
// The disk

struct State {
    geo: Geometry,
    config: DiskConfig,
    faults: DiskFaults,
    rng: ChaCha8Rng,
    /// Bumped by every crash; handles of older generations are stale.
    generation: u64,
    next_ino: Ino,
    next_lock_id: u64,
    inodes: BTreeMap<Ino, Inode>,
    current_ns: Namespace,
    durable_ns: Namespace,
    /// Namespace operations applied to `current_ns` but not yet to `durable_ns`, in order.
    pending: Vec<NsOp>,
    /// Live locks: inode -> lock id (ids are never reused, so a stale guard cannot release a
    /// newer lock).
    locks: BTreeMap<Ino, u64>,
    stats: DiskStats,
}

/// True with probability `p`, drawing nothing when `p` is 0.
fn draw(rng: &mut ChaCha8Rng, p: f64) -> bool {
    let p = clamp_prob(p);
    p > 0.0 && rng.gen_bool(p)
}

/// A probability as `gen_bool` accepts it: NaN and negatives are 0, above 1 is 1.
fn clamp_prob(p: f64) -> f64 {
    if p > 0.0 {
        p.min(1.0)
    } else {
        0.0
    }
}

impl State {
    /// True with probability `p`. Draws nothing when `p` is 0, so turning faults off does not
    /// shift the random stream of the rest of the run more than necessary.
    fn draw(&mut self, p: f64) -> bool {
        draw(&mut self.rng, p)
    }

    fn inode(&mut self, ino: Ino, op: IoOp, path: &Path) -> Result<&mut Inode, IoError> {
        // A handle keeps its inode alive (open_handles), so a miss is a bug in this model.
        self.inodes.get_mut(&ino).ok_or_else(|| IoError::Other {
            op,
            path: path.to_path_buf(),
            message: format!("simulated disk lost inode {ino}"),
        })
    }

    /// Total current size of every file that occupies space (named, or held open).
    fn usage_bytes(&self) -> u128 {
        self.inodes.values().filter(|i| i.linked || i.open_handles > 0).map(|i| u128::from(i.current.len_bytes)).sum()
    }

    /// Whether growing `ino`'s current image to `new_len` fits the capacity.
    fn fits(&self, ino: Ino, new_len: u64) -> bool {
        let Some(capacity) = self.config.capacity_bytes else { return true };
        let old_len = self.inodes.get(&ino).map_or(0, |i| i.current.len_bytes);
        if new_len <= old_len {
            return true;
        }
        self.usage_bytes() + u128::from(new_len - old_len) <= u128::from(capacity)
    }

    /// Parent directory check for an entry about to be created at `path`.
    fn check_parent(&self, op: IoOp, path: &Path) -> Result<(), IoError> {
        match path.parent().map(|p| self.current_ns.lookup(p)) {
            None => Err(IoError::AlreadyExists { op, path: path.to_path_buf() }), // the root itself
            Some(Some(Entry::Dir)) => Ok(()),
            Some(Some(Entry::File(_))) => Err(IoError::NotAFile { op, path: path.to_path_buf() }),
            Some(None) => Err(IoError::NotFound { op, path: path.to_path_buf() }),
        }
    }

    fn new_inode(&mut self) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode { linked: true, ..Inode::default() });
        ino
    }

    /// Drops inodes that nothing can reach any more: no name in either tree, no pending
    /// create, no open handle.
    fn collect_garbage(&mut self) {
        let mut live: BTreeSet<Ino> = self.current_ns.files().map(|(_, i)| i).collect();
        live.extend(self.durable_ns.files().map(|(_, i)| i));
        live.extend(self.pending.iter().filter_map(|op| match op {
            NsOp::Create { ino, .. } => Some(*ino),
            _ => None,
        }));
        self.inodes.retain(|ino, inode| live.contains(ino) || inode.open_handles > 0);
    }

    /// Makes every file directly in `dir` wholly durable (for a test-only kindness).
    fn persist_files_in(&mut self, dir: &Path) {
        let geo = self.geo;
        let inos: Vec<Ino> = self
            .current_ns
            .children(dir)
            .filter_map(|(_, e)| match e {
                Entry::File(ino) => Some(*ino),
                Entry::Dir => None,
            })
            .collect();
        for ino in inos {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.durable.set_len(geo, inode.current.len_bytes);
                for page in std::mem::take(&mut inode.dirty) {
                    inode.durable.copy_from(geo, &inode.current, page, 0, geo.page_usize());
                }
            }
        }
    }

    /// Commits the first `n` pending operations to the durable tree.
    fn commit_pending(&mut self, n: usize) {
        for op in self.pending.drain(..n) {
            self.durable_ns.apply(&op);
        }
    }
}

/// The simulated disk of one node. Shared (`Arc`) by the world and every handle.
pub struct SimDisk {
    node: String,
    trace: Arc<Trace>,
    state: Mutex<State>,
}

// The world shares disks across tasks and the storage seam requires it.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SimDisk>();
};

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state();
        f.debug_struct("SimDisk")
            .field("node", &self.node)
            .field("generation", &s.generation)
            .field("files", &s.current_ns.files().count())
            .field("pending_dir_ops", &s.pending.len())
            .finish()
    }
}

/// FNV-1a: stable across platforms and Rust versions, unlike std's hashers.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// What one power loss did, for the trace and the stats.
#[derive(Debug, Default)]
struct LossReport {
    pages_kept: u64,
    pages_dropped: u64,
    pages_torn: u64,
    dir_ops_kept: u64,
    dir_ops_lost: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageFate {
    Keep,
    Drop,
    /// Each sector kept or not, drawn from the run's generator.
    Tear,
    /// The first `n` sectors kept (an enumerated image).
    TearPrefix(u64),
}

impl SimDisk {
    pub fn new(node: &str, config: DiskConfig, seed: u64, trace: Arc<Trace>) -> Arc<SimDisk> {
        let mut key = seed.to_le_bytes().to_vec();
        key.extend_from_slice(node.as_bytes());
        let rng = ChaCha8Rng::seed_from_u64(fnv1a(&key));
        let geo = Geometry::from_config(&config);
        crate::trace!(
            trace,
            node,
            "disk.new",
            "page={} sector={} capacity={:?}",
            geo.page_bytes,
            geo.sector_bytes,
            config.capacity_bytes
        );
        let state = State {
            geo,
            config,
            faults: DiskFaults::default(),
            rng,
            generation: 0,
            next_ino: 1,
            next_lock_id: 1,
            inodes: BTreeMap::new(),
            current_ns: Namespace::default(),
            durable_ns: Namespace::default(),
            pending: Vec::new(),
            locks: BTreeMap::new(),
            stats: DiskStats::default(),
        };
        Arc::new(SimDisk { node: node.to_string(), trace, state: Mutex::new(state) })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, if `generation` is still the live one.
    fn live(&self, generation: u64, op: IoOp, path: &Path) -> Result<MutexGuard<'_, State>, IoError> {
        let st = self.state();
        if st.generation != generation {
            return Err(IoError::StaleHandle { op, path: path.to_path_buf() });
        }
        Ok(st)
    }

    /// A storage handle for the current process generation of this node.
    pub fn storage(self: &Arc<Self>) -> Arc<dyn Storage> {
        let generation = self.state().generation;
        Arc::new(SimStorage { disk: self.clone(), generation })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The process generation: bumped by every crash.
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// The node crashed: see `CrashKind`. Every handle and lock from before is dead after it.
    pub fn crash(&self, kind: CrashKind) {
        self.crash_to(kind, None);
    }

    /// `crash`; a power loss leaves `image` (crash-state enumeration) if given, else fates
    /// drawn from the run's generator.
    pub fn crash_to(&self, kind: CrashKind, image: Option<CrashImage>) {
        let mut guard = self.state();
        let st = &mut *guard;
        st.generation += 1;
        st.locks.clear();
        for inode in st.inodes.values_mut() {
            inode.open_handles = 0;
        }
        st.stats.crashes += 1;
        match kind {
            CrashKind::ProcessCrash => {
                st.collect_garbage();
                crate::trace!(self.trace, &self.node, "disk.crash", "kind=process generation={}", st.generation);
            }
            CrashKind::PowerLoss => {
                // Only an enumerated image says how many it was chosen among: seeded runs keep
                // their traces.
                let chosen = image.map(|image| {
                    let space = ImageSpace::of(st);
                    let fates = Fates::from_decided(&space, &space.decide(image));
                    (format!(" image={image} legal_states={}", space.legal_states()), fates)
                });
                let (suffix, fates) = chosen.map_or((String::new(), None), |(s, f)| (s, Some(f)));
                let report = self.power_loss(st, fates.as_ref());
                crate::trace!(
                    self.trace,
                    &self.node,
                    "disk.crash",
                    "kind=power-loss generation={} pages_kept={} pages_dropped={} pages_torn={} dir_ops_kept={} dir_ops_lost={}{}",
                    st.generation,
                    report.pages_kept,
                    report.pages_dropped,
                    report.pages_torn,
                    report.dir_ops_kept,
                    report.dir_ops_lost,
                    suffix
                );
            }
        }
    }

    /// The legal images a power loss would choose among now.
    pub fn image_space(&self) -> ImageSpace {
        ImageSpace::of(&self.state())
    }

    fn power_loss(&self, st: &mut State, fates: Option<&Fates>) -> LossReport {
        st.stats.power_losses += 1;
        let mut report = LossReport::default();
        let names: BTreeMap<Ino, PathBuf> = st.current_ns.files().map(|(p, i)| (i, p.clone())).collect();
        let model = st.config.power_loss;
        let kindness = st.config.kindness;
        let geo = st.geo;
        for (ino, inode) in st.inodes.iter_mut() {
            let keep_len = match fates {
                Some(f) => f.kept_len.contains(ino),
                None => {
                    inode.current.len_bytes != inode.durable.len_bytes
                        && (kindness == Some(Kindness::KeepsUnsyncedLength) || draw(&mut st.rng, model.keep_len_prob))
                }
            };
            if keep_len {
                // Before the pages, so that kept pages land inside the kept length.
                inode.durable.set_len(geo, inode.current.len_bytes);
            }
            for page in std::mem::take(&mut inode.dirty) {
                let fate = match fates {
                    Some(f) => f.pages.get(&(*ino, page)).copied().unwrap_or(PageFate::Drop),
                    None => page_fate(&mut st.rng, &model, kindness),
                };
                let mask = match fate {
                    PageFate::Keep => {
                        inode.durable.copy_from(geo, &inode.current, page, 0, geo.page_usize());
                        report.pages_kept += 1;
                        continue;
                    }
                    PageFate::Drop => {
                        report.pages_dropped += 1;
                        continue;
                    }
                    PageFate::Tear => tear_page(&mut st.rng, geo, inode, page),
                    PageFate::TearPrefix(n) => tear_prefix(geo, inode, page, n),
                };
                report.pages_torn += 1;
                engine::probe!("disk.page-torn");
                let name = names.get(ino).map_or_else(|| format!("<unlinked ino {ino}>"), |p| p.display().to_string());
                crate::trace!(self.trace, &self.node, "disk.tear", "{} page={} sectors_kept={}", name, page, mask);
            }
            debug_assert!(inode.dirty.is_empty());
            inode.current = inode.durable.clone();
        }
        self.lose_pending_ops(st, &mut report, fates.map(|f| f.dir_ops_kept));
        st.current_ns = st.durable_ns.clone();
        st.collect_garbage();
        for inode in st.inodes.values_mut() {
            inode.linked = false;
        }
        let linked: Vec<Ino> = st.current_ns.files().map(|(_, i)| i).collect();
        for ino in linked {
            if let Some(inode) = st.inodes.get_mut(&ino) {
                inode.linked = true;
            }
        }
        let s = &mut st.stats;
        s.pages_kept += report.pages_kept;
        s.pages_dropped += report.pages_dropped;
        s.pages_torn += report.pages_torn;
        s.dir_ops_kept += report.dir_ops_kept;
        s.dir_ops_lost += report.dir_ops_lost;
        report
    }

    /// A prefix of the pending namespace log reaches the medium (journal semantics): `kept`
    /// operations if decided, else a random prefix.
    fn lose_pending_ops(&self, st: &mut State, report: &mut LossReport, kept: Option<usize>) {
        let kept = match kept {
            Some(n) => n.min(st.pending.len()),
            None if st.config.kindness == Some(Kindness::KeepsUnsyncedDirOps) => st.pending.len(),
            None => {
                let keep_prob = st.config.power_loss.keep_dir_op_prob;
                let mut kept = 0;
                while kept < st.pending.len() && st.draw(keep_prob) {
                    kept += 1;
                }
                kept
            }
        };
        st.commit_pending(kept);
        report.dir_ops_kept = kept as u64;
        report.dir_ops_lost = st.pending.len() as u64;
        for op in std::mem::take(&mut st.pending) {
            engine::probe!("disk.dir-op-lost");
            crate::trace!(self.trace, &self.node, "disk.dir_op_lost", "{}", op);
        }
    }

    /// Replaces the active fault probabilities.
    pub fn set_faults(&self, faults: DiskFaults) {
        let mut st = self.state();
        st.faults = faults;
        crate::trace!(
            self.trace,
            &self.node,
            "disk.faults",
            "read_eio={} write_eio={} sync_eio={}",
            faults.read_eio_prob,
            faults.write_eio_prob,
            faults.sync_eio_prob
        );
    }

    pub fn clear_faults(&self) {
        self.set_faults(DiskFaults::default());
    }

    pub fn faults(&self) -> DiskFaults {
        self.state().faults
    }

    /// ENOSPC once the total current size of all files would exceed `capacity_bytes`.
    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        let mut st = self.state();
        st.config.capacity_bytes = capacity_bytes;
        crate::trace!(self.trace, &self.node, "disk.capacity", "{:?}", capacity_bytes);
    }

    /// Total current size of all files (named, or unlinked but still open), saturated.
    pub fn usage_bytes(&self) -> u64 {
        u64::try_from(self.state().usage_bytes()).unwrap_or(u64::MAX)
    }

    /// Flips one random bit in one random sector of one random durable, non-empty file, in
    /// both the durable and the current image (latent corruption on the medium, read back).
    pub fn inject_bit_flip(&self) -> Option<BitFlip> {
        let mut guard = self.state();
        let st = &mut *guard;
        let candidates: Vec<(PathBuf, Ino)> = st
            .durable_ns
            .files()
            .filter(|(_, ino)| st.inodes.get(ino).is_some_and(|i| i.durable.len_bytes > 0))
            .map(|(p, ino)| (p.clone(), ino))
            .collect();
        if candidates.is_empty() {
            crate::trace!(self.trace, &self.node, "disk.bit_flip_skipped", "no durable data");
            return None;
        }
        let (path, ino) = candidates[st.rng.gen_range(0..candidates.len())].clone();
        let geo = st.geo;
        let inode = st.inodes.get_mut(&ino)?;
        let len = inode.durable.len_bytes;
        let sector = st.rng.gen_range(0..len.div_ceil(geo.sector_bytes));
        let sector_start = sector * geo.sector_bytes;
        let offset = sector_start + st.rng.gen_range(0..geo.sector_bytes.min(len - sector_start));
        let bit: u8 = st.rng.gen_range(0..8);
        inode.durable.flip_bit(geo, offset, bit);
        if offset < inode.current.len_bytes {
            inode.current.flip_bit(geo, offset, bit);
        }
        st.stats.bit_flips += 1;
        crate::trace!(self.trace, &self.node, "disk.bit_flip", "{} off={} bit={}", path.display(), offset, bit);
        Some(BitFlip { path, offset, bit })
    }

    /// What reads of `path` see now (current namespace, current bytes).
    pub fn current_image(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state();
        let Some(Entry::File(ino)) = st.current_ns.lookup(&normalize(path)) else { return None };
        st.inodes.get(&ino)?.current.image(st.geo)
    }

    /// What would survive a power loss that dropped every unsynced page and namespace
    /// operation: the durable namespace and the durable bytes.
    pub fn durable_image(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state();
        let Some(Entry::File(ino)) = st.durable_ns.lookup(&normalize(path)) else { return None };
        st.inodes.get(&ino)?.durable.image(st.geo)
    }

    /// Number of dirty pages of the file currently named `path`.
    pub fn dirty_pages(&self, path: &Path) -> Option<usize> {
        let st = self.state();
        let Some(Entry::File(ino)) = st.current_ns.lookup(&normalize(path)) else { return None };
        Some(st.inodes.get(&ino)?.dirty.len())
    }

    /// Number of namespace operations not yet durable.
    pub fn pending_dir_ops(&self) -> usize {
        self.state().pending.len()
    }

    pub fn stats(&self) -> DiskStats {
        self.state().stats
    }

    /// Logs and applies one validated namespace operation to the current tree.
    fn log_op(&self, st: &mut State, kind: &'static str, op: NsOp) {
        crate::trace!(self.trace, &self.node, kind, "{}", op);
        st.current_ns.apply(&op);
        st.pending.push(op);
    }

    fn create_file(&self, st: &mut State, op: IoOp, path: &Path) -> Result<Ino, IoError> {
        if st.current_ns.lookup(path).is_some() {
            return Err(IoError::AlreadyExists { op, path: path.to_path_buf() });
        }
        st.check_parent(op, path)?;
        let ino = st.new_inode();
        self.log_op(st, "disk.create", NsOp::Create { path: path.to_path_buf(), ino });
        Ok(ino)
    }

    fn file_handle(self: &Arc<Self>, st: &mut State, ino: Ino, path: PathBuf) -> Arc<dyn StorageFile> {
        if let Some(inode) = st.inodes.get_mut(&ino) {
            inode.open_handles += 1;
        }
        Arc::new(SimFile { disk: self.clone(), ino, generation: st.generation, path })
    }

    fn eio(&self, st: &mut State, op: IoOp, path: &Path, what: fmt::Arguments<'_>) -> IoError {
        st.stats.eio += 1;
        match op {
            IoOp::Read => engine::probe!("disk.eio-read"),
            IoOp::Sync => engine::probe!("disk.eio-sync"),
            _ => engine::probe!("disk.eio-write"),
        }
        crate::trace!(self.trace, &self.node, "disk.eio", "{:?} {} {}", op, path.display(), what);
        IoError::Eio { op, path: path.to_path_buf() }
    }

    fn no_space(&self, st: &mut State, op: IoOp, path: &Path, new_len: u64) -> IoError {
        st.stats.enospc += 1;
        engine::probe!("disk.enospc");
        crate::trace!(self.trace, &self.node, "disk.enospc", "{:?} {} to_len={}", op, path.display(), new_len);
        IoError::NoSpace { op, path: path.to_path_buf() }
    }

    fn sync_latency(&self, generation: u64, op: IoOp, path: &Path) -> Result<Duration, IoError> {
        let mut guard = self.live(generation, op, path)?;
        let st = &mut *guard;
        Ok(st.config.sync_latency.sample(&mut st.rng))
    }

    /// The end of a file sync, after its latency: make the dirty pages overlapping the range
    /// and the current length durable, or fail and drop those pages (Linux).
    fn finish_sync(&self, st: &mut State, ino: Ino, path: &Path, offset: u64, len: u64) -> Result<(), IoError> {
        let fail = st.draw(st.faults.sync_eio_prob);
        let geo = st.geo;
        let kindness = st.config.kindness;
        let inode = st.inode(ino, IoOp::Sync, path)?;
        let range = match kindness {
            Some(Kindness::SyncRangeSyncsWholeFile) => 0..u64::MAX,
            _ => geo.pages_overlapping(offset, offset.saturating_add(len)),
        };
        let pages: Vec<u64> = inode.dirty.range(range).copied().collect();
        if !(fail && kindness == Some(Kindness::FailedSyncKeepsPagesDirty)) {
            for page in &pages {
                inode.dirty.remove(page);
            }
        }
        if fail {
            // fsyncgate: the kernel marks the pages clean although they never reached the
            // medium, so the next sync succeeds and the data is gone at the next power loss.
            st.stats.failed_syncs += 1;
            let n = pages.len();
            return Err(self.eio(st, IoOp::Sync, path, format_args!("off={offset} len={len} pages_dropped={n}")));
        }
        // Length first, so that the copied pages land inside the durable length.
        inode.durable.set_len(geo, inode.current.len_bytes);
        for &page in &pages {
            inode.durable.copy_from(geo, &inode.current, page, 0, geo.page_usize());
        }
        debug_assert_eq!(inode.durable.len_bytes, inode.current.len_bytes, "a sync makes the length durable");
        let durable_len = inode.durable.len_bytes;
        if kindness == Some(Kindness::FileSyncPersistsName) {
            let n = st.pending.iter().rposition(|op| op.names(ino, path)).map_or(0, |i| i + 1);
            st.commit_pending(n);
        }
        st.stats.syncs += 1;
        crate::trace!(
            self.trace,
            &self.node,
            "disk.sync",
            "{} off={} len={} pages={} durable_len={}",
            path.display(),
            offset,
            len,
            pages.len(),
            durable_len
        );
        Ok(())
    }

    /// The end of a directory sync: commit the pending log up to the last operation that
    /// touched `dir` (everything before it is in the same journal).
    fn finish_sync_dir(&self, st: &mut State, dir: &Path) -> Result<(), IoError> {
        let n = st.pending.iter().rposition(|op| op.touches(dir)).map_or(0, |i| i + 1);
        if st.draw(st.faults.sync_eio_prob) {
            if st.config.kindness == Some(Kindness::FailedDirSyncCommits) {
                st.commit_pending(n);
            }
            return Err(self.eio(st, IoOp::Sync, dir, format_args!("dir")));
        }
        st.commit_pending(n);
        if st.config.kindness == Some(Kindness::DirSyncPersistsData) {
            st.persist_files_in(dir);
        }
        st.collect_garbage();
        st.stats.dir_syncs += 1;
        crate::trace!(self.trace, &self.node, "disk.sync_dir", "{} committed={}", dir.display(), n);
        Ok(())
    }
}

fn page_fate(rng: &mut ChaCha8Rng, model: &PowerLossModel, kindness: Option<Kindness>) -> PageFate {
    let keep = clamp_prob(model.keep_page_prob);
    let tear = clamp_prob(model.tear_page_prob).min(1.0 - keep);
    let r: f64 = rng.gen();
    let fate = if r < keep {
        PageFate::Keep
    } else if r < keep + tear {
        PageFate::Tear
    } else {
        PageFate::Drop
    };
    match (kindness, fate) {
        (Some(Kindness::KeepsUnsyncedPages), _) | (Some(Kindness::NeverTears), PageFate::Tear) => PageFate::Keep,
        _ => fate,
    }
}

/// Persists the first `n` sectors of a dirty page (an enumerated tear). Returns the mask.
fn tear_prefix(geo: Geometry, inode: &mut Inode, page: u64, n: u64) -> String {
    let sectors = geo.page_bytes / geo.sector_bytes;
    let n = n.min(sectors);
    inode.durable.copy_from(geo, &inode.current, page, 0, (n * geo.sector_bytes) as usize);
    (0..sectors).map(|s| if s < n { '1' } else { '0' }).collect()
}

/// Persists each sector of a dirty page independently with probability 1/2. Returns the
/// kept-sector mask, first sector first ("1" = the new bytes reached the medium).
fn tear_page(rng: &mut ChaCha8Rng, geo: Geometry, inode: &mut Inode, page: u64) -> String {
    let sectors = geo.page_bytes / geo.sector_bytes;
    let sector = geo.sector_bytes as usize;
    let mut mask = String::with_capacity(sectors as usize);
    for s in 0..sectors as usize {
        if rng.gen_bool(0.5) {
            inode.durable.copy_from(geo, &inode.current, page, s * sector, (s + 1) * sector);
            mask.push('1');
        } else {
            mask.push('0');
        }
    }
    mask
}

// ---------------------------------------------------------------------------------------------
// The seam: storage and file handles of one process generation

struct SimStorage {
    disk: Arc<SimDisk>,
    generation: u64,
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimStorage").field("node", &self.disk.node).field("generation", &self.generation).finish()
    }
}

impl SimStorage {
    fn live(&self, op: IoOp, path: &Path) -> Result<MutexGuard<'_, State>, IoError> {
        self.disk.live(self.generation, op, path)
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, path: &Path) -> Result<(), IoError> {
        let path = normalize(path);
        let mut guard = self.live(IoOp::Create, &path)?;
        let st = &mut *guard;
        let mut missing = Vec::new();
        let mut next = Some(path.as_path());
        while let Some(p) = next {
            match st.current_ns.lookup(p) {
                Some(Entry::Dir) => break,
                Some(Entry::File(_)) => return Err(IoError::AlreadyExists { op: IoOp::Create, path: p.to_path_buf() }),
                None => missing.push(p.to_path_buf()),
            }
            next = p.parent();
        }
        for dir in missing.into_iter().rev() {
            self.disk.log_op(st, "disk.mkdir", NsOp::Mkdir { path: dir });
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> Result<Arc<dyn StorageFile>, IoError> {
        let path = normalize(path);
        let mut guard = self.live(IoOp::Create, &path)?;
        let st = &mut *guard;
        let ino = self.disk.create_file(st, IoOp::Create, &path)?;
        Ok(self.disk.file_handle(st, ino, path))
    }

    fn open(&self, path: &Path) -> Result<Arc<dyn StorageFile>, IoError> {
        let path = normalize(path);
        let mut guard = self.live(IoOp::Open, &path)?;
        let st = &mut *guard;
        match st.current_ns.lookup(&path) {
            Some(Entry::File(ino)) => Ok(self.disk.file_handle(st, ino, path)),
            Some(Entry::Dir) => Err(IoError::NotAFile { op: IoOp::Open, path }),
            None => Err(IoError::NotFound { op: IoOp::Open, path }),
        }
    }

    fn remove_file(&self, path: &Path) -> Result<(), IoError> {
        let path = normalize(path);
        let mut guard = self.live(IoOp::Remove, &path)?;
        let st = &mut *guard;
        match st.current_ns.lookup(&path) {
            Some(Entry::File(ino)) => {
                if let Some(inode) = st.inodes.get_mut(&ino) {
                    inode.linked = false;
                }
                self.disk.log_op(st, "disk.remove", NsOp::Remove { path });
                Ok(())
            }
            Some(Entry::Dir) => Err(IoError::NotAFile { op: IoOp::Remove, path }),
            None => Err(IoError::NotFound { op: IoOp::Remove, path }),
        }
    }

    fn remove_dir(&self, path: &Path) -> Result<(), IoError> {
        let path = normalize(path);
        let mut guard = self.live(IoOp::Remove, &path)?;
        let st = &mut *guard;
        match st.current_ns.lookup(&path) {
            Some(Entry::Dir) if !is_root(&path) && !st.current_ns.has_children(&path) => {
                self.disk.log_op(st, "disk.rmdir", NsOp::Rmdir { path });
                Ok(())
            }
            Some(_) => Err(IoError::NotAFile { op: IoOp::Remove, path }),
            None => Err(IoError::NotFound { op: IoOp::Remove, path }),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), IoError> {
        let (from, to) = (normalize(from), normalize(to));
        let mut guard = self.live(IoOp::Rename, &from)?;
        let st = &mut *guard;
        let op = IoOp::Rename;
        let source = match st.current_ns.lookup(&from) {
            None => return Err(IoError::NotFound { op, path: from }),
            Some(_) if is_root(&from) || is_root(&to) => return Err(IoError::NotAFile { op, path: from }),
            Some(e) => e,
        };
        if from == to {
            return Ok(());
        }
        st.check_parent(op, &to)?;
        match (source, st.current_ns.lookup(&to)) {
            (_, None) => {}
            (Entry::File(_), Some(Entry::File(old))) => {
                if let Some(inode) = st.inodes.get_mut(&old) {
                    inode.linked = false;
                }
            }
            (Entry::Dir, Some(Entry::Dir)) if !st.current_ns.has_children(&to) => {}
            _ => return Err(IoError::NotAFile { op, path: to }),
        }
        if source == Entry::Dir && to.starts_with(&from) {
            let message = "cannot move a directory into itself".to_string();
            return Err(IoError::Other { op, path: to, message });
        }
        self.disk.log_op(st, "disk.rename", NsOp::Rename { from, to });
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<DirEntry>, IoError> {
        let path = normalize(path);
        let st = self.live(IoOp::List, &path)?;
        match st.current_ns.lookup(&path) {
            Some(Entry::Dir) => {}
            Some(Entry::File(_)) => return Err(IoError::NotAFile { op: IoOp::List, path }),
            None => return Err(IoError::NotFound { op: IoOp::List, path }),
        }
        let mut entries: Vec<DirEntry> = st
            .current_ns
            .children(&path)
            .map(|(p, e)| DirEntry {
                name: p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                is_dir: *e == Entry::Dir,
            })
            .collect();
        entries.sort();
        Ok(entries)
    }

    fn exists(&self, path: &Path) -> bool {
        let path = normalize(path);
        self.live(IoOp::Metadata, &path).is_ok_and(|st| st.current_ns.lookup(&path).is_some())
    }

    fn lock(&self, path: &Path) -> Result<FileLock, IoError> {
        let path = normalize(path);
        let mut guard = self.live(IoOp::Lock, &path)?;
        let st = &mut *guard;
        let ino = match st.current_ns.lookup(&path) {
            Some(Entry::File(ino)) => ino,
            Some(Entry::Dir) => return Err(IoError::NotAFile { op: IoOp::Lock, path }),
            None => self.disk.create_file(st, IoOp::Lock, &path)?,
        };
        if st.locks.contains_key(&ino) {
            crate::trace!(self.disk.trace, &self.disk.node, "disk.lock_busy", "{}", path.display());
            return Err(IoError::Locked { op: IoOp::Lock, path });
        }
        let id = st.next_lock_id;
        st.next_lock_id += 1;
        st.locks.insert(ino, id);
        crate::trace!(self.disk.trace, &self.disk.node, "disk.lock", "{} id={}", path.display(), id);
        let guard = LockGuard { disk: self.disk.clone(), ino, id, path: path.clone() };
        Ok(FileLock::new(path, Box::new(guard)))
    }

    fn sync_dir<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<(), IoError>> {
        Box::pin(async move {
            let path = normalize(path);
            {
                let st = self.live(IoOp::Sync, &path)?;
                match st.current_ns.lookup(&path) {
                    Some(Entry::Dir) => {}
                    Some(Entry::File(_)) => return Err(IoError::NotAFile { op: IoOp::Sync, path }),
                    None => return Err(IoError::NotFound { op: IoOp::Sync, path }),
                }
            }
            let latency = self.disk.sync_latency(self.generation, IoOp::Sync, &path)?;
            tokio::time::sleep(latency).await;
            // A crash during the sleep makes this stale: nothing was committed.
            let mut st = self.live(IoOp::Sync, &path)?;
            self.disk.finish_sync_dir(&mut st, &path)
        })
    }
}

/// Releases its lock when dropped, unless a crash already released every lock.
struct LockGuard {
    disk: Arc<SimDisk>,
    ino: Ino,
    id: u64,
    path: PathBuf,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let mut st = self.disk.state();
        if st.locks.get(&self.ino) == Some(&self.id) {
            st.locks.remove(&self.ino);
            crate::trace!(self.disk.trace, &self.disk.node, "disk.unlock", "{} id={}", self.path.display(), self.id);
        }
    }
}

/// An open file of one process generation.
struct SimFile {
    disk: Arc<SimDisk>,
    ino: Ino,
    generation: u64,
    path: PathBuf,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("node", &self.disk.node)
            .field("path", &self.path)
            .field("ino", &self.ino)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut st = self.disk.state();
        // After a crash the counts were reset; an old handle must not decrement new ones.
        if st.generation == self.generation {
            if let Some(inode) = st.inodes.get_mut(&self.ino) {
                inode.open_handles = inode.open_handles.saturating_sub(1);
            }
        }
    }
}

impl SimFile {
    fn live(&self, op: IoOp) -> Result<MutexGuard<'_, State>, IoError> {
        self.disk.live(self.generation, op, &self.path)
    }

    fn overflow(&self, op: IoOp, offset: u64, len: usize) -> IoError {
        let message = format!("offset {offset} + {len} bytes overflows the file size");
        IoError::Other { op, path: self.path.clone(), message }
    }
}

impl StorageFile for SimFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let mut guard = self.live(IoOp::Read)?;
        let st = &mut *guard;
        st.stats.reads += 1;
        if st.draw(st.faults.read_eio_prob) {
            return Err(self.disk.eio(st, IoOp::Read, &self.path, format_args!("off={offset} len={}", buf.len())));
        }
        let geo = st.geo;
        let inode = st.inode(self.ino, IoOp::Read, &self.path)?;
        let file_len = inode.current.len_bytes;
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(IoError::ReadPastEnd { path: self.path.clone(), offset, len, file_len });
        }
        inode.current.read(geo, offset, buf);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let mut guard = self.live(IoOp::Write)?;
        let st = &mut *guard;
        let end =
            offset.checked_add(data.len() as u64).ok_or_else(|| self.overflow(IoOp::Write, offset, data.len()))?;
        if st.draw(st.faults.write_eio_prob) {
            return Err(self.disk.eio(st, IoOp::Write, &self.path, format_args!("off={offset} len={}", data.len())));
        }
        let old_len = st.inode(self.ino, IoOp::Write, &self.path)?.current.len_bytes;
        // A zero-length write changes nothing, not even the length (as pwrite).
        let new_len = if data.is_empty() { old_len } else { old_len.max(end) };
        if !st.fits(self.ino, new_len) {
            return Err(self.disk.no_space(st, IoOp::Write, &self.path, new_len));
        }
        let geo = st.geo;
        let inode = st.inode(self.ino, IoOp::Write, &self.path)?;
        if !data.is_empty() {
            if offset > old_len {
                inode.mark_grown(geo, old_len, offset);
            }
            inode.current.write(geo, offset, data);
            inode.mark_written(geo, offset, end);
        }
        st.stats.writes += 1;
        st.stats.bytes_written += data.len() as u64;
        crate::trace!(
            self.disk.trace,
            &self.disk.node,
            "disk.write",
            "{} off={} len={}",
            self.path.display(),
            offset,
            data.len()
        );
        Ok(())
    }

    fn len(&self) -> Result<u64, IoError> {
        let mut st = self.live(IoOp::Metadata)?;
        Ok(st.inode(self.ino, IoOp::Metadata, &self.path)?.current.len_bytes)
    }

    fn set_len(&self, len_bytes: u64) -> Result<(), IoError> {
        let mut guard = self.live(IoOp::Truncate)?;
        let st = &mut *guard;
        if !st.fits(self.ino, len_bytes) {
            return Err(self.disk.no_space(st, IoOp::Truncate, &self.path, len_bytes));
        }
        let geo = st.geo;
        st.inode(self.ino, IoOp::Truncate, &self.path)?.set_current_len(geo, len_bytes);
        crate::trace!(self.disk.trace, &self.disk.node, "disk.set_len", "{} len={}", self.path.display(), len_bytes);
        Ok(())
    }

    fn sync_range(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), IoError>> {
        Box::pin(async move {
            let latency = self.disk.sync_latency(self.generation, IoOp::Sync, &self.path)?;
            tokio::time::sleep(latency).await;
            // A crash during the sleep makes this stale: nothing became durable.
            let mut st = self.live(IoOp::Sync)?;
            self.disk.finish_sync(&mut st, self.ino, &self.path, offset, len)
        })
    }
}
