//! JSON text to [`serde_json::Value`], refusing any object that names a field twice.
//!
//! Guarantee: [`from_slice`] accepts exactly the texts `serde_json::from_slice::<Value>` accepts
//! (same nesting limit, same numbers), except those with a repeated key in some object, which
//! fail with "duplicate field `name`" and the position of the repeat. JSON parsers disagree on
//! which of two values wins, so an event that repeats a field means different things to
//! different readers; it is refused instead of guessed at.
//!
//! A [`ValueBudget`] caps the number of JSON values (scalars, arrays and objects) parsed, so a
//! body's parsed size is bounded by its value count, not only by its length: `[1,1,1,...]`
//! costs two bytes of text but some 32 bytes of `Value` per element.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// How many more JSON values may be parsed; shared by the parses of one body.
#[derive(Debug)]
pub struct ValueBudget {
    limit: usize,
    left: Cell<usize>,
    spent: Cell<bool>,
}

impl ValueBudget {
    /// A budget of `limit` values.
    pub fn new(limit: usize) -> ValueBudget {
        ValueBudget {
            limit,
            left: Cell::new(limit),
            spent: Cell::new(false),
        }
    }

    /// Whether a parse asked for more values than the budget had. A budget used exactly up is
    /// not spent.
    pub fn is_spent(&self) -> bool {
        self.spent.get()
    }

    fn take<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.spent.set(true);
                Err(E::custom(format_args!(
                    "more than {} JSON values (objects, arrays, strings, numbers, booleans and \
                 nulls) in one request",
                    self.limit
                )))
            }
        }
    }
}

/// Parses one JSON value from `bytes`; trailing whitespace is allowed, anything else is not.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    from_slice_within(bytes, &ValueBudget::new(usize::MAX))
}

/// [`from_slice`], failing once more values than `budget` has left were parsed.
pub fn from_slice_within(bytes: &[u8], budget: &ValueBudget) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Strict { budget }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Parses one value, as seed and visitor both.
#[derive(Clone, Copy)]
struct Strict<'b> {
    budget: &'b ValueBudget,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        self.budget.take()?;
        // JSON text cannot spell NaN or infinity, so the number always exists.
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::String(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        self.budget.take()?;
        let mut values = Vec::new();
        while let Some(value) = items.next_element_seed(self)? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        self.budget.take()?;
        let mut map = Map::new();
        while let Some(key) = entries.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            let value = entries.next_value_seed(self)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
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
    fn test_value_budget_counts_every_value_across_parses() {
        // An object, an array and two numbers are four values; then two more.
        let budget = ValueBudget::new(6);
        from_slice_within(br#"{"a":[1,2]}"#, &budget).unwrap();
        from_slice_within(br#"[true]"#, &budget).unwrap();
        assert!(!budget.is_spent());
        let error = from_slice_within(br#""one too many""#, &budget).unwrap_err();
        assert!(budget.is_spent());
        assert!(
            error.to_string().contains("more than 6 JSON values"),
            "{error}"
        );

        let error = from_slice_within(b"1", &ValueBudget::new(0)).unwrap_err();
        assert!(error.to_string().contains("more than 0"), "{error}");
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
