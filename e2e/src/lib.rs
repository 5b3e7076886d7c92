//! End-to-end tests of the whole pipeline against a real Kafka broker; see `tests/`.
