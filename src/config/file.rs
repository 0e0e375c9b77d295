//! The shapes of the TOML sections read whole (`[quotas.*]`, `[plans.*]`, `[cors]`), as serde
//! reads them.
//! Unknown keys are refused. No validation here: `parse` turns these into settings.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CorsFile {
    pub(super) allowed_origins: Vec<String>,
    pub(super) max_age_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    pub(super) limit: Option<u64>,
    pub(super) window: Option<String>,
    pub(super) rate: Option<u64>,
    pub(super) period: Option<String>,
    pub(super) burst: Option<u64>,
    pub(super) cost: Option<u64>,
    pub(super) counter: Option<String>,
    pub(super) mode: Option<String>,
}

/// `[plans.<name>]`: overrides of the policies' allowances, by operation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlanFile {
    #[serde(default)]
    pub(super) quotas: BTreeMap<String, PolicyFile>,
}
