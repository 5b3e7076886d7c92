//! `produce`: loads a data file into the pipeline, and reports the pipeline's answers against
//! exact values computed from the same file.
//!
//! ```text
//! produce send --format access-log data.log.gz --ingest http://127.0.0.1:8081 --api-key KEY
//! produce send --format wikipedia edits.ndjson.gz --kafka 127.0.0.1:9092 --tenant wiki
//! produce report --format access-log data.log.gz --query-api http://127.0.0.1:8083 --api-key KEY
//! ```

mod mapping;
mod report;
mod send;
mod synthetic;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use mapping::{DataFormat, read_events};
use readmodel::ProjectionFile;

#[derive(Parser)]
#[command(about = "Loads data files into the pipeline and checks its answers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send a file's events through ingest, or straight to the topic.
    Send(SendArgs),
    /// Print the query API's answers next to exact values computed from the file.
    Report(ReportArgs),
    /// Produce a synthetic stream of page views straight to the topic, for benchmarks.
    Synthetic(SyntheticArgs),
}

#[derive(Args)]
struct SyntheticArgs {
    /// Events to produce.
    #[arg(long)]
    count: u64,
    /// Kafka bootstrap servers.
    #[arg(long)]
    kafka: String,
    /// Topic.
    #[arg(long, default_value = "events")]
    topic: String,
    /// Tenant stored in the records.
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Distinct event keys (users).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Distinct paths, drawn with a skew (path n about 1/n as often as path 1).
    #[arg(long, default_value_t = 10_000)]
    paths: u64,
    /// Spread the event times evenly over this many days from the start (default: 10 ms
    /// between events).
    #[arg(long)]
    span_days: Option<u32>,
    /// Time of the first event, epoch ms (default: 2024-01-01T00:00:00Z).
    #[arg(long, default_value_t = synthetic::START_MS)]
    start_ms: i64,
    /// Number in the first event's id (`synthetic-N`): a run that adds to a stream starts past
    /// the ids already sent, or its events are dropped as retried duplicates.
    #[arg(long, default_value_t = 0)]
    first_id: u64,
}

#[derive(Args)]
struct Input {
    /// Layout of the file.
    #[arg(long, value_enum)]
    format: DataFormat,
    /// The data file (`.gz` is decompressed).
    file: PathBuf,
}

#[derive(Args)]
struct SendArgs {
    #[command(flatten)]
    input: Input,
    /// Ingest base URL; events go through ingest (authenticated, rate limited).
    #[arg(long, conflicts_with = "kafka")]
    ingest: Option<String>,
    /// API key of the tenant, for ingest.
    #[arg(long, env = "PRODUCE_API_KEY")]
    api_key: Option<String>,
    /// Kafka bootstrap servers; events go straight to the topic.
    #[arg(long)]
    kafka: Option<String>,
    /// Topic, when producing straight to Kafka.
    #[arg(long, default_value = "events")]
    topic: String,
    /// Tenant stored in the records, when producing straight to Kafka.
    #[arg(long)]
    tenant: Option<String>,
    /// Events per request to ingest.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Requests in flight to ingest.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

#[derive(Args)]
struct ReportArgs {
    #[command(flatten)]
    input: Input,
    /// Query API base URL.
    #[arg(long, default_value = "http://127.0.0.1:8083")]
    query_api: String,
    /// API key of the tenant the file was loaded into.
    #[arg(long, env = "PRODUCE_API_KEY")]
    api_key: String,
    /// Tenant name, as printed and as stored in the records.
    #[arg(long)]
    tenant: String,
    /// The projection file the projector runs with.
    #[arg(long, default_value = "deploy/projections.toml")]
    projections: PathBuf,
    /// How long to wait for the read models to catch up first.
    #[arg(long, default_value_t = 180)]
    wait_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Send(args) => send(args).await,
        Command::Report(args) => report(args).await,
        Command::Synthetic(args) => synthetic(args).await,
    }
}

async fn synthetic(args: SyntheticArgs) -> anyhow::Result<()> {
    if args.keys == 0 || args.paths == 0 {
        bail!("--keys and --paths must be at least 1");
    }
    let step_ms = match args.span_days {
        None => synthetic::DEFAULT_STEP_MS,
        Some(0) => bail!("--span-days must be at least 1"),
        Some(days) => (i64::from(days) * 86_400_000 / args.count.max(1) as i64).max(1),
    };
    let layout = synthetic::Layout {
        start_ms: args.start_ms,
        step_ms,
        first_id: args.first_id,
    };
    let records = synthetic::page_views(&args.tenant, args.count, args.keys, args.paths, layout);
    let sent = send::records_to_kafka(records, args.count, &args.kafka, &args.topic).await?;
    println!("{sent}");
    Ok(())
}

async fn send(args: SendArgs) -> anyhow::Result<()> {
    let mapped = load(&args.input)?;
    let sent = match (&args.ingest, &args.kafka) {
        (Some(url), None) => {
            let key = args
                .api_key
                .as_deref()
                .context("--api-key (or PRODUCE_API_KEY) is required with --ingest")?;
            if args.batch_size == 0 {
                bail!("--batch-size must be at least 1");
            }
            send::to_ingest(mapped, url, key, args.batch_size, args.concurrency).await?
        }
        (None, Some(brokers)) => {
            let tenant = args
                .tenant
                .as_deref()
                .context("--tenant is required with --kafka")?;
            send::to_kafka(mapped, brokers, &args.topic, tenant).await?
        }
        _ => bail!("give exactly one of --ingest URL or --kafka BROKERS"),
    };
    println!("{sent}");
    Ok(())
}

async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let events = load(&args.input)?;
    let projections = ProjectionFile::load(&args.projections)
        .with_context(|| format!("invalid projection file {}", args.projections.display()))?;
    let api = report::QueryApi::new(&args.query_api, &args.api_key)?;
    api.wait_caught_up(Duration::from_secs(args.wait_secs))
        .await?;
    let text = report::report(&events, &args.tenant, &projections, &api).await?;
    print!("{text}");
    Ok(())
}

/// Reads a file, telling about lines that could not be mapped.
fn load(input: &Input) -> anyhow::Result<Vec<serde_json::Value>> {
    let mapped = read_events(&input.file, input.format)?;
    if !mapped.skipped.is_empty() {
        eprintln!(
            "produce: {} lines of {} could not be mapped and are not sent:",
            mapped.skipped.len(),
            input.file.display()
        );
        for (line, reason) in mapped.skipped.iter().take(10) {
            eprintln!("  line {line}: {reason}");
        }
    }
    if mapped.events.is_empty() {
        bail!("{} holds no events", input.file.display());
    }
    Ok(mapped.events)
}
