//! Errors in Backend.AI's shape: RFC 7807 problem+json responses.

use async_graphql::ServerError;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::AuthError;

const PROBLEM_BASE: &str = "https://api.backend.ai/probs/";

/// An RFC 7807 problem response in Backend.AI's shape.
pub(super) fn problem(
    status: StatusCode,
    kind: &str,
    title: &str,
    extra: Option<(&str, Value)>,
) -> Response {
    let mut body = json!({"type": format!("{PROBLEM_BASE}{kind}"), "title": title});
    if let Some((k, v)) = extra {
        body[k] = v;
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// 503 with `Retry-After`: the database cannot answer now (not the caller's fault).
pub(super) fn unavailable(msg: &str) -> Response {
    let mut resp = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "service-unavailable",
        "Service unavailable.",
        Some(("msg", Value::String(msg.to_owned()))),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

pub(super) fn auth_problem(e: &AuthError) -> Response {
    if let AuthError::Unavailable(msg) = e {
        return unavailable(msg);
    }
    if e.is_bad_parameter() {
        problem(
            StatusCode::BAD_REQUEST,
            "invalid-auth-params",
            "Missing or invalid authorization parameters.",
            Some(("msg", Value::String(e.to_string()))),
        )
    } else {
        problem(
            StatusCode::UNAUTHORIZED,
            "auth-failed",
            "Credential/signature mismatch.",
            Some(("msg", Value::String(e.to_string()))),
        )
    }
}

pub(super) fn bad_params(msg: String) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid-api-params",
        "Missing or invalid API parameters.",
        Some(("msg", Value::String(msg))),
    )
}

/// GraphQL errors as a problem (`/admin/graphql`).
pub(super) fn graphql_problem(errors: &[ServerError]) -> Response {
    let data = serde_json::to_value(errors).unwrap_or(Value::Null);
    problem(
        StatusCode::BAD_REQUEST,
        "graphql-error",
        "GraphQL-generated error.",
        Some(("data", data)),
    )
}
