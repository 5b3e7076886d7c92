//! Projector configuration: read from TOML into [`Config`], validated before anything starts.
//!
//! Relative paths are resolved against the working directory of the process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// Everything one projector node needs. Unknown fields are rejected so that a typo is an error,
/// not a silently ignored setting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// The event topic written by ingest.
    pub topic: String,
    /// Consumer group shared by every projector node that serves the same read models.
    pub group_id: String,
    /// Name of this node in query answers; several nodes of a group need distinct names.
    #[serde(default = "default_node_name")]
    pub node_name: String,
    /// Directory of this node's sled store. Only this process opens it.
    pub store_path: PathBuf,
    /// The projection file declaring which read models exist.
    pub projections_file: PathBuf,
    /// Address of the internal endpoint the query API reads sketches from.
    pub internal_listen: SocketAddr,
    /// A batch is written once it holds this many records...
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// ...or once its oldest record has waited this long.
    #[serde(default = "default_batch_interval_ms")]
    pub batch_interval_ms: u64,
    /// sled page cache size.
    #[serde(default = "default_store_cache_bytes")]
    pub store_cache_bytes: u64,
    /// How often the high watermark of each partition is read, for lag.
    #[serde(default = "default_watermark_interval_ms")]
    pub watermark_interval_ms: u64,
    /// Topic that receives records the projector cannot fold; default `<topic>.dead-letter`.
    /// It must exist.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// How long a dead-letter write may take before the partition stalls and retries.
    #[serde(default = "default_dead_letter_timeout_ms")]
    pub dead_letter_timeout_ms: u64,
    /// Largest record value folded; larger records are dead-lettered.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// How long an event id is remembered for dropping retried duplicates, measured in receive
    /// time against the newest event of the same partition.
    #[serde(default = "default_dedup_window_ms")]
    pub dedup_window_ms: i64,
    /// Most event ids remembered per partition for dropping duplicates (about 30 bytes of
    /// memory each); past it the oldest are forgotten before the window ends.
    #[serde(default = "default_dedup_max_ids")]
    pub dedup_max_ids: usize,
    /// Consumer group session timeout: how soon a node that died loses its partitions.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// How often the projection file is read to see whether it changed; a change of
    /// definitions starts a rebuild beside the serving read models (see `rebuild`).
    #[serde(default = "default_projections_poll_ms")]
    pub projections_poll_ms: u64,
    /// A rebuild switches in once every partition is within this many records of its high
    /// watermark; the serving consumer is stopped while the rebuild reads the rest.
    #[serde(default = "default_rebuild_switch_lag")]
    pub rebuild_switch_lag: i64,
}

fn default_node_name() -> String {
    "projector-1".to_owned()
}

fn default_batch_max_records() -> usize {
    5_000
}

fn default_batch_interval_ms() -> u64 {
    200
}

fn default_store_cache_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_watermark_interval_ms() -> u64 {
    1_000
}

fn default_dead_letter_timeout_ms() -> u64 {
    10_000
}

fn default_max_record_bytes() -> usize {
    1_000_000
}

fn default_dedup_window_ms() -> i64 {
    24 * 60 * 60 * 1_000
}

fn default_dedup_max_ids() -> usize {
    2_000_000
}

fn default_session_timeout_ms() -> u64 {
    10_000
}

fn default_projections_poll_ms() -> u64 {
    2_000
}

fn default_rebuild_switch_lag() -> i64 {
    1_000
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read projector config {}", path.display()))?;
        Config::from_toml(&text)
            .with_context(|| format!("invalid projector config {}", path.display()))
    }

    /// Parses and validates config TOML.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that TOML types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.brokers.trim().is_empty() {
            bail!("brokers is empty: set it to the Kafka bootstrap servers, e.g. 127.0.0.1:9092");
        }
        if self.topic.trim().is_empty() || self.group_id.trim().is_empty() {
            bail!("topic and group_id must not be empty");
        }
        if self.node_name.trim().is_empty() {
            bail!("node_name must not be empty");
        }
        if self.batch_max_records == 0 {
            bail!("batch_max_records must be at least 1");
        }
        if !(1..=60_000).contains(&self.batch_interval_ms) {
            bail!("batch_interval_ms must be between 1 and 60000");
        }
        if self.watermark_interval_ms == 0 {
            bail!("watermark_interval_ms must be at least 1");
        }
        if self.dead_letter_topic() == self.topic {
            bail!("dead_letter_topic must differ from topic");
        }
        if self.dead_letter_timeout_ms == 0 || self.max_record_bytes == 0 {
            bail!("dead_letter_timeout_ms and max_record_bytes must be at least 1");
        }
        if self.dedup_max_ids == 0 {
            bail!("dedup_max_ids must be at least 1");
        }
        if self.dedup_window_ms <= 0 {
            bail!("dedup_window_ms must be positive, e.g. 86400000 for a day");
        }
        if !(1_000..=300_000).contains(&self.session_timeout_ms) {
            bail!("session_timeout_ms must be between 1000 and 300000");
        }
        if self.projections_poll_ms == 0 {
            bail!("projections_poll_ms must be at least 1");
        }
        if self.rebuild_switch_lag < 0 {
            bail!("rebuild_switch_lag must be 0 or more records");
        }
        Ok(())
    }

    /// The dead-letter topic, explicit or derived from the event topic.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dead-letter", self.topic))
    }
}
