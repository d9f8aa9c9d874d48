//! Shrinking: the smallest fault plan that still fails the same way. Greedy and deterministic:
//! drop whole events, then zero background probabilities, then shorten windows, then move the
//! drawn configuration back to the fixed one key by key, keeping every change under which a
//! replay still reports a violation from the same checker.

use sim::Fault;

use crate::case::Case;
use crate::scenario::run_case;

/// The result of a shrink: the smaller case and how many runs it took.
pub struct Shrunk {
    pub case: Case,
    pub runs: u64,
}

fn fails_with(case: &Case, checker: &str, runs: &mut u64) -> bool {
    *runs += 1;
    run_case(case, false).is_ok_and(|o| o.violations.iter().any(|v| v.checker == checker))
}

/// Shrinks `case`, which must fail with `checker`.
pub fn shrink(case: &Case, checker: &str) -> Result<Shrunk, String> {
    let mut runs = 0;
    if !fails_with(case, checker, &mut runs) {
        return Err(format!("the case does not fail with checker {checker:?}; nothing to shrink"));
    }
    let mut best = case.clone();
    // Drop events, last first (late events are the likeliest to be irrelevant).
    let mut i = best.plan.events.len();
    while i > 0 {
        i -= 1;
        let mut candidate = best.clone();
        candidate.plan.events.remove(i);
        if fails_with(&candidate, checker, &mut runs) {
            best = candidate;
        }
    }
    // Zero background probabilities one at a time.
    for zero in BACKGROUND_ZEROERS {
        let mut candidate = best.clone();
        zero(&mut candidate.plan.background);
        if candidate.plan != best.plan && fails_with(&candidate, checker, &mut runs) {
            best = candidate;
        }
    }
    // Halve windows and restart pauses while it still fails.
    for i in 0..best.plan.events.len() {
        loop {
            let mut candidate = best.clone();
            if !halve_duration(&mut candidate.plan.events[i].fault) || !fails_with(&candidate, checker, &mut runs) {
                break;
            }
            best = candidate;
        }
    }
    // Back toward the fixed configuration: drop one drawn key at a time.
    let mut i = 0;
    loop {
        let candidates = crate::swarm::one_key_fewer(&best.config);
        let Some(config) = candidates.into_iter().nth(i) else { break };
        let mut candidate = best.clone();
        candidate.config = config;
        if fails_with(&candidate, checker, &mut runs) {
            best = candidate;
        } else {
            i += 1;
        }
    }
    best.note = format!("shrunk from {} events in {runs} runs; {}", case.plan.events.len(), case.note);
    Ok(Shrunk { case: best, runs })
}

type Zeroer = fn(&mut sim::Background);

const BACKGROUND_ZEROERS: &[Zeroer] = &[
    |b| b.packet_loss_prob = 0.0,
    |b| b.object_ack_lost_prob = 0.0,
    |b| b.object_error_prob = 0.0,
    |b| b.power_loss_tear_page_prob = 0.0,
];

fn halve_duration(fault: &mut Fault) -> bool {
    let d = match fault {
        Fault::Kill { restart_after_ms, .. }
        | Fault::PowerLoss { restart_after_ms, .. }
        | Fault::CleanShutdown { restart_after_ms, .. } => restart_after_ms,
        Fault::DiskErrors { duration_ms, .. }
        | Fault::DiskFull { duration_ms, .. }
        | Fault::ObjectStoreErrors { duration_ms, .. }
        | Fault::ObjectStoreOutage { duration_ms }
        | Fault::ClockFreeze { duration_ms, .. }
        | Fault::Partition { duration_ms, .. } => duration_ms,
        Fault::BitFlip { .. } | Fault::ClockJump { .. } => return false,
    };
    if *d < 20 {
        return false;
    }
    *d /= 2;
    true
}

/// The case as a ready-to-paste `#[test]` for the scenarios crate's tests: it replays the
/// case, embedded as TOML, and asserts its expected outcome.
pub fn as_test(case: &Case) -> String {
    let toml = case.to_toml();
    let hashes = (1..).map(|n| "#".repeat(n)).find(|h| !toml.contains(&format!("\"{h}"))).unwrap_or_default();
    let checker = case.expect.checker.as_deref();
    let name = format!(
        "{}_seed_{}_{}",
        case.scenario.replace('-', "_"),
        case.seed,
        checker.map_or("passes".to_string(), |c| format!("fails_{}", c.replace('-', "_")))
    );
    let assertion = match (case.expect.outcome, checker) {
        (crate::case::ExpectedOutcome::Fail, Some(c)) => format!(
            "    assert!(\n        outcome.violations.iter().any(|v| v.checker == {c:?}),\n        \
             \"expected a {c} violation, got {{:?}}\",\n        outcome.violations\n    );\n"
        ),
        _ => "    assert!(outcome.violations.is_empty(), \"expected no violation, got {:?}\", outcome.violations);\n"
            .to_string(),
    };
    format!(
        "#[test]\nfn {name}() {{\n    let case = scenarios::Case::parse(\n        r{hashes}\"{toml}\"{hashes},\n        \
         {name:?},\n    )\n    .expect(\"the case parses\");\n    \
         let outcome = scenarios::run_case(&case, false).expect(\"the scenario exists\");\n{assertion}}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{Expectation, ExpectedOutcome, FORMAT_VERSION};

    fn case(note: &str) -> Case {
        Case {
            format_version: FORMAT_VERSION,
            scenario: "disk-log".into(),
            seed: 77,
            note: note.into(),
            bugs: ["ack-before-sync".to_string()].into_iter().collect(),
            config: toml::Table::new(),
            expect: Expectation { outcome: ExpectedOutcome::Fail, checker: Some("durability".into()) },
            plan: sim::FaultPlan::default(),
        }
    }

    /// The TOML between the raw string's delimiters.
    fn embedded(test: &str) -> &str {
        let start = test.find("r#").expect("a raw string");
        let hashes = test[start + 1..].chars().take_while(|&c| c == '#').count();
        let open = start + 1 + hashes + 1;
        let close = test[open..].find(&format!("\"{}", "#".repeat(hashes))).expect("closing delimiter");
        &test[open..open + close]
    }

    #[test]
    fn the_printed_test_embeds_the_case_and_asserts_its_checker() {
        // A note holding `"#` forces a longer raw-string delimiter.
        let case = case(r##"tricky "# note"##);
        let test = as_test(&case);
        assert!(test.starts_with("#[test]\nfn disk_log_seed_77_fails_durability() {\n"), "{test}");
        assert!(test.contains("scenarios::run_case(&case, false)"));
        assert!(test.contains(r#"v.checker == "durability""#));
        assert_eq!(Case::parse(embedded(&test), "x").expect("embedded case parses"), case);
        assert_eq!(test.matches('{').count(), test.matches('}').count(), "{test}");
        assert!(test.ends_with("}\n"));
    }

    #[test]
    fn a_passing_case_prints_a_test_asserting_no_violation() {
        let mut case = case("");
        case.expect = Expectation { outcome: ExpectedOutcome::Pass, checker: None };
        let test = as_test(&case);
        assert!(test.contains("fn disk_log_seed_77_passes()"));
        assert!(test.contains("outcome.violations.is_empty()"));
        assert_eq!(Case::parse(embedded(&test), "x").expect("embedded case parses"), case);
    }
}
