//! Shrinking: the smallest fault plan that still fails the same way. Greedy and deterministic:
//! drop whole events, then zero background probabilities, then shorten windows, keeping every
//! change under which a replay still reports a violation from the same checker.

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
        | Fault::Partition { duration_ms, .. } => duration_ms,
        Fault::BitFlip { .. } | Fault::ClockJump { .. } => return false,
    };
    if *d < 20 {
        return false;
    }
    *d /= 2;
    true
}
