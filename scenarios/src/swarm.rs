//! Swarm testing of the configuration: store sizes, intervals and alignments, the simulated
//! disk, the tiered store's segments and the broker clients' workload drawn from the seed
//! (FoundationDB randomizes its knobs in simulation; TigerBeetle's VOPR draws its cluster per
//! seed). A fixed configuration makes whole classes of states unreachable however many seeds
//! run: with one consume-queue file size a 20-byte unit meets a sector boundary in only a few
//! places, so a torn write can cut a unit only there.
//!
//! The draw is a TOML table, written into the case's `config` so that a replay is exact and
//! `shrink` can move it back toward the scenario's fixed settings one key at a time. An empty
//! table is the fixed configuration (every case saved before the swarm). Its keys:
//! - `profile`: which profile the sizes were drawn from (informational);
//! - `[store]`: `StoreConfig` fields set over the scenario's own;
//! - `[disk]`: `DiskConfig` fields (sector size, sync latency);
//! - `[tiered]`: `TieredConfig` fields set over the scenario's own;
//! - `[workload]`: `Workload` knobs of the broker and tiered scenarios' clients.
//!
//! The draw and the chained fault sequences use a stream of their own, so the fault plan a
//! seed draws (`FaultPlan::generate`) does not move.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sim::disk::{DiskConfig, LatencyProfile};
use sim::fault_plan::{draw_chains, PlanSpace};
use sim::FaultPlan;

pub const PROFILE: &str = "profile";
pub const STORE: &str = "store";
pub const DISK: &str = "disk";
pub const TIERED: &str = "tiered";
pub const WORKLOAD: &str = "workload";
/// The top-level keys a case's `config` may hold (`flush_mode` predates the swarm).
const KEYS: [&str; 6] = ["flush_mode", PROFILE, STORE, DISK, TIERED, WORKLOAD];
/// `StoreConfig` fields the scenario owns: the swarm never sets them.
const STORE_FIXED: [&str; 4] = ["root_dir", "bugs", "flush_mode", "file_retention_ms"];
const TIERED_FIXED: [&str; 1] = ["key_prefix"];

/// The swarm's own stream of the seed.
const SWARM_SALT: u64 = 0x5a4a_12c0_4f16_0000;
/// Chained fault sequences are drawn in this share of the runs.
const CHAIN_PROB: f64 = 0.35;

/// The broker clients' knobs. Unset: the fixed workload (no extra random draws, so a case
/// without them runs exactly as before).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Topics written (1..=`broker::workload::TOPIC_NAMES.len()`; fixed: 3).
    pub topics: Option<usize>,
    /// Queues per topic (fixed: 4).
    pub queues_per_topic: Option<u32>,
    /// Largest batch a producer sends (fixed: 4).
    pub max_batch: Option<u32>,
    /// A batch follows the previous one at once (a burst).
    pub burst_prob: Option<f64>,
    /// A producer pauses for `idle_ms` before its next batch.
    pub idle_prob: Option<f64>,
    pub idle_ms: Option<u64>,
    /// A message gets a body of uniform size up to `body_max_bytes` (from a bare header, so
    /// tiny to near a commit-log file's size) instead of the usual 44–243 bytes.
    pub sized_body_prob: Option<f64>,
    pub body_max_bytes: Option<u64>,
    /// A keyed message takes one of `key_pool` shared keys instead of its own.
    pub key_reuse_prob: Option<f64>,
    pub key_pool: Option<u64>,
}

impl Workload {
    pub fn topics_or(&self, fixed: usize) -> usize {
        self.topics.unwrap_or(fixed)
    }
}

/// A scenario's configuration with the case's `config` applied.
#[derive(Debug, Clone)]
pub struct Applied {
    pub store: engine::StoreConfig,
    pub disk: DiskConfig,
    pub workload: Workload,
}

/// Applies `config` over the scenario's fixed store settings; `extra` names the further
/// sections the scenario reads itself (with `section`). A typed message for anything unknown
/// or out of range.
pub fn apply(config: &toml::Table, store: &engine::StoreConfig, extra: &[&str]) -> Result<Applied, String> {
    if let Some(k) =
        config.keys().find(|k| !KEYS.contains(&k.as_str()) || (is_extra(k) && !extra.contains(&k.as_str())))
    {
        return Err(format!("config.{k} is not a configuration key of this scenario"));
    }
    let store: engine::StoreConfig = section(config, STORE, store)?;
    store.validate().map_err(|e| format!("config.store: {e}"))?;
    let disk: DiskConfig = section(config, DISK, &DiskConfig::default())?;
    disk.validate().map_err(|e| format!("config.disk: {e}"))?;
    let workload = match config.get(WORKLOAD) {
        Some(v) => v.clone().try_into::<Workload>().map_err(|e| format!("config.workload: {e}"))?,
        None => Workload::default(),
    };
    Ok(Applied { store, disk, workload })
}

/// Sections only some scenarios read.
fn is_extra(key: &str) -> bool {
    key == TIERED
}

/// `base` with the fields `config.<section>` sets. A field the type does not have is an
/// error (serde would drop it silently), as is one the scenario owns.
pub fn section<T: Serialize + DeserializeOwned>(config: &toml::Table, section: &str, base: &T) -> Result<T, String> {
    let fixed: &[&str] = match section {
        STORE => &STORE_FIXED,
        TIERED => &TIERED_FIXED,
        _ => &[],
    };
    let err = |m: String| format!("config.{section}: {m}");
    let mut table = toml::Table::try_from(base).map_err(|e| err(e.to_string()))?;
    let over = match config.get(section) {
        None => return table.try_into().map_err(|e: toml::de::Error| err(e.to_string())),
        Some(v) => v.as_table().ok_or_else(|| err("must be a table".into()))?,
    };
    for (k, v) in over {
        if fixed.contains(&k.as_str()) {
            return Err(err(format!("{k} is the scenario's own and cannot be set")));
        }
        table.insert(k.clone(), v.clone());
    }
    let out: T = table.try_into().map_err(|e: toml::de::Error| err(e.to_string()))?;
    let back = toml::Table::try_from(&out).map_err(|e| err(e.to_string()))?;
    if let Some(k) = over.keys().find(|k| !back.contains_key(*k)) {
        return Err(err(format!("unknown field {k:?}")));
    }
    Ok(out)
}

/// The configuration `scenario` draws for `seed` (empty for a scenario without a swarm).
pub fn draw(scenario: &str, seed: u64) -> toml::Table {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ SWARM_SALT);
    match scenario {
        "broker" => draw_broker(&mut rng),
        "tiered" => draw_tiered(&mut rng),
        "dledger" => draw_dledger(&mut rng),
        "disk-log" => draw_disk_log(&mut rng),
        _ => toml::Table::new(),
    }
}

/// The chained fault sequences drawn for `seed`, merged into `plan` (its own events keep
/// their times; the plan stays in time order).
pub fn add_chains(plan: &mut FaultPlan, seed: u64, space: &PlanSpace) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ SWARM_SALT ^ 0xc4a1);
    if !rng.gen_bool(CHAIN_PROB) {
        return;
    }
    let count = rng.gen_range(1..=2);
    plan.events.extend(draw_chains(&mut rng, space, count));
    plan.events.sort_by_key(|e| e.at_ms);
}

/// Where the sizes come from. Drawn first; each profile then draws its knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// Around the scenario's fixed sizes, at other alignments.
    Near,
    /// RocketMQ's default ratios (1 GiB commit-log files, 300,000 consume-queue units, 5 M
    /// index slots, 20 M items; its intervals) scaled down together.
    Production,
    /// Files of a few messages, consume-queue files of a few units, index files of a few items.
    Tiny,
    /// Messages up to a commit-log file's size.
    HugeMessages,
    /// Every knob on its own, over wide ranges.
    Wide,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Near => "near",
            Profile::Production => "production",
            Profile::Tiny => "tiny",
            Profile::HugeMessages => "huge-messages",
            Profile::Wide => "wide",
        }
    }

    fn draw(rng: &mut ChaCha8Rng) -> Profile {
        match rng.gen_range(0..100) {
            0..30 => Profile::Near,
            30..55 => Profile::Production,
            55..70 => Profile::Tiny,
            70..85 => Profile::HugeMessages,
            _ => Profile::Wide,
        }
    }
}

/// A probability in `[lo, hi)`, rounded to 4 decimals (exact through TOML).
fn prob(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    (rng.gen_range(lo..hi) * 10_000.0).floor() / 10_000.0
}

fn int(v: u64) -> toml::Value {
    toml::Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Commit-log file sizes in `[lo, hi]`: half of them powers of two, the others any multiple
/// of 512 (files that start off a page boundary).
fn file_size(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    if rng.gen_bool(0.5) {
        let (a, b) = (lo.next_power_of_two().trailing_zeros(), hi.ilog2());
        if a <= b {
            return 1 << rng.gen_range(a..=b);
        }
    }
    rng.gen_range(lo / 512..=hi / 512).max(1) * 512
}

/// Flush, commit and group-commit intervals; the checkpoint is written by the thorough
/// consume-queue flush, so `flush_cq_thorough_interval_ms` is its timing.
fn intervals(rng: &mut ChaCha8Rng, profile: Profile, t: &mut toml::Table) {
    let (flush_cl, commit, flush_cq, thorough_cl, thorough_cq) = match profile {
        Profile::Production => (500, 200, 1_000, 10_000, 60_000),
        Profile::Tiny => (rng.gen_range(1..=50), rng.gen_range(1..=20), rng.gen_range(1..=100), 100, 200),
        Profile::Wide => (
            rng.gen_range(1..=2_000),
            rng.gen_range(1..=1_000),
            rng.gen_range(1..=3_000),
            rng.gen_range(1..=20_000),
            rng.gen_range(1..=60_000),
        ),
        Profile::Near | Profile::HugeMessages => (
            rng.gen_range(10..=200),
            rng.gen_range(5..=80),
            rng.gen_range(20..=400),
            rng.gen_range(100..=2_000),
            rng.gen_range(200..=4_000),
        ),
    };
    let production = profile == Profile::Production;
    t.insert("flush_interval_commit_log_ms".into(), int(flush_cl));
    t.insert("flush_commit_log_thorough_interval_ms".into(), int(thorough_cl));
    t.insert("commit_interval_commit_log_ms".into(), int(commit));
    t.insert("commit_commit_log_thorough_interval_ms".into(), int(if production { 200 } else { commit * 5 }));
    t.insert("flush_interval_cq_ms".into(), int(flush_cq));
    t.insert("flush_cq_thorough_interval_ms".into(), int(thorough_cq));
    let (cl_pages, cq_pages) = if production { (4, 2) } else { (rng.gen_range(0..=8), rng.gen_range(0..=4)) };
    t.insert("flush_commit_log_least_pages".into(), int(cl_pages));
    t.insert("commit_commit_log_least_pages".into(), int(cl_pages));
    t.insert("flush_cq_least_pages".into(), int(cq_pages));
    t.insert("group_commit_interval_ms".into(), int(if production { 10 } else { rng.gen_range(1..=50) }));
    t.insert("transient_pool_buffers".into(), int(if production { 5 } else { rng.gen_range(1..=5) }));
    t.insert("preallocate_commit_log".into(), toml::Value::Boolean(production || rng.gen_bool(0.5)));
}

/// The store's sizes for `profile`, commit-log files within `[cl_lo, cl_hi]`, messages up to
/// `max_message_bytes` where the file allows.
fn store(rng: &mut ChaCha8Rng, profile: Profile, cl_lo: u64, cl_hi: u64, max_message_bytes: u64) -> toml::Table {
    let cl = match profile {
        Profile::Near => file_size(rng, cl_lo.max(32 * 1024), cl_hi.min(128 * 1024)),
        Profile::Production => 1 << rng.gen_range(16..=20u32),
        Profile::Tiny => file_size(rng, 1024, 4096),
        Profile::HugeMessages => file_size(rng, 4096, 64 * 1024),
        Profile::Wide => file_size(rng, 1024, 1 << 20),
    }
    .clamp(cl_lo, cl_hi);
    let (cq_units, slots, items) = match profile {
        Profile::Production => {
            // 1 GiB : 300,000 units : 5 M slots : 20 M items.
            let scaled = |n: u64| (n * cl / (1 << 30)).max(2);
            (scaled(300_000), scaled(5_000_000), scaled(20_000_000))
        }
        Profile::Tiny => (rng.gen_range(1..=8), rng.gen_range(1..=4), rng.gen_range(2..=16)),
        Profile::Wide => (rng.gen_range(1..=1_000), rng.gen_range(1..=5_000), rng.gen_range(2..=20_000)),
        Profile::Near | Profile::HugeMessages => {
            (rng.gen_range(16..=128), rng.gen_range(16..=256), rng.gen_range(256..=4_096))
        }
    };
    let max_message = if profile == Profile::HugeMessages { cl - 8 } else { max_message_bytes.min(cl - 8) };
    let mut t = toml::Table::new();
    t.insert("commit_log_file_size_bytes".into(), int(cl));
    t.insert("max_message_size_bytes".into(), int(max_message));
    t.insert("cq_units_per_file".into(), int(cq_units));
    t.insert("index_max_hash_slots".into(), int(slots));
    t.insert("index_max_items".into(), int(items));
    intervals(rng, profile, &mut t);
    t
}

/// Sector size and sync latency of the simulated disk.
fn disk(rng: &mut ChaCha8Rng) -> toml::Table {
    let latency =
        [LatencyProfile::INSTANT, LatencyProfile::NVME_PLP, LatencyProfile::CLOUD_VM, LatencyProfile::CONSUMER_NVME]
            [rng.gen_range(0..4)];
    let mut t = toml::Table::new();
    t.insert("sector_size_bytes".into(), int(if rng.gen_bool(0.5) { 512 } else { 4096 }));
    let mut l = toml::Table::new();
    l.insert("p50_us".into(), int(latency.p50_us));
    l.insert("p99_us".into(), int(latency.p99_us));
    t.insert("sync_latency".into(), toml::Value::Table(l));
    t
}

/// The broker clients' knobs. `max_message_bytes`: the largest record the store accepts.
fn workload(rng: &mut ChaCha8Rng, profile: Profile, max_message_bytes: u64) -> toml::Table {
    let mut t = toml::Table::new();
    if rng.gen_bool(0.5) {
        t.insert("topics".into(), int(rng.gen_range(1..=crate::broker::workload::TOPIC_NAMES.len() as u64)));
        t.insert("queues_per_topic".into(), int(rng.gen_range(1..=8)));
    }
    if rng.gen_bool(0.5) {
        t.insert("max_batch".into(), int(rng.gen_range(1..=8)));
        t.insert("burst_prob".into(), toml::Value::Float(prob(rng, 0.0, 0.5)));
        t.insert("idle_prob".into(), toml::Value::Float(prob(rng, 0.0, 0.1)));
        t.insert("idle_ms".into(), int(rng.gen_range(200..=3_000)));
    }
    let sized = profile == Profile::HugeMessages || rng.gen_bool(0.3);
    // Room for the record's header, topic and properties (keys, tags).
    let body_max = max_message_bytes.saturating_sub(RECORD_OVERHEAD_BYTES);
    if sized && body_max > crate::broker::history::BODY_HEADER_BYTES as u64 {
        t.insert("sized_body_prob".into(), toml::Value::Float(prob(rng, 0.02, 0.3)));
        t.insert("body_max_bytes".into(), int(body_max));
    }
    if rng.gen_bool(0.4) {
        t.insert("key_reuse_prob".into(), toml::Value::Float(prob(rng, 0.1, 1.0)));
        t.insert("key_pool".into(), int(rng.gen_range(1..=20)));
    }
    t
}

/// A record's bytes besides its body, at most, in the broker workload (fixed header, topic,
/// keys and tags properties).
const RECORD_OVERHEAD_BYTES: u64 = 256;

fn table(entries: Vec<(&str, toml::Value)>) -> toml::Table {
    entries
        .into_iter()
        .filter(|(_, v)| !v.as_table().is_some_and(toml::Table::is_empty))
        .map(|(k, v)| (k.into(), v))
        .collect()
}

fn draw_broker(rng: &mut ChaCha8Rng) -> toml::Table {
    let profile = Profile::draw(rng);
    let store = store(rng, profile, 1024, 1 << 20, 16 * 1024);
    let max_message = store["max_message_size_bytes"].as_integer().unwrap_or(0) as u64;
    let disk = disk(rng);
    let workload = workload(rng, profile, max_message);
    table(vec![
        (PROFILE, toml::Value::String(profile.name().into())),
        (STORE, toml::Value::Table(store)),
        (DISK, toml::Value::Table(disk)),
        (WORKLOAD, toml::Value::Table(workload)),
    ])
}

fn draw_tiered(rng: &mut ChaCha8Rng) -> toml::Table {
    let profile = Profile::draw(rng);
    // Its messages are up to 4 KiB, beside commit-log files of a few of them.
    let store = store(rng, profile, 4 * 1024 + 8, 1 << 20, 4 * 1024);
    let max_message = store["max_message_size_bytes"].as_integer().unwrap_or(0) as u64;
    let disk = disk(rng);
    // Segments of at least a few messages and a dispatcher that outruns the producers: with
    // 1 KiB segments, 20-byte consume-queue segments or one message per batch every 500 ms the
    // scenario's bounds (every queue tiered 15 s after the faults, a replaced disk serving
    // within 60 s) no longer hold for a correct store (1,000 seeds: 20 `tiered-progress` and 2
    // `tiered-durability` failures, all such configurations).
    let mut tiered = toml::Table::new();
    let production = profile == Profile::Production;
    let segment = if production { 1 << rng.gen_range(13..=16) } else { rng.gen_range(8..=128) * 512 };
    // A segment holds a few of the largest messages, as RocketMQ's 1 GiB segments hold 4 MiB ones.
    let segment = segment.max((2 * max_message).next_multiple_of(512));
    tiered.insert("commit_log_segment_bytes".into(), int(segment));
    let cq_units = if production { segment / 1024 } else { rng.gen_range(8..=64) };
    tiered.insert("consume_queue_segment_bytes".into(), int(cq_units.max(8) * 20));
    tiered.insert("group_commit_count".into(), int(rng.gen_range(1..=64)));
    tiered.insert("group_commit_timeout_ms".into(), int(rng.gen_range(50..=1_000)));
    tiered.insert("batch_max_count".into(), int(rng.gen_range(8..=64)));
    tiered.insert("batch_max_bytes".into(), int(rng.gen_range(8..=64) * 1024));
    tiered.insert("dispatch_interval_ms".into(), int(rng.gen_range(10..=200)));
    tiered.insert("dispatch_permits".into(), int(rng.gen_range(1..=8)));
    let workload = workload(rng, profile, max_message);
    table(vec![
        (PROFILE, toml::Value::String(profile.name().into())),
        (STORE, toml::Value::Table(store)),
        (DISK, toml::Value::Table(disk)),
        (TIERED, toml::Value::Table(tiered)),
        (WORKLOAD, toml::Value::Table(workload)),
    ])
}

/// The DLedger group's configuration (`dledger::settings`): the log's and consume queues'
/// sizes per profile (production: DLedger's 1 GiB data files and 5 M index units per file,
/// RocketMQ's 300,000 consume-queue units, scaled down together), the members' timers and
/// batch limit, the leader's flush interval, the disk, the clients, and targeted fault shapes
/// (`dledger::shapes`), each drawn with some probability.
fn draw_dledger(rng: &mut ChaCha8Rng) -> toml::Table {
    use crate::dledger::settings::DLEDGER;
    // Room for the largest entry of the fixed workload (a record of a few hundred bytes).
    const MIN_ENTRY_BYTES: u64 = 1024;
    let blank = engine::dledger::entry::BLANK_BYTES;
    let profile = Profile::draw(rng);
    let data = match profile {
        Profile::Near => file_size(rng, 32 * 1024, 128 * 1024),
        Profile::Production => 1 << rng.gen_range(16..=20u32),
        Profile::Tiny => file_size(rng, 2048, 8192),
        Profile::HugeMessages => file_size(rng, 8192, 64 * 1024),
        Profile::Wide => file_size(rng, 2048, 1 << 20),
    }
    .max(MIN_ENTRY_BYTES + blank);
    let (index_units, cq_units) = match profile {
        Profile::Production => {
            let scaled = |n: u64| (n * data / (1 << 30)).max(2);
            (scaled(5 * 1024 * 1024), scaled(300_000))
        }
        Profile::Tiny => (rng.gen_range(1..=8), rng.gen_range(1..=8)),
        Profile::Wide => (rng.gen_range(1..=5_000), rng.gen_range(1..=1_000)),
        Profile::Near | Profile::HugeMessages => (rng.gen_range(16..=2_048), rng.gen_range(16..=512)),
    };
    let max_entry = match profile {
        Profile::HugeMessages => data - blank,
        _ => (16 * 1024).min(data - blank),
    };
    let mut d = toml::Table::new();
    d.insert("data_file_size_bytes".into(), int(data));
    d.insert("index_units_per_file".into(), int(index_units));
    d.insert("max_entry_bytes".into(), int(max_entry));
    d.insert("cq_units_per_file".into(), int(cq_units));
    let heartbeat = rng.gen_range(10..=100);
    let election_min = heartbeat * rng.gen_range(3..=10);
    d.insert("heartbeat_ms".into(), int(heartbeat));
    d.insert("election_min_ms".into(), int(election_min));
    d.insert("election_max_ms".into(), int(election_min + rng.gen_range(50..=600)));
    d.insert("max_append_entries".into(), int(1 << rng.gen_range(0..=5u32)));
    let lazy = rng.gen_bool(0.5);
    d.insert("leader_flush_interval_ms".into(), int(if lazy { rng.gen_range(1..=1_000) } else { 0 }));
    d.insert("cq_flush_ms".into(), int(rng.gen_range(10..=1_000)));
    let disk = disk(rng);
    let mut w = toml::Table::new();
    if rng.gen_bool(0.5) {
        w.insert("topics".into(), int(rng.gen_range(1..=crate::broker::workload::TOPIC_NAMES.len() as u64)));
        w.insert("queues_per_topic".into(), int(rng.gen_range(1..=8)));
    }
    if rng.gen_bool(0.5) {
        w.insert("max_batch".into(), int(rng.gen_range(1..=8)));
    }
    let body_max = max_entry.saturating_sub(engine::dledger::ENTRY_HEADER_BYTES + RECORD_OVERHEAD_BYTES);
    if (profile == Profile::HugeMessages || rng.gen_bool(0.3))
        && body_max > crate::broker::history::BODY_HEADER_BYTES as u64
    {
        w.insert("sized_body_prob".into(), toml::Value::Float(prob(rng, 0.02, 0.3)));
        w.insert("body_max_bytes".into(), int(body_max));
    }
    if rng.gen_bool(0.4) {
        w.insert("key_reuse_prob".into(), toml::Value::Float(prob(rng, 0.1, 1.0)));
        w.insert("key_pool".into(), int(rng.gen_range(1..=20)));
    }
    let shapes = dledger_shapes(rng);
    table(vec![
        (PROFILE, toml::Value::String(profile.name().into())),
        (DLEDGER, toml::Value::Table(d)),
        (DISK, toml::Value::Table(disk)),
        (WORKLOAD, toml::Value::Table(w)),
        (crate::dledger::settings::SHAPES, toml::Value::Table(shapes)),
    ])
}

/// The dledger scenario's targeted shapes, each drawn on its own.
fn dledger_shapes(rng: &mut ChaCha8Rng) -> toml::Table {
    let ints = |v: &[u64]| toml::Value::Array(v.iter().map(|&x| int(x)).collect());
    let mut t = toml::Table::new();
    if rng.gen_bool(0.3) {
        let v = [rng.gen_range(1..=3), rng.gen_range(500..9_000), rng.gen_range(200..4_000)];
        t.insert("minority_partition".into(), ints(&v));
    }
    if rng.gen_bool(0.3) {
        t.insert("leader_isolation".into(), ints(&[rng.gen_range(500..9_000), rng.gen_range(500..4_000)]));
    }
    if rng.gen_bool(0.25) {
        t.insert("leader_power_loss".into(), ints(&[rng.gen_range(1_000..9_000), rng.gen_range(50..1_500)]));
    }
    if rng.gen_bool(0.25) {
        t.insert("figure8".into(), ints(&[rng.gen_range(500..4_000), rng.gen_range(1_500..4_000)]));
    }
    t
}

/// The disk-log scenario's knobs (`disk_log::Knobs`): the disk, records per batch and the
/// pause between batches.
fn draw_disk_log(rng: &mut ChaCha8Rng) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("records_per_batch".into(), int(1 << rng.gen_range(0..=6u32)));
    t.insert("batch_interval_ms".into(), int(rng.gen_range(1..=50)));
    table(vec![(DISK, toml::Value::Table(disk(rng))), (crate::disk_log::WRITER, toml::Value::Table(t))])
}

/// One line per section, `key=value` pairs: how `dst replay` prints a configuration.
pub fn describe(config: &toml::Table) -> Vec<String> {
    let mut lines = Vec::new();
    let mut plain = Vec::new();
    for (k, v) in config {
        match v {
            toml::Value::Table(t) => {
                let pairs: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v}")).collect();
                lines.push(format!("[{k}] {}", pairs.join(" ")));
            }
            v => plain.push(format!("{k}={v}")),
        }
    }
    if !plain.is_empty() {
        lines.insert(0, plain.join(" "));
    }
    lines
}

/// How many keys a configuration sets (a section's fields each count).
pub fn key_count(config: &toml::Table) -> usize {
    config.values().map(|v| v.as_table().map_or(1, toml::Table::len)).sum()
}

/// The configuration one step closer to the fixed one: each candidate removes one key (a
/// section's field, or a top-level key), in order. Used by `shrink`.
pub fn one_key_fewer(config: &toml::Table) -> Vec<toml::Table> {
    let mut out = Vec::new();
    for (k, v) in config {
        if let toml::Value::Table(t) = v {
            for field in t.keys() {
                let mut c = config.clone();
                if let Some(toml::Value::Table(s)) = c.get_mut(k) {
                    s.remove(field);
                    if s.is_empty() {
                        c.remove(k);
                    }
                }
                out.push(c);
            }
        } else {
            let mut c = config.clone();
            c.remove(k);
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiered_base() -> engine::tiered::TieredConfig {
        crate::tiered::tiered_config()
    }

    #[test]
    fn draws_are_a_function_of_the_seed_and_apply_cleanly() {
        let mut profiles = std::collections::BTreeSet::new();
        for seed in 0..300 {
            for scenario in ["broker", "tiered"] {
                let config = draw(scenario, seed);
                assert_eq!(config, draw(scenario, seed));
                profiles.insert(config[PROFILE].as_str().unwrap_or("").to_string());
                let store = engine::StoreConfig::small("/store");
                let applied = apply(&config, &store, &[TIERED])
                    .unwrap_or_else(|e| panic!("{scenario} seed {seed}: {e}\n{config}"));
                section(&config, TIERED, &tiered_base()).unwrap_or_else(|e| panic!("{scenario} seed {seed}: {e}"));
                assert!(matches!(applied.disk.sector_size_bytes, 512 | 4096));
                assert_eq!(applied.store.root_dir, store.root_dir);
                // Round trip through a case file's TOML.
                let text = toml::to_string(&config).expect("serializes");
                assert_eq!(text.parse::<toml::Table>().expect("parses"), config);
            }
        }
        assert_eq!(profiles.len(), 5, "{profiles:?}");
    }

    #[test]
    fn dledger_and_disk_log_draws_apply_cleanly() {
        let mut shapes = std::collections::BTreeSet::new();
        for seed in 0..300 {
            let config = draw("dledger", seed);
            assert_eq!(config, draw("dledger", seed));
            let s = crate::dledger::settings::parse(&config).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{config}"));
            if let Some(t) = config.get(crate::dledger::settings::SHAPES).and_then(toml::Value::as_table) {
                shapes.extend(t.keys().cloned());
            }
            assert!(s.disk.is_some());
            let config = draw("disk-log", seed);
            crate::disk_log::settings(&config).unwrap_or_else(|e| panic!("disk-log seed {seed}: {e}\n{config}"));
        }
        assert_eq!(shapes.len(), 4, "every shape is drawn: {shapes:?}");
    }

    #[test]
    fn an_empty_config_is_the_fixed_one() {
        let store = engine::StoreConfig::small("/store");
        let applied = apply(&toml::Table::new(), &store, &[]).expect("applies");
        assert_eq!(applied.store, store);
        assert_eq!(applied.disk, DiskConfig::default());
        assert_eq!(applied.workload, Workload::default());
        assert_eq!(section(&toml::Table::new(), TIERED, &tiered_base()), Ok(tiered_base()));
    }

    #[test]
    fn bad_configs_are_errors() {
        let store = engine::StoreConfig::small("/store");
        for text in [
            "surprise = 1",
            "[store]\ncommit_log_file_sizes = 5",
            "[store]\nroot_dir = \"/elsewhere\"",
            "[store]\ncommit_log_file_size_bytes = 10",
            "[store]\ncq_units_per_file = \"many\"",
            "[disk]\nsector_size_bytes = 3000",
            "[workload]\ntopics = 1\nwho = 2",
            "store = 5",
            "[tiered]\ndispatch_permits = 2",
        ] {
            let config: toml::Table = text.parse().expect("toml");
            assert!(apply(&config, &store, &[]).is_err(), "{text}");
        }
    }

    #[test]
    fn production_profile_keeps_rocketmq_ratios() {
        let found = (0..200).map(|s| draw("broker", s)).find(|c| c[PROFILE].as_str() == Some("production"));
        let config = found.expect("a production draw in 200 seeds");
        let store = &config[STORE];
        let cl = store["commit_log_file_size_bytes"].as_integer().unwrap() as f64;
        let units = store["cq_units_per_file"].as_integer().unwrap() as f64;
        let items = store["index_max_items"].as_integer().unwrap() as f64;
        let gib = (1u64 << 30) as f64;
        assert!((units / (cl / gib) - 300_000.0).abs() / 300_000.0 < 0.05, "{config}");
        assert!((items / (cl / gib) - 20_000_000.0).abs() / 20_000_000.0 < 0.05, "{config}");
    }

    #[test]
    fn shrinking_steps_remove_one_key_each() {
        let config = draw("broker", 11);
        let keys = key_count(&config);
        let steps = one_key_fewer(&config);
        assert_eq!(steps.len(), keys);
        for s in &steps {
            assert_eq!(key_count(s), keys - 1);
        }
    }
}
