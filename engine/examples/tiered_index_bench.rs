//! Key queries on a real disk: latency (p50, p99) of a query answered by the local key index
//! next to the same query answered by the uploaded tiered index, same keys, same run.
//!
//! The store puts keyed messages, tiers them, shuts the tiered store down (every index file
//! compacted and uploaded to `LocalObjectStore`, a local directory), then a second tiered store
//! opens over a new, empty local store and the same object store (a replaced container): its
//! queries read a slot and a run of the uploaded index, then the record, from the object store.
//!
//! `RUSTFLAGS="" cargo run --release --target-dir target/std -p engine --example tiered_index_bench -- --dir /tmp/t`
//! Options: `--messages N` (default 200000), `--queries N` (default 20000).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::io::real::{LocalObjectStore, RealStorage};
use engine::io::SystemClock;
use engine::tiered::{TieredConfig, TieredStore};
use engine::{BugSet, FlushMode, Store, StoreConfig};

const MSG_BYTES: usize = 256;
const QUEUES: u32 = 8;

struct Args {
    dir: PathBuf,
    messages: u64,
    queries: u64,
}

fn args() -> Args {
    let mut a = Args { dir: std::env::temp_dir().join("tiered-index-bench"), messages: 200_000, queries: 20_000 };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let val = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--dir" => a.dir = PathBuf::from(val),
            "--messages" => a.messages = val.parse().expect("--messages N"),
            "--queries" => a.queries = val.parse().expect("--queries N"),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn tiered_config() -> TieredConfig {
    let mut t = TieredConfig::production("bench");
    t.group_commit_timeout_ms = 200;
    t.dispatch_interval_ms = 5;
    // Files of 100,000 keys: a run of them are sealed and uploaded.
    t.index_slots = 50_000;
    t.index_max_items = 100_000;
    t
}

async fn open(root: PathBuf, obj: Arc<LocalObjectStore>) -> (Arc<Store>, TieredStore) {
    let mut cfg = StoreConfig::default();
    cfg.root_dir = root;
    cfg.flush_mode = FlushMode::Async;
    let storage = Arc::new(RealStorage::new());
    let store = Arc::new(Store::open(cfg.clone(), storage.clone(), Arc::new(SystemClock)).await.unwrap());
    store.start().unwrap();
    let tiered = TieredStore::open(
        tiered_config(),
        BugSet::none(),
        store.clone(),
        obj,
        storage,
        Arc::new(SystemClock),
        &cfg.root_dir,
        10_000,
    )
    .await
    .unwrap();
    (store, tiered)
}

/// A deterministic spread of message numbers (an LCG: no dependency for one bench).
fn picks(n: u64, count: u64) -> Vec<u64> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..count)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % n
        })
        .collect()
}

fn percentiles(mut us: Vec<f64>) -> (f64, f64) {
    us.sort_by(|a, b| a.total_cmp(b));
    (us[us.len() / 2], us[us.len() * 99 / 100])
}

#[tokio::main]
async fn main() {
    let a = args();
    let _ = std::fs::remove_dir_all(&a.dir);
    let obj = Arc::new(LocalObjectStore::new(a.dir.join("objects")).unwrap());
    let (store, tiered) = open(a.dir.join("store"), obj.clone()).await;
    tiered.start();
    let body = vec![0x42u8; MSG_BYTES];
    for i in 0..a.messages {
        store.put("Bench", (i % u64::from(QUEUES)) as u32, &body, None, &[&format!("key-{i}")]).await.unwrap();
    }
    let tiered_all = || async {
        tiered.queue_states().await.iter().map(|s| s.commit_queue_offset - s.min_queue_offset).sum::<u64>()
    };
    while tiered_all().await < a.messages {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    let left = tiered.shutdown().await.unwrap();
    let shutdown_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(left.is_empty(), "{left:?}");
    let files = tiered.index_statuses().await.len();
    let keys = picks(a.messages, a.queries);
    // The local key index, on the store that wrote the messages.
    let mut local_us = Vec::new();
    for &i in &keys {
        let t = Instant::now();
        let got = store.query_by_key("Bench", &format!("key-{i}"), 0, i64::MAX, 4).unwrap();
        local_us.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(got.len(), 1);
    }
    store.shutdown().await.unwrap();
    drop((store, tiered));
    // A replaced container: a new, empty local store over the same object store.
    let (store2, tiered2) = open(a.dir.join("store-replaced"), obj).await;
    let mut uploaded_us = Vec::new();
    for &i in &keys {
        let t = Instant::now();
        let got = tiered2.query_by_key("Bench", &format!("key-{i}"), 0, i64::MAX, 4).await.unwrap();
        uploaded_us.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(got.len(), 1, "key-{i}");
    }
    let (lp50, lp99) = percentiles(local_us);
    let (up50, up99) = percentiles(uploaded_us);
    println!(
        "{} messages of {MSG_BYTES} bytes, {} keys each (KEYS + UNIQ_KEY), {} tiered index files, shutdown with uploads {shutdown_ms:.0} ms",
        a.messages, 2, files
    );
    println!("{} queries of random keys, same keys for both:", a.queries);
    println!("  local key index        p50 {lp50:>8.1} us   p99 {lp99:>8.1} us");
    println!("  uploaded tiered index  p50 {up50:>8.1} us   p99 {up99:>8.1} us  (LocalObjectStore; slot, run and record reads)");
    tiered2.shutdown().await.unwrap();
    store2.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&a.dir);
}
