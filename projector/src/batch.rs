//! Taking many messages from a consumer's queue in one call.
//!
//! rust-rdkafka 0.39 hands out one message per `poll`, and each poll reads the clock and takes
//! the queue's lock; a replay spent a sixth of its folding thread there. librdkafka's own batch
//! call, `rd_kafka_consume_batch_queue`, takes up to a batch of messages under one wait. rdkafka
//! exports librdkafka's raw bindings, and this module is the only place in the workspace that
//! calls them (the only one allowed `unsafe`): a [`BatchReader`] borrows the consumer, so it
//! cannot outlive it, and gives each message to a closure as a [`RawMessage`] that borrows the
//! message, so nothing outlives the batch.
//!
//! Only for consumers with an explicit assignment, as replay's are. The batch call serves the
//! queue's other events without rust-rdkafka: client errors still reach the log through
//! librdkafka's log callback, and consumer errors come back as messages with an error code, but
//! a group rebalance would be answered by librdkafka's default (drop the assignment), which a
//! subscribed consumer must not get.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::time::Duration;

use anyhow::bail;
use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// One message of a batch, valid while the closure given to [`BatchReader::read`] runs.
pub(crate) struct RawMessage<'m> {
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<&'m [u8]>,
}

/// Reads the messages of a consumer's assigned partitions a batch at a time.
pub(crate) struct BatchReader<'c> {
    queue: *mut rd::rd_kafka_queue_t,
    messages: Vec<*mut rd::rd_kafka_message_t>,
    consumer: PhantomData<&'c BaseConsumer>,
}

impl<'c> BatchReader<'c> {
    /// A reader of `consumer`'s queue taking up to `batch` messages per call. The consumer
    /// must not be polled while the reader exists.
    pub(crate) fn new(consumer: &'c BaseConsumer, batch: usize) -> anyhow::Result<Self> {
        // SAFETY: the client pointer is valid while `consumer` lives, which the reader's
        // lifetime guarantees; the queue handle it returns is released in `drop`.
        let queue = unsafe { rd::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        if queue.is_null() {
            bail!("the Kafka client has no consumer queue");
        }
        Ok(BatchReader {
            queue,
            messages: Vec::with_capacity(batch.max(1)),
            consumer: PhantomData,
        })
    }

    /// Waits up to `timeout` for messages, gives each one taken to `each` in order, and
    /// returns how many there were (0 when none came in time). A message carrying a Kafka
    /// error ends the batch with that error; so does an error from `each`.
    pub(crate) fn read(
        &mut self,
        timeout: Duration,
        mut each: impl FnMut(RawMessage<'_>) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let capacity = self.messages.capacity();
        // SAFETY: the array has room for `capacity` pointers; librdkafka writes at most that
        // many and returns how many it wrote, or -1 on error.
        let taken = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue,
                timeout_ms,
                self.messages.as_mut_ptr(),
                capacity,
            )
        };
        let Ok(taken) = usize::try_from(taken) else {
            bail!("librdkafka could not read a batch from the consumer queue");
        };
        // SAFETY: librdkafka initialised the first `taken` pointers.
        unsafe { self.messages.set_len(taken) };
        let result = self.messages.iter().try_for_each(|&message| {
            // SAFETY: each pointer is a message librdkafka handed over, alive until it is
            // destroyed below; the borrow given to `each` does not outlive this closure.
            let message = unsafe { &*message };
            if message.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                let code = RDKafkaErrorCode::from(message.err);
                bail!(
                    "kafka error while consuming: {}",
                    KafkaError::MessageConsumption(code)
                );
            }
            let payload = (!message.payload.is_null()).then(|| {
                // SAFETY: librdkafka guarantees `len` readable bytes at a non-null payload.
                unsafe { std::slice::from_raw_parts(message.payload.cast::<u8>(), message.len) }
            });
            each(RawMessage {
                partition: message.partition,
                offset: message.offset,
                payload,
            })
        });
        self.release();
        result.map(|()| taken)
    }

    /// Gives every message of the last batch back to librdkafka.
    fn release(&mut self) {
        for message in self.messages.drain(..) {
            // SAFETY: each message was handed over by the batch call and is destroyed once.
            unsafe { rd::rd_kafka_message_destroy(message) };
        }
    }
}

impl Drop for BatchReader<'_> {
    fn drop(&mut self) {
        self.release();
        // SAFETY: the handle came from `rd_kafka_queue_get_consumer` and is released once.
        unsafe { rd::rd_kafka_queue_destroy(self.queue) };
    }
}
