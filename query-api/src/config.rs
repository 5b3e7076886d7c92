//! The query API's configuration file (TOML) and its validation.
//!
//! Guarantee: a [`Config`] that passed [`Config::validate`] names at least one projector node,
//! every node is a plain `http://` base URL the client can call, and the projector timeout is
//! positive. Unknown keys are refused so a misspelt setting is never silently ignored.
//!
//! ```toml
//! listen = "127.0.0.1:8083"
//! projector_urls = ["http://127.0.0.1:8082"]
//! tenants_file = "deploy/tenants.toml"
//! projector_timeout_ms = 2000
//! cors_allowed_origins = ["https://dash.example.com"]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

/// Settings of one query API process.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the public HTTP API listens on.
    pub listen: SocketAddr,
    /// Base URL of every projector node; each serves `/internal/v1/...` for the partitions
    /// assigned to it. Adding a projector instance means adding its URL here.
    pub projector_urls: Vec<String>,
    /// The tenant file shared with ingest: maps API keys to tenants.
    pub tenants_file: PathBuf,
    /// How long one call to one projector node may take before that node counts as unreachable.
    #[serde(default = "default_projector_timeout_ms")]
    pub projector_timeout_ms: u64,
    /// Browser origins (`scheme://host[:port]`) allowed to call the API cross-origin, or `"*"`
    /// for any; empty (the default) answers no CORS request.
    #[serde(default)]
    pub cors_allowed_origins: Vec<String>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Toml { path: String, message: String },
    #[error("projector_urls is empty: list the base URL of every projector node")]
    NoProjectors,
    #[error("projector url {url:?} is not usable: {reason}")]
    ProjectorUrl { url: String, reason: String },
    #[error("projector_timeout_ms must be at least 1")]
    ZeroTimeout,
    #[error(
        "cors_allowed_origins entry {origin:?} is not an origin: write it as scheme://host[:port] \
         with no path, like \"https://dash.example.com\", or \"*\" alone for any origin"
    )]
    CorsOrigin { origin: String },
    #[error("cannot build the http client for projector nodes: {0}")]
    HttpClient(String),
}

/// A projector node's base URL, checked and normalised (no trailing slash in the path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeUrl {
    /// As written in the config, for answers and logs.
    pub display: String,
    /// Parsed, with a path ending in `/` so that segments can be appended.
    pub base: Url,
}

const DEFAULT_PROJECTOR_TIMEOUT_MS: u64 = 2_000;

fn default_projector_timeout_ms() -> u64 {
    DEFAULT_PROJECTOR_TIMEOUT_MS
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config = Config::from_toml(&text).map_err(|error| match error {
            ConfigError::Toml { message, .. } => ConfigError::Toml {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses and validates config TOML.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: "<inline>".into(),
            message: e.message().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: at least one node, usable URLs, a positive timeout.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node_urls()?;
        self.projector_timeout()?;
        self.cors_origins()?;
        Ok(())
    }

    /// The CORS origins, checked: `None` for any origin (`"*"`), else the exact origins (maybe
    /// none).
    pub(crate) fn cors_origins(&self) -> Result<Option<Vec<axum::http::HeaderValue>>, ConfigError> {
        let wildcard = self.cors_allowed_origins.iter().any(|o| o == "*");
        if wildcard {
            if self.cors_allowed_origins.len() > 1 {
                return Err(ConfigError::CorsOrigin { origin: "*".into() });
            }
            return Ok(None);
        }
        let mut origins = Vec::with_capacity(self.cors_allowed_origins.len());
        for raw in &self.cors_allowed_origins {
            let invalid = || ConfigError::CorsOrigin {
                origin: raw.clone(),
            };
            // A browser sends the origin serialised exactly so; anything else would never match.
            let url = Url::parse(raw).map_err(|_| invalid())?;
            if !matches!(url.scheme(), "http" | "https")
                || url.origin().ascii_serialization() != *raw
            {
                return Err(invalid());
            }
            origins.push(axum::http::HeaderValue::from_str(raw).map_err(|_| invalid())?);
        }
        Ok(Some(origins))
    }

    /// The projector timeout as a [`Duration`].
    pub(crate) fn projector_timeout(&self) -> Result<Duration, ConfigError> {
        if self.projector_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout);
        }
        Ok(Duration::from_millis(self.projector_timeout_ms))
    }

    /// The projector nodes, parsed, in config order.
    pub(crate) fn node_urls(&self) -> Result<Vec<NodeUrl>, ConfigError> {
        if self.projector_urls.is_empty() {
            return Err(ConfigError::NoProjectors);
        }
        let mut nodes: Vec<NodeUrl> = Vec::with_capacity(self.projector_urls.len());
        for raw in &self.projector_urls {
            let node = parse_node_url(raw)?;
            if nodes.iter().any(|seen| seen.base == node.base) {
                return Err(ConfigError::ProjectorUrl {
                    url: raw.clone(),
                    reason: "listed twice; each projector node once, or its partitions would be \
                             counted twice"
                        .into(),
                });
            }
            nodes.push(node);
        }
        Ok(nodes)
    }
}

fn parse_node_url(raw: &str) -> Result<NodeUrl, ConfigError> {
    let invalid = |reason: &str| ConfigError::ProjectorUrl {
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let mut base =
        Url::parse(raw).map_err(|e| invalid(&format!("{e}; write it like http://host:port")))?;
    if base.scheme() != "http" {
        return Err(invalid(
            "only http:// is supported for the internal projector api",
        ));
    }
    if base.host_str().is_none() {
        return Err(invalid("it has no host; write it like http://host:port"));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(invalid(
            "remove the query string or fragment; give only the base url",
        ));
    }
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(NodeUrl {
        display: raw.trim_end_matches('/').to_owned(),
        base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_parses_the_deploy_file() {
        let text = include_str!("../../deploy/query-api.toml");
        let config = Config::from_toml(text).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8083".parse().unwrap());
        assert_eq!(
            config.projector_urls,
            vec!["http://127.0.0.1:8082".to_owned()]
        );
        assert_eq!(config.tenants_file, PathBuf::from("deploy/tenants.toml"));
        let nodes = config.node_urls().unwrap();
        assert_eq!(nodes[0].display, "http://127.0.0.1:8082");
        assert_eq!(nodes[0].base.as_str(), "http://127.0.0.1:8082/");
    }

    #[test]
    fn test_config_rejects_unknown_keys_and_bad_nodes() {
        let base = "listen = \"127.0.0.1:0\"\ntenants_file = \"t.toml\"\n";

        let unknown = format!("{base}projector_urls = [\"http://a:1\"]\nprojector_url = \"x\"\n");
        let err = Config::from_toml(&unknown).unwrap_err().to_string();
        assert!(err.contains("projector_url"), "{err}");

        let empty = format!("{base}projector_urls = []\n");
        assert!(matches!(
            Config::from_toml(&empty),
            Err(ConfigError::NoProjectors)
        ));

        let https = format!("{base}projector_urls = [\"https://a:1\"]\n");
        let err = Config::from_toml(&https).unwrap_err().to_string();
        assert!(err.contains("http://"), "{err}");

        let twice = format!("{base}projector_urls = [\"http://a:1\", \"http://a:1/\"]\n");
        let err = Config::from_toml(&twice).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");

        let zero = format!("{base}projector_urls = [\"http://a:1\"]\nprojector_timeout_ms = 0\n");
        assert!(matches!(
            Config::from_toml(&zero),
            Err(ConfigError::ZeroTimeout)
        ));

        for bad in [
            "dash.example.com",
            "https://dash.example.com/",
            "ftp://a",
            "https://a/x",
        ] {
            let cors = format!(
                "{base}projector_urls = [\"http://a:1\"]\ncors_allowed_origins = [\"{bad}\"]\n"
            );
            let err = Config::from_toml(&cors).unwrap_err().to_string();
            assert!(err.contains("scheme://host[:port]"), "{bad}: {err}");
        }
        let mixed = format!(
            "{base}projector_urls = [\"http://a:1\"]\ncors_allowed_origins = [\"*\", \"https://a\"]\n"
        );
        assert!(matches!(
            Config::from_toml(&mixed),
            Err(ConfigError::CorsOrigin { .. })
        ));

        let prefixed = format!("{base}projector_urls = [\"http://a:1/projector\"]\n");
        let config = Config::from_toml(&prefixed).unwrap();
        assert_eq!(config.projector_timeout_ms, 2_000);
        assert!(config.cors_allowed_origins.is_empty(), "no CORS by default");
        assert_eq!(
            config.node_urls().unwrap()[0].base.as_str(),
            "http://a:1/projector/"
        );
    }
}
