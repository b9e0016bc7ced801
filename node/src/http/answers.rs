//! The answers the HTTP layer gives itself, in the Calls error model
//! (`{"errorCode", "errorDescription"}`), including the ones hyper would send with an empty body;
//! on WHIP, WHEP and streams paths, when the path is known, as RFC 9457 problems.

use std::sync::LazyLock;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use axum::response::IntoResponse;

use crate::calls_error::ApiError;

/// Most bytes of request line and headers (hyper answers 431 beyond; we give it a JSON body).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest accepted request target; Calls paths are under 200 bytes.
pub const MAX_URI_BYTES: usize = 4096;

/// A JSON error as a response from our service; the connection is closed after it.
pub fn error(status: StatusCode, code: &'static str, description: &str) -> Response<Body> {
    closing(ApiError::new(status, code, description).into_response())
}

/// [`error`], as a problem on the paths whose errors are problems (`problem`).
pub fn error_on(
    problem: bool,
    status: StatusCode,
    code: &'static str,
    description: &str,
) -> Response<Body> {
    if !problem {
        return error(status, code, description);
    }
    let e = ApiError::new(status, code, description);
    closing(crate::api::problem::Problem::from(e).into_response())
}

fn closing(mut res: Response<Body>) -> Response<Body> {
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

pub fn too_many_connections(problem: bool) -> Response<Body> {
    error_on(
        problem,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable_error",
        TOO_MANY,
    )
}

const TOO_MANY: &str = "too many connections to this node; retry later";

/// A complete HTTP/1.1 error response with a JSON body, written to the socket directly.
fn raw(status: StatusCode, code: &str, description: &str) -> Vec<u8> {
    let body =
        serde_json::json!({ "errorCode": code, "errorDescription": description }).to_string();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

/// The fast refusal of a connection over the caps, written without reading the request.
pub static REFUSED: LazyLock<Vec<u8>> = LazyLock::new(|| {
    raw(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable_error",
        TOO_MANY,
    )
});

/// hyper answers a request it cannot parse itself, with a status line and an empty body, then
/// closes. When `written` is exactly such an answer, returns our JSON one in its place and the
/// reason to count. Our own responses never match: every 4xx from the service has a JSON body.
pub fn replace_hyper_error(written: &[u8]) -> Option<(Vec<u8>, &'static str)> {
    // hyper's answer is one short head, written in one piece before it closes.
    if written.len() > 512 || !written.ends_with(b"\r\n\r\n") {
        return None;
    }
    let (status, code, reason, description) = if written.starts_with(b"HTTP/1.1 400 ") {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "bad_request",
            "malformed HTTP request",
        )
    } else if written.starts_with(b"HTTP/1.1 431 ") {
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header_too_large",
            "header_too_large",
            "request line and headers larger than 16384 bytes or more than 100 headers",
        )
    } else if written.starts_with(b"HTTP/1.1 414 ") {
        (
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "uri_too_long",
            "request target longer than 4096 bytes",
        )
    } else {
        return None;
    };
    let head = std::str::from_utf8(written).ok()?.to_ascii_lowercase();
    if !head.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    Some((raw(status, code, description), reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_answers_get_json_bodies() {
        let hyper_400 =
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 14:00:00 GMT\r\n\r\n";
        let (ours, reason) = replace_hyper_error(hyper_400).expect("replaced");
        assert_eq!(reason, "bad_request");
        let text = String::from_utf8(ours).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(json["errorCode"], "bad_request");

        let hyper_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            replace_hyper_error(hyper_431).map(|(_, r)| r),
            Some("header_too_large")
        );
    }

    #[test]
    fn our_own_responses_are_left_alone() {
        let ours = raw(StatusCode::BAD_REQUEST, "decoding_error", "x");
        assert_eq!(replace_hyper_error(&ours), None, "has a body");
        assert_eq!(
            replace_hyper_error(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(
            replace_hyper_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\n"),
            None,
            "a head whose body follows in the next write"
        );
    }
}
