//! The real-kernel check of the process-crash model: `write` runs producers against a store on
//! a real directory until it is killed (`kill -9`, by `scripts/kill9.sh`); `check` reopens the
//! store (recovery after the crash) and checks what the simulated process crash promises: the
//! page cache survives, so every acknowledged message is there, and each queue is a gapless
//! prefix of what its producer sent, readable by offset and by key.
//!
//! `RUSTFLAGS="" cargo build --release --target-dir /work/main/target/std -p engine --examples`
//!
//!   kill9 write DIR [QUEUES]   produce until killed; acks go to DIR/acks-<pid>.log
//!   kill9 check DIR            recover and check; prints `violations N` (exit 1 if N > 0)
//!
//! One producer per queue sends body `q<queue>:<offset>:` + padding with key `k<queue>-<offset>`,
//! in order, so a message's queue offset fixes its body. The flush mode is drawn per boot from
//! the pid (sync or async: both acknowledge only what is in the page cache or on disk, which a
//! process crash keeps).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::io::real::RealStorage;
use engine::io::SystemClock;
use engine::{FlushMode, Store, StoreConfig};

const TOPIC: &str = "Kill9";

fn config(dir: &Path, mode: FlushMode) -> StoreConfig {
    StoreConfig {
        root_dir: dir.join("store"),
        commit_log_file_size_bytes: 1 << 20,
        max_message_size_bytes: 64 << 10,
        cq_units_per_file: 4_096,
        index_max_hash_slots: 4_096,
        index_max_items: 16_384,
        flush_mode: mode,
        ..StoreConfig::default()
    }
}

fn body(queue: u32, offset: u64) -> Vec<u8> {
    let mut b = format!("q{queue}:{offset}:").into_bytes();
    // Sizes vary so that records straddle pages and file ends differently.
    b.resize(b.len() + (offset as usize * 37 + queue as usize * 101) % 700, b'x');
    b
}

fn key(queue: u32, offset: u64) -> String {
    format!("k{queue}-{offset}")
}

async fn write(dir: PathBuf, queues: u32) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mode = if std::process::id() % 2 == 0 { FlushMode::Sync } else { FlushMode::Async };
    let store = Arc::new(Store::open(config(&dir, mode), Arc::new(RealStorage::new()), Arc::new(SystemClock)).await?);
    store.start()?;
    let acks = Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("acks-{}.log", std::process::id())))?,
    ));
    eprintln!("writing with {mode:?} flush");
    let mut tasks = Vec::new();
    for queue in 0..queues {
        let (store, acks) = (store.clone(), acks.clone());
        tasks.push(tokio::spawn(async move {
            let mut offset = store.max_offset(TOPIC, queue);
            loop {
                let k = key(queue, offset);
                let r = store.put(TOPIC, queue, &body(queue, offset), None, &[&k]).await;
                match r {
                    Ok(r) if r.queue_offset == offset => {
                        // The ack is written after the put returned: a line here is a promise.
                        let line = format!("{queue} {offset}\n");
                        let mut f = acks.lock().unwrap_or_else(|e| e.into_inner());
                        if f.write_all(line.as_bytes()).is_err() {
                            return;
                        }
                        offset += 1;
                    }
                    Ok(r) => {
                        eprintln!("queue {queue}: put at {offset} got queue offset {}", r.queue_offset);
                        return;
                    }
                    Err(e) => {
                        eprintln!("queue {queue}: put failed: {e}");
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Every acknowledged (queue, offset) in the ack logs.
fn acked(dir: &Path) -> std::io::Result<BTreeMap<u32, u64>> {
    let mut max_acked = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !(name.starts_with("acks-") && name.ends_with(".log")) {
            continue;
        }
        // A line cut by the kill is not an ack: only whole lines count.
        for line in std::fs::read_to_string(&path)?.lines() {
            let mut it = line.split(' ');
            if let (Some(Ok(q)), Some(Ok(o))) = (it.next().map(str::parse::<u32>), it.next().map(str::parse::<u64>)) {
                let m = max_acked.entry(q).or_insert(0);
                *m = (*m).max(o + 1);
            }
        }
    }
    Ok(max_acked)
}

async fn check(dir: PathBuf) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let acked = acked(&dir)?;
    let store = Store::open(config(&dir, FlushMode::Sync), Arc::new(RealStorage::new()), Arc::new(SystemClock)).await?;
    let rep = store.last_recovery();
    let mut violations = Vec::new();
    let queues: Vec<u32> =
        acked.keys().copied().chain(0..8).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let mut total = 0u64;
    for queue in queues {
        let want = acked.get(&queue).copied().unwrap_or(0);
        let (min, max) = (store.min_offset(TOPIC, queue), store.max_offset(TOPIC, queue));
        if max < want {
            violations.push(format!("queue {queue}: {want} messages acknowledged, only {max} recovered"));
        }
        if min != 0 {
            violations.push(format!("queue {queue}: starts at {min}, not 0"));
        }
        let mut offset = 0;
        while offset < max {
            let got = store.get(TOPIC, queue, offset, 256)?;
            if got.is_empty() {
                violations.push(format!("queue {queue}: no message at {offset} below the end {max}"));
                break;
            }
            for m in got {
                if m.queue_offset != offset || m.body != body(queue, offset) || m.keys != vec![key(queue, offset)] {
                    violations.push(format!("queue {queue}: offset {offset} holds another message"));
                }
                offset += 1;
            }
        }
        total += max;
        // The key index: the last acknowledged message and one in the middle.
        for o in [want.saturating_sub(1), want / 2].into_iter().filter(|_| want > 0) {
            let found = store.query_by_key(TOPIC, &key(queue, o), 0, i64::MAX, 4)?;
            if !found.iter().any(|m| m.queue_offset == o && m.queue_id == queue) {
                violations.push(format!("queue {queue}: key {} not found", key(queue, o)));
            }
        }
    }
    println!(
        "recovered {total} messages ({:?} recovery, log end {}); acknowledged {}",
        rep.kind,
        rep.commit_log_end,
        acked.values().sum::<u64>()
    );
    for v in &violations {
        println!("violation: {v}");
    }
    println!("violations {}", violations.len());
    store.shutdown().await?;
    Ok(violations.len())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: kill9 write DIR [QUEUES] | kill9 check DIR";
    let dir = PathBuf::from(args.get(2).ok_or(usage)?);
    match args.get(1).map(String::as_str) {
        Some("write") => {
            let queues: u32 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(4);
            std::fs::create_dir_all(&dir)?;
            write(dir, queues).await
        }
        Some("check") => {
            if check(dir).await? > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        _ => Err(usage.into()),
    }
}
