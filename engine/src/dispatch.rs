//! The reput service (§3.3): reads the commit log from the reput offset up to what is
//! readable and dispatches each message to its consume queue and to the key index.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::bugs::Bug;
use crate::commit_log::{read_record, RecordAt};
use crate::consume_queue::{ConsumeQueue, CqUnit};
use crate::error::Result;
use crate::java_hash::java_string_hash;
use crate::message::{DecodeOptions, Decoded, Message};
use crate::store::{lock, Inner};

/// `CommitLogDispatcherBuildConsumeQueue` + `CommitLogDispatcherBuildIndex` for one message.
pub(crate) async fn dispatch_message(inner: &Inner, m: &Message, size_bytes: u32) -> Result<()> {
    let st = inner.storage.as_ref();
    if m.is_dispatchable() {
        let mut cqs = lock(&inner.cqs);
        let key = (m.topic.clone(), m.queue_id);
        if !cqs.contains_key(&key) {
            let (cq, _) = ConsumeQueue::load(
                st,
                &inner.paths.root,
                &m.topic,
                m.queue_id,
                inner.cfg.cq_units_per_file,
                inner.holds.clone(),
                inner.dirs.clone(),
            )?;
            cqs.insert(key.clone(), cq);
        }
        let cq = cqs.get_mut(&key).expect("inserted");
        let tags_code = m.tags().map_or(0, |t| i64::from(java_string_hash(t)));
        let unit = CqUnit { phy_offset: m.phy_offset as i64, size: size_bytes as i32, tags_code };
        cq.put(st, unit, m.queue_offset)?;
        drop(cqs);
        inner.logics_dispatched_ts.fetch_max(m.store_timestamp_ms, Ordering::SeqCst);
        if inner.bug(Bug::CheckpointAheadOfCq) {
            // RocketMQ sets the checkpoint's logics timestamp at dispatch; any checkpoint
            // write (an index roll, say) then records CQ data that is not durable yet.
            let mut c = lock(&inner.ckpt);
            c.logics_msg_timestamp_ms = c.logics_msg_timestamp_ms.max(m.store_timestamp_ms);
        }
    }
    if inner.cfg.message_index_enable {
        let sealed = lock(&inner.index).build(st, m, inner.now_ms())?;
        if let Some(sealed) = sealed {
            // The full file must be durable before the checkpoint says so.
            let p = &sealed.plan;
            if let Err(e) = p.file.sync_range(p.sync_from, p.sync_to - p.sync_from).await {
                inner.mark_not_writeable(format!("index sync failed: {e}"));
                return Err(e.into());
            }
            inner.sync_dirs().await?;
            {
                let mut c = lock(&inner.ckpt);
                c.index_msg_timestamp_ms = c.index_msg_timestamp_ms.max(sealed.end_timestamp_ms);
            }
            inner.write_checkpoint().await?;
        }
    }
    Ok(())
}

/// Dispatches everything readable from the reput offset. Returns the messages dispatched.
/// The commit-log lock is taken once per file region, not once per record, so that dispatch
/// does not contend with producers record by record.
pub(crate) async fn dispatch_available(inner: &Inner) -> Result<u64> {
    let mut n = 0;
    loop {
        let reput = inner.reput_offset.load(Ordering::SeqCst);
        let view = {
            let cl = lock(&inner.cl);
            if reput >= cl.readable_offset() {
                return Ok(n);
            }
            if reput < cl.min_offset() {
                inner.reput_offset.store(cl.min_offset(), Ordering::SeqCst);
                continue;
            }
            match cl.view(reput) {
                // The file holding the reput offset has nothing readable there yet although a
                // later file has (transient pool: a full file not yet committed while the
                // next one, written directly, is): wait for the commit instead of spinning.
                Some(v) if reput < v.from_offset + v.readable => v,
                _ => return Ok(n),
            }
        };
        let opts =
            DecodeOptions { check_crc: false, max_record_bytes: inner.decode_limit(), ..DecodeOptions::default() };
        let mut at = reput;
        // Every record below the view's readable position can be read without the lock.
        while at < view.from_offset + view.readable {
            let pos = at - view.from_offset;
            let rec = read_record(view.file.as_ref(), view.from_offset, pos, view.readable, view.size, opts)?;
            let next = match rec {
                RecordAt::NeedMore => return Ok(n),
                RecordAt::Decoded(Decoded::Valid(m, size)) => {
                    dispatch_message(inner, &m, size).await?;
                    n += 1;
                    at + u64::from(size)
                }
                RecordAt::Decoded(Decoded::Blank { .. }) => view.from_offset + view.size,
                RecordAt::Decoded(Decoded::Corrupt(c)) => match c.declared_size {
                    // RocketMQ skips a failed record of known size and stops otherwise.
                    Some(d) if d > 0 && pos + u64::from(d) <= view.readable => {
                        tracing::error!(offset = at, reason = %c.reason, "reput skips a corrupt record");
                        at + u64::from(d)
                    }
                    _ => {
                        tracing::error!(offset = at, reason = %c.reason, "reput stopped at a corrupt record");
                        return Ok(n);
                    }
                },
            };
            inner.reput_offset.store(next, Ordering::SeqCst);
            at = next;
        }
    }
}

/// Waits (bounded) until dispatch has caught up with the commit log.
pub(crate) async fn wait_caught_up(inner: &Inner, max_wait: Duration) {
    let deadline = tokio::time::Instant::now() + max_wait;
    while inner.dispatch_behind_bytes() > 0 && tokio::time::Instant::now() < deadline {
        inner.wake_reput.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Spawns the reput service.
pub(crate) fn spawn_reput(inner: &Arc<Inner>) -> tokio::task::JoinHandle<()> {
    let inner = inner.clone();
    tokio::spawn(async move {
        let interval = Duration::from_millis(inner.cfg.reput_interval_ms.max(1));
        while !inner.stopping.load(Ordering::SeqCst) {
            if let Err(e) = dispatch_available(&inner).await {
                tracing::error!(error = %e, "dispatch failed; retrying");
            }
            let _ = tokio::time::timeout(interval, inner.wake_reput.notified()).await;
        }
    })
}
