//! Small records DLedger keeps beside its log (the checkpoint, the current term and vote):
//! Java-properties text of non-negative integers (`-1` for none), as DLedger writes them,
//! plus a `crc` line of ours over the lines before it, so that a torn or garbage record is an
//! error, not a value.
//!
//! A record is written in place over a fixed 512-byte prefix of its file (text, then zeros),
//! inside one sector, like the store's checkpoint: a power loss leaves the old or the new
//! record, and a torn one fails its CRC.

use std::path::Path;
use std::sync::Arc;

use crate::io::{Storage, StorageFile};

use super::error::{DLedgerError, Result};

/// The record's fixed length; the file is one page.
pub const RECORD_BYTES: usize = 512;
const RECORD_FILE_BYTES: u64 = 4096;

/// Why record bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordDecodeError {
    #[error("not UTF-8 text")]
    NotText,
    #[error("line {0:?} is not key=value")]
    BadLine(String),
    #[error("value of {key} is not a non-negative integer or -1: {value:?}")]
    BadValue { key: &'static str, value: String },
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("CRC mismatch (stored {stored}, computed {computed})")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("the record does not fit {RECORD_BYTES} bytes")]
    TooLong,
}

/// Encodes `key=value` lines (`None` as `-1`) and the CRC line.
pub fn encode_record(fields: &[(&str, Option<u64>)]) -> [u8; RECORD_BYTES] {
    let mut body = String::new();
    for (k, v) in fields {
        let v = v.map_or_else(|| "-1".to_string(), |v| v.to_string());
        body.push_str(&format!("{k}={v}\n"));
    }
    let text = format!("{body}crc={}\n", crc32fast::hash(body.as_bytes()));
    assert!(text.len() <= RECORD_BYTES, "records are a few short lines");
    let mut b = [0u8; RECORD_BYTES];
    b[..text.len()].copy_from_slice(text.as_bytes());
    b
}

/// Decodes the values of `keys` (trailing zeros ignored, unknown keys skipped).
pub fn decode_record<const N: usize>(
    b: &[u8],
    keys: [&'static str; N],
) -> std::result::Result<[Option<u64>; N], RecordDecodeError> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let text = std::str::from_utf8(&b[..end]).map_err(|_| RecordDecodeError::NotText)?;
    let crc_at = text.rfind("crc=").ok_or(RecordDecodeError::Missing("crc"))?;
    let (body, crc_line) = text.split_at(crc_at);
    let crc_text = crc_line["crc=".len()..].trim_end_matches('\n');
    let stored =
        crc_text.parse::<u32>().map_err(|_| RecordDecodeError::BadValue { key: "crc", value: crc_text.to_string() })?;
    let computed = crc32fast::hash(body.as_bytes());
    if stored != computed {
        return Err(RecordDecodeError::CrcMismatch { stored, computed });
    }
    let mut found: [Option<Option<u64>>; N] = [None; N];
    for line in body.lines() {
        let (k, v) = line.split_once('=').ok_or_else(|| RecordDecodeError::BadLine(line.to_string()))?;
        let Some(i) = keys.iter().position(|&key| key == k) else { continue };
        found[i] = Some(match v.parse::<i64>() {
            Ok(-1) => None,
            Ok(x) if x >= 0 => Some(x as u64),
            _ => return Err(RecordDecodeError::BadValue { key: keys[i], value: v.to_string() }),
        });
    }
    let mut out = [None; N];
    for i in 0..N {
        out[i] = found[i].ok_or(RecordDecodeError::Missing(keys[i]))?;
    }
    Ok(out)
}

/// A file holding one record. Cheap to clone: writes are awaited outside any lock.
#[derive(Debug, Clone)]
pub struct RecordFile {
    file: Arc<dyn StorageFile>,
}

impl RecordFile {
    /// Opens or creates `path`; returns the bytes of its record, `None` if it was created
    /// (its directory entry is not yet durable: the caller syncs the directory) or holds
    /// no record yet.
    pub fn open(storage: &dyn Storage, path: &Path) -> Result<(RecordFile, Option<Vec<u8>>)> {
        if !storage.exists(path) {
            let file = storage.create(path)?;
            file.set_len(RECORD_FILE_BYTES)?;
            return Ok((RecordFile { file }, None));
        }
        let file = storage.open(path)?;
        let len = file.len()?;
        let mut b = vec![0u8; (len as usize).min(RECORD_BYTES)];
        file.read_at(0, &mut b)?;
        if len != RECORD_FILE_BYTES {
            file.set_len(RECORD_FILE_BYTES)?;
        }
        // Created, and a crash before the first record was synced: nothing was ever recorded
        // (a record lies within one sector, so a torn first write leaves it whole or zero).
        if b.iter().all(|&x| x == 0) {
            return Ok((RecordFile { file }, None));
        }
        Ok((RecordFile { file }, Some(b)))
    }

    /// Writes and syncs a record.
    pub async fn write(&self, record: &[u8; RECORD_BYTES]) -> Result<()> {
        self.file.write_at(0, record)?;
        self.file.sync_range(0, RECORD_BYTES as u64).await.map_err(DLedgerError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_rejects() {
        let b = encode_record(&[("a", Some(41)), ("b", None)]);
        assert_eq!(decode_record(&b, ["b", "a"]), Ok([None, Some(41)]));
        assert_eq!(decode_record(&b, ["c"]), Err(RecordDecodeError::Missing("c")));
        let mut flipped = b;
        flipped[2] ^= 0x01;
        assert!(matches!(decode_record(&flipped, ["a"]), Err(RecordDecodeError::CrcMismatch { .. })));
        assert_eq!(decode_record(&[0u8; 512], ["a"]), Err(RecordDecodeError::Missing("crc")));
        assert!(decode_record(&b[..10], ["a"]).is_err(), "torn");
        let body = "a=-7\n";
        let text = format!("{body}crc={}\n", crc32fast::hash(body.as_bytes()));
        assert!(matches!(decode_record(text.as_bytes(), ["a"]), Err(RecordDecodeError::BadValue { .. })));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_record(&b, ["committedIndex", "endIndex"]);
        }

        #[test]
        fn text_garbage_never_panics(s in "[a-zA-Z=0-9\n-]{0,80}") {
            let _ = decode_record(s.as_bytes(), ["a", "crc"]);
        }
    }
}
