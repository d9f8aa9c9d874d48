//! DLedger's small records beside the log (checkpoint, term and vote): properties text
//! with a CRC line; garbage must be a typed error.
#![no_main]
use engine::dledger::checkpoint::DLedgerCheckpoint;
use engine::dledger::record::decode_record;
use engine::dledger::term::TermRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = DLedgerCheckpoint::decode(data);
    let _ = TermRecord::decode(data);
    let _ = decode_record(data, ["a", "b", "c"]);
});
