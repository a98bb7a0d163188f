//! Typed provider configs from `RunnerDestination.config`: one parser, and
//! one shape of message, for every provider whose config is a serde struct
//! with `deny_unknown_fields`.
//!
//! A config is an object (or `null`, every key at its default); a `null`
//! value is its key's default. An error names the key and what it takes,
//! never the value (a secret put in the wrong place stays out of messages
//! and logs): `docker config: \`memory\` must be bytes, or a size string
//! such as "512m", got a boolean`.

use std::collections::BTreeMap;
use std::fmt::Display;

use runner_api::{RunnerError, RunnerResult};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// What a provider's config holds, for parsing it and for its messages.
#[derive(Debug, Clone, Copy)]
pub struct ConfigSchema {
    /// The provider's name, which starts every message (`docker` →
    /// `docker config: …`).
    pub provider: &'static str,
    /// What a key takes (`"a string"`, `"true or false"`); `None` for a
    /// name that is not a key.
    pub expected: fn(&str) -> Option<&'static str>,
    /// Keys that must be there, each with what it is for (`("image", "the
    /// image every session's container starts from")`).
    pub required: &'static [(&'static str, &'static str)],
    /// Keys holding objects or arrays of their own, whose errors also give
    /// the path inside (and serde's message for an unknown or missing key
    /// inside, which names the key, never a value).
    pub nested: &'static [&'static str],
}

impl ConfigSchema {
    /// Parses `value` into `T`: an object (or `null`), `null` values
    /// dropped, the required keys checked first.
    ///
    /// Errors: `InvalidRequest` naming the key (an unknown one with serde's
    /// message, which lists the known keys) and what it takes.
    pub fn parse<T: DeserializeOwned>(&self, value: &Value) -> RunnerResult<T> {
        let mut map = match value {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            other => {
                return Err(self.error(format!("must be an object, got {}", json_kind(other))));
            }
        };
        map.retain(|_, value| !value.is_null());
        if let Some((key, what)) = self
            .required
            .iter()
            .find(|(key, _)| !map.contains_key(*key))
        {
            return Err(self.bad(key, format!("is required ({what})")));
        }
        serde_path_to_error::deserialize(Value::Object(map.clone()))
            .map_err(|e| self.parse_error(&map, e))
    }

    /// `InvalidRequest`: `<provider> config: \`key\` <what>`.
    pub fn bad(&self, key: &str, what: impl Display) -> RunnerError {
        self.error(format!("`{key}` {what}"))
    }

    /// A string setting: not blank, no NUL byte.
    ///
    /// Errors: `InvalidRequest` naming `key`.
    pub fn check_text(&self, key: &str, value: Option<&str>) -> RunnerResult<()> {
        match value {
            Some(text) if text.trim().is_empty() => Err(self.bad(key, "must not be empty")),
            Some(text) if text.contains('\0') => Err(self.bad(key, "contains a NUL byte")),
            _ => Ok(()),
        }
    }

    /// An object of strings (an environment, labels): keys not empty,
    /// without `=` or a NUL byte; values without a NUL byte.
    ///
    /// Errors: `InvalidRequest` naming `key` and the entry's key.
    pub fn check_entries(&self, key: &str, entries: &BTreeMap<String, String>) -> RunnerResult<()> {
        match entries
            .iter()
            .find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
        {
            Some((k, _)) => Err(self.bad(key, format!("entry {k:?} is invalid"))),
            None => Ok(()),
        }
    }

    fn error(&self, message: impl Display) -> RunnerError {
        RunnerError::invalid_request(format!("{} config: {message}", self.provider))
    }

    /// The error of a config that did not deserialize: the key it failed
    /// at and what that key takes; serde's own message for an unknown key.
    fn parse_error(
        &self,
        map: &Map<String, Value>,
        error: serde_path_to_error::Error<serde_json::Error>,
    ) -> RunnerError {
        use serde_path_to_error::Segment;
        let path = error.path().to_string();
        let mut segments = error.path().iter();
        let Some(Segment::Map { key }) = segments.next() else {
            return self.error(error.inner());
        };
        let Some(expected) = map
            .contains_key(key)
            .then(|| (self.expected)(key))
            .flatten()
        else {
            return self.error(error.inner());
        };
        if self.nested.contains(&key.as_str()) {
            // serde names keys in these two, never values.
            let inner = error.inner().to_string();
            let why = if inner.starts_with("unknown field") || inner.starts_with("missing field") {
                format!(": {inner}")
            } else {
                String::new()
            };
            return self.bad(key, format!("must be {expected}; at `{path}`{why}"));
        }
        let within = match segments.next() {
            Some(Segment::Map { key: entry }) => format!("; entry {entry:?} is not"),
            Some(Segment::Seq { index }) => format!("; item {index} is not"),
            _ => format!(", got {}", json_kind(&map[key])),
        };
        self.bad(key, format!("must be {expected}{within}"))
    }
}

/// What kind of JSON value `value` is, as messages say it (`a string`,
/// `an object`).
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        count: u32,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        size: u32,
    }

    fn expected(key: &str) -> Option<&'static str> {
        Some(match key {
            "name" => "a string",
            "count" => "a whole number",
            "env" => "an object of strings",
            "inner" => "an object {\"size\": N}",
            _ => return None,
        })
    }

    const SCHEMA: ConfigSchema = ConfigSchema {
        provider: "sample",
        expected,
        required: &[("name", "what it is called")],
        nested: &["inner"],
    };

    fn message(value: Value) -> String {
        SCHEMA
            .parse::<Sample>(&value)
            .unwrap_err()
            .message()
            .to_string()
    }

    #[test]
    fn parses_with_nulls_as_defaults() {
        let sample: Sample = SCHEMA
            .parse(&json!({"name": "n", "count": null, "env": {"A": "1"}}))
            .unwrap();
        assert_eq!((sample.name.as_str(), sample.count), ("n", 0));
        assert_eq!(sample.env["A"], "1");
        assert!(sample.inner.is_none());
    }

    #[test]
    fn messages_name_the_key_never_the_value() {
        assert_eq!(
            message(json!([1])),
            "sample config: must be an object, got an array"
        );
        assert_eq!(
            message(Value::Null),
            "sample config: `name` is required (what it is called)"
        );
        let wrong = message(json!({"name": "n", "count": "s3cr3t"}));
        assert_eq!(
            wrong,
            "sample config: `count` must be a whole number, got a string"
        );
        let entry = message(json!({"name": "n", "env": {"TOKEN": 5}}));
        assert!(
            entry.contains("entry \"TOKEN\" is not") && !entry.contains('5'),
            "{entry}"
        );
        let unknown = message(json!({"name": "n", "colour": "x"}));
        assert!(unknown.contains("colour"), "{unknown}");
        let nested = message(json!({"name": "n", "inner": {"size": "big"}}));
        assert!(
            nested.starts_with("sample config: `inner` must be an object"),
            "{nested}"
        );
        assert!(
            nested.contains("inner.size") && !nested.contains("big"),
            "{nested}"
        );
    }

    #[test]
    fn text_and_entries_checks() {
        assert!(SCHEMA.check_text("name", Some(" ")).is_err());
        assert!(SCHEMA.check_text("name", Some("a\0")).is_err());
        assert!(SCHEMA.check_text("name", None).is_ok());
        let bad = BTreeMap::from([("A=B".to_string(), "v".to_string())]);
        assert!(SCHEMA.check_entries("env", &bad).is_err());
        let good = BTreeMap::from([("A".to_string(), "v".to_string())]);
        assert!(SCHEMA.check_entries("env", &good).is_ok());
    }
}
