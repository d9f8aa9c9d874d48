//! Regression: two flushes at once. A directory sync takes every pending directory, so a
//! second caller found nothing pending and returned at once, while the first caller's sync of
//! the same directories was still in flight and then failed: the second caller's flush called
//! its data durable although the file's directory entry was not (broker seeds 51539, 56482,
//! 64197; a power loss then lost the whole file).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use engine::mapped_file_queue::DirSyncs;

#[tokio::test]
async fn a_directory_sync_in_flight_is_waited_for_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let storage = TestStorage::new();
    let dirs = Arc::new(DirSyncs::new(false));
    dirs.mark(dir.path());
    storage.c.slow_failing_dir_sync_ms.store(50, Ordering::SeqCst);
    let t0 = tokio::time::Instant::now();
    let first = {
        let (dirs, storage) = (dirs.clone(), storage.clone());
        tokio::spawn(async move { dirs.sync(storage.as_ref()).await })
    };
    // Let the first caller take the pending set and start its (slow, failing) sync.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let second = dirs.sync(storage.as_ref()).await;
    assert!(t0.elapsed() >= Duration::from_millis(50), "the second caller waited for the first");
    assert!(first.await.unwrap().is_err(), "the first sync failed");
    assert!(second.is_ok(), "the second caller synced the directory itself: {second:?}");
    assert_eq!(storage.c.dir_syncs.load(Ordering::SeqCst), 2, "the failed directory was synced again");
    assert!(dirs.is_empty());
}
