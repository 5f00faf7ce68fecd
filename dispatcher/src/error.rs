//! Every way an HTTP request can fail, and the one place that maps failures to statuses.
//!
//! Errors that have a stable protocol [`ErrorCode`] (whether a worker replied with it or the
//! dispatcher found the problem first, e.g. a malformed body) are [`ApiError::Coded`], so a
//! problem answers with the same status wherever it was detected. The few failures that
//! only exist at the HTTP layer (size limit, routing, probes, authentication) have variants
//! of their own. Every error response is JSON: `{"message": "..."}`, plus `"code"` when there
//! is one.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bus::BusError;
use protocol::{ErrorBody, ErrorCode};

/// How many seconds a client told to back off (`Retry-After`) should wait.
pub const RETRY_AFTER_SECONDS: &str = "1";

/// The one message of every 401, whatever was wrong.
pub const UNAUTHENTICATED_MESSAGE: &str = "authentication required";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A failure with a protocol error code; its status comes from [`status_for_code`].
    #[error("{}", .0.message)]
    Coded(ErrorBody),
    #[error("request body exceeds the limit of {limit_bytes} bytes")]
    BodyTooLarge { limit_bytes: usize },
    #[error("the request has {rows} rows; the limit is {limit_rows} (server.max_rows)")]
    TooManyRows { rows: usize, limit_rows: usize },
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// The readiness probe failed; the message says what is missing.
    #[error("not ready: {0}")]
    NotReady(String),
    /// No valid credential. The answer is the same whatever was wrong, so a caller never
    /// learns which part of a credential failed (`auth` logs why); only whether one was
    /// sent shows, in the challenge, as RFC 6750 asks.
    #[error("{UNAUTHENTICATED_MESSAGE}")]
    Unauthenticated { credential_sent: bool },
}

impl ApiError {
    pub fn coded(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::Coded(ErrorBody::new(code, message))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::coded(ErrorCode::BadRequest, message)
    }

    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::coded(ErrorCode::InvalidInput, message)
    }

    /// A bug in rfleet: logged at error level here, so no call site can forget to.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(error = %message, "internal error");
        Self::coded(ErrorCode::Internal, message)
    }

    /// Turns a transport failure into an answer; `timeout_ms` is the deadline the call had.
    pub fn from_bus(error: BusError, timeout_ms: u64) -> Self {
        match error {
            BusError::QueueFull(_) => Self::coded(ErrorCode::Overloaded, format!("{error}; retry later")),
            BusError::Unavailable(_) | BusError::Unroutable { .. } => {
                Self::coded(ErrorCode::Unavailable, error.to_string())
            }
            BusError::DeadlineExceeded => {
                Self::coded(ErrorCode::DeadlineExceeded, format!("no reply within {timeout_ms} ms"))
            }
            // Correlation ids are fresh v4 UUIDs: a collision means a bug, not bad luck.
            BusError::DuplicateId(_) => Self::internal(error.to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Coded(body) => status_for_code(body.code),
            ApiError::BodyTooLarge { .. } | ApiError::TooManyRows { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
        }
    }

    fn code(&self) -> Option<ErrorCode> {
        match self {
            ApiError::Coded(body) => Some(body.code),
            _ => None,
        }
    }
}

/// The HTTP status of each protocol error code. Exhaustive on purpose: a new code does not
/// compile until someone decides its status.
pub fn status_for_code(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        // The dispatcher and a worker speak different protocol versions: the fleet's
        // version skew, not the client's fault. The worker is this gateway's upstream.
        ErrorCode::UnsupportedVersion => StatusCode::BAD_GATEWAY,
        ErrorCode::ModelNotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidInput | ErrorCode::RError => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::HostCrashed | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Overloaded | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The JSON body every error response carries.
pub fn error_body(message: &str, code: Option<ErrorCode>) -> serde_json::Value {
    let mut body = serde_json::json!({ "message": message });
    if let Some(code) = code {
        body["code"] = serde_json::to_value(code).expect("error codes serialize as strings");
    }
    body
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let mut response = (self.status(), axum::Json(error_body(&self.to_string(), code))).into_response();
        // Overload is the one failure that goes away by itself: tell clients when to retry.
        if code == Some(ErrorCode::Overloaded) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        // The bearer challenge (RFC 6750); `invalid_token` says only that a credential was
        // sent (a key is a bearer credential too), never what was wrong with it.
        if let ApiError::Unauthenticated { credential_sent } = self {
            let challenge = if credential_sent {
                r#"Bearer realm="rfleet", error="invalid_token""#
            } else {
                r#"Bearer realm="rfleet""#
            };
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

/// A 413 is sent before the rest of its body is read, so the connection cannot carry
/// another request: say so (RFC 9112 §9.6), or a client may reuse it in the moment before
/// it closes and fail a good request that follows.
/// Applied to every response (`axum::middleware::map_response`).
pub async fn close_if_unread(mut response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_errors_map_to_statuses() {
        let check = |error: BusError, status: u16, message: &str, retry_after: bool| {
            let api = ApiError::from_bus(error, 250);
            assert_eq!(api.status().as_u16(), status);
            assert_eq!(api.to_string(), message);
            let response = api.into_response();
            assert_eq!(response.headers().contains_key(header::RETRY_AFTER), retry_after);
        };
        check(BusError::QueueFull("q".into()), 503, "the request queue 'q' is full; retry later", true);
        check(BusError::Unavailable("down".into()), 503, "the message bus is unavailable: down", false);
        check(
            BusError::Unroutable { queue: "rfleet.model.m".into(), reply_text: "NO_ROUTE".into() },
            503,
            "the message bus is unavailable: the broker returned the message to 'rfleet.model.m' as unroutable (NO_ROUTE): no such queue",
            false,
        );
        check(BusError::DeadlineExceeded, 504, "no reply within 250 ms", false);
        check(BusError::DuplicateId("x".into()), 500, "correlation id 'x' is already in flight", false);
    }

    /// Every 401 has the same body; the challenge says only whether a credential was sent.
    #[tokio::test]
    async fn unauthenticated_is_401_with_a_challenge() {
        for (credential_sent, challenge) in
            [(false, r#"Bearer realm="rfleet""#), (true, r#"Bearer realm="rfleet", error="invalid_token""#)]
        {
            let response = ApiError::Unauthenticated { credential_sent }.into_response();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(response.headers()[header::WWW_AUTHENTICATE], challenge);
            assert!(!response.headers().contains_key(header::RETRY_AFTER));
            let body = axum::body::to_bytes(response.into_body(), 1 << 10).await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body, serde_json::json!({"message": "authentication required"}));
        }
    }
}
