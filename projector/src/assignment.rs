//! Which partitions this node serves right now, and how fresh each one is.
//!
//! The consumer thread adds partitions when they are assigned and removes them when revoked; the
//! internal endpoint reads it to serve only the state of partitions this node owns, so a query
//! never counts a partition twice across nodes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// Freshness of one assigned partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    /// Next offset to fold: everything below it is in the stored read models.
    pub next_offset: i64,
    /// Offset the broker will give the next record; `None` until first read.
    pub high_watermark: Option<i64>,
    /// Records in the partition not yet folded; `None` until the high watermark is known.
    pub lag: Option<i64>,
    /// Event time of the last folded record, epoch ms.
    pub last_event_ms: Option<i64>,
    /// Records deleted by retention before this node folded them: the read models miss them.
    pub lost_records: i64,
    /// Why the partition is not moving, when a record cannot be dead-lettered.
    pub stalled: Option<String>,
}

/// The shared, current assignment of this node.
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    partitions: Arc<RwLock<BTreeMap<i32, PartitionStatus>>>,
    /// Partitions of the topic, from its metadata; 0 until read.
    partition_count: Arc<AtomicI32>,
}

impl Assignment {
    /// Starts serving `partition` from `next_offset`.
    pub fn assign(
        &self,
        partition: i32,
        next_offset: i64,
        last_event_ms: Option<i64>,
        lost_records: i64,
    ) {
        let mut partitions = self.partitions.write().expect("assignment lock poisoned");
        partitions.insert(
            partition,
            PartitionStatus {
                partition,
                next_offset,
                high_watermark: None,
                lag: None,
                last_event_ms,
                lost_records,
                stalled: None,
            },
        );
    }

    /// Adds records lost to retention.
    pub fn add_lost(&self, partition: i32, records: i64) {
        let mut partitions = self.partitions.write().expect("assignment lock poisoned");
        if let Some(status) = partitions.get_mut(&partition) {
            status.lost_records += records;
        }
    }

    /// Marks a partition stalled (with the reason) or moving again (`None`).
    pub fn set_stalled(&self, partition: i32, reason: Option<String>) {
        let mut partitions = self.partitions.write().expect("assignment lock poisoned");
        if let Some(status) = partitions.get_mut(&partition) {
            status.stalled = reason;
        }
    }

    /// Records the topic's partition count.
    pub fn set_partition_count(&self, count: i32) {
        self.partition_count.store(count, Ordering::Relaxed);
    }

    /// The topic's partition count, once known.
    pub fn partition_count(&self) -> Option<i32> {
        Some(self.partition_count.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }

    /// Stops serving `partition`.
    pub fn revoke(&self, partition: i32) {
        let mut partitions = self.partitions.write().expect("assignment lock poisoned");
        partitions.remove(&partition);
    }

    /// Stops serving every partition.
    pub fn clear(&self) {
        self.partitions
            .write()
            .expect("assignment lock poisoned")
            .clear();
    }

    pub fn contains(&self, partition: i32) -> bool {
        let partitions = self.partitions.read().expect("assignment lock poisoned");
        partitions.contains_key(&partition)
    }

    /// Records that the store now holds everything below `next_offset`.
    pub fn advance(&self, partition: i32, next_offset: i64, last_event_ms: Option<i64>) {
        let mut partitions = self.partitions.write().expect("assignment lock poisoned");
        if let Some(status) = partitions.get_mut(&partition) {
            status.next_offset = next_offset;
            status.last_event_ms = last_event_ms.or(status.last_event_ms);
            status.lag = status
                .high_watermark
                .map(|high| (high - next_offset).max(0));
        }
    }

    /// Records the broker's high watermark of `partition`.
    pub fn set_high_watermark(&self, partition: i32, high_watermark: i64) -> Option<i64> {
        let mut partitions = self.partitions.write().expect("assignment lock poisoned");
        let status = partitions.get_mut(&partition)?;
        status.high_watermark = Some(high_watermark);
        let lag = (high_watermark - status.next_offset).max(0);
        status.lag = Some(lag);
        Some(lag)
    }

    /// A copy of every assigned partition's status, by partition.
    pub fn snapshot(&self) -> Vec<PartitionStatus> {
        let partitions = self.partitions.read().expect("assignment lock poisoned");
        partitions.values().cloned().collect()
    }

    pub fn partitions(&self) -> Vec<i32> {
        let partitions = self.partitions.read().expect("assignment lock poisoned");
        partitions.keys().copied().collect()
    }
}
