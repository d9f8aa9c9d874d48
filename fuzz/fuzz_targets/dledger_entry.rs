//! DLedger entries (`decode_entry`, `peek_entry`, `entry_extent`) under the options recovery
//! and reads use.
#![no_main]
use engine::dledger::entry::{decode_entry, entry_extent, peek_entry, EntryDecodeOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let [flags, left] = rocketsim_fuzz::take::<2>(&mut data);
    let opts = EntryDecodeOptions {
        check_body_crc: flags & 1 != 0,
        expected_pos: (flags & 2 != 0).then_some(u64::from(flags >> 4) * 4096),
        bytes_left_in_file: (flags & 4 != 0).then_some(u64::from(left) * 64),
        max_entry_bytes: if flags & 8 == 0 { 4 << 20 } else { u64::from(left) * 16 },
    };
    let _ = decode_entry(data, &opts);
    if let Some((magic, size)) = peek_entry(data) {
        let _ = entry_extent(magic, size, &opts);
    }
});
