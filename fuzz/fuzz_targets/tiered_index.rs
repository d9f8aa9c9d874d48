//! Tiered index files: the compacted form read back from the object store (header, slots,
//! runs of items, queried by a hash and a time range) and the writable form left on the local
//! disk (opened, its items walked, queried) — what the index service reads at a query and at
//! recovery.
#![no_main]
use std::path::PathBuf;

use engine::tiered::index_file::{query_compacted, IndexHeader, LocalIndexFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let [h0, h1, h2, h3, range] = rocketsim_fuzz::take::<5>(&mut data);
    let hash = i32::from_le_bytes([h0, h1, h2, h3]);
    let (begin_ms, end_ms) = if range & 1 == 0 { (0, i64::MAX) } else { (i64::from(range) << 20, i64::from(range) << 30) };
    let _ = IndexHeader::decode("fuzz", data);
    let _ = query_compacted("fuzz", data, hash, begin_ms, end_ms);
    let path = PathBuf::from("/store/tiered_index/00000000000000000001");
    let storage = rocketsim_fuzz::disk_with_file(&path, data);
    if let Ok(local) = LocalIndexFile::open(&*storage, &path, 1) {
        let _ = local.items();
        let _ = local.query(hash, begin_ms, end_ms);
    }
});
