//! The `ingest` binary: reads the config, sets up logging and the Prometheus recorder, binds
//! the listener and runs [`ingest::serve`] until SIGINT or SIGTERM.
//!
//! Guarantee: the global recorder and tracing subscriber are installed here, once, and never by
//! the library; on a signal the server stops accepting, finishes requests in flight and flushes
//! the producer within `shutdown_flush_ms`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::EnvFilter;

use ingest::Config;

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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);

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

/// Logs go to stderr; colours only when stderr is a terminal.
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!(signal = "SIGINT", "shutting down"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}
