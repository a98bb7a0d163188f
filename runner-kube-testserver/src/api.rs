//! The HTTP side: routing, authentication, RBAC faults and the verbs of each
//! resource (create, get, list, watch, replace, patch, delete, pods/exec).

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde_json::{Value, json};

use crate::resource::Kind;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::{Shared, lock, now};
use crate::status::{ApiError, Cause, json_response};
use crate::{claims, exec, patch, pods, watch};

/// The query of one request; keys may repeat (`command=a&command=b`).
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Whether `key` is `true` or `1`.
    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// The router of one server instance.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/version", get(version))
        .fallback(handle)
        .with_state(shared)
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1", "minor": "35", "gitVersion": "v1.35.0-runners-test",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64"
        }),
    )
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    match dispatch(&shared, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn not_served() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

/// Where a request goes: resource, namespace, name, subresource.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn target(path: &str) -> Result<Target, ApiError> {
    let (group, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("", rest)
    } else if let Some(rest) = path.strip_prefix("/apis/coordination.k8s.io/v1/") {
        ("coordination.k8s.io", rest)
    } else {
        return Err(not_served());
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, plural, name, subresource) = match segments.as_slice() {
        [plural] => (None, *plural, None, None),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        _ => return Err(not_served()),
    };
    let kind = Kind::from_path(group, plural).ok_or_else(not_served)?;
    Ok(Target {
        kind,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
    })
}

fn check_forbidden(
    shared: &Shared,
    target: &Target,
    verbs: &[&str],
    resource: &str,
) -> Result<(), ApiError> {
    let forbidden = lock(&shared.forbidden);
    for verb in verbs {
        if forbidden.contains(&(verb.to_string(), resource.to_string())) {
            return Err(ApiError::forbidden(
                target.kind,
                target.name.as_deref(),
                verb,
                resource,
                target.namespace.as_deref(),
                &shared.user,
            ));
        }
    }
    Ok(())
}

async fn dispatch(shared: &Arc<Shared>, request: Request) -> Result<Response, ApiError> {
    let expected = format!("Bearer {}", shared.token);
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected.as_bytes());
    if !authorized {
        return Err(ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    let target = target(request.uri().path())?;
    let query = Query::parse(request.uri().query());
    let method = request.method().clone();
    let kind = target.kind;
    let plural = kind.plural();
    match (&method, &target.name, target.subresource.as_deref()) {
        (&Method::GET | &Method::POST, Some(name), Some("exec")) if kind == Kind::Pod => {
            check_forbidden(shared, &target, &["create", "get"], "pods/exec")?;
            let namespace = target.namespace.clone().unwrap_or_default();
            let (mut parts, _) = request.into_parts();
            exec::exec(shared, &namespace, name, &query, &mut parts).await
        }
        (_, _, Some(_)) => Err(not_served()),
        (&Method::GET, None, None) => {
            if query.flag("watch") {
                check_forbidden(shared, &target, &["watch"], plural)?;
                watch::watch(shared, kind, target.namespace.clone(), &query)
            } else {
                check_forbidden(shared, &target, &["list"], plural)?;
                list(shared, kind, target.namespace.as_deref(), &query)
            }
        }
        (&Method::GET, Some(name), None) => {
            check_forbidden(shared, &target, &["get"], plural)?;
            let namespace = namespaced(&target)?;
            let store = lock(&shared.store);
            let object = store
                .get(kind, namespace, name)
                .ok_or_else(|| ApiError::not_found(kind, name))?;
            Ok(json_response(StatusCode::OK, object))
        }
        (&Method::POST, None, None) => {
            check_forbidden(shared, &target, &["create"], plural)?;
            let namespace = namespaced(&target)?.to_string();
            let body = body(request).await?;
            create(shared, kind, &namespace, &body)
        }
        (&Method::PUT, Some(name), None) => {
            check_forbidden(shared, &target, &["update"], plural)?;
            let namespace = namespaced(&target)?.to_string();
            let body = body(request).await?;
            let object: Value = decode_json(kind, &body)?;
            update(shared, kind, &namespace, name, object)
        }
        (&Method::PATCH, Some(name), None) => {
            check_forbidden(shared, &target, &["patch"], plural)?;
            let namespace = namespaced(&target)?.to_string();
            let content_type = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = body(request).await?;
            patch_object(shared, kind, &namespace, name, &content_type, &body)
        }
        (&Method::DELETE, Some(name), None) => {
            check_forbidden(shared, &target, &["delete"], plural)?;
            let namespace = namespaced(&target)?.to_string();
            let body = body(request).await?;
            delete(shared, kind, &namespace, name, &query, &body).await
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )),
    }
}

fn namespaced(target: &Target) -> Result<&str, ApiError> {
    target.namespace.as_deref().ok_or_else(not_served)
}

async fn body(request: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), 16 << 20)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))
}

fn decode_json(kind: Kind, body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            kind.kind(),
            kind.api_version(),
            kind.kind()
        ))
    })
}

/// Decodes `object` into its k8s-openapi type, as the API server decodes
/// into its Go types: a field of the wrong type is a 400.
fn typed_check(kind: Kind, object: &Value) -> Result<(), ApiError> {
    let decoded = match kind {
        Kind::Pod => serde_json::from_value::<Pod>(object.clone()).map(drop),
        Kind::Lease => serde_json::from_value::<Lease>(object.clone()).map(drop),
        Kind::PersistentVolumeClaim => {
            serde_json::from_value::<PersistentVolumeClaim>(object.clone()).map(drop)
        }
    };
    decoded.map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            kind.kind(),
            kind.api_version(),
            kind.kind()
        ))
    })
}

fn list(
    shared: &Shared,
    kind: Kind,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Response, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?;
    let store = lock(&shared.store);
    let items: Vec<Value> = store
        .list(kind, namespace)
        .into_iter()
        .filter(|object| labels.matches(object) && fields.matches(object))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", kind.kind()),
            "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": store.current_rv().to_string()},
            "items": items,
        }),
    ))
}

/// Whether `name` is a lowercase RFC 1123 subdomain.
fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

const NAME_RULE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn generated_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn create(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let mut object = decode_json(kind, body)?;
    typed_check(kind, &object)?;
    if let Some(ns) = object["metadata"]["namespace"].as_str()
        && !ns.is_empty()
        && ns != namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let given = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let generate = object["metadata"]["generateName"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let name = match (given.is_empty(), generate.is_empty()) {
        (false, _) => given,
        (true, false) => format!("{generate}{}", generated_suffix()),
        (true, true) => {
            return Err(
                ApiError::invalid(kind, "", &[Cause::required("metadata.name")])
                    .with_message_suffix("name or generateName is required"),
            );
        }
    };
    let mut causes = Vec::new();
    if !valid_name(&name) {
        causes.push(Cause::invalid("metadata.name", &name, NAME_RULE));
    }
    match kind {
        Kind::Pod => pods::validate(&mut object, &mut causes),
        Kind::PersistentVolumeClaim => claims::validate(&object, &mut causes),
        Kind::Lease => {}
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(kind, &name, &causes));
    }
    let metadata = &mut object["metadata"];
    metadata["name"] = json!(name);
    metadata["namespace"] = json!(namespace);
    metadata["uid"] = json!(uuid::Uuid::new_v4().to_string());
    metadata["creationTimestamp"] = json!(now());
    if let Some(map) = metadata.as_object_mut() {
        map.remove("resourceVersion");
        map.remove("deletionTimestamp");
    }
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.kind());
    if kind == Kind::Pod {
        pods::defaults(&mut object);
        object["status"] = json!({"phase": "Pending", "qosClass": pods::qos_class(&object)});
    }
    if kind == Kind::PersistentVolumeClaim {
        claims::bind(shared, &mut object)?;
    }
    let stored = {
        let mut store = lock(&shared.store);
        if store.get(kind, namespace, &name).is_some() {
            if kind == Kind::PersistentVolumeClaim {
                let uid = object["metadata"]["uid"].as_str().unwrap_or("");
                let _ = std::fs::remove_dir_all(claims::dir(shared, uid));
            }
            return Err(ApiError::already_exists(kind, &name));
        }
        store.put(kind, namespace, &name, object)
    };
    if kind == Kind::Pod {
        pods::start(shared, namespace, &name);
    }
    Ok(json_response(StatusCode::CREATED, &stored))
}

/// Replaces `name` with `object` (from PUT or a patch): a set
/// `metadata.resourceVersion` must be the stored one; server-owned metadata
/// and the status of a pod or claim stay; a pod's spec may not change.
fn update(
    shared: &Shared,
    kind: Kind,
    namespace: &str,
    name: &str,
    mut object: Value,
) -> Result<Response, ApiError> {
    typed_check(kind, &object)?;
    let object_name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if object_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({object_name}) does not match the name on the URL ({name})"
        )));
    }
    let mut store = lock(&shared.store);
    let existing = store
        .get(kind, namespace, name)
        .ok_or_else(|| ApiError::not_found(kind, name))?
        .clone();
    if let Some(rv) = object["metadata"]["resourceVersion"].as_str()
        && !rv.is_empty()
        && Some(rv) != existing["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::conflict(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    for key in [
        "uid",
        "creationTimestamp",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
    ] {
        match existing["metadata"].get(key) {
            Some(value) => object["metadata"][key] = value.clone(),
            None => {
                if let Some(map) = object["metadata"].as_object_mut() {
                    map.remove(key);
                }
            }
        }
    }
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.kind());
    if kind == Kind::PersistentVolumeClaim {
        object["status"] = existing["status"].clone();
    }
    if kind == Kind::Pod {
        pods::defaults(&mut object);
        object["status"] = existing["status"].clone();
        if object["spec"] != existing["spec"] {
            return Err(ApiError::invalid(
                kind,
                name,
                &[Cause::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                )],
            ));
        }
    }
    if object == existing {
        return Ok(json_response(StatusCode::OK, &existing));
    }
    let stored = store.put(kind, namespace, name, object);
    Ok(json_response(StatusCode::OK, &stored))
}

fn patch_object(
    shared: &Shared,
    kind: Kind,
    namespace: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let strategic = match media {
        "application/merge-patch+json" => false,
        "application/strategic-merge-patch+json" => true,
        _ => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {media:?})"
                ),
            ));
        }
    };
    let patch_value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let mut object = lock(&shared.store)
        .get(kind, namespace, name)
        .ok_or_else(|| ApiError::not_found(kind, name))?
        .clone();
    // Only a resourceVersion the patch names is a precondition.
    if let Some(map) = object["metadata"].as_object_mut() {
        map.remove("resourceVersion");
    }
    if strategic {
        patch::strategic(&mut object, &patch_value);
    } else {
        patch::merge(&mut object, &patch_value);
    }
    update(shared, kind, namespace, name, object)
}

async fn delete(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: &str,
    name: &str,
    query: &Query,
    body: &[u8],
) -> Result<Response, ApiError> {
    let options: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("decoding DeleteOptions: {e}")))?
    };
    let grace = options["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    {
        let store = lock(&shared.store);
        let existing = store
            .get(kind, namespace, name)
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        let preconditions = &options["preconditions"];
        for (key, label) in [("resourceVersion", "ResourceVersion"), ("uid", "UID")] {
            if let Some(wanted) = preconditions[key].as_str()
                && Some(wanted) != existing["metadata"][key].as_str()
            {
                return Err(ApiError::conflict(
                    kind,
                    name,
                    &format!(
                        "the {label} in the precondition ({wanted}) does not match the {label} in record ({}). The object might have been modified",
                        existing["metadata"][key].as_str().unwrap_or("")
                    ),
                ));
            }
        }
    }
    match kind {
        Kind::Pod => {
            let object = pods::delete(shared, namespace, name, grace).await?;
            Ok(json_response(StatusCode::OK, &object))
        }
        Kind::PersistentVolumeClaim => {
            let object = claims::delete(shared, namespace, name)?;
            Ok(json_response(StatusCode::OK, &object))
        }
        Kind::Lease => {
            let removed = lock(&shared.store)
                .remove(kind, namespace, name)
                .ok_or_else(|| ApiError::not_found(kind, name))?;
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": kind.group(), "kind": kind.plural(),
                                "uid": removed["metadata"]["uid"]}
                }),
            ))
        }
    }
}

/// A streaming JSON response.
pub(crate) fn streaming(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
