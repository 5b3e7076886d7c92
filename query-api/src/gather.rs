//! Turns the answers of all projector nodes into one read model and one freshness report.
//!
//! Guarantee: a query is answered from the merge of every node that answered, and its freshness
//! lists exactly the partitions those nodes reported, sorted by partition, plus every node whose
//! data is missing. An answer in which some partition would be counted twice (two nodes reporting
//! it while the group rebalances) is refused with 503 rather than returned with doubled counts.
//! When no node answers, the query fails with 503: see docs/query-api.md for the choice.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;

use readmodel::{Kind, ReadModel};

use crate::cache::{ModelCache, offsets_version};
use crate::error::QueryError;
use crate::nodes::{NodeAnswer, NodeFailure, NodePartition, ProjectionInfo, ProjectorNodes};
use crate::params::{SeriesRange, TimeRange};

/// The query a client asked for; each kind of projection answers some of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryKind {
    Distinct,
    Top,
    Count,
    Contains,
    /// A series over steps: every kind answers it.
    Series,
    /// The groups of a grouped projection: distinct and top projections answer it.
    Groups,
}

/// How current an answer is, partition by partition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Freshness {
    /// True when every configured node answered, every partition of the topic is served, and
    /// none is stalled: the answer covers the whole log up to the reported offsets.
    pub complete: bool,
    /// The partitions the answering nodes hold, sorted by partition.
    pub partitions: Vec<PartitionFreshness>,
    /// Largest known `lag` among `partitions`; 0 when none is known.
    pub max_lag: i64,
    /// Nodes whose data is missing from the answer (down, too slow, or answered badly).
    pub nodes_unreachable: Vec<String>,
    /// Sum of `lost_records` over `partitions`: records the answer misses for good.
    pub lost_records: i64,
    /// Partitions of the topic that no answering node serves right now (a node is down, or
    /// the partition is moving between nodes): the answer misses their events for now.
    pub missing_partitions: Vec<i32>,
}

/// One partition: how far its node has folded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionFreshness {
    pub partition: i32,
    /// The projector node holding the partition, as configured in `projector_urls`.
    pub node: String,
    /// Offset of the next record the node will fold.
    pub next_offset: i64,
    /// Offset after the last record in the partition when the node last looked; `null` until
    /// the node has learnt it from the broker.
    pub high_watermark: Option<i64>,
    /// Records in the partition not yet folded; `null` while `high_watermark` is unknown.
    pub lag: Option<i64>,
    /// Event time (epoch ms) of the last folded record; `null` when none carried one.
    pub last_event_ms: Option<i64>,
    /// Records of the partition deleted by retention before they were folded: the answer
    /// misses them. 0 when the read models cover the whole log.
    pub lost_records: i64,
    /// Set when the partition is not moving (a record it cannot fold could not be
    /// dead-lettered); the reason says why.
    pub stalled: Option<String>,
}

/// The merged read model of one projection and the freshness of the merge.
#[derive(Debug)]
pub(crate) struct Gathered {
    pub kind: Kind,
    /// `None` when no answering node holds any bucket of the tenant in the window.
    pub read_model: Option<ReadModel>,
    pub freshness: Freshness,
}

/// The projection list and the partitions of all nodes.
#[derive(Debug)]
pub(crate) struct Status {
    pub projections: Vec<ProjectionInfo>,
    pub freshness: Freshness,
}

impl QueryKind {
    /// The endpoint's name, as in `/v1/projections/{name}/<query>`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueryKind::Distinct => "distinct",
            QueryKind::Top => "top",
            QueryKind::Count => "count",
            QueryKind::Contains => "contains",
            QueryKind::Series => "series",
            QueryKind::Groups => "groups",
        }
    }

    /// Whether a projection of `kind` answers this query.
    pub fn answered_by(self, kind: Kind) -> bool {
        match self {
            QueryKind::Series => true,
            QueryKind::Groups => kind != Kind::Membership,
            _ => kind == self.projection_kind(),
        }
    }

    /// The kind of projection that answers this query.
    pub fn projection_kind(self) -> Kind {
        match self {
            QueryKind::Distinct => Kind::Distinct,
            QueryKind::Top | QueryKind::Count => Kind::Top,
            QueryKind::Contains => Kind::Membership,
            QueryKind::Series | QueryKind::Groups => Kind::Distinct,
        }
    }
}

/// The queries a kind of projection answers, for error messages.
pub(crate) fn supported_queries(kind: Kind) -> &'static str {
    match kind {
        Kind::Distinct => "distinct, series, groups (with group_by), overlap",
        Kind::Top => "top, count, series, groups (with group_by)",
        Kind::Membership => "contains, series",
    }
}

/// Asks every node for its read model of `name` for `tenant` over `range` and merges them.
pub(crate) async fn gather_read_model(
    nodes: &ProjectorNodes,
    name: &str,
    tenant: &str,
    range: TimeRange,
    asked: QueryKind,
) -> Result<Gathered, QueryError> {
    let answers = nodes.read_models(name, tenant, range).await;
    let (kind, mut merged, freshness) = merge_answers(name, asked, answers, 1)?;
    Ok(Gathered {
        kind,
        read_model: merged.pop().flatten(),
        freshness,
    })
}

/// [`gather_read_model`] through `cache`: the nodes' positions are read first, and while no
/// partition moved since a window was merged, the merge is taken from the cache.
pub(crate) async fn gather_read_model_cached(
    nodes: &ProjectorNodes,
    cache: &ModelCache,
    name: &str,
    tenant: &str,
    range: TimeRange,
    asked: QueryKind,
) -> Result<Gathered, QueryError> {
    let positions = nodes.partitions().await;
    let Some(version) = offsets_version(&positions) else {
        return gather_read_model(nodes, name, tenant, range, asked).await;
    };
    if let Some(hit) = cache.get(tenant, name, range, version) {
        if !asked.answered_by(hit.kind) {
            return Err(QueryError::UnsupportedQuery {
                name: name.into(),
                kind: hit.kind.to_string(),
                asked: asked.as_str(),
                supported: supported_queries(hit.kind),
            });
        }
        let mut partitions = Vec::new();
        let mut partition_count = None;
        for answer in positions {
            if let Ok(body) = answer.result {
                partition_count = partition_count.max(body.partition_count);
                partitions.extend(
                    body.partitions
                        .into_iter()
                        .map(|p| (answer.node.clone(), p)),
                );
            }
        }
        let freshness = freshness(partitions, partition_count, Vec::new());
        refuse_overlap(&freshness)?;
        return Ok(Gathered {
            kind: hit.kind,
            read_model: hit.read_model.clone(),
            freshness,
        });
    }
    let gathered = gather_read_model(nodes, name, tenant, range, asked).await?;
    if gathered.freshness.nodes_unreachable.is_empty() {
        cache.put(
            tenant,
            name,
            range,
            version,
            gathered.kind,
            gathered.read_model.clone(),
        );
    }
    Ok(gathered)
}

/// The merged read models of one projection per step of a series, and their freshness.
#[derive(Debug)]
pub(crate) struct GatheredSeries {
    pub kind: Kind,
    /// One per step, in order; `None` where no answering node holds a bucket of the step.
    pub steps: Vec<Option<ReadModel>>,
    pub freshness: Freshness,
}

/// Asks every node for the read models of `name` for `tenant` per `step` over `[from, to)`
/// and merges them step by step.
pub(crate) async fn gather_series(
    nodes: &ProjectorNodes,
    name: &str,
    tenant: &str,
    series: SeriesRange,
    asked: QueryKind,
) -> Result<GatheredSeries, QueryError> {
    let answers = nodes.read_model_series(name, tenant, series).await;
    let (kind, steps, freshness) = merge_answers(name, asked, answers, series.steps())?;
    Ok(GatheredSeries {
        kind,
        steps,
        freshness,
    })
}

/// A node answer that carries read models: one for a range, one per step for a series.
pub(crate) trait ModelsBody {
    fn kind(&self) -> &str;
    fn partition_count(&self) -> Option<i32>;
    fn partitions(&self) -> &[NodePartition];
    /// The encoded read model of every slot, in order.
    fn encoded(&self) -> Vec<Option<&str>>;
}

/// Merges the answers of every node slot by slot into `slots` read models, with the freshness
/// of the partitions the answering nodes hold.
fn merge_answers<B: ModelsBody>(
    name: &str,
    asked: QueryKind,
    answers: Vec<NodeAnswer<B>>,
    slots: usize,
) -> Result<(Kind, Vec<Option<ReadModel>>, Freshness), QueryError> {
    let mut reached = Vec::new();
    let mut unknown = Vec::new();
    let mut failed = Vec::new();
    for NodeAnswer { node, result } in answers {
        match result {
            Ok(body) => reached.push((node, body)),
            Err(failure @ NodeFailure::UnknownProjection(_)) => unknown.push((node, failure)),
            Err(failure) => failed.push((node, failure)),
        }
    }
    if reached.is_empty() {
        record_failures(&failed);
        if !unknown.is_empty() {
            return Err(QueryError::UnknownProjection { name: name.into() });
        }
        return Err(unavailable(&failed));
    }
    // Some nodes serve the projection and others do not know it: their projection files differ,
    // and the partitions of the latter are missing from this answer.
    failed.extend(unknown);

    let kind = agreed_kind(name, reached.iter().map(|(_, body)| body.kind())).and_then(|kind| {
        if asked.answered_by(kind) {
            return Ok(kind);
        }
        Err(QueryError::UnsupportedQuery {
            name: name.into(),
            kind: kind.to_string(),
            asked: asked.as_str(),
            supported: supported_queries(kind),
        })
    });
    let kind = match kind {
        Ok(kind) => kind,
        Err(error) => {
            record_failures(&failed);
            return Err(error);
        }
    };

    let mut merged: Vec<Option<ReadModel>> = (0..slots).map(|_| None).collect();
    let mut partitions = Vec::new();
    let mut partition_count = None;
    let mut decoded = 0;
    for (node, body) in reached {
        let encoded = body.encoded();
        if encoded.len() != slots {
            failed.push((
                node,
                NodeFailure::InvalidBody(format!(
                    "{} read models where {slots} were asked",
                    encoded.len()
                )),
            ));
            continue;
        }
        let models: Result<Vec<Option<ReadModel>>, NodeFailure> =
            encoded.into_iter().map(|e| decode(e, kind)).collect();
        let models = match models {
            Ok(models) => models,
            Err(failure) => {
                failed.push((node, failure));
                continue;
            }
        };
        decoded += 1;
        for (slot, model) in merged.iter_mut().zip(models) {
            let Some(model) = model else { continue };
            match slot {
                None => *slot = Some(model),
                // While the nodes switch one by one to a definition that adds or removes
                // group_by, some answer grouped read models and some not: the totals still
                // merge, and the answer has no groups until every node has switched.
                Some(into) if into.is_grouped() != model.is_grouped() => {
                    let mut total = into.total();
                    total
                        .merge(&model.total())
                        .map_err(|e| QueryError::ProjectorsDisagree {
                            name: name.into(),
                            reason: format!("their read models do not merge: {e}"),
                        })?;
                    *into = total;
                }
                Some(into) => into
                    .merge(&model)
                    .map_err(|e| QueryError::ProjectorsDisagree {
                        name: name.into(),
                        reason: format!("their read models do not merge: {e}"),
                    })?,
            }
        }
        partition_count = partition_count.max(body.partition_count());
        partitions.extend(body.partitions().iter().map(|p| (node.clone(), p.clone())));
    }
    record_failures(&failed);
    if decoded == 0 {
        return Err(unavailable(&failed));
    }
    let freshness = freshness(
        partitions,
        partition_count,
        failed.iter().map(|(node, _)| node.clone()).collect(),
    );
    refuse_overlap(&freshness)?;
    Ok((kind, merged, freshness))
}

/// Asks every node for its projections and partitions.
///
/// The projection list comes from the first node, in config order, that answers it; partitions
/// from every node. Overlapping partitions are reported as they are: this is a status page.
pub(crate) async fn gather_status(nodes: &ProjectorNodes) -> Result<Status, QueryError> {
    let (projection_answers, partition_answers) =
        tokio::join!(nodes.projections(), nodes.partitions());

    let mut failed = Vec::new();
    let mut projections = None;
    let mut partitions = Vec::new();
    let mut partition_count = None;
    for (listed, positions) in projection_answers.into_iter().zip(partition_answers) {
        let node = listed.node;
        match (listed.result, positions.result) {
            (Ok(body), Ok(positions)) => {
                projections.get_or_insert(body.projections);
                partition_count = partition_count.max(positions.partition_count);
                partitions.extend(positions.partitions.into_iter().map(|p| (node.clone(), p)));
            }
            (Ok(body), Err(failure)) => {
                projections.get_or_insert(body.projections);
                failed.push((node, failure));
            }
            (Err(failure), Ok(_)) | (Err(failure), Err(_)) => failed.push((node, failure)),
        }
    }
    record_failures(&failed);
    let Some(projections) = projections else {
        return Err(unavailable(&failed));
    };
    let unreachable = failed.into_iter().map(|(node, _)| node).collect();
    Ok(Status {
        projections,
        freshness: freshness(partitions, partition_count, unreachable),
    })
}

/// The one kind every answering node reports for the projection.
fn agreed_kind<'a>(name: &str, kinds: impl Iterator<Item = &'a str>) -> Result<Kind, QueryError> {
    let mut agreed: Option<&str> = None;
    for kind in kinds {
        match agreed {
            None => agreed = Some(kind),
            Some(seen) if seen == kind => {}
            Some(seen) => {
                return Err(QueryError::ProjectorsDisagree {
                    name: name.into(),
                    reason: format!(
                        "one node says kind {seen:?}, another {kind:?}; deploy the same \
                         projection file to every projector node"
                    ),
                });
            }
        }
    }
    let reported = agreed.unwrap_or_default();
    [Kind::Distinct, Kind::Top, Kind::Membership]
        .into_iter()
        .find(|kind| kind.as_str() == reported)
        .ok_or_else(|| QueryError::ProjectorsDisagree {
            name: name.into(),
            reason: format!(
                "the nodes report kind {reported:?}, which this query api does not know"
            ),
        })
}

/// Decodes a node's read model and checks it is of the kind the node claims.
fn decode(encoded: Option<&str>, kind: Kind) -> Result<Option<ReadModel>, NodeFailure> {
    let Some(encoded) = encoded else {
        return Ok(None);
    };
    let bytes = BASE64
        .decode(encoded)
        .map_err(|e| NodeFailure::InvalidBody(format!("read_model is not standard base64: {e}")))?;
    let model = ReadModel::from_bytes(&bytes)
        .map_err(|e| NodeFailure::InvalidBody(format!("read_model bytes are refused: {e}")))?;
    if model.kind() != kind {
        return Err(NodeFailure::InvalidBody(format!(
            "read_model is a {} read model but the projection is {kind}",
            model.kind()
        )));
    }
    Ok(Some(model))
}

fn freshness(
    partitions: Vec<(String, NodePartition)>,
    partition_count: Option<i32>,
    unreachable: Vec<String>,
) -> Freshness {
    let mut partitions: Vec<PartitionFreshness> = partitions
        .into_iter()
        .map(|(node, p)| PartitionFreshness {
            partition: p.partition,
            node,
            next_offset: p.next_offset,
            high_watermark: p.high_watermark,
            lag: p.lag,
            last_event_ms: p.last_event_ms,
            lost_records: p.lost_records,
            stalled: p.stalled,
        })
        .collect();
    partitions.sort_by(|a, b| (a.partition, &a.node).cmp(&(b.partition, &b.node)));
    let max_lag = partitions
        .iter()
        .filter_map(|p| p.lag)
        .max()
        .unwrap_or(0)
        .max(0);
    let lost_records = partitions.iter().map(|p| p.lost_records).sum();
    let missing_partitions: Vec<i32> = (0..partition_count.unwrap_or(0))
        .filter(|id| !partitions.iter().any(|p| p.partition == *id))
        .collect();
    Freshness {
        complete: unreachable.is_empty()
            && missing_partitions.is_empty()
            && partitions.iter().all(|p| p.stalled.is_none()),
        missing_partitions,
        lost_records,
        partitions,
        max_lag,
        nodes_unreachable: unreachable,
    }
}

/// Fails when one partition is reported by two nodes: merging both would count it twice.
fn refuse_overlap(freshness: &Freshness) -> Result<(), QueryError> {
    let mut holders: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
    for p in &freshness.partitions {
        holders.entry(p.partition).or_default().push(&p.node);
    }
    match holders.into_iter().find(|(_, nodes)| nodes.len() > 1) {
        None => Ok(()),
        Some((partition, nodes)) => Err(QueryError::PartitionOverlap {
            partition,
            nodes: nodes.join(", "),
        }),
    }
}

fn record_failures(failed: &[(String, NodeFailure)]) {
    for (node, failure) in failed {
        failure.record(node);
    }
}

fn unavailable(failed: &[(String, NodeFailure)]) -> QueryError {
    let nodes = failed
        .iter()
        .map(|(node, failure)| format!("{node}: {}", failure.reason()))
        .collect::<Vec<_>>()
        .join("; ");
    QueryError::ProjectorsUnavailable { nodes }
}
