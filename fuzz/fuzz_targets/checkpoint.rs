//! The store checkpoint's decoder (a torn or garbage checkpoint must read as none).
#![no_main]
use engine::checkpoint::CheckpointData;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(c) = CheckpointData::decode(data) {
        let _ = (c.min_timestamp_ms(), c.min_timestamp_index_ms());
        assert_eq!(CheckpointData::decode(&c.encode()), Some(c), "a decoded checkpoint round-trips");
    }
});
