//! One member of a DLedger group as a real process: its replica on a real directory, one TCP
//! port for its peers' votes and appends and its clients' puts and gets (`dledger::tcp`,
//! frames of `dledger::wire`), election and heartbeat timers on tokio's clock. The leader
//! acknowledges a put once a majority committed it (each counted member synced it first);
//! a member that does not lead answers puts and gets with a redirect.
//!
//! `RUSTFLAGS="" cargo build --release --target-dir /work/main/target/std -p engine --examples`
//!
//!   dledger_node --id N --dir DIR --members 1=127.0.0.1:P1,2=127.0.0.1:P2,3=127.0.0.1:P3
//!                [--sparse] [--in-flight N]
//!
//! It listens on its own member's address. Work in the leader's critical path is batched:
//! every put appended while the log's sync runs is covered by the next one (group commit),
//! and each peer's replicator sends everything appended since its last append in one
//! request, with up to `--in-flight N` (default 2) requests on their way at once. Data and
//! index files are synced at once; the checkpoint is written every 500 ms with the consume
//! queues, not on every commit (`Member::defer_checkpoint`); a fresh log's first files are
//! zero-filled before it opens unless `--sparse`. An I/O error stops the process (fail-stop:
//! after a failed sync nothing in memory can be trusted to match the files); restarted, it
//! recovers from its files. Interrupted (SIGINT), it shuts down cleanly.

// TCP (`engine::dledger::tcp`) is in the real build only; the simulation build compiles a stub.
#[cfg(madsim)]
fn main() {
    eprintln!("dledger_node runs in the real build (RUSTFLAGS=\"\", see the header)");
    std::process::exit(2);
}

#[cfg(not(madsim))]
fn main() -> anyhow::Result<()> {
    real::main()
}

#[cfg(not(madsim))]
mod real {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::pin::pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::{Duration, Instant};

    use engine::bugs::BugSet;
    use engine::dledger::raft::Role;
    use engine::dledger::replica::{PutRequest, Replica, ReplicaConfig};
    use engine::dledger::tcp::{serve, Client};
    use engine::dledger::wire::{Ack, PutMsg, Reply, Request};
    use engine::dledger::{DLedgerConfig, DLedgerError, DLedgerPaths, EntryLog};
    use engine::io::real::RealStorage;
    use engine::io::{Storage, SystemClock};
    use engine::mapped_file::file_name;
    use tokio::sync::{mpsc, Mutex, Notify};

    const HEARTBEAT: Duration = Duration::from_millis(100);
    /// Generous next to the heartbeat: the group shares a loaded machine, and a member starved
    /// of CPU for a while must not depose a healthy leader.
    const ELECTION_MIN_MS: u64 = 1_000;
    const ELECTION_MAX_MS: u64 = 2_000;
    const VOTE_TIMEOUT: Duration = Duration::from_millis(500);
    const APPEND_TIMEOUT: Duration = Duration::from_millis(2_000);
    const COMMIT_WAIT: Duration = Duration::from_millis(5_000);
    const BACKGROUND_FLUSH: Duration = Duration::from_millis(500);
    /// Entries per append request (1 KiB messages: about 1 MiB).
    const MAX_APPEND_ENTRIES: u64 = 1_024;
    /// Appends on their way to one peer at once, by default (`--in-flight N`).
    const IN_FLIGHT: usize = 2;
    /// The leader's first entry of a term: committing it commits every older entry before it.
    const NOOP_TOPIC: &str = "DLEDGER_NOOP";

    struct Args {
        id: u32,
        dir: PathBuf,
        members: BTreeMap<u32, SocketAddr>,
        /// A fresh log's first data and index files left sparse, not zero-filled.
        sparse: bool,
        /// Appends on their way to one peer at once (1: each waits for the previous reply).
        in_flight: usize,
    }

    fn args() -> anyhow::Result<Args> {
        let mut v: Vec<String> = std::env::args().skip(1).collect();
        let sparse = v.iter().position(|f| f == "--sparse").map(|i| v.remove(i)).is_some();
        let (mut id, mut dir, mut members, mut in_flight) = (None, None, BTreeMap::new(), IN_FLIGHT);
        for pair in v.chunks(2) {
            let val = pair.get(1).ok_or_else(|| anyhow::anyhow!("{} needs a value", pair[0]))?;
            match pair[0].as_str() {
                "--id" => id = Some(val.parse()?),
                "--dir" => dir = Some(PathBuf::from(val)),
                "--in-flight" => in_flight = val.parse()?,
                "--members" => {
                    for m in val.split(',') {
                        let (n, addr) = m.split_once('=').ok_or_else(|| anyhow::anyhow!("member {m}: want ID=ADDR"))?;
                        members.insert(n.parse()?, addr.parse()?);
                    }
                }
                other => anyhow::bail!("unknown option {other}"),
            }
        }
        let id = id.ok_or_else(|| anyhow::anyhow!("--id N is required"))?;
        let dir = dir.ok_or_else(|| anyhow::anyhow!("--dir DIR is required"))?;
        anyhow::ensure!(members.contains_key(&id), "--members must name member {id}");
        anyhow::ensure!(in_flight > 0, "--in-flight must be at least 1");
        Ok(Args { id, dir, members, sparse, in_flight })
    }

    /// A value tasks wait on: read it, and wait for the next change.
    struct Signal<T> {
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

    /// Counters of the leader's batching: puts per sync, entries per append request.
    #[derive(Default)]
    struct Stats {
        puts: AtomicU64,
        flushes: AtomicU64,
        appends: AtomicU64,
        entries_sent: AtomicU64,
    }

    impl Stats {
        fn line(&self) -> String {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            let per = |a: u64, b: u64| a as f64 / b.max(1) as f64;
            let (puts, flushes) = (get(&self.puts), get(&self.flushes));
            let (appends, sent) = (get(&self.appends), get(&self.entries_sent));
            format!(
                "{puts} puts, {flushes} leader syncs ({:.1} puts per sync), {appends} append requests \
                 ({:.1} entries each)",
                per(puts, flushes),
                per(sent, appends)
            )
        }
    }

    struct Node {
        id: u32,
        replica: Mutex<Replica>,
        peers: BTreeMap<u32, Client>,
        /// `(term, commit)` published by the leader whenever its commit moves.
        commit: Signal<(u64, Option<u64>)>,
        /// Bumped when the leader's log grows: replicators send at once.
        grew: Signal<u64>,
        flush: Notify,
        /// Appends on their way to one peer at once.
        in_flight: usize,
        started: Instant,
        /// When this member last heard a leader or granted a vote (ms since `started`).
        last_heard_ms: AtomicU64,
        /// How much work each batch carried, printed at shutdown.
        stats: Stats,
    }

    impl Node {
        fn now_ms(&self) -> u64 {
            self.started.elapsed().as_millis() as u64
        }

        fn heard(&self) {
            self.last_heard_ms.store(self.now_ms(), Ordering::SeqCst);
        }

        /// Fail-stop.
        fn fail(&self, what: &str, e: &DLedgerError) -> ! {
            eprintln!("n{}: {what}: {e}; stopping", self.id);
            std::process::exit(2)
        }

        /// After anything that may move the commit: dispatch, and (as leader) publish it for the
        /// puts waiting on it.
        fn after_change(&self, r: &mut Replica) {
            if let Err(e) = r.dispatch() {
                self.fail("dispatch", &e);
            }
            if r.member.raft.role == Role::Leader {
                let now = (r.member.raft.term, r.member.raft.commit);
                self.commit.update(|c| *c = now);
            }
        }

        async fn handle(self: Arc<Self>, request: Request) -> Option<Reply> {
            match request {
                Request::Vote(req) => {
                    let mut r = self.replica.lock().await;
                    match r.member.on_vote_request(&req).await {
                        Ok(reply) => {
                            if reply.granted {
                                self.heard();
                            }
                            Some(Reply::Vote(reply))
                        }
                        Err(e) => self.fail("vote", &e),
                    }
                }
                Request::Append(req, entries) => {
                    let mut r = self.replica.lock().await;
                    match r.member.on_append(&req, &entries).await {
                        Ok(reply) => {
                            if reply.term == req.term {
                                self.heard();
                            }
                            self.after_change(&mut r);
                            Some(Reply::Append(reply))
                        }
                        Err(e @ (DLedgerError::Io(_) | DLedgerError::Store(_))) => self.fail("append", &e),
                        Err(e) => {
                            eprintln!("n{}: append refused: {e}", self.id);
                            None
                        }
                    }
                }
                Request::Put(msgs) => Some(self.put(msgs).await),
                Request::Get { topic, queue_id, offset, max } => {
                    let r = self.replica.lock().await;
                    if r.member.raft.role != Role::Leader {
                        return Some(Reply::Redirect(r.member.raft.leader));
                    }
                    Some(Reply::Get(r.get(&topic, queue_id, offset, max).map_err(|e| e.to_string())))
                }
            }
        }

        /// Appends the messages, then waits until the leader commits them in the same term.
        async fn put(self: &Arc<Self>, msgs: Vec<PutMsg>) -> Reply {
            let mut appended = Vec::with_capacity(msgs.len());
            {
                let mut r = self.replica.lock().await;
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
                        Ok(a) => {
                            self.stats.puts.fetch_add(1, Ordering::Relaxed);
                            appended.push(Ok(a))
                        }
                        Err(DLedgerError::NotLeader { leader }) if appended.is_empty() => {
                            return Reply::Redirect(leader)
                        }
                        Err(e @ (DLedgerError::Io(_) | DLedgerError::Store(_))) => self.fail("put", &e),
                        Err(e) => appended.push(Err(e.to_string())),
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
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    break;
                }
            }
            let c = self.commit.get();
            let results = appended
                .into_iter()
                .map(|a| {
                    let a = a?;
                    if !committed(c, &a) {
                        return Err(format!("entry {} of term {} not committed in time", a.index, a.term));
                    }
                    Ok(Ack { index: a.index, term: a.term, queue_offset: a.queue_offset })
                })
                .collect();
            Reply::Put(results)
        }

        /// Stands for election when no leader was heard for a random while.
        async fn election_timer(self: Arc<Self>) {
            // Any spread will do outside a simulation: the process id and the clock.
            let mut x = u64::from(std::process::id()) << 32 ^ self.started.elapsed().as_nanos() as u64 | 1;
            loop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let timeout_ms = ELECTION_MIN_MS + x % (ELECTION_MAX_MS - ELECTION_MIN_MS);
                tokio::time::sleep(Duration::from_millis(timeout_ms)).await;
                if self.now_ms().saturating_sub(self.last_heard_ms.load(Ordering::SeqCst)) < timeout_ms {
                    continue;
                }
                let req = {
                    let mut r = self.replica.lock().await;
                    if r.member.raft.role == Role::Leader {
                        continue;
                    }
                    match r.member.start_election().await {
                        Ok(req) => req,
                        Err(e) => self.fail("election", &e),
                    }
                };
                self.heard();
                eprintln!("n{}: standing for term {}", self.id, req.term);
                for peer in self.peers.keys().copied() {
                    let node = self.clone();
                    tokio::spawn(async move {
                        let Ok(Reply::Vote(reply)) = node.peers[&peer].call(Request::Vote(req), VOTE_TIMEOUT).await
                        else {
                            return;
                        };
                        let mut r = node.replica.lock().await;
                        match r.member.on_vote_reply(&reply).await {
                            Ok(true) => node.won(&mut r),
                            Ok(false) => {}
                            Err(e) => node.fail("vote reply", &e),
                        }
                    });
                }
            }
        }

        /// Became leader: a no-op entry of the new term.
        fn won(&self, r: &mut Replica) {
            let term = r.member.raft.term;
            eprintln!("n{}: leader of term {term}", self.id);
            let noop = PutRequest { topic: NOOP_TOPIC, queue_id: 0, body: b"noop", tags: None, keys: &[] };
            if let Err(e) = r.put(noop) {
                self.fail("no-op", &e);
            }
            let now = (term, r.member.raft.commit);
            self.commit.update(|c| *c = now);
            self.flush.notify_one();
            self.grew.update(|v| *v += 1);
        }

        /// The leader's appends to one peer: whenever its log grows, and a heartbeat when idle.
        /// Pipelined: up to `in_flight` appends travel at once, each from where the previous
        /// one ended, so that the peer finds the next batch waiting when it has synced one. A
        /// refusal or a lost reply sends again from what the peer acknowledged.
        async fn replicator(self: Arc<Self>, peer: u32) {
            let (done_tx, mut done_rx) = mpsc::unbounded_channel();
            // `(term, next index to send)`; `None`: from what the peer acknowledged.
            let mut cursor: Option<(u64, u64)> = None;
            let mut in_flight = 0usize;
            let mut last_sent = Instant::now() - HEARTBEAT;
            loop {
                let mut grew = pin!(self.grew.notify.notified());
                grew.as_mut().enable();
                while in_flight < self.in_flight {
                    let out = {
                        let r = self.replica.lock().await;
                        let (term, end) = (r.member.raft.term, r.member.log.tail().next_index);
                        if r.member.raft.role != Role::Leader {
                            cursor = None;
                            break;
                        }
                        let next = match cursor {
                            Some((t, n)) if t == term => n.min(end),
                            _ => r.member.raft.next_for(peer),
                        };
                        // Nothing new: a heartbeat, unless an append in flight stands for one.
                        if next >= end && (in_flight > 0 || last_sent.elapsed() < HEARTBEAT) {
                            break;
                        }
                        match r.member.append_from(next, MAX_APPEND_ENTRIES) {
                            Ok(o) => {
                                cursor = Some((term, next + o.entries.len() as u64));
                                self.stats.appends.fetch_add(1, Ordering::Relaxed);
                                self.stats.entries_sent.fetch_add(o.entries.len() as u64, Ordering::Relaxed);
                                o
                            }
                            Err(e) => self.fail("append_from", &e),
                        }
                    };
                    in_flight += 1;
                    last_sent = Instant::now();
                    let (node, done) = (self.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        let reply =
                            node.peers[&peer].call(Request::Append(out.request, out.entries), APPEND_TIMEOUT).await;
                        let _ = done.send(reply);
                    });
                }
                let heartbeat = HEARTBEAT.saturating_sub(last_sent.elapsed());
                tokio::select! {
                    biased;
                    Some(reply) = done_rx.recv() => {
                        in_flight -= 1;
                        let Ok(Reply::Append(reply)) = reply else {
                            cursor = None;
                            continue;
                        };
                        let mut r = self.replica.lock().await;
                        if let Err(e) = r.member.on_append_reply(&reply).await {
                            self.fail("append reply", &e);
                        }
                        self.after_change(&mut r);
                        if !reply.success {
                            cursor = None;
                        }
                    }
                    _ = grew => {}
                    _ = tokio::time::sleep(heartbeat) => {}
                }
            }
        }

        /// Syncs the log when asked (the leader counts itself only for synced entries). The
        /// sync runs outside the replica's lock: appends and replies go on meanwhile, and the
        /// next sync covers them.
        async fn flusher(self: Arc<Self>) {
            loop {
                self.flush.notified().await;
                let (plan, storage, dirs) = {
                    let mut r = self.replica.lock().await;
                    let plan = r.member.log.flush_plan();
                    (plan, r.member.log.storage_arc(), r.member.log.dirs().clone())
                };
                if let Err(e) = EntryLog::run_flush_overlapped(storage.as_ref(), &dirs, &plan).await {
                    self.fail("flush", &e);
                }
                let mut r = self.replica.lock().await;
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                match r.member.flushed(&plan).await {
                    Ok(_) => self.after_change(&mut r),
                    Err(e) => self.fail("flush", &e),
                }
            }
        }

        /// Syncs the consume queues and writes the checkpoint now and then (puts and appends
        /// leave the checkpoint to this: `Member::defer_checkpoint`).
        async fn background_flusher(self: Arc<Self>) {
            loop {
                tokio::time::sleep(BACKGROUND_FLUSH).await;
                let (file, checkpoint) = {
                    let mut r = self.replica.lock().await;
                    if let Err(e) = r.flush_queues().await {
                        self.fail("queue flush", &e);
                    }
                    r.member.log.checkpoint(false)
                };
                if let Err(e) = file.write(&checkpoint).await {
                    self.fail("checkpoint", &e);
                }
            }
        }
    }

    fn config(a: &Args) -> ReplicaConfig {
        ReplicaConfig {
            root: a.dir.clone(),
            self_id: a.id,
            members: a.members.keys().copied().collect::<BTreeSet<_>>(),
            log: DLedgerConfig {
                data_file_size_bytes: 256 << 20,
                index_units_per_file: 1 << 20,
                max_entry_bytes: 4 << 20,
                os_page_size_bytes: 4096,
            },
            cq_units_per_file: 300_000,
            bugs: BugSet::none(),
        }
    }

    // One thread runs the member's tasks (syncs go to the blocking pool): with three members and
    // their clients on a few CPUs, waking tasks across worker threads costs more than it gains.
    /// A fresh log's first data and index files, zero-filled and synced before the log opens, as
    /// the store prepares its commit-log files (`StoreConfig::preallocate_commit_log`): a sync of
    /// entries written into them then writes data only, no block allocation. The log reads the
    /// zeros as its end. (Files it rolls to later are sparse.)
    async fn preallocate_first_files(cfg: &ReplicaConfig) -> anyhow::Result<()> {
        let paths = DLedgerPaths::new(&cfg.root, &format!("n{}", cfg.self_id));
        if paths.data.exists() {
            return Ok(());
        }
        let st = RealStorage::new();
        for (dir, size) in
            [(&paths.data, cfg.log.data_file_size_bytes), (&paths.index, cfg.log.index_file_size_bytes())]
        {
            st.create_dir_all(dir)?;
            let f = st.create(&dir.join(file_name(0)))?;
            f.set_len(size)?;
            f.preallocate().await?;
        }
        for dir in [&paths.data, &paths.index, &paths.root, &cfg.root] {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    #[tokio::main(flavor = "current_thread")]
    pub async fn main() -> anyhow::Result<()> {
        let a = args()?;
        let listener = tokio::net::TcpListener::bind(a.members[&a.id]).await?;
        let cfg = config(&a);
        if !a.sparse {
            preallocate_first_files(&cfg).await?;
        }
        let mut replica = Replica::open(Arc::new(RealStorage::new()), Arc::new(SystemClock), cfg).await?;
        replica.member.defer_checkpoint(true);
        replica.member.overlap_syncs(true);
        eprintln!(
            "n{}: opened {} (entries up to {:?}, committed {:?})",
            a.id,
            a.dir.display(),
            replica.member.log.tail().last_index(),
            replica.member.log.committed_index()
        );
        let peers = a.members.iter().filter(|(&n, _)| n != a.id).map(|(&n, &addr)| (n, Client::new(addr))).collect();
        let node = Arc::new(Node {
            id: a.id,
            replica: Mutex::new(replica),
            peers,
            commit: Signal::new((0, None)),
            grew: Signal::new(0),
            flush: Notify::new(),
            in_flight: a.in_flight,
            started: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            stats: Stats::default(),
        });
        let handler = {
            let node = node.clone();
            move |req: Request| node.clone().handle(req)
        };
        tokio::spawn(serve(listener, handler));
        tokio::spawn(node.clone().election_timer());
        tokio::spawn(node.clone().flusher());
        tokio::spawn(node.clone().background_flusher());
        for &peer in node.peers.keys() {
            tokio::spawn(node.clone().replicator(peer));
        }
        tokio::signal::ctrl_c().await?;
        let mut r = node.replica.lock().await;
        r.member.defer_checkpoint(false);
        r.shutdown().await?;
        eprintln!("n{}: shut down; {}", a.id, node.stats.line());
        Ok(())
    }
}
