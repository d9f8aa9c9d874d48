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
}

impl Scripted {
    fn new(dir: &Path) -> Arc<Scripted> {
        Arc::new(Scripted { real: LocalObjectStore::new(dir).unwrap(), scripts: Mutex::new(Vec::new()), appends: Mutex::new(0) })
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
        self.real.put(key, data)
    }
    fn append<'a>(&'a self, key: &'a str, expected: u64, data: Bytes) -> BoxFuture<'a, Result<u64, ObjectError>> {
        Box::pin(async move {
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
        self.real.get_range(key, offset, len)
    }
    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, ObjectError>> {
        self.real.size(key)
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
        let mut cfg = self.cfg.clone();
        cfg.bugs = BugSet::of(bugs);
        let store = Arc::new(Store::open(cfg.clone(), Arc::new(RealStorage::new()), self.clock.clone()).await.unwrap());
        store.start().unwrap();
        let tiered = TieredStore::open(
            Self::tiered_cfg(),
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
            let start = if kind == FileKind::ConsumeQueue { out.len() as u64 + self.cq_base(queue) } else { out.len() as u64 };
            if base != start {
                return Err(format!("{key}: starts at {base}, the bytes before end at {start}"));
            }
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    fn cq_base(&self, queue: u32) -> u64 {
        let dir = format!("tiered/T/{queue}/consumequeue/");
        self.objects().keys().find(|k| k.starts_with(&dir)).map_or(0, |k| k.rsplit('/').next().unwrap().parse().unwrap())
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

async fn put_and_tier(f: &Fixture, store: &Store, tiered: &TieredStore, n: usize, queues: u32) -> Vec<(u32, engine::PutResult)> {
    let puts = put_n(store, &f.clock, n, queues, 300, 10).await;
    wait_dispatched(store).await;
    for _ in 0..(4 * n).max(20) {
        let _ = tiered.dispatch_now().await;
        if tiered.queue_states().await.iter().all(|s| s.commit_queue_offset == store.max_offset("T", s.queue.queue_id)) {
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
        return Err(format!("queue {queue}: {} units tiered of {}", cq.len() / 20, store.max_offset("T", queue) - first));
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
