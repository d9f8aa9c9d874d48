//! The runner: one run = (scenario body, seed, options) on a fresh madsim runtime on a fresh
//! OS thread, returning an `Outcome` whatever happens inside.
//!
//! A fresh thread per run is a determinism rule, not a convenience: std's `HashMap` keys are
//! per thread and madsim seeds them on a runtime's first construction in a thread. A panic
//! inside the run (the engine's, a checker's assertion, madsim's deadlock or time-limit
//! detector) is caught and becomes a violation, never a crash of the caller.

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Once};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::Dispatch;

use crate::probes::{ProbeCollector, ProbeHit};
use crate::trace::{Trace, TraceRecord};

/// A broken promise found by a checker (or a panic, a deadlock, a time-out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Violation {
    /// The checker's name (`durability`, `log-prefix`, ...; `no-panic` and `time-limit` are
    /// raised by the runner itself).
    pub checker: String,
    pub message: String,
    /// Simulated milliseconds since the run started.
    pub at_ms: u64,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] at {} ms: {}", self.checker, self.at_ms, self.message)
    }
}

/// Checker name for panics caught by the runner.
pub const NO_PANIC: &str = "no-panic";
/// Checker name for a run that exceeded its simulated time limit or deadlocked.
pub const TIME_LIMIT: &str = "time-limit";
/// Checker name for a run that exceeded its wall-clock limit: a loop that never lets
/// simulated time advance. Its thread cannot be cancelled and is left running; a caller
/// running many seeds should stop (it may be eating memory).
pub const WALL_LIMIT: &str = "wall-limit";

/// What one run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub seed: u64,
    pub violations: Vec<Violation>,
    pub trace_hash: u64,
    pub sim_time_ms: u64,
    pub events: u64,
    pub event_counts: BTreeMap<String, u64>,
    /// Coverage probes reached and how often (empty unless `RunOptions::collect_probes`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probes: BTreeMap<String, u64>,
    #[serde(skip)]
    pub records: Vec<TraceRecord>,
    /// Every probe hit with its time (with `keep_trace` and `collect_probes`).
    #[serde(skip)]
    pub probe_hits: Vec<ProbeHit>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub seed: u64,
    /// Keep every trace record (for replay's timeline); costs memory.
    pub keep_trace: bool,
    /// Collect the coverage probes the run reaches (`dst coverage`, replay's picture).
    pub collect_probes: bool,
    /// Simulated time after which the run is stopped and reported.
    pub time_limit: Duration,
    /// Wall-clock time after which the run is abandoned and reported (see `WALL_LIMIT`).
    pub wall_limit: Duration,
    /// madsim's network configuration (latency, packet loss).
    pub net: madsim::net::Config,
}

impl RunOptions {
    pub fn new(seed: u64) -> RunOptions {
        RunOptions {
            seed,
            keep_trace: false,
            collect_probes: false,
            time_limit: Duration::from_secs(3_600),
            // A broker seed takes ~20 ms in release and well under a second in debug.
            wall_limit: Duration::from_secs(120),
            net: madsim::net::Config::default(),
        }
    }
}

thread_local! {
    /// The last panic on this thread, as the hook saw it (with its location).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

const RUN_THREAD_PREFIX: &str = "sim-run-";

/// Installs a panic hook that keeps panics of run threads off stderr (they are reported as
/// violations) and leaves every other thread's panics to the previous hook. Idempotent.
pub fn install_quiet_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let on_run_thread = std::thread::current().name().is_some_and(|n| n.starts_with(RUN_THREAD_PREFIX));
            if on_run_thread {
                let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
                let message = payload_message(info.payload());
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{message} (at {location})")));
            } else {
                previous(info);
            }
        }));
    });
}

fn payload_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

fn panic_violation(payload: &(dyn Any + Send), at_ms: u64) -> Violation {
    let message = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| payload_message(payload));
    let checker = if message.contains("time limit exceeded") || message.contains("all tasks will block forever") {
        TIME_LIMIT
    } else {
        NO_PANIC
    };
    Violation { checker: checker.to_string(), message, at_ms }
}

/// Runs `body` once under `options`. The body gets the run's trace and returns the
/// violations its checkers found.
pub fn run<F, Fut>(options: RunOptions, body: F) -> Outcome
where
    F: FnOnce(Arc<Trace>) -> Fut + Send + 'static,
    Fut: Future<Output = Vec<Violation>> + 'static,
{
    let (seed, wall_limit) = (options.seed, options.wall_limit);
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("{RUN_THREAD_PREFIX}{seed}"))
        .spawn(move || {
            let _ = tx.send(run_on_this_thread(options, body));
        })
        .expect("spawning a run thread");
    let empty = |violation: Violation| Outcome {
        seed,
        violations: vec![violation],
        trace_hash: 0,
        sim_time_ms: 0,
        events: 0,
        event_counts: BTreeMap::new(),
        probes: BTreeMap::new(),
        records: Vec::new(),
        probe_hits: Vec::new(),
    };
    match rx.recv_timeout(wall_limit) {
        Ok(outcome) => {
            let _ = thread.join();
            outcome
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => empty(Violation {
            checker: WALL_LIMIT.to_string(),
            message: format!(
                "the run did not end within {} s of wall time: a loop that never lets simulated time advance \
                 (its thread is left running)",
                wall_limit.as_secs()
            ),
            at_ms: 0,
        }),
        // `run_on_this_thread` catches the body's panics; reaching here means the runtime
        // itself panicked while being torn down.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(payload) => empty(panic_violation(payload.as_ref(), 0)),
            Ok(()) => empty(Violation {
                checker: NO_PANIC.to_string(),
                message: "the run thread ended without an outcome".to_string(),
                at_ms: 0,
            }),
        },
    }
}

fn run_on_this_thread<F, Fut>(options: RunOptions, body: F) -> Outcome
where
    F: FnOnce(Arc<Trace>) -> Fut,
    Fut: Future<Output = Vec<Violation>>,
{
    let trace = Trace::new(options.keep_trace);
    let config = madsim::Config { net: options.net.clone(), ..madsim::Config::default() };
    let mut runtime = madsim::runtime::Runtime::with_seed_and_config(options.seed, config);
    runtime.set_time_limit(options.time_limit);
    let body_trace = trace.clone();
    let collector = ProbeCollector::new(trace.clone(), options.keep_trace);
    // The run thread is fresh, so the default in force here is the process's global one.
    let probe_guard = options.collect_probes.then(|| {
        tracing::dispatcher::set_default(&collector.dispatch(tracing::dispatcher::get_default(Dispatch::clone)))
    });
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async move {
            body_trace.start_clock();
            body(body_trace).await
        })
    }));
    trace.stop_clock();
    let sim_time_ms = trace.last_time_us() / 1_000;
    let violations = match result {
        Ok(violations) => violations,
        Err(payload) => vec![panic_violation(payload.as_ref(), sim_time_ms)],
    };
    // Dropping a runtime whose tasks panicked can panic again; the outcome is already known.
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(runtime)));
    drop(probe_guard);
    let probes = collector.take();
    for v in &violations {
        crate::trace!(trace, "runner", "violation", "{v}");
    }
    Outcome {
        seed: options.seed,
        violations,
        trace_hash: trace.hash(),
        sim_time_ms,
        events: trace.len(),
        event_counts: trace.counts(),
        probes: probes.counts,
        records: trace.records(),
        probe_hits: probes.hits,
    }
}

/// Runs `make()`'s future on a fresh madsim runtime on a fresh OS thread (the determinism
/// rule), re-raising any panic in the caller: the building block for tests that need a
/// simulation but not a whole `run` (proptest must see the panic to shrink).
pub fn block_on<T, F>(seed: u64, make: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: Future<Output = T> + 'static,
{
    let joined = std::thread::spawn(move || {
        let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        runtime.block_on(make())
    })
    .join();
    joined.unwrap_or_else(|panic| panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleepy(trace: Arc<Trace>) -> impl Future<Output = Vec<Violation>> {
        async move {
            for i in 0..5u64 {
                let ms = madsim::rand::random::<u64>() % 100;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                crate::trace!(trace, "n", "tick", "i={i} ms={ms}");
            }
            Vec::new()
        }
    }

    #[test]
    fn same_seed_same_hash_different_seed_different_hash() {
        let a = run(RunOptions::new(1), sleepy);
        let b = run(RunOptions::new(1), sleepy);
        let c = run(RunOptions::new(2), sleepy);
        assert!(a.passed());
        assert_eq!(a.trace_hash, b.trace_hash);
        assert_ne!(a.trace_hash, c.trace_hash);
        assert!(a.sim_time_ms > 0);
    }

    #[test]
    fn a_panic_inside_the_run_is_a_violation_not_a_crash() {
        install_quiet_panic_hook();
        let outcome = run(RunOptions::new(3), |_trace| async {
            tokio::spawn(async { panic!("engine exploded") }).await.ok();
            Vec::new()
        });
        assert_eq!(outcome.violations.len(), 1, "{:?}", outcome.violations);
        assert_eq!(outcome.violations[0].checker, NO_PANIC);
        assert!(outcome.violations[0].message.contains("engine exploded"));
    }

    #[test]
    fn exceeding_the_time_limit_is_a_violation() {
        install_quiet_panic_hook();
        let mut options = RunOptions::new(4);
        options.time_limit = Duration::from_secs(10);
        let outcome = run(options, |_trace| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Vec::new()
        });
        assert_eq!(outcome.violations.len(), 1);
        assert_eq!(outcome.violations[0].checker, TIME_LIMIT, "{:?}", outcome.violations);
    }

    #[test]
    fn a_run_that_never_lets_simulated_time_advance_is_abandoned_at_the_wall_limit() {
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let mut options = RunOptions::new(5);
        options.wall_limit = Duration::from_millis(200);
        // Blocks the run's only thread outside the simulation, as a runaway loop would.
        let outcome = run(options, move |_trace| async move {
            let _ = stuck.recv();
            Vec::new()
        });
        let _ = release.send(());
        assert_eq!(outcome.violations.len(), 1);
        assert_eq!(outcome.violations[0].checker, WALL_LIMIT, "{:?}", outcome.violations);
    }
}
