//! Read models for the query side: the projection file that says what to compute, and the
//! sketch read models that hold the answers.
//!
//! A [`Projection`] reads one field of matching records and folds its value into a
//! [`ReadModel`] per time bucket. A read model is one mergeable sketch (HyperLogLog for distinct
//! counts; frequent items plus a conservative-update count-min sketch for top-k and
//! frequencies; a scalable Bloom filter for membership) plus the exact number of values folded
//! into it. Every answer carries its bounds and says what they mean.
//!
//! Guarantee: read models built from the same projection parameters merge into a read model of
//! the combined stream whose bounds still hold (distinct counts of different `lg_k` merge down
//! to the smaller); merges between different kinds or other parameters fail instead of mixing;
//! no counter overflows silently; and the stored bytes round-trip exactly and are rejected with
//! a reason when they are not a valid read model of this format.

mod canonical;
mod count_min;
mod distinct;
mod groups;
mod membership;
pub mod projection;
pub mod read_model;
mod top;

pub use groups::{DEFAULT_MAX_GROUPS, GroupUpdate, MAX_GROUPS};
pub use projection::{
    GroupBy, Kind, ParamsError, Projection, ProjectionError, ProjectionFile, SketchParams,
};
pub use read_model::{
    CountEstimate, DistinctEstimate, FORMAT_VERSION, MAGIC, MembershipAnswer, ReadModel,
    ReadModelError, TopItem, TopList,
};
