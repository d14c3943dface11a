//! Responses of the HTTP API: JSON bodies, and the one error shape every
//! failure takes: `{"error": "<sentence>", "code": "<snake_case>"}`, plus
//! fields some errors add (`current_version` on a conflict).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use kv_replication::CoreError;

use crate::metrics::StatusLabel;

pub type Body = Full<Bytes>;

/// Seconds a client is asked to wait before retrying a 503.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// A failed request, as the client will see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the JSON body.
    pub extra: Option<serde_json::Value>,
    /// Methods the route allows (405 only).
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), extra: None, allow: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn too_large(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this resource allows {allow}"),
        );
        e.allow = Some(allow);
        e
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server requires a password: send it as `Authorization: Bearer <password>`",
        )
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    pub fn with_extra(mut self, extra: serde_json::Value) -> ApiError {
        self.extra = Some(extra);
        self
    }

    pub fn into_response(self) -> Response<Body> {
        let mut body = serde_json::json!({"error": self.message, "code": self.code});
        if let Some(serde_json::Value::Object(extra)) = self.extra {
            body.as_object_mut().expect("built as an object").extend(extra);
        }
        let mut resp = json(self.status, &body);
        let headers = resp.headers_mut();
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"kvd\""));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        resp
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> ApiError {
        let (status, code) = match &e {
            CoreError::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not_leader"),
            CoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            CoreError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            CoreError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            // The write may or may not have happened; the client decides.
            CoreError::Dropped => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
            CoreError::Poisoned(_) => (StatusCode::INTERNAL_SERVER_ERROR, "wal_poisoned"),
            CoreError::WrongCore(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            CoreError::OutOfMemory => (StatusCode::INSUFFICIENT_STORAGE, "out_of_memory"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// A JSON response.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The metrics outcome of an HTTP status.
pub fn status_label(status: StatusCode) -> StatusLabel {
    match status.as_u16() {
        200..=399 => StatusLabel::Ok,
        401 => StatusLabel::Unauthorized,
        404 => StatusLabel::NotFound,
        409 | 412 => StatusLabel::Conflict,
        413 | 414 | 431 => StatusLabel::TooLarge,
        400..=499 => StatusLabel::BadRequest,
        503 => StatusLabel::Unavailable,
        _ => StatusLabel::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_json_with_code_and_the_headers_their_status_calls_for() {
        let resp = ApiError::from(CoreError::Busy).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        let resp = ApiError::method_not_allowed("GET, PUT").into_response();
        assert_eq!(resp.headers()[ALLOW], "GET, PUT");
        assert!(ApiError::unauthorized().into_response().headers().contains_key(WWW_AUTHENTICATE));
        let conflict = ApiError::new(StatusCode::CONFLICT, "version_conflict", "no")
            .with_extra(serde_json::json!({"current_version": 7}));
        assert_eq!(conflict.into_response().headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn poisoned_is_a_server_error_and_not_retryable() {
        let e = ApiError::from(CoreError::Poisoned("disk".into()));
        assert_eq!((e.status, e.code), (StatusCode::INTERNAL_SERVER_ERROR, "wal_poisoned"));
        assert_eq!(status_label(e.status), StatusLabel::Error);
    }
}
