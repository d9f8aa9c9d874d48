//! The disk model's contract (`sim/src/disk.rs`, "The contract"), held from both sides.
//!
//! Each row is an experiment run over many seeds, each with a fresh disk: it records which
//! outcome each seed left (`seen`) and every outcome Linux forbids (`forbidden`). A row
//! passes when every outcome Linux allows was seen at least once (the model is not kinder
//! than Linux) and nothing forbidden was (the model is not crueler). The rows run at several
//! intermediate power-loss probabilities, not only at 0 and 1.
//!
//! The second half switches on each test-only `Kindness` in turn and asserts that the row
//! guarding it fails: a model made kinder in any one of these ways fails these tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::io::storage::{Storage, StorageFile, StorageFileExt};
use sim::disk::{CrashKind, DiskConfig, DiskFaults, Kindness, LatencyProfile, PowerLossModel, SimDisk};
use sim::Trace;

const PAGE: u64 = 256;
const SECTOR: u64 = 64;
const SEEDS: u64 = 96;

/// Intermediate probabilities: (keep page, tear page, keep dir op, keep length).
const MODELS: [(f64, f64, f64, f64); 3] = [(0.4, 0.3, 0.5, 0.5), (0.2, 0.6, 0.3, 0.3), (0.7, 0.1, 0.7, 0.7)];

/// What one experiment saw across its seeds.
#[derive(Debug, Default)]
struct Seen {
    outcomes: BTreeSet<String>,
    forbidden: Vec<String>,
}

impl Seen {
    fn saw(&mut self, outcome: impl Into<String>) {
        self.outcomes.insert(outcome.into());
    }

    fn forbid(&mut self, seed: u64, what: impl Into<String>) {
        self.forbidden.push(format!("seed {seed}: {}", what.into()));
    }

    /// Ok when every `allowed` outcome occurred and nothing forbidden did.
    fn verdict(&self, row: &str, allowed: &[&str]) -> Result<(), String> {
        if let Some(f) = self.forbidden.first() {
            return Err(format!("{row}: forbidden outcome: {f}"));
        }
        let missing: Vec<&&str> = allowed.iter().filter(|a| !self.outcomes.contains(**a)).collect();
        if !missing.is_empty() {
            return Err(format!("{row}: allowed outcomes never occurred: {missing:?} (saw {:?})", self.outcomes));
        }
        Ok(())
    }
}

struct Rig {
    disk: Arc<SimDisk>,
    storage: Arc<dyn Storage>,
}

fn dir() -> PathBuf {
    PathBuf::from("/d")
}

impl Rig {
    async fn new(seed: u64, model: (f64, f64, f64, f64), kindness: Option<Kindness>) -> Rig {
        let (keep_page_prob, tear_page_prob, keep_dir_op_prob, keep_len_prob) = model;
        let config = DiskConfig {
            page_size_bytes: PAGE,
            sector_size_bytes: SECTOR,
            sync_latency: LatencyProfile::INSTANT,
            power_loss: PowerLossModel { keep_page_prob, tear_page_prob, keep_dir_op_prob, keep_len_prob },
            kindness,
            ..DiskConfig::default()
        };
        let trace = Trace::new(false);
        trace.start_clock();
        let disk = SimDisk::new("n", config, seed, trace);
        let storage = disk.storage();
        storage.create_dir_all(&dir()).unwrap();
        storage.sync_dir(Path::new("/")).await.unwrap();
        Rig { disk, storage }
    }

    /// A file whose name and `data` are durable.
    async fn durable(&self, name: &str, data: &[u8]) -> Arc<dyn StorageFile> {
        let f = self.storage.create(&dir().join(name)).unwrap();
        f.write_at(0, data).unwrap();
        f.sync_all().await.unwrap();
        self.storage.sync_dir(&dir()).await.unwrap();
        f
    }

    fn image(&self, name: &str) -> Option<Vec<u8>> {
        self.disk.current_image(&dir().join(name))
    }

    fn power_loss(&self) {
        self.disk.crash(CrashKind::PowerLoss);
    }
}

/// Runs `experiment` for every seed and every intermediate model.
fn observe<F, Fut>(kindness: Option<Kindness>, experiment: F) -> Seen
where
    F: Fn(Rig, u64, Arc<std::sync::Mutex<Seen>>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    for (m, &model) in MODELS.iter().enumerate() {
        for seed in 0..SEEDS {
            let seed = seed + 1_000 * m as u64;
            let (seen, experiment) = (seen.clone(), experiment.clone());
            sim::runner::block_on(seed, move || async move {
                let rig = Rig::new(seed, model, kindness).await;
                experiment(rig, seed, seen).await;
            });
        }
    }
    Arc::try_unwrap(seen).map(|m| m.into_inner().unwrap()).unwrap_or_default()
}

/// Classifies one page of a surviving image against the old and new bytes, sector by sector.
fn page_outcome(image: &[u8], page: usize, old: u8, new: u8) -> Result<&'static str, String> {
    let bytes = &image[page * PAGE as usize..(page + 1) * PAGE as usize];
    let mut kinds = BTreeSet::new();
    for (s, sector) in bytes.chunks(SECTOR as usize).enumerate() {
        if sector.iter().all(|&b| b == old) {
            kinds.insert(old);
        } else if sector.iter().all(|&b| b == new) {
            kinds.insert(new);
        } else {
            return Err(format!("page {page} sector {s} is neither old nor new bytes whole"));
        }
    }
    Ok(match (kinds.contains(&old), kinds.contains(&new)) {
        (true, false) => "old",
        (false, true) => "new",
        _ => "torn",
    })
}

// ---------------------------------------------------------------------------------------------
// The rows

/// `write_at` with no sync, then a power loss: each page old, new, or torn at sector
/// granularity; no other bytes, and sectors are atomic.
fn row_unsynced_write(kindness: Option<Kindness>) -> Result<(), String> {
    let seen = observe(kindness, |rig, seed, seen| async move {
        let f = rig.durable("f", &[b'A'; 3 * PAGE as usize]).await;
        f.write_at(0, &[b'B'; 3 * PAGE as usize]).unwrap();
        rig.power_loss();
        let image = rig.image("f").unwrap();
        let mut seen = seen.lock().unwrap();
        if image.len() != 3 * PAGE as usize {
            seen.forbid(seed, format!("length {} changed by an overwrite", image.len()));
            return;
        }
        for page in 0..3 {
            match page_outcome(&image, page, b'A', b'B') {
                Ok(o) => seen.saw(o),
                Err(e) => seen.forbid(seed, e),
            }
        }
    });
    seen.verdict("unsynced write", &["old", "new", "torn"])
}

/// `sync_range` over one page: that page is durable; dirty pages outside the range are not.
fn row_sync_range(kindness: Option<Kindness>) -> Result<(), String> {
    let seen = observe(kindness, |rig, seed, seen| async move {
        let f = rig.durable("f", &[b'A'; 4 * PAGE as usize]).await;
        f.write_at(0, &[b'B'; 4 * PAGE as usize]).unwrap();
        f.sync_range(0, PAGE).await.unwrap();
        rig.power_loss();
        let image = rig.image("f").unwrap();
        let mut seen = seen.lock().unwrap();
        match page_outcome(&image, 0, b'A', b'B') {
            Ok("new") => seen.saw("synced page new"),
            other => seen.forbid(seed, format!("the synced page is {other:?}")),
        }
        for page in 1..4 {
            match page_outcome(&image, page, b'A', b'B') {
                Ok(o) => seen.saw(format!("outside {o}")),
                Err(e) => seen.forbid(seed, e),
            }
        }
    });
    seen.verdict("sync_range", &["synced page new", "outside old", "outside new"])
}

/// An unsynced append: the durable length or the new one; the appended bytes new or zeros.
/// After a sync the new length and bytes are durable.
fn row_unsynced_length(kindness: Option<Kindness>) -> Result<(), String> {
    let seen = observe(kindness, |rig, seed, seen| async move {
        let f = rig.durable("f", &[b'A'; PAGE as usize]).await;
        let g = rig.durable("g", &[b'A'; PAGE as usize]).await;
        f.write_at(PAGE, &[b'B'; 2 * PAGE as usize]).unwrap();
        g.write_at(PAGE, &[b'B'; 2 * PAGE as usize]).unwrap();
        g.sync_all().await.unwrap();
        rig.power_loss();
        let (fi, gi) = (rig.image("f").unwrap(), rig.image("g").unwrap());
        let mut seen = seen.lock().unwrap();
        if gi.len() != 3 * PAGE as usize || gi[PAGE as usize..].iter().any(|&b| b != b'B') {
            seen.forbid(seed, "a synced append was lost");
        }
        if fi[..PAGE as usize].iter().any(|&b| b != b'A') {
            seen.forbid(seed, "synced bytes before an append changed");
        }
        match fi.len() as u64 {
            n if n == PAGE => seen.saw("old length"),
            n if n == 3 * PAGE => {
                seen.saw("new length");
                for page in 1..3 {
                    match page_outcome(&fi, page, 0, b'B') {
                        Ok(o) => seen.saw(format!("appended page {o}")),
                        Err(e) => seen.forbid(seed, e),
                    }
                }
            }
            n => seen.forbid(seed, format!("length {n} is neither the durable nor the written one")),
        }
    });
    seen.verdict("unsynced length", &["old length", "new length", "appended page old", "appended page new"])
}

/// A file synced but its directory not: the name may or may not survive; if it does, the
/// synced data is there.
fn row_file_sync_not_name(kindness: Option<Kindness>) -> Result<(), String> {
    let seen = observe(kindness, |rig, seed, seen| async move {
        let f = rig.storage.create(&dir().join("f")).unwrap();
        f.write_at(0, &[b'B'; PAGE as usize]).unwrap();
        f.sync_all().await.unwrap();
        rig.power_loss();
        let mut seen = seen.lock().unwrap();
        match rig.image("f") {
            None => seen.saw("name lost"),
            Some(i) if i == vec![b'B'; PAGE as usize] => seen.saw("name and data kept"),
            Some(i) => seen.forbid(seed, format!("a synced file survived with {} other bytes", i.len())),
        }
    });
    seen.verdict("file sync without sync_dir", &["name lost", "name and data kept"])
}

/// `sync_dir` without a file sync: the name survives, the data need not.
fn row_dir_sync_not_data(kindness: Option<Kindness>) -> Result<(), String> {
    let seen = observe(kindness, |rig, seed, seen| async move {
        let f = rig.storage.create(&dir().join("f")).unwrap();
        f.write_at(0, &[b'B'; PAGE as usize]).unwrap();
        rig.storage.sync_dir(&dir()).await.unwrap();
        rig.power_loss();
        let mut seen = seen.lock().unwrap();
        match rig.image("f") {
            None => seen.forbid(seed, "a name made durable by sync_dir was lost"),
            Some(i) if i == vec![b'B'; PAGE as usize] => seen.saw("data kept"),
            Some(_) => seen.saw("data lost"),
        }
    });
    seen.verdict("sync_dir without file sync", &["data kept", "data lost"])
}

/// A failed sync (fsyncgate): reads and a process crash still see the new bytes; after a
/// later successful sync and a power loss they are gone.
fn row_failed_sync(kindness: Option<Kindness>) -> Result<(), String> {
    let seen = observe(kindness, |rig, seed, seen| async move {
        let f = rig.durable("f", &[b'A'; PAGE as usize]).await;
        f.write_at(0, &[b'B'; PAGE as usize]).unwrap();
        rig.disk.set_faults(DiskFaults { sync_eio_prob: 1.0, ..DiskFaults::default() });
        let failed = f.sync_all().await.is_err();
        rig.disk.clear_faults();
        let mut buf = vec![0u8; PAGE as usize];
        f.read_at(0, &mut buf).unwrap();
        f.sync_all().await.unwrap();
        rig.disk.crash(CrashKind::ProcessCrash);
        let after_kill = rig.image("f").unwrap();
        rig.power_loss();
        let after_loss = rig.image("f").unwrap();
        let mut seen = seen.lock().unwrap();
        if !failed {
            seen.forbid(seed, "the injected EIO did not fail the sync");
        }
        if buf != vec![b'B'; PAGE as usize] || after_kill != buf {
            seen.forbid(seed, "the new bytes vanished before any power loss");
        }
        match page_outcome(&after_loss, 0, b'A', b'B') {
            Ok(o) => seen.saw(o),
            Err(e) => seen.forbid(seed, e),
        }
    });
    seen.verdict("failed sync", &["old"])
}

/// A failed `sync_dir`: the operations stay pending, so a power loss may keep or lose them.
fn row_failed_dir_sync(kindness: Option<Kindness>) -> Result<(), String> {
    let seen = observe(kindness, |rig, seed, seen| async move {
        let f = rig.storage.create(&dir().join("f")).unwrap();
        f.write_at(0, &[b'B'; PAGE as usize]).unwrap();
        f.sync_all().await.unwrap();
        rig.disk.set_faults(DiskFaults { sync_eio_prob: 1.0, ..DiskFaults::default() });
        let failed = rig.storage.sync_dir(&dir()).await.is_err();
        rig.disk.clear_faults();
        rig.power_loss();
        let mut seen = seen.lock().unwrap();
        if !failed {
            seen.forbid(seed, "the injected EIO did not fail the sync_dir");
        }
        seen.saw(if rig.image("f").is_some() { "name kept" } else { "name lost" });
    });
    seen.verdict("failed sync_dir", &["name kept", "name lost"])
}

/// Unsynced namespace operations: a prefix survives, in order, and every prefix occurs; a
/// rename replaces its target atomically (old file or new, never neither).
fn row_namespace_prefix(kindness: Option<Kindness>) -> Result<(), String> {
    let seen = observe(kindness, |rig, seed, seen| async move {
        rig.durable("x", b"old").await;
        let t = rig.storage.create(&dir().join("t")).unwrap();
        t.write_at(0, b"new").unwrap();
        t.sync_all().await.unwrap();
        for name in ["a", "b"] {
            rig.storage.create(&dir().join(name)).unwrap();
        }
        rig.storage.rename(&dir().join("t"), &dir().join("x")).unwrap();
        rig.power_loss();
        let present: String = ["t", "a", "b"].iter().filter(|n| rig.image(n).is_some()).copied().collect();
        let x = rig.image("x");
        let mut seen = seen.lock().unwrap();
        // The log: create t, create a, create b, rename t -> x.
        match (present.as_str(), x.as_deref()) {
            ("", Some(b"old")) => seen.saw("prefix 0"),
            ("t", Some(b"old")) => seen.saw("prefix 1"),
            ("ta", Some(b"old")) => seen.saw("prefix 2"),
            ("tab", Some(b"old")) => seen.saw("prefix 3"),
            ("ab", Some(b"new")) => seen.saw("prefix 4"),
            (p, x) => seen.forbid(seed, format!("not a prefix of the log: {p:?} present, x = {x:?}")),
        }
    });
    seen.verdict("namespace prefix", &["prefix 0", "prefix 1", "prefix 2", "prefix 3", "prefix 4"])
}

/// A process crash loses nothing: unsynced writes, lengths and namespace operations stay.
fn row_process_crash(kindness: Option<Kindness>) -> Result<(), String> {
    let seen = observe(kindness, |rig, seed, seen| async move {
        let f = rig.durable("f", &[b'A'; PAGE as usize]).await;
        f.write_at(0, &[b'B'; 2 * PAGE as usize]).unwrap();
        let g = rig.storage.create(&dir().join("g")).unwrap();
        g.write_at(0, b"g").unwrap();
        rig.disk.crash(CrashKind::ProcessCrash);
        let mut seen = seen.lock().unwrap();
        if rig.image("f") == Some(vec![b'B'; 2 * PAGE as usize]) && rig.image("g").as_deref() == Some(b"g") {
            seen.saw("all kept");
        } else {
            seen.forbid(seed, "a process crash lost a write, a length or a name");
        }
    });
    seen.verdict("process crash", &["all kept"])
}

/// Everything synced (file and directory) survives a power loss exactly.
fn row_synced_survives(kindness: Option<Kindness>) -> Result<(), String> {
    let seen = observe(kindness, |rig, seed, seen| async move {
        let f = rig.durable("f", &[b'A'; 2 * PAGE as usize]).await;
        f.write_at(PAGE / 2, &[b'B'; PAGE as usize]).unwrap();
        f.sync_all().await.unwrap();
        rig.power_loss();
        let mut want = vec![b'A'; 2 * PAGE as usize];
        want[PAGE as usize / 2..PAGE as usize * 3 / 2].fill(b'B');
        let mut seen = seen.lock().unwrap();
        if rig.image("f") == Some(want) {
            seen.saw("exact");
        } else {
            seen.forbid(seed, "synced data changed at a power loss");
        }
    });
    seen.verdict("synced survives", &["exact"])
}

type Row = fn(Option<Kindness>) -> Result<(), String>;

const ROWS: [(&str, Row); 10] = [
    ("unsynced write", row_unsynced_write),
    ("sync_range", row_sync_range),
    ("unsynced length", row_unsynced_length),
    ("file sync without sync_dir", row_file_sync_not_name),
    ("sync_dir without file sync", row_dir_sync_not_data),
    ("failed sync", row_failed_sync),
    ("failed sync_dir", row_failed_dir_sync),
    ("namespace prefix", row_namespace_prefix),
    ("process crash", row_process_crash),
    ("synced survives", row_synced_survives),
];

#[test]
fn the_model_keeps_every_row_of_the_contract() {
    let failures: Vec<String> = ROWS.iter().filter_map(|(_, row)| row(None).err()).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Asserts that the model made kinder by `kindness` fails `row`.
fn kinder_model_fails(kindness: Kindness, row: Row) {
    match row(Some(kindness)) {
        Ok(()) => panic!("a model with {kindness:?} passed the row that should catch it"),
        // Kinder means fewer outcomes: the row must miss one Linux allows, not see a forbidden one.
        Err(e) => assert!(e.contains("never occurred"), "{kindness:?} failed the row for another reason: {e}"),
    }
}

#[test]
fn keeping_unsynced_pages_is_caught() {
    kinder_model_fails(Kindness::KeepsUnsyncedPages, row_unsynced_write);
}

#[test]
fn never_tearing_is_caught() {
    kinder_model_fails(Kindness::NeverTears, row_unsynced_write);
}

#[test]
fn keeping_unsynced_dir_ops_is_caught() {
    kinder_model_fails(Kindness::KeepsUnsyncedDirOps, row_namespace_prefix);
}

#[test]
fn keeping_unsynced_length_is_caught() {
    kinder_model_fails(Kindness::KeepsUnsyncedLength, row_unsynced_length);
}

#[test]
fn sync_range_syncing_the_whole_file_is_caught() {
    kinder_model_fails(Kindness::SyncRangeSyncsWholeFile, row_sync_range);
}

#[test]
fn file_sync_persisting_the_name_is_caught() {
    kinder_model_fails(Kindness::FileSyncPersistsName, row_file_sync_not_name);
}

#[test]
fn dir_sync_persisting_data_is_caught() {
    kinder_model_fails(Kindness::DirSyncPersistsData, row_dir_sync_not_data);
}

#[test]
fn failed_sync_keeping_pages_dirty_is_caught() {
    kinder_model_fails(Kindness::FailedSyncKeepsPagesDirty, row_failed_sync);
}

#[test]
fn failed_dir_sync_committing_is_caught() {
    kinder_model_fails(Kindness::FailedDirSyncCommits, row_failed_dir_sync);
}

// ---------------------------------------------------------------------------------------------
// Crash images: enumeration yields exactly the legal images, each once

#[test]
fn enumerated_images_are_legal_distinct_and_complete() {
    // Two dirty pages (each the edge of its run: drop, keep, or 1..=3 of 4 sectors) and one
    // pending create (lost or kept): 5 * 5 * 2 images.
    let setup = || async {
        let rig = Rig::new(7, (0.5, 0.2, 0.5, 0.0), None).await;
        let f = rig.durable("f", &[b'A'; 2 * PAGE as usize]).await;
        f.write_at(0, &[b'B'; 2 * PAGE as usize]).unwrap();
        rig.storage.create(&dir().join("c")).unwrap();
        rig
    };
    let legal = sim::runner::block_on(7, move || async move { setup().await.disk.image_space().legal_states() });
    assert_eq!(legal, 50);
    let mut images = BTreeSet::new();
    for k in 0..legal as u64 {
        let (f, c) = sim::runner::block_on(7, move || async move {
            let rig = setup().await;
            rig.disk.crash_to(CrashKind::PowerLoss, Some(sim::CrashImage::Index(k)));
            (rig.image("f").unwrap(), rig.image("c").is_some())
        });
        let pages: Vec<&str> = (0..2).map(|p| page_outcome(&f, p, b'A', b'B').expect("legal bytes")).collect();
        assert!(images.insert((f, c)), "image {k} ({pages:?}, create kept: {c}) enumerated twice");
    }
    assert_eq!(images.len(), 50);
    let first = images.iter().find(|(f, c)| f.iter().all(|&b| b == b'A') && !c);
    assert!(first.is_some(), "the durable image alone is among them");
}

#[test]
fn enumerated_lengths_and_samples() {
    // One appended page past the durable length: the length kept or lost (2) times the page
    // dropped, kept or torn after 1..=3 sectors (5). With the length lost the page's fate
    // does not matter: 10 choices, 6 distinct images.
    let setup = || async {
        let rig = Rig::new(9, (0.5, 0.2, 0.5, 0.0), None).await;
        let f = rig.durable("f", &[b'A'; PAGE as usize]).await;
        f.write_at(PAGE, &[b'B'; PAGE as usize]).unwrap();
        rig
    };
    let legal = sim::runner::block_on(9, move || async move { setup().await.disk.image_space().legal_states() });
    assert_eq!(legal, 10);
    let crash = move |image: sim::CrashImage| {
        sim::runner::block_on(9, move || async move {
            let rig = setup().await;
            rig.disk.crash_to(CrashKind::PowerLoss, Some(image));
            rig.image("f").unwrap()
        })
    };
    let mut images = BTreeSet::new();
    for k in 0..legal as u64 {
        let f = crash(sim::CrashImage::Index(k));
        assert!(f[..PAGE as usize].iter().all(|&b| b == b'A'), "synced bytes kept");
        if f.len() == 2 * PAGE as usize {
            page_outcome(&f, 1, 0, b'B').expect("the appended page is zeros, new, or torn between them");
        } else {
            assert_eq!(f.len(), PAGE as usize, "the durable length or the written one");
        }
        images.insert(f);
    }
    assert_eq!(images.len(), 6);
    for seed in 0..8 {
        let image = sim::CrashImage::Sample(seed);
        assert_eq!(crash(image), crash(image), "a sampled image is a function of its seed");
        assert!(images.contains(&crash(image)), "a sampled image is one of the enumerated ones");
    }
}
