//! Property tests of the schemas contract over generated inputs: records survive their byte
//! form, accepted events become records that decode, field paths survive their text form, and
//! jump hash keeps its range and its consistency as buckets grow.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use schemas::{
    BodyFormat, FieldPath, Limits, Record, SCHEMA_VERSION, jump_hash, key_hash, parse_events,
    partition_for, validate_event,
};

const NOW_MS: i64 = 1_714_564_800_000;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1.0e12f64..1.0e12).prop_map(|x| json!(x)),
        ".{0,12}".prop_map(Value::String),
    ]
}

/// JSON values at most three levels deep, so properties (level 1) stay within the default 4.
fn property_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn properties() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(".{0,8}", property_value(), 0..6)
        .prop_map(|map| map.into_iter().collect())
}

fn record() -> impl Strategy<Value = Record> {
    (
        "[a-z0-9_-]{1,16}",
        prop::option::of(".{1,20}"),
        "[A-Za-z0-9_.:-]{1,64}",
        ".{1,40}",
        0..=schemas::record::MAX_RECORD_TIME_MS,
        0..=schemas::record::MAX_RECORD_TIME_MS,
        properties(),
    )
        .prop_map(
            |(tenant, id, event_type, key, time_ms, received_ms, properties)| Record {
                v: SCHEMA_VERSION,
                tenant,
                id,
                event_type,
                key,
                time_ms,
                received_ms,
                properties,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn record_bytes_round_trip(record in record()) {
        prop_assert_eq!(Record::from_bytes(&record.to_bytes()).unwrap(), record);
    }

    #[test]
    fn record_from_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = Record::from_bytes(&bytes);
    }

    #[test]
    fn accepted_events_become_decodable_records(
        id in prop::option::of("[a-z0-9-]{1,20}"),
        event_type in "[A-Za-z0-9_.:-]{1,64}",
        key in ".{1,40}",
        time_ms in 0..=NOW_MS,
        properties in properties(),
    ) {
        let mut event = json!({
            "type": event_type, "key": key, "time": time_ms, "properties": properties
        });
        if let Some(id) = &id {
            event["id"] = json!(id);
        }
        let record = validate_event(&event, "", "weblog", NOW_MS, &Limits::default()).unwrap();
        prop_assert_eq!(&record.id, &id);
        prop_assert_eq!(&record.event_type, &event_type);
        prop_assert_eq!(&record.key, &key);
        prop_assert_eq!(record.time_ms, time_ms);
        prop_assert_eq!(&record.properties, &properties);
        prop_assert_eq!(Record::from_bytes(&record.to_bytes()).unwrap(), record);
    }

    #[test]
    fn batch_and_lines_agree(keys in prop::collection::vec("[a-z0-9]{1,12}", 1..20)) {
        let events: Vec<Value> = keys.iter().map(|key| json!({"type": "t", "key": key})).collect();
        let array = serde_json::to_vec(&events).unwrap();
        let lines: Vec<u8> = events
            .iter()
            .flat_map(|event| {
                let mut line = serde_json::to_vec(event).unwrap();
                line.push(b'\n');
                line
            })
            .collect();
        let limits = Limits::default();
        let from_array = parse_events(&array, BodyFormat::Json, "w", NOW_MS, &limits).unwrap();
        let from_lines = parse_events(&lines, BodyFormat::NdJson, "w", NOW_MS, &limits).unwrap();
        prop_assert_eq!(&from_array, &from_lines);
        let got: Vec<&str> = from_array.iter().map(|record| record.key.as_str()).collect();
        prop_assert_eq!(got, keys.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn parse_events_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..128),
        lines in any::<bool>(),
    ) {
        let format = if lines { BodyFormat::NdJson } else { BodyFormat::Json };
        let _ = parse_events(&body, format, "w", NOW_MS, &Limits::default());
    }

    #[test]
    fn field_path_text_round_trips(names in prop::collection::vec("[^.]{1,8}", 1..4)) {
        let path = FieldPath::property(names.clone()).unwrap();
        prop_assert_eq!(path.to_string(), format!("properties.{}", names.join(".")));
        prop_assert_eq!(path.to_string().parse::<FieldPath>().unwrap(), path);
    }

    #[test]
    fn jump_hash_grows_consistently(key in any::<u64>(), buckets in 1u32..10_000) {
        let before = jump_hash(key, buckets);
        let after = jump_hash(key, buckets + 1);
        prop_assert!(before < buckets);
        prop_assert!(after == before || after == buckets);
    }

    #[test]
    fn partition_is_in_range(key in ".{0,40}", partitions in 1u32..1_000) {
        let partition = partition_for(&key, partitions);
        prop_assert!((0..partitions as i32).contains(&partition));
        prop_assert_eq!(partition as u32, jump_hash(key_hash(key.as_bytes()), partitions));
    }
}
