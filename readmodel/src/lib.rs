//! Read models for the query side: the projection file that says what to compute, and the
//! sketch read models that hold the answers.
//!
//! A [`Projection`] reads one field of matching records and folds its value into a
//! [`ReadModel`] per time bucket. A read model is one mergeable sketch (HyperLogLog for distinct
//! counts, count-min plus frequent items for top-k and frequencies, a Bloom filter for
//! membership) plus the exact number of values folded into it.
//!
//! Guarantee: read models built from the same projection parameters merge into the read model of
//! the combined stream, merges between different kinds or parameters fail instead of mixing, and
//! the stored bytes round-trip exactly and are rejected with a reason when they are not a valid
//! read model of this format.

mod canonical;
pub mod projection;
pub mod read_model;

pub use projection::{
    Kind, ParamsError, Projection, ProjectionError, ProjectionFile, SketchParams,
};
pub use read_model::{
    CountEstimate, DistinctEstimate, FORMAT_VERSION, MAGIC, MembershipAnswer, ReadModel,
    ReadModelError, TopItem,
};
