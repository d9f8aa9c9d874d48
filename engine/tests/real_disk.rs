//! The same engine on the real disk and the real clock (std::fs + memmap2 through
//! `io::real`): put, clean restart, read back; a crash-like reopen takes the abnormal path.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use engine::io::real::RealStorage;
use engine::io::{StorageFile, SystemClock};
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

/// A sparse file of `len` bytes on the real disk (checked: no block allocated yet).
fn sparse_file(dir: &Path, name: &str, len: u64) -> (std::path::PathBuf, Arc<dyn StorageFile>) {
    use engine::io::Storage;
    let path = dir.join(name);
    let file = RealStorage::new().create(&path).unwrap();
    file.set_len(len).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().blocks(), 0, "set_len leaves the file sparse");
    (path, file)
}

/// Every block of the file at `path` is allocated, and the file is `len` bytes of zeros.
fn assert_allocated_zeros(path: &Path, file: &dyn StorageFile, len: u64) {
    use engine::io::storage::StorageFileExt;
    assert!(std::fs::metadata(path).unwrap().blocks() * 512 >= len, "every block allocated");
    assert_eq!(file.len().unwrap(), len);
    assert!(file.read_all().unwrap().iter().all(|&b| b == 0));
}

/// `StorageFile::preallocate` on the real disk: every block of a sparse file is written
/// (zeros), so a later sync allocates nothing.
#[tokio::test]
async fn preallocate_writes_every_block_with_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let len = (1 << 20) + 4096 * 3;
    let (path, file) = sparse_file(dir.path(), "fresh", len);
    file.preallocate().await.unwrap();
    assert_allocated_zeros(&path, file.as_ref(), len);
}

/// `reserve_blocks` allocates every block of the file without writing it: the length and
/// the zeros stay, and data written afterwards reads back.
#[tokio::test]
async fn reserve_blocks_allocates_every_block_and_keeps_the_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let len = (1 << 20) + 4096 * 3;
    let (path, file) = sparse_file(dir.path(), "reserved", len);
    file.reserve_blocks().await.unwrap();
    assert_allocated_zeros(&path, file.as_ref(), len);
    file.write_at(4096, b"after").unwrap();
    file.sync_range(4096, 5).await.unwrap();
    let mut back = [0u8; 5];
    file.read_at(4096, &mut back).unwrap();
    assert_eq!(&back, b"after");
}

/// The store keeps a spare commit-log file ready and rolls into it (zero-filled under sync
/// flush, its blocks reserved under async flush): a fresh store's first file and a file the
/// log rolls into while a spare is ready have all their blocks before any data lands in
/// them, the data reads back after a restart, and with `preallocate_commit_log` off new
/// files are sparse.
#[tokio::test]
async fn commit_log_rolls_into_preallocated_spares() {
    let modes = [engine::FlushMode::Sync, engine::FlushMode::Async];
    for (flush_mode, preallocate) in modes.into_iter().flat_map(|m| [(m, true), (m, false)]) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            flush_mode,
            preallocate_commit_log: preallocate,
            ..StoreConfig::small(dir.path().join("store"))
        };
        let file_size = cfg.commit_log_file_size_bytes;
        let cl_dir = dir.path().join("store/commitlog");
        let allocated = |off: u64| {
            let m = std::fs::metadata(cl_dir.join(format!("{off:020}"))).unwrap();
            m.blocks() * 512 >= file_size
        };
        let store = open(&cfg).await;
        assert_eq!(cl_dir.join("spare").exists(), preallocate, "a fresh store's open prepares the first spare");
        store.start().unwrap();
        let mut n = 0u32;
        let put = async |n: &mut u32| {
            store.put("Real", *n % 2, &[*n as u8; 700], None, &[]).await.unwrap();
            *n += 1;
        };
        put(&mut n).await;
        assert_eq!(
            allocated(0),
            preallocate,
            "the first file holds one record ({flush_mode:?}, preallocate: {preallocate})"
        );
        for _ in 0..3 {
            // Past half of the file the allocation service prepares the next spare; once it
            // is ready, roll into it.
            while store.max_phy_offset() % file_size < file_size / 2 {
                put(&mut n).await;
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while preallocate && !cl_dir.join("spare").exists() {
                assert!(std::time::Instant::now() < deadline, "no spare prepared");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let next = (store.max_phy_offset() / file_size + 1) * file_size;
            while store.max_phy_offset() < next {
                put(&mut n).await;
            }
            put(&mut n).await;
            assert_eq!(
                allocated(next),
                preallocate,
                "file {next} holds one record ({flush_mode:?}, preallocate: {preallocate})"
            );
        }
        let end = store.max_phy_offset();
        store.shutdown().await.unwrap();
        drop(store);
        let store = open(&cfg).await;
        assert_eq!(store.max_phy_offset(), end);
        assert!(!cl_dir.join("spare").exists() || preallocate, "spares only when preallocating");
        let total: usize = (0..2).map(|q| store.get("Real", q, 0, 10_000).unwrap().len()).sum();
        assert_eq!(total, n as usize, "every acknowledged put reads back");
        let last = store.get("Real", (n - 1) % 2, 0, 10_000).unwrap().pop().unwrap();
        assert_eq!(last.body, vec![(n - 1) as u8; 700]);
        store.shutdown().await.unwrap();
    }
}
