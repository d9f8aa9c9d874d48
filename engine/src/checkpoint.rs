//! The store checkpoint (§2.4): three timestamps, each the store timestamp of the newest
//! message whose structure (commit log, consume queues, index) is durable; plus a CRC32 we
//! add so that a torn or garbage checkpoint is recognised and treated as "no checkpoint"
//! (recover from the first file) instead of steering recovery.

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::io::{Storage, StorageFile};

/// RocketMQ maps one OS page.
pub const CHECKPOINT_FILE_BYTES: u64 = 4096;
const FIELDS_BYTES: usize = 24;
/// The slack RocketMQ subtracts from the smaller timestamp.
pub const MIN_TIMESTAMP_SLACK_MS: i64 = 3000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointData {
    pub physic_msg_timestamp_ms: i64,
    pub logics_msg_timestamp_ms: i64,
    pub index_msg_timestamp_ms: i64,
}

impl CheckpointData {
    /// `getMinTimestamp`: `max(0, min(physic, logics) - 3000)`.
    pub fn min_timestamp_ms(&self) -> i64 {
        (self.physic_msg_timestamp_ms.min(self.logics_msg_timestamp_ms) - MIN_TIMESTAMP_SLACK_MS).max(0)
    }

    /// `getMinTimestampIndex`: `min(getMinTimestamp, indexMsgTimestamp)`.
    pub fn min_timestamp_index_ms(&self) -> i64 {
        self.min_timestamp_ms().min(self.index_msg_timestamp_ms)
    }

    /// `@0 physic, @8 logics, @16 index` (big-endian i64), `@24` CRC32 of bytes 0..24.
    pub fn encode(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[0..8].copy_from_slice(&self.physic_msg_timestamp_ms.to_be_bytes());
        b[8..16].copy_from_slice(&self.logics_msg_timestamp_ms.to_be_bytes());
        b[16..24].copy_from_slice(&self.index_msg_timestamp_ms.to_be_bytes());
        let crc = crc32fast::hash(&b[..FIELDS_BYTES]);
        b[24..28].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// `None` when the CRC does not match (torn, zeroed or garbage).
    pub fn decode(b: &[u8]) -> Option<CheckpointData> {
        let b: &[u8; 28] = b.get(..28)?.try_into().ok()?;
        let crc = u32::from_be_bytes(b[24..28].try_into().ok()?);
        if crc != crc32fast::hash(&b[..FIELDS_BYTES]) {
            return None;
        }
        let at = |o: usize| i64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        Some(CheckpointData {
            physic_msg_timestamp_ms: at(0),
            logics_msg_timestamp_ms: at(8),
            index_msg_timestamp_ms: at(16),
        })
    }
}

/// The checkpoint file.
///
/// It is written in place (`write_at` then `sync_range`), as RocketMQ writes its mapped
/// page, rather than by write-to-temp + rename: the record is 28 bytes inside the file's
/// first sector, so a power loss leaves the old or the new sector, and if a device tears it
/// anyway the CRC rejects the result and recovery falls back to scanning from the first
/// file, which is slow but correct. A rename would need two more syncs (the temp file and
/// the directory) on every checkpoint for no extra safety.
#[derive(Debug)]
pub struct CheckpointFile {
    file: Arc<dyn StorageFile>,
}

/// What loading found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointState {
    Valid(CheckpointData),
    /// The file was missing (created now).
    Missing,
    /// The CRC did not match.
    Corrupt,
}

impl CheckpointState {
    /// The data recovery may use: missing or corrupt means all zeros (recover from the start).
    pub fn data(&self) -> CheckpointData {
        match self {
            CheckpointState::Valid(d) => *d,
            _ => CheckpointData::default(),
        }
    }
}

impl CheckpointFile {
    /// Opens (or creates) `path`. A created file's directory entry is not yet durable: the
    /// caller syncs the root directory.
    pub fn open(storage: &dyn Storage, path: &Path) -> Result<(CheckpointFile, CheckpointState)> {
        if !storage.exists(path) {
            let file = storage.create(path)?;
            file.set_len(CHECKPOINT_FILE_BYTES)?;
            return Ok((CheckpointFile { file }, CheckpointState::Missing));
        }
        let file = storage.open(path)?;
        let len = file.len()?;
        let mut b = [0u8; 28];
        let state = if len >= 28 {
            file.read_at(0, &mut b)?;
            CheckpointData::decode(&b).map_or(CheckpointState::Corrupt, CheckpointState::Valid)
        } else {
            CheckpointState::Corrupt
        };
        if len != CHECKPOINT_FILE_BYTES {
            file.set_len(CHECKPOINT_FILE_BYTES)?;
        }
        Ok((CheckpointFile { file }, state))
    }

    /// Writes and syncs `data`.
    pub async fn write(&self, data: &CheckpointData) -> Result<()> {
        self.file.write_at(0, &data.encode())?;
        self.file.sync_range(0, CHECKPOINT_FILE_BYTES).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_guards_the_fields() {
        let d = CheckpointData {
            physic_msg_timestamp_ms: 10_000,
            logics_msg_timestamp_ms: 9_000,
            index_msg_timestamp_ms: 1,
        };
        let mut b = d.encode();
        assert_eq!(CheckpointData::decode(&b), Some(d));
        assert_eq!(d.min_timestamp_ms(), 6_000);
        assert_eq!(d.min_timestamp_index_ms(), 1);
        b[3] ^= 0x10;
        assert_eq!(CheckpointData::decode(&b), None);
        assert_eq!(CheckpointData::decode(&[0u8; 28]), None);
    }
}
