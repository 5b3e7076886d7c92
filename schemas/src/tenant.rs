//! Tenants, their API keys and their limits, read from the tenant file (TOML) that ingest and the
//! query API share, and [`SharedTenants`], the handle through which a running service always sees
//! the newest valid version of that file.
//!
//! A tenant is who owns events and read models. Clients never name their tenant: it is always
//! the tenant of the bearer key they present, so a key of one tenant cannot write as, or read the
//! data of, another.
//!
//! The file never holds a key, only the SHA-256 of it, as 64 hex digits. Generate a key and its
//! digest with, for example, `key=$(openssl rand -hex 32); printf %s "$key" | sha256sum` (the
//! first field of the output is the digest; `printf %s` adds no newline, which would change it).
//! A tenant may list several digests, so a key is rotated by adding the new digest, moving the
//! clients over, then removing the old one; services reload the file without a restart
//! (see the `watch` module, built with the `watch` feature).
//!
//! ```toml
//! [[tenant]]
//! name = "weblog"
//! # printf %s 'weblog-demo-key-0001' | sha256sum
//! api_key_sha256 = ["552442a09f8baa2f73db5683923d676994d88492071d458a01ecb5ed215d230e"]
//! events_per_second = 20000             # sustained rate, in events (default 10000)
//! burst_events = 40000                  # events at once above the rate (default 20000)
//! rate_limit_algorithm = "gcra"         # or "sliding_window_log", "sliding_window_counter"
//! max_event_bytes = 65536               # optional: largest event, as its Kafka key + value
//! max_body_bytes = 1048576              # optional: largest request body (ingest's own is the cap)
//! allowed_event_types = ["page_view"]   # optional: leave out to allow every type
//! ```
//!
//! Guarantee: a [`TenantFile`] has unique, well-formed tenant names, each key digest belongs to
//! exactly one tenant, and every limit is at least 1. [`TenantFile::authenticate`] hashes the
//! presented key and compares the digest with every stored digest in constant time, so neither
//! the answer's timing nor the file reveals a key. [`SharedTenants::reload`] swaps in a new
//! version atomically and only when it is valid: a refused file leaves the previous one in force.

#[cfg(feature = "watch")]
pub mod watch;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::event::MAX_TYPE_BYTES;

/// The hex SHA-256 of an API key, as the tenant file stores it: the same digest as the first
/// field of `printf %s KEY | sha256sum`.
pub fn api_key_sha256_hex(api_key: &str) -> String {
    Sha256::digest(api_key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Every tenant, and the digests of the keys that act as them.
#[derive(Debug, Clone)]
pub struct TenantFile {
    tenants: Vec<Arc<Tenant>>,
    /// (SHA-256 of a key, index into `tenants`).
    keys: Vec<([u8; 32], usize)>,
    /// SHA-256 of the TOML text this was parsed from.
    source_sha256: [u8; 32],
}

/// One tenant and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Name stored with every record of the tenant: `[a-z0-9_-]`, 1 to 64 bytes.
    pub name: String,
    /// How many events the tenant may send, and how that is measured.
    pub rate_limit: RateLimit,
    /// Largest event, measured as its Kafka record (key plus value bytes); `None` leaves only
    /// ingest's own bound.
    pub max_event_bytes: Option<usize>,
    /// Largest request body (also after gzip decoding); `None` leaves only ingest's own bound,
    /// which also caps this one.
    pub max_body_bytes: Option<usize>,
    /// Event types the tenant may send, sorted; `None` allows every type.
    pub allowed_event_types: Option<Vec<String>>,
}

/// A tenant's rate limit. It counts events, not requests: a batch of 500 events costs 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Sustained rate, in events per second.
    pub events_per_second: u32,
    /// Most events admitted at once; also the largest batch that can ever be admitted.
    pub burst_events: u32,
    /// How admissions are counted over time.
    pub algorithm: RateLimitAlgorithm,
}

/// How a [`RateLimit`] counts admissions over time.
///
/// All three admit at most `burst_events` at once and `events_per_second` on average. The two
/// window algorithms use a window of `burst_events / events_per_second` seconds
/// ([`RateLimit::window`]) that holds at most `burst_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAlgorithm {
    /// Generic cell rate algorithm, the exact form of a token bucket holding `burst_events`
    /// that refills at `events_per_second`. At most `burst_events + events_per_second * T`
    /// events in any span of `T` seconds.
    #[default]
    #[serde(alias = "token_bucket")]
    Gcra,
    /// Every admission is logged with its time; at most `burst_events` in any window. Exact, and
    /// memory grows with the number of admitted requests in a window (at most `burst_events`).
    SlidingWindowLog,
    /// Two fixed-window counters; the previous window's count is weighted by how much of it the
    /// sliding window still covers. Constant memory; an estimate that assumes the previous
    /// window's events were spread evenly, so up to twice `burst_events` may pass in a window
    /// that straddles two fixed windows.
    SlidingWindowCounter,
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

/// The current version of a tenant file, shared by every request of a service and replaced
/// atomically by [`SharedTenants::reload`]. Cheap to clone; clones share the version.
#[derive(Debug, Clone)]
pub struct SharedTenants {
    current: Arc<ArcSwap<TenantFile>>,
}

/// A `[[tenant]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantTable {
    name: String,
    #[serde(default)]
    api_key_sha256: Vec<String>,
    /// Plain-text keys are not read any more; the field exists to refuse them with the fix.
    api_keys: Option<toml::Value>,
    #[serde(default = "default_events_per_second")]
    events_per_second: u32,
    #[serde(default = "default_burst_events")]
    burst_events: u32,
    #[serde(default)]
    rate_limit_algorithm: RateLimitAlgorithm,
    max_event_bytes: Option<u64>,
    max_body_bytes: Option<u64>,
    allowed_event_types: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantFile {
    #[serde(default)]
    tenant: Vec<TenantTable>,
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

    /// Parses and validates tenant TOML: names unique and well formed, key digests well formed
    /// and each used by one tenant only, limits at least 1, event types well formed.
    pub fn from_toml(text: &str) -> Result<TenantFile, TenantError> {
        let raw: RawTenantFile =
            toml::from_str(text).map_err(|e| TenantError::Toml(e.message().to_owned()))?;
        if raw.tenant.is_empty() {
            return Err(TenantError::Invalid(
                "no tenants: add at least one [[tenant]] table".into(),
            ));
        }
        let mut tenants = Vec::with_capacity(raw.tenant.len());
        let mut keys = Vec::new();
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        for (index, table) in raw.tenant.into_iter().enumerate() {
            let (tenant, tenant_keys) = table.validate(index)?;
            if !names.insert(tenant.name.clone()) {
                return Err(TenantError::Invalid(format!(
                    "tenant {:?} is declared twice: merge the two tables",
                    tenant.name
                )));
            }
            for digest in tenant_keys {
                if !digests.insert(digest) {
                    return Err(TenantError::Invalid(format!(
                        "tenant {:?}: an api_key_sha256 digest is listed twice or by another \
                         tenant; give each tenant its own keys",
                        tenant.name
                    )));
                }
                keys.push((digest, index));
            }
            tenants.push(Arc::new(tenant));
        }
        Ok(TenantFile {
            tenants,
            keys,
            source_sha256: Sha256::digest(text.as_bytes()).into(),
        })
    }

    /// The tenant of a bearer key, if the key's digest is in the file. Takes the same time
    /// whichever digest (if any) matches: every stored digest is compared in constant time.
    pub fn authenticate(&self, api_key: &str) -> Option<&Arc<Tenant>> {
        let digest: [u8; 32] = Sha256::digest(api_key.as_bytes()).into();
        let mut found = None;
        for (stored, index) in &self.keys {
            if bool::from(stored[..].ct_eq(&digest[..])) {
                found = Some(*index);
            }
        }
        found.map(|index| &self.tenants[index])
    }

    /// Every tenant, in file order.
    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

    /// The tenant named `name`.
    pub fn tenant(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.iter().find(|tenant| tenant.name == name)
    }

    /// How many key digests the file holds, over every tenant.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Whether this file was parsed from exactly `text`.
    pub fn is_parsed_from(&self, text: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(text).into();
        digest == self.source_sha256
    }
}

impl Tenant {
    /// Whether the tenant may send events of `event_type`.
    pub fn allows_event_type(&self, event_type: &str) -> bool {
        match &self.allowed_event_types {
            None => true,
            Some(allowed) => allowed
                .binary_search_by(|candidate| candidate.as_str().cmp(event_type))
                .is_ok(),
        }
    }
}

impl RateLimit {
    /// The window of the window algorithms: `burst_events / events_per_second` seconds,
    /// rounded up to whole nanoseconds. Over it, the average rate is `events_per_second`.
    pub fn window(&self) -> Duration {
        let nanos = u128::from(self.burst_events) * 1_000_000_000;
        let rate = u128::from(self.events_per_second.max(1));
        Duration::from_nanos(u64::try_from(nanos.div_ceil(rate)).unwrap_or(u64::MAX))
    }
}

impl RateLimitAlgorithm {
    /// The name used in the tenant file, in metrics and in keys of shared state.
    pub fn name(self) -> &'static str {
        match self {
            RateLimitAlgorithm::Gcra => "gcra",
            RateLimitAlgorithm::SlidingWindowLog => "sliding_window_log",
            RateLimitAlgorithm::SlidingWindowCounter => "sliding_window_counter",
        }
    }
}

impl SharedTenants {
    /// Shares `file` as the current version.
    pub fn new(file: TenantFile) -> SharedTenants {
        SharedTenants {
            current: Arc::new(ArcSwap::from_pointee(file)),
        }
    }

    /// The current version. Requests should take it once and use it throughout, so that one
    /// request never sees two versions.
    pub fn current(&self) -> Arc<TenantFile> {
        self.current.load_full()
    }

    /// The tenant of a bearer key in the current version.
    pub fn authenticate(&self, api_key: &str) -> Option<Arc<Tenant>> {
        self.current.load().authenticate(api_key).cloned()
    }

    /// Makes `file` the current version.
    pub fn replace(&self, file: impl Into<Arc<TenantFile>>) {
        self.current.store(file.into());
    }

    /// Reads and validates `path` and, only if it is valid, makes it the current version.
    /// On error the previous version stays in force.
    pub fn reload(&self, path: &Path) -> Result<Arc<TenantFile>, TenantError> {
        let file = Arc::new(TenantFile::load(path)?);
        self.current.store(Arc::clone(&file));
        Ok(file)
    }
}

impl From<TenantFile> for SharedTenants {
    fn from(file: TenantFile) -> SharedTenants {
        SharedTenants::new(file)
    }
}

impl TenantTable {
    /// Checks one table (the `index`-th, from 0) and returns the tenant and its key digests.
    fn validate(self, index: usize) -> Result<(Tenant, Vec<[u8; 32]>), TenantError> {
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(TenantError::Invalid(format!(
                "tenant {index}: name {:?} must be 1 to 64 characters of a-z, 0-9, '-' or '_'",
                self.name
            )));
        }
        let name = self.name;
        let invalid = |reason: String| TenantError::Invalid(format!("tenant {name:?}: {reason}"));
        if self.api_keys.is_some() {
            return Err(invalid(
                "api_keys holds plain-text keys, which are not read any more: store the SHA-256 \
                 of each key in api_key_sha256 instead (the first field of \
                 `printf %s 'KEY' | sha256sum`)"
                    .into(),
            ));
        }
        if self.api_key_sha256.is_empty() {
            return Err(invalid(
                "api_key_sha256 is empty: add the SHA-256 of at least one key \
                 (`printf %s 'KEY' | sha256sum`)"
                    .into(),
            ));
        }
        let keys = self
            .api_key_sha256
            .iter()
            .map(|hex| {
                parse_sha256_hex(hex).ok_or_else(|| {
                    invalid(format!(
                        "api_key_sha256 entry {hex:?} is not 64 hex digits: give the first field \
                         of `printf %s 'KEY' | sha256sum`"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.events_per_second == 0 || self.burst_events == 0 {
            return Err(invalid(
                "events_per_second and burst_events must be at least 1".into(),
            ));
        }
        let max_event_bytes =
            positive_size(self.max_event_bytes, "max_event_bytes").map_err(invalid)?;
        let max_body_bytes =
            positive_size(self.max_body_bytes, "max_body_bytes").map_err(invalid)?;
        let allowed_event_types = match self.allowed_event_types {
            None => None,
            Some(types) if types.is_empty() => {
                return Err(invalid(
                    "allowed_event_types is empty, which would refuse every event: list at least \
                     one type, or leave the key out to allow every type"
                        .into(),
                ));
            }
            Some(mut types) => {
                if let Some(bad) = types.iter().find(|t| !is_event_type(t)) {
                    return Err(invalid(format!(
                        "allowed_event_types entry {bad:?} is not an event type: use 1 to \
                         {MAX_TYPE_BYTES} letters, digits, '_', '.', ':' or '-'"
                    )));
                }
                types.sort();
                types.dedup();
                Some(types)
            }
        };
        let tenant = Tenant {
            rate_limit: RateLimit {
                events_per_second: self.events_per_second,
                burst_events: self.burst_events,
                algorithm: self.rate_limit_algorithm,
            },
            max_event_bytes,
            max_body_bytes,
            allowed_event_types,
            name,
        };
        Ok((tenant, keys))
    }
}

/// 64 hex digits (either case) to 32 bytes.
fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(digest)
}

/// The same rule event validation applies to `type`.
fn is_event_type(event_type: &str) -> bool {
    !event_type.is_empty()
        && event_type.len() <= MAX_TYPE_BYTES
        && event_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

fn positive_size(value: Option<u64>, field: &'static str) -> Result<Option<usize>, String> {
    match value {
        None => Ok(None),
        Some(0) => Err(format!("{field} must be at least 1")),
        Some(bytes) => usize::try_from(bytes)
            .map(Some)
            .map_err(|_| format!("{field} is too large for this machine")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `printf %s weblog-key-1 | sha256sum`, and so on: digests computed outside this crate.
    const WEBLOG_KEY_1_SHA256: &str =
        "6bf48cf1bea46ad7a691e912e1ab4d5039a8eb693aa241d2b12724417a4ecebb";
    const WEBLOG_KEY_2_SHA256: &str =
        "d27c07f98669559f4cdfde7c824608a17f463845a9c52c30c7655f0de8d11e1f";
    const WIKI_KEY_1_SHA256: &str =
        "5da83010e1fe67c1116d5f4b60a89ebfb720a2272e23a175f37f147491c0bb1e";

    fn two_tenants() -> String {
        format!(
            r#"
            [[tenant]]
            name = "weblog"
            api_key_sha256 = ["{WEBLOG_KEY_1_SHA256}", "{}"]
            events_per_second = 100
            burst_events = 200
            rate_limit_algorithm = "sliding_window_log"
            max_event_bytes = 4096
            allowed_event_types = ["page_view", "click", "page_view"]

            [[tenant]]
            name = "wiki"
            api_key_sha256 = ["{}"]
            "#,
            WEBLOG_KEY_2_SHA256.to_uppercase(),
            WIKI_KEY_1_SHA256
        )
    }

    #[test]
    fn test_api_key_sha256_hex_matches_sha256sum() {
        // `printf %s weblog-demo-key-0001 | sha256sum`
        assert_eq!(
            api_key_sha256_hex("weblog-demo-key-0001"),
            "552442a09f8baa2f73db5683923d676994d88492071d458a01ecb5ed215d230e"
        );
        assert_eq!(api_key_sha256_hex("weblog-key-1"), WEBLOG_KEY_1_SHA256);
        assert_eq!(api_key_sha256_hex("weblog-key-2"), WEBLOG_KEY_2_SHA256);
        assert_eq!(api_key_sha256_hex("wiki-key-1"), WIKI_KEY_1_SHA256);
    }

    #[test]
    fn test_tenant_file_maps_each_key_to_its_tenant() {
        let file = TenantFile::from_toml(&two_tenants()).unwrap();
        assert_eq!(file.authenticate("weblog-key-1").unwrap().name, "weblog");
        assert_eq!(file.authenticate("weblog-key-2").unwrap().name, "weblog");
        assert_eq!(file.authenticate("wiki-key-1").unwrap().name, "wiki");
        assert!(file.authenticate("unknown-key").is_none());
        assert!(file.authenticate("weblog").is_none());
        // The digest itself is not a key.
        assert!(file.authenticate(WIKI_KEY_1_SHA256).is_none());
        assert_eq!(file.key_count(), 3);
    }

    #[test]
    fn test_tenant_file_reads_limits_and_defaults() {
        let file = TenantFile::from_toml(&two_tenants()).unwrap();
        let weblog = file.tenant("weblog").unwrap();
        assert_eq!(
            weblog.rate_limit,
            RateLimit {
                events_per_second: 100,
                burst_events: 200,
                algorithm: RateLimitAlgorithm::SlidingWindowLog,
            }
        );
        assert_eq!(weblog.rate_limit.window(), Duration::from_secs(2));
        assert_eq!(weblog.max_event_bytes, Some(4096));
        assert_eq!(weblog.max_body_bytes, None);
        assert_eq!(
            weblog.allowed_event_types.as_deref(),
            Some(&["click".to_owned(), "page_view".to_owned()][..])
        );
        assert!(weblog.allows_event_type("click"));
        assert!(!weblog.allows_event_type("edit"));

        let wiki = file.tenant("wiki").unwrap();
        assert_eq!(wiki.rate_limit.events_per_second, 10_000);
        assert_eq!(wiki.rate_limit.burst_events, 20_000);
        assert_eq!(wiki.rate_limit.algorithm, RateLimitAlgorithm::Gcra);
        assert!(wiki.allows_event_type("anything"));
    }

    #[test]
    fn test_rate_limit_window_rounds_up_to_whole_nanoseconds() {
        let limit = RateLimit {
            events_per_second: 3,
            burst_events: 1,
            algorithm: RateLimitAlgorithm::SlidingWindowCounter,
        };
        assert_eq!(limit.window(), Duration::from_nanos(333_333_334));
    }

    #[test]
    fn test_tenant_file_refuses_plain_text_keys_with_the_fix() {
        let plain = "[[tenant]]\nname = \"a\"\napi_keys = [\"key-12345\"]\n";
        let err = TenantFile::from_toml(plain).unwrap_err().to_string();
        assert!(err.contains("api_key_sha256"), "{err}");
        assert!(err.contains("sha256sum"), "{err}");
    }

    #[test]
    fn test_tenant_file_refuses_shared_or_malformed_digests() {
        let shared = format!(
            "[[tenant]]\nname = \"a\"\napi_key_sha256 = [\"{WIKI_KEY_1_SHA256}\"]\n\
             [[tenant]]\nname = \"b\"\napi_key_sha256 = [\"{WIKI_KEY_1_SHA256}\"]\n"
        );
        let err = TenantFile::from_toml(&shared).unwrap_err().to_string();
        assert!(err.contains("another tenant"), "{err}");

        for bad in [
            "abc",
            &format!("{WIKI_KEY_1_SHA256}  -"),
            &WIKI_KEY_1_SHA256.replace('a', "g"),
        ] {
            let text = format!("[[tenant]]\nname = \"a\"\napi_key_sha256 = [\"{bad}\"]\n");
            let err = TenantFile::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains("64 hex digits"), "{bad}: {err}");
        }
        let none = "[[tenant]]\nname = \"a\"\n";
        let err = TenantFile::from_toml(none).unwrap_err().to_string();
        assert!(err.contains("api_key_sha256 is empty"), "{err}");
    }

    #[test]
    fn test_tenant_file_refuses_bad_names_limits_and_types() {
        let key = format!("api_key_sha256 = [\"{WIKI_KEY_1_SHA256}\"]");
        let cases = [
            ("name = \"Web Log\"", "a-z"),
            ("name = \"a\"\nrate = 3", "rate"),
            ("name = \"a\"\nburst_events = 0", "at least 1"),
            ("name = \"a\"\nmax_body_bytes = 0", "max_body_bytes"),
            ("name = \"a\"\nallowed_event_types = []", "allow every type"),
            (
                "name = \"a\"\nallowed_event_types = [\"a b\"]",
                "not an event type",
            ),
            ("name = \"a\"\nrate_limit_algorithm = \"leaky\"", "leaky"),
        ];
        for (table, expected) in cases {
            let text = format!("[[tenant]]\n{table}\n{key}\n");
            let err = TenantFile::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{table}: {err}");
        }
        let err = TenantFile::from_toml("").unwrap_err().to_string();
        assert!(err.contains("no tenants"), "{err}");
    }

    #[test]
    fn test_token_bucket_is_an_alias_of_gcra() {
        let text = format!(
            "[[tenant]]\nname = \"a\"\napi_key_sha256 = [\"{WIKI_KEY_1_SHA256}\"]\n\
             rate_limit_algorithm = \"token_bucket\"\n"
        );
        let file = TenantFile::from_toml(&text).unwrap();
        assert_eq!(
            file.tenants()[0].rate_limit.algorithm,
            RateLimitAlgorithm::Gcra
        );
    }

    #[test]
    fn test_shared_tenants_keep_the_old_version_when_a_reload_is_refused() {
        let dir = std::env::temp_dir().join(format!("schemas-tenant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tenants.toml");
        std::fs::write(&path, two_tenants()).unwrap();
        let shared = SharedTenants::new(TenantFile::load(&path).unwrap());
        let before = shared.current();
        assert!(before.is_parsed_from(two_tenants().as_bytes()));

        std::fs::write(&path, "[[tenant]]\nname = \"broken\"\n").unwrap();
        assert!(shared.reload(&path).is_err());
        assert_eq!(shared.authenticate("wiki-key-1").unwrap().name, "wiki");

        let rotated =
            format!("[[tenant]]\nname = \"wiki\"\napi_key_sha256 = [\"{WEBLOG_KEY_1_SHA256}\"]\n");
        std::fs::write(&path, &rotated).unwrap();
        let after = shared.reload(&path).unwrap();
        assert!(after.is_parsed_from(rotated.as_bytes()));
        assert!(shared.authenticate("wiki-key-1").is_none());
        assert_eq!(shared.authenticate("weblog-key-1").unwrap().name, "wiki");
        // A version taken before the swap stays whole for whoever holds it.
        assert_eq!(before.authenticate("wiki-key-1").unwrap().name, "wiki");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
