//! The commit-log record decoder (`engine::message::decode`), under every option recovery,
//! dispatch and reads use.
#![no_main]
use engine::message::{decode, decode_ref, DecodeOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let [flags, left] = rocketsim_fuzz::take::<2>(&mut data);
    let opts = DecodeOptions {
        check_crc: flags & 1 != 0,
        check_dup_info: flags & 2 != 0,
        expected_phy_offset: (flags & 4 != 0).then_some(u64::from(flags >> 4) * 4096),
        bytes_left_in_file: (flags & 8 != 0).then_some(u64::from(left) * 64),
        max_record_bytes: if left & 1 == 0 { 4 << 20 } else { u64::from(left) * 16 },
    };
    let _ = decode(data, &opts);
    let _ = decode_ref(data, &opts);
});
