//! The client side of the projector nodes' internal API: asks every configured node at once and
//! hands back each node's answer or the reason it has none.
//!
//! Guarantee: every call goes to every node concurrently and is bounded by the configured
//! timeout; the answers come back in config order, one per node; a node that fails is logged
//! once and counted in `query_api_projector_errors_total`. Tenant, projection name and window
//! are placed in the URL with proper encoding, so no value can change which resource is asked
//! for. Dropping the returned future cancels the calls still running.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::config::{ConfigError, NodeUrl};
use crate::params::{SeriesRange, TimeRange};
use crate::telemetry::PROJECTOR_ERRORS_TOTAL;

/// The configured projector nodes and the client that calls them.
#[derive(Debug, Clone)]
pub(crate) struct ProjectorNodes {
    client: reqwest::Client,
    nodes: Vec<NodeUrl>,
}

/// One node's answer to one call.
#[derive(Debug)]
pub(crate) struct NodeAnswer<T> {
    /// The node's URL as configured.
    pub node: String,
    pub result: Result<T, NodeFailure>,
}

/// Why a node gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeFailure {
    #[error("no answer within the projector timeout")]
    Timeout,
    #[error("cannot reach the node: {0}")]
    Unreachable(String),
    #[error("the node does not know projection {0:?}")]
    UnknownProjection(String),
    #[error("the node answered http {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the node's answer is not valid: {0}")]
    InvalidBody(String),
}

/// `GET /internal/v1/projections`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ProjectionsBody {
    pub projections: Vec<ProjectionInfo>,
}

/// One projection as a node describes it; fields beyond the contract are passed on unchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProjectionInfo {
    pub name: String,
    pub kind: String,
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// `GET /internal/v1/partitions`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PartitionsBody {
    /// Partitions of the topic, as the node last read it; `None` until it knows.
    #[serde(default)]
    pub partition_count: Option<i32>,
    pub partitions: Vec<NodePartition>,
}

/// How far a node has folded one of its partitions. `high_watermark` and `lag` are `None` until
/// the node has learnt the partition's end from the broker.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NodePartition {
    pub partition: i32,
    pub next_offset: i64,
    pub high_watermark: Option<i64>,
    pub lag: Option<i64>,
    pub last_event_ms: Option<i64>,
    /// Records deleted by retention before the node folded them.
    #[serde(default)]
    pub lost_records: i64,
    /// Why the partition is not moving, if it is stalled.
    #[serde(default)]
    pub stalled: Option<String>,
}

/// `GET /internal/v1/read-models/{projection}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ReadModelBody {
    pub kind: String,
    /// Partitions of the topic, as the node last read it; `None` until it knows.
    #[serde(default)]
    pub partition_count: Option<i32>,
    pub partitions: Vec<NodePartition>,
    /// Standard base64 of the node's merged read model; `None` when it holds no bucket of the
    /// tenant in the window.
    pub read_model: Option<String>,
}

impl crate::gather::ModelsBody for ReadModelBody {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn partition_count(&self) -> Option<i32> {
        self.partition_count
    }

    fn partitions(&self) -> &[NodePartition] {
        &self.partitions
    }

    fn encoded(&self) -> Vec<Option<&str>> {
        vec![self.read_model.as_deref()]
    }
}

/// `GET /internal/v1/read-models/{projection}/series`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SeriesBody {
    pub kind: String,
    #[serde(default)]
    pub partition_count: Option<i32>,
    pub partitions: Vec<NodePartition>,
    pub steps: Vec<SeriesStepBody>,
}

/// One step of a node's series.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SeriesStepBody {
    pub read_model: Option<String>,
}

impl crate::gather::ModelsBody for SeriesBody {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn partition_count(&self) -> Option<i32> {
        self.partition_count
    }

    fn partitions(&self) -> &[NodePartition] {
        &self.partitions
    }

    fn encoded(&self) -> Vec<Option<&str>> {
        self.steps.iter().map(|s| s.read_model.as_deref()).collect()
    }
}

#[derive(Deserialize)]
struct NodeErrorBody {
    error: NodeErrorDetail,
}

#[derive(Deserialize)]
struct NodeErrorDetail {
    code: String,
    message: String,
}

/// Longest piece of an unexpected error body kept for the log.
const MAX_ERROR_TEXT: usize = 300;

impl ProjectorNodes {
    /// A client for `nodes` where each call gives up after `timeout`.
    pub fn new(nodes: Vec<NodeUrl>, timeout: Duration) -> Result<ProjectorNodes, ConfigError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|e| ConfigError::HttpClient(error_chain(&e)))?;
        Ok(ProjectorNodes { client, nodes })
    }

    /// Every node's projection list.
    pub async fn projections(&self) -> Vec<NodeAnswer<ProjectionsBody>> {
        self.get_all(|base| endpoint(base, &["internal", "v1", "projections"]))
            .await
    }

    /// Every node's partitions and offsets.
    pub async fn partitions(&self) -> Vec<NodeAnswer<PartitionsBody>> {
        self.get_all(|base| endpoint(base, &["internal", "v1", "partitions"]))
            .await
    }

    /// Every node's read model of `projection` for `tenant` over `range`.
    pub async fn read_models(
        &self,
        projection: &str,
        tenant: &str,
        range: TimeRange,
    ) -> Vec<NodeAnswer<ReadModelBody>> {
        self.get_all(|base| {
            let mut url = endpoint(base, &["internal", "v1", "read-models", projection]);
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("tenant", tenant);
                if let Some(from) = range.from {
                    query.append_pair("from", &from.to_string());
                }
                if let Some(to) = range.to {
                    query.append_pair("to", &to.to_string());
                }
            }
            url
        })
        .await
    }

    /// Every node's read models of `projection` for `tenant`, merged per step of `series`.
    pub async fn read_model_series(
        &self,
        projection: &str,
        tenant: &str,
        series: SeriesRange,
    ) -> Vec<NodeAnswer<SeriesBody>> {
        self.get_all(|base| {
            let mut url = endpoint(
                base,
                &["internal", "v1", "read-models", projection, "series"],
            );
            url.query_pairs_mut()
                .append_pair("tenant", tenant)
                .append_pair("from", &series.from.to_string())
                .append_pair("to", &series.to.to_string())
                .append_pair("step", &series.step.to_string());
            url
        })
        .await
    }

    async fn get_all<T>(&self, url_of: impl Fn(&Url) -> Url) -> Vec<NodeAnswer<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let mut calls = JoinSet::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let client = self.client.clone();
            let url = url_of(&node.base);
            calls.spawn(async move { (index, get_json::<T>(&client, url).await) });
        }
        let mut results: Vec<Option<Result<T, NodeFailure>>> =
            self.nodes.iter().map(|_| None).collect();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((index, result)) => results[index] = Some(result),
                // A call only ends without a result if it panicked; its slot stays empty and is
                // reported below as a failure of that node.
                Err(error) => tracing::error!(error = %error, "projector call task failed"),
            }
        }
        self.nodes
            .iter()
            .zip(results)
            .map(|(node, result)| {
                let result = result.unwrap_or_else(|| {
                    Err(NodeFailure::InvalidBody("the call task failed".into()))
                });
                NodeAnswer {
                    node: node.display.clone(),
                    result,
                }
            })
            .collect()
    }
}

impl NodeFailure {
    /// Label for `query_api_projector_errors_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            NodeFailure::Timeout => "timeout",
            NodeFailure::Unreachable(_) => "unreachable",
            NodeFailure::UnknownProjection(_) => "unknown_projection",
            NodeFailure::Status { .. } => "status",
            NodeFailure::InvalidBody(_) => "invalid_body",
        }
    }

    /// Logs the failure and counts it; call once per failed node per request.
    pub fn record(&self, node: &str) {
        tracing::warn!(node, reason = self.reason(), error = %self, "projector node failed");
        metrics::counter!(
            PROJECTOR_ERRORS_TOTAL,
            "node" => node.to_owned(),
            "reason" => self.reason(),
        )
        .increment(1);
    }
}

fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        // The base path ends in '/', which leaves an empty last segment to replace.
        path.pop_if_empty().extend(segments);
    }
    url
}

async fn get_json<T: DeserializeOwned>(
    client: &reqwest::Client,
    url: Url,
) -> Result<T, NodeFailure> {
    let response = client.get(url).send().await.map_err(request_failure)?;
    let status = response.status();
    if status.is_success() {
        let bytes = response.bytes().await.map_err(request_failure)?;
        return serde_json::from_slice(&bytes).map_err(|e| NodeFailure::InvalidBody(e.to_string()));
    }
    let bytes = response.bytes().await.map_err(request_failure)?;
    let error: Option<NodeErrorBody> = serde_json::from_slice(&bytes).ok();
    match error {
        Some(body)
            if status == StatusCode::NOT_FOUND && body.error.code == "unknown_projection" =>
        {
            Err(NodeFailure::UnknownProjection(body.error.message))
        }
        Some(body) => Err(NodeFailure::Status {
            status: status.as_u16(),
            message: format!("{}: {}", body.error.code, body.error.message),
        }),
        None => {
            let text = String::from_utf8_lossy(&bytes);
            let mut message: String = text.chars().take(MAX_ERROR_TEXT).collect();
            if message.len() < text.len() {
                message.push_str("...");
            }
            Err(NodeFailure::Status {
                status: status.as_u16(),
                message,
            })
        }
    }
}

fn request_failure(error: reqwest::Error) -> NodeFailure {
    if error.is_timeout() {
        NodeFailure::Timeout
    } else {
        NodeFailure::Unreachable(error_chain(&error))
    }
}

/// An error with its sources, `outer: inner: innermost`, since reqwest's own text stops at the
/// outermost layer.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_endpoint_encodes_segments_and_keeps_base_path() {
        let base = Url::parse("http://node:1/prefix/").unwrap();
        let url = endpoint(&base, &["internal", "v1", "read-models", "a/../b?c"]);
        assert_eq!(
            url.as_str(),
            "http://node:1/prefix/internal/v1/read-models/a%2F..%2Fb%3Fc"
        );
        let root = Url::parse("http://node:1/").unwrap();
        assert_eq!(
            endpoint(&root, &["internal", "v1", "partitions"]).as_str(),
            "http://node:1/internal/v1/partitions"
        );
    }
}
