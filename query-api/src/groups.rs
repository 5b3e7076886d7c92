//! Answers across groups and across projections: the groups of a grouped projection, and the
//! union and intersection of two distinct sets.
//!
//! Guarantee: a groups answer lists every group of the window, or refuses with
//! `too_many_groups` when they are more than one answer lists and no `limit` was given; with a
//! `limit` it lists the largest groups and says how many there are. An overlap answer's union
//! is the HyperLogLog union of the two operands (never a sum), and its intersection comes from
//! inclusion and exclusion with an interval that holds whenever the three intervals it is
//! derived from hold.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Serialize;

use readmodel::{DistinctEstimate, Kind, ReadModel, TopList};

use crate::error::QueryError;
use crate::gather::{Freshness, QueryKind};
use crate::params::{MAX_GROUPS_LISTED, Params, TimeRange};
use crate::routes::{
    AppState, CallerTenant, ProjectionName, Selected, Window, answerable, gather, group_by_of,
    in_group, kind_mismatch, predates_group_by, projection_info, query_pairs,
};

const GROUPS_PARAMS: &[&str] = &["from", "to", "limit", "k"];
const OVERLAP_PARAMS: &[&str] = &["a", "b", "a_group", "b_group", "from", "to"];

/// Top items per group of a top projection when `k` is not given.
const DEFAULT_GROUP_TOP_K: u32 = 3;

/// `GET /v1/projections/{name}/groups`.
#[derive(Serialize)]
pub(crate) struct GroupsAnswer {
    #[serde(flatten)]
    window: Window,
    kind: Kind,
    /// The field the projection groups by.
    group_by: String,
    /// Groups holding values in the window.
    groups_total: usize,
    /// Whether `groups` lists fewer than `groups_total` (the largest `limit` of them).
    truncated: bool,
    /// Values whose record had no group value: in the total, in no group.
    without_group: u64,
    /// Values of groups that would have passed the projection's `max_groups` in their bucket:
    /// in the total, in no group.
    past_max_groups: u64,
    groups: Vec<GroupEntry>,
    freshness: Freshness,
}

#[derive(Serialize)]
struct GroupEntry {
    group: String,
    /// Exact number of values folded into the group in the window.
    events: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    distinct: Option<DistinctEstimate>,
    /// The group's most frequent values (`k` of them), for top projections.
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    top: Option<TopList>,
}

/// `GET /v1/overlap`.
#[derive(Serialize)]
pub(crate) struct OverlapAnswer {
    tenant: String,
    from: Option<i64>,
    to: Option<i64>,
    a: Operand,
    b: Operand,
    /// Distinct values in either operand: the estimate of the union of the two sketches.
    union: DistinctEstimate,
    /// Distinct values in both operands, by inclusion and exclusion.
    intersection: DistinctEstimate,
}

#[derive(Serialize)]
struct Operand {
    projection: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    /// With `group`: values of the window in no group because their bucket was at
    /// `max_groups`; when not 0, the group's estimate may miss some of its values.
    #[serde(skip_serializing_if = "Option::is_none")]
    past_max_groups: Option<u64>,
    events: u64,
    distinct: DistinctEstimate,
    freshness: Freshness,
}

/// The groups of a grouped distinct or top projection over a window, largest first.
pub(crate) async fn groups(
    State(state): State<AppState>,
    CallerTenant(tenant): CallerTenant,
    ProjectionName(name): ProjectionName,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<GroupsAnswer>, QueryError> {
    let params = Params::new(query_pairs(query)?, GROUPS_PARAMS)?;
    let range = params.time_range()?;
    let limit = params.group_limit()?;
    let k = params.top_k_or(DEFAULT_GROUP_TOP_K)?;
    let gathered = gather(&state, &name, &tenant, range, QueryKind::Groups).await?;
    let info = projection_info(&state, &name).await?;
    let group_by = group_by_of(&info)
        .ok_or_else(|| QueryError::NotGrouped {
            name: name.clone(),
            parameter: None,
        })?
        .to_owned();
    let kind = gathered.kind;
    let (model, freshness) = answerable(gathered);
    let mut entries: Vec<GroupEntry> = match model.groups() {
        Some(groups) => groups
            .iter()
            .map(|(group, model)| GroupEntry {
                group: group.clone(),
                events: model.events(),
                distinct: model.distinct(),
                top: model.top(k as usize),
            })
            .collect(),
        // No node holds anything in the window.
        None if model.events() == 0 => Vec::new(),
        // The definition has group_by, the read models do not: written before it was declared.
        None => return Err(predates_group_by(&name)),
    };
    let groups_total = entries.len();
    let shown = match limit {
        Some(limit) => limit,
        None if groups_total > MAX_GROUPS_LISTED => {
            return Err(QueryError::TooManyGroups {
                groups: groups_total,
                max: MAX_GROUPS_LISTED,
            });
        }
        None => groups_total,
    };
    let size = |entry: &GroupEntry| {
        entry
            .distinct
            .as_ref()
            .map_or(entry.events as f64, |d| d.estimate)
    };
    entries.sort_by(|x, y| size(y).total_cmp(&size(x)).then(x.group.cmp(&y.group)));
    entries.truncate(shown);
    Ok(Json(GroupsAnswer {
        window: Window {
            projection: name,
            group: None,
            past_max_groups: None,
            tenant,
            from: range.from,
            to: range.to,
            events: model.events(),
        },
        kind,
        group_by,
        groups_total,
        truncated: entries.len() < groups_total,
        without_group: model.without_group(),
        past_max_groups: model.past_max_groups(),
        groups: entries,
        freshness,
    }))
}

/// Union and intersection of the distinct values of two operands, each a distinct projection
/// or one group of a grouped one, over the same window.
pub(crate) async fn overlap(
    State(state): State<AppState>,
    CallerTenant(tenant): CallerTenant,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<OverlapAnswer>, QueryError> {
    let params = Params::new(query_pairs(query)?, OVERLAP_PARAMS)?;
    let range = params.time_range()?;
    let a_name = params.required("a")?.to_owned();
    let b_name = params.required("b")?.to_owned();
    let a_group = params.non_empty("a_group")?;
    let b_group = params.non_empty("b_group")?;
    let (a_model, a) = operand(&state, &tenant, range, a_name, a_group, "a_group").await?;
    let (b_model, b) = operand(&state, &tenant, range, b_name, b_group, "b_group").await?;

    let mut union_model = a_model;
    union_model
        .merge(&b_model)
        .map_err(|e| QueryError::InvalidParameter {
            name: "b",
            reason: format!("its read model does not merge with that of a: {e}"),
        })?;
    let union = union_model
        .distinct()
        .expect("the union of distinct read models is distinct");
    let intersection = intersect(&a.distinct, &b.distinct, &union);
    Ok(Json(OverlapAnswer {
        tenant,
        from: range.from,
        to: range.to,
        a,
        b,
        union,
        intersection,
    }))
}

/// The read model of one overlap operand (its total alone, without groups) and its answer.
async fn operand(
    state: &AppState,
    tenant: &str,
    range: TimeRange,
    name: String,
    group: Option<&str>,
    parameter: &'static str,
) -> Result<(ReadModel, Operand), QueryError> {
    let gathered = gather(state, &name, tenant, range, QueryKind::Distinct).await?;
    let Selected {
        model,
        freshness,
        past_max_groups,
    } = in_group(state, &name, gathered, group, parameter).await?;
    let model = model.total();
    let distinct = model
        .distinct()
        .ok_or_else(|| kind_mismatch(&name, &model))?;
    let operand = Operand {
        projection: name,
        group: group.map(str::to_owned),
        past_max_groups,
        events: model.events(),
        distinct,
        freshness,
    };
    Ok((model, operand))
}

/// `|A ∩ B| = |A| + |B| - |A ∪ B|`, with the interval that holds whenever the intervals of
/// `a`, `b` and `union` all hold: at least `1 - 3 (1 - confidence)` by the union bound.
fn intersect(
    a: &DistinctEstimate,
    b: &DistinctEstimate,
    union: &DistinctEstimate,
) -> DistinctEstimate {
    let upper = (a.upper_bound + b.upper_bound - union.lower_bound)
        .min(a.upper_bound)
        .min(b.upper_bound)
        .max(0.0);
    let lower = (a.lower_bound + b.lower_bound - union.upper_bound).clamp(0.0, upper);
    let estimate = (a.estimate + b.estimate - union.estimate)
        .min(a.estimate.min(b.estimate))
        .clamp(lower, upper);
    let miss = (1.0 - a.confidence) + (1.0 - b.confidence) + (1.0 - union.confidence);
    DistinctEstimate {
        estimate,
        lower_bound: lower,
        upper_bound: upper,
        confidence: (1.0 - miss).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(estimate: f64, half_width: f64) -> DistinctEstimate {
        DistinctEstimate {
            estimate,
            lower_bound: estimate - half_width,
            upper_bound: estimate + half_width,
            confidence: 0.954,
        }
    }

    #[test]
    fn intersection_by_inclusion_and_exclusion_with_its_interval() {
        let both = intersect(
            &estimate(1000.0, 30.0),
            &estimate(600.0, 20.0),
            &estimate(1300.0, 40.0),
        );
        assert_eq!(both.estimate, 300.0);
        assert_eq!(both.lower_bound, 1000.0 - 30.0 + 600.0 - 20.0 - 1340.0);
        assert_eq!(both.upper_bound, 1030.0 + 620.0 - 1260.0);
        assert!((both.confidence - (1.0 - 3.0 * 0.046)).abs() < 1e-9);
    }

    #[test]
    fn intersection_stays_within_zero_and_the_smaller_operand() {
        // Disjoint sets whose union is estimated a little high.
        let none = intersect(
            &estimate(100.0, 5.0),
            &estimate(50.0, 3.0),
            &estimate(160.0, 6.0),
        );
        assert_eq!(none.estimate, 0.0);
        assert_eq!(none.lower_bound, 0.0);
        assert!(none.upper_bound >= 0.0);
        // One set inside the other, the union estimated low.
        let inside = intersect(
            &estimate(100.0, 5.0),
            &estimate(50.0, 3.0),
            &estimate(95.0, 5.0),
        );
        assert_eq!(inside.estimate, 50.0);
        assert_eq!(inside.upper_bound, 53.0);
        assert!(inside.lower_bound <= inside.estimate);
    }
}
