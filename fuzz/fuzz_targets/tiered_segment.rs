//! Bytes of tiered segments read back from the object store: the tiered consume queue's
//! units (`decode_units`) and the tiered commit log's records (the local record format).
#![no_main]
use engine::message::{decode, DecodeOptions, Decoded};
use engine::tiered::flat_message::decode_units;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_units("fuzz", data);
    // Walk the bytes as a segment of records, as a reader of the tiered commit log does.
    let mut pos = 0usize;
    let opts = DecodeOptions { max_record_bytes: 1 << 20, ..DecodeOptions::default() };
    while pos < data.len() {
        match decode(&data[pos..], &opts) {
            Decoded::Valid(_, size) if size > 0 => pos += size as usize,
            _ => break,
        }
    }
});
