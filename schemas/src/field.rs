//! Field paths: the address of the field of a record that a projection reads.
//!
//! Guarantee: a [`FieldPath`] is always one of `key`, `type`, `id`, `tenant` or
//! `properties.<name>[.<name>...]` with no empty name, and its text form (used in projection
//! files and in serde) parses back to the same path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Address of a field a projection reads: `key`, `type`, `id`, `tenant` or
/// `properties.<a>[.<b>...]` (nested objects, one name per level).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    target: FieldTarget,
}

/// What a [`FieldPath`] points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldTarget {
    /// The event key (the entity).
    Key,
    /// The event type.
    Type,
    /// The client-chosen event id.
    Id,
    /// The tenant the event belongs to.
    Tenant,
    /// A property, one object name per nesting level; never empty, no empty names.
    Property(Vec<String>),
}

/// Why a text is not a field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldPathError {
    #[error("field path is empty: use key, type, id, tenant or properties.<name>")]
    Empty,
    #[error("unknown field path `{0}`: use key, type, id, tenant or properties.<name>[.<name>...]")]
    Unknown(String),
    #[error("field path `{0}` has an empty property name: write properties.<name>[.<name>...]")]
    EmptyName(String),
}

const PROPERTIES_PREFIX: &str = "properties.";

impl FieldPath {
    /// The path of a (possibly nested) property, one name per level; `None` if `names` is empty
    /// or a name is empty or holds a `.` (which the text form could not tell apart).
    pub fn property<I, S>(names: I) -> Option<FieldPath>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        if names.is_empty()
            || names
                .iter()
                .any(|name| name.is_empty() || name.contains('.'))
        {
            return None;
        }
        Some(FieldPath {
            target: FieldTarget::Property(names),
        })
    }

    /// What the path points at.
    pub fn target(&self) -> &FieldTarget {
        &self.target
    }
}

impl FromStr for FieldPath {
    type Err = FieldPathError;

    fn from_str(text: &str) -> Result<FieldPath, FieldPathError> {
        let target = match text {
            "" => return Err(FieldPathError::Empty),
            "key" => FieldTarget::Key,
            "type" => FieldTarget::Type,
            "id" => FieldTarget::Id,
            "tenant" => FieldTarget::Tenant,
            _ => {
                let Some(rest) = text.strip_prefix(PROPERTIES_PREFIX) else {
                    return Err(FieldPathError::Unknown(text.to_owned()));
                };
                let names: Vec<String> = rest.split('.').map(str::to_owned).collect();
                if names.iter().any(String::is_empty) {
                    return Err(FieldPathError::EmptyName(text.to_owned()));
                }
                FieldTarget::Property(names)
            }
        };
        Ok(FieldPath { target })
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            FieldTarget::Key => f.write_str("key"),
            FieldTarget::Type => f.write_str("type"),
            FieldTarget::Id => f.write_str("id"),
            FieldTarget::Tenant => f.write_str("tenant"),
            FieldTarget::Property(names) => write!(f, "properties.{}", names.join(".")),
        }
    }
}

impl Serialize for FieldPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FieldPath, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_field_path_parses_every_form() {
        assert_eq!(
            "key".parse::<FieldPath>().unwrap().target(),
            &FieldTarget::Key
        );
        assert_eq!(
            "type".parse::<FieldPath>().unwrap().target(),
            &FieldTarget::Type
        );
        assert_eq!(
            "id".parse::<FieldPath>().unwrap().target(),
            &FieldTarget::Id
        );
        assert_eq!(
            "tenant".parse::<FieldPath>().unwrap().target(),
            &FieldTarget::Tenant
        );
        assert_eq!(
            "properties.country".parse::<FieldPath>().unwrap().target(),
            &FieldTarget::Property(vec!["country".into()])
        );
        assert_eq!(
            "properties.geo.city".parse::<FieldPath>().unwrap().target(),
            &FieldTarget::Property(vec!["geo".into(), "city".into()])
        );
    }

    #[test]
    fn test_field_path_display_round_trips() {
        for text in [
            "key",
            "type",
            "id",
            "tenant",
            "properties.a",
            "properties.a.b.c",
        ] {
            let path: FieldPath = text.parse().unwrap();
            assert_eq!(path.to_string(), text);
            assert_eq!(path.to_string().parse::<FieldPath>().unwrap(), path);
        }
    }

    #[test]
    fn test_field_path_rejects_bad_text_with_a_clear_error() {
        assert_eq!("".parse::<FieldPath>(), Err(FieldPathError::Empty));
        for text in ["Key", "time", "properties", "props.a", " key", "key "] {
            let err = text.parse::<FieldPath>().unwrap_err();
            assert_eq!(err, FieldPathError::Unknown(text.to_owned()));
            assert!(
                err.to_string().contains("use key, type, id, tenant"),
                "{err}"
            );
        }
        for text in [
            "properties.",
            "properties..a",
            "properties.a.",
            "properties.a..b",
        ] {
            let err = text.parse::<FieldPath>().unwrap_err();
            assert_eq!(err, FieldPathError::EmptyName(text.to_owned()));
            assert!(err.to_string().contains("empty property name"), "{err}");
        }
    }

    #[test]
    fn test_field_path_serde_uses_the_text_form() {
        let path: FieldPath = "properties.geo.city".parse().unwrap();
        assert_eq!(
            serde_json::to_string(&path).unwrap(),
            r#""properties.geo.city""#
        );
        let back: FieldPath = serde_json::from_str(r#""properties.geo.city""#).unwrap();
        assert_eq!(back, path);
        let err = serde_json::from_str::<FieldPath>(r#""propertie.x""#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field path `propertie.x`"),
            "{err}"
        );
        assert!(serde_json::from_str::<FieldPath>("3").is_err());
    }

    #[test]
    fn test_field_path_property_constructor_refuses_names_it_could_not_print() {
        assert_eq!(
            FieldPath::property(["a", "b"]).unwrap().to_string(),
            "properties.a.b"
        );
        assert!(FieldPath::property(Vec::<String>::new()).is_none());
        assert!(FieldPath::property(["a", ""]).is_none());
        assert!(FieldPath::property(["a.b"]).is_none());
    }
}
