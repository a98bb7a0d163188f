//! Merge patches (RFC 7386) and the part of strategic merge patches the
//! server supports.

use serde_json::Value;

/// Applies a JSON merge patch: objects merge key by key, `null` removes a
/// key, anything else replaces.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Applies a strategic merge patch as a merge patch: maps (labels,
/// annotations, …) merge the same way; lists are replaced whole and the
/// `$patch`/`$retainKeys` directives are dropped rather than honoured.
pub(crate) fn strategic(target: &mut Value, patch: &Value) {
    merge(target, &without_directives(patch));
}

fn without_directives(patch: &Value) -> Value {
    match patch {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, _)| !key.starts_with('$'))
                .map(|(key, value)| (key.clone(), without_directives(value)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_sets_and_removes_labels() {
        let mut object = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        merge(
            &mut object,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
        );
        assert_eq!(
            object,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}})
        );
    }
}
