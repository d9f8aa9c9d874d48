//! Tests of the simulated disk's model: a property test that drives random writes, syncs,
//! truncations, failed syncs, crashes and bit flips against a reference model, and unit tests
//! for the namespace journal, rename atomicity, tears, fsyncgate, ENOSPC, EIO, stale handles
//! and locks.
//!
//! The reference model is deliberately weaker than the disk: per byte it keeps the *set* of
//! values a power loss may leave (the last synced value and every value written since), so it
//! checks the promises ("synced data survives", "nothing but old or new bytes appears")
//! without re-implementing the page cache.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::io::storage::{IoError, Storage, StorageFile, StorageFileExt};
use proptest::prelude::*;
use sim::disk::{BitFlip, CrashKind, DiskConfig, DiskFaults, LatencyProfile, PowerLossModel, SimDisk};
use sim::Trace;

fn disk_with(config: DiskConfig, seed: u64) -> (Arc<SimDisk>, Arc<Trace>) {
    let trace = Trace::new(false);
    trace.start_clock();
    (SimDisk::new("broker-a", config, seed, trace.clone()), trace)
}

fn quick_config(power_loss: PowerLossModel) -> DiskConfig {
    DiskConfig { sync_latency: LatencyProfile::NVME_PLP, power_loss, ..DiskConfig::default() }
}

fn root() -> PathBuf {
    PathBuf::from("/store")
}

/// Creates `/store` durably.
async fn store_dir(storage: &Arc<dyn Storage>) {
    storage.create_dir_all(&root()).unwrap();
    storage.sync_dir(Path::new("/")).await.unwrap();
}

/// Creates a file with `data` whose name and bytes are both durable.
async fn durable_file(storage: &Arc<dyn Storage>, path: &Path, data: &[u8]) -> Arc<dyn StorageFile> {
    let f = storage.create(path).unwrap();
    f.write_at(0, data).unwrap();
    f.sync_all().await.unwrap();
    storage.sync_dir(path.parent().unwrap()).await.unwrap();
    f
}

fn trace_count(trace: &Trace, kind: &str) -> u64 {
    trace.counts().get(kind).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The property test

const PAGE: u64 = 256;
const SECTOR: u64 = 64;
const FILES: usize = 2;
/// Offsets range over a few pages so that writes straddle page boundaries and overlap.
const SPAN: u64 = 4 * PAGE;

#[derive(Debug, Clone)]
enum Op {
    Write { file: usize, offset: u64, len: usize, salt: u8 },
    Sync { file: usize, offset: u64, len: u64 },
    SyncAll { file: usize },
    FailedSync { file: usize, offset: u64, len: u64 },
    SetLen { file: usize, len: u64 },
    ProcessCrash,
    PowerLoss,
    BitFlip,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let file = 0..FILES;
    prop_oneof![
        8 => (file.clone(), 0..SPAN, 1..(PAGE as usize * 3 / 2), any::<u8>())
            .prop_map(|(file, offset, len, salt)| Op::Write { file, offset, len, salt }),
        3 => (file.clone(), 0..SPAN, 0..2 * PAGE).prop_map(|(file, offset, len)| Op::Sync { file, offset, len }),
        2 => file.clone().prop_map(|file| Op::SyncAll { file }),
        1 => (file.clone(), 0..SPAN, 1..2 * PAGE).prop_map(|(file, offset, len)| Op::FailedSync { file, offset, len }),
        2 => (file, 0..SPAN + PAGE).prop_map(|(file, len)| Op::SetLen { file, len }),
        1 => Just(Op::ProcessCrash),
        2 => Just(Op::PowerLoss),
        1 => Just(Op::BitFlip),
    ]
}

fn power_loss_strategy() -> impl Strategy<Value = PowerLossModel> {
    let model = |keep_page_prob, tear_page_prob| PowerLossModel {
        keep_page_prob,
        tear_page_prob,
        keep_dir_op_prob: 0.5,
        keep_len_prob: 0.0,
    };
    prop_oneof![
        Just(model(0.0, 0.0)),
        Just(model(1.0, 0.0)),
        Just(model(0.0, 1.0)),
        (0.0..1.0f64, 0.0..1.0f64).prop_map(move |(a, b)| model(a, (1.0 - a) * b)),
    ]
}

/// The reference model of one file.
#[derive(Debug, Default)]
struct FileModel {
    /// What reads must see.
    cur: Vec<u8>,
    /// The durable length (changes only on a successful sync).
    dur_len: usize,
    /// Per byte: every value a power loss may leave there.
    allowed: Vec<Vec<u8>>,
    /// Pages a failed sync marked clean without persisting, not rewritten since: a later
    /// successful sync does not cover them.
    lost: BTreeSet<u64>,
}

fn page_of(i: usize) -> u64 {
    i as u64 / PAGE
}

impl FileModel {
    fn ensure(&mut self, len: usize) {
        if self.allowed.len() < len {
            self.allowed.resize(len, Vec::new());
        }
    }

    fn allow(&mut self, i: usize, value: u8) {
        if !self.allowed[i].contains(&value) {
            self.allowed[i].push(value);
        }
    }

    /// The current image grows with zeros to `new_len`. Only pages entirely inside the gap
    /// are certainly re-dirtied; a partly lost page stays lost (conservative).
    fn grow(&mut self, new_len: usize) {
        let old_len = self.cur.len();
        if new_len <= old_len {
            return;
        }
        self.ensure(new_len);
        self.cur.resize(new_len, 0);
        for i in old_len..new_len {
            self.allow(i, 0);
        }
        let first_full = (old_len as u64).div_ceil(PAGE);
        let end_full = new_len as u64 / PAGE;
        for p in first_full..end_full {
            self.lost.remove(&p);
        }
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        let end = offset + data.len();
        if offset > self.cur.len() {
            self.grow(offset);
        }
        self.ensure(end);
        if self.cur.len() < end {
            self.cur.resize(end, 0);
        }
        for (k, &v) in data.iter().enumerate() {
            self.cur[offset + k] = v;
            self.allow(offset + k, v);
        }
        // The disk dirties every page a write touches, so lost bytes in it are synced again.
        for p in page_of(offset)..=page_of(end - 1) {
            self.lost.remove(&p);
        }
    }

    fn set_len(&mut self, len: usize) {
        if len < self.cur.len() {
            self.cur.truncate(len);
        } else {
            self.grow(len);
        }
    }

    fn synced(&mut self, offset: u64, len: u64) {
        let cur_len = self.cur.len();
        let end = usize::try_from(offset.saturating_add(len)).unwrap_or(usize::MAX).min(cur_len);
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(end);
        self.ensure(cur_len.max(self.dur_len));
        let covered = |i: usize, lost: &BTreeSet<u64>| i >= start && i < end && !lost.contains(&page_of(i));
        for i in 0..cur_len {
            if covered(i, &self.lost) {
                self.allowed[i] = vec![self.cur[i]];
            } else if i >= self.dur_len {
                // The durable length grew over bytes that were not copied: they read zeros.
                self.allow(i, 0);
            }
        }
        for a in self.allowed.iter_mut().skip(cur_len) {
            a.clear();
        }
        self.dur_len = cur_len;
    }

    /// The disk drops whole pages: every existing page the range overlaps, even where the
    /// range itself lies past the end of the file.
    fn failed_sync(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        let pages_in_file = (self.cur.len() as u64).div_ceil(PAGE);
        if offset < end {
            for p in offset / PAGE..end.div_ceil(PAGE).min(pages_in_file) {
                self.lost.insert(p);
            }
        }
    }

    fn flip(&mut self, flip: &BitFlip) {
        let i = flip.offset as usize;
        let mask = 1u8 << flip.bit;
        assert!(i < self.dur_len, "a bit flip lands inside the durable length: {flip:?} dur_len={}", self.dur_len);
        if i < self.cur.len() {
            self.cur[i] ^= mask;
        }
        for v in self.allowed[i].iter_mut() {
            *v ^= mask;
        }
    }

    /// Checks an image that a power loss may have left (the durable image, or the image
    /// after an actual power loss).
    fn check_survivor(&self, what: &str, image: &[u8]) {
        assert_eq!(image.len(), self.dur_len, "{what}: length must be the last synced length");
        for (i, b) in image.iter().enumerate() {
            assert!(
                self.allowed[i].contains(b),
                "{what}: byte {i} (page {}) is {b:#04x}, allowed {:02x?}",
                page_of(i),
                self.allowed[i]
            );
        }
    }

    fn after_power_loss(&mut self, image: Vec<u8>) {
        self.check_survivor("after power loss", &image);
        self.allowed = image.iter().map(|&b| vec![b]).collect();
        self.dur_len = image.len();
        self.cur = image;
        self.lost.clear();
    }
}

fn file_path(i: usize) -> PathBuf {
    root().join(format!("{i:020}"))
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|k| salt.wrapping_add((k as u8).wrapping_mul(31))).collect()
}

struct Harness {
    disk: Arc<SimDisk>,
    trace: Arc<Trace>,
    storage: Arc<dyn Storage>,
    files: Vec<Arc<dyn StorageFile>>,
    models: Vec<FileModel>,
    flips: u64,
}

impl Harness {
    async fn new(seed: u64, power_loss: PowerLossModel) -> Harness {
        let config = DiskConfig {
            page_size_bytes: PAGE,
            sector_size_bytes: SECTOR,
            sync_latency: LatencyProfile::CLOUD_VM,
            power_loss,
            ..DiskConfig::default()
        };
        let (disk, trace) = disk_with(config, seed);
        let storage = disk.storage();
        store_dir(&storage).await;
        let mut files = Vec::new();
        for i in 0..FILES {
            files.push(storage.create(&file_path(i)).unwrap());
        }
        storage.sync_dir(&root()).await.unwrap();
        let models = (0..FILES).map(|_| FileModel::default()).collect();
        Harness { disk, trace, storage, files, models, flips: 0 }
    }

    fn reopen(&mut self) {
        let stale = self.files[0].clone();
        let mut buf = [0u8; 1];
        assert!(matches!(stale.write_at(0, b"x"), Err(IoError::StaleHandle { .. })));
        assert!(matches!(stale.read_at(0, &mut buf), Err(IoError::StaleHandle { .. })));
        self.storage = self.disk.storage();
        self.files = (0..FILES).map(|i| self.storage.open(&file_path(i)).unwrap()).collect();
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write { file, offset, len, salt } => {
                let data = pattern(len, salt);
                self.files[file].write_at(offset, &data).unwrap();
                self.models[file].write(offset as usize, &data);
            }
            Op::Sync { file, offset, len } => {
                self.files[file].sync_range(offset, len).await.unwrap();
                self.models[file].synced(offset, len);
            }
            Op::SyncAll { file } => {
                self.files[file].sync_all().await.unwrap();
                self.models[file].synced(0, u64::MAX);
            }
            Op::FailedSync { file, offset, len } => {
                self.disk.set_faults(DiskFaults { sync_eio_prob: 1.0, ..DiskFaults::default() });
                let result = self.files[file].sync_range(offset, len).await;
                self.disk.clear_faults();
                assert!(matches!(result, Err(IoError::Eio { .. })), "{result:?}");
                self.models[file].failed_sync(offset, len);
            }
            Op::SetLen { file, len } => {
                self.files[file].set_len(len).unwrap();
                self.models[file].set_len(len as usize);
            }
            Op::ProcessCrash => {
                let before: Vec<_> = (0..FILES).map(|i| self.disk.current_image(&file_path(i))).collect();
                self.disk.crash(CrashKind::ProcessCrash);
                let after: Vec<_> = (0..FILES).map(|i| self.disk.current_image(&file_path(i))).collect();
                assert_eq!(before, after, "a process crash loses nothing");
                self.reopen();
            }
            Op::PowerLoss => {
                self.disk.crash(CrashKind::PowerLoss);
                for i in 0..FILES {
                    let image = self.disk.current_image(&file_path(i)).expect("durable file survives");
                    self.models[i].after_power_loss(image);
                }
                self.reopen();
            }
            Op::BitFlip => {
                if let Some(flip) = self.disk.inject_bit_flip() {
                    let i = (0..FILES).find(|&i| file_path(i) == flip.path).expect("flip in a known file");
                    self.models[i].flip(&flip);
                    self.flips += 1;
                }
            }
        }
    }

    fn check(&self, after: &Op) {
        for (i, model) in self.models.iter().enumerate() {
            let current = self.disk.current_image(&file_path(i)).unwrap();
            assert!(current == model.cur, "file {i} after {after:?}: reads differ from the model");
            assert_eq!(self.files[i].len().unwrap(), model.cur.len() as u64);
            let durable = self.disk.durable_image(&file_path(i)).unwrap();
            model.check_survivor(&format!("file {i} durable image after {after:?}"), &durable);
        }
        let stats = self.disk.stats();
        assert_eq!(stats.pages_torn, trace_count(&self.trace, "disk.tear"), "every torn page is traced");
        assert_eq!(stats.bit_flips, self.flips);
        assert_eq!(trace_count(&self.trace, "disk.bit_flip"), self.flips);
    }
}

proptest! {
    // Cheap (about a millisecond a case), so more than the usual 64.
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After any power loss every byte is its last synced value or a value written since
    /// (a tear only mixes the two; a bit flip is accounted for), synced bytes survive, a
    /// process crash loses nothing, and a failed sync loses only what it covered.
    #[test]
    fn power_loss_leaves_only_synced_or_written_bytes(
        seed in any::<u64>(),
        power_loss in power_loss_strategy(),
        ops in prop::collection::vec(op_strategy(), 1..60),
    ) {
        sim::runner::block_on(seed, move || async move {
            let mut h = Harness::new(seed, power_loss).await;
            for op in &ops {
                h.apply(op).await;
                h.check(op);
            }
            // End every case with a power loss so that each sequence is judged at least once.
            h.apply(&Op::PowerLoss).await;
            h.check(&Op::PowerLoss);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Page cache, fsyncgate, tears

#[test]
fn failed_sync_is_visible_until_power_loss_then_lost() {
    sim::runner::block_on(1, || async {
        let (disk, trace) = disk_with(quick_config(PowerLossModel::KEEP_ALL), 1);
        let storage = disk.storage();
        store_dir(&storage).await;
        let path = root().join("f");
        let f = durable_file(&storage, &path, &[b'A'; 100]).await;
        f.write_at(0, &[b'B'; 100]).unwrap();
        disk.set_faults(DiskFaults { sync_eio_prob: 1.0, ..DiskFaults::default() });
        assert!(matches!(f.sync_all().await, Err(IoError::Eio { .. })));
        disk.clear_faults();
        assert_eq!(disk.dirty_pages(&path), Some(0), "the failed sync marked its pages clean");
        let mut buf = [0u8; 100];
        f.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [b'B'; 100], "reads still see the new bytes");
        f.sync_all().await.expect("a later sync reports success (Linux)");
        assert_eq!(disk.durable_image(&path).unwrap(), vec![b'A'; 100]);
        // Even a power loss that keeps every dirty page cannot save it: it is not dirty.
        disk.crash(CrashKind::PowerLoss);
        assert_eq!(disk.current_image(&path).unwrap(), vec![b'A'; 100]);
        let stats = disk.stats();
        assert_eq!((stats.failed_syncs, stats.eio, stats.syncs), (1, 1, 2));
        assert_eq!(trace_count(&trace, "disk.eio"), 1);
    });
}

#[test]
fn failed_sync_then_process_crash_keeps_new_bytes() {
    sim::runner::block_on(2, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::LOSE_ALL), 2);
        let storage = disk.storage();
        store_dir(&storage).await;
        let path = root().join("f");
        let f = durable_file(&storage, &path, b"old!").await;
        f.write_at(0, b"new!").unwrap();
        disk.set_faults(DiskFaults { sync_eio_prob: 1.0, ..DiskFaults::default() });
        assert!(f.sync_all().await.is_err());
        disk.crash(CrashKind::ProcessCrash);
        assert_eq!(disk.current_image(&path).unwrap(), b"new!".to_vec(), "the page cache survives");
    });
}

#[test]
fn torn_pages_are_sector_atomic_and_traced() {
    sim::runner::block_on(3, || async {
        let model =
            PowerLossModel { keep_page_prob: 0.0, tear_page_prob: 1.0, keep_dir_op_prob: 1.0, keep_len_prob: 0.0 };
        let (disk, trace) = disk_with(quick_config(model), 3);
        let storage = disk.storage();
        store_dir(&storage).await;
        let path = root().join("f");
        let pages = 8usize;
        let f = durable_file(&storage, &path, &vec![0xAA; 4096 * pages]).await;
        f.write_at(0, &vec![0xBB; 4096 * pages]).unwrap();
        disk.crash(CrashKind::PowerLoss);
        let image = disk.current_image(&path).unwrap();
        assert_eq!(image.len(), 4096 * pages);
        let mut mixed = 0;
        for sector in image.chunks(512) {
            assert!(sector.iter().all(|&b| b == sector[0]), "a sector is all old or all new");
            assert!(sector[0] == 0xAA || sector[0] == 0xBB);
        }
        for page in image.chunks(4096) {
            if page.contains(&0xAA) && page.contains(&0xBB) {
                mixed += 1;
            }
        }
        assert!(mixed > 0, "with 8 torn pages of 8 sectors some page mixes old and new");
        assert_eq!(disk.stats().pages_torn, pages as u64);
        assert_eq!(trace_count(&trace, "disk.tear"), pages as u64);
    });
}

#[test]
fn power_loss_counts_kept_and_dropped_pages() {
    sim::runner::block_on(4, || async {
        for (model, kept, dropped) in [(PowerLossModel::KEEP_ALL, 3, 0), (PowerLossModel::LOSE_ALL, 0, 3)] {
            let (disk, _) = disk_with(quick_config(model), 4);
            let storage = disk.storage();
            store_dir(&storage).await;
            let path = root().join("f");
            let f = durable_file(&storage, &path, &[1u8; 3 * 4096]).await;
            f.write_at(0, &[2u8; 3 * 4096]).unwrap();
            disk.crash(CrashKind::PowerLoss);
            let stats = disk.stats();
            assert_eq!((stats.pages_kept, stats.pages_dropped, stats.pages_torn), (kept, dropped, 0));
            let expect = if kept > 0 { 2u8 } else { 1u8 };
            assert_eq!(disk.current_image(&path).unwrap(), vec![expect; 3 * 4096]);
        }
    });
}

#[test]
fn unsynced_length_change_is_not_durable() {
    sim::runner::block_on(5, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::KEEP_ALL), 5);
        let storage = disk.storage();
        store_dir(&storage).await;
        let path = root().join("f");
        let f = durable_file(&storage, &path, b"0123456789").await;
        f.set_len(4).unwrap();
        assert_eq!(disk.durable_image(&path).unwrap(), b"0123456789".to_vec());
        f.write_at(8, b"xy").unwrap();
        assert_eq!(disk.current_image(&path).unwrap(), b"0123\0\0\0\0xy".to_vec(), "the gap reads zeros");
        f.sync_range(0, 4).await.unwrap();
        // The sync made the length durable; the gap page is dirty and covered: zeros too.
        assert_eq!(disk.durable_image(&path).unwrap(), b"0123\0\0\0\0xy".to_vec());
    });
}

#[test]
fn shrink_then_grow_exposes_zeros_not_old_bytes() {
    sim::runner::block_on(22, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::KEEP_ALL), 22);
        let storage = disk.storage();
        store_dir(&storage).await;
        let path = root().join("f");
        let f = durable_file(&storage, &path, &[0xAA; 3 * 4096]).await;
        f.set_len(100).unwrap();
        f.set_len(3 * 4096).unwrap();
        let mut expect = vec![0xAA; 100];
        expect.resize(3 * 4096, 0);
        assert_eq!(disk.current_image(&path).unwrap(), expect);
        assert_eq!(disk.durable_image(&path).unwrap(), vec![0xAA; 3 * 4096], "nothing synced yet");
        assert_eq!(disk.dirty_pages(&path), Some(3), "the regrown pages differ from the medium");
        f.sync_range(0, 1).await.unwrap();
        assert_eq!(disk.durable_image(&path).unwrap()[..4096], expect[..4096]);
        f.sync_all().await.unwrap();
        assert_eq!(disk.durable_image(&path).unwrap(), expect);
        disk.crash(CrashKind::PowerLoss);
        assert_eq!(disk.current_image(&path).unwrap(), expect);
    });
}

#[test]
fn process_crash_keeps_unsynced_writes() {
    sim::runner::block_on(6, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::LOSE_ALL), 6);
        let storage = disk.storage();
        store_dir(&storage).await;
        let f = storage.create(&root().join("f")).unwrap();
        f.write_at(0, b"unsynced").unwrap();
        disk.crash(CrashKind::ProcessCrash);
        let storage = disk.storage();
        let f = storage.open(&root().join("f")).expect("the unsynced create survives a process crash");
        assert_eq!(f.read_all().unwrap(), b"unsynced".to_vec());
        // Still unsynced: a power loss now loses the file (its create was never synced).
        disk.crash(CrashKind::PowerLoss);
        assert!(!disk.storage().exists(&root().join("f")));
    });
}

// ---------------------------------------------------------------------------------------------
// Namespace: the journal of pending directory operations

#[test]
fn unsynced_create_is_lost_with_its_data() {
    sim::runner::block_on(7, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::LOSE_ALL), 7);
        let storage = disk.storage();
        store_dir(&storage).await;
        let path = root().join("f");
        let f = storage.create(&path).unwrap();
        f.write_at(0, b"data").unwrap();
        f.sync_all().await.unwrap();
        assert_eq!(disk.durable_image(&path), None, "the name is not durable yet");
        disk.crash(CrashKind::PowerLoss);
        let storage = disk.storage();
        assert!(!storage.exists(&path));
        assert!(storage.list_dir(&root()).unwrap().is_empty());
        assert_eq!(disk.stats().dir_ops_lost, 1);
    });
}

#[test]
fn sync_dir_makes_entries_durable() {
    sim::runner::block_on(8, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::LOSE_ALL), 8);
        let storage = disk.storage();
        store_dir(&storage).await;
        let path = root().join("f");
        durable_file(&storage, &path, b"data").await;
        assert_eq!(disk.pending_dir_ops(), 0);
        disk.crash(CrashKind::PowerLoss);
        assert_eq!(disk.storage().open(&path).unwrap().read_all().unwrap(), b"data".to_vec());
    });
}

#[test]
fn sync_dir_commits_the_journal_prefix() {
    sim::runner::block_on(9, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::LOSE_ALL), 9);
        let storage = disk.storage();
        for d in ["/a", "/b"] {
            storage.create_dir_all(Path::new(d)).unwrap();
        }
        storage.sync_dir(Path::new("/")).await.unwrap();
        // x (in /a) precedes y (in /b): syncing /b commits both.
        storage.create(Path::new("/a/x")).unwrap();
        storage.create(Path::new("/b/y")).unwrap();
        storage.sync_dir(Path::new("/b")).await.unwrap();
        assert_eq!(disk.pending_dir_ops(), 0);
        // Now z (in /b) precedes w (in /a): syncing /b leaves w pending.
        storage.create(Path::new("/b/z")).unwrap();
        storage.create(Path::new("/a/w")).unwrap();
        storage.sync_dir(Path::new("/b")).await.unwrap();
        assert_eq!(disk.pending_dir_ops(), 1);
        disk.crash(CrashKind::PowerLoss);
        let storage = disk.storage();
        for (path, exists) in [("/a/x", true), ("/b/y", true), ("/b/z", true), ("/a/w", false)] {
            assert_eq!(storage.exists(Path::new(path)), exists, "{path}");
        }
    });
}

#[test]
fn unsynced_mkdir_loses_the_subtree() {
    sim::runner::block_on(10, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::LOSE_ALL), 10);
        let storage = disk.storage();
        storage.create_dir_all(Path::new("/store/commitlog")).unwrap();
        let f = storage.create(Path::new("/store/commitlog/0")).unwrap();
        f.write_at(0, b"x").unwrap();
        f.sync_all().await.unwrap();
        // Syncing the file's own directory commits the prefix including both mkdirs.
        storage.sync_dir(Path::new("/store/commitlog")).await.unwrap();
        storage.create_dir_all(Path::new("/store/index/sub")).unwrap();
        storage.create(Path::new("/store/index/sub/i")).unwrap();
        disk.crash(CrashKind::PowerLoss);
        let storage = disk.storage();
        assert!(storage.exists(Path::new("/store/commitlog/0")));
        assert!(!storage.exists(Path::new("/store/index")));
        assert_eq!(disk.stats().dir_ops_lost, 3);
    });
}

#[test]
fn unsynced_remove_resurrects_the_file() {
    sim::runner::block_on(11, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::LOSE_ALL), 11);
        let storage = disk.storage();
        store_dir(&storage).await;
        let path = root().join("f");
        durable_file(&storage, &path, b"keep me").await;
        storage.remove_file(&path).unwrap();
        assert!(!storage.exists(&path));
        disk.crash(CrashKind::PowerLoss);
        assert_eq!(disk.current_image(&path).unwrap(), b"keep me".to_vec());
    });
}

#[test]
fn rename_is_atomic_across_power_loss() {
    sim::runner::block_on(12, || async {
        let mut outcomes = BTreeSet::new();
        for seed in 0..64 {
            let model =
                PowerLossModel { keep_page_prob: 0.5, tear_page_prob: 0.5, keep_dir_op_prob: 0.5, keep_len_prob: 0.0 };
            let (disk, _) = disk_with(quick_config(model), seed);
            let storage = disk.storage();
            store_dir(&storage).await;
            let target = root().join("checkpoint");
            durable_file(&storage, &target, b"old-old-old").await;
            // The write-aside pattern: the new file is synced, then renamed over the old one.
            let tmp = root().join("checkpoint.tmp");
            let f = storage.create(&tmp).unwrap();
            f.write_at(0, b"new-new-new-new").unwrap();
            f.sync_all().await.unwrap();
            storage.rename(&tmp, &target).unwrap();
            assert!(!storage.exists(&tmp));
            disk.crash(CrashKind::PowerLoss);
            let image = disk.current_image(&target).expect("the target never vanishes");
            assert!(image == b"old-old-old" || image == b"new-new-new-new", "{image:?}");
            let tmp_left = disk.current_image(&tmp).is_some();
            // If the rename was lost, tmp may or may not exist (its create may be lost too);
            // if it survived, tmp is gone.
            if image == b"new-new-new-new" {
                assert!(!tmp_left);
            }
            outcomes.insert(image);
        }
        assert_eq!(outcomes.len(), 2, "both outcomes occur over 64 seeds");
    });
}

#[test]
fn rename_replaces_and_moves_directories() {
    sim::runner::block_on(13, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::KEEP_ALL), 13);
        let storage = disk.storage();
        storage.create_dir_all(Path::new("/s/d1")).unwrap();
        durable_file(&storage, Path::new("/s/d1/a"), b"a").await;
        storage.rename(Path::new("/s/d1"), Path::new("/s/d2")).unwrap();
        assert!(!storage.exists(Path::new("/s/d1/a")));
        assert_eq!(storage.open(Path::new("/s/d2/a")).unwrap().read_all().unwrap(), b"a".to_vec());
        assert!(matches!(storage.rename(Path::new("/s/d2"), Path::new("/s/d2/x")), Err(IoError::Other { .. })));
        assert!(matches!(storage.rename(Path::new("/s/nope"), Path::new("/s/x")), Err(IoError::NotFound { .. })));
        // Keep-all power loss replays the whole journal, the directory move included.
        disk.crash(CrashKind::PowerLoss);
        assert_eq!(disk.current_image(Path::new("/s/d2/a")).unwrap(), b"a".to_vec());
    });
}

// ---------------------------------------------------------------------------------------------
// Faults, capacity, handles, locks

#[test]
fn enospc_beyond_capacity_changes_nothing() {
    sim::runner::block_on(14, || async {
        let config = DiskConfig { capacity_bytes: Some(10_000), ..quick_config(PowerLossModel::default()) };
        let (disk, trace) = disk_with(config, 14);
        let storage = disk.storage();
        store_dir(&storage).await;
        let a = storage.create(&root().join("a")).unwrap();
        a.write_at(0, &[1; 8_000]).unwrap();
        assert!(matches!(a.write_at(8_000, &[2; 4_000]), Err(IoError::NoSpace { .. })));
        assert!(matches!(a.set_len(20_000), Err(IoError::NoSpace { .. })));
        assert_eq!(a.len().unwrap(), 8_000);
        a.write_at(0, &[3; 8_000]).expect("overwriting in place needs no space");
        let b = storage.create(&root().join("b")).unwrap();
        assert!(matches!(b.write_at(0, &[4; 3_000]), Err(IoError::NoSpace { .. })));
        assert_eq!(disk.usage_bytes(), 8_000);
        drop(a);
        storage.remove_file(&root().join("a")).unwrap();
        b.write_at(0, &[4; 3_000]).expect("removing a file frees its space");
        disk.set_capacity(None);
        b.set_len(1 << 40).expect("no capacity: sparse growth is fine");
        assert_eq!(disk.stats().enospc, 3);
        assert_eq!(trace_count(&trace, "disk.enospc"), 3);
    });
}

#[test]
fn eio_on_read_and_write() {
    sim::runner::block_on(15, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::default()), 15);
        let storage = disk.storage();
        store_dir(&storage).await;
        let path = root().join("f");
        let f = storage.create(&path).unwrap();
        f.write_at(0, b"good").unwrap();
        disk.set_faults(DiskFaults { write_eio_prob: 1.0, read_eio_prob: 1.0, sync_eio_prob: 0.0 });
        assert!(matches!(f.write_at(0, b"evil-and-longer"), Err(IoError::Eio { .. })));
        let mut buf = [0u8; 4];
        assert!(matches!(f.read_at(0, &mut buf), Err(IoError::Eio { .. })));
        assert_eq!(disk.current_image(&path).unwrap(), b"good".to_vec(), "a failed write changes nothing");
        disk.clear_faults();
        f.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"good");
        assert_eq!(disk.stats().eio, 2);
        // A partial probability fails some, not all.
        disk.set_faults(DiskFaults { write_eio_prob: 0.5, ..DiskFaults::default() });
        let failed = (0..200).filter(|_| f.write_at(0, b"x").is_err()).count();
        assert!((50..150).contains(&failed), "{failed}");
    });
}

#[test]
fn crash_makes_every_old_handle_stale() {
    sim::runner::block_on(16, || async {
        let config =
            DiskConfig { sync_latency: LatencyProfile { p50_us: 1_000, p99_us: 1_000 }, ..DiskConfig::default() };
        let (disk, _) = disk_with(config, 16);
        let storage = disk.storage();
        store_dir(&storage).await;
        let path = root().join("f");
        let f = durable_file(&storage, &path, b"v1").await;
        f.write_at(0, b"v2").unwrap();
        // A sync in flight when the node crashes makes nothing durable.
        let in_flight = {
            let f = f.clone();
            tokio::spawn(async move { f.sync_all().await })
        };
        tokio::time::sleep(Duration::from_micros(100)).await;
        disk.crash(CrashKind::ProcessCrash);
        assert!(matches!(in_flight.await.unwrap(), Err(IoError::StaleHandle { .. })));
        assert_eq!(disk.durable_image(&path).unwrap(), b"v1".to_vec());
        let mut buf = [0u8; 2];
        assert!(matches!(f.read_at(0, &mut buf), Err(IoError::StaleHandle { .. })));
        assert!(matches!(f.write_at(0, b"v3"), Err(IoError::StaleHandle { .. })));
        assert!(matches!(f.len(), Err(IoError::StaleHandle { .. })));
        assert!(matches!(f.set_len(0), Err(IoError::StaleHandle { .. })));
        assert!(matches!(f.sync_all().await, Err(IoError::StaleHandle { .. })));
        assert!(matches!(storage.open(&path), Err(IoError::StaleHandle { .. })));
        assert!(matches!(storage.create(&root().join("g")), Err(IoError::StaleHandle { .. })));
        assert!(matches!(storage.sync_dir(&root()).await, Err(IoError::StaleHandle { .. })));
        assert!(!storage.exists(&path), "a stale storage sees nothing");
        let fresh = disk.storage();
        assert_eq!(fresh.open(&path).unwrap().read_all().unwrap(), b"v2".to_vec());
        assert_eq!(disk.generation(), 1);
    });
}

#[test]
fn locks_are_exclusive_and_released_by_drop_or_crash() {
    sim::runner::block_on(17, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::LOSE_ALL), 17);
        let storage = disk.storage();
        store_dir(&storage).await;
        let path = root().join("lock");
        let first = storage.lock(&path).unwrap();
        assert!(storage.exists(&path), "lock creates the file");
        assert!(matches!(storage.lock(&path), Err(IoError::Locked { .. })));
        drop(first);
        let second = storage.lock(&path).unwrap();
        disk.crash(CrashKind::ProcessCrash);
        let storage = disk.storage();
        let third = storage.lock(&path).expect("a crash releases every lock");
        drop(second); // the dead process's guard must not release the new lock
        assert!(matches!(storage.lock(&path), Err(IoError::Locked { .. })));
        drop(third);
        // The lock file's create was never synced: a power loss removes it.
        disk.crash(CrashKind::PowerLoss);
        assert!(!disk.storage().exists(&path));
    });
}

#[test]
fn bit_flip_corrupts_one_durable_bit() {
    sim::runner::block_on(18, || async {
        let (disk, trace) = disk_with(quick_config(PowerLossModel::LOSE_ALL), 18);
        assert_eq!(disk.inject_bit_flip(), None, "no durable data yet");
        let storage = disk.storage();
        store_dir(&storage).await;
        let path = root().join("f");
        durable_file(&storage, &path, &[0u8; 5000]).await;
        let flip = disk.inject_bit_flip().unwrap();
        assert_eq!(flip.path, path);
        assert!(flip.offset < 5000 && flip.bit < 8);
        for image in [disk.durable_image(&path).unwrap(), disk.current_image(&path).unwrap()] {
            let set: Vec<(usize, u8)> =
                image.iter().enumerate().filter(|(_, &b)| b != 0).map(|(i, &b)| (i, b)).collect();
            assert_eq!(set, vec![(flip.offset as usize, 1 << flip.bit)]);
        }
        assert_eq!(disk.stats().bit_flips, 1);
        assert_eq!(trace_count(&trace, "disk.bit_flip"), 1);
        assert_eq!(trace_count(&trace, "disk.bit_flip_skipped"), 1, "the empty attempt is traced apart");
    });
}

#[test]
fn huge_offsets_never_panic() {
    sim::runner::block_on(19, || async {
        let (disk, _) = disk_with(quick_config(PowerLossModel::LOSE_ALL), 19);
        let storage = disk.storage();
        store_dir(&storage).await;
        let f = storage.create(&root().join("f")).unwrap();
        assert!(matches!(f.write_at(u64::MAX - 3, b"0123456789"), Err(IoError::Other { .. })));
        f.write_at(1 << 50, b"far").unwrap();
        assert_eq!(f.len().unwrap(), (1 << 50) + 3);
        let mut buf = [0u8; 3];
        f.read_at(1 << 50, &mut buf).unwrap();
        assert_eq!(&buf, b"far");
        f.read_at(1 << 40, &mut buf).unwrap();
        assert_eq!(buf, [0; 3], "holes read zeros");
        assert!(matches!(f.read_at(u64::MAX, &mut buf), Err(IoError::ReadPastEnd { .. })));
        f.set_len(u64::MAX).unwrap();
        f.read_at(u64::MAX - 3, &mut buf).unwrap();
        f.sync_range(u64::MAX, u64::MAX).await.unwrap();
        f.sync_all().await.unwrap();
        assert_eq!(disk.current_image(&root().join("f")), None, "too large to materialise");
        disk.crash(CrashKind::PowerLoss);
        let f = disk.storage().open(&root().join("f"));
        assert!(f.is_err(), "its create was never synced");
    });
}

#[test]
fn same_seed_same_trace_other_node_other_choices() {
    let run = |node: &'static str| {
        let (tx, rx) = std::sync::mpsc::channel();
        sim::runner::block_on(20, move || async move {
            let trace = Trace::new(false);
            trace.start_clock();
            let disk = SimDisk::new(node, DiskConfig::default(), 20, trace.clone());
            let storage = disk.storage();
            store_dir(&storage).await;
            let f = storage.create(&root().join("f")).unwrap();
            for i in 0..64u64 {
                f.write_at(i * 1000, &[i as u8; 700]).unwrap();
            }
            f.sync_range(0, 20_000).await.unwrap();
            disk.crash(CrashKind::PowerLoss);
            tx.send((trace.hash(), disk.stats())).unwrap();
        });
        rx.recv().unwrap()
    };
    let (a, b, c) = (run("broker-a"), run("broker-a"), run("broker-b"));
    assert_eq!(a, b, "same seed, same node: same trace and stats");
    assert_ne!(a.0, c.0, "the node name is part of the trace and of the disk's seed");
}

#[test]
fn latency_profile_samples_around_its_percentiles() {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let profile = LatencyProfile::CLOUD_VM;
    let mut samples: Vec<u64> = (0..10_000).map(|_| profile.sample(&mut rng).as_micros() as u64).collect();
    samples.sort_unstable();
    let p50 = samples[5_000];
    let p99 = samples[9_900];
    assert!((90..=200).contains(&p50), "p50 {p50}");
    assert!((4_000..=6_000).contains(&p99), "p99 {p99}");
    assert_eq!(LatencyProfile::INSTANT.sample(&mut rng), Duration::ZERO);
    let inverted = LatencyProfile { p50_us: 10, p99_us: 1 };
    assert!(inverted.sample(&mut rng) <= Duration::from_micros(40));
}

#[test]
fn config_serde_rejects_unknown_fields_and_defaults() {
    let config = DiskConfig::default();
    assert_eq!((config.page_size_bytes, config.sector_size_bytes, config.capacity_bytes), (4096, 512, None));
    assert_eq!(config.sync_latency, LatencyProfile::CLOUD_VM);
    assert_eq!(
        config.power_loss,
        PowerLossModel { keep_page_prob: 0.5, tear_page_prob: 0.2, keep_dir_op_prob: 0.5, keep_len_prob: 0.0 }
    );
    config.validate().unwrap();
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<DiskConfig>(&json).unwrap(), config);
    assert!(serde_json::from_str::<DiskConfig>(r#"{"page_size_bytes":4096,"bogus":1}"#).is_err());
    assert!(serde_json::from_str::<DiskFaults>(r#"{"read_eio":0.1}"#).is_err());
    let partial: DiskConfig = serde_json::from_str(r#"{"capacity_bytes":1000}"#).unwrap();
    assert_eq!(partial.capacity_bytes, Some(1000));
    let bad = DiskConfig { sector_size_bytes: 1000, ..DiskConfig::default() };
    assert!(bad.validate().is_err());
}

#[test]
fn invalid_geometry_is_repaired_not_panicking() {
    sim::runner::block_on(21, || async {
        let config = DiskConfig { page_size_bytes: 0, sector_size_bytes: 0, ..quick_config(PowerLossModel::default()) };
        let (disk, _) = disk_with(config, 21);
        let storage = disk.storage();
        let f = storage.create(Path::new("/f")).unwrap();
        f.write_at(10, b"ok").unwrap();
        f.sync_all().await.unwrap();
        disk.crash(CrashKind::PowerLoss);
    });
}
