//! The monitoring files against the metrics the services record. Needs no broker and no tool.
//!
//! - `docs/metrics.md` names exactly the metrics the code of the workspace records, with their
//!   kinds and labels (read from the `counter!`, `gauge!` and `histogram!` calls and the name
//!   constants they use).
//! - Every query of `deploy/grafana/pipeline-dashboard.json` reads only documented metrics (or
//!   Prometheus's own `up`), by documented labels, with `_bucket` only on histograms; every panel reads the templated
//!   Prometheus data source, so the file imports into any Grafana.
//! - `deploy/prometheus.yml` has one job per service, scraping the addresses the demo configs
//!   listen on and every projector node the query API asks.
//!
//! Not checked here: that PromQL functions get the right argument types, that Prometheus accepts
//! the whole file (`promtool check config deploy/prometheus.yml` does), or how the panels look.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Series Prometheus makes for every target, which the dashboard may read.
const PROMETHEUS_SERIES: &[&str] = &["up"];
/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];
/// The data source every panel and query must name: the dashboard's variable `DS_PROMETHEUS`.
const DATA_SOURCE_UID: &str = "${DS_PROMETHEUS}";

/// PromQL functions and aggregation operators, separated by spaces.
const FUNCTIONS: &str = "abs absent absent_over_time acos acosh asin asinh atan atanh avg \
    avg_over_time bottomk ceil changes clamp clamp_max clamp_min cos cosh count count_over_time \
    count_values day_of_month day_of_week day_of_year days_in_month deg delta deriv exp floor \
    group histogram_quantile holt_winters hour idelta increase irate label_join label_replace \
    last_over_time ln log10 log2 max max_over_time min min_over_time minute month pi \
    predict_linear present_over_time quantile quantile_over_time rad rate resets round scalar \
    sgn sin sinh sort sort_desc sqrt stddev stddev_over_time stdvar stdvar_over_time sum \
    sum_over_time tan tanh time timestamp topk vector year";
/// PromQL keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other PromQL keywords: binary operators and modifiers.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];

/// One row of `docs/metrics.md`.
#[derive(Debug)]
struct Metric {
    /// `counter`, `gauge`, `histogram` or `summary`.
    kind: String,
    labels: BTreeSet<String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn metrics_doc_matches_the_code() {
    let documented = documented_metrics();
    let recorded = recorded_metrics();
    let mut problems = Vec::new();

    for (name, metric) in &documented {
        let Some((macro_kind, labels)) = recorded.get(name) else {
            problems.push(format!(
                "docs/metrics.md lists {name}, which no code records"
            ));
            continue;
        };
        let expected_macro = match metric.kind.as_str() {
            // A histogram without buckets is exposed as a summary: both are `histogram!`.
            "histogram" | "summary" => "histogram",
            other => other,
        };
        if expected_macro != macro_kind {
            problems.push(format!(
                "{name} is a {} in docs/metrics.md but the code records it with {macro_kind}!",
                metric.kind
            ));
        }
        if &metric.labels != labels {
            problems.push(format!(
                "{name} has labels {:?} in docs/metrics.md but {labels:?} in the code",
                metric.labels
            ));
        }
    }
    for name in recorded.keys() {
        if !documented.contains_key(name) {
            problems.push(format!(
                "the code records {name}, which docs/metrics.md does not list"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dashboard_reads_only_documented_metrics() {
    let documented = documented_metrics();
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/pipeline-dashboard.json"))
        .expect("deploy/grafana/pipeline-dashboard.json is not JSON");
    let mut problems = Vec::new();

    // The data source is a variable of the dashboard, so the file imports anywhere.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("the dashboard has no templating list");
    let data_source_variable = variables.iter().any(|v| {
        v["type"] == "datasource" && v["query"] == "prometheus" && v["name"] == "DS_PROMETHEUS"
    });
    if !data_source_variable {
        problems.push(
            "the dashboard has no datasource variable DS_PROMETHEUS of type prometheus".to_owned(),
        );
    }

    let panels = all_panels(&dashboard);
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if !ids.insert(panel["id"].as_i64()) {
            problems.push(format!("panel {title:?}: its id is not unique"));
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["datasource"]["uid"] != DATA_SOURCE_UID {
            problems.push(format!(
                "panel {title:?}: data source is not {DATA_SOURCE_UID}"
            ));
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if targets.is_empty() {
            problems.push(format!("panel {title:?} has no query"));
        }
        for target in targets {
            if target["datasource"]["uid"] != DATA_SOURCE_UID {
                problems.push(format!(
                    "panel {title:?}: a query's data source is not {DATA_SOURCE_UID}"
                ));
            }
            let Some(expr) = target["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                problems.push(format!("panel {title:?} has a query without expr"));
                continue;
            };
            queries += 1;
            for problem in check_expr(expr, &documented) {
                problems.push(format!("panel {title:?}: {problem} in `{expr}`"));
            }
        }
    }
    assert!(queries > 0, "the dashboard has no queries");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checker itself refuses what it is there to catch, so a dashboard that passes means
/// something.
#[test]
fn dashboard_check_refuses_unknown_metrics_labels_and_kinds() {
    let documented = documented_metrics();
    let refused = [
        // a misspelt metric
        "sum(rate(ingest_events_recieved_total[5m]))",
        // a label the metric does not have
        "sum by (tenant) (rate(ingest_events_rejected_total[5m]))",
        r#"rate(query_api_requests_total{route="/v1/projections"}[5m])"#,
        // buckets of a summary, and a histogram without its suffix
        "histogram_quantile(0.99, sum by (le) (rate(projector_batch_write_seconds_bucket[5m])))",
        "ingest_produce_latency_seconds",
        // an unknown function
        "rtae(ingest_requests_total[5m])",
    ];
    for expr in refused {
        assert!(
            !check_expr(expr, &documented).is_empty(),
            "the check let `{expr}` through"
        );
    }
    let accepted = [
        "histogram_quantile(0.5, sum by (le, endpoint) (rate(query_api_request_duration_seconds_bucket{endpoint!~\"/metrics\"}[$__rate_interval])))",
        r#"max by (instance) (projector_batch_write_seconds{quantile="0.99"})"#,
        "sum(rate(query_api_cache_hits_total[${__rate_interval}])) or vector(0)",
        r#"sum by (job) (up{job="ingest"})"#,
    ];
    for expr in accepted {
        let problems = check_expr(expr, &documented);
        assert!(problems.is_empty(), "`{expr}`: {problems:?}");
    }
}

#[test]
fn prometheus_scrapes_every_service_of_the_demo() {
    let jobs = scrape_jobs(&read("deploy/prometheus.yml"));
    let names: BTreeSet<&str> = jobs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["ingest", "projector", "query-api"]),
        "deploy/prometheus.yml must have one job per service (the dashboard selects by job)"
    );

    let deploy = repo_root().join("deploy");
    let ingest = ingest::Config::load(&deploy.join("ingest.toml")).expect("deploy/ingest.toml");
    let projector =
        projector::Config::load(&deploy.join("projector.toml")).expect("deploy/projector.toml");
    let query_api =
        query_api::Config::load(&deploy.join("query-api.toml")).expect("deploy/query-api.toml");

    let expected = [
        (
            "ingest",
            ingest.listen.to_string(),
            "deploy/ingest.toml listen",
        ),
        (
            "projector",
            projector.internal_listen.to_string(),
            "deploy/projector.toml internal_listen",
        ),
        (
            "query-api",
            query_api.listen.to_string(),
            "deploy/query-api.toml listen",
        ),
    ];
    for (job, address, source) in expected {
        assert!(
            jobs[job].contains(&address),
            "job {job} of deploy/prometheus.yml does not scrape {address} ({source}): {:?}",
            jobs[job]
        );
    }
    for url in &query_api.projector_urls {
        let url = reqwest::Url::parse(url).expect("projector_urls holds URLs");
        let address = format!(
            "{}:{}",
            url.host_str().expect("a projector URL has a host"),
            url.port_or_known_default()
                .expect("a projector URL has a port")
        );
        assert!(
            jobs["projector"].contains(&address),
            "the query API asks the projector node {address} (deploy/query-api.toml \
             projector_urls), which job projector of deploy/prometheus.yml does not scrape"
        );
    }
}

/// The rows of the tables of `docs/metrics.md`: name, kind and the labels in backticks.
fn documented_metrics() -> BTreeMap<String, Metric> {
    let mut metrics = BTreeMap::new();
    for line in read("docs/metrics.md").lines() {
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, name, kind, labels, ..] = cells.as_slice() else {
            panic!("docs/metrics.md: a table row without name, kind and labels: {line}");
        };
        let name = name.trim_matches('`').to_owned();
        assert!(
            ["counter", "gauge", "histogram", "summary"].contains(kind),
            "docs/metrics.md: {name} has kind {kind:?}; use counter, gauge, histogram or summary"
        );
        let labels = labels
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        let metric = Metric {
            kind: (*kind).to_owned(),
            labels,
        };
        assert!(
            metrics.insert(name.clone(), metric).is_none(),
            "docs/metrics.md lists {name} twice"
        );
    }
    assert!(!metrics.is_empty(), "docs/metrics.md has no metric table");
    metrics
}

/// Every metric the workspace's code records: name to (macro, labels). Reads the `counter!`,
/// `gauge!` and `histogram!` calls in the `src` folder of every crate; a name given as a constant
/// is looked up among the `const NAME: &str = "..."` of the same crate.
fn recorded_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut recorded: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for crate_dir in crate_dirs() {
        let sources: Vec<(PathBuf, String)> = rust_files(&crate_dir.join("src"))
            .into_iter()
            .map(|path| {
                let text = fs::read_to_string(&path).expect("readable source");
                (path, text)
            })
            .collect();
        let constants: BTreeMap<String, String> = sources
            .iter()
            .flat_map(|(_, text)| string_constants(text))
            .collect();
        for (path, text) in &sources {
            for call in metric_calls(text) {
                let name = if let Some(literal) = call.name.strip_prefix('"') {
                    literal.trim_end_matches('"').to_owned()
                } else {
                    let constant = call.name.rsplit("::").next().unwrap_or_default().trim();
                    constants.get(constant).cloned().unwrap_or_else(|| {
                        panic!(
                            "{}: {}!({}) names its metric neither by a literal nor by a \
                             constant of this crate",
                            path.display(),
                            call.kind,
                            call.name
                        )
                    })
                };
                let entry = recorded
                    .entry(name.clone())
                    .or_insert_with(|| (call.kind.clone(), BTreeSet::new()));
                assert_eq!(
                    entry.0, call.kind,
                    "{name} is recorded both with {}! and {}!",
                    entry.0, call.kind
                );
                entry.1.extend(call.labels);
            }
        }
    }
    assert!(
        !recorded.is_empty(),
        "no metric calls found in the workspace"
    );
    recorded
}

/// Folders of the repository root that hold a crate with sources.
fn crate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(repo_root())
        .expect("readable repository root")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|dir| dir.join("Cargo.toml").is_file() && dir.join("src").is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// `const NAME: &str = "value";` declarations of a source file.
fn string_constants(text: &str) -> Vec<(String, String)> {
    let mut constants = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        let line = line.strip_prefix("pub(crate) ").unwrap_or(line);
        let line = line.strip_prefix("pub ").unwrap_or(line);
        let Some(rest) = line.strip_prefix("const ") else {
            continue;
        };
        let Some((name, value)) = rest.split_once(": &str = \"") else {
            continue;
        };
        if let Some(value) = value.strip_suffix("\";") {
            constants.push((name.trim().to_owned(), value.to_owned()));
        }
    }
    constants
}

/// One `counter!`, `gauge!` or `histogram!` call: the macro, its first argument as written, and
/// the label keys (`"key" => value`).
struct MetricCall {
    kind: String,
    name: String,
    labels: Vec<String>,
}

fn metric_calls(text: &str) -> Vec<MetricCall> {
    let bytes = text.as_bytes();
    let mut calls = Vec::new();
    for kind in ["counter", "gauge", "histogram"] {
        let pattern = format!("{kind}!(");
        let mut from = 0;
        while let Some(found) = text[from..].find(&pattern) {
            let start = from + found;
            from = start + pattern.len();
            // `describe_counter!` and the like describe, they do not record.
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let args = balanced_args(&text[from..]);
            let name = split_top_level(args)
                .into_iter()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            calls.push(MetricCall {
                kind: kind.to_owned(),
                name,
                labels: label_keys(args),
            });
        }
    }
    calls
}

/// The characters of `text` outside string literals, each with its byte index and the depth
/// of brackets open before it.
fn outside_strings(text: &str) -> impl Iterator<Item = (usize, char, i32)> + '_ {
    let (mut depth, mut in_string, mut escaped) = (0, false, false);
    text.char_indices().filter_map(move |(i, c)| {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            return None;
        }
        let before = depth;
        match c {
            '"' => {
                in_string = true;
                return None;
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
        Some((i, c, before))
    })
}

/// The text up to the parenthesis closing the one just before `text`.
fn balanced_args(text: &str) -> &str {
    outside_strings(text)
        .find(|&(_, c, depth)| matches!(c, ')' | ']' | '}') && depth == 0)
        .map_or(text, |(i, _, _)| &text[..i])
}

/// Splits macro arguments at the commas outside strings and brackets.
fn split_top_level(args: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _, _) in outside_strings(args).filter(|&(_, c, depth)| c == ',' && depth == 0) {
        parts.push(&args[start..i]);
        start = i + 1;
    }
    parts.push(&args[start..]);
    parts
}

/// The keys of `"key" => value` pairs among macro arguments.
fn label_keys(args: &str) -> Vec<String> {
    split_top_level(args)
        .into_iter()
        .filter_map(|arg| {
            let (key, _) = arg.split_once("=>")?;
            let key = key.trim();
            Some(key.strip_prefix('"')?.strip_suffix('"')?.to_owned())
        })
        .collect()
}

/// Every panel of the dashboard, those inside collapsed rows included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels")
    {
        panels.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
    }
    panels
}

/// What is wrong with one PromQL expression: metric names that are not documented, labels the
/// metrics read do not have, `_bucket` of a metric that is no histogram, a histogram read without
/// a suffix, unknown functions.
fn check_expr(expr: &str, documented: &BTreeMap<String, Metric>) -> Vec<String> {
    let tokens = promql_names(expr);
    let mut problems = Vec::new();
    let mut allowed_labels: BTreeSet<String> =
        TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect();

    for metric in &tokens.metrics {
        let base_and_suffix = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = metric.strip_suffix(suffix)?;
            documented.get(base).map(|m| (m, *suffix))
        });
        if let Some(found) = documented.get(metric) {
            if found.kind == "histogram" {
                problems.push(format!(
                    "{metric} is a histogram: read {metric}_bucket, _sum or _count"
                ));
            }
            if found.kind == "summary" {
                allowed_labels.insert("quantile".to_owned());
            }
            allowed_labels.extend(found.labels.iter().cloned());
        } else if let Some((found, suffix)) = base_and_suffix {
            match (suffix, found.kind.as_str()) {
                ("_bucket", "histogram") => {
                    allowed_labels.insert("le".to_owned());
                }
                ("_bucket", kind) => problems.push(format!(
                    "{metric}: docs/metrics.md says the metric is a {kind}, which has no buckets"
                )),
                (_, "histogram" | "summary") => {}
                (_, kind) => problems.push(format!(
                    "{metric}: docs/metrics.md says the metric is a {kind}, which has no {suffix}"
                )),
            }
            allowed_labels.extend(found.labels.iter().cloned());
        } else if PROMETHEUS_SERIES.contains(&metric.as_str()) {
            // Only the target labels.
        } else {
            problems.push(format!("{metric} is not in docs/metrics.md"));
        }
    }
    for label in &tokens.labels {
        if !allowed_labels.contains(label) {
            problems.push(format!(
                "label {label} is not a label of {:?} (allowed: {allowed_labels:?})",
                tokens.metrics
            ));
        }
    }
    for function in &tokens.unknown_functions {
        problems.push(format!("{function}( is no PromQL function"));
    }
    problems
}

/// The names in a PromQL expression, sorted by role.
#[derive(Debug, Default)]
struct PromqlNames {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
    unknown_functions: BTreeSet<String>,
}

/// Reads the names out of a PromQL expression with Grafana variables (`$name`, `${name}`):
/// identifiers inside `{...}` and after `by`, `without`, `on`, `ignoring`, `group_left` and
/// `group_right` are labels; an identifier before `(` is a function; keywords, strings,
/// numbers, durations and `[...]` ranges are skipped; every other identifier is a metric.
fn promql_names(expr: &str) -> PromqlNames {
    let chars: Vec<char> = expr.chars().collect();
    let is_ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = PromqlNames::default();
    let mut braces = 0;
    let mut label_list = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' && c != '`' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
            }
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && is_ident(chars[i]) {
                        i += 1;
                    }
                }
            }
            '{' => {
                braces += 1;
                i += 1;
            }
            '}' => {
                braces -= 1;
                i += 1;
            }
            ')' => {
                label_list = false;
                i += 1;
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                if braces > 0 || label_list {
                    names.labels.insert(word);
                } else if LABEL_LIST_KEYWORDS.contains(&word.as_str()) {
                    // The names up to the next `)` are labels.
                    label_list = next == Some(&'(');
                } else if KEYWORDS.contains(&word.as_str())
                    || FUNCTIONS.split_whitespace().any(|f| f == word)
                {
                    // Neither a metric nor a label.
                } else if next == Some(&'(') {
                    names.unknown_functions.insert(word);
                } else {
                    names.metrics.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The jobs of a Prometheus config and the targets of each, from `- job_name: NAME` lines and
/// the `targets: ["host:port", ...]` lists after them. Comments are ignored; a `targets` list in
/// block form, or a `metrics_path` other than `/metrics`, fails.
fn scrape_jobs(config: &str) -> BTreeMap<String, Vec<String>> {
    let mut jobs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in config.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let line = line.strip_prefix("- ").unwrap_or(line);
        if let Some(name) = line.strip_prefix("job_name:") {
            let name = name.trim().trim_matches(['"', '\'']).to_owned();
            assert!(
                jobs.insert(name.clone(), Vec::new()).is_none(),
                "deploy/prometheus.yml: job {name} twice"
            );
            current = Some(name);
        } else if let Some(path) = line.strip_prefix("metrics_path:") {
            assert_eq!(
                path.trim().trim_matches(['"', '\'']),
                "/metrics",
                "deploy/prometheus.yml: every service serves its metrics at /metrics"
            );
        } else if let Some(list) = line.strip_prefix("targets:") {
            let job = current
                .as_ref()
                .expect("deploy/prometheus.yml: targets before any job_name");
            let list = list.trim();
            let items = list
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .unwrap_or_else(|| {
                    panic!(
                        "deploy/prometheus.yml: write the targets of {job} as [\"host:port\", ...]"
                    )
                });
            jobs.get_mut(job).expect("job recorded").extend(
                items
                    .split(',')
                    .map(|t| t.trim().trim_matches(['"', '\'']).to_owned())
                    .filter(|t| !t.is_empty()),
            );
        }
    }
    jobs
}
