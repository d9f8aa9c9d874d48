//! A DLedger group of three processes on loopback next to a single store, same message shape,
//! same run: replicated puts acknowledged on a majority's commit, then the single store's
//! sync flush (the `bench` example's 64-producer run), and the first's rate as a share of the
//! second's.
//!
//! `RUSTFLAGS="" cargo build --release --target-dir /work/main/target/std -p engine --examples`
//! `/work/main/target/std/release/examples/dledger_bench --dir /tmp/dlb`
//!
//! Options: `--each N` (puts per producer, default 1000), `--producers N` (default 64),
//! `--no-preallocate` (the single store's commit-log files and the members' first data and
//! index files left sparse; by default both are zero-filled before the run),
//! `--only replicated|single`, `--keep` (leave the directories), `--in-flight N` (appends in
//! flight to one peer, passed to the members; default 2), `--crash-restart` (after the
//! replicated run, `kill -9` of all three members, a restart on their directories, and every
//! acknowledged message read back again from the new leader).
//!
//! Durability compared: a replicated put is acknowledged once its entry is committed, and the
//! leader counts a member for that only after the member synced the entry (`fdatasync` of the
//! data and index files): at least two of the three copies are on disk. A single-store put
//! under sync flush is acknowledged after the group commit's `fdatasync` of the commit log.
//! All three members share this machine's disk and CPUs. After the replicated run every
//! acknowledged message is read back from the leader (committed messages only) and its body
//! checked; a message missing or different fails the run.

// TCP (`engine::dledger::tcp`) is in the real build only; the simulation build compiles a stub.
#[cfg(madsim)]
fn main() {
    eprintln!("dledger_bench runs in the real build (RUSTFLAGS=\"\", see the header)");
    std::process::exit(2);
}

#[cfg(not(madsim))]
fn main() -> anyhow::Result<()> {
    real::main()
}

#[cfg(not(madsim))]
#[path = "common/sync_flush.rs"]
mod sync_flush;

#[cfg(not(madsim))]
mod real {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use anyhow::{anyhow, bail, ensure, Context};
    use engine::dledger::tcp::Client;
    use engine::dledger::wire::{PutMsg, Reply, Request};
    use engine::FlushMode;

    use super::sync_flush;

    const TOPIC: &str = "Bench";
    const MSG_BYTES: usize = 1024;
    const QUEUES: u32 = 8;
    const CALL_TIMEOUT: Duration = Duration::from_secs(10);
    const LEADER_WAIT: Duration = Duration::from_secs(30);

    struct Args {
        dir: PathBuf,
        each: u64,
        producers: u32,
        preallocate: bool,
        only: Option<String>,
        keep: bool,
        /// Passed to the members: appends in flight to one peer.
        in_flight: Option<String>,
        /// After the replicated run: every member killed, restarted, and the acks checked again.
        crash_restart: bool,
    }

    fn args() -> anyhow::Result<Args> {
        let mut a = Args {
            dir: std::env::temp_dir().join("dledger-bench"),
            each: 1000,
            producers: 64,
            preallocate: true,
            only: None,
            keep: false,
            in_flight: None,
            crash_restart: false,
        };
        let mut v: Vec<String> = std::env::args().skip(1).collect();
        let mut flag = |name: &str| v.iter().position(|f| f == name).map(|i| v.remove(i)).is_some();
        a.preallocate = !flag("--no-preallocate");
        a.keep = flag("--keep");
        a.crash_restart = flag("--crash-restart");
        for pair in v.chunks(2) {
            let val = pair.get(1).ok_or_else(|| anyhow!("{} needs a value", pair[0]))?;
            match pair[0].as_str() {
                "--dir" => a.dir = PathBuf::from(val),
                "--each" => a.each = val.parse().context("--each N")?,
                "--producers" => a.producers = val.parse().context("--producers N")?,
                "--only" => a.only = Some(val.clone()),
                "--in-flight" => a.in_flight = Some(val.clone()),
                other => bail!("unknown option {other}"),
            }
        }
        Ok(a)
    }

    /// Producer `p`'s `i`-th body: 1 KiB like `bench`'s, its first bytes naming it.
    fn body(p: u32, i: u64) -> Vec<u8> {
        let mut b = vec![0x42u8; MSG_BYTES];
        b[..4].copy_from_slice(&p.to_le_bytes());
        b[4..12].copy_from_slice(&i.to_le_bytes());
        b
    }

    fn put(p: u32, i: u64) -> Request {
        Request::Put(vec![PutMsg {
            topic: TOPIC.into(),
            queue_id: p % QUEUES,
            body: body(p, i),
            tags: None,
            keys: vec![],
        }])
    }

    /// The three member processes; stopped (interrupted, then killed) when dropped.
    struct Group {
        children: Vec<Child>,
        addrs: BTreeMap<u32, SocketAddr>,
    }

    impl Group {
        fn launch(dir: &Path, a: &Args) -> anyhow::Result<Group> {
            let exe = std::env::current_exe()?.with_file_name("dledger_node");
            ensure!(exe.exists(), "{} not found: build the examples", exe.display());
            // Free ports, held until all three are known.
            let held: Vec<std::net::TcpListener> =
                (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
            let addrs: BTreeMap<u32, SocketAddr> =
                held.iter().zip(1..).map(|(l, id)| Ok((id, l.local_addr()?))).collect::<std::io::Result<_>>()?;
            drop(held);
            let members = addrs.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",");
            let mut children = Vec::new();
            for id in addrs.keys() {
                let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("n{id}.log")))?;
                let child = Command::new(&exe)
                    .args(["--id", &id.to_string(), "--dir", &dir.join(format!("n{id}")).display().to_string()])
                    .args(["--members", &members])
                    .args(if a.preallocate { &[][..] } else { &["--sparse"][..] })
                    .args(a.in_flight.iter().flat_map(|n| ["--in-flight", n.as_str()]))
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()?;
                children.push(child);
            }
            Ok(Group { children, addrs })
        }

        /// Waits for a member to answer a get as leader.
        async fn leader(&self, clients: &BTreeMap<u32, Arc<Client>>) -> anyhow::Result<u32> {
            let t = Instant::now();
            while t.elapsed() < LEADER_WAIT {
                for (&id, c) in clients {
                    let probe = Request::Get { topic: TOPIC.into(), queue_id: 0, offset: 0, max: 0 };
                    if let Ok(Reply::Get(Ok(_))) = c.call(probe, Duration::from_millis(500)).await {
                        return Ok(id);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            bail!("no leader within {LEADER_WAIT:?}")
        }

        /// `kill -9` of every member.
        fn crash(mut self) {
            for c in &mut self.children {
                let _ = c.kill();
                let _ = c.wait();
            }
            self.children.clear();
        }
    }

    impl Drop for Group {
        fn drop(&mut self) {
            for c in &mut self.children {
                // SAFETY: signals a child of this process by its pid.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
            }
            for c in &mut self.children {
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(5) {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// What the producers were told: per queue, queue offset → (producer, sequence).
    type Acked = BTreeMap<u32, BTreeMap<u64, (u32, u64)>>;

    async fn produce(leader: Arc<Client>, producers: u32, each: u64) -> (Acked, u64, f64) {
        let t = Instant::now();
        let mut handles = Vec::new();
        for p in 0..producers {
            let c = leader.clone();
            handles.push(tokio::spawn(async move {
                let (mut acked, mut failed) = (Vec::new(), 0u64);
                for i in 0..each {
                    match c.call(put(p, i), CALL_TIMEOUT).await {
                        Ok(Reply::Put(r)) if matches!(r.as_slice(), [Ok(_)]) => {
                            let Ok(ack) = &r[0] else { unreachable!("matched above") };
                            acked.push((ack.queue_offset, i));
                        }
                        other => {
                            failed += 1;
                            if failed <= 3 {
                                eprintln!("producer {p}: put {i} not acknowledged: {other:?}");
                            }
                        }
                    }
                }
                (p, acked, failed)
            }));
        }
        let (mut acked, mut failed) = (Acked::new(), 0);
        for h in handles {
            let (p, a, f) = h.await.expect("producer task");
            failed += f;
            for (qo, i) in a {
                acked.entry(p % QUEUES).or_default().insert(qo, (p, i));
            }
        }
        (acked, failed, t.elapsed().as_secs_f64())
    }

    /// Reads every queue back from the leader and checks each acknowledged message's body.
    async fn verify(leader: &Client, acked: &Acked) -> anyhow::Result<u64> {
        let mut checked = 0;
        for queue_id in 0..QUEUES {
            let want = acked.get(&queue_id).cloned().unwrap_or_default();
            let mut offset = 0;
            let mut found = 0u64;
            loop {
                let req = Request::Get { topic: TOPIC.into(), queue_id, offset, max: 1024 };
                let msgs = match leader.call(req, CALL_TIMEOUT).await? {
                    Reply::Get(Ok(m)) => m,
                    other => bail!("get of queue {queue_id} at {offset}: {other:?}"),
                };
                if msgs.is_empty() {
                    break;
                }
                for m in &msgs {
                    if let Some(&(p, i)) = want.get(&m.queue_offset) {
                        ensure!(
                            m.body == body(p, i),
                            "queue {queue_id} offset {}: body is not producer {p}'s #{i}",
                            m.queue_offset
                        );
                        found += 1;
                    }
                    offset = m.queue_offset + 1;
                }
            }
            ensure!(found == want.len() as u64, "queue {queue_id}: {} acknowledged, {found} readable", want.len());
            checked += found;
        }
        Ok(checked)
    }

    /// Starts the group on `dir` (fresh or as a previous boot left it), waits for a leader and
    /// has it acknowledge one put (`put(u32::MAX, boot)`): a new leader's first commit covers
    /// every entry before it, and the members' first data files are created outside a timed run.
    async fn start(dir: &Path, a: &Args, boot: u64) -> anyhow::Result<(Group, Arc<Client>)> {
        let group = Group::launch(dir, a)?;
        let clients: BTreeMap<u32, Arc<Client>> =
            group.addrs.iter().map(|(&id, &addr)| (id, Arc::new(Client::new(addr)))).collect();
        let t = Instant::now();
        let leader = group.leader(&clients).await?;
        println!(
            "{:<28} {:>12.1} ms  (n{leader} of 3, logs in {})",
            "  leader elected",
            t.elapsed().as_secs_f64() * 1e3,
            dir.display()
        );
        let c = clients[&leader].clone();
        match c.call(put(u32::MAX, boot), CALL_TIMEOUT).await? {
            Reply::Put(r) if r.iter().all(Result::is_ok) => {}
            other => bail!("first put: {other:?}"),
        }
        Ok((group, c))
    }

    async fn replicated(a: &Args) -> anyhow::Result<f64> {
        let dir = a.dir.join("group");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (group, c) = start(&dir, a, 0).await?;
        let (acked, failed, secs) = produce(c.clone(), a.producers, a.each).await;
        let n: u64 = acked.values().map(|q| q.len() as u64).sum();
        let rate = n as f64 / secs;
        println!(
            "{:<28} {rate:>12.0} msgs/s {:>10.1} MB/s  ({n} acked, {failed} not, {} producers, {secs:.2} s)",
            "replicated, majority ack",
            rate * MSG_BYTES as f64 / 1e6,
            a.producers
        );
        ensure!(failed == 0, "{failed} puts were not acknowledged");
        let checked = verify(&c, &acked).await?;
        println!("{:<28} {checked:>12} acknowledged messages read back from the leader, bodies equal", "  verified");
        if a.crash_restart {
            // Every member killed at once, then recovered from its files (the checkpoint it
            // finds may be up to 500 ms old): nothing acknowledged may be missing.
            group.crash();
            let (group, c) = start(&dir, a, 1).await?;
            let checked = verify(&c, &acked).await?;
            println!("{:<28} {checked:>12} acknowledged messages read back after kill -9 of all three", "  restarted");
            drop(group);
        } else {
            drop(group);
        }
        Ok(rate)
    }

    async fn single(a: &Args) -> f64 {
        let shape = sync_flush::StoreShape { cl_file_mb: 1024, preallocate: a.preallocate };
        let store = Arc::new(sync_flush::open(shape, &a.dir.join("single"), FlushMode::Sync).await);
        let b = body(0, 0);
        sync_flush::first_file(&store, &b).await;
        let run = sync_flush::producers(&store, a.producers, a.each, &b).await;
        let rate = run.msgs as f64 / run.secs;
        println!(
            "{:<28} {rate:>12.0} msgs/s {:>10.1} MB/s  ({} msgs, {} producers, {:.2} s, commit-log files {})",
            "single store, sync flush",
            run.bytes as f64 / run.secs / 1e6,
            run.msgs,
            a.producers,
            run.secs,
            if a.preallocate { "preallocated" } else { "sparse" }
        );
        sync_flush::group_commit_line(&store);
        store.shutdown().await.unwrap();
        rate
    }

    pub fn main() -> anyhow::Result<()> {
        let a = args()?;
        std::fs::create_dir_all(&a.dir)?;
        let wants = |part: &str| a.only.as_deref().is_none_or(|o| o == part);
        // The group's client on one thread, like each member (`dledger_node`); the single store
        // on the multi-threaded runtime `bench` runs it on.
        let rep = if wants("replicated") {
            Some(tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(replicated(&a))?)
        } else {
            None
        };
        let one = if wants("single") {
            Some(tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(single(&a)))
        } else {
            None
        };
        if let (Some(rep), Some(one)) = (rep, one) {
            println!("replicated / single: {:.1}%  ({rep:.0} and {one:.0} msgs/s)", 100.0 * rep / one);
        }
        if !a.keep {
            let _ = std::fs::remove_dir_all(&a.dir);
        }
        Ok(())
    }
}
