//! The real-data report: answers of the query API next to exact values computed from the same
//! file.
//!
//! Exact values come from the file alone (the same event mapping, the same field paths as the
//! projection file), never from the pipeline, so the relative errors printed are measured, not
//! assumed. Each projection that reads the file's events is reported: distinct counts with their
//! bounds, the top items with exact and estimated counts, and membership checks on known and
//! unknown keys.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use readmodel::{Kind, Projection, ProjectionFile};
use schemas::{Limits, Record, validate_event};

/// How many top items are compared.
const TOP_K: usize = 5;
/// How many known and unknown keys membership is checked with.
const MEMBERSHIP_PROBES: usize = 200;

/// A query API to ask, as one tenant.
pub struct QueryApi {
    client: reqwest::Client,
    url: String,
    api_key: String,
}

impl QueryApi {
    pub fn new(url: &str, api_key: &str) -> anyhow::Result<QueryApi> {
        Ok(QueryApi {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            url: url.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
        })
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.api_key)
            .query(query)
            .send()
            .await
            .with_context(|| format!("query API did not answer GET {path}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .context("query API answer is not JSON")?;
        if !status.is_success() {
            bail!("GET {path} answered {status}: {body}");
        }
        Ok(body)
    }

    /// Waits until every partition's read models have caught up with the log.
    pub async fn wait_caught_up(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut caught_up_since: Option<Instant> = None;
        loop {
            let answer = self.get("/v1/projections", &[]).await?;
            let partitions = answer["partitions"].as_array().cloned().unwrap_or_default();
            let all_known =
                !partitions.is_empty() && partitions.iter().all(|p| p["lag"].as_i64() == Some(0));
            if all_known {
                // Lag comes from watermarks read every second: hold for two readings.
                let since = *caught_up_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(2_500) {
                    return Ok(());
                }
            } else {
                caught_up_since = None;
            }
            if started.elapsed() > timeout {
                bail!("read models did not catch up within {timeout:?}: {answer}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Prints the report of `events` (as mapped from a file) for `tenant`.
pub async fn report(
    events: &[Value],
    tenant: &str,
    projections: &ProjectionFile,
    api: &QueryApi,
) -> anyhow::Result<String> {
    let records = to_records(events, tenant)?;
    let mut out = String::new();
    writeln!(
        out,
        "tenant {tenant}: {} events from the file",
        records.len()
    )?;
    for projection in &projections.projections {
        let values: Vec<String> = records
            .iter()
            .filter_map(|r| projection.value_of(r).map(|v| v.into_owned()))
            .collect();
        if values.is_empty() {
            continue;
        }
        match projection.kind {
            Kind::Distinct => distinct(&mut out, projection, &values, api).await?,
            Kind::Top => top(&mut out, projection, &values, api).await?,
            Kind::Membership => membership(&mut out, projection, &values, api).await?,
        }
        if projection.kind == Kind::Distinct && projection.group_by.is_some() {
            groups(&mut out, projection, &records, api).await?;
        }
    }
    Ok(out)
}

/// Distinct values of the largest groups of a grouped distinct projection, and the overlap of
/// the two largest, next to the exact values.
async fn groups(
    out: &mut String,
    projection: &Projection,
    records: &[Record],
    api: &QueryApi,
) -> anyhow::Result<()> {
    const SHOWN: usize = 5;
    let mut exact: HashMap<String, HashSet<String>> = HashMap::new();
    for record in records {
        if let (Some(value), Some(group)) =
            (projection.value_of(record), projection.group_of(record))
        {
            exact
                .entry(group.into_owned())
                .or_default()
                .insert(value.into_owned());
        }
    }
    let answer = api
        .get(
            &format!("/v1/projections/{}/groups", projection.name),
            &[("limit", &SHOWN.to_string())],
        )
        .await?;
    writeln!(
        out,
        "  {:<14} groups {} (exact {}), the {SHOWN} with the most distinct values:",
        projection.name,
        answer["groups_total"],
        exact.len()
    )?;
    let listed = answer["groups"].as_array().cloned().unwrap_or_default();
    for group in &listed {
        let name = group["group"].as_str().unwrap_or_default();
        let truth = exact.get(name).map_or(0, HashSet::len) as f64;
        let (estimate, _, _, inside) = bounds_of(&group["distinct"], truth);
        writeln!(
            out,
            "    {:<28} exact {:>8}  estimate {:>10.1}  error {:+.2}%  exact within bounds: {inside}",
            truncate(name, 28),
            truth,
            estimate,
            (estimate - truth) / truth * 100.0
        )?;
    }
    if let [first, second, ..] = listed.as_slice() {
        let (a, b) = (
            first["group"].as_str().unwrap_or_default(),
            second["group"].as_str().unwrap_or_default(),
        );
        let answer = api
            .get(
                "/v1/overlap",
                &[
                    ("a", projection.name.as_str()),
                    ("a_group", a),
                    ("b", projection.name.as_str()),
                    ("b_group", b),
                ],
            )
            .await?;
        let empty = HashSet::new();
        let (sa, sb) = (
            exact.get(a).unwrap_or(&empty),
            exact.get(b).unwrap_or(&empty),
        );
        for (what, truth) in [
            ("union", sa.union(sb).count() as f64),
            ("intersection", sa.intersection(sb).count() as f64),
        ] {
            let (value, lower, upper, inside) = bounds_of(&answer[what], truth);
            writeln!(
                out,
                "    {what} of the two largest: exact {truth}  estimate {value:.1}  bounds \
                 [{lower:.1}, {upper:.1}]  exact within bounds: {inside}"
            )?;
        }
    }
    Ok(())
}

fn to_records(events: &[Value], tenant: &str) -> anyhow::Result<Vec<Record>> {
    let limits = Limits::default();
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            validate_event(event, &format!("[{i}]"), tenant, now_ms, &limits)
                .map_err(|problems| anyhow::anyhow!("event {i} is invalid: {problems:?}"))
        })
        .collect()
}

async fn distinct(
    out: &mut String,
    projection: &Projection,
    values: &[String],
    api: &QueryApi,
) -> anyhow::Result<()> {
    let exact = values.iter().collect::<HashSet<_>>().len() as f64;
    let answer = api
        .get(
            &format!("/v1/projections/{}/distinct", projection.name),
            &[],
        )
        .await?;
    let (estimate, lower, upper, inside) = bounds_of(&answer["distinct"], exact);
    writeln!(
        out,
        "  {:<14} distinct {:<22} exact {:>8}  estimate {:>10.1}  bounds [{:.1}, {:.1}]  \
         error {:+.2}%  exact within bounds: {inside}  events {} (exact {})",
        projection.name,
        projection.field.to_string(),
        exact,
        estimate,
        lower,
        upper,
        (estimate - exact) / exact * 100.0,
        answer["events"],
        values.len()
    )?;
    Ok(())
}

async fn top(
    out: &mut String,
    projection: &Projection,
    values: &[String],
    api: &QueryApi,
) -> anyhow::Result<()> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for value in values {
        *counts.entry(value).or_default() += 1;
    }
    let mut exact: Vec<(&str, u64)> = counts.iter().map(|(k, v)| (*k, *v)).collect();
    exact.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let answer = api
        .get(
            &format!("/v1/projections/{}/top", projection.name),
            &[("k", &TOP_K.to_string())],
        )
        .await?;
    let items = answer["items"].as_array().cloned().unwrap_or_default();
    let exact_top: HashSet<&str> = exact.iter().take(TOP_K).map(|(k, _)| *k).collect();
    let found = items
        .iter()
        .filter(|i| i["item"].as_str().is_some_and(|s| exact_top.contains(s)))
        .count();
    writeln!(
        out,
        "  {:<14} top {} of {:<18} events {} (exact {}), {} of the exact top {} found",
        projection.name,
        TOP_K,
        projection.field.to_string(),
        answer["events"],
        values.len(),
        found,
        TOP_K.min(exact.len())
    )?;
    for (rank, item) in items.iter().enumerate() {
        let name = item["item"].as_str().unwrap_or_default();
        let estimate = item["estimate"].as_u64().unwrap_or_default();
        let truth = counts.get(name).copied().unwrap_or(0);
        let error = if truth > 0 {
            format!(
                "{:+.2}%",
                (estimate as f64 - truth as f64) / truth as f64 * 100.0
            )
        } else {
            "n/a".into()
        };
        writeln!(
            out,
            "      #{:<2} {:<48} exact {:>6}  estimate {:>6}  bounds [{}, {}]  error {error}",
            rank + 1,
            truncate(name, 48),
            truth,
            estimate,
            item["lower_bound"],
            item["upper_bound"],
        )?;
    }
    Ok(())
}

async fn membership(
    out: &mut String,
    projection: &Projection,
    values: &[String],
    api: &QueryApi,
) -> anyhow::Result<()> {
    let members: Vec<&String> = values
        .iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .take(MEMBERSHIP_PROBES)
        .collect();
    let known: HashSet<&str> = values.iter().map(String::as_str).collect();
    let path = format!("/v1/projections/{}/contains", projection.name);
    let mut missed = 0;
    for member in &members {
        let answer = api.get(&path, &[("item", member.as_str())]).await?;
        if answer["maybe_present"] != Value::Bool(true) {
            missed += 1;
        }
    }
    let mut false_positives = 0;
    let mut rate = Value::Null;
    for i in 0..MEMBERSHIP_PROBES {
        let stranger = format!("never-seen-{i}");
        if known.contains(stranger.as_str()) {
            continue;
        }
        let answer = api.get(&path, &[("item", &stranger)]).await?;
        if answer["maybe_present"] == Value::Bool(true) {
            false_positives += 1;
        }
        rate = answer["configured_false_positive_rate"].clone();
    }
    writeln!(
        out,
        "  {:<14} membership {:<18} members found {}/{} (must be all)  \
         unknown keys reported present {}/{} (configured false positive rate {rate})",
        projection.name,
        projection.field.to_string(),
        members.len() - missed,
        members.len(),
        false_positives,
        MEMBERSHIP_PROBES
    )?;
    Ok(())
}

/// An estimate's value and bounds (NaN where absent), and whether `truth` lies within them.
fn bounds_of(estimate: &Value, truth: f64) -> (f64, f64, f64, &'static str) {
    let number = |field: &str| estimate[field].as_f64().unwrap_or(f64::NAN);
    let (value, lower, upper) = (
        number("estimate"),
        number("lower_bound"),
        number("upper_bound"),
    );
    let inside = if (lower..=upper).contains(&truth) {
        "yes"
    } else {
        "NO"
    };
    (value, lower, upper, inside)
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(width - 1).collect();
        format!("{cut}…")
    }
}
