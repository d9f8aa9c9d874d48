//! Dispatch (§3.3): `Dispatcher`, the one code that turns records into consume-queue units
//! and key-index entries (for the store and for DLedger replicas, see `message_log`), and the
//! store's reput service, which reads the commit log from the reput offset up to what is
//! readable and hands each message to a `Dispatcher`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bugs::Bug;
use crate::checkpoint::CheckpointData;
use crate::commit_log::{decode_extent, fill_queue_key, CommitLog, ReadView};
use crate::config::StoreConfig;
use crate::consume_queue::{ConsumeQueue, CqUnit};
use crate::error::Result;
use crate::index::{IndexService, SealedIndex};
use crate::io::Clock;
use crate::java_hash::java_string_hash;
use crate::locks::lock;
use crate::message::{decode_ref, peek_header, DecodeOptions, DecodedRef, MessageRef};
use crate::parts::{Checkpoint, CqMap, Health, Logics, Progress, QueueFiles, Wakes};

/// What the reput service works with, handed over by the store that owns it (recovery's
/// re-dispatch and catch-up use it too).
pub(crate) struct Reput {
    pub cfg: Arc<StoreConfig>,
    pub clock: Arc<dyn Clock>,
    pub files: QueueFiles,
    pub cl: Arc<Mutex<CommitLog>>,
    pub logics: Arc<Logics>,
    pub ckpt: Arc<Checkpoint>,
    pub health: Arc<Health>,
    pub progress: Arc<Progress>,
    pub wakes: Arc<Wakes>,
}

impl Reput {
    fn bug(&self, b: Bug) -> bool {
        self.cfg.bugs.has(b)
    }

    pub fn decode_limit(&self) -> u64 {
        self.cfg.max_message_size_bytes
    }

    /// Commit-log bytes appended but not yet dispatched.
    pub fn behind_bytes(&self) -> u64 {
        lock(&self.cl).max_offset().saturating_sub(self.progress.reput_offset.load(Ordering::SeqCst))
    }

    /// Runs `f` with a dispatcher into the store's consume queues and index, their locks
    /// held throughout.
    fn with_dispatcher<T>(&self, f: impl FnOnce(&mut Dispatcher<'_>) -> T) -> T {
        let mut cqs = lock(&self.logics.cqs);
        let mut index = self.cfg.message_index_enable.then(|| lock(&self.logics.index));
        let mut d = Dispatcher::new(&self.files, &mut cqs, self.clock.now_ms());
        d.index = index.as_deref_mut();
        d.publish_ts = Some(&self.progress.logics_dispatched_ts);
        d.ckpt_ahead = self.bug(Bug::CheckpointAheadOfCq).then_some(&self.ckpt.data);
        f(&mut d)
    }
}

/// `CommitLogDispatcherBuildConsumeQueue` + `CommitLogDispatcherBuildIndex`, for a run of
/// messages: the one dispatch of the engine, used by the store's reput service, its
/// recovery, and DLedger replicas. The consume-queue and index locks (held by the caller),
/// the clock reading and the queue-key buffer are taken once per run instead of once per
/// message, and the dispatched timestamp is published once, when the run ends (still under
/// the consume-queue lock). No await may happen while one lives: a full index file ends the
/// run.
pub struct Dispatcher<'a> {
    files: &'a QueueFiles,
    cqs: &'a mut CqMap,
    index: Option<&'a mut IndexService>,
    now_ms: i64,
    /// The queue's key, rebuilt in place for each message (a map lookup needs an owned key).
    key: (String, u32),
    /// The newest store timestamp put into a consume queue by this run.
    dispatched_ts_ms: Option<i64>,
    /// Where that timestamp is published when the run ends.
    publish_ts: Option<&'a AtomicI64>,
    /// The `checkpoint-ahead-of-cq` bug: the checkpoint values dispatch advances.
    ckpt_ahead: Option<&'a Mutex<CheckpointData>>,
}

impl Drop for Dispatcher<'_> {
    fn drop(&mut self) {
        // Late is safe: the flush service takes this as a bound on what it made durable.
        if let (Some(ts), Some(publish)) = (self.dispatched_ts_ms, self.publish_ts) {
            publish.fetch_max(ts, Ordering::SeqCst);
        }
    }
}

impl<'a> Dispatcher<'a> {
    /// A dispatcher into `cqs` only (no key index), loading new queues' files from `files`.
    pub fn new(files: &'a QueueFiles, cqs: &'a mut CqMap, now_ms: i64) -> Dispatcher<'a> {
        Dispatcher {
            files,
            cqs,
            index: None,
            now_ms,
            key: (String::new(), 0),
            dispatched_ts_ms: None,
            publish_ts: None,
            ckpt_ahead: None,
        }
    }

    /// Dispatches one message; a full index file it sealed must be synced (`seal_index`)
    /// before the next message is dispatched.
    pub fn dispatch(&mut self, m: &MessageRef<'_>, size_bytes: u32) -> Result<Option<SealedIndex>> {
        let props = m.dispatch_properties();
        if m.is_dispatchable() {
            self.put_unit(m, props.tags, size_bytes)?;
        }
        match &mut self.index {
            Some(index) => index.build(self.files.storage.as_ref(), m, &props, self.now_ms),
            None => Ok(None),
        }
    }

    /// `dispatch` by a dispatcher made without an index (`new`): nothing to seal.
    pub fn dispatch_unindexed(&mut self, m: &MessageRef<'_>, size_bytes: u32) -> Result<()> {
        debug_assert!(self.index.is_none(), "an indexing dispatcher must seal full index files");
        self.dispatch(m, size_bytes).map(drop)
    }

    fn put_unit(&mut self, m: &MessageRef<'_>, tags: Option<&str>, size_bytes: u32) -> Result<()> {
        fill_queue_key(&mut self.key, m.topic, m.queue_id);
        let cq = self.files.queue(self.cqs, &self.key)?;
        let tags_code = tags.map_or(0, |t| i64::from(java_string_hash(t)));
        let unit =
            CqUnit { phy_offset: m.phy_offset as i64, size: ConsumeQueue::check_unit_size(size_bytes)?, tags_code };
        cq.put(self.files.storage.as_ref(), unit, m.queue_offset)?;
        self.dispatched_ts_ms =
            Some(self.dispatched_ts_ms.map_or(m.store_timestamp_ms, |t| t.max(m.store_timestamp_ms)));
        if let Some(ckpt) = self.ckpt_ahead {
            // RocketMQ sets the checkpoint's logics timestamp at dispatch; any checkpoint
            // write (an index roll, say) then records CQ data that is not durable yet.
            let mut c = lock(ckpt);
            c.logics_msg_timestamp_ms = c.logics_msg_timestamp_ms.max(m.store_timestamp_ms);
        }
        Ok(())
    }
}

/// Makes a full index file durable, then lets the checkpoint cover it.
async fn seal_index(r: &Reput, sealed: SealedIndex) -> Result<()> {
    let p = &sealed.plan;
    if let Err(e) = p.file.sync_range(p.sync_from, p.sync_to - p.sync_from).await {
        r.health.mark_not_writeable(format!("index sync failed: {e}"));
        return Err(e.into());
    }
    r.files.sync_dirs().await?;
    {
        let mut c = lock(&r.ckpt.data);
        c.index_msg_timestamp_ms = c.index_msg_timestamp_ms.max(sealed.end_timestamp_ms);
    }
    r.ckpt.write(&r.health).await
}

/// Dispatches one message (recovery's re-dispatch).
pub(crate) async fn dispatch_message(r: &Reput, m: &MessageRef<'_>, size_bytes: u32) -> Result<()> {
    let sealed = r.with_dispatcher(|d| d.dispatch(m, size_bytes))?;
    match sealed {
        Some(sealed) => seal_index(r, sealed).await,
        None => Ok(()),
    }
}

/// Dispatch reads the commit log in pieces of this size (or one record, if larger).
const DISPATCH_READ_BYTES: u64 = 256 * 1024;

/// What the loop over one piece of the commit log ended on.
enum PieceEnd {
    /// Everything readable is dispatched, or the next record is not all readable yet.
    CaughtUp,
    /// The piece is used up: read the next one from the reput offset.
    ReadMore { min_bytes: u64 },
}

/// Where dispatch reads next.
enum NextPiece {
    /// Nothing readable yet.
    None,
    /// The reput offset moved (below the log's start): look again.
    Again,
    In(ReadView),
}

/// Dispatches everything readable from the reput offset. Returns the messages dispatched.
/// The commit log is read a piece at a time, under the commit-log lock only to find the
/// file (and the range to prepare): producers and dispatch do not meet per record.
pub(crate) async fn dispatch_available(r: &Reput) -> Result<u64> {
    let mut n = 0;
    let mut piece = Vec::new();
    let mut min_bytes = 0;
    loop {
        let reput = r.progress.reput_offset.load(Ordering::SeqCst);
        let (next, to_prepare) = {
            let mut cl = lock(&r.cl);
            let to_prepare = cl.next_range_to_prepare();
            let next = if reput >= cl.readable_offset() {
                NextPiece::None
            } else if reput < cl.min_offset() {
                r.progress.reput_offset.store(cl.min_offset(), Ordering::SeqCst);
                NextPiece::Again
            } else {
                match cl.view(reput) {
                    // The file holding the reput offset has nothing readable there yet although
                    // a later file has (transient pool: a full file not yet committed while the
                    // next one, written directly, is): wait for the commit instead of spinning.
                    Some(v) if reput < v.from_offset + v.readable => NextPiece::In(v),
                    _ => NextPiece::None,
                }
            };
            (next, to_prepare)
        };
        // The commit log's next pages, for the producer. Dispatch prepares them because under
        // load it is the one background task always running: a blocking-pool thread woken
        // for each step (as before) was woken on the producer's CPU and preempted it there,
        // ~1,400 times per 2 GiB appended.
        if let Some(range) = to_prepare {
            range.prepare();
        }
        let view = match next {
            NextPiece::None => return Ok(n),
            NextPiece::Again => continue,
            NextPiece::In(view) => view,
        };
        let pos = reput - view.from_offset;
        let avail = view.readable - pos;
        let len = avail.min(DISPATCH_READ_BYTES.max(min_bytes));
        piece.resize(len as usize, 0);
        view.file.read_at(pos, &mut piece)?;
        match dispatch_piece(r, &view, reput, &piece, len == avail, &mut n).await? {
            PieceEnd::CaughtUp => return Ok(n),
            PieceEnd::ReadMore { min_bytes: m } => min_bytes = m,
        }
    }
}

/// Dispatches the records of `piece`, the bytes of `view`'s file from commit-log offset
/// `start`; `to_readable_end` when the piece reaches the end of what is readable.
async fn dispatch_piece(
    r: &Reput,
    view: &ReadView,
    start: u64,
    piece: &[u8],
    to_readable_end: bool,
    n: &mut u64,
) -> Result<PieceEnd> {
    let mut from = 0;
    loop {
        match dispatch_run(r, view, start, piece, from, to_readable_end, n)? {
            RunEnd::Piece(end) => return Ok(end),
            RunEnd::Sealed { sealed, next_off } => {
                seal_index(r, sealed).await?;
                r.progress.reput_offset.store(start + next_off, Ordering::SeqCst);
                from = next_off;
            }
        }
    }
}

/// How a run of `dispatch_run` ended.
enum RunEnd {
    Piece(PieceEnd),
    /// An index file filled up: it must be made durable before dispatch goes on at `next_off`.
    Sealed {
        sealed: SealedIndex,
        next_off: u64,
    },
}

/// Dispatches the records of `piece` from `off` on, holding the dispatch locks throughout.
/// The reput offset is published once, when the run ends (a store per record was a fence per
/// record): nothing that waits for it can look in between, as a run never awaits.
fn dispatch_run(
    r: &Reput,
    view: &ReadView,
    start: u64,
    piece: &[u8],
    mut off: u64,
    to_readable_end: bool,
    n: &mut u64,
) -> Result<RunEnd> {
    let max_record_bytes = r.decode_limit();
    let complete = to_readable_end && view.readable >= view.size;
    let mut reached = start + off;
    let end = r.with_dispatcher(|d| {
        while off < piece.len() as u64 {
            let at = start + off;
            let pos = at - view.from_offset;
            let here = &piece[off as usize..];
            let head = peek_header(here);
            let Some(extent) = decode_extent(head, here.len() as u64, complete, max_record_bytes) else {
                if to_readable_end {
                    return Ok(RunEnd::Piece(PieceEnd::CaughtUp));
                }
                // Cut by the piece's end: read again from this record, all of it.
                let total = head.map_or(0, |(t, _)| u64::try_from(t).unwrap_or(0));
                return Ok(RunEnd::Piece(PieceEnd::ReadMore { min_bytes: if off == 0 { total } else { 0 } }));
            };
            let opts = DecodeOptions {
                check_crc: false,
                max_record_bytes,
                expected_phy_offset: Some(at),
                bytes_left_in_file: Some(view.size - pos),
                ..DecodeOptions::default()
            };
            let mut sealed = None;
            let next = match decode_ref(&here[..extent as usize], &opts) {
                DecodedRef::Valid(m, size) => {
                    sealed = d.dispatch(&m, size)?;
                    *n += 1;
                    at + u64::from(size)
                }
                DecodedRef::Blank { .. } => view.from_offset + view.size,
                DecodedRef::Corrupt(c) => match c.declared_size {
                    // RocketMQ skips a failed record of known size and stops otherwise.
                    Some(declared) if declared > 0 && pos + u64::from(declared) <= view.readable => {
                        tracing::error!(offset = at, reason = %c.reason, "reput skips a corrupt record");
                        crate::probe!("dispatch.corrupt-record-skipped");
                        at + u64::from(declared)
                    }
                    _ => {
                        tracing::error!(offset = at, reason = %c.reason, "reput stopped at a corrupt record");
                        crate::probe!("dispatch.stopped-at-corrupt-record");
                        r.progress.reput_stopped_at.store(at, Ordering::SeqCst);
                        return Ok(RunEnd::Piece(PieceEnd::CaughtUp));
                    }
                },
            };
            off = next - start;
            if let Some(sealed) = sealed {
                // The reput offset passes the message once the index file it filled is durable.
                return Ok(RunEnd::Sealed { sealed, next_off: off });
            }
            reached = next;
        }
        Ok(RunEnd::Piece(PieceEnd::ReadMore { min_bytes: 0 }))
    });
    r.progress.reput_offset.store(reached, Ordering::SeqCst);
    r.progress.dispatched.notify_waiters();
    end
}

/// Waits (bounded) until dispatch has caught up with the commit log.
/// Gives up at once while dispatch is stopped at a corrupt record: it will not move (a clean
/// shutdown then keeps the abort file, and the next recovery cuts the log there).
pub(crate) async fn wait_caught_up(r: &Reput, max_wait: Duration) {
    let deadline = tokio::time::Instant::now() + max_wait;
    let stopped =
        || r.progress.reput_stopped_at.load(Ordering::SeqCst) == r.progress.reput_offset.load(Ordering::SeqCst);
    while r.behind_bytes() > 0 && !stopped() && tokio::time::Instant::now() < deadline {
        r.wakes.reput.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How long dispatch waits after a failed attempt before it tries again.
const RETRY_AFTER_FAILURE_MS: u64 = 100;

/// Spawns the reput service.
pub(crate) fn spawn_reput(r: &Arc<Reput>) -> tokio::task::JoinHandle<()> {
    let r = r.clone();
    tokio::spawn(async move {
        let interval = Duration::from_millis(r.cfg.reput_interval_ms.max(1));
        while !r.wakes.stopping.load(Ordering::SeqCst) {
            if let Err(e) = dispatch_available(&r).await {
                tracing::error!(error = %e, "dispatch failed; retrying");
                crate::probe!("dispatch.failed-retrying");
                // Deaf to wake-ups for a while: on a full disk every put woke a retry that
                // created, failed to size and removed a consume-queue file, ~8,000 times in
                // one simulated run.
                tokio::time::sleep(Duration::from_millis(RETRY_AFTER_FAILURE_MS).max(interval)).await;
                continue;
            }
            let _ = tokio::time::timeout(interval, r.wakes.reput.notified()).await;
        }
    })
}
