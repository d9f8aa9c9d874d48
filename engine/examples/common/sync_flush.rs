//! The single store under sync flush with many producers, shared by `bench` and
//! `dledger_bench` (which sets a replicated group's rate beside it): a fresh store, its first
//! commit-log file created outside the timed run, then producers that each put one message
//! at a time and wait for its acknowledgement (after the group commit's sync).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use engine::io::real::RealStorage;
use engine::io::SystemClock;
use engine::{FlushMode, Store, StoreConfig};

/// How a bench's store is laid out.
#[derive(Debug, Clone, Copy)]
pub struct StoreShape {
    pub cl_file_mb: u64,
    /// Commit-log files prepared ahead (`StoreConfig::preallocate_commit_log`).
    pub preallocate: bool,
}

/// A fresh store in `dir` (removed first), started.
pub async fn open(shape: StoreShape, dir: &Path, mode: FlushMode) -> Store {
    let _ = std::fs::remove_dir_all(dir);
    let cfg = StoreConfig {
        root_dir: dir.to_path_buf(),
        flush_mode: mode,
        commit_log_file_size_bytes: shape.cl_file_mb << 20,
        preallocate_commit_log: shape.preallocate,
        ..StoreConfig::default()
    };
    // A fresh store's `open` prepares its first commit-log file (a spare): under sync flush it
    // writes and syncs the whole file, under async flush it allocates its blocks.
    let t = Instant::now();
    let store = Store::open(cfg, Arc::new(RealStorage::new()), Arc::new(SystemClock)).await.unwrap();
    println!("{:<28} {:>12.1} ms  ({mode:?} flush, fresh store)", "  open", t.elapsed().as_secs_f64() * 1e3);
    store.start().unwrap();
    store
}

/// One put before the clock starts: the first commit-log file is created outside the timed
/// run. (A fresh store's `open` has already prepared it as a spare, unless not preallocated.)
pub async fn first_file(store: &Store, body: &[u8]) {
    store.put("Bench", 0, body, None, &[]).await.unwrap();
}

/// What a timed run of producers did.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub msgs: u64,
    pub bytes: u64,
    pub secs: f64,
}

/// `producers` tasks, each putting `each` messages of `body` to queue `p % 8` of topic
/// `Bench`, one at a time.
pub async fn producers(store: &Arc<Store>, producers: u32, each: u64, body: &[u8]) -> Run {
    let t = Instant::now();
    let mut handles = Vec::new();
    for p in 0..producers {
        let (s, body) = (store.clone(), body.to_vec());
        handles.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            for _ in 0..each {
                bytes += u64::from(s.put("Bench", p % 8, &body, None, &[]).await.unwrap().size_bytes);
            }
            bytes
        }));
    }
    let mut bytes = 0u64;
    for h in handles {
        bytes += h.await.unwrap();
    }
    Run { msgs: u64::from(producers) * each, bytes, secs: t.elapsed().as_secs_f64() }
}

/// The group-commit batch: producers acknowledged per commit-log sync.
pub fn group_commit_line(store: &Store) {
    let st = store.stats();
    println!(
        "{:<28} {:>12.1} acks per sync  ({} syncs for {} acks)",
        "  group commit",
        st.group_commit_acks as f64 / st.group_commit_syncs.max(1) as f64,
        st.group_commit_syncs,
        st.group_commit_acks
    );
}
