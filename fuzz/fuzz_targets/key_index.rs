//! The key index file: its header decoder, and the index loader and key query over a fuzzed
//! index file on the simulated disk.
#![no_main]
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::index::{IndexHeader, IndexService};
use engine::io::Holds;
use engine::mapped_file_queue::DirSyncs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let [shape, clean] = rocketsim_fuzz::take::<2>(&mut data);
    let _ = IndexHeader::decode(&rocketsim_fuzz::take::<40>(&mut &data[..]));
    let (slots, items) = (u32::from(shape & 0x0f) + 1, u32::from(shape >> 4) * 4 + 1);
    let dir = PathBuf::from("/store/index");
    let storage = rocketsim_fuzz::disk_with_file(&dir.join("20260101000000000"), data);
    let dirs = Arc::new(DirSyncs::new(false));
    if let Ok((svc, _)) =
        IndexService::load(&*storage, dir, slots, items, Holds::new(), dirs, clean & 1 == 0, i64::from(clean))
    {
        let _ = svc.query("T", "k", 0, i64::MAX, 8);
        let _ = svc.indexed_up_to();
    }
    let _ = Path::new("/");
});
