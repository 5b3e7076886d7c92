//! The Kafka record: the value ingest appends for each accepted event, and its encoding.
//!
//! Guarantee: [`Record::from_bytes`] accepts only values of schema version [`SCHEMA_VERSION`]
//! with exactly the documented fields and a non-empty tenant, key and type; anything else is a
//! typed [`RecordError`], never a panic. [`Record::to_bytes`] output always decodes back to an
//! equal record. The record's Kafka key is the event key's UTF-8 bytes.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::error::Category;
use serde_json::{Map, Value};

use crate::field::{FieldPath, FieldTarget};

/// Version of the record value format. Bumped on any change readers must know about.
pub const SCHEMA_VERSION: u32 = 1;

/// The Kafka record value (schema version 1), JSON. The record's Kafka key is the event key bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Schema version; must equal [`SCHEMA_VERSION`].
    pub v: u32,
    /// Tenant that owns the event (from the API key, never from the event).
    pub tenant: String,
    /// Client-chosen event id, used to drop retried duplicates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What happened, e.g. `page_view`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The entity the event is about (user, device, client address); also the Kafka key.
    pub key: String,
    /// Event time, epoch milliseconds UTC (the receive time when the client sent none).
    pub time_ms: i64,
    /// When ingest (or the producing tool) accepted the event, epoch milliseconds UTC.
    pub received_ms: i64,
    /// Free-form event properties.
    #[serde(default)]
    pub properties: Map<String, Value>,
}

/// Why bytes are not a schema version 1 record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record value is not JSON: {reason}")]
    NotJson { reason: String },
    #[error(
        "record schema version {found} is not supported: this build reads version {SCHEMA_VERSION} \
         only; upgrade the reader or produce version {SCHEMA_VERSION} records"
    )]
    UnsupportedVersion { found: u64 },
    #[error("record value is not a valid version {SCHEMA_VERSION} record: {reason}")]
    Invalid { reason: String },
}

impl RecordError {
    /// A short, fixed name of the error's kind, fit for a metric label: `not_json`,
    /// `unsupported_version` or `invalid`.
    pub fn kind(&self) -> &'static str {
        match self {
            RecordError::NotJson { .. } => "not_json",
            RecordError::UnsupportedVersion { .. } => "unsupported_version",
            RecordError::Invalid { .. } => "invalid",
        }
    }
}

/// Latest time a record may carry: 9999-12-31T23:59:59.999Z, in epoch milliseconds.
pub const MAX_RECORD_TIME_MS: i64 = 253_402_300_799_999;

impl Record {
    /// The record value: compact JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, integers and a JSON map has no value serde_json can refuse.
        serde_json::to_vec(self).expect("a record always serializes to JSON")
    }

    /// Decodes a record value, checking the version, that tenant, key and type are non-empty,
    /// and that its times lie between 1970 and the end of year 9999.
    pub fn from_bytes(bytes: &[u8]) -> Result<Record, RecordError> {
        let record: Record = match serde_json::from_slice(bytes) {
            Ok(record) => record,
            Err(error) => return Err(decode_error(bytes, &error)),
        };
        if record.v != SCHEMA_VERSION {
            return Err(RecordError::UnsupportedVersion {
                found: u64::from(record.v),
            });
        }
        for (name, value) in [
            ("tenant", &record.tenant),
            ("key", &record.key),
            ("type", &record.event_type),
        ] {
            if value.is_empty() {
                return Err(RecordError::Invalid {
                    reason: format!("`{name}` is empty"),
                });
            }
        }
        for (name, value) in [
            ("time_ms", record.time_ms),
            ("received_ms", record.received_ms),
        ] {
            if !(0..=MAX_RECORD_TIME_MS).contains(&value) {
                return Err(RecordError::Invalid {
                    reason: format!(
                        "`{name}` is {value}: it must be epoch milliseconds between 0 and \
                         {MAX_RECORD_TIME_MS} (year 9999)"
                    ),
                });
            }
        }
        Ok(record)
    }

    /// The Kafka key of the record: the event key's UTF-8 bytes.
    pub fn kafka_key(&self) -> &[u8] {
        self.key.as_bytes()
    }

    /// The string value of a field: strings as they are, numbers and booleans as their JSON
    /// text; `None` when the field is missing, null, an object or an array.
    pub fn field(&self, path: &FieldPath) -> Option<Cow<'_, str>> {
        match path.target() {
            FieldTarget::Key => Some(Cow::Borrowed(&self.key)),
            FieldTarget::Type => Some(Cow::Borrowed(&self.event_type)),
            FieldTarget::Id => self.id.as_deref().map(Cow::Borrowed),
            FieldTarget::Tenant => Some(Cow::Borrowed(&self.tenant)),
            FieldTarget::Property(names) => {
                let (first, rest) = names.split_first()?;
                let mut value = self.properties.get(first)?;
                for name in rest {
                    value = value.as_object()?.get(name)?;
                }
                scalar_text(value)
            }
        }
    }
}

/// Turns a serde error into a [`RecordError`], reporting a foreign version as such even when
/// that version's fields do not fit this one's struct.
fn decode_error(bytes: &[u8], error: &serde_json::Error) -> RecordError {
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => RecordError::NotJson {
            reason: error.to_string(),
        },
        Category::Data => {
            let declared = serde_json::from_slice::<Value>(bytes)
                .ok()
                .and_then(|value| value.get("v").and_then(Value::as_u64));
            match declared {
                Some(found) if found != u64::from(SCHEMA_VERSION) => {
                    RecordError::UnsupportedVersion { found }
                }
                _ => RecordError::Invalid {
                    reason: error.to_string(),
                },
            }
        }
    }
}

fn scalar_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(text) => Some(Cow::Borrowed(text)),
        Value::Number(number) => Some(Cow::Owned(number.to_string())),
        Value::Bool(true) => Some(Cow::Borrowed("true")),
        Value::Bool(false) => Some(Cow::Borrowed("false")),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> Record {
        let properties = json!({
            "country": "NL",
            "count": 3,
            "ratio": 0.5,
            "big": 18_446_744_073_709_551_615u64,
            "negative": -7,
            "paid": true,
            "free": false,
            "nothing": null,
            "tags": ["a", "b"],
            "geo": {"city": "Utrecht", "zip": 3511, "deeper": {"x": "y"}}
        });
        Record {
            v: SCHEMA_VERSION,
            tenant: "weblog".into(),
            id: Some("evt-1".into()),
            event_type: "page_view".into(),
            key: "user-1".into(),
            time_ms: 1_714_564_800_000,
            received_ms: 1_714_564_800_123,
            properties: properties.as_object().unwrap().clone(),
        }
    }

    fn path(text: &str) -> FieldPath {
        text.parse().unwrap()
    }

    #[test]
    fn test_record_with_time_out_of_range_is_refused() {
        for time_ms in [-1, MAX_RECORD_TIME_MS + 1, i64::MAX] {
            let record = Record {
                time_ms,
                ..sample()
            };
            let err = Record::from_bytes(&record.to_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains("time_ms"), "{err}");
        }
        let edge = Record {
            time_ms: MAX_RECORD_TIME_MS,
            ..sample()
        };
        assert!(Record::from_bytes(&edge.to_bytes()).is_ok());
    }

    #[test]
    fn test_record_round_trips_through_bytes() {
        let record = sample();
        assert_eq!(Record::from_bytes(&record.to_bytes()).unwrap(), record);

        let minimal = Record {
            id: None,
            properties: Map::new(),
            ..sample()
        };
        let bytes = minimal.to_bytes();
        assert!(!String::from_utf8_lossy(&bytes).contains("\"id\""));
        assert_eq!(Record::from_bytes(&bytes).unwrap(), minimal);
    }

    #[test]
    fn test_record_bytes_are_the_documented_json() {
        let record = Record {
            properties: json!({"path": "/"}).as_object().unwrap().clone(),
            ..sample()
        };
        let text = String::from_utf8(record.to_bytes()).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"v":1,"tenant":"weblog","id":"evt-1","type":"page_view","key":"user-1","#,
                r#""time_ms":1714564800000,"received_ms":1714564800123,"properties":{"path":"/"}}"#
            )
        );
        assert_eq!(record.kafka_key(), b"user-1");
    }

    #[test]
    fn test_record_decodes_without_optional_fields() {
        let bytes = br#"{"v":1,"tenant":"t","type":"x","key":"k","time_ms":5,"received_ms":6}"#;
        let record = Record::from_bytes(bytes).unwrap();
        assert_eq!(record.id, None);
        assert!(record.properties.is_empty());
        assert_eq!(record.time_ms, 5);
    }

    #[test]
    fn test_record_rejects_other_versions() {
        let two = br#"{"v":2,"tenant":"t","type":"x","key":"k","time_ms":5,"received_ms":6}"#;
        assert_eq!(
            Record::from_bytes(two),
            Err(RecordError::UnsupportedVersion { found: 2 })
        );
        // A future version with fields this one does not know is still reported as a version.
        let future = br#"{"v":7,"tenant":"t","kind":"x","key":"k","at":5}"#;
        assert_eq!(
            Record::from_bytes(future),
            Err(RecordError::UnsupportedVersion { found: 7 })
        );
        let zero = br#"{"v":0,"tenant":"t","type":"x","key":"k","time_ms":5,"received_ms":6}"#;
        let err = Record::from_bytes(zero).unwrap_err();
        assert_eq!(err, RecordError::UnsupportedVersion { found: 0 });
        assert!(
            err.to_string().contains("version 0 is not supported"),
            "{err}"
        );
        assert_eq!(err.kind(), "unsupported_version");
        let huge = br#"{"v":99999999999,"tenant":"t"}"#;
        assert_eq!(
            Record::from_bytes(huge),
            Err(RecordError::UnsupportedVersion {
                found: 99_999_999_999
            })
        );
    }

    #[test]
    fn test_record_rejects_values_that_are_not_records() {
        let not_json = Record::from_bytes(b"\x00\x01binary").unwrap_err();
        assert!(
            matches!(not_json, RecordError::NotJson { .. }),
            "{not_json:?}"
        );
        assert_eq!(not_json.kind(), "not_json");
        let truncated = Record::from_bytes(br#"{"v":1,"tenant":"#).unwrap_err();
        assert!(
            matches!(truncated, RecordError::NotJson { .. }),
            "{truncated:?}"
        );

        let valid = json!({
            "v": 1, "tenant": "t", "type": "x", "key": "k", "time_ms": 5, "received_ms": 6
        });
        let with = |field: &str, value: Value| {
            let mut record = valid.clone();
            record[field] = value;
            serde_json::to_vec(&record).unwrap()
        };
        let cases = [
            (b"[1,2]".to_vec(), "invalid type"),
            (br#"{"v":1}"#.to_vec(), "missing field"),
            (with("v", json!("1")), "invalid type"),
            (with("time_ms", json!(1.5)), "invalid type"),
            (with("properties", json!([1])), "invalid type"),
            (with("extra", json!(1)), "unknown field `extra`"),
            (with("tenant", json!("")), "`tenant` is empty"),
            (with("type", json!("")), "`type` is empty"),
            (with("key", json!("")), "`key` is empty"),
        ];
        for (bytes, expected) in cases {
            let err = Record::from_bytes(&bytes).unwrap_err();
            assert!(matches!(err, RecordError::Invalid { .. }), "{err:?}");
            assert_eq!(err.kind(), "invalid");
            assert!(err.to_string().contains(expected), "{err} lacks {expected}");
        }
    }

    #[test]
    fn test_record_field_reads_top_level_fields() {
        let record = sample();
        assert_eq!(record.field(&path("key")).unwrap(), "user-1");
        assert_eq!(record.field(&path("type")).unwrap(), "page_view");
        assert_eq!(record.field(&path("id")).unwrap(), "evt-1");
        assert_eq!(record.field(&path("tenant")).unwrap(), "weblog");
        let no_id = Record {
            id: None,
            ..sample()
        };
        assert_eq!(no_id.field(&path("id")), None);
    }

    #[test]
    fn test_record_field_reads_properties_as_text() {
        let record = sample();
        assert_eq!(record.field(&path("properties.country")).unwrap(), "NL");
        assert_eq!(record.field(&path("properties.count")).unwrap(), "3");
        assert_eq!(record.field(&path("properties.ratio")).unwrap(), "0.5");
        assert_eq!(
            record.field(&path("properties.big")).unwrap(),
            "18446744073709551615"
        );
        assert_eq!(record.field(&path("properties.negative")).unwrap(), "-7");
        assert_eq!(record.field(&path("properties.paid")).unwrap(), "true");
        assert_eq!(record.field(&path("properties.free")).unwrap(), "false");
        assert_eq!(
            record.field(&path("properties.geo.city")).unwrap(),
            "Utrecht"
        );
        assert_eq!(record.field(&path("properties.geo.zip")).unwrap(), "3511");
        assert_eq!(record.field(&path("properties.geo.deeper.x")).unwrap(), "y");
    }

    #[test]
    fn test_record_keeps_decimal_text_through_bytes() {
        // Needs serde_json's float_roundtrip: the default parser lands an ulp off for these.
        let bytes = concat!(
            r#"{"v":1,"tenant":"t","type":"x","key":"k","time_ms":5,"received_ms":6,"#,
            r#""properties":{"a":952842902170.49,"b":-231032730553.06705,"c":0.1}}"#
        );
        let record = Record::from_bytes(bytes.as_bytes()).unwrap();
        assert_eq!(
            record.field(&path("properties.a")).unwrap(),
            "952842902170.49"
        );
        assert_eq!(
            record.field(&path("properties.b")).unwrap(),
            "-231032730553.06705"
        );
        assert_eq!(record.field(&path("properties.c")).unwrap(), "0.1");
        assert_eq!(Record::from_bytes(&record.to_bytes()).unwrap(), record);
    }

    #[test]
    fn test_record_field_is_none_for_null_containers_and_missing() {
        let record = sample();
        for missing in [
            "properties.nothing",
            "properties.tags",
            "properties.geo",
            "properties.absent",
            "properties.country.x",
            "properties.geo.absent",
            "properties.tags.0",
        ] {
            assert_eq!(record.field(&path(missing)), None, "{missing}");
        }
    }
}
