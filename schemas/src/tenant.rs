//! Tenants and their API keys, read from the tenant file (TOML) that ingest and the query API
//! share.
//!
//! A tenant is who owns events and read models. Clients never name their tenant: it is always
//! the tenant of the bearer key they present, so a key of one tenant cannot write as, or read the
//! data of, another.
//!
//! ```toml
//! [[tenant]]
//! name = "weblog"
//! api_keys = ["weblog-demo-key"]
//! events_per_second = 20000
//! burst_events = 40000
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

/// Every tenant, and the map from API key to tenant.
#[derive(Debug, Clone)]
pub struct TenantFile {
    tenants: Vec<Tenant>,
    /// API key -> index into `tenants`.
    by_key: HashMap<String, usize>,
}

/// One tenant and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Name stored with every record of the tenant: `[a-z0-9_-]`, 1 to 64 bytes.
    pub name: String,
    /// Bearer keys that act as this tenant. At least one; each key belongs to one tenant.
    pub api_keys: Vec<String>,
    /// Sustained ingest rate, in events (not requests) per second.
    #[serde(default = "default_events_per_second")]
    pub events_per_second: u32,
    /// Events that may arrive at once above the sustained rate.
    #[serde(default = "default_burst_events")]
    pub burst_events: u32,
}

/// Why a tenant file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("cannot read tenant file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tenant file is not valid TOML for [[tenant]] tables: {0}")]
    Toml(String),
    #[error("tenant file: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantFile {
    #[serde(default)]
    tenant: Vec<Tenant>,
}

fn default_events_per_second() -> u32 {
    10_000
}

fn default_burst_events() -> u32 {
    20_000
}

impl TenantFile {
    /// Reads and validates a tenant file.
    pub fn load(path: &Path) -> Result<TenantFile, TenantError> {
        let text = std::fs::read_to_string(path).map_err(|source| TenantError::Read {
            path: path.display().to_string(),
            source,
        })?;
        TenantFile::from_toml(&text)
    }

    /// Parses and validates tenant TOML: names unique and well formed, keys unique across
    /// tenants, limits positive.
    pub fn from_toml(text: &str) -> Result<TenantFile, TenantError> {
        let raw: RawTenantFile =
            toml::from_str(text).map_err(|e| TenantError::Toml(e.message().to_owned()))?;
        if raw.tenant.is_empty() {
            return Err(TenantError::Invalid(
                "no tenants: add at least one [[tenant]] table".into(),
            ));
        }
        let mut by_key = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (index, tenant) in raw.tenant.iter().enumerate() {
            let valid_name = !tenant.name.is_empty()
                && tenant.name.len() <= 64
                && tenant.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid_name {
                return Err(TenantError::Invalid(format!(
                    "tenant {index}: name {:?} must be 1 to 64 characters of a-z, 0-9, '-' or '_'",
                    tenant.name
                )));
            }
            if !names.insert(tenant.name.as_str()) {
                return Err(TenantError::Invalid(format!(
                    "tenant {:?} is declared twice: merge the two tables",
                    tenant.name
                )));
            }
            if tenant.api_keys.is_empty() {
                return Err(TenantError::Invalid(format!(
                    "tenant {:?} has no api_keys: add at least one",
                    tenant.name
                )));
            }
            if tenant.events_per_second == 0 || tenant.burst_events == 0 {
                return Err(TenantError::Invalid(format!(
                    "tenant {:?}: events_per_second and burst_events must be at least 1",
                    tenant.name
                )));
            }
            for key in &tenant.api_keys {
                if key.len() < 8 {
                    return Err(TenantError::Invalid(format!(
                        "tenant {:?}: api keys must be at least 8 characters",
                        tenant.name
                    )));
                }
                if by_key.insert(key.clone(), index).is_some() {
                    return Err(TenantError::Invalid(format!(
                        "tenant {:?}: an api key is used by more than one tenant; give each \
                         tenant its own keys",
                        tenant.name
                    )));
                }
            }
        }
        Ok(TenantFile {
            tenants: raw.tenant,
            by_key,
        })
    }

    /// The tenant of a bearer key, if the key is known.
    pub fn authenticate(&self, api_key: &str) -> Option<&Tenant> {
        self.by_key.get(api_key).map(|&index| &self.tenants[index])
    }

    /// Every tenant, in file order.
    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_TENANTS: &str = r#"
        [[tenant]]
        name = "weblog"
        api_keys = ["weblog-key-1", "weblog-key-2"]
        events_per_second = 100
        burst_events = 200

        [[tenant]]
        name = "wiki"
        api_keys = ["wiki-key-1"]
    "#;

    #[test]
    fn test_tenant_file_maps_each_key_to_its_tenant() {
        let file = TenantFile::from_toml(TWO_TENANTS).unwrap();
        assert_eq!(file.authenticate("weblog-key-2").unwrap().name, "weblog");
        assert_eq!(file.authenticate("wiki-key-1").unwrap().name, "wiki");
        assert_eq!(
            file.authenticate("wiki-key-1").unwrap().events_per_second,
            10_000
        );
        assert!(file.authenticate("unknown-key").is_none());
        assert!(file.authenticate("weblog").is_none());
    }

    #[test]
    fn test_tenant_file_rejects_shared_keys_and_bad_names() {
        let shared = r#"
            [[tenant]]
            name = "a"
            api_keys = ["same-key-1"]
            [[tenant]]
            name = "b"
            api_keys = ["same-key-1"]
        "#;
        let err = TenantFile::from_toml(shared).unwrap_err().to_string();
        assert!(err.contains("more than one tenant"), "{err}");

        let bad_name = "[[tenant]]\nname = \"Web Log\"\napi_keys = [\"key-12345\"]\n";
        let err = TenantFile::from_toml(bad_name).unwrap_err().to_string();
        assert!(err.contains("a-z"), "{err}");

        let unknown = "[[tenant]]\nname = \"a\"\napi_keys = [\"key-12345\"]\nrate = 3\n";
        let err = TenantFile::from_toml(unknown).unwrap_err().to_string();
        assert!(err.contains("rate"), "{err}");

        let err = TenantFile::from_toml("").unwrap_err().to_string();
        assert!(err.contains("no tenants"), "{err}");
    }
}
