//! Test helpers: a manual clock and a storage wrapper that counts and fails syncs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use engine::io::real::RealStorage;
use engine::io::{BoxFuture, Clock, DirEntry, FileLock, IoError, IoOp, Storage, StorageFile};
use engine::{Store, StoreConfig};

#[derive(Debug)]
pub struct ManualClock(pub AtomicI64);

impl ManualClock {
    pub fn new(ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicI64::new(ms)))
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    pub syncs: AtomicU64,
    pub dir_syncs: AtomicU64,
    pub fail_syncs: AtomicBool,
    /// Fail exactly the next sync.
    pub fail_next_sync: AtomicBool,
    /// If non-zero: the next directory sync takes this long, then fails.
    pub slow_failing_dir_sync_ms: AtomicU64,
    /// If non-zero: every file sync takes this long first.
    pub slow_sync_ms: AtomicU64,
    /// Writes into commit-log files.
    pub commit_log_writes: AtomicU64,
    /// Fail exactly the next write into a commit-log file.
    pub fail_next_commit_log_write: AtomicBool,
    /// File creations attempted.
    pub creates: AtomicU64,
    /// Every file creation fails with ENOSPC.
    pub fail_creates: AtomicBool,
}

impl Counters {
    fn sync_result(&self, path: &Path) -> Result<(), IoError> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.fail_syncs.load(Ordering::SeqCst) || self.fail_next_sync.swap(false, Ordering::SeqCst) {
            return Err(IoError::Eio { op: IoOp::Sync, path: path.to_path_buf() });
        }
        Ok(())
    }
}

/// RealStorage with counted, optionally failing syncs.
#[derive(Debug, Clone)]
pub struct TestStorage {
    pub real: RealStorage,
    pub c: Arc<Counters>,
}

impl TestStorage {
    pub fn new() -> Arc<TestStorage> {
        Arc::new(TestStorage { real: RealStorage::new(), c: Arc::new(Counters::default()) })
    }
}

#[derive(Debug)]
struct TestFile {
    inner: Arc<dyn StorageFile>,
    c: Arc<Counters>,
}

impl StorageFile for TestFile {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        if self.inner.path().parent().is_some_and(|d| d.ends_with("commitlog")) {
            self.c.commit_log_writes.fetch_add(1, Ordering::SeqCst);
            if self.c.fail_next_commit_log_write.swap(false, Ordering::SeqCst) {
                return Err(IoError::Eio { op: IoOp::Write, path: self.inner.path().to_path_buf() });
            }
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
        Box::pin(async move {
            let slow_ms = self.c.slow_sync_ms.load(Ordering::SeqCst);
            if slow_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(slow_ms)).await;
            }
            self.c.sync_result(self.inner.path())?;
            self.inner.sync_range(offset, len).await
        })
    }
}

impl Storage for TestStorage {
    fn create_dir_all(&self, path: &Path) -> Result<(), IoError> {
        self.real.create_dir_all(path)
    }
    fn create(&self, path: &Path) -> Result<Arc<dyn StorageFile>, IoError> {
        self.c.creates.fetch_add(1, Ordering::SeqCst);
        if self.c.fail_creates.load(Ordering::SeqCst) {
            return Err(IoError::NoSpace { op: IoOp::Create, path: path.to_path_buf() });
        }
        Ok(Arc::new(TestFile { inner: self.real.create(path)?, c: self.c.clone() }))
    }
    fn open(&self, path: &Path) -> Result<Arc<dyn StorageFile>, IoError> {
        Ok(Arc::new(TestFile { inner: self.real.open(path)?, c: self.c.clone() }))
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
            self.c.dir_syncs.fetch_add(1, Ordering::SeqCst);
            let slow_ms = self.c.slow_failing_dir_sync_ms.swap(0, Ordering::SeqCst);
            if slow_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(slow_ms)).await;
                return Err(IoError::Eio { op: IoOp::Sync, path: path.to_path_buf() });
            }
            self.real.sync_dir(path).await
        })
    }
}

pub fn small_config(dir: &Path) -> StoreConfig {
    StoreConfig::small(dir.join("store"))
}

pub async fn open(cfg: &StoreConfig, storage: &Arc<TestStorage>, clock: &Arc<ManualClock>) -> Store {
    Store::open(cfg.clone(), storage.clone(), clock.clone()).await.expect("open")
}

/// Puts `n` messages of `body_bytes` round-robin over `queues` queues of topic "T", key
/// `k{i}`, advancing the clock by `step_ms` each. Returns (queue, put result) per message.
pub async fn put_n(
    store: &Store,
    clock: &ManualClock,
    n: usize,
    queues: u32,
    body_bytes: usize,
    step_ms: i64,
) -> Vec<(u32, engine::PutResult)> {
    let mut out = Vec::new();
    for i in 0..n {
        clock.advance(step_ms);
        let q = i as u32 % queues;
        let body = vec![(i % 251) as u8; body_bytes];
        let key = format!("k{i}");
        let r = store.put("T", q, &body, Some("TagA"), &[&key]).await.expect("put");
        out.push((q, r));
    }
    out
}

pub fn cl_file(cfg: &StoreConfig, offset: u64) -> PathBuf {
    let size = cfg.commit_log_file_size_bytes;
    cfg.root_dir.join("commitlog").join(format!("{:020}", offset - offset % size))
}

/// Writes `data` at absolute commit-log offset `offset`.
pub fn poke_cl(cfg: &StoreConfig, offset: u64, data: &[u8]) {
    let f = RealStorage::new().open(&cl_file(cfg, offset)).unwrap();
    f.write_at(offset % cfg.commit_log_file_size_bytes, data).unwrap();
}

pub fn peek_cl(cfg: &StoreConfig, offset: u64, len: usize) -> Vec<u8> {
    let f = RealStorage::new().open(&cl_file(cfg, offset)).unwrap();
    let mut b = vec![0u8; len];
    f.read_at(offset % cfg.commit_log_file_size_bytes, &mut b).unwrap();
    b
}

pub fn make_abort(cfg: &StoreConfig) {
    std::fs::write(cfg.root_dir.join("abort"), b"").unwrap();
}

pub fn abort_exists(cfg: &StoreConfig) -> bool {
    cfg.root_dir.join("abort").exists()
}

/// Asserts every queue holds exactly the messages `puts` says it should, up to `end`.
pub fn assert_queues(store: &Store, puts: &[(u32, engine::PutResult)], end: u64) {
    let mut queues: std::collections::BTreeMap<u32, Vec<engine::PutResult>> = Default::default();
    for (q, r) in puts {
        if r.phy_offset + r.size_bytes as u64 <= end {
            queues.entry(*q).or_default().push(*r);
        }
    }
    for (q, rs) in &queues {
        assert_eq!(store.max_offset("T", *q), rs.len() as u64, "queue {q} length");
        let got = store.get("T", *q, 0, 10_000).expect("get");
        assert_eq!(got.len(), rs.len(), "queue {q} read back");
        for (i, (m, r)) in got.iter().zip(rs).enumerate() {
            assert_eq!(m.queue_offset, i as u64);
            assert_eq!(m.phy_offset, r.phy_offset);
            assert_eq!(m.queue_offset, r.queue_offset);
        }
    }
}

/// Waits until dispatch has caught up with the commit log (panics after 5 s of simulated time).
pub async fn wait_dispatched(store: &Store) {
    for _ in 0..1000 {
        if store.dispatch_behind_bytes() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("dispatch did not catch up");
}
