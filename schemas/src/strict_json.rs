//! JSON text to [`serde_json::Value`], refusing any object that names a field twice.
//!
//! Guarantee: [`from_slice`] accepts exactly the texts `serde_json::from_slice::<Value>` accepts
//! (same nesting limit, same numbers), except those with a repeated key in some object, which
//! fail with "duplicate field `name`" and the position of the repeat. JSON parsers disagree on
//! which of two values wins, so an event that repeats a field means different things to
//! different readers; it is refused instead of guessed at.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses one JSON value from `bytes`; trailing whitespace is allowed, anything else is not.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let StrictValue(value) = StrictValue::deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StrictValue, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(value)))
    }

    fn visit_i64<E>(self, value: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(value.into())))
    }

    fn visit_u64<E>(self, value: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(value.into())))
    }

    fn visit_f64<E>(self, value: f64) -> Result<StrictValue, E> {
        // JSON text cannot spell NaN or infinity, so the number always exists.
        Ok(StrictValue(
            Number::from_f64(value).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E>(self, value: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(value)))
    }

    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<StrictValue, A::Error> {
        let mut values = Vec::with_capacity(items.size_hint().unwrap_or(0).min(1024));
        while let Some(StrictValue(value)) = items.next_element()? {
            values.push(value);
        }
        Ok(StrictValue(Value::Array(values)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<StrictValue, A::Error> {
        let mut map = Map::new();
        while let Some(key) = entries.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            let StrictValue(value) = entries.next_value()?;
            map.insert(key, value);
        }
        Ok(StrictValue(Value::Object(map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_duplicate_keys_are_refused_at_any_depth_with_their_position() {
        let error = from_slice(br#"{"type":"a","type":"b"}"#).unwrap_err();
        assert!(
            error.to_string().contains("duplicate field `type`"),
            "{error}"
        );
        assert_eq!((error.line(), error.column()), (1, 18));

        let error = from_slice(b"[{\"p\":{\"a\":1,\n\"a\":2}}]").unwrap_err();
        assert!(error.to_string().contains("duplicate field `a`"), "{error}");
        assert_eq!(error.line(), 2);
    }

    #[test]
    fn test_accepts_what_serde_json_accepts_and_gives_the_same_value() {
        let texts: [&[u8]; 6] = [
            br#"{"a":1,"b":[1,2.5,-3,true,null,"x"],"c":{"d":{}}}"#,
            b" [ ] ",
            br#"18446744073709551615"#,
            br#"-9223372036854775808"#,
            br#"0.1"#,
            br#""\u00e9\ud83d\ude00""#,
        ];
        for text in texts {
            let strict = from_slice(text).unwrap();
            let plain: Value = serde_json::from_slice(text).unwrap();
            assert_eq!(strict, plain, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn test_refuses_what_serde_json_refuses() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        let texts: [&[u8]; 4] = [b"{", b"[1,]", b"{} {}", deep.as_bytes()];
        for text in texts {
            assert!(from_slice(text).is_err());
            assert!(serde_json::from_slice::<Value>(text).is_err());
        }
    }
}
