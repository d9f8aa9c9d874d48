//! The object-store seam: the remote store tiered storage uploads to.
//!
//! Keys are `/`-separated strings. `append` takes the offset the caller believes is the
//! object's end, so a retried append after a lost acknowledgement is detected as an
//! `OffsetMismatch` instead of writing the bytes twice (RocketMQ's `correctPosition`).

use std::fmt;

use bytes::Bytes;

use super::BoxFuture;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("object {key} does not exist")]
    NotFound { key: String },
    #[error("append to {key} at offset {expected}, but the object is {actual} bytes long")]
    OffsetMismatch { key: String, expected: u64, actual: u64 },
    #[error("range {offset}+{len} is outside object {key} of {size} bytes")]
    RangeOutOfBounds { key: String, offset: u64, len: u64, size: u64 },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("object store unavailable for {op} of {key}")]
    Unavailable { op: String, key: String },
    /// The request may or may not have been applied: the caller must find out (size, list)
    /// before assuming either.
    #[error("{op} of {key} timed out: outcome unknown")]
    TimedOutOutcomeUnknown { op: String, key: String },
    #[error("object store I/O error on {op} of {key}: {message}")]
    Io { op: String, key: String, message: String },
}

impl ObjectError {
    /// True when the request may have been applied although it reported failure.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ObjectError::TimedOutOutcomeUnknown { .. })
    }

    /// True for failures that a later retry may not see.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ObjectError::Unavailable { .. } | ObjectError::TimedOutOutcomeUnknown { .. } | ObjectError::Io { .. }
        )
    }
}

pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Creates or replaces an object.
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), ObjectError>>;
    /// Appends at `expected_offset`, which must equal the current size (0 creates the object).
    /// Returns the new size.
    fn append<'a>(&'a self, key: &'a str, expected_offset: u64, data: Bytes)
        -> BoxFuture<'a, Result<u64, ObjectError>>;
    /// Reads `[offset, offset + len)`; the whole range must lie inside the object.
    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFuture<'a, Result<Bytes, ObjectError>>;
    /// The object's size in bytes.
    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, ObjectError>>;
    /// Keys starting with `prefix`, sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, ObjectError>>;
    /// Deletes an object; deleting a missing object succeeds (as S3 does).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>>;
}

/// The real backend writes a put aside under the key plus this suffix, then renames it; keys
/// ending with it are reserved so that a user object can never be a half-written temporary.
pub const TMP_PUT_SUFFIX: &str = ".tmp-put";

/// Checks a key's shape; both backends reject the same keys.
pub fn validate_key(key: &str) -> Result<(), ObjectError> {
    let invalid = |reason: &str| Err(ObjectError::InvalidKey { key: key.to_string(), reason: reason.to_string() });
    if key.is_empty() {
        return invalid("empty");
    }
    if key.starts_with('/') || key.ends_with('/') {
        return invalid("leading or trailing '/'");
    }
    if key.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return invalid("empty, '.' or '..' path component");
    }
    if key.chars().any(|c| c == '\0' || c == '\\') {
        return invalid("NUL or backslash");
    }
    if key.ends_with(TMP_PUT_SUFFIX) {
        return invalid("reserved suffix .tmp-put");
    }
    Ok(())
}
