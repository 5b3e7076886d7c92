//! Client events: framing a request body and validating each event into a [`Record`].
//!
//! Guarantee: a body is accepted whole or refused whole. A refusal lists every problem found in
//! every event (not just the first), each with the path of the offending value and a reason that
//! says what to fix; an acceptance yields one record per event, in body order, each of which
//! passes [`Record::from_bytes`] after encoding.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::record::{MAX_RECORD_TIME_MS, Record, SCHEMA_VERSION};
use crate::strict_json::{self, ValueBudget};

/// Most bytes in an event `id`.
pub const MAX_ID_BYTES: usize = 128;
/// Most bytes in an event `type`.
pub const MAX_TYPE_BYTES: usize = 64;
/// The top-level fields an event may have.
pub const EVENT_FIELDS: [&str; 5] = ["id", "type", "key", "time", "properties"];

/// Parses and validates a request body into records for `tenant`. All or nothing: on any
/// problem, returns every problem found (each with its path, e.g. `[3].time`, `time`,
/// `line 7: key`, `properties.a.b`), and no records.
///
/// Event paths are `""` for a lone object, `[i]` for the i-th (from 0) element of an array and
/// `line n` for the n-th (from 1) line of NDJSON. A body with more than
/// `limits.max_events_per_request` events gets that one problem and no further checks.
pub fn parse_events(
    body: &[u8],
    format: BodyFormat,
    tenant: &str,
    received_ms: i64,
    limits: &Limits,
) -> Result<Vec<Record>, Vec<Problem>> {
    let events = match format {
        BodyFormat::Json => frame_json(body, limits)?,
        BodyFormat::NdJson => frame_ndjson(body, limits)?,
    };
    let mut problems = Vec::new();
    let mut records = Vec::with_capacity(events.len());
    for (path, framed) in events {
        match framed {
            Ok(value) => match validate_owned_event(value, &path, tenant, received_ms, limits) {
                Ok(record) => records.push(record),
                Err(found) => problems.extend(found),
            },
            Err(reason) => problems.push(Problem::new(path, reason)),
        }
    }
    if problems.is_empty() {
        Ok(records)
    } else {
        Err(problems)
    }
}

/// Validates one already-parsed JSON event into a record for `tenant`, received at
/// `received_ms`.
///
/// `path` names the event in its body (`""`, `[3]`, `line 7`, or any label a tool chooses);
/// problem paths append the field to it: `[3].time` after an index, `line 7: time` after a label,
/// plain `time` after `""`.
pub fn validate_event(
    value: &Value,
    path: &str,
    tenant: &str,
    received_ms: i64,
    limits: &Limits,
) -> Result<Record, Vec<Problem>> {
    let checked = check_event(value, path, tenant, received_ms, limits)?;
    let properties = match value.get("properties") {
        Some(Value::Object(properties)) => properties.clone(),
        _ => Map::new(),
    };
    Ok(checked.into_record(tenant, received_ms, properties))
}

/// [`validate_event`] of an event the caller gives away: its properties move into the record
/// instead of being copied.
fn validate_owned_event(
    mut value: Value,
    path: &str,
    tenant: &str,
    received_ms: i64,
    limits: &Limits,
) -> Result<Record, Vec<Problem>> {
    let checked = check_event(&value, path, tenant, received_ms, limits)?;
    let properties = match value.get_mut("properties").map(Value::take) {
        Some(Value::Object(properties)) => properties,
        _ => Map::new(),
    };
    Ok(checked.into_record(tenant, received_ms, properties))
}

/// The fields of a valid event besides its properties.
struct Checked {
    id: Option<String>,
    event_type: String,
    key: String,
    time_ms: i64,
}

impl Checked {
    fn into_record(self, tenant: &str, received_ms: i64, properties: Map<String, Value>) -> Record {
        Record {
            v: SCHEMA_VERSION,
            tenant: tenant.to_owned(),
            id: self.id,
            event_type: self.event_type,
            key: self.key,
            time_ms: self.time_ms,
            received_ms,
            properties,
        }
    }
}

/// Every check of one event; on success its fields other than the properties, which are valid.
fn check_event(
    value: &Value,
    path: &str,
    tenant: &str,
    received_ms: i64,
    limits: &Limits,
) -> Result<Checked, Vec<Problem>> {
    let Some(object) = value.as_object() else {
        return Err(vec![Problem::new(
            path,
            format!("an event must be a JSON object, not {}", kind(value)),
        )]);
    };
    let mut check = EventCheck {
        path,
        problems: Vec::new(),
    };
    if tenant.is_empty() {
        check.problem("", "no tenant: the API key must belong to a tenant");
    }
    for name in object.keys() {
        if EVENT_FIELDS.contains(&name.as_str()) {
            continue;
        }
        let reason = if name == "tenant" {
            "must not be set: the tenant comes from the API key".to_owned()
        } else {
            format!(
                "unknown field `{}`: allowed fields are {}",
                shown(name),
                EVENT_FIELDS.join(", ")
            )
        };
        check.problem(&shown(name), reason);
    }
    let id = check.id(object.get("id"));
    let event_type = check.event_type(object.get("type"));
    let key = check.key(object.get("key"), limits);
    let time_ms = check.time(object.get("time"), received_ms, limits);
    check.properties(object.get("properties"), limits);
    match (check.problems.is_empty(), event_type, key, time_ms) {
        (true, Some(event_type), Some(key), Some(time_ms)) => Ok(Checked {
            id,
            event_type,
            key,
            time_ms,
        }),
        _ => Err(check.problems),
    }
}

/// Where a problem is, and what to fix. Serializes as `{"path": "...", "reason": "..."}`.
///
/// An empty path means the body as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub reason: String,
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object, or a non-empty JSON array of objects.
    Json,
    /// Newline-delimited JSON: one object per non-blank line.
    NdJson,
}

/// Bounds on a request and on each event in it.
///
/// Deserializes from config with every field optional (defaults below); check it with
/// [`Limits::validate`] before use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most events in one request body. Default 1000.
    pub max_events_per_request: usize,
    /// Most bytes in the `key` and in any string (value or name) inside `properties`.
    /// Default 2048.
    pub max_string_bytes: usize,
    /// Most top-level entries in `properties`. Default 64.
    pub max_properties: usize,
    /// Most levels of nesting in `properties`, counting `properties` itself as level 1, so 1
    /// allows only scalar values. Default 4.
    pub max_depth: usize,
    /// How far past the receive time an event `time` may be, in milliseconds. Default 300000
    /// (5 minutes).
    pub max_future_ms: i64,
    /// How far before the receive time an event `time` may be, in milliseconds; `None` (the
    /// default) accepts any time from 1970 on. Each time bucket an event lands in costs the
    /// projector a read model, so a bound keeps one request from opening thousands of them.
    pub max_past_ms: Option<i64>,
    /// Most JSON values (objects, arrays, strings, numbers, booleans, nulls) in one request
    /// body; this bounds the memory of a parsed body, which a long array of small numbers
    /// would otherwise make some 16 times its length. Default 100000.
    pub max_json_values: usize,
}

/// Why a [`Limits`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("limit {name} must be at least {min}, got {value}")]
    TooSmall {
        name: &'static str,
        min: i64,
        value: i64,
    },
}

/// Events cut out of a body, in body order, each with its event path: a JSON value, or why the
/// event's text is not JSON (an NDJSON line).
type Framed = Vec<(String, Result<Value, String>)>;

/// Problems of one event, with the path that prefixes them.
struct EventCheck<'a> {
    path: &'a str,
    problems: Vec<Problem>,
}

const EMPTY_BATCH: &str = "no events: send one event object, or a batch of at least one";

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_events_per_request: 1000,
            max_string_bytes: 2048,
            max_properties: 64,
            max_depth: 4,
            max_future_ms: 5 * 60 * 1000,
            max_past_ms: None,
            max_json_values: 100_000,
        }
    }
}

impl Limits {
    /// Checks every bound can be met by some event: counts and sizes at least 1, a non-negative
    /// future allowance.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let checks = [
            ("max_events_per_request", self.max_events_per_request, 1),
            ("max_string_bytes", self.max_string_bytes, 1),
            ("max_properties", self.max_properties, 1),
            ("max_depth", self.max_depth, 1),
            ("max_json_values", self.max_json_values, 1),
        ];
        for (name, value, min) in checks {
            if value < min {
                return Err(LimitsError::TooSmall {
                    name,
                    min: min as i64,
                    value: value as i64,
                });
            }
        }
        if self.max_future_ms < 0 {
            return Err(LimitsError::TooSmall {
                name: "max_future_ms",
                min: 0,
                value: self.max_future_ms,
            });
        }
        if let Some(max_past_ms) = self.max_past_ms.filter(|&ms| ms < 0) {
            return Err(LimitsError::TooSmall {
                name: "max_past_ms",
                min: 0,
                value: max_past_ms,
            });
        }
        Ok(())
    }
}

impl Problem {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl EventCheck<'_> {
    fn problem(&mut self, field: &str, reason: impl Into<String>) {
        self.problems
            .push(Problem::new(join(self.path, field), reason));
    }

    fn id(&mut self, value: Option<&Value>) -> Option<String> {
        match value {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_BYTES => {
                Some(id.clone())
            }
            Some(Value::String(id)) => {
                self.problem(
                    "id",
                    format!("must be 1 to {MAX_ID_BYTES} bytes, got {}", id.len()),
                );
                None
            }
            Some(other) => {
                self.problem("id", format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }

    fn event_type(&mut self, value: Option<&Value>) -> Option<String> {
        let event_type = match value {
            None | Some(Value::Null) => {
                self.problem(
                    "type",
                    "is required: a string naming what happened, e.g. \"page_view\"",
                );
                return None;
            }
            Some(Value::String(event_type)) => event_type,
            Some(other) => {
                self.problem("type", format!("must be a string, not {}", kind(other)));
                return None;
            }
        };
        if event_type.is_empty() || event_type.len() > MAX_TYPE_BYTES {
            self.problem(
                "type",
                format!(
                    "must be 1 to {MAX_TYPE_BYTES} bytes, got {}",
                    event_type.len()
                ),
            );
            return None;
        }
        if !event_type.bytes().all(is_type_byte) {
            self.problem(
                "type",
                "must contain only letters A-Z a-z, digits, '_', '.', ':' and '-'",
            );
            return None;
        }
        Some(event_type.clone())
    }

    fn key(&mut self, value: Option<&Value>, limits: &Limits) -> Option<String> {
        match value {
            None | Some(Value::Null) => {
                self.problem(
                    "key",
                    "is required: a string naming the entity (user, device, client address)",
                );
                None
            }
            Some(Value::String(key)) if !key.is_empty() && key.len() <= limits.max_string_bytes => {
                Some(key.clone())
            }
            Some(Value::String(key)) => {
                self.problem(
                    "key",
                    format!(
                        "must be 1 to {} bytes, got {}",
                        limits.max_string_bytes,
                        key.len()
                    ),
                );
                None
            }
            Some(other) => {
                self.problem("key", format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }

    fn time(&mut self, value: Option<&Value>, received_ms: i64, limits: &Limits) -> Option<i64> {
        const FORMAT: &str = "must be an RFC 3339 timestamp (e.g. \"2024-05-01T12:00:00Z\") \
                              or integer epoch milliseconds";
        let time_ms = match value {
            None | Some(Value::Null) => return Some(received_ms),
            Some(Value::Number(number)) => match (number.as_i64(), number.as_u64()) {
                (Some(ms), _) => ms,
                // Above i64::MAX: certainly in the future.
                (None, Some(_)) => i64::MAX,
                (None, None) => {
                    self.problem("time", format!("{FORMAT}, not a fraction"));
                    return None;
                }
            },
            Some(Value::String(text)) => match OffsetDateTime::parse(text, &Rfc3339) {
                Ok(at) => {
                    let ms = at.unix_timestamp_nanos().div_euclid(1_000_000);
                    // Years -9999..=9999 keep milliseconds far inside i64.
                    i64::try_from(ms).unwrap_or(i64::MIN)
                }
                Err(_) => {
                    self.problem("time", format!("{FORMAT}, got {:?}", shown(text)));
                    return None;
                }
            },
            Some(other) => {
                self.problem("time", format!("{FORMAT}, not {}", kind(other)));
                return None;
            }
        };
        let latest = received_ms.saturating_add(limits.max_future_ms);
        if time_ms < 0 {
            self.problem("time", "must not be before 1970-01-01T00:00:00Z");
            return None;
        }
        if time_ms > latest {
            self.problem(
                "time",
                format!(
                    "is {} ms ahead of the server clock; at most {} ms ahead is accepted: \
                     check the client clock",
                    time_ms.saturating_sub(received_ms),
                    limits.max_future_ms
                ),
            );
            return None;
        }
        if let Some(max_past_ms) = limits.max_past_ms {
            if time_ms < received_ms.saturating_sub(max_past_ms) {
                self.problem(
                    "time",
                    format!(
                        "is {} ms before the server clock; at most {max_past_ms} ms \
                         (max_past_ms) before is accepted: send recent events, or ask for \
                         max_past_ms to be raised to load older ones",
                        received_ms.saturating_sub(time_ms)
                    ),
                );
                return None;
            }
        }
        // Reached only when the receive time plus `max_future_ms` lies past year 9999: a record
        // cannot carry such a time (`Record::from_bytes` refuses it), so the event is refused.
        if time_ms > MAX_RECORD_TIME_MS {
            self.problem(
                "time",
                "must not be after 9999-12-31T23:59:59.999Z (253402300799999 ms), the last time \
                 a record can carry",
            );
            return None;
        }
        Some(time_ms)
    }

    /// Checks the properties: absent, null or an object within the limits.
    fn properties(&mut self, value: Option<&Value>, limits: &Limits) {
        let properties = match value {
            None | Some(Value::Null) => return,
            Some(Value::Object(properties)) => properties,
            Some(other) => {
                self.problem(
                    "properties",
                    format!("must be a JSON object, not {}", kind(other)),
                );
                return;
            }
        };
        if properties.len() > limits.max_properties {
            self.problem(
                "properties",
                format!(
                    "has {} properties; at most {} are accepted",
                    properties.len(),
                    limits.max_properties
                ),
            );
        }
        self.nested(properties, &PropertyPath::Root, 1, limits);
    }

    /// Checks names and values of an object at nesting `depth` (properties itself is 1).
    fn nested(
        &mut self,
        object: &Map<String, Value>,
        path: &PropertyPath<'_>,
        depth: usize,
        limits: &Limits,
    ) {
        for (name, value) in object {
            let child = PropertyPath::Field(path, name);
            if name.len() > limits.max_string_bytes {
                self.problem(
                    &child.to_string(),
                    format!(
                        "names at most {} bytes are accepted, this one has {}",
                        limits.max_string_bytes,
                        name.len()
                    ),
                );
            }
            self.property_value(value, &child, depth, limits);
        }
    }

    /// Checks a value held by a container at nesting `depth`.
    fn property_value(
        &mut self,
        value: &Value,
        path: &PropertyPath<'_>,
        depth: usize,
        limits: &Limits,
    ) {
        match value {
            Value::String(text) if text.len() > limits.max_string_bytes => self.problem(
                &path.to_string(),
                format!(
                    "must be at most {} bytes, got {}",
                    limits.max_string_bytes,
                    text.len()
                ),
            ),
            Value::Object(_) | Value::Array(_) if depth >= limits.max_depth => self.problem(
                &path.to_string(),
                format!(
                    "nests deeper than {} levels (counting properties as 1): flatten it",
                    limits.max_depth
                ),
            ),
            Value::Object(object) => self.nested(object, path, depth + 1, limits),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let child = PropertyPath::Index(path, index);
                    self.property_value(item, &child, depth + 1, limits);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
        }
    }
}

fn frame_json(body: &[u8], limits: &Limits) -> Result<Framed, Vec<Problem>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(vec![Problem::new(
            "",
            format!("the body is empty: {EMPTY_BATCH}"),
        )]);
    }
    let budget = ValueBudget::new(limits.max_json_values);
    let value: Value = strict_json::from_slice_within(body, &budget).map_err(|error| {
        if budget.is_spent() {
            too_many_values(limits)
        } else {
            vec![Problem::new("", json_error_reason(&error, true))]
        }
    })?;
    let values: Framed = match value {
        Value::Object(_) => vec![(String::new(), Ok(value))],
        Value::Array(items) => {
            if items.is_empty() {
                return Err(vec![Problem::new(
                    "",
                    format!("the array is empty: {EMPTY_BATCH}"),
                )]);
            }
            check_count(items.len(), limits)?;
            items
                .into_iter()
                .enumerate()
                .map(|(index, item)| (format!("[{index}]"), Ok(item)))
                .collect()
        }
        other => {
            return Err(vec![Problem::new(
                "",
                format!(
                    "the body must be a JSON object or an array of objects, not {}",
                    kind(&other)
                ),
            )]);
        }
    };
    Ok(values)
}

fn frame_ndjson(body: &[u8], limits: &Limits) -> Result<Framed, Vec<Problem>> {
    let lines: Vec<(usize, &[u8])> = body
        .split(|&byte| byte == b'\n')
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    if lines.is_empty() {
        return Err(vec![Problem::new(
            "",
            format!("the body has no lines: {EMPTY_BATCH}"),
        )]);
    }
    check_count(lines.len(), limits)?;
    let budget = ValueBudget::new(limits.max_json_values);
    let mut framed = Vec::with_capacity(lines.len());
    for (number, line) in lines {
        let value = if std::str::from_utf8(line).is_err() {
            Err("is not valid UTF-8: send the body as UTF-8 text".to_owned())
        } else {
            strict_json::from_slice_within(line, &budget)
                .map_err(|error| json_error_reason(&error, false))
        };
        if budget.is_spent() {
            return Err(too_many_values(limits));
        }
        framed.push((format!("line {number}"), value));
    }
    Ok(framed)
}

fn too_many_values(limits: &Limits) -> Vec<Problem> {
    vec![Problem::new(
        "",
        format!(
            "the body holds more than {} JSON values (objects, arrays, strings, numbers, \
             booleans and nulls); at most that many are accepted per request: send fewer or \
             smaller events",
            limits.max_json_values
        ),
    )]
}

fn check_count(count: usize, limits: &Limits) -> Result<(), Vec<Problem>> {
    if count > limits.max_events_per_request {
        return Err(vec![Problem::new(
            "",
            format!(
                "the body holds {count} events; at most {} are accepted per request: split it",
                limits.max_events_per_request
            ),
        )]);
    }
    Ok(())
}

/// Where a value sits inside `properties`, spelt out only when a problem names it.
enum PropertyPath<'a> {
    Root,
    Field(&'a PropertyPath<'a>, &'a str),
    Index(&'a PropertyPath<'a>, usize),
}

impl fmt::Display for PropertyPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyPath::Root => f.write_str("properties"),
            PropertyPath::Field(parent, name) => write!(f, "{parent}.{}", shown(name)),
            PropertyPath::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// Appends a field to an event path: `[3]` + `time` = `[3].time`, `line 7` + `time` =
/// `line 7: time`, `""` + `time` = `time`.
fn join(event: &str, field: &str) -> String {
    if event.is_empty() {
        field.to_owned()
    } else if field.is_empty() {
        event.to_owned()
    } else if event.ends_with(']') {
        format!("{event}.{field}")
    } else {
        format!("{event}: {field}")
    }
}

fn is_type_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b':' | b'-')
}

/// A client-supplied text cut to a length fit for a problem message.
fn shown(text: &str) -> String {
    const MAX_SHOWN_BYTES: usize = 64;
    if text.len() <= MAX_SHOWN_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_SHOWN_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// serde's message with its position; the line is left out for a single NDJSON line.
fn json_error_reason(error: &serde_json::Error, with_line: bool) -> String {
    let message = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = message.strip_suffix(&suffix).unwrap_or(&message);
    if with_line {
        format!(
            "invalid JSON at line {} column {}: {message}",
            error.line(),
            error.column()
        )
    } else {
        format!("invalid JSON at column {}: {message}", error.column())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// 2024-05-01T12:00:00Z.
    const NOW_MS: i64 = 1_714_564_800_000;

    fn limits() -> Limits {
        Limits::default()
    }

    fn validate(value: Value) -> Result<Record, Vec<Problem>> {
        validate_event(&value, "", "weblog", NOW_MS, &limits())
    }

    /// The problems of an event that must be refused, as (path, reason) pairs.
    fn problems(value: Value) -> Vec<(String, String)> {
        validate(value)
            .unwrap_err()
            .into_iter()
            .map(|problem| (problem.path, problem.reason))
            .collect()
    }

    /// The one problem of an event, checked to be at `path` and to mention `needle`.
    fn assert_one_problem(value: Value, path: &str, needle: &str) {
        let found = problems(value);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, path, "{found:?}");
        assert!(
            found[0].1.contains(needle),
            "{:?} lacks {needle:?}",
            found[0].1
        );
    }

    fn parse(body: &str, format: BodyFormat) -> Result<Vec<Record>, Vec<Problem>> {
        parse_events(body.as_bytes(), format, "weblog", NOW_MS, &limits())
    }

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems
            .iter()
            .map(|problem| problem.path.as_str())
            .collect()
    }

    #[test]
    fn test_validate_event_builds_a_full_record() {
        let record = validate(json!({
            "id": "evt-1",
            "type": "page_view",
            "key": "user-1",
            "time": "2024-05-01T11:59:00Z",
            "properties": {"path": "/", "geo": {"country": "NL"}}
        }))
        .unwrap();
        assert_eq!(
            record,
            Record {
                v: SCHEMA_VERSION,
                tenant: "weblog".into(),
                id: Some("evt-1".into()),
                event_type: "page_view".into(),
                key: "user-1".into(),
                time_ms: NOW_MS - 60_000,
                received_ms: NOW_MS,
                properties: json!({"path": "/", "geo": {"country": "NL"}})
                    .as_object()
                    .unwrap()
                    .clone(),
            }
        );
        assert_eq!(Record::from_bytes(&record.to_bytes()).unwrap(), record);
    }

    #[test]
    fn test_validate_event_fills_optional_fields() {
        let record = validate(json!({"type": "click", "key": "u"})).unwrap();
        assert_eq!(record.id, None);
        assert_eq!(record.time_ms, NOW_MS);
        assert!(record.properties.is_empty());
        // Null means absent for the optional fields.
        let record = validate(json!({
            "type": "click", "key": "u", "id": null, "time": null, "properties": null
        }))
        .unwrap();
        assert_eq!((record.id, record.time_ms), (None, NOW_MS));
        assert!(record.properties.is_empty());
    }

    #[test]
    fn test_validate_event_requires_an_object() {
        for value in [json!([1]), json!("x"), json!(3), json!(null), json!(true)] {
            let found = validate_event(&value, "[2]", "weblog", NOW_MS, &limits()).unwrap_err();
            assert_eq!(found.len(), 1);
            assert_eq!(found[0].path, "[2]");
            assert!(
                found[0]
                    .reason
                    .starts_with("an event must be a JSON object")
            );
        }
    }

    #[test]
    fn test_validate_event_checks_id() {
        let ok = validate(json!({"type": "t", "key": "k", "id": "x".repeat(MAX_ID_BYTES)}));
        assert_eq!(ok.unwrap().id.unwrap().len(), MAX_ID_BYTES);
        assert_one_problem(
            json!({"type": "t", "key": "k", "id": ""}),
            "id",
            "1 to 128 bytes",
        );
        assert_one_problem(
            json!({"type": "t", "key": "k", "id": "x".repeat(MAX_ID_BYTES + 1)}),
            "id",
            "got 129",
        );
        assert_one_problem(
            json!({"type": "t", "key": "k", "id": 7}),
            "id",
            "must be a string",
        );
    }

    #[test]
    fn test_validate_event_checks_type() {
        let ok = validate(json!({"type": "a-Z_0.9:x", "key": "k"})).unwrap();
        assert_eq!(ok.event_type, "a-Z_0.9:x");
        let longest = "t".repeat(MAX_TYPE_BYTES);
        assert!(validate(json!({"type": longest, "key": "k"})).is_ok());
        assert_one_problem(json!({"key": "k"}), "type", "is required");
        assert_one_problem(json!({"type": null, "key": "k"}), "type", "is required");
        assert_one_problem(json!({"type": "", "key": "k"}), "type", "1 to 64 bytes");
        assert_one_problem(
            json!({"type": "t".repeat(MAX_TYPE_BYTES + 1), "key": "k"}),
            "type",
            "got 65",
        );
        for bad in ["page view", "a/b", "é", "x\n"] {
            assert_one_problem(json!({"type": bad, "key": "k"}), "type", "only letters");
        }
        assert_one_problem(
            json!({"type": ["x"], "key": "k"}),
            "type",
            "must be a string",
        );
    }

    #[test]
    fn test_validate_event_checks_key() {
        let max = limits().max_string_bytes;
        assert!(validate(json!({"type": "t", "key": "k".repeat(max)})).is_ok());
        assert_one_problem(json!({"type": "t"}), "key", "is required");
        assert_one_problem(
            json!({"type": "t", "key": ""}),
            "key",
            "must be 1 to 2048 bytes",
        );
        assert_one_problem(
            json!({"type": "t", "key": "k".repeat(max + 1)}),
            "key",
            "got 2049",
        );
        assert_one_problem(
            json!({"type": "t", "key": 42}),
            "key",
            "must be a string, not a number",
        );
    }

    #[test]
    fn test_validate_event_accepts_both_time_forms() {
        let at = |time: Value| validate(json!({"type": "t", "key": "k", "time": time}));
        assert_eq!(at(json!(0)).unwrap().time_ms, 0);
        assert_eq!(at(json!(NOW_MS - 5)).unwrap().time_ms, NOW_MS - 5);
        assert_eq!(at(json!("1970-01-01T00:00:00Z")).unwrap().time_ms, 0);
        assert_eq!(
            at(json!("2024-05-01T14:00:00+02:00")).unwrap().time_ms,
            NOW_MS
        );
        // Sub-millisecond digits are cut, not rounded.
        assert_eq!(
            at(json!("2024-05-01T11:59:59.9999Z")).unwrap().time_ms,
            NOW_MS - 1
        );
        let max_future = limits().max_future_ms;
        assert_eq!(
            at(json!(NOW_MS + max_future)).unwrap().time_ms,
            NOW_MS + max_future
        );
    }

    #[test]
    fn test_validate_event_checks_time() {
        let with = |time: Value| json!({"type": "t", "key": "k", "time": time});
        let format = "must be an RFC 3339 timestamp";
        assert_one_problem(with(json!("2024-05-01 12:00:00")), "time", format);
        assert_one_problem(with(json!("yesterday")), "time", "got \"yesterday\"");
        assert_one_problem(with(json!("2024-05-01")), "time", format);
        assert_one_problem(with(json!(1.5)), "time", "not a fraction");
        assert_one_problem(with(json!(true)), "time", "not a boolean");
        assert_one_problem(with(json!({"ms": 1})), "time", "not an object");
        assert_one_problem(with(json!(-1)), "time", "before 1970");
        assert_one_problem(with(json!("1969-12-31T23:59:59Z")), "time", "before 1970");
        let max_future = limits().max_future_ms;
        assert_one_problem(
            with(json!(NOW_MS + max_future + 1)),
            "time",
            "is 300001 ms ahead of the server clock; at most 300000 ms",
        );
        assert_one_problem(with(json!(u64::MAX)), "time", "ahead of the server clock");
        assert_one_problem(
            with(json!("2999-01-01T00:00:00Z")),
            "time",
            "check the client clock",
        );
    }

    #[test]
    fn test_validate_event_refuses_times_past_year_9999_whatever_the_future_allowance() {
        // The round-trip property of ingest's fuzz target caught this: with a `max_future_ms`
        // reaching past year 9999 such a time was accepted, and its record then failed
        // `Record::from_bytes`, so the projector could not read an event ingest acknowledged.
        let unbounded = Limits {
            max_future_ms: i64::MAX,
            ..limits()
        };
        let at = |time_ms: i64| {
            let value = json!({"type": "t", "key": "k", "time": time_ms});
            validate_event(&value, "", "weblog", NOW_MS, &unbounded)
        };
        let problems = at(MAX_RECORD_TIME_MS + 1).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "time");
        assert!(
            problems[0]
                .reason
                .contains("after 9999-12-31T23:59:59.999Z"),
            "{problems:?}"
        );
        assert!(at(i64::MAX).is_err());
        let last = at(MAX_RECORD_TIME_MS).unwrap();
        assert_eq!(Record::from_bytes(&last.to_bytes()).unwrap(), last);
    }

    #[test]
    fn test_validate_event_rejects_unknown_fields_and_tenant() {
        let found = problems(json!({
            "type": "t", "key": "k", "tenant": "other", "Key": "x", "user": 1
        }));
        assert_eq!(found.len(), 3, "{found:?}");
        let tenant = found.iter().find(|(path, _)| path == "tenant").unwrap();
        assert_eq!(
            tenant.1,
            "must not be set: the tenant comes from the API key"
        );
        for name in ["Key", "user"] {
            let unknown = found.iter().find(|(path, _)| path == name).unwrap();
            assert_eq!(
                unknown.1,
                format!(
                    "unknown field `{name}`: allowed fields are id, type, key, time, properties"
                )
            );
        }
        let long = "f".repeat(500);
        let found = problems(json!({"type": "t", "key": "k", long.clone(): 1}));
        assert_eq!(found[0].0, format!("{}...", &long[..64]));
    }

    #[test]
    fn test_validate_event_checks_properties() {
        let with = |properties: Value| json!({"type": "t", "key": "k", "properties": properties});
        assert_one_problem(
            with(json!([1, 2])),
            "properties",
            "must be a JSON object, not an array",
        );
        assert_one_problem(with(json!("a=b")), "properties", "not a string");

        let max = limits().max_properties;
        let at_most: Map<String, Value> = (0..max).map(|i| (format!("p{i}"), json!(i))).collect();
        assert!(validate(with(Value::Object(at_most.clone()))).is_ok());
        let mut too_many = at_most;
        too_many.insert("one_more".into(), json!(1));
        assert_one_problem(
            with(Value::Object(too_many)),
            "properties",
            "has 65 properties",
        );

        let long = "s".repeat(limits().max_string_bytes + 1);
        assert_one_problem(
            with(json!({"a": {"b": long.clone()}})),
            "properties.a.b",
            "got 2049",
        );
        assert_one_problem(
            with(json!({"tags": ["ok", long.clone()]})),
            "properties.tags[1]",
            "got 2049",
        );
        assert_one_problem(
            with(json!({"a": {long.clone(): 1}})),
            &format!("properties.a.{}...", &long[..64]),
            "names at most 2048 bytes",
        );
        // Numbers, booleans and nulls inside properties are kept as they are.
        let kept = validate(with(json!({"n": 1.25, "b": false, "z": null}))).unwrap();
        assert_eq!(kept.properties["n"], json!(1.25));
        assert_eq!(kept.properties["z"], Value::Null);
    }

    #[test]
    fn test_validate_event_bounds_property_nesting() {
        let with = |properties: Value| json!({"type": "t", "key": "k", "properties": properties});
        // properties (1) > a (2) > b (3) > c (4): the default limit of 4.
        assert!(validate(with(json!({"a": {"b": {"c": {"d": 1}}}}))).is_ok());
        assert!(validate(with(json!({"a": [[{"d": 1}]]}))).is_ok());
        assert_one_problem(
            with(json!({"a": {"b": {"c": {"d": {"e": 1}}}}})),
            "properties.a.b.c.d",
            "nests deeper than 4 levels",
        );
        assert_one_problem(
            with(json!({"a": [[["x"], [[]]]]})),
            "properties.a[0][1][0]",
            "nests deeper than 4 levels",
        );
        let flat = Limits {
            max_depth: 1,
            ..limits()
        };
        let event = with(json!({"a": 1, "b": {}, "c": []}));
        let found = validate_event(&event, "", "weblog", NOW_MS, &flat).unwrap_err();
        assert_eq!(paths(&found), ["properties.b", "properties.c"]);
    }

    #[test]
    fn test_validate_event_reports_every_problem_at_once() {
        let found = problems(json!({
            "id": 5,
            "type": "bad type",
            "time": "soon",
            "tenant": "t",
            "properties": {"deep": {"x": "y".repeat(3000)}}
        }));
        let mut found_paths: Vec<&str> = found.iter().map(|(path, _)| path.as_str()).collect();
        found_paths.sort_unstable();
        assert_eq!(
            found_paths,
            ["id", "key", "properties.deep.x", "tenant", "time", "type"]
        );
    }

    #[test]
    fn test_validate_event_prefixes_paths_with_the_event_path() {
        let event = json!({"type": "t", "time": "x", "properties": {"a": {"b": "y".repeat(3000)}}});
        let in_array = validate_event(&event, "[3]", "weblog", NOW_MS, &limits()).unwrap_err();
        assert_eq!(
            paths(&in_array),
            ["[3].key", "[3].time", "[3].properties.a.b"]
        );
        let on_line = validate_event(&event, "line 7", "weblog", NOW_MS, &limits()).unwrap_err();
        assert_eq!(
            paths(&on_line),
            ["line 7: key", "line 7: time", "line 7: properties.a.b"]
        );
        let alone = validate_event(&event, "", "weblog", NOW_MS, &limits()).unwrap_err();
        assert_eq!(paths(&alone), ["key", "time", "properties.a.b"]);
    }

    #[test]
    fn test_validate_event_refuses_an_empty_tenant() {
        let event = json!({"type": "t", "key": "k"});
        let found = validate_event(&event, "", "", NOW_MS, &limits()).unwrap_err();
        assert_eq!(found.len(), 1);
        assert!(found[0].reason.contains("no tenant"), "{found:?}");
    }

    #[test]
    fn test_parse_events_json_single_object_and_array() {
        let one = parse(r#"{"type": "a", "key": "k1"}"#, BodyFormat::Json).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].tenant, "weblog");
        assert_eq!(one[0].received_ms, NOW_MS);
        let many = parse(
            r#"[{"type": "a", "key": "k1"}, {"type": "b", "key": "k2", "time": 5}]"#,
            BodyFormat::Json,
        )
        .unwrap();
        let keys: Vec<&str> = many.iter().map(|record| record.key.as_str()).collect();
        assert_eq!(keys, ["k1", "k2"]);
        assert_eq!(many[1].time_ms, 5);
    }

    #[test]
    fn test_parse_events_json_is_all_or_nothing() {
        let body = r#"[
            {"type": "a", "key": "k1"},
            {"type": "a", "key": ""},
            {"type": "a", "key": "k3"},
            {"type": "a", "key": "k4", "time": "later"},
            7
        ]"#;
        let found = parse(body, BodyFormat::Json).unwrap_err();
        assert_eq!(paths(&found), ["[1].key", "[3].time", "[4]"]);
    }

    #[test]
    fn test_parse_events_json_framing_problems() {
        let empty = parse(" \n ", BodyFormat::Json).unwrap_err();
        assert_eq!(empty.len(), 1);
        assert!(
            empty[0].reason.starts_with("the body is empty"),
            "{empty:?}"
        );

        let empty_array = parse("[]", BodyFormat::Json).unwrap_err();
        assert_eq!(paths(&empty_array), [""]);
        assert!(empty_array[0].reason.starts_with("the array is empty"));

        let scalar = parse("\"event\"", BodyFormat::Json).unwrap_err();
        assert_eq!(
            scalar[0].reason,
            "the body must be a JSON object or an array of objects, not a string"
        );

        let broken = parse("[{\"type\": \"a\",\n  \"key\": }]", BodyFormat::Json).unwrap_err();
        assert_eq!(broken.len(), 1);
        assert_eq!(broken[0].path, "");
        assert_eq!(
            broken[0].reason,
            "invalid JSON at line 2 column 10: expected value"
        );

        let trailing = parse("{\"type\":\"a\",\"key\":\"k\"} {}", BodyFormat::Json).unwrap_err();
        assert!(
            trailing[0].reason.contains("trailing characters"),
            "{trailing:?}"
        );
    }

    #[test]
    fn test_parse_events_bounds_the_json_values_of_a_body_in_both_framings() {
        // Each event is an object and two strings: three values.
        let few = Limits {
            max_json_values: 7,
            ..limits()
        };
        let event = r#"{"type": "a", "key": "k"}"#;
        let array = format!("[{event},{event}]");
        let parsed = parse_events(array.as_bytes(), BodyFormat::Json, "weblog", NOW_MS, &few);
        assert_eq!(parsed.unwrap().len(), 2);
        let lines = format!("{event}\n{event}\n");
        let parsed = parse_events(lines.as_bytes(), BodyFormat::NdJson, "weblog", NOW_MS, &few);
        assert_eq!(parsed.unwrap().len(), 2);

        let long = r#"{"type": "a", "key": "k", "properties": {"a": [1, 2]}}"#;
        for (body, format) in [
            (format!("[{event},{long}]"), BodyFormat::Json),
            (format!("{event}\n{long}\n{event}\n"), BodyFormat::NdJson),
        ] {
            let found = parse_events(body.as_bytes(), format, "weblog", NOW_MS, &few).unwrap_err();
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].path, "");
            assert!(
                found[0]
                    .reason
                    .starts_with("the body holds more than 7 JSON values"),
                "{found:?}"
            );
        }
    }

    #[test]
    fn test_parse_events_refuses_too_many_events() {
        let small = Limits {
            max_events_per_request: 2,
            ..limits()
        };
        let event = r#"{"type": "a", "key": "k"}"#;
        let two = format!("[{event},{event}]");
        assert_eq!(
            parse_events(two.as_bytes(), BodyFormat::Json, "weblog", NOW_MS, &small)
                .unwrap()
                .len(),
            2
        );
        // Even with bad events, only the count is reported.
        let three = format!("[{event},{event},{{}}]");
        let found =
            parse_events(three.as_bytes(), BodyFormat::Json, "weblog", NOW_MS, &small).unwrap_err();
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].reason,
            "the body holds 3 events; at most 2 are accepted per request: split it"
        );
        let lines = format!("{event}\n\n{event}\n{event}\n");
        let found = parse_events(
            lines.as_bytes(),
            BodyFormat::NdJson,
            "weblog",
            NOW_MS,
            &small,
        )
        .unwrap_err();
        assert_eq!(found.len(), 1);
        assert!(found[0].reason.starts_with("the body holds 3 events"));
    }

    #[test]
    fn test_parse_events_ndjson_skips_blank_lines_and_keeps_order() {
        let body = "\n{\"type\": \"a\", \"key\": \"k1\"}\r\n  \n{\"type\": \"b\", \"key\": \"k2\"}";
        let records = parse(body, BodyFormat::NdJson).unwrap();
        let types: Vec<&str> = records
            .iter()
            .map(|record| record.event_type.as_str())
            .collect();
        assert_eq!(types, ["a", "b"]);
    }

    #[test]
    fn test_parse_events_ndjson_reports_lines() {
        let body = [
            &br#"{"type": "a", "key": "k1"}"#[..],
            b"",
            br#"{"type": "a", "key": 3}"#,
            b"{\"type\": \"a\", \"key\": \"\xff\"}",
            br#"{"type": "a", "key": "k5"#,
            br#"[{"type": "a", "key": "k6"}]"#,
            br#"{"type": "a", "key": "k7", "tenant": "x"}"#,
        ]
        .join(&b'\n');
        let found =
            parse_events(&body, BodyFormat::NdJson, "weblog", NOW_MS, &limits()).unwrap_err();
        assert_eq!(
            paths(&found),
            [
                "line 3: key",
                "line 4",
                "line 5",
                "line 6",
                "line 7: tenant"
            ]
        );
        assert_eq!(
            found[1].reason,
            "is not valid UTF-8: send the body as UTF-8 text"
        );
        assert_eq!(
            found[2].reason,
            "invalid JSON at column 24: EOF while parsing a string"
        );
        assert!(
            found[3]
                .reason
                .starts_with("an event must be a JSON object, not an array")
        );
    }

    #[test]
    fn test_parse_events_ndjson_refuses_an_empty_body() {
        for body in ["", "\n\n", " \r\n\t\n"] {
            let found = parse(body, BodyFormat::NdJson).unwrap_err();
            assert_eq!(found.len(), 1);
            assert!(
                found[0].reason.starts_with("the body has no lines"),
                "{found:?}"
            );
        }
    }

    #[test]
    fn test_problem_serializes_and_displays() {
        let problem = Problem::new("[3].time", "must be a string");
        assert_eq!(
            serde_json::to_value(&problem).unwrap(),
            json!({"path": "[3].time", "reason": "must be a string"})
        );
        assert_eq!(problem.to_string(), "[3].time: must be a string");
        assert_eq!(
            Problem::new("", "the body is empty").to_string(),
            "the body is empty"
        );
    }

    #[test]
    fn test_limits_validate_and_deserialize() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let zero_depth = Limits {
            max_depth: 0,
            ..limits()
        };
        assert_eq!(
            zero_depth.validate().unwrap_err().to_string(),
            "limit max_depth must be at least 1, got 0"
        );
        let past_only = Limits {
            max_future_ms: -1,
            ..limits()
        };
        assert!(past_only.validate().is_err());
        let negative_past = Limits {
            max_past_ms: Some(-1),
            ..limits()
        };
        assert_eq!(
            negative_past.validate().unwrap_err().to_string(),
            "limit max_past_ms must be at least 0, got -1"
        );
        let past: Limits = serde_json::from_value(json!({"max_past_ms": 86_400_000})).unwrap();
        assert_eq!(past.max_past_ms, Some(86_400_000));
        assert_eq!(Limits::default().max_past_ms, None);
        let partial: Limits = serde_json::from_value(json!({"max_properties": 8})).unwrap();
        assert_eq!(partial.max_properties, 8);
        assert_eq!(partial.max_depth, Limits::default().max_depth);
        assert!(serde_json::from_value::<Limits>(json!({"max_props": 8})).is_err());
    }

    #[test]
    fn test_max_past_ms_bounds_how_old_an_event_may_be() {
        let day = 86_400_000;
        let bounded = Limits {
            max_past_ms: Some(day),
            ..limits()
        };
        let at = |time_ms: i64, limits: &Limits| {
            let value = json!({"type": "t", "key": "k", "time": time_ms});
            validate_event(&value, "", "weblog", NOW_MS, limits)
        };
        assert!(
            at(NOW_MS - day, &bounded).is_ok(),
            "the bound itself is accepted"
        );
        let found = at(NOW_MS - day - 1, &bounded).unwrap_err();
        assert_eq!(paths(&found), ["time"]);
        assert!(
            found[0].reason.contains("(max_past_ms) before is accepted"),
            "{found:?}"
        );
        let found = at(0, &bounded).unwrap_err();
        assert!(
            found[0]
                .reason
                .starts_with(&format!("is {NOW_MS} ms before")),
            "{found:?}"
        );
        // Without the bound, 1970 is as good as now.
        assert!(at(0, &limits()).is_ok());
    }
}
