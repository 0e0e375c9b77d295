//! How Redis keeps the data, as start-up reads it: whether it may evict keys and what it
//! writes to disk. The composition root decides what to refuse or report.

use fred::prelude::*;
use fred::types::InfoKind;

use super::client::Store;
use super::error::StoreError;

/// Redis's eviction policy and persistence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `maxmemory-policy`; anything but `noeviction` drops keys under memory pressure, and
    /// every session has a TTL, so `volatile-*` drops sessions too.
    pub maxmemory_policy: String,
    /// Whether the append-only file is on.
    pub aof: bool,
    /// The RDB snapshot schedule (`CONFIG GET save`); `None` when Redis refuses `CONFIG`
    /// (managed services often do), empty when snapshots are off.
    pub rdb_schedule: Option<String>,
}

impl RedisSettings {
    pub fn evicts(&self) -> bool {
        self.maxmemory_policy != "noeviction"
    }
}

impl Store {
    /// Reads how Redis keeps the data (`INFO memory`, `INFO persistence`, `CONFIG GET save`).
    pub async fn settings(&self) -> Result<RedisSettings, StoreError> {
        self.bounded("info", async {
            let client = self.inner.pool.next_connected();
            let memory: String = client.info(Some(InfoKind::Memory)).await?;
            let persistence: String = client.info(Some(InfoKind::Persistence)).await?;
            let rdb_schedule = client
                .config_get::<Vec<String>, _>("save")
                .await
                .ok()
                .and_then(|pair| pair.into_iter().nth(1));
            Ok(RedisSettings {
                maxmemory_policy: field(&memory, "maxmemory_policy")
                    .unwrap_or("noeviction")
                    .to_string(),
                aof: field(&persistence, "aof_enabled") == Some("1"),
                rdb_schedule,
            })
        })
        .await
    }
}

/// The value of `name:value` in an `INFO` section.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_found_by_their_whole_name() {
        let info = "# Memory\r\nmaxmemory:0\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(field(info, "maxmemory_policy"), Some("allkeys-lru"));
        assert_eq!(field(info, "maxmemory"), Some("0"));
        assert_eq!(field(info, "aof_enabled"), None);
    }
}
