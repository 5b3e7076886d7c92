//! Query-string parameters of the public endpoints: which ones each endpoint takes, and the
//! parsing of times, `k` and `item`.
//!
//! Guarantee: a parameter an endpoint does not know (a `tenant`, a typo) or one given twice is
//! refused with a 400 instead of being ignored; `from`/`to` are RFC 3339 or epoch milliseconds
//! and describe the same half-open window `[from, to)` over bucket starts that the projector
//! nodes use, with `from <= to`.

use std::collections::HashMap;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::QueryError;

/// The parameters of one request, each known to the endpoint and given at most once.
#[derive(Debug)]
pub(crate) struct Params {
    values: HashMap<String, String>,
}

/// A half-open time window over bucket starts, epoch milliseconds; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// A series: `[from, to)` cut into steps of `step` milliseconds, `from` and `to` multiples of
/// `step` (steps start at the epoch, so `1d` steps start at UTC midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeriesRange {
    pub from: i64,
    pub to: i64,
    pub step: i64,
}

impl SeriesRange {
    /// The number of steps.
    pub fn steps(self) -> usize {
        ((self.to - self.from) / self.step) as usize
    }
}

/// Most steps one series may have: more would be one point per pixel or less.
pub(crate) const MAX_SERIES_STEPS: i64 = 2_000;

/// How many top items may be asked for at most.
pub(crate) const MAX_TOP_K: u32 = 1_000;
/// Most groups one groups answer lists.
pub(crate) const MAX_GROUPS_LISTED: usize = 1_000;

/// How many top items are returned when `k` is not given.
pub(crate) const DEFAULT_TOP_K: u32 = 10;

impl Params {
    /// Checks the pairs of a query string against the parameters the endpoint accepts.
    pub fn new(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Params, QueryError> {
        let mut values = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            if !allowed.contains(&name.as_str()) {
                let allowed = if allowed.is_empty() {
                    "no parameters".to_owned()
                } else {
                    allowed.join(", ")
                };
                return Err(QueryError::UnknownParameter { name, allowed });
            }
            if values.contains_key(&name) {
                return Err(QueryError::DuplicateParameter(name));
            }
            values.insert(name, value);
        }
        Ok(Params { values })
    }

    /// `from` and `to`, both optional.
    pub fn time_range(&self) -> Result<TimeRange, QueryError> {
        let from = self.time("from")?;
        let to = self.time("to")?;
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                return Err(QueryError::InvalidTimeRange { from, to });
            }
        }
        Ok(TimeRange { from, to })
    }

    /// `k` for top queries: 1 to [`MAX_TOP_K`], [`DEFAULT_TOP_K`] when absent.
    pub fn top_k(&self) -> Result<u32, QueryError> {
        self.top_k_or(DEFAULT_TOP_K)
    }

    /// `k`: 1 to [`MAX_TOP_K`], `default` when absent.
    pub fn top_k_or(&self, default: u32) -> Result<u32, QueryError> {
        let Some(raw) = self.values.get("k") else {
            return Ok(default);
        };
        let invalid = || QueryError::InvalidParameter {
            name: "k",
            reason: format!("{raw:?} is not a whole number from 1 to {MAX_TOP_K}"),
        };
        let k: u32 = raw.trim().parse().map_err(|_| invalid())?;
        if !(1..=MAX_TOP_K).contains(&k) {
            return Err(invalid());
        }
        Ok(k)
    }

    /// `group`: a non-empty group name, or `None` when absent.
    pub fn group(&self) -> Result<Option<&str>, QueryError> {
        self.non_empty("group")
    }

    /// A parameter that, when given, must not be empty.
    pub fn non_empty(&self, name: &'static str) -> Result<Option<&str>, QueryError> {
        match self.values.get(name) {
            None => Ok(None),
            Some(value) if value.is_empty() => Err(QueryError::InvalidParameter {
                name,
                reason: "is empty; give a value or leave the parameter out".to_owned(),
            }),
            Some(value) => Ok(Some(value)),
        }
    }

    /// A required parameter that must not be empty.
    pub fn required(&self, name: &'static str) -> Result<&str, QueryError> {
        self.non_empty(name)?
            .ok_or(QueryError::MissingParameter(name))
    }

    /// `limit` of a groups answer: 1 to [`MAX_GROUPS_LISTED`], `None` when absent.
    pub fn group_limit(&self) -> Result<Option<usize>, QueryError> {
        let Some(raw) = self.values.get("limit") else {
            return Ok(None);
        };
        let limit: usize = raw
            .trim()
            .parse()
            .ok()
            .filter(|limit| (1..=MAX_GROUPS_LISTED).contains(limit))
            .ok_or_else(|| QueryError::InvalidParameter {
                name: "limit",
                reason: format!("{raw:?} is not a whole number from 1 to {MAX_GROUPS_LISTED}"),
            })?;
        Ok(Some(limit))
    }

    /// `from`, `to` and `step` of a series: all required; `from` is moved back and `to` forward
    /// to the nearest multiples of `step`, which must be a whole number of `bucket_ms`.
    pub fn series_range(&self, bucket_ms: i64) -> Result<SeriesRange, QueryError> {
        let range = self.time_range()?;
        let from = range.from.ok_or(QueryError::MissingParameter("from"))?;
        let to = range.to.ok_or(QueryError::MissingParameter("to"))?;
        let raw = self
            .values
            .get("step")
            .ok_or(QueryError::MissingParameter("step"))?;
        let step = parse_step(raw).map_err(|reason| QueryError::InvalidParameter {
            name: "step",
            reason,
        })?;
        if step % bucket_ms != 0 {
            return Err(QueryError::InvalidParameter {
                name: "step",
                reason: format!(
                    "{raw:?} is not a whole number of the projection's buckets ({}); use a \
                     multiple of it",
                    describe_ms(bucket_ms)
                ),
            });
        }
        let too_wide = || QueryError::InvalidParameter {
            name: "step",
            reason: format!(
                "from..to holds more than {MAX_SERIES_STEPS} steps of {raw}: widen the step or \
                 narrow the range"
            ),
        };
        let from = from
            .div_euclid(step)
            .checked_mul(step)
            .ok_or_else(too_wide)?;
        let to = to
            .checked_add(step - 1)
            .map(|t| t.div_euclid(step) * step)
            .ok_or_else(too_wide)?;
        let to = to.max(from + step);
        let steps = to.checked_sub(from).ok_or_else(too_wide)? / step;
        if steps > MAX_SERIES_STEPS {
            return Err(too_wide());
        }
        Ok(SeriesRange { from, to, step })
    }

    /// `item` for count and contains queries: required, taken as given (it may be empty).
    pub fn item(&self) -> Result<&str, QueryError> {
        self.values
            .get("item")
            .map(String::as_str)
            .ok_or(QueryError::MissingParameter("item"))
    }

    fn time(&self, name: &'static str) -> Result<Option<i64>, QueryError> {
        match self.values.get(name) {
            None => Ok(None),
            Some(raw) => parse_time(raw)
                .map(Some)
                .map_err(|reason| QueryError::InvalidParameter { name, reason }),
        }
    }
}

/// Parses a step: a whole number followed by `m`, `h` or `d` (`15m`, `1h`, `7d`), at least a
/// minute and at most 366 days.
pub(crate) fn parse_step(raw: &str) -> Result<i64, String> {
    let raw = raw.trim();
    let invalid =
        || format!("{raw:?} is not a step such as 15m, 1h or 1d (minutes, hours or days)");
    let unit = match raw.chars().last() {
        Some('m') => 60_000,
        Some('h') => 3_600_000,
        Some('d') => 86_400_000,
        _ => return Err(invalid()),
    };
    let count: i64 = raw[..raw.len() - 1].parse().map_err(|_| invalid())?;
    let step = count.checked_mul(unit).ok_or_else(invalid)?;
    if !(60_000..=366 * 86_400_000).contains(&step) {
        return Err(format!("{raw:?} is outside 1m to 366d"));
    }
    Ok(step)
}

/// `3600000` as `1h`, for messages.
pub(crate) fn describe_ms(ms: i64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parses epoch milliseconds or an RFC 3339 timestamp into epoch milliseconds.
///
/// Timestamps finer than a millisecond are rounded up: bucket starts are whole milliseconds, and
/// for a whole `b`, `b >= t` exactly when `b >= ceil(t)`, so the window stays the one asked for.
pub(crate) fn parse_time(raw: &str) -> Result<i64, String> {
    let raw = raw.trim();
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(ms);
    }
    let instant = OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| {
        format!("{raw:?} is neither epoch milliseconds nor RFC 3339 (2015-05-17T10:05:03Z)")
    })?;
    let nanos = instant.unix_timestamp_nanos();
    let mut ms = nanos.div_euclid(1_000_000);
    if nanos.rem_euclid(1_000_000) != 0 {
        ms += 1;
    }
    i64::try_from(ms).map_err(|_| format!("{raw:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)], allowed: &[&str]) -> Result<Params, QueryError> {
        let pairs = pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Params::new(pairs, allowed)
    }

    #[test]
    fn test_parse_time_reads_epoch_ms_and_rfc3339() {
        assert_eq!(parse_time("1431857103000"), Ok(1_431_857_103_000));
        assert_eq!(parse_time("2015-05-17T10:05:03Z"), Ok(1_431_857_103_000));
        assert_eq!(
            parse_time("2015-05-17T12:05:03+02:00"),
            Ok(1_431_857_103_000)
        );
        assert_eq!(
            parse_time("2015-05-17T10:05:03.0001Z"),
            Ok(1_431_857_103_001)
        );
        assert_eq!(parse_time("1969-12-31T23:59:59.9995Z"), Ok(0));
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
        assert!(parse_time("2015-05-17").is_err());
    }

    #[test]
    fn test_params_refuse_unknown_duplicate_and_reversed() {
        let allowed = ["from", "to"];
        let err = params(&[("tenant", "other")], &allowed).unwrap_err();
        assert_eq!(err.code(), "unknown_parameter");
        assert!(err.to_string().contains("from, to"), "{err}");

        let err = params(&[("from", "1"), ("from", "2")], &allowed).unwrap_err();
        assert_eq!(err.code(), "duplicate_parameter");

        let reversed = params(&[("from", "20"), ("to", "10")], &allowed).unwrap();
        assert_eq!(
            reversed.time_range().unwrap_err().code(),
            "invalid_time_range"
        );

        let same = params(&[("from", "10"), ("to", "10")], &allowed).unwrap();
        let range = same.time_range().unwrap();
        assert_eq!((range.from, range.to), (Some(10), Some(10)));

        let open = params(&[], &allowed).unwrap();
        assert_eq!(
            open.time_range().unwrap(),
            TimeRange {
                from: None,
                to: None
            }
        );
    }

    #[test]
    fn test_top_k_bounds() {
        let allowed = ["k"];
        assert_eq!(
            params(&[], &allowed).unwrap().top_k().unwrap(),
            DEFAULT_TOP_K
        );
        assert_eq!(
            params(&[("k", "1000")], &allowed).unwrap().top_k().unwrap(),
            1000
        );
        for bad in ["0", "1001", "-1", "ten", ""] {
            let err = params(&[("k", bad)], &allowed)
                .unwrap()
                .top_k()
                .unwrap_err();
            assert_eq!(err.code(), "invalid_parameter", "k={bad}");
        }
    }
}
