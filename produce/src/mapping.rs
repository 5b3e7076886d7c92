//! How the lines of a data file become events.
//!
//! - `access-log`: an Apache combined-format access log. One `page_view` per line, keyed by the
//!   client address; properties `path`, `method`, `status`, `bytes`, `referrer`, `agent`; time
//!   from the log's timestamp. A line whose user agent lacks its closing quote (a truncated
//!   line) keeps the rest of the line as the agent.
//! - `wikipedia`: Wikipedia edit events, one JSON object per line. One `edit` per line, keyed by
//!   `user`; properties `page`, `channel`, `namespace`, `country` (ISO code, when known),
//!   `is_robot`, `is_anonymous`, `is_minor`, `is_new`, `added`, `deleted`, `delta`; time from
//!   `time`.
//! - `events`: lines that already are events in the ingest format (NDJSON).
//!
//! Every event gets the id `<file name>:<line number>`, so a resent file is recognisable as the
//! same events. Files ending in `.gz` are decompressed while read. Lines that cannot be mapped
//! are reported with their line number and reason, never silently dropped.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::Context;
use clap::ValueEnum;
use flate2::read::MultiGzDecoder;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

/// The layout of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataFormat {
    AccessLog,
    Wikipedia,
    Events,
}

/// The events of a file, and the lines that could not be mapped.
pub struct MappedFile {
    pub events: Vec<Value>,
    /// (line number, reason)
    pub skipped: Vec<(usize, String)>,
}

const APACHE_TIME: &[FormatItem<'static>] = format_description!(
    "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
);

/// Reads and maps a whole file.
pub fn read_events(path: &Path, format: DataFormat) -> anyhow::Result<MappedFile> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".gz").to_owned())
        .unwrap_or_default();

    let mut mapped = MappedFile {
        events: Vec::new(),
        skipped: Vec::new(),
    };
    for (index, line) in BufReader::new(reader).split(b'\n').enumerate() {
        let number = index + 1;
        let line =
            line.with_context(|| format!("cannot read {} at line {number}", path.display()))?;
        let Ok(line) = std::str::from_utf8(&line) else {
            mapped.skipped.push((number, "not valid UTF-8".into()));
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        let event = match format {
            DataFormat::AccessLog => access_log_event(line),
            DataFormat::Wikipedia => wikipedia_event(line),
            DataFormat::Events => serde_json::from_str(line).map_err(|e| format!("not JSON: {e}")),
        };
        match event {
            Ok(mut event) => {
                if format != DataFormat::Events
                    && let Some(object) = event.as_object_mut()
                {
                    object.insert("id".into(), Value::String(format!("{name}:{number}")));
                }
                mapped.events.push(event);
            }
            Err(reason) => mapped.skipped.push((number, reason)),
        }
    }
    Ok(mapped)
}

/// One combined-log-format line as a `page_view` event.
fn access_log_event(line: &str) -> Result<Value, String> {
    let (client, rest) = line.split_once(' ').ok_or("no client address")?;
    let open = rest.find('[').ok_or("no [timestamp]")?;
    let close = rest[open..].find(']').ok_or("unterminated [timestamp]")? + open;
    let time = OffsetDateTime::parse(&rest[open + 1..close], APACHE_TIME)
        .map_err(|e| format!("bad timestamp: {e}"))?;
    let mut fields = QuotedFields::new(&rest[close + 1..]);
    let request = fields.quoted().ok_or("no quoted request")?;
    let status = fields.bare().ok_or("no status")?;
    let bytes = fields.bare().ok_or("no byte count")?;
    let referrer = fields.quoted().unwrap_or("-");
    let agent = fields.quoted().unwrap_or("-");

    let mut parts = request.splitn(3, ' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().ok_or("request has no path")?;
    let status: u16 = status
        .parse()
        .map_err(|_| format!("bad status {status:?}"))?;
    let bytes: Value = bytes.parse::<u64>().map_or(Value::Null, Value::from);

    Ok(json!({
        "type": "page_view",
        "key": client,
        "time": time.unix_timestamp() * 1000,
        "properties": {
            "path": path,
            "method": method,
            "status": status,
            "bytes": bytes,
            "referrer": referrer,
            "agent": agent,
        },
    }))
}

/// One Wikipedia edit line as an `edit` event.
fn wikipedia_event(line: &str) -> Result<Value, String> {
    let edit: Map<String, Value> =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let text = |name: &str| edit.get(name).and_then(Value::as_str);
    let user = text("user").ok_or("no user")?;
    let time = text("time").ok_or("no time")?;
    let mut properties = Map::new();
    for (from, to) in [
        ("page", "page"),
        ("channel", "channel"),
        ("namespace", "namespace"),
        ("countryIsoCode", "country"),
        ("isRobot", "is_robot"),
        ("isAnonymous", "is_anonymous"),
        ("isMinor", "is_minor"),
        ("isNew", "is_new"),
        ("added", "added"),
        ("deleted", "deleted"),
        ("delta", "delta"),
    ] {
        if let Some(value) = edit.get(from).filter(|v| !v.is_null()) {
            properties.insert(to.into(), value.clone());
        }
    }
    Ok(json!({ "type": "edit", "key": user, "time": time, "properties": properties }))
}

/// Reads space-separated fields, some of them in double quotes.
struct QuotedFields<'a> {
    rest: &'a str,
}

impl<'a> QuotedFields<'a> {
    fn new(rest: &'a str) -> Self {
        QuotedFields { rest }
    }

    /// The next `"..."` field (backslash escapes kept verbatim); a missing closing quote takes
    /// the rest of the line.
    fn quoted(&mut self) -> Option<&'a str> {
        let rest = self.rest.trim_start().strip_prefix('"')?;
        let bytes = rest.as_bytes();
        let mut end = None;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => {
                    end = Some(i);
                    break;
                }
                _ => i += 1,
            }
        }
        match end {
            Some(end) => {
                self.rest = &rest[end + 1..];
                Some(&rest[..end])
            }
            None => {
                self.rest = "";
                Some(rest.trim_end())
            }
        }
    }

    /// The next unquoted field.
    fn bare(&mut self) -> Option<&'a str> {
        let rest = self.rest.trim_start();
        if rest.is_empty() {
            return None;
        }
        let end = rest.find(' ').unwrap_or(rest.len());
        self.rest = &rest[end..];
        Some(&rest[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_access_log_line_maps_to_page_view() {
        let line = r#"10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET /a/b.png HTTP/1.1" 200 203023 "http://x/" "Mozilla/5.0 (X)""#;
        let event = access_log_event(line).unwrap();
        assert_eq!(event["type"], "page_view");
        assert_eq!(event["key"], "10.0.0.1");
        assert_eq!(event["time"], 1_431_857_103_000i64);
        assert_eq!(event["properties"]["path"], "/a/b.png");
        assert_eq!(event["properties"]["status"], 200);
        assert_eq!(event["properties"]["bytes"], 203023);
        assert_eq!(event["properties"]["agent"], "Mozilla/5.0 (X)");
    }

    #[test]
    fn test_access_log_truncated_agent_keeps_the_rest() {
        let line = r#"10.0.4.44 - - [20/May/2015:12:05:17 +0000] "GET /x.py HTTP/1.1" 200 - "-" "Mozilla/5.0 (compatible; Googlebot/2.1"#;
        let event = access_log_event(line).unwrap();
        assert_eq!(
            event["properties"]["agent"],
            "Mozilla/5.0 (compatible; Googlebot/2.1"
        );
        assert_eq!(event["properties"]["bytes"], Value::Null);
    }

    #[test]
    fn test_access_log_garbage_is_reported() {
        assert!(access_log_event("hello").is_err());
        assert!(access_log_event("1.2.3.4 - - [yesterday] \"GET / HTTP/1.1\" 200 1").is_err());
    }

    #[test]
    fn test_wikipedia_line_maps_to_edit() {
        let line = r##"{"time":"2015-09-12T00:46:58.771Z","channel":"#en.wikipedia","countryIsoCode":null,"isRobot":false,"page":"Talk:page-1","user":"user-1","added":36,"deleted":0,"delta":36,"namespace":"Talk","isAnonymous":false,"isMinor":false,"isNew":false}"##;
        let event = wikipedia_event(line).unwrap();
        assert_eq!(event["type"], "edit");
        assert_eq!(event["key"], "user-1");
        assert_eq!(event["properties"]["channel"], "#en.wikipedia");
        assert!(event["properties"].get("country").is_none());
        assert!(wikipedia_event("{\"time\": \"x\"}").is_err());
    }
}
