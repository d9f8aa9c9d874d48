//! The allocation service (RocketMQ's `AllocateMappedFileService` with `warmMapedFileEnable`):
//! it keeps one spare commit-log file ready, which the log renames into place when it rolls
//! (`CommitLog::use_spares`). The next spare is prepared once the file in use is half full.
//!
//! Why, under sync flush: on ext4 a sync over newly allocated blocks also writes the
//! allocation, a second synchronous I/O per group commit; over blocks already written it
//! writes only the data (BENCHMARKS.md: 64 producers 173k msgs/s on sparse 1 GiB files, 271k
//! on preallocated ones). So the spare is zero-filled and synced.
//!
//! Why, under async flush: a sparse file gets its blocks when writeback first writes its
//! pages, and ext4 allocating them (reading block bitmaps from a disk busy with that same
//! writeback) held locks that the producer's page faults then waited for, 60–125 ms at a
//! time after a roll in the profiles. So the spare's blocks are allocated (`fallocate`),
//! without writing it.
//!
//! Why a spare and not the next file itself, as RocketMQ has: the next file's name must not
//! exist before the log writes into it, or a crash leaves an all-zero file after the log's
//! end for recovery to judge; and the roll must never wait for a preparation still under way
//! (it then creates the file sparse, as without preallocation). A spare is never data: `load`
//! removes it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::commit_log::CommitLog;
use crate::error::Result;
use crate::io::Storage;
use crate::locks::lock;
use crate::mapped_file_queue::{SPARE_FILE_NAME, SPARE_TMP_FILE_NAME};

/// How long the service sleeps when nobody wakes it (a put into the second half of a file
/// without a spare wakes it), and after a failed preparation whatever wakes it.
const IDLE_INTERVAL_MS: u64 = 1_000;

/// What the service works with, handed over by the store that owns it.
pub(crate) struct Allocator {
    /// The log whose spare this is (`start_preparing_spare`, `spare_prepared`).
    pub cl: Arc<Mutex<CommitLog>>,
    pub storage: Arc<dyn Storage>,
    /// The commit log's directory, where the spare is made.
    pub dir: PathBuf,
    pub file_size_bytes: u64,
    /// Zero-fill and sync the spare (sync flush); otherwise only allocate its blocks.
    pub zero_fill: bool,
    /// Notified when the log wants a spare.
    pub wake: Arc<Notify>,
    pub stopping: Arc<AtomicBool>,
}

pub(crate) fn spawn_allocator(a: Allocator) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !a.stopping.load(Ordering::SeqCst) {
            let failed = prepare_wanted_spare(&a).await.is_err();
            if a.stopping.load(Ordering::SeqCst) {
                break;
            }
            let idle = Duration::from_millis(IDLE_INTERVAL_MS);
            if failed {
                // Deaf to wake-ups for a while: every put wants the spare, and on a full disk
                // each one retried at once (a create, a failed `set_len` and a remove per put:
                // ~60 in a second of `failing_file_creation_is_retried_at_a_bounded_rate`).
                tokio::time::sleep(idle).await;
            } else {
                let _ = tokio::time::timeout(idle, a.wake.notified()).await;
            }
        }
    })
}

/// Prepares the spare if the commit log wants one. A failure (a full disk, an I/O error)
/// only leaves the log creating sparse files; the next round tries again.
pub(crate) async fn prepare_wanted_spare(a: &Allocator) -> Result<()> {
    if !lock(&a.cl).start_preparing_spare() {
        return Ok(());
    }
    let r = prepare_spare(a).await;
    if let Err(e) = &r {
        tracing::warn!(error = %e, "preparing a spare commit-log file failed");
        crate::probe!("allocate.spare-prepare-failed");
    }
    lock(&a.cl).spare_prepared(r.is_ok());
    r
}

/// Prepares `SPARE_TMP_FILE_NAME` (zero-filled and synced under sync flush, its blocks
/// allocated otherwise) and renames it to `SPARE_FILE_NAME`: a file under that name is always
/// complete. No directory sync: a spare lost to a power loss is only prepared again.
async fn prepare_spare(a: &Allocator) -> Result<()> {
    let st: &dyn Storage = a.storage.as_ref();
    let dir = &a.dir;
    let (tmp, ready) = (dir.join(SPARE_TMP_FILE_NAME), dir.join(SPARE_FILE_NAME));
    for leftover in [&tmp, &ready] {
        if st.exists(leftover) {
            st.remove_file(leftover)?;
        }
    }
    // The directory exists: `load` made it.
    let file = st.create(&tmp)?;
    let filled = match file.set_len(a.file_size_bytes) {
        Ok(()) if a.zero_fill => file.preallocate().await,
        Ok(()) => file.reserve_blocks().await,
        Err(e) => Err(e),
    };
    drop(file);
    if let Err(e) = filled {
        let _ = st.remove_file(&tmp);
        return Err(e.into());
    }
    st.rename(&tmp, &ready)?;
    Ok(())
}
