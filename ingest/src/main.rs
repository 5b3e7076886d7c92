//! The `ingest` binary: reads the config, sets up logging and the Prometheus recorder, binds
//! the listener and runs [`ingest::serve`] until SIGINT or SIGTERM.
//!
//! Guarantee: the global recorder and tracing subscriber are installed here, once, and never by
//! the library; on a signal the server stops accepting, finishes requests in flight and flushes
//! the producer within `shutdown_flush_ms`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use ingest::Config;
use service::{LogFormat, init_logging, shutdown_signal};

/// Request bodies of every size come and go at thousands per second; glibc's malloc spent about
/// a third of the CPU on them (see the root Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// HTTP ingest for the event pipeline: authenticates, validates and rate-limits events and
/// appends them to Kafka.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML); relative paths inside it resolve against the working directory.
    #[arg(long, env = "INGEST_CONFIG", default_value = "deploy/ingest.toml")]
    config: PathBuf,
    /// Listen address, overriding `listen` in the config.
    #[arg(long, env = "INGEST_LISTEN")]
    listen: Option<SocketAddr>,
    /// Kafka bootstrap servers, overriding `brokers` in the config.
    #[arg(long, env = "INGEST_BROKERS")]
    brokers: Option<String>,
    /// Log line format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "INGEST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);

    let mut config = Config::load(&args.config)
        .with_context(|| format!("cannot use config {}", args.config.display()))?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(brokers) = args.brokers {
        config.brokers = brokers;
    }

    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(ingest::telemetry::PRODUCE_LATENCY.to_owned()),
            ingest::telemetry::PRODUCE_LATENCY_BUCKETS_S,
        )
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the prometheus recorder")?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: is another process using it?",
                config.listen
            )
        })?;
    ingest::serve(config, listener, metrics, shutdown_signal()).await
}
