//! Helpers shared by the fuzz targets: options drawn from the input's first bytes, and an
//! in-memory simulated disk to put a fuzzed file on for the loaders that read through the
//! storage seam.

use std::path::Path;
use std::sync::Arc;

use engine::io::storage::Storage;

/// Takes `N` bytes off the front of `data` (zeros if it is shorter).
pub fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

/// A fresh simulated disk holding `bytes` at `path` (parents created). No sync: loaders
/// read the current image, which is what they would see after a process crash.
pub fn disk_with_file(path: &Path, bytes: &[u8]) -> Arc<dyn Storage> {
    let disk = sim::SimDisk::new("fuzz", sim::DiskConfig::default(), 0, sim::Trace::new(false));
    let storage = disk.storage();
    if let Some(parent) = path.parent() {
        storage.create_dir_all(parent).expect("mkdir on an empty disk");
    }
    let f = storage.create(path).expect("create on an empty disk");
    f.write_at(0, bytes).expect("write to an empty disk");
    storage
}
