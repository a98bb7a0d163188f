//! Failures as the v1 `Status` objects a real API server answers with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::resource::Kind;

/// One invalid field of a refused object.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueForbidden`, …
    pub(crate) reason: &'static str,
    /// The field path, `spec.containers[0].image`.
    pub(crate) field: String,
    /// The detail after the field: `Required value`.
    pub(crate) message: String,
}

impl Cause {
    /// A required field that is missing.
    pub(crate) fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }

    /// A field whose value is refused.
    pub(crate) fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value:?}: {detail}"),
        }
    }

    /// A field the server does not allow.
    pub(crate) fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
}

/// A request that failed, answered with a `Status` of `code` and `reason`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    /// A failure with its HTTP code, `Status.reason` and message.
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_name(mut self, kind: Kind, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": kind.group(), "kind": kind.plural()}));
        self
    }

    /// 404: `pods "x" not found`.
    pub(crate) fn not_found(kind: Kind, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", kind.qualified()),
        )
        .with_name(kind, name)
    }

    /// 409: `pods "x" already exists`.
    pub(crate) fn already_exists(kind: Kind, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", kind.qualified()),
        )
        .with_name(kind, name)
    }

    /// 409: a stale `resourceVersion` (or uid) precondition.
    pub(crate) fn conflict(kind: Kind, name: &str, detail: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: {detail}",
                kind.qualified()
            ),
        )
        .with_name(kind, name)
    }

    /// 422: `Pod "x" is invalid: spec.containers: Required value`.
    pub(crate) fn invalid(kind: Kind, name: &str, causes: &[Cause]) -> Self {
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let joined = match parts.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut error = Self::new(
            422,
            "Invalid",
            format!("{} {name:?} is invalid: {joined}", kind.kind()),
        );
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        error.details = Some(json!({
            "name": name, "group": kind.group(), "kind": kind.kind(), "causes": causes
        }));
        error
    }

    /// Replaces the detail of the single cause in the message and causes
    /// (`metadata.name: Required value: name or generateName is required`).
    pub(crate) fn with_message_suffix(mut self, suffix: &str) -> Self {
        self.message = format!("{}: {suffix}", self.message);
        if let Some(cause) = self
            .details
            .as_mut()
            .and_then(|d| d.pointer_mut("/causes/0/message"))
        {
            *cause = Value::String(format!("{}: {suffix}", cause.as_str().unwrap_or("")));
        }
        self
    }

    /// 400 BadRequest.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 410 Expired: a `resourceVersion` older than the kept history.
    pub(crate) fn expired(rv: u64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {rv}"))
    }

    /// 403 Forbidden, worded as the RBAC authorizer words it.
    pub(crate) fn forbidden(
        kind: Kind,
        name: Option<&str>,
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
        user: &str,
    ) -> Self {
        let subject = match name {
            Some(name) => format!("{} {name:?}", kind.qualified()),
            None => kind.qualified(),
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".to_string(),
        };
        let mut error = Self::new(
            403,
            "Forbidden",
            format!(
                "{subject} is forbidden: User {user:?} cannot {verb} resource {resource:?} in API group {:?} {scope}",
                kind.group()
            ),
        );
        error.details = Some(json!({
            "name": name.unwrap_or_default(), "group": kind.group(), "kind": kind.plural()
        }));
        error
    }

    /// The `Status` object of this failure.
    pub(crate) fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.status())
    }
}

/// A JSON body with `code`.
pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
