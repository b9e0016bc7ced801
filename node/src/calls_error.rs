//! The Calls error model: every error is JSON `{errorCode, errorDescription}` with the status
//! Calls uses for that code. A leaf module: the HTTP server's own refusals (`http/`) and the API
//! (`api/`) both answer with it, and only `api/error.rs` maps engine errors onto it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An answer in the Calls error model: status, code and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status Calls gives this code.
    pub status: StatusCode,
    /// `errorCode`: the machine-readable Calls code clients branch on.
    pub code: &'static str,
    /// `errorDescription`: for humans; never secrets or attacker-supplied content.
    pub description: String,
    /// Seconds after which a retry can succeed, sent as `Retry-After` (429 and 503).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    error_code: &'a str,
    error_description: &'a str,
}

impl ApiError {
    /// Any error of the model; the helpers below fix status and code for the common ones.
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    /// The same error, telling the client to retry after `secs` seconds (at least 1).
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// 400 `decoding_error`: the body is not the JSON (or SDP) the call expects.
    pub fn decoding(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "decoding_error", description)
    }

    /// 406 `invalid_params`: well-formed, but the values make no sense for the call.
    pub fn invalid_params(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_ACCEPTABLE, "invalid_params", description)
    }

    /// 406 `invalid_session_description`: the wrong kind of SDP, or one that cannot be applied now.
    pub fn invalid_sdp(description: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "invalid_session_description",
            description,
        )
    }

    /// 404 `not_found`: a path this node has nothing at (outside the Calls API's prefix, where
    /// Calls answers 405 instead).
    pub fn unknown_path() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "nothing is served at this path",
        )
    }

    /// 405 `method_not_allowed`: a path or method this node does not implement (kept for WHIP/WHEP).
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path or method is not implemented",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error_code: self.code,
            error_description: &self.description,
        };
        let mut res = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        challenge(&mut res);
        res
    }
}

/// A 401 names the scheme that would open the resource (RFC 9110 §11.6.1, RFC 6750 §3): every
/// secret and token of the node's HTTP API is a bearer.
pub fn challenge(res: &mut Response) {
    if res.status() == axum::http::StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer realm=\"trackmesh\""),
        );
    }
}
