//! Tiered dispatch on a real disk: the rate at which the tiered dispatcher moves messages to
//! the object store (a local directory, `LocalObjectStore`, which syncs every append), next to
//! the local put rate in the same run.
//!
//! `RUSTFLAGS="" cargo run --release --target-dir target/std -p engine --example tiered_bench -- --dir /tmp/t`
//! Options: `--mb N` (volume put, default 512), `--queues N` (default 8), `--repeat N` (rounds,
//! default 3).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::io::real::{LocalObjectStore, RealStorage};
use engine::io::SystemClock;
use engine::tiered::{TieredConfig, TieredStore};
use engine::{BugSet, FlushMode, Store, StoreConfig};

const MSG_BYTES: usize = 1024;

struct Args {
    dir: PathBuf,
    mb: u64,
    queues: u32,
    repeat: usize,
}

fn args() -> Args {
    let mut a = Args { dir: std::env::temp_dir().join("tiered-bench"), mb: 512, queues: 8, repeat: 3 };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let val = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--dir" => a.dir = PathBuf::from(val),
            "--mb" => a.mb = val.parse().expect("--mb N"),
            "--queues" => a.queues = val.parse().expect("--queues N"),
            "--repeat" => a.repeat = val.parse().expect("--repeat N"),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// Messages of every queue below the tiered store's committed offsets.
async fn tiered_messages(t: &TieredStore) -> u64 {
    t.queue_states().await.iter().map(|s| s.commit_queue_offset - s.min_queue_offset).sum()
}

async fn round(a: &Args, body: &[u8]) -> (f64, f64, f64) {
    let _ = std::fs::remove_dir_all(&a.dir);
    let mut cfg = StoreConfig::default();
    cfg.root_dir = a.dir.join("store");
    cfg.flush_mode = FlushMode::Async;
    let storage = Arc::new(RealStorage::new());
    let store = Arc::new(Store::open(cfg.clone(), storage.clone(), Arc::new(SystemClock)).await.unwrap());
    store.start().unwrap();
    let obj = Arc::new(LocalObjectStore::new(a.dir.join("objects")).unwrap());
    let mut tcfg = TieredConfig::production("bench");
    tcfg.commit_log_segment_bytes = 256 << 20;
    tcfg.group_commit_timeout_ms = 200;
    tcfg.dispatch_interval_ms = 5;
    let tiered = TieredStore::open(
        tcfg,
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
    tiered.start();
    let n = (a.mb << 20) / MSG_BYTES as u64;
    let t = Instant::now();
    for i in 0..n {
        store.put("Bench", (i % u64::from(a.queues)) as u32, body, None, &[]).await.unwrap();
    }
    let put_secs = t.elapsed().as_secs_f64();
    let tiered_at_last_put = tiered_messages(&tiered).await;
    while tiered_messages(&tiered).await < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all_secs = t.elapsed().as_secs_f64();
    let (put_rate, tiered_rate) = (n as f64 / put_secs, n as f64 / all_secs);
    println!(
        "local puts {put_rate:>10.0} msgs/s ({:.0} MB/s) | tiered end to end {tiered_rate:>10.0} msgs/s = {:.1}% | \
         tiered during the puts {:.0} msgs/s, {:.1} s behind at the last put | {} batches",
        put_rate * MSG_BYTES as f64 / 1e6,
        100.0 * tiered_rate / put_rate,
        tiered_at_last_put as f64 / put_secs,
        all_secs - put_secs,
        tiered.stats().batches_committed,
    );
    tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
    (put_rate, tiered_rate, tiered_at_last_put as f64 / put_secs)
}

/// What the disk persists: 256 MiB written in 4 MiB pieces, each synced (as the local object
/// store syncs every append), MB/s. The tiered copy cannot go faster than this.
fn synced_write_mb_s(dir: &std::path::Path) -> f64 {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("synced-write");
    let mut f = std::fs::File::create(&path).unwrap();
    let piece = vec![0x5au8; 4 << 20];
    let t = Instant::now();
    for _ in 0..64 {
        f.write_all(&piece).unwrap();
        f.sync_data().unwrap();
    }
    let mb_s = (64.0 * piece.len() as f64) / 1e6 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    mb_s
}

#[tokio::main]
async fn main() {
    let a = args();
    let body = vec![0x42u8; MSG_BYTES];
    println!("{} MiB of {MSG_BYTES}-byte messages over {} queues, async flush, LocalObjectStore", a.mb, a.queues);
    let synced = synced_write_mb_s(&a.dir);
    println!(
        "disk synced write (4 MiB pieces, each fdatasync'd): {synced:.0} MB/s = {:.0} msgs/s of {MSG_BYTES} bytes",
        synced * 1e6 / MSG_BYTES as f64
    );
    let mut shares = Vec::new();
    for _ in 0..a.repeat {
        let (put, tiered, _) = round(&a, &body).await;
        shares.push(tiered / put);
    }
    shares.sort_by(|x, y| x.total_cmp(y));
    println!("tiered end to end / local puts: median {:.1}% of {} rounds", 100.0 * shares[shares.len() / 2], a.repeat);
    let _ = std::fs::remove_dir_all(&a.dir);
}
