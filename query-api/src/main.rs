//! The `query-api` binary: reads the config file, applies flag and environment overrides,
//! installs the process-wide metrics recorder and log subscriber, and serves until SIGINT or
//! SIGTERM.
//!
//! Guarantee: the process starts only with a valid config and a loadable tenant file, and on a
//! shutdown signal it stops accepting connections and finishes the requests in flight.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;

use query_api::Config;
use service::{LogFormat, init_logging, shutdown_signal};

/// Answers read-model queries by merging the sketches of every projector node.
#[derive(Debug, Parser)]
#[command(name = "query-api", version)]
struct Args {
    /// The TOML config file.
    #[arg(
        long,
        env = "QUERY_API_CONFIG",
        default_value = "deploy/query-api.toml"
    )]
    config: PathBuf,
    /// Overrides `listen`.
    #[arg(long, env = "QUERY_API_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Overrides `projector_urls`; repeat the flag, or separate URLs with commas in the variable.
    #[arg(
        long = "projector-url",
        env = "QUERY_API_PROJECTOR_URLS",
        value_delimiter = ','
    )]
    projector_urls: Vec<String>,
    /// Overrides `tenants_file`.
    #[arg(long, env = "QUERY_API_TENANTS_FILE")]
    tenants_file: Option<PathBuf>,
    /// Overrides `projector_timeout_ms`.
    #[arg(long, env = "QUERY_API_PROJECTOR_TIMEOUT_MS")]
    projector_timeout_ms: Option<u64>,
    /// Log line format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "QUERY_API_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);

    let config = load_config(&args)?;
    let metrics = query_api::register_histogram_buckets(PrometheusBuilder::new())
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the prometheus recorder")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    query_api::serve(config, listener, metrics, shutdown_signal()).await
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = Config::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if !args.projector_urls.is_empty() {
        config.projector_urls = args.projector_urls.clone();
    }
    if let Some(tenants_file) = &args.tenants_file {
        config.tenants_file = tenants_file.clone();
    }
    if let Some(timeout_ms) = args.projector_timeout_ms {
        config.projector_timeout_ms = timeout_ms;
    }
    config
        .validate()
        .context("the config is invalid after applying flags and environment")?;
    Ok(config)
}
