//! Ingest configuration: the TOML file an operator writes, and the validated [`Config`] the
//! service runs with.
//!
//! Guarantee: a [`Config`] returned by [`Config::load`] or [`Config::from_toml`] has a parseable
//! listen address, a non-empty broker list, a legal Kafka topic name and positive sizes and
//! durations; unknown keys in the file are refused rather than ignored.
//!
//! Relative paths (`tenants_file`) are resolved against the working directory of the process,
//! not against the directory of the config file: run the binary from the repository root for
//! the demo config `deploy/ingest.toml`.
//!
//! ```toml
//! listen = "127.0.0.1:8081"
//! brokers = "127.0.0.1:9092"
//! topic = "events"
//! tenants_file = "deploy/tenants.toml"
//! max_body_bytes = 5242880
//! request_deadline_ms = 5000
//!
//! [limits]
//! max_events_per_request = 1000
//!
//! [rate_limit]                 # optional; see `crate::rate_limit` for every key
//! redis_url = "redis://127.0.0.1:6379/"
//! replica_count = 3
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use schemas::Limits;

use crate::rate_limit::{RateLimitConfig, RateLimitSection};

/// Validated ingest configuration. Durations and sizes are in the types the code uses; see the
/// module docs for the file format and [`Config::from_toml`] for defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP server listens on (the binary binds it; [`crate::serve`] takes a bound
    /// listener).
    pub listen: SocketAddr,
    /// Kafka bootstrap servers, comma separated `host:port` pairs.
    pub brokers: String,
    /// Topic every event is appended to. It must exist before ingest starts.
    pub topic: String,
    /// Tenant file (TOML) with API keys and rate limits, relative to the working directory.
    pub tenants_file: PathBuf,
    /// Largest request body accepted, and also the largest size a gzip body may decompress to.
    pub max_body_bytes: usize,
    /// How long a request waits for Kafka to acknowledge all of its records before it is
    /// answered 503.
    pub request_deadline: Duration,
    /// How long a client may take to send a request body; a slower one is answered 408 and its
    /// connection freed.
    pub body_read_timeout: Duration,
    /// How long a client may take to send a request head (request line and header fields); a
    /// slower connection is closed without an answer.
    pub header_read_timeout: Duration,
    /// Most client connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Most request body bytes held at once, over all requests: raw bytes, plus the decoded
    /// bytes of gzip bodies. A request that would pass it is answered 503 before its body is
    /// read. Parsed events take a few times their body size on top, so peak memory is about a
    /// small multiple of this figure.
    pub max_buffered_body_bytes: usize,
    /// How long the producer keeps retrying one record before it gives up on it
    /// (`message.timeout.ms`).
    pub message_timeout: Duration,
    /// Most records the producer holds in memory, waiting to be sent or acknowledged
    /// (`queue.buffering.max.messages`); past it requests are answered 503.
    pub queue_max_messages: u32,
    /// How long the producer waits to fill a batch before sending it (`linger.ms`).
    pub linger: Duration,
    /// Compression of record batches (`compression.type`).
    pub compression: Compression,
    /// How often topic metadata is read to check that Kafka is reachable (readiness) and to
    /// refresh the partition count.
    pub metadata_refresh: Duration,
    /// How long one metadata request may take, at start and in the readiness check.
    pub metadata_timeout: Duration,
    /// How long shutdown waits for records still queued in the producer before it gives up on
    /// them.
    pub shutdown_flush: Duration,
    /// Validation limits for incoming events.
    pub limits: Limits,
    /// Where the tenants' rate limits are kept: in process, or shared through Redis.
    pub rate_limit: RateLimitConfig,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file is not valid: {0}")]
    Toml(String),
    #[error("config value {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Compression codecs of the producer (`compression.type`) this build of librdkafka has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
}

impl Compression {
    /// The librdkafka name of the codec.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: String,
    brokers: String,
    topic: String,
    tenants_file: PathBuf,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: u64,
    #[serde(default = "default_request_deadline_ms")]
    request_deadline_ms: u64,
    #[serde(default = "default_body_read_timeout_ms")]
    body_read_timeout_ms: u64,
    #[serde(default = "default_header_read_timeout_ms")]
    header_read_timeout_ms: u64,
    #[serde(default = "default_max_connections")]
    max_connections: u32,
    #[serde(default = "default_max_buffered_body_bytes")]
    max_buffered_body_bytes: u64,
    #[serde(default = "default_message_timeout_ms")]
    message_timeout_ms: u64,
    #[serde(default = "default_queue_max_messages")]
    queue_max_messages: u32,
    #[serde(default = "default_linger_ms")]
    linger_ms: u64,
    #[serde(default = "default_compression")]
    compression: Compression,
    #[serde(default = "default_metadata_refresh_ms")]
    metadata_refresh_ms: u64,
    #[serde(default = "default_metadata_timeout_ms")]
    metadata_timeout_ms: u64,
    #[serde(default = "default_shutdown_flush_ms")]
    shutdown_flush_ms: u64,
    /// Each limit left out keeps the value of `schemas::Limits::default()`.
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    rate_limit: RateLimitSection,
}

/// 5 MiB.
const fn default_max_body_bytes() -> u64 {
    5 * 1024 * 1024
}

const fn default_request_deadline_ms() -> u64 {
    5_000
}

const fn default_body_read_timeout_ms() -> u64 {
    10_000
}

const fn default_header_read_timeout_ms() -> u64 {
    10_000
}

const fn default_max_connections() -> u32 {
    4_096
}

/// 64 MiB.
const fn default_max_buffered_body_bytes() -> u64 {
    64 * 1024 * 1024
}

const fn default_compression() -> Compression {
    Compression::Lz4
}

const fn default_message_timeout_ms() -> u64 {
    4_000
}

const fn default_queue_max_messages() -> u32 {
    100_000
}

const fn default_linger_ms() -> u64 {
    5
}

const fn default_metadata_refresh_ms() -> u64 {
    1_000
}

const fn default_metadata_timeout_ms() -> u64 {
    2_000
}

const fn default_shutdown_flush_ms() -> u64 {
    5_000
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Parses and validates config TOML. Defaults: `max_body_bytes` 5 MiB,
    /// `max_buffered_body_bytes` 64 MiB, `max_connections` 4096, `header_read_timeout_ms` 10000,
    /// `body_read_timeout_ms` 10000, `request_deadline_ms` 5000, `message_timeout_ms` 4000,
    /// `queue_max_messages` 100000, `linger_ms` 5, `compression` lz4, `metadata_refresh_ms` 1000, `metadata_timeout_ms` 2000,
    /// `shutdown_flush_ms` 5000, `[limits]` from `schemas::Limits::default()`, `[rate_limit]`
    /// in process with `replica_count` 1.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| ConfigError::Toml(e.message().to_owned()))?;
        let listen = file.listen.parse().map_err(|_| ConfigError::Invalid {
            field: "listen",
            reason: format!(
                "{:?} is not an ip:port address such as \"127.0.0.1:8081\"",
                file.listen
            ),
        })?;
        let max_body_bytes =
            usize::try_from(file.max_body_bytes).map_err(|_| ConfigError::Invalid {
                field: "max_body_bytes",
                reason: "too large for this machine".into(),
            })?;
        let max_buffered_body_bytes =
            usize::try_from(file.max_buffered_body_bytes).map_err(|_| ConfigError::Invalid {
                field: "max_buffered_body_bytes",
                reason: "too large for this machine".into(),
            })?;
        let rate_limit = file
            .rate_limit
            .validate()
            .map_err(|error| ConfigError::Invalid {
                field: error.field,
                reason: error.reason,
            })?;
        let config = Config {
            listen,
            brokers: file.brokers,
            topic: file.topic,
            tenants_file: file.tenants_file,
            max_body_bytes,
            request_deadline: Duration::from_millis(file.request_deadline_ms),
            body_read_timeout: Duration::from_millis(file.body_read_timeout_ms),
            header_read_timeout: Duration::from_millis(file.header_read_timeout_ms),
            max_connections: file.max_connections as usize,
            max_buffered_body_bytes,
            message_timeout: Duration::from_millis(file.message_timeout_ms),
            queue_max_messages: file.queue_max_messages,
            linger: Duration::from_millis(file.linger_ms),
            compression: file.compression,
            metadata_refresh: Duration::from_millis(file.metadata_refresh_ms),
            metadata_timeout: Duration::from_millis(file.metadata_timeout_ms),
            shutdown_flush: Duration::from_millis(file.shutdown_flush_ms),
            limits: file.limits,
            rate_limit,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the invariants the service relies on. [`Config::from_toml`] calls it; call it
    /// again after changing fields by hand ([`crate::serve`] does).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self
            .brokers
            .split(',')
            .all(|broker| broker.trim().is_empty())
        {
            return invalid(
                "brokers",
                "give at least one host:port, e.g. \"127.0.0.1:9092\"",
            );
        }
        let legal_topic = !self.topic.is_empty()
            && self.topic.len() <= 249
            && self.topic != "."
            && self.topic != ".."
            && self
                .topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !legal_topic {
            return invalid(
                "topic",
                "use 1 to 249 characters of a-z, A-Z, 0-9, '.', '_' or '-'",
            );
        }
        if self.tenants_file.as_os_str().is_empty() {
            return invalid("tenants_file", "give the path of the tenant file");
        }
        if self.max_body_bytes == 0 {
            return invalid("max_body_bytes", "must be at least 1");
        }
        // Reservations of the body budget are counted in a u32 (a tokio semaphore's limit).
        if self.max_buffered_body_bytes > u32::MAX as usize {
            return invalid("max_buffered_body_bytes", "must be at most 4294967295");
        }
        // A gzip body holds its raw bytes and up to `max_body_bytes` decoded bytes at once.
        if self.max_buffered_body_bytes < self.max_body_bytes.saturating_mul(2) {
            return invalid(
                "max_buffered_body_bytes",
                "must be at least twice max_body_bytes, so that one gzip body of the largest \
                 size (raw and decoded) fits",
            );
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.queue_max_messages == 0 {
            return invalid("queue_max_messages", "must be at least 1");
        }
        if self.rate_limit.replica_count == 0 {
            return invalid("rate_limit.replica_count", "must be at least 1");
        }
        let positive = [
            ("request_deadline_ms", self.request_deadline),
            ("body_read_timeout_ms", self.body_read_timeout),
            ("header_read_timeout_ms", self.header_read_timeout),
            ("message_timeout_ms", self.message_timeout),
            ("metadata_refresh_ms", self.metadata_refresh),
            ("metadata_timeout_ms", self.metadata_timeout),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return invalid(field, "must be at least 1");
            }
        }
        // A record still being retried after its request was answered 503 could land in Kafka
        // after the client was told it failed: give up on records before answering.
        if self.message_timeout >= self.request_deadline {
            return invalid(
                "message_timeout_ms",
                "must be less than request_deadline_ms, so that a request answered 503 has no \
                 record still in flight",
            );
        }
        // librdkafka refuses a message.timeout.ms past i32::MAX and a linger.ms past 900000.
        if self.message_timeout > Duration::from_millis(i32::MAX as u64) {
            return invalid("message_timeout_ms", "must be at most 2147483647");
        }
        if self.linger > Duration::from_millis(900_000) {
            return invalid("linger_ms", "must be at most 900000");
        }
        self.limits
            .validate()
            .map_err(|error| ConfigError::Invalid {
                field: "limits",
                reason: error.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        listen = "127.0.0.1:8081"
        brokers = "127.0.0.1:9092"
        topic = "events"
        tenants_file = "deploy/tenants.toml"
    "#;

    #[test]
    fn test_config_defaults_apply_to_a_minimal_file() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(config.max_body_bytes, 5 * 1024 * 1024);
        assert_eq!(config.request_deadline, Duration::from_secs(5));
        assert_eq!(config.queue_max_messages, 100_000);
        assert_eq!(
            config.limits.max_events_per_request,
            Limits::default().max_events_per_request
        );
    }

    #[test]
    fn test_config_reads_limits_and_units() {
        let text = format!(
            "{MINIMAL}\nlinger_ms = 20\nrequest_deadline_ms = 750\nmessage_timeout_ms = 500\n\
             [limits]\nmax_events_per_request = 7\nmax_past_ms = 86400000\n"
        );
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(config.linger, Duration::from_millis(20));
        assert_eq!(config.request_deadline, Duration::from_millis(750));
        assert_eq!(config.limits.max_events_per_request, 7);
        assert_eq!(config.limits.max_past_ms, Some(86_400_000));
        let negative = format!("{MINIMAL}\n[limits]\nmax_past_ms = -5\n");
        let error = Config::from_toml(&negative).unwrap_err().to_string();
        assert!(error.contains("max_past_ms must be at least 0"), "{error}");
    }

    #[test]
    fn test_config_reads_connection_bounds_and_compression() {
        let text = format!(
            "{MINIMAL}\nheader_read_timeout_ms = 250\nmax_connections = 8\n\
             max_buffered_body_bytes = 20000000\ncompression = \"none\"\n"
        );
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(config.header_read_timeout, Duration::from_millis(250));
        assert_eq!(config.max_connections, 8);
        assert_eq!(config.max_buffered_body_bytes, 20_000_000);
        assert_eq!(config.compression, Compression::None);

        let err = Config::from_toml(&format!("{MINIMAL}\ncompression = \"zstd\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("zstd") && err.contains("lz4"), "{err}");
    }

    #[test]
    fn test_config_refuses_a_body_budget_smaller_than_one_gzip_body() {
        let text = format!("{MINIMAL}\nmax_body_bytes = 1000\nmax_buffered_body_bytes = 1999\n");
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("max_buffered_body_bytes"), "{err}");
        let text = format!("{MINIMAL}\nmax_body_bytes = 1000\nmax_buffered_body_bytes = 2000\n");
        Config::from_toml(&text).unwrap();
    }

    #[test]
    fn test_config_refuses_a_message_timeout_past_the_request_deadline() {
        let text = format!("{MINIMAL}\nrequest_deadline_ms = 3000\nmessage_timeout_ms = 3000\n");
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("message_timeout_ms"), "{err}");
    }

    #[test]
    fn test_config_refuses_unknown_keys_and_bad_values() {
        let err = Config::from_toml(&format!("{MINIMAL}\nlinger = 5\n")).unwrap_err();
        assert!(err.to_string().contains("linger"), "{err}");

        let err = Config::from_toml(&MINIMAL.replace("127.0.0.1:8081", "localhost")).unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");

        let err = Config::from_toml(&MINIMAL.replace("\"events\"", "\"a b\"")).unwrap_err();
        assert!(err.to_string().contains("topic"), "{err}");

        let err = Config::from_toml(&format!("{MINIMAL}\nrequest_deadline_ms = 0\n")).unwrap_err();
        assert!(err.to_string().contains("request_deadline_ms"), "{err}");
    }
}
