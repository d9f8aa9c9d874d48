//! The `dst` command line as a user meets it: bad input is a clear error with exit code 2
//! (never a panic), and the main subcommands do what the README says.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use scenarios::case::{Case, ExpectedOutcome};

fn dst(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dst")).args(args).output().expect("running dst")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit code 2, the expected words on stderr, and no panic message.
fn assert_usage_error(o: &Output, words: &str) {
    assert_eq!(o.status.code(), Some(2), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    assert!(stderr(o).contains(words), "expected {words:?} in: {}", stderr(o));
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds")
}

#[test]
fn bad_input_is_a_typed_error_with_exit_code_2() {
    assert_usage_error(&dst(&["explore", "--no-such-flag"]), "unexpected argument");
    assert_usage_error(&dst(&["explore", "--scenario", "nope", "--seeds", "1"]), "nope");
    assert_usage_error(&dst(&["explore", "--bug", "no-such-bug", "--seeds", "1"]), "no-such-bug");
    assert_usage_error(&dst(&["explore", "--shard", "3/2", "--seeds", "1"]), "shard");
    assert_usage_error(&dst(&["replay", "/no/such/case.toml"]), "cannot read case file");
    assert_usage_error(&dst(&["replay"]), "case file or --seed");

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.toml");
    std::fs::write(&garbage, "format_version = 1\nscenario = [not toml").unwrap();
    assert_usage_error(&dst(&["replay", garbage.to_str().unwrap()]), "malformed case file");
    let future = dir.path().join("future.toml");
    let case = std::fs::read_to_string(seeds_dir().join("broker-regress-866.toml")).unwrap();
    std::fs::write(&future, case.replace("format_version = 1", "format_version = 99")).unwrap();
    assert_usage_error(&dst(&["replay", future.to_str().unwrap()]), "format version 99");
}

#[test]
fn replay_runs_a_saved_case_twice_and_save_writes_a_replayable_case() {
    let regress = seeds_dir().join("broker-regress-866.toml");
    let o = dst(&["replay", "--quiet", regress.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("identical: deterministic"), "{}", stdout(&o));
    assert!(stdout(&o).contains("(as expected)"), "{}", stdout(&o));

    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.toml");
    let o = dst(&["replay", "--quiet", "--seed", "3", "--save", saved.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let case = Case::load(&saved).unwrap();
    assert_eq!((case.scenario.as_str(), case.seed), ("broker", 3));
    assert_eq!(case.expect.outcome, ExpectedOutcome::Pass, "seed 3 of the broker scenario passes");
    let o = dst(&["replay", "--quiet", saved.to_str().unwrap()]);
    assert!(o.status.success() && stdout(&o).contains("(as expected)"), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn explore_reports_every_seed_as_json_and_a_caught_bug_fails_the_exit_code() {
    let o = dst(&["explore", "--seeds", "4", "--jobs", "2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("explore --json prints JSON");
    assert_eq!(report["runs"], 4);
    assert_eq!(report["results"].as_array().map(Vec::len), Some(4));

    // recovery-check-flag-miswired is caught on the first seed (see `dst zoo`).
    let dir = tempfile::tempdir().unwrap();
    let save_dir = dir.path().to_str().unwrap();
    let o = dst(&["explore", "--seeds", "1", "--bug", "recovery-check-flag-miswired", "--save-dir", save_dir]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("consume-queue"), "{}", stdout(&o));
    assert!(dir.path().join("broker-0.toml").exists(), "the failing case is saved");
}

#[test]
fn merge_joins_shard_reports_and_refuses_overlapping_or_foreign_ones() {
    let dir = tempfile::tempdir().unwrap();
    let shard = |k: &str| {
        let o = dst(&["explore", "--seeds", "6", "--jobs", "2", "--shard", k, "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let path = dir.path().join(format!("shard-{}.json", k.replace('/', "-")));
        std::fs::write(&path, o.stdout).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (a, b) = (shard("1/2"), shard("2/2"));
    let o = dst(&["merge", &a, &b, "--json"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let merged: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("merge --json prints JSON");
    assert_eq!(merged["runs"], 6);
    assert_eq!(merged["shards"].as_array().map(Vec::len), Some(2));
    let o = dst(&["merge", &a, &b]);
    assert!(stdout(&o).contains("shards        2 (1/2, 2/2)"), "{}", stdout(&o));

    assert_usage_error(&dst(&["merge", &a, &a]), "the shards overlap");
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{\"runs\": 1}").unwrap();
    assert_usage_error(&dst(&["merge", &a, garbage.to_str().unwrap()]), "is not a `dst explore --json` report");
    let o = dst(&["explore", "--seeds", "2", "--scenario", "disk-log", "--start-seed", "100", "--json"]);
    let other = dir.path().join("disk-log.json");
    std::fs::write(&other, o.stdout).unwrap();
    assert_usage_error(&dst(&["merge", &a, other.to_str().unwrap()]), "of scenario \"disk-log\"");
    assert_usage_error(&dst(&["merge"]), "required");
}

#[test]
fn replay_draws_the_run_and_shrink_prints_a_test_of_the_case() {
    let witness = seeds_dir().join("broker-ack-before-sync.toml");
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("run.html");
    let o = dst(&["replay", "--quiet", witness.to_str().unwrap(), "--html", page.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let html = std::fs::read_to_string(&page).expect("the picture was written");
    assert!(html.contains(r#"data-node="broker""#) && html.contains(r#"id="violation""#));
    for fetch in [" src=", "href=\"http", "url(http", "@import", "fetch("] {
        assert!(!html.contains(fetch), "the page must be self-contained, found {fetch:?}");
    }
    assert!(stdout(&o).contains("picture "), "{}", stdout(&o));

    let copy = dir.path().join("case.toml");
    std::fs::copy(&witness, &copy).unwrap();
    let o = dst(&["shrink", copy.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let shrunk = Case::load(&dir.path().join("case.shrunk.toml")).expect("the shrunk case was written");
    let test = &out[out.find("#[test]").expect("a #[test] is printed")..];
    assert!(test.contains(&format!("fn broker_seed_{}_fails_durability()", shrunk.seed)), "{test}");
    assert!(test.contains(&format!("seed = {}", shrunk.seed)), "{test}");
    assert!(test.contains(r#"v.checker == "durability""#), "{test}");
}
