//! `projector`: runs a projector node, or rebuilds its read models from the log.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metrics_exporter_prometheus::PrometheusBuilder;
use service::{LogFormat, init_logging, shutdown_signal};

#[derive(Parser)]
#[command(about = "Folds the event log into sketch read models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the topic and serve the internal endpoint until SIGINT or SIGTERM.
    Run {
        #[arg(
            long,
            env = "PROJECTOR_CONFIG",
            default_value = "deploy/projector.toml"
        )]
        config: PathBuf,
    },
    /// Rebuild every projection from the start of the topic into fresh state, then swap it in;
    /// or rebuild one projection in place. The node must be stopped.
    Replay {
        #[arg(
            long,
            env = "PROJECTOR_CONFIG",
            default_value = "deploy/projector.toml"
        )]
        config: PathBuf,
        /// Start from the records appended at this time (RFC 3339, e.g. 2024-05-01T00:00:00Z,
        /// or epoch milliseconds) instead of the start of the log.
        #[arg(long, value_parser = parse_time)]
        from: Option<i64>,
        /// Rebuild only this projection, up to the offsets of the live store; the others are
        /// left as they are.
        #[arg(long)]
        projection: Option<String>,
        /// Threads folding partitions side by side (default: one per core, at most one per
        /// partition).
        #[arg(long)]
        threads: Option<NonZeroUsize>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs go to stderr: stdout carries only command output, such as the replay summary.
    init_logging(cli.log_format);

    match cli.command {
        Command::Run { config } => {
            let config = projector::Config::load(&config)?;
            let metrics = PrometheusBuilder::new()
                .install_recorder()
                .context("cannot install the metrics recorder")?;
            let listener = tokio::net::TcpListener::bind(config.internal_listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.internal_listen))?;
            projector::serve(config, listener, metrics, shutdown_signal()).await
        }
        Command::Replay {
            config,
            from,
            projection,
            threads,
        } => {
            let config = projector::Config::load(&config)?;
            let options = projector::replay::ReplayOptions {
                from_ms: from,
                projection,
                threads,
            };
            let summary =
                tokio::task::spawn_blocking(move || projector::replay::replay(&config, &options))
                    .await
                    .context("replay panicked")??;
            println!("{summary}");
            Ok(())
        }
    }
}

/// A time given on the command line, as epoch milliseconds.
fn parse_time(text: &str) -> Result<i64, String> {
    let ms = match text.parse::<i64>() {
        Ok(ms) => ms,
        Err(_) => {
            let instant =
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| {
                    format!("{text:?} is neither RFC 3339 (2024-05-01T00:00:00Z) nor epoch ms: {e}")
                })?;
            i64::try_from(instant.unix_timestamp_nanos() / 1_000_000)
                .map_err(|_| format!("{text:?} is out of range"))?
        }
    };
    // Kafka looks offsets up by append time, which is never before 1970.
    if ms < 0 {
        return Err(format!(
            "{text:?} is before 1970-01-01T00:00:00Z; Kafka keeps no records from before then"
        ));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_start_times_are_epoch_ms_or_rfc_3339_from_1970_on() {
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(parse_time("2024-05-01T00:00:00Z"), Ok(1_714_521_600_000));
        for before in ["-1", "1969-12-31T23:59:59Z"] {
            let error = parse_time(before).unwrap_err();
            assert!(error.contains("before 1970"), "{error}");
        }
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
