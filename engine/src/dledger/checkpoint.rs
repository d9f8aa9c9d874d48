//! The DLedger checkpoint (`dledger-{id}/checkpoint`): Java-properties text holding the
//! committed index and the end index, as DLedger writes it, plus a `crc` line of ours over
//! the lines before it, so that a torn or garbage checkpoint is an error, not an index.
//!
//! Written in place over a fixed 512-byte record (text, then zeros) inside one sector, like
//! the store's checkpoint: a power loss leaves the old or the new record, and a torn one
//! fails its CRC.

use std::path::Path;
use std::sync::Arc;

use crate::io::{Storage, StorageFile};

use super::error::{DLedgerError, Result};

/// The record's fixed length; the file is one page.
pub const CHECKPOINT_RECORD_BYTES: usize = 512;
const CHECKPOINT_FILE_BYTES: u64 = 4096;

/// What the checkpoint says: `None` is DLedger's `-1` (nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DLedgerCheckpoint {
    pub committed_index: Option<u64>,
    pub end_index: Option<u64>,
}

/// Why checkpoint bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointDecodeError {
    #[error("not UTF-8 text")]
    NotText,
    #[error("line {0:?} is not key=value")]
    BadLine(String),
    #[error("value of {key} is not an index: {value:?}")]
    BadValue { key: &'static str, value: String },
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("CRC mismatch (stored {stored}, computed {computed})")]
    CrcMismatch { stored: u32, computed: u32 },
}

fn index_text(i: Option<u64>) -> String {
    i.map_or_else(|| "-1".to_string(), |i| i.to_string())
}

impl DLedgerCheckpoint {
    pub fn encode(&self) -> [u8; CHECKPOINT_RECORD_BYTES] {
        let body =
            format!("committedIndex={}\nendIndex={}\n", index_text(self.committed_index), index_text(self.end_index));
        let text = format!("{body}crc={}\n", crc32fast::hash(body.as_bytes()));
        let mut b = [0u8; CHECKPOINT_RECORD_BYTES];
        b[..text.len()].copy_from_slice(text.as_bytes());
        b
    }

    /// Parses a record (trailing zeros ignored).
    pub fn decode(b: &[u8]) -> std::result::Result<DLedgerCheckpoint, CheckpointDecodeError> {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        let text = std::str::from_utf8(&b[..end]).map_err(|_| CheckpointDecodeError::NotText)?;
        let crc_at = text.rfind("crc=").ok_or(CheckpointDecodeError::Missing("crc"))?;
        let (body, crc_line) = text.split_at(crc_at);
        let crc_text = crc_line["crc=".len()..].trim_end_matches('\n');
        let stored = crc_text
            .parse::<u32>()
            .map_err(|_| CheckpointDecodeError::BadValue { key: "crc", value: crc_text.to_string() })?;
        let computed = crc32fast::hash(body.as_bytes());
        if stored != computed {
            return Err(CheckpointDecodeError::CrcMismatch { stored, computed });
        }
        let (mut committed, mut end_index) = (None, None);
        for line in body.lines() {
            let (k, v) = line.split_once('=').ok_or_else(|| CheckpointDecodeError::BadLine(line.to_string()))?;
            let (key, slot) = match k {
                "committedIndex" => ("committedIndex", &mut committed),
                "endIndex" => ("endIndex", &mut end_index),
                _ => continue,
            };
            let value = match v.parse::<i64>() {
                Ok(-1) => None,
                Ok(i) if i >= 0 => Some(i as u64),
                _ => return Err(CheckpointDecodeError::BadValue { key, value: v.to_string() }),
            };
            *slot = Some(value);
        }
        Ok(DLedgerCheckpoint {
            committed_index: committed.ok_or(CheckpointDecodeError::Missing("committedIndex"))?,
            end_index: end_index.ok_or(CheckpointDecodeError::Missing("endIndex"))?,
        })
    }
}

/// What opening the checkpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointLoad {
    Valid(DLedgerCheckpoint),
    /// No file (created now): nothing is known committed.
    Missing,
    /// Unreadable as a checkpoint: nothing is known committed (the group re-learns it).
    Corrupt(CheckpointDecodeError),
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
    file: Arc<dyn StorageFile>,
}

impl DLedgerCheckpointFile {
    /// Opens or creates `path`. A created file's directory entry is not yet durable: the
    /// caller syncs its directory.
    pub fn open(storage: &dyn Storage, path: &Path) -> Result<(DLedgerCheckpointFile, CheckpointLoad)> {
        if !storage.exists(path) {
            let file = storage.create(path)?;
            file.set_len(CHECKPOINT_FILE_BYTES)?;
            return Ok((DLedgerCheckpointFile { file }, CheckpointLoad::Missing));
        }
        let file = storage.open(path)?;
        let len = file.len()?;
        let mut b = [0u8; CHECKPOINT_RECORD_BYTES];
        let n = (len as usize).min(CHECKPOINT_RECORD_BYTES);
        file.read_at(0, &mut b[..n])?;
        let load = match DLedgerCheckpoint::decode(&b[..n]) {
            Ok(c) => CheckpointLoad::Valid(c),
            Err(e) => CheckpointLoad::Corrupt(e),
        };
        if len != CHECKPOINT_FILE_BYTES {
            file.set_len(CHECKPOINT_FILE_BYTES)?;
        }
        Ok((DLedgerCheckpointFile { file }, load))
    }

    /// Writes and syncs `c`.
    pub async fn write(&self, c: &DLedgerCheckpoint) -> Result<()> {
        self.file.write_at(0, &c.encode())?;
        self.file.sync_range(0, CHECKPOINT_RECORD_BYTES as u64).await.map_err(DLedgerError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_rejects() {
        for c in [DLedgerCheckpoint::default(), DLedgerCheckpoint { committed_index: Some(41), end_index: Some(57) }] {
            assert_eq!(DLedgerCheckpoint::decode(&c.encode()), Ok(c));
        }
        let good = DLedgerCheckpoint { committed_index: Some(41), end_index: Some(57) }.encode();
        let mut flipped = good;
        flipped[15] ^= 0x01;
        assert!(matches!(DLedgerCheckpoint::decode(&flipped), Err(CheckpointDecodeError::CrcMismatch { .. })));
        assert_eq!(DLedgerCheckpoint::decode(&[0u8; 512]), Err(CheckpointDecodeError::Missing("crc")));
        assert!(DLedgerCheckpoint::decode(&good[..20]).is_err(), "torn");
        let body = "committedIndex=-7\nendIndex=1\n";
        let text = format!("{body}crc={}\n", crc32fast::hash(body.as_bytes()));
        assert!(matches!(DLedgerCheckpoint::decode(text.as_bytes()), Err(CheckpointDecodeError::BadValue { .. })));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = DLedgerCheckpoint::decode(&b);
        }

        #[test]
        fn text_garbage_never_panics(s in "[a-zA-Z=0-9\n-]{0,80}") {
            let _ = DLedgerCheckpoint::decode(s.as_bytes());
        }
    }
}
