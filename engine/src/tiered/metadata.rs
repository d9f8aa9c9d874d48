//! The tiered metadata (RocketMQ's `DefaultMetadataStore`): per segment its base offset, last
//! committed size, status and timestamps, in one JSON file on the local disk.
//!
//! It is replaced atomically (written to a temporary file, synced, renamed over the old one,
//! directory synced), so a crash leaves the old version or the new one, never a torn mix. It is
//! a cache of what the object store holds, not the truth: at start every segment is checked
//! against its remote size, and without the file the whole view is rebuilt from a listing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{FileKind, TieredError};
use crate::io::storage::StorageFileExt;
use crate::io::Storage;

/// One segment as last persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentMeta {
    pub kind: FileKind,
    pub base_offset: u64,
    /// The last committed size the broker knows.
    pub size: u64,
    pub sealed: bool,
    pub create_ts_ms: i64,
    pub begin_ts_ms: i64,
    pub end_ts_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataFile {
    format_version: u32,
    /// False while the view is being rebuilt from a listing: queues the listing found may be
    /// missing from the table, so the next start lists again.
    complete: bool,
    /// Object key -> segment.
    segments: BTreeMap<String, SegmentMeta>,
    /// Queue (`topic/queue`) -> the queue offset below which every committed message's keys
    /// are in a durable index file (local and synced, or uploaded).
    #[serde(default)]
    indexed: BTreeMap<String, u64>,
}

const FORMAT_VERSION: u32 = 1;

/// The metadata behind its lock, held only to update or save it, never across an upload.
pub type Meta = tokio::sync::Mutex<MetadataStore>;

/// The metadata in memory and the file behind it.
#[derive(Debug)]
pub struct MetadataStore {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    segments: BTreeMap<String, SegmentMeta>,
    indexed: BTreeMap<String, u64>,
    complete: bool,
    /// Changed since the last persist.
    dirty: bool,
}

/// What loading found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataLoad {
    Loaded,
    /// No file: a fresh store, or a replaced disk.
    Missing,
    /// A file that does not parse (garbage, a version from elsewhere): ignored, and the view is
    /// rebuilt from the object store.
    Unreadable(String),
    /// A file saved while a rebuild from a listing was under way: kept, and listed again.
    Incomplete,
}

impl MetadataStore {
    pub fn load(storage: Arc<dyn Storage>, path: &Path) -> Result<(MetadataStore, MetadataLoad), TieredError> {
        let mut store = MetadataStore {
            storage,
            path: path.to_path_buf(),
            segments: BTreeMap::new(),
            indexed: BTreeMap::new(),
            complete: false,
            dirty: false,
        };
        // A temporary file left by a crash before its rename is never the metadata.
        let tmp = tmp_path(path);
        if store.storage.exists(&tmp) {
            store.storage.remove_file(&tmp)?;
        }
        if !store.storage.exists(path) {
            return Ok((store, MetadataLoad::Missing));
        }
        let bytes = store.storage.open(path)?.read_all()?;
        match parse(&bytes) {
            Ok(file) if !file.complete => {
                store.segments = file.segments;
                store.indexed = file.indexed;
                Ok((store, MetadataLoad::Incomplete))
            }
            Ok(file) => {
                store.segments = file.segments;
                store.indexed = file.indexed;
                store.complete = true;
                Ok((store, MetadataLoad::Loaded))
            }
            Err(reason) => {
                store.dirty = true;
                Ok((store, MetadataLoad::Unreadable(reason)))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn segments(&self) -> &BTreeMap<String, SegmentMeta> {
        &self.segments
    }

    pub fn get(&self, key: &str) -> Option<&SegmentMeta> {
        self.segments.get(key)
    }

    pub fn put(&mut self, key: &str, meta: SegmentMeta) {
        if self.segments.get(key) != Some(&meta) {
            self.segments.insert(key.to_string(), meta);
            self.dirty = true;
        }
    }

    /// The queue offset below which a queue's keys are durably indexed, if recorded.
    pub fn indexed(&self, queue: &str) -> Option<u64> {
        self.indexed.get(queue).copied()
    }

    pub fn set_indexed(&mut self, queue: &str, offset: u64) {
        if self.indexed.get(queue) != Some(&offset) {
            self.indexed.insert(queue.to_string(), offset);
            self.dirty = true;
        }
    }

    /// Whether the table names every queue the object store holds.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    pub fn set_complete(&mut self, complete: bool) {
        if self.complete != complete {
            self.complete = complete;
            self.dirty = true;
        }
    }

    pub fn remove(&mut self, key: &str) {
        if self.segments.remove(key).is_some() {
            self.dirty = true;
        }
    }

    /// Replaces the file with the current contents, if they changed.
    pub async fn persist(&mut self) -> Result<(), TieredError> {
        if !self.dirty {
            return Ok(());
        }
        let file = MetadataFile {
            format_version: FORMAT_VERSION,
            complete: self.complete,
            segments: self.segments.clone(),
            indexed: self.indexed.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| TieredError::Metadata { path: self.path.display().to_string(), reason: e.to_string() })?;
        let dir = self.path.parent().unwrap_or(Path::new("/")).to_path_buf();
        if !self.storage.exists(&dir) {
            self.storage.create_dir_all(&dir)?;
            if let Some(parent) = dir.parent() {
                self.storage.sync_dir(parent).await?;
            }
        }
        let tmp = tmp_path(&self.path);
        if self.storage.exists(&tmp) {
            // Left by a persist that failed before its rename.
            self.storage.remove_file(&tmp)?;
        }
        let f = self.storage.create(&tmp)?;
        f.write_at(0, &bytes)?;
        f.sync_range(0, bytes.len() as u64).await?;
        self.storage.rename(&tmp, &self.path)?;
        self.storage.sync_dir(&dir).await?;
        self.dirty = false;
        Ok(())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Parses a metadata file; any defect is a reason, never a panic.
fn parse(bytes: &[u8]) -> Result<MetadataFile, String> {
    let file: MetadataFile = serde_json::from_slice(bytes).map_err(|e| format!("not metadata JSON: {e}"))?;
    if file.format_version != FORMAT_VERSION {
        return Err(format!("format version {} (expected {FORMAT_VERSION})", file.format_version));
    }
    for (key, m) in &file.segments {
        if m.size > (1 << 50) || m.base_offset > (1 << 60) {
            return Err(format!("segment {key}: size {} or base {} out of range", m.size, m.base_offset));
        }
        if m.kind == FileKind::ConsumeQueue && m.base_offset % super::TIERED_CQ_UNIT_BYTES != 0 {
            return Err(format!("consume-queue segment {key} starts inside a unit ({})", m.base_offset));
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn parse_rejects_what_would_mislead_recovery() {
        let good = br#"{"format_version":1,"complete":true,"segments":{"p/T/0/consumequeue/00000000000000000000":
            {"kind":"consume-queue","base_offset":0,"size":40,"sealed":false,"create_ts_ms":1,"begin_ts_ms":1,"end_ts_ms":2}}}"#;
        assert_eq!(parse(good).unwrap().segments.len(), 1);
        let inside_unit = String::from_utf8_lossy(good).replace("\"base_offset\":0", "\"base_offset\":10");
        assert!(parse(inside_unit.as_bytes()).unwrap_err().contains("inside a unit"));
        let version = String::from_utf8_lossy(good).replace("\"format_version\":1", "\"format_version\":9");
        assert!(parse(version.as_bytes()).unwrap_err().contains("version"));
        assert!(parse(&good[..good.len() / 2]).is_err());
        assert!(parse(b"").is_err());
    }
}
