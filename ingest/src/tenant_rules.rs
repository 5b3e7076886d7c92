//! The tenant file's rules for the events of a parsed batch, besides the rate limit: which event
//! types the tenant may send (`allowed_event_types`) and how large one event may be
//! (`max_event_bytes`, measured like Kafka's record limit: key plus value bytes).
//!
//! Guarantee: a batch passes only if every event passes; otherwise every offending event is
//! reported as a [`Problem`] with the same path `schemas::parse_events` would give it (`[3]`,
//! `line 7`, or `""` for a lone object), and a type problem lists the allowed types, so the
//! client can fix the whole batch at once.

use std::io::Write;

use schemas::tenant::Tenant;
use schemas::{BodyFormat, Problem, Record};

/// Checks `records`, parsed from `body` in `format`, against the rules of `tenant`.
pub fn check_batch(
    tenant: &Tenant,
    records: &[Record],
    body: &[u8],
    format: BodyFormat,
) -> Result<(), Vec<Problem>> {
    if tenant.allowed_event_types.is_none() && tenant.max_event_bytes.is_none() {
        return Ok(());
    }
    let paths = event_paths(body, format, records.len());
    let mut problems = Vec::new();
    for (record, path) in records.iter().zip(&paths) {
        if !tenant.allows_event_type(&record.event_type) {
            let allowed = tenant
                .allowed_event_types
                .as_deref()
                .unwrap_or_default()
                .join(", ");
            problems.push(Problem::new(
                field_path(path, "type"),
                format!(
                    "type {:?} is not allowed for tenant {:?}: send one of {allowed}",
                    record.event_type, tenant.name
                ),
            ));
        }
        if let Some(limit) = tenant.max_event_bytes {
            let bytes = record_bytes(record);
            if bytes > limit {
                problems.push(Problem::new(
                    path.clone(),
                    format!(
                        "the event is {bytes} bytes as a kafka record (key plus value), more than \
                         the {limit} tenant {:?} may send: send smaller events",
                        tenant.name
                    ),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Key plus value bytes of the Kafka record of `record`, counted without building the value.
fn record_bytes(record: &Record) -> usize {
    let mut counter = ByteCounter(0);
    // A record always serializes (see `Record::to_bytes`); writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, record);
    record.key.len() + counter.0
}

/// The path `parse_events` gives each of the `count` events of `body`.
fn event_paths(body: &[u8], format: BodyFormat, count: usize) -> Vec<String> {
    match format {
        BodyFormat::Json => {
            let array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
            if array {
                (0..count).map(|index| format!("[{index}]")).collect()
            } else {
                vec![String::new(); count]
            }
        }
        BodyFormat::NdJson => body
            .split(|&byte| byte == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .map(|(index, _)| format!("line {}", index + 1))
            .collect(),
    }
}

/// `field` inside the event at `path`, written as `parse_events` writes it.
fn field_path(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else if path.starts_with('[') {
        format!("{path}.{field}")
    } else {
        format!("{path}: {field}")
    }
}

struct ByteCounter(usize);

impl Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use schemas::tenant::TenantFile;
    use schemas::{Limits, parse_events};

    use super::*;

    fn tenant(rules: &str) -> Tenant {
        let text = format!(
            "[[tenant]]\nname = \"t\"\n\
             api_key_sha256 = [\"{}\"]\n{rules}\n",
            schemas::tenant::api_key_sha256_hex("t-key-0001")
        );
        let file = TenantFile::from_toml(&text).unwrap();
        (*file.tenants()[0]).clone()
    }

    fn check(tenant: &Tenant, body: &str, format: BodyFormat) -> Result<(), Vec<Problem>> {
        let records =
            parse_events(body.as_bytes(), format, "t", 1_000, &Limits::default()).unwrap();
        check_batch(tenant, &records, body.as_bytes(), format)
    }

    #[test]
    fn test_check_batch_lists_every_event_of_a_type_not_allowed() {
        let tenant = tenant("allowed_event_types = [\"view\", \"click\"]");
        let body =
            r#"[{"type":"view","key":"a"},{"type":"edit","key":"b"},{"type":"x","key":"c"}]"#;
        let problems = check(&tenant, body, BodyFormat::Json).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["[1].type", "[2].type"]);
        assert!(
            problems[0].reason.contains("click, view"),
            "{}",
            problems[0].reason
        );

        let ndjson = "{\"type\":\"view\",\"key\":\"a\"}\n\n{\"type\":\"edit\",\"key\":\"b\"}\n";
        let problems = check(&tenant, ndjson, BodyFormat::NdJson).unwrap_err();
        assert_eq!(problems[0].path, "line 3: type");

        let lone = r#"{"type":"edit","key":"a"}"#;
        let problems = check(&tenant, lone, BodyFormat::Json).unwrap_err();
        assert_eq!(problems[0].path, "type");
        assert!(check(&tenant, r#"{"type":"click","key":"a"}"#, BodyFormat::Json).is_ok());
    }

    #[test]
    fn test_check_batch_measures_events_as_kafka_records() {
        let body = r#"[{"type":"view","key":"a"},{"type":"view","key":"b","properties":{"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}]"#;
        let records = parse_events(
            body.as_bytes(),
            BodyFormat::Json,
            "t",
            1_000,
            &Limits::default(),
        )
        .unwrap();
        let small = records[0].key.len() + records[0].to_bytes().len();
        assert_eq!(record_bytes(&records[0]), small);

        let tenant = tenant(&format!("max_event_bytes = {small}"));
        let problems =
            check_batch(&tenant, &records, body.as_bytes(), BodyFormat::Json).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "[1]");
        assert!(
            problems[0]
                .reason
                .contains(&format!("more than the {small}")),
            "{}",
            problems[0].reason
        );
    }
}
