//! The bug catalogue: known defects kept in the engine behind run-time switches, default off.
//!
//! Each entry re-creates one mechanism from RocketMQ's history (or one of our own) on the
//! code path where it lived; the fixed behaviour is what runs when the switch is off. A
//! scenario turns switches on through `StoreConfig::bugs` and expects the named checker to
//! catch the result.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One catalogued bug. The serde name (kebab-case) is the id used in case files and on the
/// command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bug {
    /// #467: recovery skips an invalid record (by its declared size) instead of truncating.
    SkipHalfWrittenRecord,
    /// #8007: abnormal recovery destroys the current index file but restarts dispatch from a
    /// point chosen without regard to it, so older keys are lost.
    DestroyCurrentIndex,
    /// #678: the checkpoint's logics timestamp follows dispatch, not durable CQ data.
    CheckpointAheadOfCq,
    /// ours: clean shutdown removes the abort file although dispatch is behind.
    AbortDeletedWhileBehind,
    /// ours: recovery does not check the body CRC.
    NoCrcOnRecovery,
    /// #8032 mechanism: abnormal recovery checks DUP_INFO, which no message carries; it stops
    /// at the first record and truncates every consume queue to that file's start. Imitated
    /// on the local store's abnormal recovery, and on DLedger mode's, where it lived
    /// (`dledger::store_recovery`).
    RecoveryCheckFlagMiswired,
    /// ours: consume-queue truncation keeps one unit too many.
    CqTruncateOffByOne,
    /// ours: sync flush acknowledges the producer before the sync.
    AckBeforeSync,
    /// ours: a failed sync is retried and a later success taken as durability (fsyncgate).
    RetryFailedSync,
    /// ours: directory entries of new files are never synced; a power loss can drop a file.
    NoDirSync,
    /// RocketMQ's own behaviour: truncation does not zero the stale bytes after the cut, so a
    /// later recovery can resurrect stale records.
    NoZeroOnTruncate,
    /// #8409: when a tiered segment is full, the writer commits it and rolls to a new one
    /// whatever the commit returned; the old segment's unuploaded tail is never uploaded.
    TieredFullCommitIgnored,
    /// #8532: after the final commit of a full segment its size is not saved in the metadata.
    TieredFullSizeNotSaved,
    /// #8955: the dispatcher's hold branch returns without releasing the message it read.
    TieredHoldNotReleased,
    /// #8955: a missing consume-queue unit or message ends the dispatcher task.
    TieredDispatcherDies,
    /// #8955: a queue whose dispatch fails does not return its semaphore permit.
    TieredPermitNotReturned,
    /// #9069: a failed batch commit keeps the batch's message buffers held.
    TieredFailedCommitBuffersKept,
    /// ours: the tiered consume queue is committed before the commit log it points into.
    TieredCqBeforeCl,
    /// ours: an append whose acknowledgement was lost is taken as failed and appended again.
    TieredAckLostAppendAgain,
    /// ours: a partial append is taken as all-or-nothing and the whole batch sent again.
    TieredPartialAllOrNothing,
    /// #8653: the tiered index service uploads only sealed files and shutdown forgets the rest,
    /// so the newest index file is never uploaded.
    TieredIndexNewestNotUploaded,
    /// #8654: with an empty local log (min offset -1) reads and key queries go to the local
    /// store instead of the tiered one.
    TieredFetcherLocalWhenEmpty,
    /// #8493: the forced upload at shutdown handles only the file being written; sealed files
    /// still waiting for the upload loop are left behind.
    TieredIndexForceUploadWrongFile,
    /// #9838: shutdown waits for the index uploads without a bound.
    TieredShutdownUnbounded,
    /// ours: compacting an index file drops the items of its last non-empty bucket.
    TieredIndexCompactionDropsLastBucket,
    /// ours: a local index file is removed before its upload's outcome is known.
    TieredIndexRemovedBeforeUpload,
    /// #9084: DLedger abnormal recovery counts message sizes without the 48-byte entry header,
    /// so its end falls short and the consume queues lose their tail.
    DledgerSizeWithoutHeader,
    /// ours: a DLedger replica's checkpoint names a committed index whose entries are not yet
    /// durable on it.
    DledgerCommitBeforeDurable,
    /// ours: a DLedger follower drops entries it knows committed. Only a leader whose log
    /// lacks a committed entry asks for that, which Raft's leader completeness rules out while
    /// its other rules hold: no scenario seed shows this switch alone, so the dledger
    /// scenario does not offer it; `engine/tests/dledger_group.rs` drives it directly.
    DledgerFollowerTruncatesCommitted,
    /// ours: a DLedger member grants a second vote in one term.
    DledgerDoubleVote,
    /// ours (Raft §5.4.2): a DLedger leader commits an older term's entry by counting replicas.
    DledgerCommitOlderTermByCount,
}

/// Static facts about a catalogued bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BugInfo {
    pub bug: Bug,
    pub id: &'static str,
    /// RocketMQ issue ("#467") or "ours".
    pub origin: &'static str,
    pub description: &'static str,
    /// The checker expected to catch it.
    pub checker: &'static str,
}

impl Bug {
    pub const ALL: [Bug; 31] = [
        Bug::SkipHalfWrittenRecord,
        Bug::DestroyCurrentIndex,
        Bug::CheckpointAheadOfCq,
        Bug::AbortDeletedWhileBehind,
        Bug::NoCrcOnRecovery,
        Bug::RecoveryCheckFlagMiswired,
        Bug::CqTruncateOffByOne,
        Bug::AckBeforeSync,
        Bug::RetryFailedSync,
        Bug::NoDirSync,
        Bug::NoZeroOnTruncate,
        Bug::TieredFullCommitIgnored,
        Bug::TieredFullSizeNotSaved,
        Bug::TieredHoldNotReleased,
        Bug::TieredDispatcherDies,
        Bug::TieredPermitNotReturned,
        Bug::TieredFailedCommitBuffersKept,
        Bug::TieredCqBeforeCl,
        Bug::TieredAckLostAppendAgain,
        Bug::TieredPartialAllOrNothing,
        Bug::TieredIndexNewestNotUploaded,
        Bug::TieredFetcherLocalWhenEmpty,
        Bug::TieredIndexForceUploadWrongFile,
        Bug::TieredShutdownUnbounded,
        Bug::TieredIndexCompactionDropsLastBucket,
        Bug::TieredIndexRemovedBeforeUpload,
        Bug::DledgerSizeWithoutHeader,
        Bug::DledgerCommitBeforeDurable,
        Bug::DledgerFollowerTruncatesCommitted,
        Bug::DledgerDoubleVote,
        Bug::DledgerCommitOlderTermByCount,
    ];

    /// The bugs of the local store (the `broker` scenario's).
    pub fn local() -> Vec<Bug> {
        Bug::ALL.into_iter().filter(|b| !b.is_tiered() && !b.dledger_only()).collect()
    }

    /// The bugs of tiered storage (the `tiered` scenario's).
    pub fn tiered() -> Vec<Bug> {
        Bug::ALL.into_iter().filter(|b| b.is_tiered()).collect()
    }

    pub fn is_tiered(self) -> bool {
        self.id().starts_with("tiered-")
    }

    /// Bugs of DLedger mode's code paths only: a scenario of the local store cannot switch
    /// them on.
    pub fn dledger_only(self) -> bool {
        matches!(
            self,
            Bug::DledgerSizeWithoutHeader
                | Bug::DledgerCommitBeforeDurable
                | Bug::DledgerFollowerTruncatesCommitted
                | Bug::DledgerDoubleVote
                | Bug::DledgerCommitOlderTermByCount
        )
    }

    pub fn info(self) -> BugInfo {
        let (id, origin, description, checker) = match self {
            Bug::SkipHalfWrittenRecord => (
                "skip-half-written-record",
                "#467",
                "recovery skips an invalid record instead of truncating the log there",
                "log-prefix",
            ),
            Bug::DestroyCurrentIndex => (
                "destroy-current-index",
                "#8007",
                "abnormal recovery destroys the current index file and does not re-dispatch far enough back",
                "key-index",
            ),
            Bug::CheckpointAheadOfCq => (
                "checkpoint-ahead-of-cq",
                "#678",
                "the checkpoint's logics timestamp is flushed before the consume-queue data it describes is durable",
                // Seen directly: after a power loss the checkpoint vouches for consume-queue
                // units that are not on disk. (Its downstream loss is rarer: our recovery
                // re-dispatches from each queue's own end, so only keys can go missing.)
                "abort-checkpoint",
            ),
            Bug::AbortDeletedWhileBehind => (
                "abort-deleted-while-behind",
                "ours",
                "clean shutdown deletes the abort file although dispatch has not caught up",
                "abort-checkpoint",
            ),
            Bug::NoCrcOnRecovery => {
                ("no-crc-on-recovery", "ours", "recovery accepts records whose body CRC does not match", "log-prefix")
            }
            Bug::RecoveryCheckFlagMiswired => (
                "recovery-check-flag-miswired",
                "#8032",
                "abnormal recovery checks a DUP_INFO property no message carries and truncates every consume queue",
                "consume-queue",
            ),
            Bug::CqTruncateOffByOne => {
                ("cq-truncate-off-by-one", "ours", "consume-queue truncation keeps one unit too many", "consume-queue")
            }
            Bug::AckBeforeSync => (
                "ack-before-sync",
                "ours",
                "sync flush acknowledges a producer before its message is durable",
                "durability",
            ),
            Bug::RetryFailedSync => (
                "retry-failed-sync",
                "ours",
                "a failed sync is retried and a later success is taken to mean the data is durable",
                "durability",
            ),
            Bug::NoDirSync => (
                "no-dir-sync",
                "ours",
                "the directory entry of a new file is never synced, so a power loss can drop the whole file",
                "durability",
            ),
            Bug::NoZeroOnTruncate => (
                "no-zero-on-truncate",
                "ours",
                "truncation leaves stale records after the cut, which a later recovery can resurrect",
                // Observed: the stale units past the cut come back as consume-queue entries
                // pointing past the log's end before any stale record is served.
                "consume-queue",
            ),
            Bug::TieredFullCommitIgnored => (
                "tiered-full-commit-ignored",
                "#8409",
                "a full tiered segment rolls whatever its final commit returned, so its unuploaded tail is lost",
                // Seen first as the hole between the segment and the next (B1); the units
                // pointing into it (B2, tiered-readable) follow in fewer seeds.
                "tiered-contiguity",
            ),
            Bug::TieredFullSizeNotSaved => (
                "tiered-full-size-not-saved",
                "#8532",
                "the final commit of a full tiered segment is not saved in the metadata",
                "tiered-contiguity",
            ),
            Bug::TieredHoldNotReleased => (
                "tiered-hold-not-released",
                "#8955",
                "the tiered dispatcher's hold branch returns without releasing the message it read",
                "no-leak",
            ),
            Bug::TieredDispatcherDies => (
                "tiered-dispatcher-dies",
                "#8955",
                "a missing consume-queue unit or message ends the tiered dispatcher task",
                "tiered-progress",
            ),
            Bug::TieredPermitNotReturned => (
                "tiered-permit-not-returned",
                "#8955",
                "a queue whose tiered dispatch fails keeps its semaphore permit",
                "no-leak",
            ),
            Bug::TieredFailedCommitBuffersKept => (
                "tiered-failed-commit-buffers-kept",
                "#9069",
                "a failed tiered batch commit keeps its message buffers held",
                "no-leak",
            ),
            Bug::TieredCqBeforeCl => (
                "tiered-cq-before-cl",
                "ours",
                "the tiered consume queue is committed before the commit-log bytes it points into",
                "tiered-readable",
            ),
            Bug::TieredAckLostAppendAgain => (
                "tiered-ack-lost-append-again",
                "ours",
                "an append whose acknowledgement was lost is taken as failed and its bytes appended again",
                // The duplicate shifts every unit after it onto another message's bytes (and,
                // in a segment that is not the last, makes it longer than the next one's base
                // says, which `tiered-contiguity` sees too).
                "tiered-readable",
            ),
            Bug::TieredPartialAllOrNothing => (
                "tiered-partial-all-or-nothing",
                "ours",
                "a partially applied append is taken as all-or-nothing and the whole batch sent again",
                "tiered-readable",
            ),
            Bug::TieredIndexNewestNotUploaded => (
                "tiered-index-newest-not-uploaded",
                "#8653",
                "the tiered index uploads only sealed files and shutdown forgets the newest one",
                "index-complete",
            ),
            Bug::TieredFetcherLocalWhenEmpty => (
                "tiered-fetcher-local-when-empty",
                "#8654",
                "with an empty local log, reads and key queries go to the local store, not the tiered one",
                "routing",
            ),
            Bug::TieredIndexForceUploadWrongFile => (
                "tiered-index-force-upload-wrong-file",
                "#8493",
                "the forced index upload at shutdown handles only the file being written, not the sealed ones waiting",
                "index-complete",
            ),
            Bug::TieredShutdownUnbounded => (
                "tiered-shutdown-unbounded",
                "#9838",
                "shutdown waits for the tiered index uploads without a bound",
                "liveness",
            ),
            Bug::TieredIndexCompactionDropsLastBucket => (
                "tiered-index-compaction-drops-last-bucket",
                "ours",
                "compacting a tiered index file drops the items of its last non-empty bucket",
                "index-complete",
            ),
            Bug::TieredIndexRemovedBeforeUpload => (
                "tiered-index-removed-before-upload",
                "ours",
                "a local tiered index file is removed before its upload's outcome is known",
                "index-complete",
            ),
            Bug::DledgerSizeWithoutHeader => (
                "dledger-size-without-header",
                "#9084",
                "DLedger abnormal recovery adds message sizes without the 48-byte entry header and cuts the consume queues' tail",
                "consume-queue",
            ),
            Bug::DledgerCommitBeforeDurable => (
                "dledger-commit-before-durable",
                "ours",
                "a DLedger replica's checkpoint names a committed index before the entries it covers are durable",
                "committed-prefix",
            ),
            Bug::DledgerFollowerTruncatesCommitted => (
                "dledger-follower-truncates-committed",
                "ours",
                "a DLedger follower truncates entries it knows committed",
                "committed-entries",
            ),
            Bug::DledgerDoubleVote => (
                "dledger-double-vote",
                "ours",
                "a DLedger member grants a second vote in one term, so a term can have two leaders",
                "one-leader-per-term",
            ),
            Bug::DledgerCommitOlderTermByCount => (
                "dledger-commit-older-term-by-count",
                "ours",
                "a DLedger leader commits an entry of an older term by counting replicas (Raft §5.4.2)",
                "committed-entries",
            ),
        };
        BugInfo { bug: self, id, origin, description, checker }
    }

    pub fn id(self) -> &'static str {
        self.info().id
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl FromStr for Bug {
    type Err = String;
    fn from_str(s: &str) -> Result<Bug, String> {
        Bug::ALL.into_iter().find(|b| b.id() == s).ok_or_else(|| format!("unknown bug id {s:?}"))
    }
}

/// The set of enabled bugs. Empty (every fix in place) by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BugSet(pub BTreeSet<Bug>);

impl BugSet {
    pub fn none() -> BugSet {
        BugSet::default()
    }

    pub fn of(bugs: &[Bug]) -> BugSet {
        BugSet(bugs.iter().copied().collect())
    }

    pub fn has(&self, bug: Bug) -> bool {
        self.0.contains(&bug)
    }

    pub fn insert(&mut self, bug: Bug) {
        self.0.insert(bug);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_serde_and_from_str() {
        for bug in Bug::ALL {
            let json = serde_json::to_string(&bug).unwrap();
            assert_eq!(json, format!("\"{}\"", bug.id()));
            assert_eq!(serde_json::from_str::<Bug>(&json).unwrap(), bug);
            assert_eq!(bug.id().parse::<Bug>().unwrap(), bug);
            let checker = bug.info().checker;
            assert!([
                "durability",
                "log-prefix",
                "consume-queue",
                "key-index",
                "abort-checkpoint",
                "liveness",
                "no-leak",
                "tiered-contiguity",
                "tiered-readable",
                "tiered-progress",
                "tiered-durability",
                "index-complete",
                "routing",
                "committed-prefix",
                "committed-entries",
                "one-leader-per-term"
            ]
            .contains(&checker));
        }
        let set = BugSet::of(&[Bug::AckBeforeSync]);
        assert_eq!(serde_json::to_string(&set).unwrap(), "[\"ack-before-sync\"]");
    }
}
