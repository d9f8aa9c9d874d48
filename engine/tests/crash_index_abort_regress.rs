//! Regressions found by the broker scenario (seeds 987, 1162, 1342 of a 2,000-seed sweep):
//! - an abort file found at open (left by an earlier `open` of the same process that failed
//!   before its directory sync) was never made durable, so a power loss after a successful
//!   open could remove it and the next boot recovered normally after a crash;
//! - an abnormal load that destroyed index files left the checkpoint's index timestamp
//!   vouching for them, so a partial (torn) rebuild left by a failed open was kept as durable
//!   by the next open, which appended to its broken hash chains;
//! - an index file synced at a clean shutdown and then filled up (unsynced) with messages
//!   whose store timestamps were clamped to the checkpoint's index timestamp (clock set back)
//!   passed the `end == index_ts && full` test and was kept after a power loss.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use engine::io::real::RealStorage;
use engine::io::{BoxFuture, DirEntry, FileLock, IoError, IoOp, Storage, StorageFile};
use engine::recovery::RecoveryKind;
use engine::{Store, StoreConfig};

/// RealStorage recording directory syncs; optionally fails the n-th index header write.
#[derive(Debug, Default)]
struct Probe {
    dir_syncs: Mutex<Vec<PathBuf>>,
    /// Header writes to index files left before one fails (negative: never).
    fail_index_header_in: AtomicI64,
}

#[derive(Debug, Clone)]
struct ProbeStorage {
    real: RealStorage,
    p: Arc<Probe>,
}

impl ProbeStorage {
    fn new() -> Arc<ProbeStorage> {
        let p = Probe { fail_index_header_in: AtomicI64::new(-1), ..Probe::default() };
        Arc::new(ProbeStorage { real: RealStorage::new(), p: Arc::new(p) })
    }
}

#[derive(Debug)]
struct ProbeFile {
    inner: Arc<dyn StorageFile>,
    p: Arc<Probe>,
}

impl StorageFile for ProbeFile {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let index = self.path().parent().is_some_and(|d| d.ends_with("index"));
        if index && offset == 0 && data.len() == 40 && self.p.fail_index_header_in.fetch_sub(1, Ordering::SeqCst) == 0 {
            return Err(IoError::Eio { op: IoOp::Write, path: self.path().to_path_buf() });
        }
        self.inner.write_at(offset, data)
    }
    fn len(&self) -> Result<u64, IoError> {
        self.inner.len()
    }
    fn set_len(&self, len_bytes: u64) -> Result<(), IoError> {
        self.inner.set_len(len_bytes)
    }
    fn sync_range(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), IoError>> {
        self.inner.sync_range(offset, len)
    }
}

impl Storage for ProbeStorage {
    fn create_dir_all(&self, path: &Path) -> Result<(), IoError> {
        self.real.create_dir_all(path)
    }
    fn create(&self, path: &Path) -> Result<Arc<dyn StorageFile>, IoError> {
        Ok(Arc::new(ProbeFile { inner: self.real.create(path)?, p: self.p.clone() }))
    }
    fn open(&self, path: &Path) -> Result<Arc<dyn StorageFile>, IoError> {
        Ok(Arc::new(ProbeFile { inner: self.real.open(path)?, p: self.p.clone() }))
    }
    fn remove_file(&self, path: &Path) -> Result<(), IoError> {
        self.real.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> Result<(), IoError> {
        self.real.remove_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<(), IoError> {
        self.real.rename(from, to)
    }
    fn list_dir(&self, path: &Path) -> Result<Vec<DirEntry>, IoError> {
        self.real.list_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.real.exists(path)
    }
    fn lock(&self, path: &Path) -> Result<FileLock, IoError> {
        self.real.lock(path)
    }
    fn sync_dir<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<(), IoError>> {
        Box::pin(async move {
            self.p.dir_syncs.lock().unwrap().push(path.to_path_buf());
            self.real.sync_dir(path).await
        })
    }
}

async fn open_probe(
    cfg: &StoreConfig,
    storage: &Arc<ProbeStorage>,
    clock: &Arc<ManualClock>,
) -> engine::error::Result<Store> {
    Store::open(cfg.clone(), storage.clone(), clock.clone()).await
}

/// Puts one message per key list (topic "T", queue 0), advancing the clock by `step_ms`.
async fn put_keys(store: &Store, clock: &ManualClock, keys: &[Vec<String>], step_ms: i64) {
    for ks in keys {
        clock.advance(step_ms);
        let refs: Vec<&str> = ks.iter().map(String::as_str).collect();
        store.put("T", 0, b"body", None, &refs).await.expect("put");
    }
}

fn missing_keys(store: &Store, keys: &[Vec<String>]) -> Vec<String> {
    keys.iter()
        .flatten()
        .filter(|k| {
            let hits = store.query_by_key("T", k, i64::MIN / 2, i64::MAX / 2, 8).expect("query");
            !hits.iter().any(|m| m.keys.iter().any(|x| x == *k))
        })
        .cloned()
        .collect()
}

fn index_files(cfg: &StoreConfig) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(cfg.root_dir.join("index")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn abort_file_found_at_open_is_synced_into_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (storage, clock) = (ProbeStorage::new(), ManualClock::new(1_700_000_000_000));
    let store = open_probe(&cfg, &storage, &clock).await.unwrap();
    store.shutdown().await.unwrap();
    drop(store);
    // What an `open` that failed after creating the abort file (and before syncing the
    // root directory) leaves behind: an abort file whose entry is not durable.
    make_abort(&cfg);
    storage.p.dir_syncs.lock().unwrap().clear();
    let store = open_probe(&cfg, &storage, &clock).await.unwrap();
    assert_eq!(store.last_recovery().kind, RecoveryKind::Abnormal);
    let synced = storage.p.dir_syncs.lock().unwrap().clone();
    assert!(synced.contains(&cfg.root_dir), "open returned without syncing the abort file's directory: {synced:?}");
}

#[tokio::test]
async fn partial_index_rebuild_of_a_failed_open_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (storage, clock) = (ProbeStorage::new(), ManualClock::new(1_700_000_000_000));
    // 120 messages of two keys (UNIQ_KEY and one KEYS token): one index file, not full.
    let keys: Vec<Vec<String>> = (0..120).map(|i| vec![format!("a{i}")]).collect();
    let store = open_probe(&cfg, &storage, &clock).await.unwrap();
    store.start().unwrap();
    put_keys(&store, &clock, &keys, 10).await;
    wait_dispatched(&store).await;
    store.shutdown().await.unwrap();
    drop(store);
    // A crash; the abnormal open destroys the current index file, rebuilds it and fails
    // on a header write (after that item was written).
    make_abort(&cfg);
    storage.p.fail_index_header_in.store(150, Ordering::SeqCst);
    assert!(open_probe(&cfg, &storage, &clock).await.is_err(), "the injected write error fails the open");
    storage.p.fail_index_header_in.store(-1, Ordering::SeqCst);
    let store = open_probe(&cfg, &storage, &clock).await.unwrap();
    assert_eq!(store.last_recovery().kind, RecoveryKind::Abnormal);
    assert_eq!(missing_keys(&store, &keys), Vec::<String>::new());
}

#[tokio::test]
async fn index_filled_at_the_checkpoint_timestamp_after_its_sync_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (storage, clock) = (ProbeStorage::new(), ManualClock::new(1_700_000_000_000));
    let page = cfg.os_page_size_bytes as usize;
    // 50 messages of two keys: items 1..=100, all in the file's first page.
    let first: Vec<Vec<String>> = (0..50).map(|i| vec![format!("a{i}")]).collect();
    let store = open_probe(&cfg, &storage, &clock).await.unwrap();
    store.start().unwrap();
    put_keys(&store, &clock, &first, 10).await;
    wait_dispatched(&store).await;
    store.shutdown().await.unwrap();
    drop(store);
    let files = index_files(&cfg);
    assert_eq!(files.len(), 1);
    let synced = std::fs::read(&files[0]).unwrap();
    // The clock is set back: every new store timestamp is clamped to the last one, which is
    // the checkpoint's index timestamp. 77 messages of two keys and one of one fill the file
    // exactly (items 101..=255), so nothing seals (syncs) it.
    let store = open_probe(&cfg, &storage, &clock).await.unwrap();
    store.start().unwrap();
    clock.advance(-100_000);
    let mut second: Vec<Vec<String>> = (0..77).map(|i| vec![format!("b{i}")]).collect();
    second.push(vec![]);
    put_keys(&store, &clock, &second, 1).await;
    wait_dispatched(&store).await;
    drop(store);
    let now = std::fs::read(&files[0]).unwrap();
    assert_eq!(i32::from_be_bytes(now[36..40].try_into().unwrap()) as u32, cfg.index_max_items, "the file is full");
    // A power loss keeping the first page (header and slots) but not the second (the items
    // the slots now point to).
    let mut image = now[..page].to_vec();
    image.extend_from_slice(&synced[page..]);
    std::fs::write(&files[0], &image).unwrap();
    let store = open_probe(&cfg, &storage, &clock).await.unwrap();
    assert_eq!(store.last_recovery().kind, RecoveryKind::Abnormal);
    let all: Vec<Vec<String>> = first.into_iter().chain(second).collect();
    assert_eq!(missing_keys(&store, &all), Vec::<String>::new());
}

/// Broker seed 38703: the header write of the item that filled an index file failed after
/// that item's slot had been written, while the header in memory already counted it. The
/// retry rolled to a new file and sealed the old one, synced with the slot pointing at item
/// `items - 1` but a header on disk counting only the items before it. After a crash that
/// file was kept (its stale end is below the checkpoint's index timestamp) and the rebuild
/// wrote another key's item at `items - 1`: the slot's chain then ran into the other key's,
/// and every older key of that slot was lost.
#[tokio::test]
async fn failed_index_header_write_leaves_no_slot_pointing_past_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (storage, clock) = (ProbeStorage::new(), ManualClock::new(1_700_000_000_000));
    // Two items per message (UNIQ_KEY, then one KEYS token), one header write per item after
    // the file's first: header write number `items` is the one of item `items - 1`, the
    // UNIQ_KEY of message `items / 2 - 1`, one store timestamp after the item before it.
    let keys: Vec<Vec<String>> = (0..(cfg.index_max_items / 2 + 20)).map(|i| vec![format!("a{i}")]).collect();
    storage.p.fail_index_header_in.store(i64::from(cfg.index_max_items) - 1, Ordering::SeqCst);
    let store = open_probe(&cfg, &storage, &clock).await.unwrap();
    store.start().unwrap();
    put_keys(&store, &clock, &keys, 10).await;
    wait_dispatched(&store).await;
    assert!(storage.p.fail_index_header_in.load(Ordering::SeqCst) < 0, "the header write failed");
    storage.p.fail_index_header_in.store(-1, Ordering::SeqCst);
    assert_eq!(index_files(&cfg).len(), 2, "the first file filled up and was sealed");
    // A crash.
    drop(store);
    let store = open_probe(&cfg, &storage, &clock).await.unwrap();
    assert_eq!(store.last_recovery().kind, RecoveryKind::Abnormal);
    assert_eq!(missing_keys(&store, &keys), Vec::<String>::new());
}
