//! Appends N messages to a store on the real disk, restarts it, and reads them back.
//!
//! `RUSTFLAGS="" cargo run --release --target-dir target/std -p engine --example append_restart -- [N] [DIR]`

use std::sync::Arc;

use engine::io::real::RealStorage;
use engine::io::SystemClock;
use engine::{Store, StoreConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = args
        .get(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("engine-append-restart-{}", std::process::id())));
    let cfg = StoreConfig {
        root_dir: dir.clone(),
        commit_log_file_size_bytes: 16 << 20,
        cq_units_per_file: 100_000,
        index_max_hash_slots: 100_000,
        index_max_items: 400_000,
        ..StoreConfig::default()
    };
    let open = || Store::open(cfg.clone(), Arc::new(RealStorage::new()), Arc::new(SystemClock));
    let store = open().await?;
    store.start()?;
    let before = store.max_offset("Example", 0);
    for i in 0..n {
        store.put("Example", 0, format!("message {i}").as_bytes(), None, &[&format!("k{i}")]).await?;
    }
    store.shutdown().await?;
    drop(store);
    let store = open().await?;
    let rep = store.last_recovery();
    let got = store.get("Example", 0, before, n as usize)?;
    assert_eq!(got.len() as u64, n, "every message is back");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.body, format!("message {i}").as_bytes());
    }
    println!(
        "appended {n} messages, restarted ({:?} recovery, log end {}), read {} back from {}",
        rep.kind,
        rep.commit_log_end,
        got.len(),
        dir.display()
    );
    store.shutdown().await?;
    Ok(())
}
