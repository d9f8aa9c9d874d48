//! The broker process of the `tiered` scenario: on every (re)start it runs the remote checks
//! on what the object store and the metadata file hold, opens the local store (which
//! recovers) and the tiered store over it, then serves puts, routed gets and key queries
//! until ctrl-c, when it shuts both down cleanly and records what the tiered store reported
//! committed. Half of the clean stops whose shutdown left nothing come back on a replaced
//! disk: the routing and index-complete checks run there.

use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use engine::tiered::{TieredError, TieredStore};
use engine::Store;
use madsim::net::Endpoint;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::world::NodeLife;

use super::checkers;
use super::{Shared, BROKER, ROOT};
use crate::broker::rpc::{Envelope, PutMsg, Reply, Request, BROKER_PORT, REQUEST_TAG};

/// Pause between attempts to open (a disk-error window may fail recovery; the object store may
/// be out).
const OPEN_RETRY_MS: u64 = 200;
/// How long one tiered open keeps listing a failing object store before it starts over.
const TIERED_OPEN_GIVE_UP_MS: u64 = 10_000;
/// Keys an `index-complete` check queries at most.
pub const EXPECTED_KEYS: usize = 64;

/// The broker node's `init`: re-run by madsim on every restart.
pub async fn broker_process(sh: Arc<Shared>) {
    let mut ctrl_c = pin!(tokio::signal::ctrl_c());
    // Poll once now: madsim kills a node on ctrl-c if it never asked for the signal.
    tokio::select! { biased; _ = &mut ctrl_c => {}, _ = std::future::ready(()) => {} }
    let replaced = std::mem::take(&mut sh.history().replace_at_boot);
    if replaced {
        // A replaced container after a clean stop that uploaded everything: a new, empty disk.
        sh.world.replace_disk(BROKER);
        sh.history().replaced_boot_running = true;
    }
    remote_checks(&sh, "at boot");
    let (expected, committed) = {
        let h = sh.history();
        (if replaced { checkers::expected_keys(&h, EXPECTED_KEYS) } else { Vec::new() }, h.committed.clone())
    };
    // A clean shutdown asked while the stores open ends the boot within its bound: opening
    // may wait on a failing disk or, for the tiered store, on an object store that is out.
    let store = tokio::select! {
        biased;
        _ = &mut ctrl_c => return stopped_while_opening(&sh, None).await,
        s = open_store(&sh) => Arc::new(s),
    };
    let tiered = tokio::select! {
        biased;
        _ = &mut ctrl_c => return stopped_while_opening(&sh, Some(&store)).await,
        t = open_tiered(&sh, &store) => Arc::new(t),
    };
    if store.start().is_err() {
        return park().await;
    }
    tiered.start();
    if replaced {
        // Routing first, while the local log is still empty (the check skips itself once a
        // producer's put has landed).
        let (s, st, t) = (sh.clone(), store.clone(), tiered.clone());
        tokio::spawn(async move {
            let when = "on a replaced disk";
            let mut found = checkers::routing(&st, &t, &committed, when, s.now_ms()).await;
            found.extend(checkers::index_complete(&t, &expected, when, s.now_ms()).await);
            s.history().violations.extend(found);
        });
    }
    *sh.serving_slot() = (Arc::downgrade(&store), Arc::downgrade(&tiered));
    sh.boots.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if sh.world.life(BROKER) == Some(NodeLife::ShuttingDown) {
        // A clean shutdown was asked while the stores were opening (the open of a tiered store
        // can wait on the object store): honour it now rather than report the node up.
        stop(&sh, &store, &tiered).await;
        return park().await;
    }
    sh.world.report_up(BROKER);
    sh.history().replaced_boot_running = false;
    serve(&sh, &store, &tiered, ctrl_c).await;
    stop(&sh, &store, &tiered).await;
    park().await
}

/// A clean shutdown before the tiered store opened: the local store (if open) stops
/// cleanly; the tiered store's open is abandoned like a crash, so nothing counts as
/// uploaded and the next boot keeps this disk.
async fn stopped_while_opening(sh: &Shared, store: Option<&Store>) {
    if let Some(store) = store {
        stop_local(sh, store).await;
    }
    {
        let mut h = sh.history();
        h.index_uploaded = false;
        h.replace_at_boot = false;
    }
    sim::trace!(sh.world.trace(), BROKER, "broker.stopped", "while opening");
    sh.world.report_stopped(BROKER);
    park().await
}

/// Shuts the local store down after the tiered one (or without it): nothing either took may
/// still be held then (a shutdown that failed keeps the active transient-pool buffer, as in
/// `broker`).
async fn stop_local(sh: &Shared, store: &Store) {
    let stopped = store.shutdown().await;
    let leaks = crate::broker::checkers::no_leak(
        &store.holds().outstanding(),
        sh.config.flush_mode,
        stopped.is_err(),
        sh.now_ms(),
    );
    sh.history().violations.extend(leaks);
}

async fn park() {
    std::future::pending::<()>().await
}

async fn open_store(sh: &Shared) -> Store {
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

async fn open_tiered(sh: &Shared, store: &Arc<Store>) -> TieredStore {
    let obj = sh.world.object_store().expect("the tiered world has an object store").client(BROKER);
    loop {
        let storage = sh.world.disk(BROKER).storage();
        let r = TieredStore::open(
            sh.tiered.clone(),
            sh.config.bugs.clone(),
            store.clone(),
            obj.clone(),
            storage,
            sh.world.clock(BROKER),
            Path::new(ROOT),
            TIERED_OPEN_GIVE_UP_MS,
        )
        .await;
        match r {
            Ok(t) => return t,
            Err(e) => {
                sim::trace!(sh.world.trace(), BROKER, "broker.tiered_open_failed", "{e}");
                tokio::time::sleep(Duration::from_millis(OPEN_RETRY_MS)).await;
            }
        }
    }
}

/// Runs the checks on the object store's contents and the metadata file on the broker's disk
/// (read without faults), and remembers what the object store holds.
pub fn remote_checks(sh: &Shared, when: &str) {
    let objects = sh.world.object_store().expect("object store").objects();
    let meta_path = engine::tiered::store::metadata_path(Path::new(ROOT));
    let meta = sh.world.disk(BROKER).current_image(&meta_path);
    let now_ms = sh.now_ms();
    let mut found = checkers::contiguity(&objects, meta.as_deref(), when, now_ms);
    let mut h = sh.history();
    let (readable, ids) = checkers::readable(&objects, &h, when, now_ms);
    found.extend(readable);
    h.remote_ids = ids;
    h.violations.extend(found);
}

/// Serves requests until ctrl-c.
async fn serve(
    sh: &Arc<Shared>,
    store: &Arc<Store>,
    tiered: &Arc<TieredStore>,
    mut ctrl_c: std::pin::Pin<&mut impl std::future::Future>,
) {
    let Ok(ep) = Endpoint::bind(("0.0.0.0", BROKER_PORT)).await else {
        let _ = ctrl_c.await;
        return;
    };
    let ep = Arc::new(ep);
    loop {
        tokio::select! {
            biased;
            _ = &mut ctrl_c => return,
            r = ep.recv_from_raw(REQUEST_TAG) => {
                let Ok((payload, from)) = r else {
                    // The network refused (node partitioned or restarting): do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(env) = payload.downcast::<Envelope>() else { continue };
                let (store, tiered, ep) = (Arc::downgrade(store), Arc::downgrade(tiered), ep.clone());
                let _ = sh;
                tokio::spawn(async move {
                    let Some(reply) = handle(store, tiered, env.request).await else { return };
                    let _ = ep.send_to_raw(from, env.reply_tag, Box::new(reply)).await;
                });
            }
        }
    }
}

async fn handle(store: Weak<Store>, tiered: Weak<TieredStore>, request: Request) -> Option<Reply> {
    match request {
        Request::Put(msgs) => {
            let tasks: Vec<_> = msgs.into_iter().map(|m| tokio::spawn(put_one(store.clone(), m))).collect();
            let mut results = Vec::with_capacity(tasks.len());
            for t in tasks {
                results.push(t.await.unwrap_or_else(|e| Err(format!("put task failed: {e}"))));
            }
            Some(Reply::Put(results))
        }
        Request::Get { topic, queue_id, offset, max } => {
            let tiered = tiered.upgrade()?;
            let r = tiered.get(&topic, queue_id, offset, max).await.map_err(|e: TieredError| e.to_string());
            Some(Reply::Get(r))
        }
        Request::QueryKey { topic, key, max } => {
            let tiered = tiered.upgrade()?;
            let r = tiered.query_by_key(&topic, &key, 0, i64::MAX, max).await.map_err(|e: TieredError| e.to_string());
            Some(Reply::Get(r))
        }
    }
}

async fn put_one(store: Weak<Store>, m: PutMsg) -> Result<crate::broker::history::Ack, String> {
    let store = store.upgrade().ok_or("broker is gone")?;
    let keys: Vec<&str> = m.keys.iter().map(String::as_str).collect();
    let r = store.put(&m.topic, m.queue_id, &m.body, m.tags.as_deref(), &keys).await.map_err(|e| e.to_string())?;
    Ok(crate::broker::history::Ack {
        phy_offset: r.phy_offset,
        size_bytes: r.size_bytes,
        queue_offset: r.queue_offset,
        store_timestamp_ms: r.store_timestamp_ms,
        epoch: 0,
    })
}

/// Clean shutdown: the tiered store first (it reads the local one), then the local store;
/// records what the tiered store reported committed.
async fn stop(sh: &Shared, store: &Store, tiered: &TieredStore) {
    let r = tiered.shutdown().await;
    // After the dispatcher stopped: no flat file is busy, every queue is reported.
    let states = tiered.queue_states().await;
    if let Err(e) = &r {
        sim::trace!(sh.world.trace(), BROKER, "broker.tiered_shutdown_failed", "{e}");
    }
    stop_local(sh, store).await;
    *sh.serving_slot() = (Weak::new(), Weak::new());
    {
        let mut h = sh.history();
        h.committed = states
            .iter()
            .map(|s| ((s.queue.topic.clone(), s.queue.queue_id), (s.min_queue_offset, s.commit_queue_offset)))
            .collect();
        h.index_uploaded = r.as_ref().is_ok_and(|left| left.is_empty());
        // Half of the clean stops that left nothing come back as a replaced container.
        let boots = sh.boots.load(std::sync::atomic::Ordering::SeqCst);
        let mut rng = ChaCha8Rng::seed_from_u64(sh.seed ^ 0x4e_70_1a_ce ^ boots);
        h.replace_at_boot = h.index_uploaded && rng.gen_bool(0.5);
    }
    sim::trace!(sh.world.trace(), BROKER, "broker.stopped", "tiered={:?}", r.is_ok());
    sh.world.report_stopped(BROKER);
}
