//! A field where "absent", explicit `null` and a value are three different cases.
//!
//! KubeDirector gives a setup package exactly these meanings: absent = inherit the app default,
//! `null` = this role runs no setup at all, an object = use this package. `Option<T>` would fold the
//! first two together and silently turn "no setup" into "inherit", so the distinction lives in a type.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Tristate<T> {
    /// The field is not in the object.
    #[default]
    Absent,
    /// The field is present with the value `null`.
    Null,
    /// The field holds a value.
    Set(T),
}

impl<T> Tristate<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Tristate::Absent)
    }

    /// The value, if one is set.
    pub fn as_set(&self) -> Option<&T> {
        match self {
            Tristate::Set(v) => Some(v),
            _ => None,
        }
    }

    /// This field if it says anything (null or a value), else `fallback`: how a role inherits the app default.
    pub fn or_inherit<'a>(&'a self, fallback: &'a Tristate<T>) -> &'a Tristate<T> {
        if self.is_absent() { fallback } else { self }
    }
}

// Deserialisation only runs when the key is present (the field carries `#[serde(default)]`), so a
// missing key stays `Absent` and a present key is either `null` or a value.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Tristate<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(deserializer)? {
            None => Tristate::Null,
            Some(v) => Tristate::Set(v),
        })
    }
}

// `Absent` must be skipped by the field (`skip_serializing_if = "Tristate::is_absent"`); if it is
// not, it is written as `null`, the closest JSON has.
impl<T: Serialize> Serialize for Tristate<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Tristate::Set(v) => serializer.serialize_some(v),
            Tristate::Absent | Tristate::Null => serializer.serialize_none(),
        }
    }
}

// Same schema as `Option<T>`: a nullable object, so the API server keeps an explicit `null`
// instead of pruning it (it prunes nulls of non-nullable fields).
impl<T: JsonSchema> JsonSchema for Tristate<T> {
    fn schema_name() -> Cow<'static, str> {
        <Option<T>>::schema_name()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        <Option<T>>::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize, Serialize, Debug, PartialEq)]
    struct Holder {
        #[serde(default, skip_serializing_if = "Tristate::is_absent")]
        pkg: Tristate<String>,
    }

    #[test]
    fn three_cases_round_trip() {
        for (input, expected) in [
            (json!({}), Tristate::Absent),
            (json!({"pkg": null}), Tristate::Null),
            (json!({"pkg": "x"}), Tristate::Set("x".to_string())),
        ] {
            let h: Holder = serde_json::from_value(input.clone()).expect("valid holder");
            assert_eq!(h.pkg, expected);
            assert_eq!(serde_json::to_value(&h).expect("serialises"), input);
        }
    }

    #[test]
    fn inherit_only_when_absent() {
        let app_default = Tristate::Set("app".to_string());
        assert_eq!(Tristate::Absent.or_inherit(&app_default), &app_default);
        assert_eq!(Tristate::<String>::Null.or_inherit(&app_default), &Tristate::Null);
        let own = Tristate::Set("role".to_string());
        assert_eq!(own.or_inherit(&app_default), &own);
    }
}
