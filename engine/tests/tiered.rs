//! Tiered storage over a real local store and a local-directory object store with scripted
//! faults: segments roll and stay contiguous, lost acknowledgements and partial appends never
//! duplicate bytes, garbage from the object store is a typed error, the metadata is rebuilt
//! from a listing, and each tiered bug switch does the damage it describes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use engine::io::real::{LocalObjectStore, RealStorage};
use engine::io::{BoxFuture, HoldKind, ObjectError, ObjectStore};
use engine::tiered::{FileKind, TieredConfig, TieredError, TieredStore};
use engine::{Bug, BugSet, FlushMode, Store, StoreConfig};

/// What the next append does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Applied, then reported as timed out.
    AckLost,
    /// The first `n` bytes applied, then an I/O error.
    Partial(usize),
    /// Nothing applied, an I/O error.
    Fail,
}

/// A local object store whose appends follow a script, counting what it was asked.
#[derive(Debug)]
struct Scripted {
    real: LocalObjectStore,
    /// Scripts for the appends to keys containing the first string, in order.
    scripts: Mutex<Vec<(String, Script)>>,
    appends: Mutex<u64>,
    /// Scripts for the next puts, in order.
    put_scripts: Mutex<Vec<Script>>,
    /// Every request fails (an outage).
    down: std::sync::atomic::AtomicBool,
}

impl Scripted {
    fn new(dir: &Path) -> Arc<Scripted> {
        Arc::new(Scripted {
            real: LocalObjectStore::new(dir).unwrap(),
            scripts: Mutex::new(Vec::new()),
            appends: Mutex::new(0),
            put_scripts: Mutex::new(Vec::new()),
            down: std::sync::atomic::AtomicBool::new(false),
        })
    }
    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }
    fn check_up(&self, op: &str, key: &str) -> Result<(), ObjectError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ObjectError::Unavailable { op: op.into(), key: key.into() });
        }
        Ok(())
    }
    fn script(&self, key_part: &str, s: Script) {
        self.scripts.lock().unwrap().push((key_part.to_string(), s));
    }
    fn take_script(&self, key: &str) -> Option<Script> {
        let mut scripts = self.scripts.lock().unwrap();
        let i = scripts.iter().position(|(part, _)| key.contains(part.as_str()))?;
        Some(scripts.remove(i).1)
    }
}

impl ObjectStore for Scripted {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(async move {
            self.check_up("put", key)?;
            let script = {
                let mut s = self.put_scripts.lock().unwrap();
                (!s.is_empty()).then(|| s.remove(0))
            };
            match script {
                None => self.real.put(key, data).await,
                Some(Script::AckLost) => {
                    self.real.put(key, data).await?;
                    Err(ObjectError::TimedOutOutcomeUnknown { op: "put".into(), key: key.into() })
                }
                Some(_) => Err(ObjectError::Io { op: "put".into(), key: key.into(), message: "scripted".into() }),
            }
        })
    }
    fn append<'a>(&'a self, key: &'a str, expected: u64, data: Bytes) -> BoxFuture<'a, Result<u64, ObjectError>> {
        Box::pin(async move {
            self.check_up("append", key)?;
            *self.appends.lock().unwrap() += 1;
            let io = || ObjectError::Io { op: "append".into(), key: key.into(), message: "scripted".into() };
            match self.take_script(key) {
                None => self.real.append(key, expected, data).await,
                Some(Script::AckLost) => {
                    self.real.append(key, expected, data).await?;
                    Err(ObjectError::TimedOutOutcomeUnknown { op: "append".into(), key: key.into() })
                }
                Some(Script::Partial(n)) => {
                    self.real.append(key, expected, data.slice(..n.min(data.len()))).await?;
                    Err(io())
                }
                Some(Script::Fail) => Err(io()),
            }
        })
    }
    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFuture<'a, Result<Bytes, ObjectError>> {
        Box::pin(async move {
            self.check_up("get", key)?;
            self.real.get_range(key, offset, len).await
        })
    }
    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, ObjectError>> {
        Box::pin(async move {
            self.check_up("size", key)?;
            self.real.size(key).await
        })
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, ObjectError>> {
        self.real.list(prefix)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>> {
        self.real.delete(key)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    cfg: StoreConfig,
    clock: Arc<ManualClock>,
    obj: Arc<Scripted>,
    obj_dir: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = small_config(&dir.path().join("store"));
        cfg.flush_mode = FlushMode::Sync;
        let obj_dir = dir.path().join("objects");
        let obj = Scripted::new(&obj_dir);
        Fixture { cfg, clock: ManualClock::new(1_700_000_000_000), obj, obj_dir, _dir: dir }
    }

    fn tiered_cfg() -> TieredConfig {
        let mut t = TieredConfig::small("tiered");
        t.commit_log_segment_bytes = 2048;
        t.consume_queue_segment_bytes = 8 * 20;
        t.batch_max_count = 7;
        t
    }

    async fn open(&self, bugs: &[Bug]) -> (Arc<Store>, TieredStore) {
        self.open_with(bugs, Self::tiered_cfg()).await
    }

    async fn open_with(&self, bugs: &[Bug], tiered_cfg: TieredConfig) -> (Arc<Store>, TieredStore) {
        let mut cfg = self.cfg.clone();
        cfg.bugs = BugSet::of(bugs);
        let store = Arc::new(Store::open(cfg.clone(), Arc::new(RealStorage::new()), self.clock.clone()).await.unwrap());
        store.start().unwrap();
        let tiered = TieredStore::open(
            tiered_cfg,
            cfg.bugs.clone(),
            store.clone(),
            self.obj.clone(),
            Arc::new(RealStorage::new()),
            self.clock.clone(),
            &cfg.root_dir,
            1_000,
        )
        .await
        .unwrap();
        (store, tiered)
    }

    /// Every object under the prefix with its bytes.
    fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for e in walk(&self.obj_dir) {
            let key = e.strip_prefix(&self.obj_dir).unwrap().to_string_lossy().to_string();
            out.insert(key, std::fs::read(&e).unwrap());
        }
        out
    }

    /// The concatenated bytes of one queue's flat file, checked contiguous.
    fn flat_bytes(&self, queue: u32, kind: FileKind) -> Result<Vec<u8>, String> {
        let dir = format!("tiered/T/{queue}/{}/", kind.dir_name());
        let mut out = Vec::new();
        for (key, bytes) in self.objects().range(dir.clone()..).take_while(|(k, _)| k.starts_with(&dir)) {
            let base: u64 = key.rsplit('/').next().unwrap().parse().unwrap();
            let start =
                if kind == FileKind::ConsumeQueue { out.len() as u64 + self.cq_base(queue) } else { out.len() as u64 };
            if base != start {
                return Err(format!("{key}: starts at {base}, the bytes before end at {start}"));
            }
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    fn cq_base(&self, queue: u32) -> u64 {
        let dir = format!("tiered/T/{queue}/consumequeue/");
        self.objects()
            .keys()
            .find(|k| k.starts_with(&dir))
            .map_or(0, |k| k.rsplit('/').next().unwrap().parse().unwrap())
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

async fn put_and_tier(
    f: &Fixture,
    store: &Store,
    tiered: &TieredStore,
    n: usize,
    queues: u32,
) -> Vec<(u32, engine::PutResult)> {
    let puts = put_n(store, &f.clock, n, queues, 300, 10).await;
    wait_dispatched(store).await;
    for _ in 0..(4 * n).max(20) {
        let _ = tiered.dispatch_now().await;
        if tiered.queue_states().await.iter().all(|s| s.commit_queue_offset == store.max_offset("T", s.queue.queue_id))
        {
            break;
        }
    }
    puts
}

/// Every unit of the tiered consume queue decodes, from the remote bytes alone, to the
/// message the local store holds at that queue offset.
fn remote_matches_local(f: &Fixture, store: &Store, queue: u32) -> Result<(), String> {
    let cq = f.flat_bytes(queue, FileKind::ConsumeQueue)?;
    let cl = f.flat_bytes(queue, FileKind::CommitLog)?;
    let first = f.cq_base(queue) / 20;
    let local = store.get("T", queue, first, 10_000).unwrap();
    if (cq.len() / 20) as u64 != store.max_offset("T", queue) - first {
        return Err(format!(
            "queue {queue}: {} units tiered of {}",
            cq.len() / 20,
            store.max_offset("T", queue) - first
        ));
    }
    for (i, unit) in cq.chunks_exact(20).enumerate() {
        let off = i64::from_be_bytes(unit[..8].try_into().unwrap()) as usize;
        let size = i32::from_be_bytes(unit[8..12].try_into().unwrap()) as usize;
        let q = engine::tiered::QueueKey { topic: "T".into(), queue_id: queue };
        let record = cl.get(off..off + size).ok_or(format!("queue {queue} unit {i}: past the commit log"))?;
        let m = engine::tiered::fetcher::decode_checked(&q, first + i as u64, record)
            .map_err(|e| format!("queue {queue} unit {i}: {e}"))?;
        if m.body != local[i].body || m.phy_offset != local[i].phy_offset {
            return Err(format!("queue {queue} unit {i}: another message"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn segments_roll_contiguous_and_match_the_local_queues() {
    let f = Fixture::new();
    let (store, tiered) = f.open(&[]).await;
    let puts = put_and_tier(&f, &store, &tiered, 60, 2).await;
    for q in 0..2 {
        remote_matches_local(&f, &store, q).unwrap();
    }
    let cl_segments = f.objects().keys().filter(|k| k.starts_with("tiered/T/0/commitlog/")).count();
    assert!(cl_segments >= 4, "small segments rolled: {cl_segments}");
    // Reads through the tiered path return exactly what the local store returns.
    let inner_get = tiered.get("T", 1, 0, 100).await.unwrap();
    assert_eq!(inner_get.len(), puts.iter().filter(|(q, _)| *q == 1).count());
    tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lost_acknowledgement_or_a_partial_append_never_duplicates_bytes() {
    let f = Fixture::new();
    let (store, tiered) = f.open(&[]).await;
    f.obj.script("/0/commitlog/", Script::AckLost);
    f.obj.script("/0/consumequeue/", Script::Partial(30));
    f.obj.script("/1/commitlog/", Script::Partial(100));
    f.obj.script("/1/consumequeue/", Script::AckLost);
    f.obj.script("/1/commitlog/", Script::Fail);
    put_and_tier(&f, &store, &tiered, 40, 2).await;
    assert!(f.obj.scripts.lock().unwrap().is_empty(), "every scripted fault happened");
    for q in 0..2 {
        remote_matches_local(&f, &store, q).unwrap();
    }
    tiered.shutdown().await.unwrap();
}

#[tokio::test]
async fn tiered_ack_lost_append_again() {
    let f = Fixture::new();
    let (store, tiered) = f.open(&[Bug::TieredAckLostAppendAgain]).await;
    f.obj.script("/0/commitlog/", Script::AckLost);
    put_and_tier(&f, &store, &tiered, 20, 1).await;
    let result = remote_matches_local(&f, &store, 0);
    assert!(result.is_err(), "the batch was appended twice, so units point at the wrong bytes");
    tiered.shutdown().await.unwrap();
}

#[tokio::test]
async fn tiered_partial_all_or_nothing() {
    let f = Fixture::new();
    let (store, tiered) = f.open(&[Bug::TieredPartialAllOrNothing]).await;
    f.obj.script("/0/commitlog/", Script::Partial(50));
    put_and_tier(&f, &store, &tiered, 20, 1).await;
    let result = remote_matches_local(&f, &store, 0);
    assert!(result.is_err(), "the 50-byte prefix is in the object twice");
    tiered.shutdown().await.unwrap();
}

/// Puts 40 messages while the first roll's final commit fails; returns (sealed segments whose
/// saved size is not the remote one, whether the commit log's segments are contiguous).
async fn full_segment_case(bugs: &[Bug]) -> (Vec<String>, bool, Fixture, Arc<Store>) {
    let f = Fixture::new();
    let (store, tiered) = f.open(bugs).await;
    for _ in 0..3 {
        f.obj.script("/0/commitlog/", Script::Fail);
    }
    put_and_tier(&f, &store, &tiered, 40, 1).await;
    tiered.shutdown().await.unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(engine::tiered::store::metadata_path(&f.cfg.root_dir)).unwrap()).unwrap();
    let objects = f.objects();
    // Every segment but the last of its flat file is sealed, whatever its metadata says.
    let segments = meta["segments"].as_object().unwrap();
    let mut stale = Vec::new();
    for (i, (key, m)) in segments.iter().enumerate() {
        let dir = &key[..key.rfind('/').unwrap()];
        let last = segments.keys().nth(i + 1).is_none_or(|next| !next.starts_with(dir));
        let remote = objects.get(key).map_or(0, |b| b.len() as u64);
        if !last && m["size"].as_u64().unwrap() != remote {
            stale.push(key.clone());
        }
    }
    let contiguous = f.flat_bytes(0, FileKind::CommitLog).is_ok();
    (stale, contiguous, f, store)
}

#[tokio::test]
async fn a_full_segment_rolls_only_after_its_final_commit_and_saved_size() {
    let (stale, contiguous, f, store) = full_segment_case(&[]).await;
    assert!(stale.is_empty() && contiguous, "fixed: metadata matches, segments contiguous");
    remote_matches_local(&f, &store, 0).unwrap();
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn tiered_full_commit_ignored() {
    let (_, contiguous, _f, _store) = full_segment_case(&[Bug::TieredFullCommitIgnored]).await;
    assert!(!contiguous, "#8409 leaves a hole in the commit log");
}

#[tokio::test]
async fn tiered_full_size_not_saved() {
    let (stale, _, _f, _store) = full_segment_case(&[Bug::TieredFullSizeNotSaved]).await;
    assert!(!stale.is_empty(), "#8532 leaves a sealed segment's size stale");
}

/// Three fresh messages (below the group-commit count and age) are held back; returns the
/// mapped-file holds outstanding then.
async fn held_messages_case(bugs: &[Bug]) -> u64 {
    let f = Fixture::new();
    let (store, tiered) = f.open(bugs).await;
    put_n(&store, &f.clock, 3, 1, 100, 1).await;
    wait_dispatched(&store).await;
    tiered.start();
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    assert!(tiered.stats().holds_branch > 0, "the hold branch ran");
    let held = store.holds().count(HoldKind::MappedFile);
    tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
    held
}

#[tokio::test]
async fn the_hold_branch_releases_what_it_read() {
    assert_eq!(held_messages_case(&[]).await, 0);
}

#[tokio::test]
async fn tiered_hold_not_released() {
    assert!(held_messages_case(&[Bug::TieredHoldNotReleased]).await > 0, "#8955 leaks a hold per held round");
}

/// Units in the object store pointing past the commit-log bytes it holds.
fn dangling_units(f: &Fixture, queue: u32) -> usize {
    let cl_len = f.flat_bytes(queue, FileKind::CommitLog).map_or(0, |b| b.len());
    let cq = f.flat_bytes(queue, FileKind::ConsumeQueue).unwrap_or_default();
    cq.chunks_exact(20)
        .filter(|u| {
            let off = i64::from_be_bytes(u[..8].try_into().unwrap()) as usize;
            let size = i32::from_be_bytes(u[8..12].try_into().unwrap()) as usize;
            off + size > cl_len
        })
        .count()
}

/// Every commit-log upload of the queue fails for a while; returns the mapped-file and permit
/// holds outstanding once the dispatcher went through its failures, the units then pointing
/// past the uploaded commit log, and whether the tiered copy matches the local queue once the
/// faults stop.
async fn failing_commits_case(bugs: &[Bug]) -> (u64, u64, usize, Result<(), String>) {
    let f = Fixture::new();
    let (store, tiered) = f.open(bugs).await;
    put_n(&store, &f.clock, 12, 1, 300, 10).await;
    wait_dispatched(&store).await;
    for _ in 0..3 {
        f.obj.script("/0/commitlog/", Script::Fail);
    }
    for _ in 0..3 {
        let _ = tiered.dispatch_now().await;
    }
    let holds = store.holds();
    let (mapped, permits) = (holds.count(HoldKind::MappedFile), holds.count(HoldKind::Permit));
    let dangling = dangling_units(&f, 0);
    put_and_tier(&f, &store, &tiered, 0, 1).await;
    let matches = remote_matches_local(&f, &store, 0);
    tiered.shutdown().await.unwrap();
    (mapped, permits, dangling, matches)
}

#[tokio::test]
async fn failed_commits_release_everything_and_are_retried() {
    let (mapped, permits, dangling, matches) = failing_commits_case(&[]).await;
    assert_eq!((mapped, permits, dangling), (0, 0, 0));
    matches.unwrap();
}

#[tokio::test]
async fn tiered_failed_commit_buffers_kept() {
    let (mapped, ..) = failing_commits_case(&[Bug::TieredFailedCommitBuffersKept]).await;
    assert!(mapped > 0, "#9069 keeps a failed batch's buffers");
}

#[tokio::test]
async fn tiered_permit_not_returned() {
    let (_, permits, ..) = failing_commits_case(&[Bug::TieredPermitNotReturned]).await;
    assert!(permits > 0, "a failed queue keeps its permit");
}

#[tokio::test]
async fn tiered_cq_before_cl() {
    // The consume queue goes first and succeeds while the commit log fails: its units point at
    // bytes the object store does not have (a crash now would leave them dangling for good).
    let (_, _, dangling, _) = failing_commits_case(&[Bug::TieredCqBeforeCl]).await;
    assert!(dangling > 0, "units committed before their commit-log bytes");
}

/// One local record is damaged (its body CRC fails) after dispatch: the tiered dispatcher
/// meets a local read error. Returns whether the dispatcher is alive afterwards, and how many
/// messages it tiered (those before the damaged one).
async fn local_read_error_case(bugs: &[Bug]) -> (bool, u64) {
    let f = Fixture::new();
    let (store, tiered) = f.open(bugs).await;
    let puts = put_n(&store, &f.clock, 10, 1, 300, 10).await;
    wait_dispatched(&store).await;
    let damaged = puts[5].1;
    poke_cl(&f.cfg, damaged.phy_offset + 100, b"XXXX"); // inside the body: its CRC fails
                                                        // Old enough for the hold branch to let them go.
    f.clock.advance(10_000);
    tiered.start();
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await;
    let committed = tiered.queue_states().await.iter().map(|q| q.commit_queue_offset).sum();
    let r = (tiered.dispatcher_alive(), committed);
    tiered.shutdown().await.unwrap();
    r
}

#[tokio::test]
async fn a_local_read_error_does_not_end_the_dispatcher() {
    let (alive, tiered) = local_read_error_case(&[]).await;
    assert!(alive, "the dispatcher survives a local read error");
    assert_eq!(tiered, 5, "the messages before the damaged one were tiered ({tiered})");
}

#[tokio::test]
async fn tiered_dispatcher_dies() {
    let (alive, _) = local_read_error_case(&[Bug::TieredDispatcherDies]).await;
    assert!(!alive, "#8955: an exception from a queue ends the dispatcher task");
}

#[tokio::test]
async fn garbage_from_the_object_store_is_a_typed_error() {
    let f = Fixture::new();
    let (store, tiered) = f.open(&[]).await;
    put_and_tier(&f, &store, &tiered, 20, 1).await;
    tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
    drop((store, tiered));
    // Flip bytes in every commit-log object: CRCs fail.
    for p in walk(&f.obj_dir).into_iter().filter(|p| p.to_string_lossy().contains("/commitlog/")) {
        let mut b = std::fs::read(&p).unwrap();
        for x in b.iter_mut().skip(100).step_by(97) {
            *x ^= 0x5a;
        }
        std::fs::write(&p, b).unwrap();
    }
    let (store, tiered) = f.open(&[]).await;
    for _ in 0..3 {
        let _ = tiered.dispatch_now().await; // recovers the queue against the object store
    }
    match tiered.get_tiered("T", 0, 0, 100).await {
        Err(TieredError::Corrupt { .. }) => {}
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // Local reads still serve the queue.
    assert_eq!(tiered.get("T", 0, 0, 100).await.unwrap().len(), 20);
    tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_replaced_disk_reads_everything_back_and_continues_its_offsets() {
    let f = Fixture::new();
    let (store, tiered) = f.open(&[]).await;
    let puts = put_and_tier(&f, &store, &tiered, 40, 2).await;
    tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
    drop((store, tiered));
    // A new, empty local disk; the same object store.
    std::fs::remove_dir_all(&f.cfg.root_dir).unwrap();
    let (store, tiered) = f.open(&[]).await;
    for q in 0..2u32 {
        let sent: Vec<_> = puts.iter().filter(|(pq, _)| *pq == q).map(|(_, r)| *r).collect();
        let got = tiered.get("T", q, 0, 100).await.unwrap();
        assert_eq!(got.len(), sent.len(), "queue {q}: every tiered message reads back");
        for (m, r) in got.iter().zip(&sent) {
            assert_eq!((m.queue_offset, m.phy_offset), (r.queue_offset, r.phy_offset));
        }
        // New messages continue after the tiered ones, above the old log's offsets.
        let r = store.put("T", q, b"after", None, &[]).await.unwrap();
        assert_eq!(r.queue_offset, sent.len() as u64, "queue {q}: no queue offset reused");
        assert!(r.phy_offset >= sent.last().unwrap().phy_offset, "the log continues above the old one");
    }
    tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn garbage_metadata_is_rebuilt_from_the_listing() {
    let f = Fixture::new();
    let (store, tiered) = f.open(&[]).await;
    put_and_tier(&f, &store, &tiered, 30, 1).await;
    tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
    drop((store, tiered));
    std::fs::write(engine::tiered::store::metadata_path(&f.cfg.root_dir), b"{\"format_version\": 1, \"segm").unwrap();
    let (store, tiered) = f.open(&[]).await;
    for _ in 0..3 {
        let _ = tiered.dispatch_now().await; // recovers the listed queue
    }
    let got = tiered.get_tiered("T", 0, 0, 100).await.unwrap();
    assert_eq!(got.len(), 30, "everything committed reads back from the object store");
    remote_matches_local(&f, &store, 0).unwrap();
    tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn remote_segments_expire_by_their_own_retention() {
    let f = Fixture::new();
    let mut cfg = f.cfg.clone();
    cfg.bugs = BugSet::none();
    let store = Arc::new(Store::open(cfg.clone(), Arc::new(RealStorage::new()), f.clock.clone()).await.unwrap());
    store.start().unwrap();
    let mut tcfg = Fixture::tiered_cfg();
    tcfg.remote_retention_ms = Some(60_000);
    let tiered = TieredStore::open(
        tcfg,
        BugSet::none(),
        store.clone(),
        f.obj.clone(),
        Arc::new(RealStorage::new()),
        f.clock.clone(),
        &cfg.root_dir,
        1_000,
    )
    .await
    .unwrap();
    put_and_tier(&f, &store, &tiered, 40, 1).await;
    let before = tiered.queue_states().await[0].clone();
    let cq_objects = |f: &Fixture| f.objects().keys().filter(|k| k.contains("/consumequeue/")).count();
    let (cq_before, cl_before) = (cq_objects(&f), f.objects().len() - cq_objects(&f));
    // Later messages; the first ones are now past the remote retention.
    f.clock.advance(120_000);
    put_and_tier(&f, &store, &tiered, 10, 1).await;
    let after = tiered.queue_states().await[0].clone();
    assert!(tiered.stats().segments_expired > 0, "old segments expired");
    assert!(after.min_queue_offset > before.min_queue_offset, "the tiered minimum moved: {before:?} -> {after:?}");
    assert!(cq_objects(&f) < cq_before + 2 && f.objects().len() - cq_objects(&f) < cl_before + 2);
    // What is left reads back and still matches the local queue, unit by unit.
    let got = tiered.get_tiered("T", 0, after.min_queue_offset, 100).await.unwrap();
    assert_eq!(got.len() as u64, after.commit_queue_offset - after.min_queue_offset);
    assert_eq!(got[0].queue_offset, after.min_queue_offset);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(engine::tiered::store::metadata_path(&cfg.root_dir)).unwrap()).unwrap();
    for key in meta["segments"].as_object().unwrap().keys() {
        assert!(f.objects().contains_key(key), "the metadata names only objects that exist: {key}");
    }
    tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
}

// ---- The tiered index (class A) ----

/// Small index files (16 keys each) the upload loop never reaches on its own.
fn index_cfg() -> TieredConfig {
    let mut t = Fixture::tiered_cfg();
    t.index_slots = 8;
    t.index_max_items = 16;
    t.index_upload_interval_ms = 3_600_000;
    t
}

/// For each put `k{i}`: whether a query finds exactly that message. Panics on a wrong message.
async fn keys_found(tiered: &TieredStore, puts: &[(u32, engine::PutResult)]) -> Vec<bool> {
    let mut found = Vec::new();
    for (i, (q, r)) in puts.iter().enumerate() {
        let key = format!("k{i}");
        let got = tiered.query_by_key("T", &key, 0, i64::MAX, 10).await.unwrap_or_default();
        for m in &got {
            assert!(m.topic == "T" && m.keys.contains(&key), "a query for {key} returned {m:?}");
        }
        found.push(got.iter().any(|m| m.queue_id == *q && m.queue_offset == r.queue_offset));
    }
    found
}

/// Puts and tiers 60 keyed messages, shuts down cleanly, replaces the disk and counts the keys
/// a query no longer finds; also returns what shutdown reported it left.
async fn keys_lost_after_replacement(bugs: &[Bug], failed_puts: usize) -> (usize, engine::tiered::IndexLeft) {
    let f = Fixture::new();
    let (store, tiered) = f.open_with(bugs, index_cfg()).await;
    let puts = put_and_tier(&f, &store, &tiered, 60, 2).await;
    assert!(keys_found(&tiered, &puts).await.iter().all(|b| *b), "every key is found before the shutdown");
    for _ in 0..failed_puts {
        f.obj.put_scripts.lock().unwrap().push(Script::Fail);
    }
    let left = tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
    drop((store, tiered));
    std::fs::remove_dir_all(&f.cfg.root_dir).unwrap();
    let (store, tiered) = f.open_with(&[], index_cfg()).await;
    let lost = keys_found(&tiered, &puts).await.iter().filter(|b| !**b).count();
    tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
    (lost, left)
}

#[tokio::test]
async fn every_key_is_found_after_a_clean_shutdown_and_a_replaced_disk() {
    let (lost, left) = keys_lost_after_replacement(&[], 2).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(lost, 0);
}

#[tokio::test]
async fn tiered_index_newest_not_uploaded() {
    let (lost, left) = keys_lost_after_replacement(&[Bug::TieredIndexNewestNotUploaded], 0).await;
    assert!(left.is_empty(), "the shutdown believes it left nothing");
    assert!(lost > 0, "#8653: the newest file's keys are gone with the disk");
}

#[tokio::test]
async fn tiered_index_force_upload_wrong_file() {
    let (lost, left) = keys_lost_after_replacement(&[Bug::TieredIndexForceUploadWrongFile], 0).await;
    assert!(left.is_empty());
    assert!(lost > 0, "#8493: the sealed files waiting for the loop are gone with the disk");
}

#[tokio::test]
async fn tiered_index_compaction_drops_last_bucket() {
    let (lost, _) = keys_lost_after_replacement(&[Bug::TieredIndexCompactionDropsLastBucket], 0).await;
    assert!(lost > 0);
}

#[tokio::test]
async fn tiered_index_removed_before_upload() {
    let (lost, _) = keys_lost_after_replacement(&[Bug::TieredIndexRemovedBeforeUpload], 2).await;
    assert!(lost > 0, "a failed upload's local file is already gone");
}

#[tokio::test]
async fn a_lost_put_acknowledgement_is_resolved_by_the_remote_size() {
    let f = Fixture::new();
    let (store, tiered) = f.open_with(&[], index_cfg()).await;
    let puts = put_and_tier(&f, &store, &tiered, 40, 2).await;
    f.obj.put_scripts.lock().unwrap().push(Script::AckLost);
    assert!(tiered.shutdown().await.unwrap().is_empty());
    let statuses = tiered.index_statuses().await;
    assert!(statuses.iter().all(|(_, s)| *s == engine::tiered::IndexStatus::Uploaded), "{statuses:?}");
    store.shutdown().await.unwrap();
    drop((store, tiered));
    std::fs::remove_dir_all(&f.cfg.root_dir).unwrap();
    let (_store, tiered) = f.open_with(&[], index_cfg()).await;
    assert!(keys_found(&tiered, &puts).await.iter().all(|b| *b));
}

/// Shuts down while the object store is out: how long it took and what it left.
async fn shutdown_during_outage(
    bugs: &[Bug],
) -> Option<(std::time::Duration, engine::tiered::IndexLeft, Fixture, Vec<(u32, engine::PutResult)>)> {
    let f = Fixture::new();
    let (store, tiered) = f.open_with(bugs, index_cfg()).await;
    let puts = put_and_tier(&f, &store, &tiered, 60, 2).await;
    f.obj.set_down(true);
    let start = tokio::time::Instant::now();
    let r = tokio::time::timeout(std::time::Duration::from_secs(60), tiered.shutdown()).await.ok()?;
    let took = start.elapsed();
    store.shutdown().await.unwrap();
    drop((store, tiered));
    f.obj.set_down(false);
    Some((took, r.unwrap(), f, puts))
}

#[tokio::test]
async fn shutdown_is_bounded_while_the_object_store_is_out_and_the_next_start_uploads_the_rest() {
    let (took, left, f, puts) = shutdown_during_outage(&[]).await.expect("shutdown returns");
    let bound = std::time::Duration::from_millis(index_cfg().shutdown_upload_bound_ms + 1_000);
    assert!(took <= bound + std::time::Duration::from_millis(500), "shutdown took {took:?}");
    assert!(!left.files.is_empty(), "it says what it left: {left:?}");
    // The next start (same disk) uploads the files left, from the local disk.
    let (store, tiered) = f.open_with(&[], index_cfg()).await;
    tiered.dispatch_now().await.unwrap();
    assert!(tiered.shutdown().await.unwrap().is_empty());
    store.shutdown().await.unwrap();
    drop((store, tiered));
    std::fs::remove_dir_all(&f.cfg.root_dir).unwrap();
    let (_store, tiered) = f.open_with(&[], index_cfg()).await;
    assert!(keys_found(&tiered, &puts).await.iter().all(|b| *b), "every key after a replaced disk");
}

#[tokio::test]
async fn tiered_shutdown_unbounded() {
    assert!(shutdown_during_outage(&[Bug::TieredShutdownUnbounded]).await.is_none(), "#9838: shutdown hangs");
}

/// With an empty local log (a replaced disk): what reads and a key query return.
async fn reads_on_an_empty_log(bugs: &[Bug]) -> (usize, usize) {
    let f = Fixture::new();
    let (store, tiered) = f.open_with(&[], index_cfg()).await;
    put_and_tier(&f, &store, &tiered, 20, 1).await;
    tiered.shutdown().await.unwrap();
    store.shutdown().await.unwrap();
    drop((store, tiered));
    std::fs::remove_dir_all(&f.cfg.root_dir).unwrap();
    let (store, tiered) = f.open_with(bugs, index_cfg()).await;
    assert_eq!(store.min_phy_offset(), store.max_phy_offset(), "the local log is empty");
    let read = tiered.get("T", 0, 0, 100).await.unwrap().len();
    let queried = tiered.query_by_key("T", "k3", 0, i64::MAX, 10).await.unwrap().len();
    (read, queried)
}

#[tokio::test]
async fn an_empty_local_log_routes_reads_and_queries_to_the_tiered_store() {
    assert_eq!(reads_on_an_empty_log(&[]).await, (20, 1));
}

#[tokio::test]
async fn tiered_fetcher_local_when_empty() {
    assert_eq!(reads_on_an_empty_log(&[Bug::TieredFetcherLocalWhenEmpty]).await, (0, 0));
}

#[tokio::test]
async fn index_recovery_removes_the_scratch_and_a_local_file_already_uploaded() {
    let f = Fixture::new();
    let (store, tiered) = f.open_with(&[], index_cfg()).await;
    let puts = put_and_tier(&f, &store, &tiered, 30, 1).await;
    let dir = engine::tiered::index_service::index_dir(&f.cfg.root_dir);
    // A copy of a local file as it was before its upload (a crash after the upload was
    // recorded, before the local file was removed).
    let kept: Vec<_> = walk(&dir).into_iter().filter(|p| !p.to_string_lossy().contains("compacting")).collect();
    let copies: Vec<(std::path::PathBuf, Vec<u8>)> =
        kept.iter().map(|p| (p.clone(), std::fs::read(p).unwrap())).collect();
    assert!(!copies.is_empty());
    assert!(tiered.shutdown().await.unwrap().is_empty());
    store.shutdown().await.unwrap();
    drop((store, tiered));
    for (p, b) in &copies {
        std::fs::write(p, b).unwrap();
    }
    std::fs::create_dir_all(dir.join("compacting")).unwrap();
    std::fs::write(dir.join("compacting").join("00000000000000000001"), b"half a compaction").unwrap();
    // Garbage under an index file's name: removed, never a panic.
    std::fs::write(dir.join("00000000000000000002"), b"garbage").unwrap();
    let (_store, tiered) = f.open_with(&[], index_cfg()).await;
    assert!(!dir.join("compacting").exists(), "the scratch directory is gone");
    for (p, _) in &copies {
        assert!(!p.exists(), "{} was uploaded: dropped", p.display());
    }
    assert!(!dir.join("00000000000000000002").exists());
    assert!(tiered.index_statuses().await.iter().all(|(_, s)| *s == engine::tiered::IndexStatus::Uploaded));
    assert!(keys_found(&tiered, &puts).await.iter().all(|b| *b));
}

#[tokio::test]
async fn a_forged_or_garbage_index_object_never_yields_a_wrong_message() {
    use engine::tiered::index_file::{compact, IndexHeader, IndexItem, BEGIN_MAGIC};
    let f = Fixture::new();
    let (store, tiered) = f.open_with(&[], index_cfg()).await;
    let puts = put_and_tier(&f, &store, &tiered, 10, 1).await;
    assert!(tiered.shutdown().await.unwrap().is_empty());
    store.shutdown().await.unwrap();
    drop((store, tiered));
    // A forged index object: key k3's hash, pointing at the record of k5.
    let hash = engine::java_hash::index_key_hash_of("T", "k3");
    let k5 = puts[5].1;
    let cl = f.flat_bytes(0, FileKind::CommitLog).unwrap();
    let cq = f.flat_bytes(0, FileKind::ConsumeQueue).unwrap();
    let unit = &cq[5 * 20..6 * 20];
    let off = i64::from_be_bytes(unit[..8].try_into().unwrap());
    let size = i32::from_be_bytes(unit[8..12].try_into().unwrap());
    assert!((off as usize + size as usize) <= cl.len());
    let item = IndexItem {
        hash,
        topic_id: engine::java_hash::java_string_hash("T"),
        queue_id: 0,
        offset: off,
        size,
        time_diff_ms: 0,
    };
    let h = IndexHeader { magic: BEGIN_MAGIC, begin_ts_ms: 0, end_ts_ms: i64::MAX / 2, slot_count: 8, item_count: 1 };
    let forged = compact(&h, &[item], &BugSet::none());
    let key = engine::tiered::index_service::object_key("tiered", 99_999_999_999_999);
    std::fs::create_dir_all(f.obj_dir.join(&key).parent().unwrap()).unwrap();
    std::fs::write(f.obj_dir.join(&key), &forged).unwrap();
    std::fs::remove_dir_all(&f.cfg.root_dir).unwrap();
    let (_store, tiered) = f.open_with(&[], index_cfg()).await;
    let got = tiered.query_by_key("T", "k3", 0, i64::MAX, 10).await.unwrap();
    assert_eq!(got.len(), 1, "only the genuine k3: {got:?}");
    assert_eq!(got[0].queue_offset, puts[3].1.queue_offset);
    assert_ne!(k5.queue_offset, puts[3].1.queue_offset);
    // Garbage in the same object: a typed error, never a panic.
    std::fs::write(f.obj_dir.join(&key), b"\xbc\xc5\x02\x85garbage garbage garbage garbage garbage").unwrap();
    match tiered.query_by_key("T", "k3", 0, i64::MAX, 10).await {
        Err(TieredError::Corrupt { .. }) | Err(TieredError::Object(_)) => {}
        other => panic!("expected a typed error, got {other:?}"),
    }
}
