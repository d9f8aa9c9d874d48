//! Case files (`seeds/*.toml`): `Case::parse` on any text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scenarios::Case;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(case) = Case::parse(text, "fuzz") {
            let _ = Case::parse(&case.to_toml(), "fuzz-again");
        }
    }
});
