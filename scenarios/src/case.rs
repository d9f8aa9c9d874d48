//! Case files: one run written down — scenario, seed, configuration, enabled bugs, fault plan
//! and the expected outcome — small, human-readable TOML, versioned. `seeds/` holds the saved
//! ones; `cargo test` replays each and asserts its expectation; `dst replay` and `dst shrink`
//! read them.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sim::FaultPlan;

/// The case-file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What a replay of the case must produce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// `pass` or `fail`.
    pub outcome: ExpectedOutcome,
    /// For `fail`: the checker that must report a violation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checker: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpectedOutcome {
    Pass,
    Fail,
}

/// One saved run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub format_version: u32,
    pub scenario: String,
    pub seed: u64,
    /// Why the case exists (found by explore, a catalogued bug's witness, a regression).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    #[serde(default)]
    pub bugs: BTreeSet<String>,
    /// Scenario-specific settings (flush mode, sizes); empty means the scenario's defaults.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub config: toml::Table,
    pub expect: Expectation,
    pub plan: FaultPlan,
}

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("cannot read case file {path}: {message}")]
    Read { path: String, message: String },
    #[error("malformed case file {path}: {message}")]
    Malformed { path: String, message: String },
    #[error("case file {path} has format version {found}; this build reads version {FORMAT_VERSION}")]
    Version { path: String, found: u32 },
    #[error("cannot write case file {path}: {message}")]
    Write { path: String, message: String },
}

impl Case {
    pub fn parse(text: &str, path: &str) -> Result<Case, CaseError> {
        let case: Case = toml::from_str(text)
            .map_err(|e| CaseError::Malformed { path: path.to_string(), message: e.to_string() })?;
        if case.format_version != FORMAT_VERSION {
            return Err(CaseError::Version { path: path.to_string(), found: case.format_version });
        }
        case.plan.validate().map_err(|e| CaseError::Malformed { path: path.to_string(), message: e.to_string() })?;
        if case.expect.outcome == ExpectedOutcome::Fail && case.expect.checker.is_none() {
            return Err(CaseError::Malformed {
                path: path.to_string(),
                message: "expect.outcome = \"fail\" needs expect.checker".to_string(),
            });
        }
        Ok(case)
    }

    pub fn load(path: &Path) -> Result<Case, CaseError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| CaseError::Read { path: shown.clone(), message: e.to_string() })?;
        Case::parse(&text, &shown)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# unserializable case: {e}\n"))
    }

    pub fn save(&self, path: &Path) -> Result<(), CaseError> {
        let err = |e: std::io::Error| CaseError::Write { path: path.display().to_string(), message: e.to_string() };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        std::fs::write(path, self.to_toml()).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Case {
        Case {
            format_version: FORMAT_VERSION,
            scenario: "disk-log".into(),
            seed: 42,
            note: "test".into(),
            bugs: ["ack-before-sync".to_string()].into_iter().collect(),
            config: toml::Table::new(),
            expect: Expectation { outcome: ExpectedOutcome::Fail, checker: Some("durability".into()) },
            plan: FaultPlan::default(),
        }
    }

    #[test]
    fn round_trips() {
        let case = sample();
        assert_eq!(Case::parse(&case.to_toml(), "x").unwrap(), case);
    }

    #[test]
    fn malformed_cases_are_typed_errors() {
        let good = sample().to_toml();
        for (text, what) in [
            ("", "empty"),
            ("format_version = 1", "missing fields"),
            (&good.replace("format_version = 1", "format_version = 99")[..], "version"),
            (&good.replace("checker = \"durability\"\n", "")[..], "fail without checker"),
            (&format!("{good}\nsurprise = true\n")[..], "unknown field"),
            ("\u{0}\u{0}", "binary"),
        ] {
            assert!(Case::parse(text, "x").is_err(), "{what} should be rejected");
        }
        assert!(matches!(Case::load(Path::new("/nonexistent/case.toml")), Err(CaseError::Read { .. })));
    }
}
