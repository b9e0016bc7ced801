//! RFC 9457 problem details (`application/problem+json`), the error model of WHIP, WHEP and the
//! streams API. The Calls endpoints keep the Calls model; [`Problem::from`] turns an [`ApiError`]
//! (from the shared guards and the engine mapping) into a problem with the same status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;

/// A problem: the status, a stable type URI per kind of error, and a detail for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short machine-readable slug; the `type` is `urn:trackmesh:problem:<slug>`.
    pub kind: &'static str,
    /// What went wrong, for humans; never secrets.
    pub detail: String,
    /// Seconds after which a retry can succeed (429, 503).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    /// A problem of this status and kind.
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// The same problem, telling the client to retry after `secs` seconds (at least 1).
    pub fn retry_after_secs(mut self, secs: u64) -> Problem {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// 400: the SDP (or sdpfrag) cannot be read or is not one this endpoint takes.
    pub fn bad_sdp(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-sdp", detail)
    }

    /// 415: the body is not of the type the endpoint takes.
    pub fn unsupported_type(want: &str) -> Problem {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("the body must be {want}"),
        )
    }
}

impl From<ApiError> for Problem {
    fn from(e: ApiError) -> Problem {
        let kind = match e.status.as_u16() {
            400 => "bad-request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not-found",
            405 => "method-not-allowed",
            406 => "not-acceptable",
            409 => "conflict",
            410 => "gone",
            412 => "precondition-failed",
            413 => "payload-too-large",
            415 => "unsupported-media-type",
            422 => "no-common-codec",
            429 => "rate-limited",
            503 => "unavailable",
            _ => "internal",
        };
        Problem {
            status: e.status,
            kind,
            detail: e.description,
            retry_after: e.retry_after,
        }
    }
}

impl From<crate::engine::OpError> for Problem {
    fn from(e: crate::engine::OpError) -> Problem {
        Problem::from(ApiError::from(e))
    }
}

impl From<crate::runtime::EngineStopped> for Problem {
    fn from(e: crate::runtime::EngineStopped) -> Problem {
        Problem::from(ApiError::from(e))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Body {
            kind: format!("urn:trackmesh:problem:{}", self.kind),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut res = (self.status, json).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        crate::calls_error::challenge(&mut res);
        res
    }
}
