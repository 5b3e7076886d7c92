//! A synthetic stream of page views for benchmarks: deterministic, any length, generated as it
//! is sent.
//!
//! Keys are drawn uniformly from `keys` users; paths follow a Zipf-like law (path n comes up
//! about 1/n as often as path 1) over `paths` paths, so top-k and count-min see a realistic skew.
//! Event times advance `step_ms` (10 ms unless asked otherwise) per event from
//! 2024-01-01T00:00:00Z or a given start; every event has a unique id, `synthetic-N` counted from
//! a given first number, so several runs can add to one stream without being taken for retries.

use schemas::{Record, SCHEMA_VERSION};
use serde_json::{Map, Value};

/// First event time unless another is asked for: 2024-01-01T00:00:00Z.
pub const START_MS: i64 = 1_704_067_200_000;

/// Time between two events unless a span is asked for.
pub const DEFAULT_STEP_MS: i64 = 10;

/// Where and how densely a synthetic stream lies.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Time of the first event, epoch ms.
    pub start_ms: i64,
    /// Time between two events.
    pub step_ms: i64,
    /// Number in the first event's id; the draws of users and paths start from it too.
    pub first_id: u64,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            start_ms: START_MS,
            step_ms: DEFAULT_STEP_MS,
            first_id: 0,
        }
    }
}

/// `count` page views of `tenant`, laid out as `layout` says.
pub fn page_views(
    tenant: &str,
    count: u64,
    keys: u64,
    paths: u64,
    layout: Layout,
) -> impl Iterator<Item = Record> {
    let tenant = tenant.to_owned();
    let harmonic: f64 = (1..=paths).map(|n| 1.0 / n as f64).sum();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ layout.first_id.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (layout.first_id..layout.first_id.saturating_add(count)).map(move |i| {
        let user = next(&mut state) % keys;
        let path = zipf(uniform(&mut state), paths, harmonic);
        let mut properties = Map::new();
        properties.insert("path".into(), Value::String(format!("/page/{path}")));
        Record {
            v: SCHEMA_VERSION,
            tenant: tenant.clone(),
            id: Some(format!("synthetic-{i}")),
            event_type: "page_view".into(),
            key: format!("user-{user}"),
            time_ms: layout.start_ms + (i - layout.first_id) as i64 * layout.step_ms,
            received_ms: layout.start_ms + (i - layout.first_id) as i64 * layout.step_ms,
            properties,
        }
    })
}

/// splitmix64.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(state: &mut u64) -> f64 {
    (next(state) >> 11) as f64 / (1u64 << 53) as f64
}

/// The path rank for a uniform draw `u`, by an approximate inverse of the Zipf(1) CDF:
/// H(n) ~ ln(n) + 0.5772, so n ~ exp(u * H(paths) - 0.5772).
fn zipf(u: f64, paths: u64, harmonic: f64) -> u64 {
    let rank = (u * harmonic - 0.577_215_664_9).exp().floor() as u64;
    rank.clamp(1, paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_synthetic_stream_is_deterministic_and_skewed() {
        let first: Vec<Record> = page_views("t", 20_000, 1_000, 100, Layout::default()).collect();
        let again: Vec<Record> = page_views("t", 20_000, 1_000, 100, Layout::default()).collect();
        assert_eq!(first, again);
        let top = first
            .iter()
            .filter(|r| r.properties["path"] == "/page/1")
            .count();
        let tail = first
            .iter()
            .filter(|r| r.properties["path"] == "/page/50")
            .count();
        assert!(top > 5 * tail, "path 1: {top}, path 50: {tail}");
        assert!(first.iter().all(|r| r.key.starts_with("user-")));
    }

    #[test]
    fn test_a_later_run_continues_ids_and_draws_other_users() {
        let layout = Layout {
            start_ms: 5_000,
            step_ms: 7,
            first_id: 1_000,
        };
        let later: Vec<Record> = page_views("t", 3, 1_000_000, 100, layout).collect();
        let ids: Vec<&str> = later.iter().filter_map(|r| r.id.as_deref()).collect();
        assert_eq!(ids, ["synthetic-1000", "synthetic-1001", "synthetic-1002"]);
        let times: Vec<i64> = later.iter().map(|r| r.time_ms).collect();
        assert_eq!(times, [5_000, 5_007, 5_014]);
        let first: Vec<Record> = page_views("t", 3, 1_000_000, 100, Layout::default()).collect();
        assert!(first.iter().zip(&later).all(|(a, b)| a.key != b.key));
    }
}
