//! Label and field selectors, parsed as the API server parses them.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::status::ApiError;

#[derive(Debug, Clone)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`.
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelSelector(Vec<Requirement>);

/// Splits at commas outside parentheses.
fn terms(selector: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    terms.push(current);
    terms
        .into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn set_values(rest: &str, term: &str) -> Result<Vec<String>, ApiError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| ApiError::bad_request(format!("unable to parse requirement: {term:?}")))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses `k=v,k!=v,k in (a,b),k notin (a),k,!k`.
    pub(crate) fn parse(selector: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in terms(selector) {
            let requirement = if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_string())
            } else if let Some((key, rest)) = term.split_once(" notin ") {
                Requirement::NotIn(key.trim().to_string(), set_values(rest, &term)?)
            } else if let Some((key, rest)) = term.split_once(" in ") {
                Requirement::In(key.trim().to_string(), set_values(rest, &term)?)
            } else if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) = term.split_once("==") {
                Requirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) = term.split_once('=') {
                Requirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else if term.contains(['(', ')', ' ']) {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: {term:?}"
                )));
            } else {
                Requirement::Exists(term)
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// Whether `object`'s labels satisfy every requirement.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels: BTreeMap<String, String> = object["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// A parsed `fieldSelector` (`metadata.name`, `metadata.namespace`,
/// `status.phase`, `spec.nodeName`; `=`, `==`, `!=`).
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector(Vec<(&'static str, bool, String)>);

const FIELDS: [(&str, &str); 4] = [
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
    ("status.phase", "/status/phase"),
    ("spec.nodeName", "/spec/nodeName"),
];

impl FieldSelector {
    /// Parses a field selector; an unknown field is a 400 as on a real server.
    pub(crate) fn parse(selector: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in terms(selector) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                )));
            };
            let field = field.trim();
            let pointer = FIELDS
                .iter()
                .find(|(name, _)| *name == field)
                .map(|(_, pointer)| *pointer)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("field label not supported: {field}"))
                })?;
            requirements.push((pointer, equal, value.trim().to_string()));
        }
        Ok(Self(requirements))
    }

    /// Whether `object` satisfies every requirement.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(pointer, equal, value)| {
            let actual = object
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("");
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_as_kube_sends_them() {
        let pod = json!({"metadata": {"labels": {"app": "x", "tier": "b"}}});
        for (selector, expected) in [
            ("app=x", true),
            ("app==x,tier!=a", true),
            ("tier in (a,b)", true),
            ("tier notin (a,b)", false),
            ("app,!missing", true),
            ("missing", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(selector).unwrap().matches(&pod),
                expected,
                "{selector}"
            );
        }
    }

    #[test]
    fn field_selectors_on_name_and_phase() {
        let pod = json!({"metadata": {"name": "p"}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("metadata.name=p")
                .unwrap()
                .matches(&pod)
        );
        assert!(
            !FieldSelector::parse("status.phase!=Running")
                .unwrap()
                .matches(&pod)
        );
        assert!(FieldSelector::parse("spec.foo=x").is_err());
    }
}
