//! Consume-queue units read back from a file: `CqUnit::decode` over a file's bytes, and the
//! consume queue's loader over a fuzzed file on the simulated disk.
#![no_main]
use std::path::Path;

use engine::consume_queue::{ConsumeQueue, CqUnit};
use engine::io::Holds;
use engine::mapped_file_queue::DirSyncs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for unit in data.chunks_exact(20) {
        let _ = CqUnit::decode(unit.try_into().expect("20 bytes"));
    }
    let units_per_file = 16u64;
    let path = Path::new("/store/consumequeue/T/0/00000000000000000000");
    let storage = rocketsim_fuzz::disk_with_file(path, data);
    let holds = Holds::new();
    let dirs = std::sync::Arc::new(DirSyncs::new(false));
    let _ = ConsumeQueue::load(&*storage, Path::new("/store/consumequeue"), "T", 0, units_per_file, holds, dirs);
});
