//! The DLedger checkpoint (`dledger-{id}/checkpoint`): the committed index and the end index,
//! a `record` written in place and synced.

use std::path::Path;

use crate::io::Storage;

use super::error::Result;
use super::record::{decode_record, encode_record, RecordDecodeError, RecordFile, RECORD_BYTES};

/// What the checkpoint says: `None` is DLedger's `-1` (nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DLedgerCheckpoint {
    pub committed_index: Option<u64>,
    pub end_index: Option<u64>,
}

impl DLedgerCheckpoint {
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        encode_record(&[("committedIndex", self.committed_index), ("endIndex", self.end_index)])
    }

    pub fn decode(b: &[u8]) -> std::result::Result<DLedgerCheckpoint, RecordDecodeError> {
        let [committed_index, end_index] = decode_record(b, ["committedIndex", "endIndex"])?;
        Ok(DLedgerCheckpoint { committed_index, end_index })
    }
}

/// What opening the checkpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointLoad {
    Valid(DLedgerCheckpoint),
    /// No file (created now): nothing is known committed.
    Missing,
    /// Unreadable as a checkpoint: nothing is known committed (the group re-learns it).
    Corrupt(RecordDecodeError),
}

impl CheckpointLoad {
    pub fn checkpoint(&self) -> DLedgerCheckpoint {
        match self {
            CheckpointLoad::Valid(c) => *c,
            _ => DLedgerCheckpoint::default(),
        }
    }
}

/// The checkpoint file. Cheap to clone: writes are awaited outside the log's lock.
#[derive(Debug, Clone)]
pub struct DLedgerCheckpointFile {
    file: RecordFile,
}

impl DLedgerCheckpointFile {
    /// Opens or creates `path`. A created file's directory entry is not yet durable: the
    /// caller syncs its directory.
    pub fn open(storage: &dyn Storage, path: &Path) -> Result<(DLedgerCheckpointFile, CheckpointLoad)> {
        let (file, bytes) = RecordFile::open(storage, path)?;
        let load = match bytes.map(|b| DLedgerCheckpoint::decode(&b)) {
            None => CheckpointLoad::Missing,
            Some(Ok(c)) => CheckpointLoad::Valid(c),
            Some(Err(e)) => CheckpointLoad::Corrupt(e),
        };
        Ok((DLedgerCheckpointFile { file }, load))
    }

    /// Writes and syncs `c`.
    pub async fn write(&self, c: &DLedgerCheckpoint) -> Result<()> {
        self.file.write(&c.encode()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for c in [DLedgerCheckpoint::default(), DLedgerCheckpoint { committed_index: Some(41), end_index: Some(57) }] {
            assert_eq!(DLedgerCheckpoint::decode(&c.encode()), Ok(c));
        }
        let text = b"committedIndex=3\ncrc=1\n";
        assert!(DLedgerCheckpoint::decode(text).is_err());
    }
}
