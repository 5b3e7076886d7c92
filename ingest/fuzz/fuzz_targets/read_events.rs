//! Fuzz target for everything of `POST /v1/events` that reads client bytes: the
//! `Content-Type` and `Content-Encoding` headers (`ingest::body::body_format`, `body_encoding`)
//! and the body (`ingest::body::read_events`: bounded gzip decoding, `schemas::parse_events`,
//! the tenant's rules).
//!
//! Properties asserted besides "no panic, no sanitizer report":
//! - accepted: at least one record and at most `max_events_per_request`; every record belongs to
//!   the tenant, carries the receive time, has an allowed type, fits the tenant's
//!   `max_event_bytes` (key plus value), and `Record::from_bytes(&record.to_bytes())` gives it
//!   back unchanged, so the projector can read everything ingest acknowledges;
//! - refused: the error is one `read_events` documents (invalid events, invalid gzip, body too
//!   large) and says something; an invalid-events refusal lists at least one problem, each with
//!   a reason. A refused header also says something.
//!
//! Input layout: a header of [`HEADER_BYTES`] bytes choosing the request, then (when flag bit 3
//! is set) the two HTTP header values, then the body as it is, so a seed file is a few binary
//! bytes followed by readable JSON.
//!
//! | byte | meaning |
//! |------|---------|
//! | 0 | flags: bit 0 NDJSON (else JSON), bit 1 gzip, bit 2 send the body bytes as the gzip stream (else compress them first), bit 3 header values from the input (else bits 0 and 1), bit 4 the tenant has `allowed_event_types`, bit 5 the tenant has `max_event_bytes`, bits 6-7 which [`Limits`] |
//! | 1 | which of [`EVENT_TYPES`] the tenant allows (bit mask) |
//! | 2 | the tenant's `max_event_bytes`: 16 + 16 × byte |
//! | 3 | parameter of the chosen limits |
//! | 4 | receive time: 0 for epoch 0, 255 for the last millisecond of year 9999, else hours after 2024-05-01 |
//! | 5 | `max_body_bytes`: 0 for 5 MiB, else 64 × byte |
//!
//! With flag bit 3, the body is preceded by `Content-Type` then `Content-Encoding`, each as one
//! length byte L and L - 1 bytes of value (L = 0: the header is absent).

#![no_main]

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

use ingest::ApiError;
use ingest::body::{Encoding, body_encoding, body_format, read_events};
use schemas::record::MAX_RECORD_TIME_MS;
use schemas::tenant::{RateLimit, RateLimitAlgorithm, Tenant};
use schemas::{BodyFormat, Limits, Record};

const HEADER_BYTES: usize = 6;

/// Types a fuzzed tenant may be restricted to (sorted, as the tenant file keeps them).
const EVENT_TYPES: [&str; 5] = ["a:b.c-d", "click", "edit", "page_view", "view"];

/// 2024-05-01T00:00:00Z in epoch milliseconds.
const MAY_2024_MS: i64 = 1_714_521_600_000;

fuzz_target!(|data: &[u8]| {
    let Some((header, rest)) = data.split_first_chunk::<HEADER_BYTES>() else {
        return;
    };
    let flags = header[0];

    let (format, encoding, body) = if flags & 0b1000 != 0 {
        let Some((headers, body)) = request_headers(rest) else {
            return;
        };
        let format = body_format(&headers);
        let encoding = body_encoding(&headers);
        match (format, encoding) {
            (Ok(format), Ok(encoding)) => (format, encoding, body),
            (Err(error), _) | (_, Err(error)) => {
                assert!(
                    !error.to_string().is_empty(),
                    "a header refusal says nothing"
                );
                return;
            }
        }
    } else {
        let format = if flags & 1 != 0 {
            BodyFormat::NdJson
        } else {
            BodyFormat::Json
        };
        let encoding = if flags & 0b10 != 0 {
            Encoding::Gzip
        } else {
            Encoding::Identity
        };
        (format, encoding, rest)
    };

    let body = if encoding == Encoding::Gzip && flags & 0b100 == 0 {
        gzip(body)
    } else {
        body.to_vec()
    };
    let tenant = tenant(flags, header[1], header[2]);
    let limits = limits(flags >> 6, header[3]);
    let received_ms = match header[4] {
        0 => 0,
        255 => MAX_RECORD_TIME_MS,
        hours => MAY_2024_MS + i64::from(hours) * 3_600_000,
    };
    let max_body_bytes = match header[5] {
        0 => 5 << 20,
        units => usize::from(units) * 64,
    };

    match read_events(
        &body,
        encoding,
        format,
        &tenant,
        received_ms,
        &limits,
        max_body_bytes,
    ) {
        Ok(records) => check_accepted(&records, &tenant, received_ms, &limits),
        Err(error) => check_refused(&error, encoding),
    }
});

fn check_accepted(records: &[Record], tenant: &Tenant, received_ms: i64, limits: &Limits) {
    assert!(!records.is_empty(), "an empty batch was accepted");
    assert!(
        records.len() <= limits.max_events_per_request,
        "{} events accepted, the limit is {}",
        records.len(),
        limits.max_events_per_request
    );
    for record in records {
        assert_eq!(record.tenant, tenant.name);
        assert_eq!(record.received_ms, received_ms);
        assert!(
            tenant.allows_event_type(&record.event_type),
            "type {:?} accepted, allowed are {:?}",
            record.event_type,
            tenant.allowed_event_types
        );
        let value = record.to_bytes();
        if let Some(limit) = tenant.max_event_bytes {
            let bytes = record.kafka_key().len() + value.len();
            assert!(
                bytes <= limit,
                "a {bytes}-byte event accepted, limit {limit}"
            );
        }
        match Record::from_bytes(&value) {
            Ok(read_back) => assert_eq!(&read_back, record, "the record changed on the way"),
            Err(error) => panic!(
                "an accepted event does not read back: {error}; value {}",
                String::from_utf8_lossy(&value)
            ),
        }
    }
}

fn check_refused(error: &ApiError, encoding: Encoding) {
    assert!(
        !error.to_string().is_empty(),
        "a refusal says nothing: {error:?}"
    );
    match error {
        ApiError::InvalidEvents { problems } => {
            assert!(!problems.is_empty(), "invalid events without a problem");
            for problem in problems {
                assert!(
                    !problem.reason.is_empty(),
                    "a problem without a reason: {problem:?}"
                );
            }
        }
        ApiError::InvalidGzip(reason) => {
            assert_eq!(encoding, Encoding::Gzip, "a gzip error for a plain body");
            assert!(!reason.is_empty(), "a gzip error without a reason");
        }
        ApiError::BodyTooLarge { .. } => {
            assert_eq!(encoding, Encoding::Gzip, "a plain body is measured before");
        }
        other => panic!("read_events gave an error it does not document: {other:?}"),
    }
}

/// The `Content-Type` and `Content-Encoding` headers at the start of `input`, and what follows
/// them; `None` when the input ends early or a value is not one an HTTP server would deliver.
fn request_headers(input: &[u8]) -> Option<(HeaderMap, &[u8])> {
    let mut headers = HeaderMap::new();
    let mut rest = input;
    for name in [CONTENT_TYPE, CONTENT_ENCODING] {
        let (value, after) = header_value(rest)?;
        if let Some(value) = value {
            insert(&mut headers, name, value)?;
        }
        rest = after;
    }
    Some((headers, rest))
}

/// One length-prefixed header value: length 0 is no header, length L is L - 1 bytes of value.
fn header_value(input: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let (&length, rest) = input.split_first()?;
    if length == 0 {
        return Some((None, rest));
    }
    let length = usize::from(length - 1);
    (rest.len() >= length).then(|| (Some(&rest[..length]), &rest[length..]))
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &[u8]) -> Option<()> {
    headers.insert(name, HeaderValue::from_bytes(value).ok()?);
    Some(())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder
        .write_all(bytes)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

fn tenant(flags: u8, types: u8, event_bytes: u8) -> Tenant {
    let allowed_event_types = (flags & 0b1_0000 != 0).then(|| {
        EVENT_TYPES
            .iter()
            .enumerate()
            .filter(|(index, _)| types & (1 << index) != 0)
            .map(|(_, name)| (*name).to_owned())
            .collect()
    });
    let max_event_bytes = (flags & 0b10_0000 != 0).then(|| 16 + 16 * usize::from(event_bytes));
    Tenant {
        name: "fuzz".to_owned(),
        rate_limit: RateLimit {
            events_per_second: 10_000,
            burst_events: 20_000,
            algorithm: RateLimitAlgorithm::Gcra,
        },
        max_event_bytes,
        max_body_bytes: None,
        allowed_event_types,
    }
}

/// Limits that pass `Limits::validate`: 0 the defaults, 1 tight ones, 2 no bound on counts,
/// sizes, depth or future times, 3 the defaults with `max_future_ms` from 0 to 255 × 10^12 ms
/// (past year 9999). Fields not named keep their defaults.
fn limits(choice: u8, parameter: u8) -> Limits {
    let limits = match choice {
        1 => Limits {
            max_events_per_request: 1 + usize::from(parameter & 0b11),
            max_string_bytes: 1 + 4 * usize::from((parameter >> 2) & 0b111),
            max_properties: 1 + usize::from((parameter >> 5) & 1),
            max_depth: 1 + usize::from(parameter >> 6),
            max_future_ms: 0,
            ..Limits::default()
        },
        2 => Limits {
            max_events_per_request: usize::MAX,
            max_string_bytes: usize::MAX,
            max_properties: usize::MAX,
            max_depth: usize::MAX,
            max_future_ms: i64::MAX,
            ..Limits::default()
        },
        3 => Limits {
            max_future_ms: i64::from(parameter) * 1_000_000_000_000,
            ..Limits::default()
        },
        _ => Limits::default(),
    };
    limits
        .validate()
        .expect("the fuzz target builds valid limits only");
    limits
}
