//! Regression (broker scenario, seed 866 of a 2,000-seed sweep): in transient-pool mode the
//! store's `committed_offset` was the *last* file's start plus its committed position. Right
//! after a roll the new file has committed nothing, so the store claimed the whole previous
//! file was in the page cache while its tail still sat in the write buffer; a process crash
//! then lost messages the store had reported committed. The first file with uncommitted bytes
//! must bound the committed offset (as it bounds the flushed offset).

mod common;

use common::*;
use engine::FlushMode;

#[tokio::test]
async fn committed_offset_is_bounded_by_an_uncommitted_earlier_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.flush_mode = FlushMode::TransientPool;
    // Nothing is committed in the background: only `flush_all` commits.
    cfg.commit_interval_commit_log_ms = 1_000_000;
    cfg.commit_commit_log_thorough_interval_ms = 1_000_000;
    cfg.commit_commit_log_least_pages = 1_000;
    let storage = TestStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let file_size = cfg.commit_log_file_size_bytes;
    let store = open(&cfg, &storage, &clock).await;
    store.start().unwrap();
    let body = vec![7u8; 1000];
    // Part of the first file committed into it...
    while store.max_phy_offset() < file_size / 2 {
        store.put("T", 0, &body, None, &[]).await.unwrap();
    }
    store.flush_all().await.unwrap();
    let in_file = store.max_phy_offset();
    assert_eq!(store.committed_offset(), in_file);
    // ...then its tail only in the write buffer, and a roll into a second (buffered) file.
    while store.max_phy_offset() < file_size + 2_000 {
        store.put("T", 0, &body, None, &[]).await.unwrap();
    }
    let claimed = store.committed_offset();
    // Before the fix: `file_size` (the new file's start plus its committed 0).
    assert_eq!(claimed, in_file, "the first file's uncommitted tail bounds the committed offset");
    // A process crash keeps what is in the files and loses the write buffers: everything the
    // store called committed must survive it.
    drop(store);
    let store = open(&cfg, &storage, &clock).await;
    assert!(
        store.max_phy_offset() >= claimed,
        "recovered end {} below the committed offset {claimed} reported before the crash",
        store.max_phy_offset()
    );
}
