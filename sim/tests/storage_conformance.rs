//! One conformance suite for the storage seam, written once over `Arc<dyn Storage>` and run
//! against both backends: the real one (`RealStorage` on a temporary directory) and the
//! simulated disk (`SimDisk::storage()`, faults off). Whatever the engine may rely on of a
//! backend is asserted here, so the simulation cannot drift from the real disk unnoticed.
//!
//! Both run inside a madsim runtime on a fresh thread: the real backend's futures resolve at
//! once, the simulated one's sleep in simulated time.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::io::real::RealStorage;
use engine::io::storage::{DirEntry, IoError, Storage, StorageFileExt};
use sim::disk::{DiskConfig, SimDisk};
use sim::Trace;

/// Runs `check` on the real disk, under a fresh temporary directory.
fn on_real<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn Storage>, PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let root = dir.path().join("store");
    sim::runner::block_on(1, move || async move {
        let storage: Arc<dyn Storage> = Arc::new(RealStorage::new());
        storage.create_dir_all(&root).unwrap();
        check(storage, root).await;
    });
    drop(dir);
}

/// Runs `check` on a fresh simulated disk, under `/store`.
fn on_sim<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn Storage>, PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    sim::runner::block_on(1, move || async move {
        let trace = Trace::new(false);
        trace.start_clock();
        let disk = SimDisk::new("conformance", DiskConfig::default(), 1, trace);
        let storage = disk.storage();
        let root = PathBuf::from("/store");
        storage.create_dir_all(&root).unwrap();
        check(storage, root).await;
    });
}

/// Declares each check once per backend: `real::name` and `sim_disk::name`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod real {
            $( #[test] fn $name() { super::on_real(super::$name) } )*
        }
        mod sim_disk {
            $( #[test] fn $name() { super::on_sim(super::$name) } )*
        }
    };
}

conformance!(
    create_open_exists,
    create_existing_is_already_exists,
    open_missing_is_not_found,
    create_in_missing_directory_is_not_found,
    open_directory_is_not_a_file,
    create_dir_all_is_idempotent,
    list_dir_is_sorted,
    rename_replaces_the_target,
    remove_file_and_remove_dir,
    remove_dir_refuses_non_empty,
    read_past_end_reads_nothing,
    write_past_end_extends_with_zeros,
    set_len_truncates_and_extends,
    sync_range_sync_all_and_sync_dir_succeed,
    handles_share_one_file,
    lock_is_exclusive_until_dropped,
);

async fn create_open_exists(storage: Arc<dyn Storage>, root: PathBuf) {
    let path = root.join("00000000000000000000");
    assert!(!storage.exists(&path));
    let f = storage.create(&path).unwrap();
    assert_eq!(f.path(), path.as_path());
    assert!(storage.exists(&path));
    assert!(storage.exists(&root), "directories exist too");
    assert_eq!(f.len().unwrap(), 0);
    let g = storage.open(&path).unwrap();
    assert_eq!(g.len().unwrap(), 0);
}

async fn create_existing_is_already_exists(storage: Arc<dyn Storage>, root: PathBuf) {
    let path = root.join("f");
    storage.create(&path).unwrap();
    assert!(matches!(storage.create(&path), Err(IoError::AlreadyExists { .. })));
}

async fn open_missing_is_not_found(storage: Arc<dyn Storage>, root: PathBuf) {
    let err = storage.open(&root.join("missing")).unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(matches!(storage.list_dir(&root.join("missing")), Err(IoError::NotFound { .. })));
    assert!(matches!(storage.remove_file(&root.join("missing")), Err(IoError::NotFound { .. })));
}

async fn create_in_missing_directory_is_not_found(storage: Arc<dyn Storage>, root: PathBuf) {
    assert!(matches!(storage.create(&root.join("no/such/dir/f")), Err(IoError::NotFound { .. })));
}

async fn open_directory_is_not_a_file(storage: Arc<dyn Storage>, root: PathBuf) {
    storage.create_dir_all(&root.join("d")).unwrap();
    assert!(matches!(storage.open(&root.join("d")), Err(IoError::NotAFile { .. })));
    assert!(storage.remove_file(&root.join("d")).is_err());
}

async fn create_dir_all_is_idempotent(storage: Arc<dyn Storage>, root: PathBuf) {
    let deep = root.join("a/b/c");
    storage.create_dir_all(&deep).unwrap();
    storage.create_dir_all(&deep).unwrap();
    assert!(storage.exists(&root.join("a/b")));
    storage.create(&deep.join("f")).unwrap();
    let expect = vec![DirEntry { name: "b".into(), is_dir: true }];
    assert_eq!(storage.list_dir(&root.join("a")).unwrap(), expect);
}

async fn list_dir_is_sorted(storage: Arc<dyn Storage>, root: PathBuf) {
    for name in ["00000000000000065536", "00000000000000000000", "checkpoint", "abort"] {
        storage.create(&root.join(name)).unwrap();
    }
    storage.create_dir_all(&root.join("consumequeue/topic/0")).unwrap();
    let names: Vec<(String, bool)> = storage.list_dir(&root).unwrap().into_iter().map(|e| (e.name, e.is_dir)).collect();
    let expect = [
        ("00000000000000000000", false),
        ("00000000000000065536", false),
        ("abort", false),
        ("checkpoint", false),
        ("consumequeue", true),
    ];
    assert_eq!(names, expect.map(|(n, d)| (n.to_string(), d)).to_vec());
    assert!(storage.list_dir(&root.join("consumequeue/topic/0")).unwrap().is_empty());
}

async fn rename_replaces_the_target(storage: Arc<dyn Storage>, root: PathBuf) {
    let (target, tmp) = (root.join("checkpoint"), root.join("checkpoint.tmp"));
    storage.create(&target).unwrap().write_at(0, b"old contents").unwrap();
    storage.create(&tmp).unwrap().write_at(0, b"new").unwrap();
    storage.rename(&tmp, &target).unwrap();
    assert!(!storage.exists(&tmp));
    assert_eq!(storage.open(&target).unwrap().read_all().unwrap(), b"new".to_vec());
    // A plain move to a new name works too.
    storage.rename(&target, &root.join("moved")).unwrap();
    assert!(!storage.exists(&target));
    assert_eq!(storage.open(&root.join("moved")).unwrap().read_all().unwrap(), b"new".to_vec());
    assert!(matches!(storage.rename(&root.join("missing"), &target), Err(IoError::NotFound { .. })));
}

async fn remove_file_and_remove_dir(storage: Arc<dyn Storage>, root: PathBuf) {
    let path = root.join("f");
    storage.create(&path).unwrap();
    storage.remove_file(&path).unwrap();
    assert!(!storage.exists(&path));
    assert!(storage.open(&path).unwrap_err().is_not_found());
    let dir = root.join("d");
    storage.create_dir_all(&dir).unwrap();
    storage.remove_dir(&dir).unwrap();
    assert!(!storage.exists(&dir));
    assert!(storage.list_dir(&root).unwrap().is_empty());
}

async fn remove_dir_refuses_non_empty(storage: Arc<dyn Storage>, root: PathBuf) {
    let dir = root.join("d");
    storage.create_dir_all(&dir).unwrap();
    storage.create(&dir.join("f")).unwrap();
    assert!(matches!(storage.remove_dir(&dir), Err(IoError::NotAFile { .. })));
    assert!(storage.exists(&dir.join("f")));
    storage.remove_file(&dir.join("f")).unwrap();
    storage.remove_dir(&dir).unwrap();
}

async fn read_past_end_reads_nothing(storage: Arc<dyn Storage>, root: PathBuf) {
    let f = storage.create(&root.join("f")).unwrap();
    f.write_at(0, b"0123456789").unwrap();
    let mut buf = [0xEEu8; 5];
    match f.read_at(8, &mut buf) {
        Err(IoError::ReadPastEnd { offset: 8, len: 5, file_len: 10, .. }) => {}
        other => panic!("expected ReadPastEnd, got {other:?}"),
    }
    assert_eq!(buf, [0xEE; 5], "a failed read leaves the buffer alone");
    assert!(matches!(f.read_at(u64::MAX, &mut buf), Err(IoError::ReadPastEnd { .. })));
    f.read_at(5, &mut buf).unwrap();
    assert_eq!(&buf, b"56789");
    f.read_at(10, &mut []).expect("an empty read at the end is fine");
}

async fn write_past_end_extends_with_zeros(storage: Arc<dyn Storage>, root: PathBuf) {
    let f = storage.create(&root.join("f")).unwrap();
    f.write_at(0, b"head").unwrap();
    f.write_at(100, b"xy").unwrap();
    assert_eq!(f.len().unwrap(), 102);
    let all = f.read_all().unwrap();
    assert_eq!(&all[..4], b"head");
    assert!(all[4..100].iter().all(|&b| b == 0), "the gap reads zeros");
    assert_eq!(&all[100..], b"xy");
    // Overwrite inside and across the end.
    f.write_at(101, b"YZ").unwrap();
    assert_eq!(f.len().unwrap(), 103);
    assert_eq!(&f.read_all().unwrap()[100..], b"xYZ");
}

async fn set_len_truncates_and_extends(storage: Arc<dyn Storage>, root: PathBuf) {
    let f = storage.create(&root.join("f")).unwrap();
    f.write_at(0, &[7u8; 10_000]).unwrap();
    f.set_len(5).unwrap();
    assert_eq!(f.len().unwrap(), 5);
    f.set_len(8_192).unwrap();
    let all = f.read_all().unwrap();
    assert_eq!(all.len(), 8_192);
    assert_eq!(&all[..5], &[7u8; 5]);
    assert!(all[5..].iter().all(|&b| b == 0), "extension reads zeros, not the old bytes");
}

async fn sync_range_sync_all_and_sync_dir_succeed(storage: Arc<dyn Storage>, root: PathBuf) {
    let f = storage.create(&root.join("f")).unwrap();
    f.set_len(16_384).unwrap();
    f.write_at(4_096, &[1u8; 4_096]).unwrap();
    f.sync_range(4_096, 4_096).await.unwrap();
    f.write_at(0, b"x").unwrap();
    f.sync_all().await.unwrap();
    storage.sync_dir(&root).await.unwrap();
    let mut buf = [0u8; 1];
    f.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"x");
    assert_eq!(f.len().unwrap(), 16_384);
}

async fn handles_share_one_file(storage: Arc<dyn Storage>, root: PathBuf) {
    let path = root.join("f");
    let writer = storage.create(&path).unwrap();
    let reader = storage.open(&path).unwrap();
    writer.write_at(0, b"shared").unwrap();
    assert_eq!(reader.len().unwrap(), 6);
    assert_eq!(reader.read_all().unwrap(), b"shared".to_vec());
    drop(writer);
    assert_eq!(storage.open(&path).unwrap().read_all().unwrap(), b"shared".to_vec());
}

async fn lock_is_exclusive_until_dropped(storage: Arc<dyn Storage>, root: PathBuf) {
    let path: &Path = &root.join("lock");
    let first = storage.lock(path).unwrap();
    assert_eq!(first.path(), path);
    assert!(storage.exists(path), "lock creates the file");
    assert!(matches!(storage.lock(path), Err(IoError::Locked { .. })));
    drop(first);
    let again = storage.lock(path).expect("free again after drop");
    drop(again);
}
