//! One broker of the group: on every (re)start it opens its replica (entry-level recovery,
//! then the store's recovery in DLedger mode), runs the recovery checkers, then serves: Raft's
//! votes and appends from its peers, puts (acknowledged once a majority committed them) and
//! gets (from the consume queues, committed messages only) from clients, redirecting both to
//! the leader when it is not. Timers (election, heartbeat) run on madsim's time; every
//! `select!` is `biased`.
//!
//! An I/O error of the replica stops this boot (fail-stop: after a failed sync nothing
//! in memory can be trusted to match the files) and the process opens the replica again.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use engine::dledger::raft::Role;
use engine::dledger::replica::{PutRequest, Replica};
use engine::dledger::store_recovery::scan_messages;
use engine::dledger::{DLedgerError, EntryLog};
use engine::message::{decode, DecodeOptions, Decoded};
use madsim::net::Endpoint;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{Mutex, Notify};

use super::history::{AckedPut, CommittedEntry, EntryMsg};
use super::rpc::{Ack, Caller, Envelope, Reply, Request, BROKER_PORT, REQUEST_TAG};
use super::settings::Timing;
use super::{checkers, shapes};
use super::{Shared, MEMBERS};
use crate::broker::history::id_of_body;

const OPEN_RETRY_MS: u64 = 200;
const VOTE_TIMEOUT: Duration = Duration::from_millis(150);
const APPEND_TIMEOUT: Duration = Duration::from_millis(200);
const COMMIT_WAIT: Duration = Duration::from_millis(2_000);
/// The leader's first entry of a term: committing it commits every older entry before it.
pub const NOOP_TOPIC: &str = "DLEDGER_NOOP";

/// A value tasks wait on. Not `tokio::sync::watch`: its receivers wait on one of several
/// notifiers picked by a thread-local random number, so the order tasks wake in (and the
/// run) would depend on more than the seed.
pub struct Signal<T> {
    value: StdMutex<T>,
    notify: Notify,
}

impl<T: Copy> Signal<T> {
    fn new(v: T) -> Signal<T> {
        Signal { value: StdMutex::new(v), notify: Notify::new() }
    }

    fn get(&self) -> T {
        *self.value.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut T)) {
        f(&mut self.value.lock().unwrap_or_else(|e| e.into_inner()));
        self.notify.notify_waiters();
    }
}

/// One boot of a broker: its replica and what its tasks share.
pub struct Node {
    pub sh: Arc<Shared>,
    pub id: u32,
    pub replica: Mutex<Replica>,
    name: &'static str,
    peers: Caller,
    /// `(term, commit)` published by the leader whenever its commit moves.
    commit: Signal<(u64, Option<u64>)>,
    /// Bumped when the leader's log grows: replicators send at once.
    grew: Signal<u64>,
    flush: Notify,
    fatal: Notify,
    /// Set by a fail-stop: the tasks still holding this boot stop touching its replica.
    dead: AtomicBool,
    /// When this member last heard a leader or granted a vote (ms since the run began).
    last_heard_ms: AtomicU64,
    /// What this boot reported to the ledger, and the highest committed index it saw.
    reported: StdMutex<(Option<u64>, Option<u64>)>,
}

impl Node {
    fn now_ms(&self) -> u64 {
        self.sh.now_ms()
    }

    fn timing(&self) -> &Timing {
        &self.sh.settings.timing
    }

    fn fail(&self, what: &str, e: &DLedgerError) {
        sim::trace!(self.sh.world.trace(), self.name, "dledger.fail-stop", "{what}: {e}");
        self.fatal.notify_one();
    }

    /// After anything that may move the commit: checks and reports it, dispatches, and (as
    /// leader) publishes it for the puts waiting on it.
    fn after_change(&self, r: &mut Replica) {
        let now = self.now_ms();
        let c = r.member.log.committed_index();
        let (from, before) = {
            let mut g = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            let before = g.1;
            g.1 = g.1.max(c);
            if c < before {
                // Entries counted committed are gone: whatever takes their place is reported anew.
                g.0 = g.0.min(c);
            }
            (g.0.map_or(r.member.log.first_index(), |i| i + 1), before)
        };
        if let Some(v) = checkers::commit_moved(self.id, before, c, now) {
            self.sh.history().violations.push(v);
        }
        if let Some(c) = c {
            self.report(r, from, c);
        }
        if let Err(e) = r.dispatch() {
            self.fail("dispatch", &e);
        }
        if r.member.raft.role == Role::Leader {
            let now = (r.member.raft.term, r.member.raft.commit);
            shapes::on_commit(&self.sh, self.id, now.0, now.1);
            self.commit.update(|c| *c = now);
        }
    }

    /// Reports entries `from..=to` to the ledger.
    fn report(&self, r: &Replica, from: u64, to: u64) {
        let mut buf = Vec::new();
        let mut done = None;
        for i in from..=to {
            let h = match r.member.log.read_entry(i, &mut buf) {
                Ok(h) => h,
                Err(e) => {
                    sim::trace!(self.sh.world.trace(), self.name, "dledger.report-failed", "entry {i}: {e}");
                    break;
                }
            };
            let opts = DecodeOptions { expected_phy_offset: Some(h.body_pos()), ..DecodeOptions::default() };
            let msg = match decode(&buf[engine::dledger::ENTRY_HEADER_BYTES as usize..], &opts) {
                Decoded::Valid(m, _) => Some(EntryMsg {
                    id: id_of_body(&m.body),
                    topic: m.topic,
                    queue_id: m.queue_id,
                    queue_offset: m.queue_offset,
                }),
                _ => None,
            };
            let e = CommittedEntry { term: h.term, chain_crc: h.chain_crc, msg, reported_by: self.id };
            checkers::committed(&mut self.sh.history(), i, e, self.now_ms());
            done = Some(i);
        }
        if done.is_some() {
            let mut g = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            g.0 = g.0.max(done);
        }
    }

    /// The replica, unless this boot has been stopped.
    async fn lock(&self) -> Option<tokio::sync::MutexGuard<'_, Replica>> {
        let g = self.replica.lock().await;
        (!self.dead.load(Ordering::SeqCst)).then_some(g)
    }

    fn heard(&self) {
        self.last_heard_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    async fn handle(self: &Arc<Self>, request: Request) -> Option<Reply> {
        match request {
            Request::Vote(req) => {
                let mut r = self.lock().await?;
                match r.member.on_vote_request(&req).await {
                    Ok(reply) => {
                        if reply.granted {
                            self.heard();
                        }
                        Some(Reply::Vote(reply))
                    }
                    Err(e) => {
                        self.fail("vote", &e);
                        None
                    }
                }
            }
            Request::Append(req, entries) => {
                let mut r = self.lock().await?;
                match r.member.on_append(&req, &entries).await {
                    Ok(reply) => {
                        if reply.term == req.term {
                            self.heard();
                        }
                        self.after_change(&mut r);
                        Some(Reply::Append(reply))
                    }
                    Err(e @ (DLedgerError::Io(_) | DLedgerError::Store(_))) => {
                        self.fail("append", &e);
                        None
                    }
                    Err(e) => {
                        sim::trace!(self.sh.world.trace(), self.name, "dledger.append-refused", "{e}");
                        None
                    }
                }
            }
            Request::Put(msgs) => self.put(msgs).await,
            Request::Get { topic, queue_id, offset, max } => {
                let r = self.lock().await?;
                if r.member.raft.role != Role::Leader {
                    return Some(Reply::Redirect(r.member.raft.leader));
                }
                Some(Reply::Get(r.get(&topic, queue_id, offset, max).map_err(|e| e.to_string())))
            }
        }
    }

    /// Appends the messages, then waits until the leader commits them in the same term.
    async fn put(self: &Arc<Self>, msgs: Vec<super::rpc::PutMsg>) -> Option<Reply> {
        let mut appended = Vec::with_capacity(msgs.len());
        {
            let mut r = self.lock().await?;
            for m in &msgs {
                let keys: Vec<&str> = m.keys.iter().map(String::as_str).collect();
                let req = PutRequest {
                    topic: &m.topic,
                    queue_id: m.queue_id,
                    body: &m.body,
                    tags: m.tags.as_deref(),
                    keys: &keys,
                };
                match r.put(req) {
                    Ok(a) => appended.push(Ok(a)),
                    Err(DLedgerError::NotLeader { leader }) if appended.is_empty() => {
                        return Some(Reply::Redirect(leader))
                    }
                    Err(e) => {
                        if matches!(e, DLedgerError::Io(_) | DLedgerError::Store(_)) {
                            self.fail("put", &e);
                        }
                        appended.push(Err(e.to_string()));
                    }
                }
            }
        }
        self.flush.notify_one();
        self.grew.update(|v| *v += 1);
        let committed = |c: (u64, Option<u64>), a: &engine::dledger::replica::Appended| {
            c.0 == a.term && c.1.is_some_and(|i| i >= a.index)
        };
        let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
        let max_term = appended.iter().flatten().map(|a| a.term).max().unwrap_or(0);
        loop {
            let changed = self.commit.notify.notified();
            let c = self.commit.get();
            if c.0 > max_term || appended.iter().all(|a| a.as_ref().map_or(true, |a| committed(c, a))) {
                break;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if tokio::time::timeout(left, changed).await.is_err() {
                break;
            }
        }
        let c = self.commit.get();
        let mut h = self.sh.history();
        let results = msgs
            .iter()
            .zip(appended)
            .map(|(m, a)| {
                let a = a?;
                if !committed(c, &a) {
                    return Err(format!("entry {} of term {} not committed in time", a.index, a.term));
                }
                let ack = AckedPut {
                    topic: m.topic.clone(),
                    queue_id: m.queue_id,
                    queue_offset: a.queue_offset,
                    index: a.index,
                    term: a.term,
                    by: self.id,
                };
                h.acked.entry(m.id).or_insert(ack);
                Ok(Ack { index: a.index, term: a.term, queue_offset: a.queue_offset })
            })
            .collect();
        Some(Reply::Put(results))
    }

    /// Stands for election when no leader was heard for a random while.
    async fn election_timer(self: Arc<Self>, mut rng: ChaCha8Rng) {
        loop {
            let timeout_ms = rng.gen_range(self.timing().election_min_ms..self.timing().election_max_ms);
            tokio::time::sleep(Duration::from_millis(timeout_ms)).await;
            let quiet = self.now_ms().saturating_sub(self.last_heard_ms.load(Ordering::SeqCst)) >= timeout_ms;
            if !quiet {
                continue;
            }
            let req = {
                let Some(mut r) = self.lock().await else { return };
                if r.member.raft.role == Role::Leader {
                    continue;
                }
                match r.member.start_election().await {
                    Ok(req) => req,
                    Err(e) => {
                        self.fail("election", &e);
                        continue;
                    }
                }
            };
            self.heard();
            sim::trace!(self.sh.world.trace(), self.name, "dledger.election", "term={}", req.term);
            for peer in MEMBERS.iter().copied().filter(|&p| p != self.id) {
                let node = self.clone();
                tokio::spawn(async move {
                    let addr = node.sh.addr(peer);
                    let Some(Reply::Vote(reply)) = node.peers.call(addr, Request::Vote(req), VOTE_TIMEOUT).await else {
                        return;
                    };
                    let Some(mut r) = node.lock().await else { return };
                    match r.member.on_vote_reply(&reply).await {
                        Ok(true) => node.won(&mut r),
                        Ok(false) => {}
                        Err(e) => node.fail("vote reply", &e),
                    }
                });
            }
        }
    }

    /// Became leader: recorded for the checker, then a no-op entry of the new term.
    fn won(&self, r: &mut Replica) {
        let term = r.member.raft.term;
        sim::trace!(self.sh.world.trace(), self.name, "dledger.leader", "term={term}");
        checkers::leader_elected(&mut self.sh.history(), term, self.id, self.now_ms());
        shapes::on_leader(&self.sh, self.id, term, r.member.raft.commit);
        let noop = PutRequest { topic: NOOP_TOPIC, queue_id: 0, body: b"noop", tags: None, keys: &[] };
        if let Err(e) = r.put(noop) {
            self.fail("no-op", &e);
        }
        let now = (term, r.member.raft.commit);
        self.commit.update(|c| *c = now);
        self.flush.notify_one();
        self.grew.update(|v| *v += 1);
    }

    /// The leader's appends to one peer: on every heartbeat and whenever its log grows.
    async fn replicator(self: Arc<Self>, peer: u32) {
        let addr = self.sh.addr(peer);
        let mut seen = self.grew.get();
        loop {
            let grew = self.grew.notify.notified();
            if self.grew.get() == seen {
                tokio::select! {
                    biased;
                    _ = grew => {}
                    _ = tokio::time::sleep(Duration::from_millis(self.timing().heartbeat_ms)) => {}
                }
            }
            seen = self.grew.get();
            loop {
                let out = {
                    let Some(r) = self.lock().await else { return };
                    if r.member.raft.role != Role::Leader {
                        break;
                    }
                    match r.member.append_for(peer, self.timing().max_append_entries) {
                        Ok(o) => o,
                        Err(e) => {
                            self.fail("append_for", &e);
                            break;
                        }
                    }
                };
                let sent = out.entries.len();
                let Some(Reply::Append(reply)) =
                    self.peers.call(addr, Request::Append(out.request, out.entries), APPEND_TIMEOUT).await
                else {
                    break;
                };
                let Some(mut r) = self.lock().await else { return };
                if let Err(e) = r.member.on_append_reply(&reply).await {
                    self.fail("append reply", &e);
                    break;
                }
                self.after_change(&mut r);
                if reply.term > out.request.term || (reply.success && sent == 0) {
                    break;
                }
            }
        }
    }

    /// Syncs the log when asked (the leader counts itself only for synced entries), after
    /// the leader's flush interval if it has one (its followers' copies commit its entries
    /// meanwhile). The sync runs outside the replica's lock: appends, replies and votes go
    /// on meanwhile.
    async fn flusher(self: Arc<Self>) {
        let lazy_ms = self.timing().leader_flush_interval_ms;
        loop {
            self.flush.notified().await;
            if lazy_ms > 0 {
                tokio::time::sleep(Duration::from_millis(lazy_ms)).await;
            }
            let (plan, storage, dirs) = {
                let Some(mut r) = self.lock().await else { return };
                let plan = r.member.log.flush_plan();
                (plan, r.member.log.storage_arc(), r.member.log.dirs().clone())
            };
            if let Err(e) = EntryLog::run_flush(storage.as_ref(), &dirs, &plan).await {
                self.fail("flush", &e);
                return;
            }
            let Some(mut r) = self.lock().await else { return };
            match r.member.flushed(&plan).await {
                Ok(_) => self.after_change(&mut r),
                Err(e) => self.fail("flush", &e),
            }
        }
    }

    async fn queue_flusher(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(self.timing().cq_flush_ms)).await;
            let Some(mut r) = self.lock().await else { return };
            if let Err(e) = r.flush_queues().await {
                self.fail("queue flush", &e);
            }
        }
    }

    async fn serve(self: Arc<Self>, ep: Arc<Endpoint>) {
        loop {
            let Ok((payload, from)) = ep.recv_from_raw(REQUEST_TAG).await else {
                tokio::time::sleep(Duration::from_millis(self.timing().heartbeat_ms)).await;
                continue;
            };
            // Anything else on the request tag is not a request of ours: dropped.
            let Ok(env) = payload.downcast::<Envelope>() else { continue };
            // Weak: only this task keeps the port bound. madsim closes a socket dropped after its
            // node was restarted never, so a handler still waiting then would keep the port from
            // the next boot for good.
            let (node, ep) = (self.clone(), Arc::downgrade(&ep));
            tokio::spawn(async move {
                let Some(reply) = node.handle(env.request).await else { return };
                let Some(ep) = ep.upgrade() else { return };
                let _ = ep.send_to_raw(from, env.reply_tag, Box::new(reply)).await;
            });
        }
    }
}

/// The broker node's `init`, re-run by madsim on every restart.
pub async fn broker_process(sh: Arc<Shared>, id: u32) {
    let mut ctrl_c = pin!(tokio::signal::ctrl_c());
    // Poll once now: madsim kills a node on ctrl-c if it never asked for the signal.
    tokio::select! { biased; _ = &mut ctrl_c => {}, _ = std::future::ready(()) => {} }
    let name = super::node_name(id);
    // Everything this process bound is dropped before it reports itself stopped, so that the
    // next boot can bind the same port.
    boots(&sh, id, ctrl_c).await;
    sh.world.report_stopped(name);
    park().await
}

/// Binds the broker port, retrying while the previous process's endpoint lingers.
async fn bind(sh: &Shared, name: &str) -> Endpoint {
    loop {
        match Endpoint::bind(("0.0.0.0", BROKER_PORT)).await {
            Ok(ep) => return ep,
            Err(e) => {
                sim::trace!(sh.world.trace(), name, "dledger.bind-failed", "{e}");
                tokio::time::sleep(Duration::from_millis(OPEN_RETRY_MS)).await;
            }
        }
    }
}

/// Boots until a clean shutdown: a fail-stop opens the replica again in the same process.
async fn boots(sh: &Arc<Shared>, id: u32, mut ctrl_c: std::pin::Pin<&mut impl std::future::Future>) {
    let name = super::node_name(id);
    let ep = tokio::select! {
        biased;
        _ = &mut ctrl_c => return,
        ep = bind(sh, name) => Arc::new(ep),
    };
    loop {
        let boot = {
            let mut h = sh.history();
            let b = h.boots.entry(id).or_insert(0);
            *b += 1;
            *b
        };
        let (replica, peers) = tokio::select! {
            biased;
            _ = &mut ctrl_c => return,
            r = open_with_retries(sh, id) => (r, Caller::new(u64::from(id) | boot << 8).await),
        };
        let Ok(peers) = peers else { return };
        recovery_checks(sh, id, &replica);
        let node = Arc::new(Node {
            sh: sh.clone(),
            id,
            replica: Mutex::new(replica),
            name,
            peers,
            commit: Signal::new((0, None)),
            grew: Signal::new(0),
            flush: Notify::new(),
            fatal: Notify::new(),
            dead: AtomicBool::new(false),
            last_heard_ms: AtomicU64::new(sh.now_ms()),
            reported: StdMutex::new((None, None)),
        });
        {
            let mut r = node.replica.lock().await;
            node.after_change(&mut r);
        }
        sh.set_node(id, &node);
        sh.checks_done.fetch_add(1, Ordering::SeqCst);
        let rng = ChaCha8Rng::seed_from_u64(sh.seed ^ (u64::from(id) << 32) ^ boot);
        let mut tasks = vec![
            tokio::spawn(node.clone().serve(ep.clone())),
            tokio::spawn(node.clone().election_timer(rng)),
            tokio::spawn(node.clone().flusher()),
            tokio::spawn(node.clone().queue_flusher()),
        ];
        for peer in MEMBERS.iter().copied().filter(|&p| p != id) {
            tasks.push(tokio::spawn(node.clone().replicator(peer)));
        }
        let stop = tokio::select! {
            biased;
            _ = &mut ctrl_c => true,
            _ = node.fatal.notified() => false,
        };
        for t in &tasks {
            t.abort();
        }
        sh.clear_node(id);
        // Waits for the operation in flight, if any; after it nothing touches this replica.
        let mut r = node.replica.lock().await;
        node.dead.store(true, Ordering::SeqCst);
        if stop {
            let result = r.shutdown().await;
            sim::trace!(sh.world.trace(), name, "dledger.shutdown", "{result:?}");
            return;
        }
        // Fail-stop: this boot's memory is dropped and the replica opened again from its files.
    }
}

async fn park() {
    std::future::pending::<()>().await
}

async fn open_with_retries(sh: &Shared, id: u32) -> Replica {
    let name = super::node_name(id);
    loop {
        let storage = sh.world.disk(name).storage();
        let clock: Arc<dyn engine::io::Clock> = sh.world.clock(name);
        match Replica::open(storage, clock, sh.replica_config(id)).await {
            Ok(r) => return r,
            Err(e) => {
                sim::trace!(sh.world.trace(), name, "dledger.open-failed", "{e}");
                tokio::time::sleep(Duration::from_millis(OPEN_RETRY_MS)).await;
            }
        }
    }
}

/// The checks after a replica opened: its recovery kept the committed prefix, and its
/// consume queues hold exactly the committed messages of its log.
fn recovery_checks(sh: &Shared, id: u32, r: &Replica) {
    let name = super::node_name(id);
    // The checkers observe: an injected read error while they read says nothing of what the
    // replica holds. Synchronous, so nothing else runs while the faults are paused.
    let disk = sh.world.disk(name);
    let faults = disk.faults();
    disk.clear_faults();
    check_recovered(sh, id, r);
    disk.set_faults(faults);
}

fn check_recovered(sh: &Shared, id: u32, r: &Replica) {
    let now = sh.now_ms();
    let name = super::node_name(id);
    let (er, sr) = (&r.entry_report, &r.store_report);
    sim::trace!(
        sh.world.trace(),
        name,
        "dledger.recovered",
        "abnormal={} next_index={} committed={:?} cq_cut={:?} redispatched={}",
        sr.abnormal,
        er.tail.next_index,
        er.committed_index,
        sr.cq_truncated_to,
        sr.redispatched_messages
    );
    let mut found = Vec::new();
    if er.checkpoint_ahead_of_log {
        let claimed = er.checkpoint.as_ref().map(|c| c.checkpoint().committed_index);
        let msg = format!(
            "n{id}: the checkpoint names committed index {claimed:?}, the recovered log ends at {:?}",
            er.tail.last_index()
        );
        found.push(sim::Violation { checker: checkers::COMMITTED_PREFIX.into(), message: msg, at_ms: now });
    }
    let committed_end = r.committed_pos().unwrap_or(0);
    if let Some(cut) = sr.cq_truncated_to.filter(|&c| c < committed_end) {
        let msg = format!("n{id}: consume queues cut at {cut}, below the committed position {committed_end}");
        found.push(sim::Violation { checker: checkers::CONSUME_QUEUE.into(), message: msg, at_ms: now });
    }
    let mut expected: BTreeMap<(String, u32), BTreeMap<u64, (u64, u32)>> = BTreeMap::new();
    let start = r.member.log.data_files().first().map_or(0, |f| f.1);
    let scan = scan_messages(&r.member.log, start, committed_end, DecodeOptions::default(), false, |m, n| {
        expected
            .entry((m.topic.to_string(), m.queue_id))
            .or_default()
            .entry(m.queue_offset)
            .or_insert((m.phy_offset, n));
        Ok(())
    });
    match scan {
        Ok(_) => {
            let unit = |t: &str, q: u32, qo: u64| r.unit(t, q, qo).map_err(|e| e.to_string());
            found.extend(checkers::queues_match_log(id, &expected, unit, &r.queue_ends(), now));
        }
        Err(e) => sim::trace!(sh.world.trace(), name, "dledger.check-scan-failed", "{e}"),
    }
    sh.history().violations.extend(found);
}
