//! A member's current term and vote (`dledger-{id}/currterm`, DLedger's `currTerm` and
//! `voteLeader`), a `record` that must be durable before the member answers a vote or an
//! append of a newer term (Raft's persistent state): a member that forgot its vote after a
//! crash could vote twice in one term.

use std::path::Path;

use crate::io::Storage;

use super::error::Result;
use super::raft::MemberId;
use super::record::{decode_record, encode_record, RecordDecodeError, RecordFile, RECORD_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TermRecord {
    pub term: u64,
    pub voted_for: Option<MemberId>,
}

impl TermRecord {
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        encode_record(&[("currTerm", Some(self.term)), ("voteLeader", self.voted_for.map(u64::from))])
    }

    pub fn decode(b: &[u8]) -> std::result::Result<TermRecord, RecordDecodeError> {
        let [term, voted_for] = decode_record(b, ["currTerm", "voteLeader"])?;
        let term = term.ok_or(RecordDecodeError::BadValue { key: "currTerm", value: "-1".to_string() })?;
        let voted_for = voted_for
            .map(|v| {
                MemberId::try_from(v)
                    .map_err(|_| RecordDecodeError::BadValue { key: "voteLeader", value: v.to_string() })
            })
            .transpose()?;
        Ok(TermRecord { term, voted_for })
    }
}

/// The term file.
#[derive(Debug, Clone)]
pub struct TermFile {
    file: RecordFile,
}

impl TermFile {
    /// Opens or creates `path`. A missing file is term 0 with no vote. A garbage one is an
    /// error: starting over at term 0 could grant a second vote in a term already voted in.
    pub fn open(storage: &dyn Storage, path: &Path) -> Result<(TermFile, TermRecord)> {
        let (file, bytes) = RecordFile::open(storage, path)?;
        let rec = match bytes {
            None => TermRecord::default(),
            Some(b) => TermRecord::decode(&b)
                .map_err(|e| super::error::DLedgerError::BadRecord { path: path.to_path_buf(), reason: e })?,
        };
        Ok((TermFile { file }, rec))
    }

    /// Writes and syncs the term and vote.
    pub async fn write(&self, rec: &TermRecord) -> Result<()> {
        self.file.write(&rec.encode()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        for r in [TermRecord::default(), TermRecord { term: 9, voted_for: Some(2) }] {
            assert_eq!(TermRecord::decode(&r.encode()), Ok(r));
        }
        let bad = encode_record(&[("currTerm", None), ("voteLeader", None)]);
        assert!(TermRecord::decode(&bad).is_err(), "a term is never -1");
        let big = encode_record(&[("currTerm", Some(1)), ("voteLeader", Some(1 << 40))]);
        assert!(TermRecord::decode(&big).is_err(), "member ids are 32-bit");
    }
}
