//! Throughput of the store on a real disk, next to the raw page-cache write bandwidth of the
//! same disk measured in the same run.
//!
//! `RUSTFLAGS="" cargo run --release --target-dir target/std -p engine --example bench -- --dir /tmp/x`
//! Options: `--mb N` (volume of the raw and async runs, default 1024), `--sync-single N`
//! (puts of the single sync producer, default 5000), `--sync-each N` (puts per producer of
//! the 64-producer sync run, default 1000), `--only PART` (`async`, `sync1`, `sync64` or `sync`),
//! `--repeat N` (rounds of the store runs, default 3; the sync ratio is between medians),
//! `--cl-file-mb N` (commit-log file size, default 1024), `--no-preallocate` (commit-log files
//! are left sparse: `StoreConfig::preallocate_commit_log` off), `--transient-pool` (the async
//! run in `FlushMode::TransientPool`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use engine::io::real::RealStorage;
use engine::io::Storage;
use engine::FlushMode;

#[path = "common/sync_flush.rs"]
mod sync_flush;

use sync_flush::{first_file, group_commit_line, open, StoreShape};

const MSG_BYTES: usize = 1024;

struct Args {
    dir: PathBuf,
    mb: u64,
    sync_single: u64,
    sync_each: u64,
    /// Runs only the parts whose name starts with this (`async`, `sync1`, `sync64`, `sync`; raw
    /// is always measured).
    only: Option<String>,
    /// Rounds of the store runs (the ratio is taken between medians).
    repeat: usize,
    cl_file_mb: u64,
    no_preallocate: bool,
    /// The async run in transient-pool mode (appends into pooled buffers, committed to the
    /// file by the commit service).
    transient_pool: bool,
}

fn args() -> Args {
    let mut a = Args {
        dir: std::env::temp_dir().join("engine-bench"),
        mb: 1024,
        sync_single: 5000,
        sync_each: 1000,
        only: None,
        repeat: 3,
        cl_file_mb: 1024,
        no_preallocate: false,
        transient_pool: false,
    };
    let mut v: Vec<String> = std::env::args().skip(1).collect();
    for (flag, on) in [("--no-preallocate", &mut a.no_preallocate), ("--transient-pool", &mut a.transient_pool)] {
        if let Some(i) = v.iter().position(|f| f == flag) {
            *on = true;
            v.remove(i);
        }
    }
    for pair in v.chunks(2) {
        let val = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--cl-file-mb" => a.cl_file_mb = val.parse().expect("--cl-file-mb N"),
            "--dir" => a.dir = PathBuf::from(val),
            "--mb" => a.mb = val.parse().expect("--mb N"),
            "--sync-single" => a.sync_single = val.parse().expect("--sync-single N"),
            "--sync-each" => a.sync_each = val.parse().expect("--sync-each N"),
            "--only" => a.only = Some(val),
            "--repeat" => a.repeat = val.parse().expect("--repeat N"),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn line(name: &str, msgs: u64, bytes: u64, secs: f64, raw_mb_s: f64) -> f64 {
    let mb_s = bytes as f64 / secs / 1e6;
    println!(
        "{name:<28} {:>12.0} msgs/s {:>10.1} MB/s  {:>6.1}% of raw  ({msgs} msgs in {secs:.2} s)",
        msgs as f64 / secs,
        mb_s,
        100.0 * mb_s / raw_mb_s
    );
    msgs as f64 / secs
}

/// Sequential 1 MiB writes into a fresh file through the same storage seam: page cache only,
/// or (`synced`) until an `fdatasync` has made them durable, the disk's own bandwidth.
async fn raw_bandwidth(dir: &Path, total: u64, synced: bool) -> f64 {
    let st = RealStorage::new();
    let path = dir.join("raw");
    let _ = std::fs::remove_file(&path);
    let f = st.create(&path).unwrap();
    f.set_len(total).unwrap();
    let chunk = vec![0x5Au8; 1 << 20];
    let t = Instant::now();
    let mut at = 0;
    while at < total {
        f.write_at(at, &chunk).unwrap();
        at += chunk.len() as u64;
    }
    if synced {
        f.sync_range(0, total).await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path).unwrap();
    let mb_s = total as f64 / secs / 1e6;
    let name = if synced { "raw disk write (synced)" } else { "raw page-cache write" };
    println!("{name:<28} {:>12} {mb_s:>17.1} MB/s  (1 MiB writes, {} MiB in {secs:.2} s)", "", total >> 20);
    mb_s
}

/// The store layout the options ask for.
fn shape(a: &Args) -> StoreShape {
    StoreShape { cl_file_mb: a.cl_file_mb, preallocate: !a.no_preallocate }
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// CPU time and context switches of the calling thread (`libc::RUSAGE_THREAD`) or of the
/// whole process (`libc::RUSAGE_SELF`).
fn usage(who: libc::c_int) -> (f64, f64, i64, i64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(u.ru_utime), secs(u.ru_stime), u.ru_nvcsw, u.ru_nivcsw)
}

async fn run_async(a: &Args, raw: f64, body: &[u8]) {
    let mode = if a.transient_pool { FlushMode::TransientPool } else { FlushMode::Async };
    let store = open(shape(a), &a.dir.join("async"), mode).await;
    let n = (a.mb << 20) / MSG_BYTES as u64;
    let (before, process_before) = (usage(libc::RUSAGE_THREAD), usage(libc::RUSAGE_SELF));
    let t = Instant::now();
    let mut bytes = 0u64;
    for i in 0..n {
        let r = store.put("Bench", (i % 8) as u32, body, None, &[]).await.unwrap();
        bytes += u64::from(r.size_bytes);
    }
    let put_secs = t.elapsed().as_secs_f64();
    line("async flush, 1 KiB", n, bytes, put_secs, raw);
    let (after, process_after) = (usage(libc::RUSAGE_THREAD), usage(libc::RUSAGE_SELF));
    // Dispatch (consume queues, key index) runs behind the appends: how far, and the rate
    // once it has caught up, end to end.
    let behind_bytes = store.dispatch_behind_bytes();
    while store.dispatch_behind_bytes() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let all_secs = t.elapsed().as_secs_f64();
    let process_caught_up = usage(libc::RUSAGE_SELF);
    let per_msg_us = |secs: f64| secs * 1e6 / n as f64;
    println!(
        "{:<28} {:>12.2} us user + {:.2} us system CPU per message ({} waits, {} preemptions)",
        "  producer thread",
        per_msg_us(after.0 - before.0),
        per_msg_us(after.1 - before.1),
        after.2 - before.2,
        after.3 - before.3
    );
    // Dispatch, flush and pre-faulting run beside the producer: on 2 vCPUs their CPU is what
    // preempts it. (Work still running after the last put, dispatch catching up, is not in
    // it; the dispatch line below counts it.)
    println!(
        "{:<28} {:>12.2} us user + {:.2} us system CPU per message",
        "  whole process",
        per_msg_us(process_after.0 - process_before.0),
        per_msg_us(process_after.1 - process_before.1)
    );
    println!(
        "{:<28} {:>12.0} msgs/s end to end: {:.1} MiB behind at the last put, caught up {:.2} s later; \
         {:.2} us user + {:.2} us system CPU per message",
        "  dispatch",
        n as f64 / all_secs,
        behind_bytes as f64 / f64::from(1 << 20),
        all_secs - put_secs,
        per_msg_us(process_caught_up.0 - process_before.0),
        per_msg_us(process_caught_up.1 - process_before.1)
    );
    store.shutdown().await.unwrap();
}

async fn run_sync_single(a: &Args, raw: f64, body: &[u8]) -> f64 {
    let store = open(shape(a), &a.dir.join("sync1"), FlushMode::Sync).await;
    first_file(&store, body).await;
    let t = Instant::now();
    let mut bytes = 0u64;
    for i in 0..a.sync_single {
        bytes += u64::from(store.put("Bench", (i % 8) as u32, body, None, &[]).await.unwrap().size_bytes);
    }
    let rate = line("sync flush, 1 producer", a.sync_single, bytes, t.elapsed().as_secs_f64(), raw);
    group_commit_line(&store);
    store.shutdown().await.unwrap();
    rate
}

async fn run_sync_many(a: &Args, raw: f64, body: &[u8]) -> f64 {
    let store = Arc::new(open(shape(a), &a.dir.join("sync64"), FlushMode::Sync).await);
    first_file(&store, body).await;
    let run = sync_flush::producers(&store, 64, a.sync_each, body).await;
    let rate = line("sync flush, 64 producers", run.msgs, run.bytes, run.secs, raw);
    group_commit_line(&store);
    store.shutdown().await.unwrap();
    rate
}

#[tokio::main]
async fn main() {
    let a = args();
    std::fs::create_dir_all(&a.dir).unwrap();
    // The page cache's state (dirty limits, writeback under way) moves a single raw figure by
    // up to 4x on a VM; the ratio is taken against the median of three.
    let mut raws = Vec::new();
    for _ in 0..3 {
        raws.push(raw_bandwidth(&a.dir, a.mb << 20, false).await);
    }
    let raw = median(&mut raws).expect("three passes");
    println!("{:<28} {:>12} {:>17.1} MB/s  (median of 3)", "raw page-cache write", "", raw);
    // For scale: what the disk itself persists (the async store runs ahead of it in the cache).
    raw_bandwidth(&a.dir, (a.mb << 20).min(256 << 20), true).await;
    let body = vec![0x42u8; MSG_BYTES];
    println!(
        "commit-log files of {} MiB, {}",
        a.cl_file_mb,
        if a.no_preallocate {
            "sparse (--no-preallocate)"
        } else {
            "preallocated (sync runs: zero-filled before use; async: blocks allocated)"
        }
    );
    let wants = |part: &str| a.only.as_deref().is_none_or(|o| part.starts_with(o));
    let (mut singles, mut manys) = (Vec::new(), Vec::new());
    for _ in 0..a.repeat {
        if wants("async") {
            run_async(&a, raw, &body).await;
        }
        if wants("sync1") {
            singles.push(run_sync_single(&a, raw, &body).await);
        }
        if wants("sync64") {
            manys.push(run_sync_many(&a, raw, &body).await);
        }
    }
    if let (Some(single), Some(many)) = (median(&mut singles), median(&mut manys)) {
        println!(
            "sync 64 producers / 1 producer: {:.1}x  (medians of {}: {single:.0} and {many:.0} msgs/s)",
            many / single,
            a.repeat
        );
    }
    let _ = std::fs::remove_dir_all(&a.dir);
}
