//! The dledger scenario's configuration: the case's `config` table over the fixed settings.
//! An empty table is the fixed configuration; the swarm (`crate::swarm`) draws the others.
//! Keys:
//! - `group_power_loss = false`: no power loss on all three at once (drawn from the seed
//!   otherwise);
//! - `[dledger]`: the log's sizes, the consume queues' units per file, the members' timers
//!   and batch limit, the leader's flush interval (`Knobs`);
//! - `[disk]`: `DiskConfig` fields (sector size, sync latency; the latency is drawn from
//!   the seed otherwise);
//! - `[workload]`: `swarm::Workload` knobs of the clients;
//! - `[shapes]`: targeted fault shapes played by the nemesis (`shapes::Shapes`).

use engine::dledger::DLedgerConfig;
use serde::{Deserialize, Serialize};
use sim::disk::DiskConfig;

use super::shapes::Shapes;
use crate::swarm::{self, Workload};

pub const DLEDGER: &str = "dledger";
pub const SHAPES: &str = "shapes";
const GROUP_POWER_LOSS: &str = "group_power_loss";
const KEYS: [&str; 6] = [swarm::PROFILE, GROUP_POWER_LOSS, DLEDGER, swarm::DISK, swarm::WORKLOAD, SHAPES];

/// The `[dledger]` knobs. Unset: the fixed value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    pub data_file_size_bytes: Option<u64>,
    pub index_units_per_file: Option<u64>,
    pub max_entry_bytes: Option<u64>,
    pub cq_units_per_file: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    pub election_min_ms: Option<u64>,
    pub election_max_ms: Option<u64>,
    /// Entries per append request.
    pub max_append_entries: Option<u64>,
    /// The leader syncs its own appends this long after they were made (0: at once). Its
    /// followers' copies commit them meanwhile: RocketMQ's asynchronous flush on the leader.
    pub leader_flush_interval_ms: Option<u64>,
    pub cq_flush_ms: Option<u64>,
}

/// The members' timers and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub max_append_entries: u64,
    pub leader_flush_interval_ms: u64,
    pub cq_flush_ms: u64,
}

impl Timing {
    pub const FIXED: Timing = Timing {
        heartbeat_ms: 50,
        election_min_ms: 300,
        election_max_ms: 600,
        max_append_entries: 32,
        leader_flush_interval_ms: 0,
        cq_flush_ms: 300,
    };

    fn validate(&self) -> Result<(), String> {
        let t = self;
        if t.heartbeat_ms == 0 || t.max_append_entries == 0 || t.cq_flush_ms == 0 {
            return Err("heartbeat_ms, max_append_entries and cq_flush_ms must be positive".into());
        }
        // A follower must hear several heartbeats within its shortest election timeout, or
        // the group elects for ever without any fault.
        if t.election_min_ms < 3 * t.heartbeat_ms || t.election_max_ms <= t.election_min_ms {
            return Err(format!(
                "election timeouts [{}, {}) ms must start at 3 heartbeats ({} ms) and be a range",
                t.election_min_ms, t.election_max_ms, t.heartbeat_ms
            ));
        }
        if t.election_max_ms > 5_000 || t.leader_flush_interval_ms > 5_000 {
            return Err("election_max_ms and leader_flush_interval_ms are at most 5,000 ms".into());
        }
        Ok(())
    }
}

/// The configuration a run uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub log: DLedgerConfig,
    pub cq_units_per_file: u64,
    pub timing: Timing,
    /// `None`: the fixed disk with its sync latency drawn from the seed.
    pub disk: Option<DiskConfig>,
    pub workload: Workload,
    pub shapes: Shapes,
    /// `false`: the group power loss is off.
    pub group_power_loss: bool,
}

pub const FIXED_CQ_UNITS_PER_FILE: u64 = 256;

/// Reads `config` over the fixed settings; a message for anything unknown or out of range.
pub fn parse(config: &toml::Table) -> Result<Settings, String> {
    if let Some(k) = config.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("config.{k} is not a configuration key of the dledger scenario"));
    }
    let group_power_loss = match config.get(GROUP_POWER_LOSS) {
        None => true,
        Some(v) => v.as_bool().ok_or_else(|| format!("config.{GROUP_POWER_LOSS} must be a boolean"))?,
    };
    let knobs: Knobs = typed(config, DLEDGER)?;
    let fixed = DLedgerConfig::small();
    let log = DLedgerConfig {
        data_file_size_bytes: knobs.data_file_size_bytes.unwrap_or(fixed.data_file_size_bytes),
        index_units_per_file: knobs.index_units_per_file.unwrap_or(fixed.index_units_per_file),
        max_entry_bytes: knobs.max_entry_bytes.unwrap_or(fixed.max_entry_bytes),
        os_page_size_bytes: fixed.os_page_size_bytes,
    };
    log.validate().map_err(|e| format!("config.{DLEDGER}: {e}"))?;
    let f = Timing::FIXED;
    let timing = Timing {
        heartbeat_ms: knobs.heartbeat_ms.unwrap_or(f.heartbeat_ms),
        election_min_ms: knobs.election_min_ms.unwrap_or(f.election_min_ms),
        election_max_ms: knobs.election_max_ms.unwrap_or(f.election_max_ms),
        max_append_entries: knobs.max_append_entries.unwrap_or(f.max_append_entries),
        leader_flush_interval_ms: knobs.leader_flush_interval_ms.unwrap_or(f.leader_flush_interval_ms),
        cq_flush_ms: knobs.cq_flush_ms.unwrap_or(f.cq_flush_ms),
    };
    timing.validate().map_err(|e| format!("config.{DLEDGER}: {e}"))?;
    let cq_units_per_file = knobs.cq_units_per_file.unwrap_or(FIXED_CQ_UNITS_PER_FILE);
    if cq_units_per_file == 0 {
        return Err(format!("config.{DLEDGER}: cq_units_per_file must be positive"));
    }
    let disk = match config.get(swarm::DISK) {
        None => None,
        Some(_) => {
            let d: DiskConfig = swarm::section(config, swarm::DISK, &DiskConfig::default())?;
            d.validate().map_err(|e| format!("config.{}: {e}", swarm::DISK))?;
            Some(d)
        }
    };
    let workload: Workload = typed(config, swarm::WORKLOAD)?;
    let shapes: Shapes = typed(config, SHAPES)?;
    shapes.validate().map_err(|e| format!("config.{SHAPES}: {e}"))?;
    Ok(Settings { log, cq_units_per_file, timing, disk, workload, shapes, group_power_loss })
}

/// Section `name` as `T` (all fields optional), the default if absent.
fn typed<T: Default + serde::de::DeserializeOwned>(config: &toml::Table, name: &str) -> Result<T, String> {
    match config.get(name) {
        None => Ok(T::default()),
        Some(v) => v.clone().try_into::<T>().map_err(|e| format!("config.{name}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_is_the_fixed_one() {
        let s = parse(&toml::Table::new()).expect("parses");
        assert_eq!(s.log, DLedgerConfig::small());
        assert_eq!(s.timing, Timing::FIXED);
        assert_eq!(s.cq_units_per_file, FIXED_CQ_UNITS_PER_FILE);
        assert!(s.disk.is_none() && s.group_power_loss && s.shapes == Shapes::default());
    }

    #[test]
    fn bad_configs_are_errors() {
        for text in [
            "surprise = 1",
            "group_power_loss = 3",
            "[dledger]\nheartbeat_ms = 0",
            "[dledger]\nheartbeat_ms = 200\nelection_min_ms = 300",
            "[dledger]\nmax_entry_bytes = 10",
            "[dledger]\ndata_file_size_bytes = 100",
            "[dledger]\nwho = 1",
            "[disk]\nsector_size_bytes = 3000",
            "[workload]\nwho = 1",
            "[shapes]\nfigure8 = [1]",
            "[shapes]\nminority_partition = [4, 100, 100]",
        ] {
            let config: toml::Table = text.parse().expect("toml");
            assert!(parse(&config).is_err(), "{text}");
        }
    }
}
