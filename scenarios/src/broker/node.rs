//! The broker process: on every (re)start it opens the store (which recovers), runs the
//! recovery checkers against the history, then serves puts and gets until ctrl-c, when it
//! shuts the store down cleanly and reports how that went.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use engine::checkpoint::CheckpointData;
use engine::consume_queue::{queue_dir, CqUnit, CQ_UNIT_SIZE};
use engine::Store;
use madsim::net::Endpoint;

use super::checkers::{self, BootFacts, CheckInput, CqClaim};
use super::history::{Ack, CleanStop, CrashCounts, Epoch, SendOutcome, SinceLastBoot};
use super::rpc::{Envelope, PutMsg, Reply, Request, BROKER_PORT, REQUEST_TAG};
use super::state::{decode_log, read_commit_log, DecodedLog, StoreView};
use super::{Shared, BROKER, ROOT};

/// Pause between attempts to open the store (a disk-error window may fail recovery).
const OPEN_RETRY_MS: u64 = 200;
/// How often the serving broker records the store's watermarks.
const WATERMARK_EVERY_MS: u64 = 50;

/// The broker node's `init`: re-run by madsim on every restart.
pub async fn broker_process(sh: Arc<Shared>) {
    let mut ctrl_c = pin!(tokio::signal::ctrl_c());
    // Poll once now: madsim kills a node on ctrl-c if it never asked for the signal, and a
    // clean shutdown must reach this process even while it is still recovering.
    tokio::select! { biased; _ = &mut ctrl_c => {}, _ = std::future::ready(()) => {} }
    let (epoch, since) = begin_epoch(&sh);
    let boot = boot_facts(&sh);
    let store = Arc::new(open_with_retries(&sh).await);
    sh.history().epochs[epoch].open_completed = true;
    // A bit flip while the open was retrying (a disk-error window) hit what this recovery
    // read: it waives survival as much as one before the boot.
    let flips_now = counts(&sh).bit_flips;
    let since =
        SinceLastBoot { bit_flips_total: flips_now, bit_flips_during_open: flips_now - since.bit_flips_total, ..since };
    recovery_checks(&sh, &store, epoch, since, &boot);
    if store.start().is_err() {
        return park().await;
    }
    *sh.store_slot() = Arc::downgrade(&store);
    sh.world.report_up(BROKER);
    serve(&sh, &store, ctrl_c).await;
    stop(&sh, &store).await;
    park().await
}

async fn park() {
    std::future::pending::<()>().await
}

fn counts(sh: &Shared) -> CrashCounts {
    let s = sh.world.disk(BROKER).stats();
    CrashCounts { crashes: s.crashes, power_losses: s.power_losses, bit_flips: s.bit_flips }
}

/// Starts a new epoch; settles the previous one's watermarks; says what happened since the
/// last checked boot.
fn begin_epoch(sh: &Shared) -> (usize, SinceLastBoot) {
    let now = counts(sh);
    let started_ms = sh.now_ms();
    let mut h = sh.history();
    // Count from the last boot whose recovery was checked (its open completed), not from the
    // last boot attempt: an epoch whose open never completed ran no recovery checks, so a
    // power loss before it (e.g. power loss, boot whose open keeps failing on EIO, then a
    // kill) would otherwise be forgotten and page-cache-only messages it legitimately lost
    // demanded back by `durability`.
    let prev = h.epochs.iter().rev().find(|e| e.open_completed).map(|e| e.counts_at_boot).unwrap_or_default();
    if let Some(p) = h.current_epoch() {
        h.settle_epoch(p);
    }
    h.epochs.push(Epoch { started_ms, counts_at_boot: now, ..Epoch::default() });
    let since = SinceLastBoot {
        crashes: now.crashes - prev.crashes,
        power_losses: now.power_losses - prev.power_losses,
        bit_flips_total: now.bit_flips,
        bit_flips_during_open: 0,
    };
    (h.epochs.len() - 1, since)
}

/// The commit log as the disk holds it now, decoded by the checker (no fault injection).
pub fn decode_disk_log(sh: &Shared) -> DecodedLog {
    let disk = sh.world.disk(BROKER);
    let root = Path::new(ROOT);
    let names: Vec<String> = disk
        .storage()
        .list_dir(&root.join("commitlog"))
        .map(|v| v.into_iter().map(|e| e.name).collect())
        .unwrap_or_default();
    let files = read_commit_log(&names, root, |p| disk.current_image(p));
    decode_log(&files, sh.config.max_message_size_bytes)
}

fn boot_facts(sh: &Shared) -> BootFacts {
    let disk = sh.world.disk(BROKER);
    let root = Path::new(ROOT);
    let checkpoint = disk.current_image(&root.join("checkpoint")).and_then(|b| CheckpointData::decode(&b));
    let log = decode_disk_log(sh);
    let cq_claims = checkpoint.map_or_else(Vec::new, |c| cq_claims(sh, &log, c.logics_msg_timestamp_ms));
    BootFacts {
        abort_existed: disk.storage().exists(&root.join("abort")),
        checkpoint,
        log_max_timestamp_ms: log.max_store_timestamp_ms(),
        cq_claims,
    }
}

/// The messages stored strictly before the checkpoint's consume-queue timestamp (dispatch
/// runs in log order and store timestamps never decrease in it, so all of them had been
/// dispatched when that timestamp was taken), each with the unit its queue holds on disk.
fn cq_claims(sh: &Shared, log: &DecodedLog, logics_ts_ms: i64) -> Vec<CqClaim> {
    let disk = sh.world.disk(BROKER);
    let file_bytes = sh.config.cq_units_per_file * CQ_UNIT_SIZE;
    let mut files: BTreeMap<PathBuf, Option<Vec<u8>>> = BTreeMap::new();
    let mut unit_at = |topic: &str, queue_id: u32, queue_offset: u64| -> Option<CqUnit> {
        let at = queue_offset * CQ_UNIT_SIZE;
        let start = at - at % file_bytes;
        let path = queue_dir(Path::new(ROOT), topic, queue_id).join(format!("{start:020}"));
        let image = files.entry(path).or_insert_with_key(|p| disk.current_image(p)).as_deref()?;
        let pos = (at - start) as usize;
        let unit: &[u8; 20] = image.get(pos..pos + CQ_UNIT_SIZE as usize)?.try_into().ok()?;
        Some(CqUnit::decode(unit))
    };
    log.msgs
        .values()
        .take_while(|m| m.store_timestamp_ms < logics_ts_ms)
        .map(|m| CqClaim {
            phy: m.phy,
            size_bytes: m.size,
            queue_offset: m.queue_offset,
            store_timestamp_ms: m.store_timestamp_ms,
            unit_on_disk: unit_at(&m.topic, m.queue_id, m.queue_offset),
        })
        .collect()
}

async fn open_with_retries(sh: &Shared) -> Store {
    let clock: Arc<dyn engine::io::Clock> = sh.world.clock(BROKER);
    loop {
        let storage = sh.world.disk(BROKER).storage();
        match Store::open(sh.config.clone(), storage, clock.clone()).await {
            Ok(store) => return store,
            Err(e) => {
                sim::trace!(sh.world.trace(), BROKER, "broker.open_failed", "{e}");
                tokio::time::sleep(Duration::from_millis(OPEN_RETRY_MS)).await;
            }
        }
    }
}

/// What the store answers, read with injected disk faults paused. The checkers observe the
/// store: an injected read error while they read says nothing about what the store promised,
/// and a capture issues hundreds of reads, so inside a disk-error window retries alone could
/// not get through (broker seed 108107: a read error rate of 4% failed eight attempts of one
/// `get`). Capturing is synchronous, so nothing else runs while the faults are paused.
fn capture_without_faults(sh: &Shared, store: &Store, log: &DecodedLog) -> StoreView {
    let disk = sh.world.disk(BROKER);
    let faults = disk.faults();
    disk.clear_faults();
    let view = StoreView::capture(store, log);
    disk.set_faults(faults);
    view
}

/// Runs the recovery checkers and updates the history with what survived.
fn recovery_checks(sh: &Shared, store: &Store, epoch: usize, since: SinceLastBoot, boot: &BootFacts) {
    let log = decode_disk_log(sh);
    let view = capture_without_faults(sh, store, &log);
    let now_ms = sh.now_ms();
    let kind = store.last_recovery().kind;
    let mut h = sh.history();
    let acked_present = h
        .sends
        .values()
        .filter(|s| matches!(&s.outcome, SendOutcome::Acked(a) if log.has_at(s.id, a.phy_offset)))
        .count();
    sim::trace!(
        sh.world.trace(),
        BROKER,
        "broker.recovered",
        "epoch={epoch} kind={kind:?} end={} msgs={} acked_present={acked_present}",
        log.end,
        log.msgs.len()
    );
    let found = {
        let input = CheckInput { history: &h, log: &log, view: &view, since, epoch, now_ms };
        checkers::check_recovery(&input, boot)
    };
    h.violations.extend(found);
    checkers::after_recovery(&mut h, &log, epoch);
    h.observe_watermarks(store.committed_offset(), store.flushed_offset());
    drop(h);
    sh.checks_done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Serves requests until ctrl-c.
async fn serve(sh: &Arc<Shared>, store: &Arc<Store>, mut ctrl_c: std::pin::Pin<&mut impl std::future::Future>) {
    let Ok(ep) = Endpoint::bind(("0.0.0.0", BROKER_PORT)).await else {
        let _ = ctrl_c.await;
        return;
    };
    let ep = Arc::new(ep);
    loop {
        // `biased`: without it the branch polled first is drawn from a process-wide counter
        // (tokio's `select!` is not simulated), and a seed's run depended on the runs before
        // it in the process (seed 245 of the broker scenario).
        tokio::select! {
            biased;
            _ = &mut ctrl_c => return,
            r = ep.recv_from_raw(REQUEST_TAG) => {
                let Ok((payload, from)) = r else {
                    // The network refused (node partitioned or restarting): do not spin.
                    tokio::time::sleep(Duration::from_millis(WATERMARK_EVERY_MS)).await;
                    continue;
                };
                let Ok(env) = payload.downcast::<Envelope>() else { continue };
                let (sh, store, ep) = (sh.clone(), Arc::downgrade(store), ep.clone());
                tokio::spawn(async move {
                    let Some(reply) = handle(&sh, store, env.request).await else { return };
                    let _ = ep.send_to_raw(from, env.reply_tag, Box::new(reply)).await;
                });
            }
            _ = tokio::time::sleep(Duration::from_millis(WATERMARK_EVERY_MS)) => {
                sh.history().observe_watermarks(store.committed_offset(), store.flushed_offset());
            }
        }
    }
}

async fn handle(sh: &Arc<Shared>, store: Weak<Store>, request: Request) -> Option<Reply> {
    match request {
        Request::Put(msgs) => {
            let tasks: Vec<_> = msgs.into_iter().map(|m| tokio::spawn(put_one(sh.clone(), store.clone(), m))).collect();
            let mut results = Vec::with_capacity(tasks.len());
            for t in tasks {
                results.push(t.await.unwrap_or_else(|e| Err(format!("put task failed: {e}"))));
            }
            let store = store.upgrade()?;
            sh.history().observe_watermarks(store.committed_offset(), store.flushed_offset());
            Some(Reply::Put(results))
        }
        Request::Get { topic, queue_id, offset, max } => {
            let store = store.upgrade()?;
            Some(Reply::Get(store.get(&topic, queue_id, offset, max).map_err(|e| e.to_string())))
        }
        Request::QueryKey { topic, key, max } => {
            let store = store.upgrade()?;
            Some(Reply::Get(store.query_by_key(&topic, &key, 0, i64::MAX, max).map_err(|e| e.to_string())))
        }
    }
}

/// Puts one message; an ack is recorded in the history at once (the store's promise stands
/// even if the reply is lost on the way).
async fn put_one(sh: Arc<Shared>, store: Weak<Store>, m: PutMsg) -> Result<Ack, String> {
    let store = store.upgrade().ok_or("broker is gone")?;
    let keys: Vec<&str> = m.keys.iter().map(String::as_str).collect();
    let r = store.put(&m.topic, m.queue_id, &m.body, m.tags.as_deref(), &keys).await.map_err(|e| e.to_string())?;
    let mut h = sh.history();
    let epoch = h.current_epoch().unwrap_or(0);
    let ack = Ack {
        phy_offset: r.phy_offset,
        size_bytes: r.size_bytes,
        queue_offset: r.queue_offset,
        store_timestamp_ms: r.store_timestamp_ms,
        epoch,
    };
    h.record_outcome(m.id, SendOutcome::Acked(ack));
    Ok(ack)
}

/// Clean shutdown: records how it went, checks for leaks, reports the node stopped.
async fn stop(sh: &Shared, store: &Store) {
    if let Some(e) = sh.history().epochs.last_mut() {
        e.stop_started = true;
    }
    let t0 = tokio::time::Instant::now();
    let r = store.shutdown().await;
    let stop = CleanStop {
        ok: r.is_ok(),
        writeable: store.is_writeable(),
        behind_bytes: store.dispatch_behind_bytes(),
        took_ms: t0.elapsed().as_millis() as u64,
    };
    *sh.store_slot() = Weak::new();
    let leaks = {
        // A shutdown that failed (unwriteable store) could not commit the active file's
        // buffer; the engine keeps it rather than drop its data silently: allowed.
        checkers::no_leak(&store.holds().outstanding(), sh.config.flush_mode, !stop.ok, sh.now_ms())
    };
    let mut h = sh.history();
    h.observe_watermarks(store.committed_offset(), store.flushed_offset());
    if let Some(e) = h.epochs.last_mut() {
        e.clean_stop = Some(stop);
    }
    h.violations.extend(leaks);
    drop(h);
    sim::trace!(sh.world.trace(), BROKER, "broker.stopped", "{stop:?}");
    sh.world.report_stopped(BROKER);
}
