//! The same engine on the real disk and the real clock (std::fs + memmap2 through
//! `io::real`): put, clean restart, read back; a crash-like reopen takes the abnormal path.

use std::sync::Arc;

use engine::io::real::RealStorage;
use engine::io::SystemClock;
use engine::recovery::RecoveryKind;
use engine::{Store, StoreConfig};

async fn open(cfg: &StoreConfig) -> Store {
    Store::open(cfg.clone(), Arc::new(RealStorage::new()), Arc::new(SystemClock)).await.expect("open")
}

#[tokio::test]
async fn put_restart_get_and_crash_reopen_on_the_real_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::small(dir.path().join("store"));
    let store = open(&cfg).await;
    store.start().unwrap();
    let mut puts = Vec::new();
    for i in 0..500u32 {
        let key = format!("key-{i}");
        puts.push(store.put("Real", i % 4, &[i as u8; 300], Some("t"), &[&key]).await.unwrap());
    }
    let end = store.max_phy_offset();
    store.shutdown().await.unwrap();
    drop(store);
    assert!(!dir.path().join("store/abort").exists());

    let store = open(&cfg).await;
    assert_eq!(store.last_recovery().kind, RecoveryKind::Normal);
    assert_eq!(store.max_phy_offset(), end);
    for q in 0..4 {
        let got = store.get("Real", q, 0, 1000).unwrap();
        assert_eq!(got.len(), 125);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.body, vec![(q as usize + 4 * i) as u8; 300]);
        }
    }
    assert_eq!(store.query_by_key("Real", "key-42", 0, i64::MAX, 4).unwrap()[0].phy_offset, puts[42].phy_offset);
    store.start().unwrap();
    let more = store.put("Real", 0, b"after restart", None, &[]).await.unwrap();
    assert_eq!(more.queue_offset, 125);
    drop(store); // crash: no shutdown

    let store = open(&cfg).await;
    let rep = store.last_recovery();
    assert_eq!(rep.kind, RecoveryKind::Abnormal);
    assert_eq!(rep.commit_log_end, more.phy_offset + u64::from(more.size_bytes));
    assert_eq!(store.max_offset("Real", 0), 126);
    assert_eq!(store.get("Real", 0, 125, 1).unwrap()[0].body, b"after restart");
    store.shutdown().await.unwrap();
}

/// `with_preallocated_small_sync_files`: a file hinted for small syncs that was never written
/// gets every block written (zeros); a file holding data is left as it is.
#[tokio::test]
async fn preallocation_fills_only_files_never_written() {
    use engine::io::storage::StorageFileExt;
    use engine::io::Storage;
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let st = RealStorage::new().with_preallocated_small_sync_files();
    let len = (1 << 20) + 4096 * 3;
    let fresh_path = dir.path().join("fresh");
    let fresh = st.create(&fresh_path).unwrap();
    fresh.set_len(len).unwrap();
    assert_eq!(std::fs::metadata(&fresh_path).unwrap().blocks(), 0, "set_len leaves the file sparse");
    fresh.hint_small_syncs();
    assert!(std::fs::metadata(&fresh_path).unwrap().blocks() * 512 >= len, "every block written");
    assert!(fresh.read_all().unwrap().iter().all(|&b| b == 0));
    fresh.write_at(4096, b"after").unwrap();
    let mut back = [0u8; 5];
    fresh.read_at(4096, &mut back).unwrap();
    assert_eq!(&back, b"after");

    let used_path = dir.path().join("used");
    let used = st.create(&used_path).unwrap();
    used.set_len(64 * 1024).unwrap();
    used.write_at(100, b"data").unwrap();
    used.sync_all().await.unwrap();
    used.hint_small_syncs();
    let mut kept = [0u8; 4];
    used.read_at(100, &mut kept).unwrap();
    assert_eq!(&kept, b"data", "a written file is never overwritten with zeros");
    let plain = RealStorage::new().create(&dir.path().join("plain")).unwrap();
    plain.set_len(len).unwrap();
    plain.hint_small_syncs();
    assert_eq!(std::fs::metadata(dir.path().join("plain")).unwrap().blocks(), 0, "off unless asked for");
}
