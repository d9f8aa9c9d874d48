//! `dst`: the deterministic simulation testbed's command line.
//!
//!   dst explore   run many seeds, print a summary, save failures as case files
//!   dst replay    re-run one case (or seed) with its full timeline; check the trace hash;
//!                 `--html FILE` draws the run as a page
//!   dst shrink    the smallest fault plan that still fails the same way, and a `#[test]` of it
//!   dst zoo       every catalogued bug: seeds and time until a checker catches it
//!   dst crash-states  every legal disk image at a case's crash points, recovered and checked
//!   dst coverage  which coverage probes a sweep of seeds reached, and which it never did
//!   dst merge     one summary from the `--json` reports of a sweep's shards
//!   dst list      scenarios, checkers and bugs

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use scenarios::coverage::CoverageReport;
use scenarios::explore::{explore, Budget, ExploreOptions, ExploreReport, SeedResult, Shard};
use scenarios::scenario::{drawn_case, run_case_observed, Observe, DEFAULT_SCENARIO};
use scenarios::{find_scenario, run_case, Case, ExpectedOutcome, SCENARIOS};

#[derive(Parser)]
#[command(name = "dst", version, about = "Deterministic simulation testing of a RocketMQ-style message store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run many seeds (all cores), print a summary, save each failure as a case file.
    Explore(ExploreArgs),
    /// Re-run one case: its event timeline, its violations, and a determinism check.
    Replay(ReplayArgs),
    /// Shrink a failing case to the smallest fault plan that still fails the same way.
    Shrink(ShrinkArgs),
    /// For every catalogued bug: seeds and time until caught, by which checker, and whether
    /// its witness case passes with the bug off.
    Zoo(ZooArgs),
    /// At each crash point of a case (or of many generated cases), try every legal disk image
    /// a power loss may leave (sampled above --max-states), recover it and run the checkers;
    /// write the first failing state as a case file.
    CrashStates(CrashStatesArgs),
    /// Run many seeds and report which coverage probes (fault kinds, recovery branches,
    /// handled failures) they reached, in how many runs, and which no run reached.
    Coverage(CoverageArgs),
    /// Merge the `explore --json` reports of a sweep's shards into one summary.
    Merge(MergeArgs),
    /// List scenarios, their checkers, and the bug catalogue.
    List,
}

#[derive(Args)]
struct ExploreArgs {
    /// Scenario to run.
    #[arg(long, default_value = DEFAULT_SCENARIO)]
    scenario: String,
    /// Number of seeds (of the whole range; a shard runs its share).
    #[arg(long, conflicts_with = "time")]
    seeds: Option<u64>,
    /// Run for this many wall-clock seconds instead of a number of seeds.
    #[arg(long)]
    time: Option<f64>,
    #[command(flatten)]
    sweep: SweepArgs,
    /// Run only shard k of n of the seed range, e.g. 3/8.
    #[arg(long, default_value = "1/1")]
    shard: String,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Where failing cases are written.
    #[arg(long, default_value = "target/dst-cases")]
    save_dir: PathBuf,
}

/// The seed range's start, the bugs switched on and the parallelism of a sweep.
#[derive(Args)]
struct SweepArgs {
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    start_seed: u64,
    /// Switch a catalogued bug back on (repeatable).
    #[arg(long = "bug")]
    bugs: Vec<String>,
    /// Parallel runs (default: all cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Run the scenario's fixed configuration; by default each seed also draws the store's
    /// sizes and intervals, the disk, the workload and chained fault sequences (the swarm).
    #[arg(long)]
    fixed_config: bool,
}

#[derive(Args)]
struct ReplayArgs {
    /// A case file (TOML).
    case: Option<PathBuf>,
    /// Replay the plan explore would draw for this seed, instead of a case file.
    #[arg(long, conflicts_with = "case")]
    seed: Option<u64>,
    #[arg(long, default_value = DEFAULT_SCENARIO)]
    scenario: String,
    #[arg(long = "bug")]
    bugs: Vec<String>,
    /// With --seed: the scenario's fixed configuration instead of the one the seed draws.
    #[arg(long, requires = "seed")]
    fixed_config: bool,
    /// Do not print the event timeline.
    #[arg(long)]
    quiet: bool,
    /// Write the case as replayed, expecting the outcome this run had (e.g. to keep a seed
    /// as a regression case in `seeds/` once its bug is fixed).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write a picture of the run to FILE: one self-contained HTML page, a lane per node,
    /// every event and fault window on the simulated time axis, the violation marked.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

#[derive(Args)]
struct ShrinkArgs {
    /// The failing case file.
    case: PathBuf,
    /// Where to write the shrunk case (default: next to it, `.shrunk.toml`).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct CoverageArgs {
    #[arg(long, default_value = DEFAULT_SCENARIO)]
    scenario: String,
    /// Number of seeds, from --start-seed.
    #[arg(long, default_value_t = 2_000)]
    seeds: u64,
    #[command(flatten)]
    sweep: SweepArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CrashStatesArgs {
    /// A case file (TOML) whose crash points to enumerate.
    case: Option<PathBuf>,
    /// Instead of a case file: sweep the cases explore draws for this many seeds.
    #[arg(long, conflicts_with = "case")]
    seeds: Option<u64>,
    #[arg(long, default_value = DEFAULT_SCENARIO)]
    scenario: String,
    #[command(flatten)]
    sweep: SweepArgs,
    /// Enumerate only the first N crash points (default: all).
    #[arg(long)]
    points: Option<usize>,
    /// Crash points at N sync boundaries of the run (evenly spaced before its first crash)
    /// instead of at the plan's crash events.
    #[arg(long)]
    at_syncs: Option<usize>,
    /// Try every image of a point with at most this many, else this many sampled from the seed.
    #[arg(long, default_value_t = 64)]
    max_states: u64,
    /// Where the first failing state is written.
    #[arg(long, default_value = "target/dst-cases")]
    save_dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct MergeArgs {
    /// The shards' reports (`dst explore --shard k/n --json > FILE`).
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Print the merged summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ZooArgs {
    #[arg(long, default_value = DEFAULT_SCENARIO)]
    scenario: String,
    /// Give up on a bug after this many seeds.
    #[arg(long, default_value_t = 500)]
    max_seeds: u64,
    /// Only this bug (repeatable).
    #[arg(long = "bug")]
    bugs: Vec<String>,
    #[arg(long)]
    jobs: Option<usize>,
    /// Hunt with the scenario's fixed configuration instead of the swarm's.
    #[arg(long)]
    fixed_config: bool,
    /// Write each bug's witness case to DIR/<scenario>-<bug>.toml (e.g. `seeds`).
    #[arg(long)]
    save_to: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    sim::install_quiet_panic_hook();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Explore(args) => cmd_explore(args),
        Command::Replay(args) => cmd_replay(args),
        Command::Shrink(args) => cmd_shrink(args),
        Command::Zoo(args) => cmd_zoo(args),
        Command::CrashStates(args) => cmd_crash_states(args),
        Command::Coverage(args) => cmd_coverage(args),
        Command::Merge(args) => cmd_merge(args),
        Command::List => cmd_list(),
    }
}

fn scenario(name: &str) -> Result<&'static scenarios::Scenario> {
    let known: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
    find_scenario(name).with_context(|| format!("unknown scenario {name:?}; known: {}", known.join(", ")))
}

fn check_bugs(scenario: &scenarios::Scenario, bugs: &[String]) -> Result<BTreeSet<String>> {
    scenarios::scenario::check_bugs(scenario, bugs).map_err(|e| anyhow::anyhow!("{e} (see `dst list`)"))
}

fn jobs(requested: Option<usize>) -> Result<usize> {
    let jobs = requested.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    Ok(jobs)
}

fn cmd_explore(args: ExploreArgs) -> Result<ExitCode> {
    let scenario = scenario(&args.scenario)?;
    let bugs = check_bugs(scenario, &args.sweep.bugs)?;
    let shard = Shard::parse(&args.shard).map_err(anyhow::Error::msg)?;
    let budget = match (args.seeds, args.time) {
        (_, Some(t)) if !(t > 0.0 && t.is_finite()) => bail!("--time must be a positive number of seconds"),
        (_, Some(t)) => Budget::Time(Duration::from_secs_f64(t)),
        (Some(n), None) => Budget::Seeds(n),
        (None, None) => Budget::Seeds(1_000),
    };
    let jobs = jobs(args.sweep.jobs)?;
    let opts = ExploreOptions {
        scenario,
        budget,
        start_seed: args.sweep.start_seed,
        bugs,
        jobs,
        shard,
        save_dir: Some(args.save_dir),
        stop_at_first_failure: false,
        collect_probes: false,
        fixed_config: args.sweep.fixed_config,
    };
    let bar = progress_bar(&opts);
    let report = explore(&opts, &|r| {
        bar.inc(1);
        if !r.passed {
            bar.println(format!("seed {} failed: {}", r.seed, r.violations[0]));
        }
    });
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, jobs, opts.fixed_config);
    }
    Ok(if report.failed_runs == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn progress_bar(opts: &ExploreOptions) -> ProgressBar {
    let bar = match opts.budget {
        Budget::Seeds(n) => ProgressBar::new(opts.shard.share_of(n)),
        Budget::Time(_) => ProgressBar::new_spinner(),
    };
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} seeds ({per_sec})")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn print_scenario(scenario: &str, bugs: &BTreeSet<String>) {
    println!("scenario      {scenario}");
    if !bugs.is_empty() {
        println!("bugs on       {}", bugs.iter().cloned().collect::<Vec<_>>().join(", "));
    }
}

fn print_violations<'a>(by_checker: &BTreeMap<String, u64>, failures: impl Iterator<Item = &'a SeedResult>) {
    if by_checker.is_empty() {
        println!("violations    none");
        return;
    }
    println!("violations by checker:");
    for (checker, n) in by_checker {
        println!("  {checker:<20} {n}");
    }
    println!("failing seeds (replay with `cargo dst replay <case>`):");
    for r in failures.take(20) {
        println!("  seed {:<8} {}  {}", r.seed, r.case_file.as_deref().unwrap_or("-"), r.violations[0]);
    }
}

fn print_report(report: &ExploreReport, jobs: usize, fixed_config: bool) {
    print_scenario(&report.scenario, &report.bugs);
    println!("config        {}", if fixed_config { "fixed (--fixed-config)" } else { "drawn from each seed (swarm)" });
    println!("shard         {}/{}", report.shard.index, report.shard.count);
    println!("runs          {}", report.runs);
    println!("failed runs   {}", report.failed_runs);
    println!("wall time     {:.2} s on {jobs} jobs", report.wall_seconds);
    println!("seeds/s       {:.1}", report.seeds_per_second);
    println!("sim s/wall s  {:.0}", report.simulated_seconds_per_wall_second);
    println!("events        {}", report.events);
    print_violations(&report.violations_by_checker, report.failures());
}

fn cmd_crash_states(args: CrashStatesArgs) -> Result<ExitCode> {
    use scenarios::crash_states::{crash_states, crash_sweep, CrashStateOptions};
    let jobs = jobs(args.sweep.jobs)?;
    if args.max_states == 0 {
        bail!("--max-states must be at least 1");
    }
    let opts = CrashStateOptions {
        points: args.points,
        at_syncs: args.at_syncs,
        max_states: args.max_states,
        jobs,
        save_dir: Some(args.save_dir),
    };
    let bar = ProgressBar::new_spinner();
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Some(seeds) = args.seeds {
        let scenario = scenario(&args.scenario)?;
        let bugs = check_bugs(scenario, &args.sweep.bugs)?;
        let report = crash_sweep(scenario, args.sweep.start_seed, seeds, &bugs, &opts, &|r| {
            bar.inc(1);
            if let Some(f) = r.failing().and_then(|p| p.failing.as_ref()) {
                bar.println(format!("seed {} failed: {}", r.seed, f.violation));
            }
        })
        .map_err(anyhow::Error::msg)?;
        bar.finish_and_clear();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_scenario(&report.scenario, &report.bugs);
            println!("seeds         {} ({} with a crash point)", report.seeds, report.seeds_with_points);
            println!("crash points  {} ({} enumerated exhaustively)", report.points, report.exhaustive_points);
            let [lo, mid, hi] = &report.legal_states_min_median_max;
            println!("legal states  per point: min {lo}, median {mid}, max {hi}");
            println!("states        {} checked", report.states_checked);
            println!("wall time     {:.2} s on {jobs} jobs", report.wall_seconds);
            println!("states/s      {:.1}", report.states_per_second);
            println!("failed seeds  {}", report.failures.len());
            for (seed, f) in report.failures.iter().take(20) {
                println!("  seed {seed:<8} {}  {}", f.case_file.as_deref().unwrap_or("-"), f.violation);
            }
        }
        return Ok(if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let Some(path) = args.case else { bail!("crash-states needs a case file or --seeds N") };
    let case = Case::load(&path)?;
    scenario(&case.scenario)?;
    let report = crash_states(&case, &opts, &|| bar.inc(1)).map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("case          {} (scenario {}, seed {})", path.display(), report.scenario, report.seed);
        println!(
            "{:>5} {:>6} {:>8} {:<10} {:>12} {:>8}  verdict",
            "point", "event", "at_ms", "node", "legal", "checked"
        );
        for p in &report.points {
            let verdict = match (&p.failing, p.legal) {
                (Some(f), _) => format!("FAIL at image {}: {}", f.image, f.violation),
                (None, None) => "not reached (node down)".to_string(),
                (None, Some(_)) if p.exhaustive => "pass (all images)".to_string(),
                (None, Some(_)) => "pass (sampled)".to_string(),
            };
            println!(
                "{:>5} {:>6} {:>8} {:<10} {:>12} {:>8}  {verdict}",
                p.point, p.event, p.at_ms, p.node, p.legal_states, p.checked
            );
        }
        println!(
            "states        {} checked in {:.2} s ({:.1}/s)",
            report.states_checked,
            report.wall_seconds,
            report.states_checked as f64 / report.wall_seconds.max(1e-9)
        );
        if let Some(f) = report.failing().and_then(|p| p.failing.as_ref()) {
            println!("failing state {} (replay with `cargo dst replay <case>`)", f.case_file.as_deref().unwrap_or("-"));
        }
    }
    Ok(if report.failing().is_none() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn load_replay_case(args: &ReplayArgs) -> Result<Case> {
    match (&args.case, args.seed) {
        (Some(path), _) => Ok(Case::load(path)?),
        (None, Some(seed)) => {
            let scenario = scenario(&args.scenario)?;
            let bugs = check_bugs(scenario, &args.bugs)?;
            Ok(drawn_case(scenario, seed, &bugs, !args.fixed_config))
        }
        (None, None) => bail!("replay needs a case file or --seed N"),
    }
}

fn cmd_replay(args: ReplayArgs) -> Result<ExitCode> {
    let case = load_replay_case(&args)?;
    if !args.quiet {
        // The engine's own warnings and errors (a dispatch failure, a skipped corrupt record)
        // go to stderr as they happen; `RUST_LOG` widens or narrows them.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .without_time()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
    }
    scenario(&case.scenario)?;
    let observe = Observe { keep_trace: !args.quiet || args.html.is_some(), collect_probes: args.html.is_some() };
    let first = run_case_observed(&case, observe).map_err(anyhow::Error::msg)?;
    if !args.quiet {
        println!("timeline ({} events):", first.events);
        for record in &first.records {
            println!("  {record}");
        }
    }
    println!("scenario      {}  seed {}", case.scenario, case.seed);
    print_config(&case.config);
    println!("simulated     {:.3} s, {} events", first.sim_time_ms as f64 / 1_000.0, first.events);
    if first.violations.is_empty() {
        println!("violations    none");
    }
    for v in &first.violations {
        println!("violation     {v}");
    }
    println!("trace hash    {:016x}", first.trace_hash);
    if let Some(path) = &args.html {
        let started = Instant::now();
        let page = scenarios::timeline::render_html(&case, &first);
        std::fs::write(path, &page).with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "picture       {} ({} bytes, {} lanes, {} trace records, written in {:.1} ms)",
            path.display(),
            page.len(),
            page.matches(r#"class="lane""#).count(),
            first.records.len(),
            started.elapsed().as_secs_f64() * 1_000.0
        );
    }
    let second = run_case(&case, false).map_err(anyhow::Error::msg)?;
    let deterministic = second.trace_hash == first.trace_hash;
    println!(
        "second run    {:016x} ({})",
        second.trace_hash,
        if deterministic { "identical: deterministic" } else { "DIFFERENT: nondeterminism" }
    );
    let expected = match case.expect.outcome {
        ExpectedOutcome::Pass => first.violations.is_empty(),
        ExpectedOutcome::Fail => first.violations.iter().any(|v| Some(&v.checker) == case.expect.checker.as_ref()),
    };
    println!(
        "expected      {:?}{}",
        case.expect.outcome,
        if expected { " (as expected)" } else { " (NOT as expected)" }
    );
    if let Some(path) = &args.save {
        let mut saved = case.clone();
        saved.expect.checker = first.violations.first().map(|v| v.checker.clone());
        saved.expect.outcome = if first.violations.is_empty() { ExpectedOutcome::Pass } else { ExpectedOutcome::Fail };
        saved.save(path)?;
        println!("saved         {} (expects {:?})", path.display(), saved.expect.outcome);
        return Ok(if deterministic { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    Ok(if deterministic && expected { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The case's configuration: drawn by the swarm, or the scenario's fixed one.
fn print_config(config: &toml::Table) {
    let lines = scenarios::swarm::describe(config);
    if lines.is_empty() {
        println!("config        fixed (the scenario's own)");
    }
    for line in lines {
        println!("config        {line}");
    }
}

fn cmd_shrink(args: ShrinkArgs) -> Result<ExitCode> {
    let case = Case::load(&args.case)?;
    scenario(&case.scenario)?;
    let checker = match &case.expect.checker {
        Some(c) => c.clone(),
        None => {
            let outcome = run_case(&case, false).map_err(anyhow::Error::msg)?;
            match outcome.violations.first() {
                Some(v) => v.checker.clone(),
                None => bail!("the case passes; there is nothing to shrink"),
            }
        }
    };
    let shrunk = scenarios::shrink::shrink(&case, &checker).map_err(anyhow::Error::msg)?;
    let out = args.out.unwrap_or_else(|| args.case.with_extension("shrunk.toml"));
    let mut shrunk_case = shrunk.case;
    shrunk_case.expect.checker = Some(checker);
    shrunk_case.expect.outcome = ExpectedOutcome::Fail;
    shrunk_case.save(&out)?;
    println!(
        "shrunk {} -> {} events, {} -> {} configuration keys in {} runs; written to {}",
        case.plan.events.len(),
        shrunk_case.plan.events.len(),
        scenarios::swarm::key_count(&case.config),
        scenarios::swarm::key_count(&shrunk_case.config),
        shrunk.runs,
        out.display()
    );
    println!("\nas a test (paste into a file under scenarios/tests/):\n");
    print!("{}", scenarios::shrink::as_test(&shrunk_case));
    Ok(ExitCode::SUCCESS)
}

fn cmd_list() -> Result<ExitCode> {
    println!("scenarios:");
    for s in SCENARIOS {
        println!("  {:<12} {}", s.name, s.description.split_whitespace().collect::<Vec<_>>().join(" "));
        println!("  {:<12} checkers: {}", "", s.checkers.join(", "));
    }
    println!("bugs (switch one on with --bug ID):");
    for bug in engine::Bug::ALL {
        let info = bug.info();
        let scenarios: Vec<&str> = SCENARIOS.iter().filter(|s| (s.bugs)().contains(&info.id)).map(|s| s.name).collect();
        println!("  {:<30} {:<6} caught by {:<17} {}", info.id, info.origin, info.checker, info.description);
        println!("  {:<30} {:<6} in scenarios: {}", "", "", scenarios.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_zoo(args: ZooArgs) -> Result<ExitCode> {
    let scenario = scenario(&args.scenario)?;
    let only = check_bugs(scenario, &args.bugs)?;
    if args.max_seeds == 0 {
        bail!("--max-seeds must be at least 1");
    }
    let opts = scenarios::zoo::ZooOptions {
        scenario,
        max_seeds: args.max_seeds,
        jobs: jobs(args.jobs)?,
        save_dir: args.save_to.as_deref(),
        only,
        fixed_config: args.fixed_config,
    };
    if !args.json {
        println!(
            "{:<30} {:>7} {:>7} {:>8}  {:<17} {:<9} {}",
            "bug", "origin", "seeds", "seconds", "caught by", "expected", "passes w/o bug"
        );
    }
    let entries = scenarios::zoo::zoo(&opts, &|e| {
        if !args.json {
            println!(
                "{:<30} {:>7} {:>7} {:>8.2}  {:<17} {:<9} {}",
                e.bug,
                e.origin,
                if e.caught() { e.seeds_to_catch.to_string() } else { format!(">{}", e.seeds_to_catch) },
                e.wall_seconds,
                e.checker.as_deref().unwrap_or("NOT CAUGHT"),
                if e.expected_checker_fired { "yes" } else { "no" },
                match e.passes_with_bug_off {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "-",
                },
            );
        }
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    }
    let all_good = entries.iter().all(|e| e.caught() && e.passes_with_bug_off == Some(true));
    Ok(if all_good { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn cmd_coverage(args: CoverageArgs) -> Result<ExitCode> {
    let scenario = scenario(&args.scenario)?;
    let bugs = check_bugs(scenario, &args.sweep.bugs)?;
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let opts = ExploreOptions {
        scenario,
        budget: Budget::Seeds(args.seeds),
        start_seed: args.sweep.start_seed,
        bugs,
        jobs: jobs(args.sweep.jobs)?,
        shard: Shard::WHOLE,
        save_dir: None,
        stop_at_first_failure: false,
        collect_probes: true,
        fixed_config: args.sweep.fixed_config,
    };
    let bar = progress_bar(&opts);
    let report = explore(&opts, &|_| bar.inc(1));
    bar.finish_and_clear();
    let coverage = CoverageReport::of(&report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&coverage)?);
        return Ok(ExitCode::SUCCESS);
    }
    let meanings: BTreeMap<&str, &str> =
        scenarios::coverage::catalogue().into_iter().map(|p| (p.name, p.meaning)).collect();
    println!("{:<38} {:>7} {:>9}  meaning", "probe", "runs", "hits");
    for p in &coverage.probes {
        let meaning = meanings.get(p.name.as_str()).copied().unwrap_or("(not in coverage/probes.txt)");
        println!("{:<38} {:>7} {:>9}  {meaning}", p.name, p.runs, p.hits);
    }
    let never = coverage.never_hit();
    println!();
    println!(
        "{} seeds of {} in {:.1} s: {} of {} probes hit",
        report.runs,
        coverage.scenario,
        report.wall_seconds,
        coverage.hit_count(),
        coverage.probes.len()
    );
    println!("never hit ({}): {}", never.len(), if never.is_empty() { "-".to_string() } else { never.join(", ") });
    let missing = coverage.missing_must_reach();
    if !missing.is_empty() {
        println!("must-reach probes not reached: {}", missing.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_merge(args: MergeArgs) -> Result<ExitCode> {
    let mut reports = Vec::new();
    for path in &args.reports {
        reports.push((path.display().to_string(), scenarios::merge::load(path)?));
    }
    let merged = scenarios::merge::merge(&reports)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&merged)?);
    } else {
        print_scenario(&merged.scenario, &merged.bugs);
        let shards: Vec<String> = merged.shards.iter().map(|s| format!("{}/{}", s.index, s.count)).collect();
        println!("shards        {} ({})", merged.shards.len(), shards.join(", "));
        println!("runs          {}", merged.runs);
        println!("failed runs   {}", merged.failed_runs);
        println!("wall time     {:.2} s (longest shard)", merged.wall_seconds);
        println!("seeds/s       {:.1} (all shards)", merged.seeds_per_second);
        println!("events        {}", merged.events);
        print_violations(&merged.violations_by_checker, merged.failures.iter());
    }
    Ok(if merged.failed_runs == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
