//! Metric names of the ingest service and their descriptions.
//!
//! Guarantee: every metric ingest records is named here, once; the handlers use these constants
//! so a rename cannot miss a call site. Metrics go to whatever global `metrics` recorder the
//! process installed; this crate never installs one.
//!
//! | name | kind | labels | meaning |
//! | --- | --- | --- | --- |
//! | `ingest_events_received_total` | counter | | events in requests that authenticated and parsed |
//! | `ingest_events_accepted_total` | counter | | events acknowledged by Kafka and answered 202 |
//! | `ingest_events_rejected_total` | counter | `reason` | events of parsed requests refused: `rate_limited`, `batch_exceeds_burst`, `queue_full`, `kafka_timeout`, `kafka_error`, `record_too_large`, `no_metadata` |
//! | `ingest_events_rate_limited_total` | counter | `tenant` | events refused by the tenant's rate limit |
//! | `ingest_requests_total` | counter | `status` | `POST /v1/events` requests by HTTP status code |
//! | `ingest_produce_latency_seconds` | histogram | | time from the first record of a request entering the producer to the last acknowledgement (or failure) |
//! | `ingest_kafka_ready` | gauge | | 1 while topic metadata can be read from Kafka, else 0 |
//! | `ingest_kafka_brokers_up` | gauge | | brokers of the cluster the producer has an open, working connection to (librdkafka state `UP`), from statistics read every second |
//! | `ingest_producer_queue_records` | gauge | | records in the producer, queued or waiting for their acknowledgement (at most `queue_max_messages`), read at each scrape |
//! | `ingest_buffered_body_bytes` | gauge | | bytes of the body budget (`max_buffered_body_bytes`) held by requests, read at each scrape |
//! | `ingest_rate_limit_fallback` | gauge | | 1 while Redis is configured for shared rate limits but does not answer, so this replica enforces its local share (`quota / replica_count`); else 0 |
//! | `ingest_tenant_reloads_total` | counter | `result` | reloads of the tenant file (on change or SIGHUP): `reloaded`, or `refused` when the new version is invalid and the previous one stays in force |
//!
//! Requests refused before their events are known (401, 413, 415, 400, and 503 `overloaded`)
//! count only in `ingest_requests_total`.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const EVENTS_RECEIVED: &str = "ingest_events_received_total";
pub const EVENTS_ACCEPTED: &str = "ingest_events_accepted_total";
pub const EVENTS_REJECTED: &str = "ingest_events_rejected_total";
pub const EVENTS_RATE_LIMITED: &str = "ingest_events_rate_limited_total";
pub const REQUESTS: &str = "ingest_requests_total";
pub const PRODUCE_LATENCY: &str = "ingest_produce_latency_seconds";
pub const KAFKA_READY: &str = "ingest_kafka_ready";
pub const RATE_LIMIT_FALLBACK: &str = "ingest_rate_limit_fallback";
pub const TENANT_RELOADS: &str = "ingest_tenant_reloads_total";
pub const KAFKA_BROKERS_UP: &str = "ingest_kafka_brokers_up";
pub const PRODUCER_QUEUE_RECORDS: &str = "ingest_producer_queue_records";
pub const BUFFERED_BODY_BYTES: &str = "ingest_buffered_body_bytes";

/// Histogram buckets, in seconds, suggested for [`PRODUCE_LATENCY`] (the binary installs them
/// with `PrometheusBuilder::set_buckets_for_metric`).
pub const PRODUCE_LATENCY_BUCKETS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers the descriptions of every ingest metric with the installed recorder.
pub fn describe() {
    describe_counter!(
        EVENTS_RECEIVED,
        Unit::Count,
        "events in requests that authenticated and parsed"
    );
    describe_counter!(
        EVENTS_ACCEPTED,
        Unit::Count,
        "events acknowledged by kafka and answered 202"
    );
    describe_counter!(
        EVENTS_REJECTED,
        Unit::Count,
        "events of parsed requests that were refused, by reason"
    );
    describe_counter!(
        EVENTS_RATE_LIMITED,
        Unit::Count,
        "events refused by the rate limit of their tenant"
    );
    describe_counter!(REQUESTS, Unit::Count, "POST /v1/events requests by status");
    describe_histogram!(
        PRODUCE_LATENCY,
        Unit::Seconds,
        "time for kafka to acknowledge every record of one request"
    );
    describe_gauge!(
        KAFKA_READY,
        "1 while kafka topic metadata can be read, else 0"
    );
    describe_gauge!(
        RATE_LIMIT_FALLBACK,
        "1 while redis does not answer and this replica enforces its local share of each quota"
    );
    describe_gauge!(
        KAFKA_BROKERS_UP,
        "brokers the producer has a working connection to"
    );
    describe_gauge!(
        PRODUCER_QUEUE_RECORDS,
        Unit::Count,
        "records in the kafka producer, queued or waiting for acknowledgement"
    );
    describe_gauge!(
        BUFFERED_BODY_BYTES,
        Unit::Bytes,
        "request body bytes held, out of max_buffered_body_bytes"
    );
    describe_counter!(
        TENANT_RELOADS,
        Unit::Count,
        "reloads of the tenant file, by result (reloaded or refused)"
    );
}
