//! The contract every service of the pipeline shares: the event clients send and its validation,
//! the Kafka record ingest writes and the projector reads, the field paths projections address,
//! the tenants of the API keys, and the pinned rule that places an event key on a partition.
//!
//! Guarantee: one definition of each, so a record written by any producer built on this crate
//! (or following docs/record-format.md) is read back identically and lands on the same partition.

pub mod event;
pub mod field;
pub mod partition;
pub mod record;
pub mod strict_json;
pub mod tenant;

pub use event::{
    BodyFormat, EVENT_FIELDS, Limits, LimitsError, MAX_ID_BYTES, MAX_TYPE_BYTES, Problem,
    parse_events, validate_event,
};
pub use field::{FieldPath, FieldPathError, FieldTarget};
pub use partition::{jump_hash, key_hash, partition_for};
pub use record::{Record, RecordError, SCHEMA_VERSION};
pub use tenant::{Tenant, TenantError, TenantFile};
