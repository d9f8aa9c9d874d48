//! `disk-log`: the smallest end-to-end scenario. One node appends checksummed records to a
//! single file on its simulated disk, syncs in batches and acknowledges a batch only once its
//! sync succeeded; the fault plan kills it, cuts its power, fails its syncs and fills its disk.
//! After every restart the node scans the file and its checkers judge the recovered log.
//!
//! The swarm (`crate::swarm`) draws the disk (sector size, sync latency) and the writer's
//! batch size and pace into the case's `config` (`[disk]`, `[writer]`); an empty table is the
//! fixed configuration.
//!
//! It exercises the simulated disk end to end (page cache, power loss, fsyncgate semantics)
//! without the message store, and it is the fastest scenario, which makes it the yardstick for
//! the simulator's own speed.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use engine::io::{IoError, Storage, StorageFile};
use serde::Deserialize;
use sim::disk::DiskConfig;
use sim::fault_plan::{FaultKind, PlanSpace};
use sim::world::{World, WorldConfig};
use sim::{FaultPlan, Trace, Violation};

const NODE: &str = "writer";
const DIR: &str = "/data";
const LOG: &str = "/data/log";
const HEADER_BYTES: usize = 8;
const RECORDS_PER_BATCH: u64 = 8;
const BATCH_INTERVAL_MS: u64 = 10;
/// The config section of the writer's knobs.
pub const WRITER: &str = "writer";

/// The writer's knobs. Unset: the fixed value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    pub records_per_batch: Option<u64>,
    pub batch_interval_ms: Option<u64>,
}

/// The writer's batch size and pace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    records_per_batch: u64,
    batch_interval_ms: u64,
}

/// The disk and the writer's pace from `config` (empty: the fixed ones).
pub(crate) fn settings(config: &toml::Table) -> Result<(DiskConfig, Pace), String> {
    if let Some(k) = config.keys().find(|k| ![crate::swarm::DISK, WRITER].contains(&k.as_str())) {
        return Err(format!("config.{k} is not a configuration key of the disk-log scenario"));
    }
    let disk: DiskConfig = crate::swarm::section(config, crate::swarm::DISK, &DiskConfig::default())?;
    disk.validate().map_err(|e| format!("config.{}: {e}", crate::swarm::DISK))?;
    let knobs: Knobs = match config.get(WRITER) {
        None => Knobs::default(),
        Some(v) => v.clone().try_into().map_err(|e| format!("config.{WRITER}: {e}"))?,
    };
    let pace = Pace {
        records_per_batch: knobs.records_per_batch.unwrap_or(RECORDS_PER_BATCH),
        batch_interval_ms: knobs.batch_interval_ms.unwrap_or(BATCH_INTERVAL_MS),
    };
    if pace.records_per_batch == 0 || pace.batch_interval_ms == 0 {
        return Err(format!("config.{WRITER}: records_per_batch and batch_interval_ms must be positive"));
    }
    Ok((disk, pace))
}
const BOOT_RETRY_MS: u64 = 100;
/// Simulated time the run goes on after the last fault, before the final check.
const QUIET_MS: u64 = 2_000;

/// The plan space: process and power faults, sync/write errors, a full disk, clock jumps.
/// No bit flips: a flipped bit in an acknowledged record is media loss this single-copy log
/// cannot promise to survive.
pub fn plan_space() -> PlanSpace {
    PlanSpace {
        nodes: vec![NODE.to_string()],
        network_nodes: Vec::new(),
        fault_window_ms: 10_000,
        max_events: 10,
        kinds: [
            FaultKind::Kill,
            FaultKind::PowerLoss,
            FaultKind::CleanShutdown,
            FaultKind::DiskErrors,
            FaultKind::DiskFull,
        ]
        .into_iter()
        .collect(),
    }
}

/// What the world outside the node knows: which records were acknowledged, and what the
/// checkers found.
#[derive(Debug, Default)]
struct History {
    /// Every record with a sequence number below this was acknowledged as durable.
    acked_below: u64,
    violations: Vec<Violation>,
    recoveries: u64,
}

type Shared = Arc<Mutex<History>>;

fn lock(h: &Shared) -> MutexGuard<'_, History> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

/// The payload of record `seq`: derived from the sequence number, so that a reader can tell a
/// genuine record from garbage that happens to checksum.
fn payload(seq: u64) -> Vec<u8> {
    let len = 16 + (seq % 48) as usize;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&seq.to_be_bytes());
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

fn encode(seq: u64) -> Vec<u8> {
    let body = payload(seq);
    let mut rec = Vec::with_capacity(HEADER_BYTES + body.len());
    rec.extend_from_slice(&(body.len() as u32).to_be_bytes());
    rec.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    rec.extend_from_slice(&body);
    rec
}

/// Scans the log: the byte length of the longest prefix of valid records, and how many there
/// are. Anything that does not decode ends the prefix.
fn scan(bytes: &[u8]) -> Result<(u64, u64), String> {
    let mut pos = 0usize;
    let mut seq = 0u64;
    while let Some(header) = bytes.get(pos..pos + HEADER_BYTES) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let Some(body) = bytes.get(pos + HEADER_BYTES..pos + HEADER_BYTES + len) else { break };
        if len == 0 || crc32fast::hash(body) != crc {
            break;
        }
        if body != payload(seq).as_slice() {
            return Err(format!("record {seq} at byte {pos} has a valid checksum but the wrong content"));
        }
        pos += HEADER_BYTES + len;
        seq += 1;
    }
    Ok((pos as u64, seq))
}

/// Judges the log a (re)started process found; returns (end offset, next seq).
fn judge(bytes: &[u8], history: &Shared, now_ms: u64) -> (u64, u64) {
    let mut h = lock(history);
    h.recoveries += 1;
    match scan(bytes) {
        Err(message) => {
            h.violations.push(Violation { checker: "log-prefix".into(), message, at_ms: now_ms });
            (0, 0)
        }
        Ok((end, next_seq)) => {
            let acked_below = h.acked_below;
            if next_seq < acked_below {
                h.violations.push(Violation {
                    checker: "durability".into(),
                    message: format!("recovered {next_seq} records but {acked_below} were acknowledged as durable"),
                    at_ms: now_ms,
                });
            }
            (end, next_seq)
        }
    }
}

fn read_all(file: &dyn StorageFile) -> Result<Vec<u8>, IoError> {
    let mut bytes = vec![0u8; file.len()? as usize];
    file.read_at(0, &mut bytes)?;
    Ok(bytes)
}

/// Opens (creating if need be) the log with its name durable. The directories are synced
/// even when the file already exists: an earlier process may have created it and died before
/// its own directory sync, and records acknowledged in a file whose name a power loss can
/// still undo are not durable. `/` is synced too because it holds the entry of `/data`.
async fn open_log(storage: &dyn Storage) -> Result<Arc<dyn StorageFile>, IoError> {
    storage.create_dir_all(DIR.as_ref())?;
    let file = if storage.exists(LOG.as_ref()) { storage.open(LOG.as_ref())? } else { storage.create(LOG.as_ref())? };
    storage.sync_dir("/".as_ref()).await?;
    storage.sync_dir(DIR.as_ref()).await?;
    Ok(file)
}

/// Opens the log, judges it (once per process: a retry reads the same image) and makes its
/// valid prefix durable; returns (file, end offset, next seq).
async fn boot(
    storage: &dyn Storage,
    history: &Shared,
    judged: &mut bool,
    now_ms: u64,
) -> Result<(Arc<dyn StorageFile>, u64, u64), IoError> {
    let file = open_log(storage).await?;
    let bytes = read_all(file.as_ref())?;
    let (end, next_seq) = if *judged {
        scan(&bytes).unwrap_or((0, 0))
    } else {
        *judged = true;
        judge(&bytes, history, now_ms)
    };
    file.set_len(end)?;
    // What the scan read is the page cache, not the medium: a sync that failed before the
    // crash (or in an earlier boot attempt) left its pages clean but unwritten, and a new
    // sync would skip them. Nothing here proves any byte durable, so the whole valid prefix
    // is rewritten before the sync that records are then acknowledged on top of.
    let prefix = usize::try_from(end).unwrap_or(bytes.len()).min(bytes.len());
    file.write_at(0, &bytes[..prefix])?;
    file.sync_range(0, end).await?;
    Ok((file, end, next_seq))
}

/// The writer process: recover, then append and sync batches until told to stop.
async fn writer_process(world: Arc<World>, history: Shared, ack_before_sync: bool, pace: Pace) {
    let storage = world.disk(NODE).storage();
    world.report_up(NODE);
    let now_ms = || world.trace().now_us() / 1_000;
    // An I/O error during boot (a window of EIO, a full disk) is retried rather than fatal:
    // a writer that gave up would wait for a crash that the plan may never bring.
    let mut judged = false;
    let (file, mut end, mut next_seq) = loop {
        match boot(storage.as_ref(), &history, &mut judged, now_ms()).await {
            Ok(booted) => break booted,
            Err(_) => tokio::time::sleep(Duration::from_millis(BOOT_RETRY_MS)).await,
        }
    };
    // Bytes written since the last acknowledged sync; rewritten after a failed sync because
    // Linux may have dropped them from the page cache's dirty set (fsyncgate).
    let mut unacked: Vec<u8> = Vec::new();
    let mut acked_end = end;
    let mut pages_lost = false;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        // `biased`: without it the branch polled first is drawn from a process-wide counter
        // (tokio's `select!` is not simulated), and a seed's run depended on the runs before
        // it in the process (seed 245 of the broker scenario).
        tokio::select! {
            biased;
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep(Duration::from_millis(pace.batch_interval_ms)) => {}
        }
        for _ in 0..pace.records_per_batch {
            let rec = encode(next_seq);
            if file.write_at(end, &rec).is_err() {
                break;
            }
            end += rec.len() as u64;
            next_seq += 1;
            unacked.extend_from_slice(&rec);
        }
        if ack_before_sync {
            // The catalogued bug, at this scenario's level: acknowledge, then sync.
            lock(&history).acked_below = next_seq;
        }
        if make_durable(file.as_ref(), acked_end, &unacked, &mut pages_lost).await {
            acked_end = end;
            unacked.clear();
            lock(&history).acked_below = next_seq;
        }
    }
    if make_durable(file.as_ref(), acked_end, &unacked, &mut pages_lost).await {
        lock(&history).acked_below = next_seq;
        world.report_stopped(NODE);
    }
}

/// Makes the unacknowledged tail durable. After a failed sync Linux may have marked its pages
/// clean without writing them (fsyncgate), so a later sync would "succeed" without them: the
/// tail is rewritten first, and nothing is acknowledged until a rewrite and a sync both
/// succeed. (The fuzzer found the first version of this, which ignored a failed rewrite;
/// `seeds/disk-log-fsyncgate-rewrite.toml` keeps that plan.)
async fn make_durable(file: &dyn StorageFile, acked_end: u64, unacked: &[u8], pages_lost: &mut bool) -> bool {
    if unacked.is_empty() {
        return true;
    }
    if *pages_lost {
        if file.write_at(acked_end, unacked).is_err() {
            return false;
        }
        *pages_lost = false;
    }
    match file.sync_range(acked_end, unacked.len() as u64).await {
        Ok(()) => true,
        Err(_) => {
            *pages_lost = true;
            false
        }
    }
}

/// Runs the scenario in the current simulation; returns the checkers' violations.
pub async fn run(
    seed: u64,
    trace: Arc<Trace>,
    plan: FaultPlan,
    bugs: BTreeSet<String>,
    config: toml::Table,
) -> Vec<Violation> {
    let ack_before_sync = bugs.contains(engine::Bug::AckBeforeSync.id());
    let (disk, pace) = match settings(&config) {
        Ok(s) => s,
        Err(message) => return crate::broker::config_violation(message),
    };
    let world = World::new(seed, trace.clone(), plan, WorldConfig { disk, ..WorldConfig::default() });
    let history: Shared = Arc::default();
    let (w, h) = (world.clone(), history.clone());
    let node = world.add_node(NODE, move || writer_process(w.clone(), h.clone(), ack_before_sync, pace));
    world.play_faults().await;
    tokio::time::sleep(Duration::from_millis(QUIET_MS)).await;
    // Final clean stop, then one more recovery by an independent reader.
    madsim::runtime::Handle::current().send_ctrl_c(node);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now_ms = trace.now_us() / 1_000;
    let storage = world.disk(NODE).storage();
    match storage.open(LOG.as_ref()) {
        Ok(file) => match read_all(file.as_ref()) {
            Ok(bytes) => {
                judge(&bytes, &history, now_ms);
            }
            Err(e) => lock(&history).violations.push(Violation {
                checker: "durability".into(),
                message: format!("log unreadable at the end: {e}"),
                at_ms: now_ms,
            }),
        },
        Err(e) => lock(&history).violations.push(Violation {
            checker: "durability".into(),
            message: format!("log file missing at the end: {e}"),
            at_ms: now_ms,
        }),
    }
    let mut h = lock(&history);
    if h.acked_below == 0 {
        h.violations.push(Violation {
            checker: "liveness".into(),
            message: "no record was ever acknowledged".into(),
            at_ms: now_ms,
        });
    }
    std::mem::take(&mut h.violations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim::{CrashKind, DiskConfig, DiskFaults, PowerLossModel, RunOptions, SimDisk};

    fn records(range: std::ops::Range<u64>) -> Vec<u8> {
        range.flat_map(encode).collect()
    }

    /// Runs `body` against a disk whose power loss keeps nothing that was not synced.
    fn on_lose_all_disk<F, Fut>(body: F) -> Vec<Violation>
    where
        F: FnOnce(Arc<SimDisk>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Vec<Violation>> + 'static,
    {
        let outcome = sim::run(RunOptions::new(1), move |trace: Arc<Trace>| async move {
            let config = DiskConfig { power_loss: PowerLossModel::LOSE_ALL, ..DiskConfig::default() };
            body(SimDisk::new(NODE, config, 1, trace)).await
        });
        outcome.violations
    }

    fn durable_records(disk: &SimDisk) -> Result<u64, String> {
        let image = disk.durable_image(LOG.as_ref()).ok_or("the log's name did not survive")?;
        Ok(scan(&image)?.1)
    }

    fn violation(message: String) -> Vec<Violation> {
        vec![Violation { checker: "test".into(), message, at_ms: 0 }]
    }

    /// Seed 7817: a process created the log and died before its directory sync; the next one
    /// found the file and wrote to it, and a power loss took the name away.
    #[test]
    fn boot_makes_a_found_files_name_durable() {
        let violations = on_lose_all_disk(|disk| async move {
            let storage = disk.storage();
            storage.create_dir_all(DIR.as_ref()).unwrap();
            drop(storage.create(LOG.as_ref()).unwrap());
            disk.crash(CrashKind::ProcessCrash);
            let (file, end, next_seq) =
                boot(disk.storage().as_ref(), &Shared::default(), &mut false, 0).await.expect("boot");
            file.write_at(end, &records(next_seq..next_seq + 8)).unwrap();
            file.sync_range(end, u64::MAX).await.unwrap();
            disk.crash(CrashKind::PowerLoss);
            match durable_records(&disk) {
                Ok(8) => Vec::new(),
                other => violation(format!("synced 8 records, {other:?} survived")),
            }
        });
        assert!(violations.is_empty(), "{violations:?}");
    }

    /// Seed 3587: a sync failed, the process died, and the next boot found the failed pages
    /// in the page cache (clean, never written): its own sync skipped them, it acknowledged
    /// records after them, and a power loss took them.
    #[test]
    fn boot_rewrites_the_prefix_a_failed_sync_left_unwritten() {
        let violations = on_lose_all_disk(|disk| async move {
            let storage = disk.storage();
            storage.create_dir_all(DIR.as_ref()).unwrap();
            let file = storage.create(LOG.as_ref()).unwrap();
            storage.sync_dir(DIR.as_ref()).await.unwrap();
            let synced = records(0..8);
            file.write_at(0, &synced).unwrap();
            file.sync_range(0, u64::MAX).await.unwrap();
            file.write_at(synced.len() as u64, &records(8..16)).unwrap();
            disk.set_faults(DiskFaults { sync_eio_prob: 1.0, ..DiskFaults::default() });
            assert!(file.sync_range(0, u64::MAX).await.is_err());
            disk.clear_faults();
            disk.crash(CrashKind::ProcessCrash);
            let (_, _, next_seq) =
                boot(disk.storage().as_ref(), &Shared::default(), &mut false, 0).await.expect("boot");
            disk.crash(CrashKind::PowerLoss);
            match durable_records(&disk) {
                Ok(n) if n == next_seq => Vec::new(),
                other => violation(format!("boot recovered {next_seq} records, {other:?} survived")),
            }
        });
        assert!(violations.is_empty(), "{violations:?}");
    }

    /// Seed 9082: a sync failed during boot and the writer gave up for good; nothing crashed
    /// it again, so it never acknowledged anything.
    #[test]
    fn a_failed_boot_is_retried() {
        let plan = FaultPlan::parse(
            r#"
            [[events]]
            at_ms = 0
            fault = "disk-errors"
            node = "writer"
            read_eio_prob = 0.0
            write_eio_prob = 0.0
            sync_eio_prob = 1.0
            duration_ms = 500
            "#,
        )
        .expect("plan");
        let outcome =
            sim::run(RunOptions::new(1), move |trace| run(1, trace, plan, BTreeSet::new(), toml::Table::new()));
        assert!(outcome.passed(), "{:?}", outcome.violations);
    }

    #[test]
    fn scan_stops_at_the_first_bad_record_and_rejects_forged_content() {
        let mut log = Vec::new();
        for seq in 0..5 {
            log.extend_from_slice(&encode(seq));
        }
        let full = log.len() as u64;
        assert_eq!(scan(&log), Ok((full, 5)));
        log.truncate(log.len() - 3);
        let (end, n) = scan(&log).unwrap();
        assert_eq!(n, 4);
        assert!(end < full);
        let mut forged = encode(0);
        forged.extend_from_slice(&encode(7));
        assert!(scan(&forged).is_err(), "a well-formed record with the wrong sequence is garbage");
    }
}
