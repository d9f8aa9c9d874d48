//! The tiered store's JSON metadata file, loaded from a fuzzed file on the simulated disk
//! (garbage must load as `Unreadable`, never panic).
#![no_main]
use std::path::Path;

use engine::tiered::metadata::MetadataStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/store/tiered/metadata.json");
    let storage = rocketsim_fuzz::disk_with_file(path, data);
    if let Ok((store, _)) = MetadataStore::load(storage, path) {
        let _ = store.segments().len();
    }
});
