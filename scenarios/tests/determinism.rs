//! Determinism as a tested contract: the same seed gives the same trace hash in two separate
//! processes, and different seeds give different traces.
//!
//! The test re-executes its own binary as a child (`DST_DETERMINISM_CHILD=1`), which prints
//! the hashes it computes; the parent computes the same seeds in-process and compares.

use std::process::Command;

use scenarios::scenario::generated_case;
use scenarios::{find_scenario, run_case};

/// Wide enough that some runs fail with the bug on (about one seed in ten does): the
/// distinct-hash check below needs a bug-on run whose trace differs from its bug-off twin.
const SEEDS: std::ops::Range<u64> = 0..48;
const CHILD_ENV: &str = "DST_DETERMINISM_CHILD";

/// Hashes of every seed, with no bug and with a bug on (so that failing runs, whose
/// violations are traced after the runtime ends, are covered too).
fn hashes(scenario: &str) -> Vec<(u64, u64)> {
    let scenario = find_scenario(scenario).expect("scenario");
    let buggy: std::collections::BTreeSet<String> = [engine::Bug::AckBeforeSync.id().to_string()].into_iter().collect();
    SEEDS
        .flat_map(|seed| [(seed, Default::default()), (seed, buggy.clone())])
        .map(|(seed, bugs)| {
            let case = generated_case(scenario, seed, &bugs);
            let outcome = run_case(&case, false).expect("runs");
            (seed, outcome.trace_hash)
        })
        .collect()
}

fn render(hashes: &[(u64, u64)]) -> String {
    hashes.iter().map(|(s, h)| format!("seed={s} hash={h:016x}\n")).collect()
}

#[test]
fn same_seed_same_trace_hash_across_processes() {
    sim::install_quiet_panic_hook();
    if std::env::var_os(CHILD_ENV).is_some() {
        // The child: print and let the parent compare.
        print!("BEGIN\n{}END\n", render(&hashes("disk-log")));
        return;
    }
    let here = render(&hashes("disk-log"));
    let exe = std::env::current_exe().expect("own path");
    let child = Command::new(exe)
        .args(["--exact", "same_seed_same_trace_hash_across_processes", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("re-executing the test binary");
    let stdout = String::from_utf8_lossy(&child.stdout);
    let there = stdout
        .split_once("BEGIN\n")
        .and_then(|(_, rest)| rest.split_once("END\n"))
        .map(|(body, _)| body.to_string())
        .unwrap_or_else(|| panic!("child printed no hashes:\n{stdout}\n{}", String::from_utf8_lossy(&child.stderr)));
    assert_eq!(here, there, "same seeds, different trace hashes in another process");
    let distinct: std::collections::BTreeSet<&str> = here.lines().map(|l| &l[l.find("hash=").unwrap()..]).collect();
    assert!(distinct.len() > SEEDS.count(), "different seeds should give different traces:\n{here}");
    // The same process must also agree with itself (statics carrying state would break it).
    assert_eq!(here, render(&hashes("disk-log")), "a second pass in the same process differs");
}

/// A seed's run must not depend on the runs before it in the process. Broker seed 245 did:
/// two `select!` branches were ready together, and tokio's `select!` (not simulated by
/// madsim) picked the first to poll from a process-wide counter.
#[test]
fn a_seed_runs_the_same_after_other_seeds() {
    sim::install_quiet_panic_hook();
    let broker = find_scenario("broker").expect("scenario");
    let hash = |seed| run_case(&generated_case(broker, seed, &Default::default()), false).expect("runs").trace_hash;
    let alone = hash(245);
    for before in [0, 1, 2] {
        hash(before);
        assert_eq!(hash(245), alone, "seed 245 traced differently after seed {before} ran in the process");
    }
}

/// The determinism rules that a grep can enforce (TigerBeetle's `tidy` habit), over all code
/// that runs in a simulation: no `HashMap`/`HashSet` (iteration order comes from per-thread
/// random keys), and every `select!` is `biased` (see the test above).
#[test]
fn simulated_code_keeps_the_determinism_rules() {
    // Spelled in pieces so that this file does not match itself.
    const HASH_MAP: &str = concat!("Hash", "Map");
    const HASH_SET: &str = concat!("Hash", "Set");
    const SELECT: &str = concat!("select", "! {");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut broken = Vec::new();
    for dir in ["engine/src", "sim/src", "scenarios/src", "scenarios/tests", "engine/tests", "sim/tests"] {
        for (path, text) in rust_files(&root.join(dir)) {
            let code: Vec<&str> = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect();
            for (i, line) in code.iter().enumerate() {
                let at = format!("{}:{}", path.strip_prefix(&root).unwrap_or(&path).display(), i + 1);
                if line.contains(HASH_MAP) || line.contains(HASH_SET) {
                    broken.push(format!("{at}: {HASH_MAP}/{HASH_SET} (use BTreeMap/BTreeSet)"));
                }
                if let Some(pos) = line.find(SELECT) {
                    let after = std::iter::once(&line[pos + SELECT.len()..])
                        .chain(code[i + 1..].iter().copied())
                        .flat_map(str::split_whitespace)
                        .next();
                    if after != Some("biased;") {
                        broken.push(format!("{at}: {SELECT} without `biased;`"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "determinism rules broken:\n{}", broken.join("\n"));
}

fn rust_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("source dir").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source file");
            out.push((path, text));
        }
    }
    out
}
