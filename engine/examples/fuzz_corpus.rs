//! Writes the fuzz targets' seed corpus (`fuzz/corpus/<target>/`): real files a store wrote
//! (a store directory, e.g. the one `scripts/kill9.sh` leaves), the case files in `seeds/`,
//! and encodings of the DLedger and tiered formats made with the engine's own encoders.
//!
//! `RUSTFLAGS="" cargo run --release --target-dir target/std -p engine --example fuzz_corpus --
//!  STORE_DIR seeds fuzz/corpus`

use std::fs;
use std::path::{Path, PathBuf};

use engine::bugs::BugSet;
use engine::dledger::checkpoint::DLedgerCheckpoint;
use engine::dledger::entry::{encode_blank, seal_entry};
use engine::dledger::index_unit::IndexUnit;
use engine::dledger::term::TermRecord;
use engine::io::real::RealStorage;
use engine::tiered::flat_message::TieredUnit;
use engine::tiered::index_file::{compact, LocalIndexFile};

fn put(out: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = out.join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(name), bytes).expect("corpus file");
}

/// Files under `dir`, recursively, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn head(path: &Path, n: usize) -> Vec<u8> {
    let mut b = fs::read(path).unwrap_or_default();
    b.truncate(n);
    b
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, seeds, out] = &args[..] else {
        eprintln!("usage: fuzz_corpus STORE_DIR SEEDS_DIR OUT_DIR");
        std::process::exit(2);
    };
    let (store, out) = (Path::new(store), Path::new(out));
    let mut first_record = Vec::new();
    for (i, f) in files(&store.join("commitlog")).iter().take(4).enumerate() {
        let bytes = head(f, 8 << 10);
        // Option bytes first: check the CRC, no other constraint.
        put(out, "commit_log_record", &format!("real-{i}"), &[&[1u8, 0][..], &bytes].concat());
        put(out, "tiered_segment", &format!("records-{i}"), &bytes);
        if first_record.is_empty() {
            let size = bytes.get(..4).map_or(0, |b| i32::from_be_bytes(b.try_into().unwrap()).max(0) as usize);
            first_record = bytes[..size.min(bytes.len())].to_vec();
        }
    }
    for (i, f) in files(&store.join("consumequeue")).iter().take(4).enumerate() {
        put(out, "consume_queue", &format!("real-{i}"), &head(f, 16 * 20));
    }
    for (i, f) in files(&store.join("index")).iter().take(2).enumerate() {
        put(out, "key_index", &format!("real-{i}"), &[&[0x11u8, 0][..], &head(f, 4096)].concat());
    }
    put(out, "checkpoint", "real", &head(&store.join("checkpoint"), 4096));
    for (i, f) in files(Path::new(seeds)).iter().filter(|f| f.extension().is_some_and(|e| e == "toml")).enumerate() {
        put(out, "case_file", &format!("seed-{i}"), &fs::read(f).unwrap_or_default());
    }
    // DLedger: two chained entries around real records, a blank, their index units, records.
    let mut log = Vec::new();
    let mut prev_crc = 0;
    let mut units = Vec::new();
    for index in 0..2u64 {
        let mut entry = vec![0u8; 48];
        entry.extend_from_slice(&first_record);
        let h = seal_entry(&mut entry, index, 1, log.len() as u64, prev_crc);
        prev_crc = h.chain_crc;
        units.extend_from_slice(&IndexUnit::of(&h).encode());
        log.extend_from_slice(&entry);
    }
    log.extend_from_slice(&encode_blank(64));
    put(out, "dledger_entry", "entries", &[&[1u8, 0][..], &log].concat());
    put(out, "dledger_index", "units", &units);
    let checkpoint = DLedgerCheckpoint { committed_index: Some(1), end_index: Some(1) };
    put(out, "dledger_records", "checkpoint", &checkpoint.encode());
    put(out, "dledger_records", "term", &TermRecord { term: 3, voted_for: Some(1) }.encode());
    // Tiered: units, and a metadata file as the store writes it.
    let unit = TieredUnit { cl_offset: 0, size: first_record.len() as i32, tags_code: 0 };
    put(out, "tiered_segment", "units", &[unit.encode(), unit.encode()].concat());
    let meta = r#"{"format_version":1,"complete":true,"segments":{"TopicA/0/commitlog/0":{"kind":"commit-log","base_offset":0,"size":4096,"sealed":false,"create_ts_ms":1,"begin_ts_ms":1,"end_ts_ms":2}}}"#;
    put(out, "tiered_metadata", "metadata", meta.as_bytes());
    tiered_index(out);
}

/// A tiered index file of a few keys, in its writable form (as left on the local disk) and
/// its compacted form (as uploaded); each input starts with the queried hash and a range byte.
fn tiered_index(out: &Path) {
    let dir = std::env::temp_dir().join(format!("fuzz-corpus-index-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("scratch dir");
    let storage = RealStorage::new();
    let mut file = LocalIndexFile::create(&storage, &dir, 1, 4, 16).expect("index file");
    let hashes = [7i32, 11, 7, -3, 15];
    for (i, hash) in hashes.iter().enumerate() {
        file.put(*hash, 42, 0, (i as i64) * 100, 100, 1_000 + i as i64).expect("index put");
    }
    let items = file.items().expect("index items");
    let writable = fs::read(file.path()).expect("index bytes");
    let prefix = [7i32.to_le_bytes().as_slice(), &[0u8]].concat();
    put(out, "tiered_index", "writable", &[prefix.as_slice(), &writable].concat());
    let compacted = compact(file.header(), &items, &BugSet::default());
    put(out, "tiered_index", "compacted", &[prefix.as_slice(), &compacted].concat());
    let _ = fs::remove_dir_all(&dir);
}
