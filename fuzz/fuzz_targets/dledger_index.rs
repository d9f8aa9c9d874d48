//! DLedger index units read back from the index file.
#![no_main]
use engine::dledger::index_unit::IndexUnit;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for unit in data.chunks(32) {
        let _ = IndexUnit::decode(unit);
    }
});
