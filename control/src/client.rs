//! HTTP to the node's admin API: bearer token, timeouts, and the error model
//! (`{errorCode, errorDescription}`) mapped to [`CtlError`].

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::error::CtlError;

/// Longest body excerpt kept for an error message.
const RAW_EXCERPT: usize = 200;
/// Largest answer read; a larger one is an error, not a memory cost (admin views of a large
/// cluster are well under it).
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Longest error code or description shown.
const MAX_ERROR_TEXT: usize = 512;

/// One HTTP answer: status and body (JSON when it parsed, else `Value::Null`).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub raw: String,
}

impl Answer {
    /// The server's `errorCode`, printable (no terminal control sequences) and bounded.
    pub fn error_code(&self) -> Option<String> {
        self.error_text("errorCode")
    }

    /// The server's `errorDescription`, printable and bounded.
    pub fn error_description(&self) -> Option<String> {
        self.error_text("errorDescription")
    }

    fn error_text(&self, key: &str) -> Option<String> {
        self.body
            .get(key)
            .and_then(Value::as_str)
            .map(|t| crate::render::clean(&t.chars().take(MAX_ERROR_TEXT).collect::<String>()))
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    timeout: Duration,
}

impl Client {
    /// `base` is a node URL as returned by [`crate::cli::parse_node_url`].
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<Client, CtlError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The admin API is on a private network; never send the token through a proxy.
            .no_proxy()
            .user_agent(concat!("trackmeshctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CtlError::Unreachable {
                url: base.to_string(),
                reason: format!("cannot set up HTTP: {}", error_reason(&e, timeout)),
            })?;
        Ok(Client {
            http,
            base: base.to_string(),
            token: token.filter(|t| !t.is_empty()),
            timeout,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A client for another node URL and bearer, with the same timeout.
    pub fn to(&self, base: &str, token: Option<String>) -> Result<Client, CtlError> {
        Client::new(base, token, self.timeout)
    }

    /// `POST` a JSON body to an app API path, with this client's bearer as the app secret: a 2xx
    /// JSON answer, else the matching [`CtlError`] (401 is [`CtlError::AppUnauthorized`]).
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .post(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let unreachable = |e: reqwest::Error| CtlError::Unreachable {
            url: self.base.clone(),
            reason: error_reason(&e, self.timeout),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let raw = read_bounded(resp, path).await.map_err(|e| match e {
            Bounded::Http(e) => unreachable(e),
            Bounded::TooLarge(e) => e,
        })?;
        let answer = Answer {
            status,
            body: serde_json::from_str(&raw).unwrap_or(Value::Null),
            raw,
        };
        match answer.status {
            200..=299 if answer.body.is_object() => Ok(answer.body),
            200..=299 => Err(CtlError::BadAnswer {
                path: path.to_string(),
                reason: format!(
                    "HTTP {} without a JSON object: {:?}",
                    answer.status,
                    excerpt(&answer.raw)
                ),
            }),
            401 => Err(CtlError::AppUnauthorized {
                url: self.base.clone(),
                code: answer.error_code(),
                description: answer.error_description(),
            }),
            status => Err(CtlError::Api {
                method: "POST".to_string(),
                path: path.to_string(),
                status,
                code: answer.error_code(),
                description: answer.error_description(),
                raw: excerpt(&answer.raw),
            }),
        }
    }

    /// Send a request; any HTTP status is an `Ok`. Only a missing answer is an error.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        with_token: bool,
    ) -> Result<Answer, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .header(reqwest::header::ACCEPT, "application/json");
        if with_token && let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let unreachable = |e: reqwest::Error| CtlError::Unreachable {
            url: self.base.clone(),
            reason: error_reason(&e, self.timeout),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let raw = read_bounded(resp, path).await.map_err(|e| match e {
            Bounded::Http(e) => unreachable(e),
            Bounded::TooLarge(e) => e,
        })?;
        let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
        Ok(Answer { status, body, raw })
    }

    /// An admin call: a 2xx JSON answer, else the matching [`CtlError`].
    pub async fn admin(&self, method: Method, path: &str) -> Result<Value, CtlError> {
        let answer = self.request(method.clone(), path, true).await?;
        match answer.status {
            200..=299 if answer.body.is_null() => Err(CtlError::BadAnswer {
                path: path.to_string(),
                reason: format!(
                    "HTTP {} without a JSON body: {:?}",
                    answer.status,
                    excerpt(&answer.raw)
                ),
            }),
            200..=299 => Ok(answer.body),
            401 => Err(CtlError::Unauthorized {
                url: self.base.clone(),
                code: answer.error_code(),
                description: answer.error_description(),
            }),
            status => Err(CtlError::Api {
                method: method.to_string(),
                path: path.to_string(),
                status,
                code: answer.error_code(),
                description: answer.error_description(),
                raw: excerpt(&answer.raw),
            }),
        }
    }

    pub async fn admin_get(&self, path: &str) -> Result<Value, CtlError> {
        self.admin(Method::GET, path).await
    }

    pub async fn admin_post(&self, path: &str) -> Result<Value, CtlError> {
        self.admin(Method::POST, path).await
    }
}

enum Bounded {
    Http(reqwest::Error),
    TooLarge(CtlError),
}

/// The answer's body, at most [`MAX_ANSWER`] bytes.
async fn read_bounded(mut resp: reqwest::Response, path: &str) -> Result<String, Bounded> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Bounded::Http)? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(Bounded::TooLarge(CtlError::BadAnswer {
                path: path.to_string(),
                reason: format!("an answer over {} MiB", MAX_ANSWER >> 20),
            }));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The most specific reason in a reqwest error's chain ("Connection refused (os error 111)").
fn error_reason(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}s (--timeout)", timeout.as_secs_f64());
    }
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    // Bounded walk: error chains are short, but do not trust them to end.
    for _ in 0..16 {
        let Some(s) = source else { break };
        reason = s.to_string();
        source = s.source();
    }
    reason
}

/// The first [`RAW_EXCERPT`] characters of a body, on one line.
fn excerpt(raw: &str) -> String {
    let one_line: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(RAW_EXCERPT + 1)
        .collect();
    if one_line.chars().count() > RAW_EXCERPT {
        let cut: String = one_line.chars().take(RAW_EXCERPT).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// One path segment from user input, percent-encoded. URLs resolve `.` and `..` segments (even
/// encoded), so those, and the empty segment, are refused.
pub fn segment(what: &str, s: &str) -> Result<String, CtlError> {
    if s.is_empty() || s == "." || s == ".." {
        return Err(CtlError::Negative(format!(
            "{what} {s:?} cannot be used in a URL path"
        )));
    }
    Ok(encode(s))
}

/// Percent-encode one path segment or query value (everything but RFC 3986 unreserved).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("node-a_1.x~"), "node-a_1.x~");
        assert_eq!(encode("cam/hd"), "cam%2Fhd");
        assert_eq!(encode("a b?c#d"), "a%20b%3Fc%23d");
        assert_eq!(encode("n:1"), "n%3A1");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(encode(".."), "..");
        assert_eq!(segment("node", "a/b").as_deref(), Ok("a%2Fb"));
        for bad in ["", ".", ".."] {
            assert!(segment("node", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn excerpts_are_short_and_single_line() {
        assert_eq!(excerpt("  a\nb  "), "a b");
        let long = "x".repeat(500);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), RAW_EXCERPT + 1);
        assert!(e.ends_with('…'));
    }

    #[test]
    fn answer_error_fields() {
        let a = Answer {
            status: 404,
            body: serde_json::json!({"errorCode": "not_found", "errorDescription": "gone"}),
            raw: String::new(),
        };
        assert_eq!(a.error_code().as_deref(), Some("not_found"));
        assert_eq!(a.error_description().as_deref(), Some("gone"));
        let a = Answer {
            status: 500,
            body: serde_json::json!([1, 2]),
            raw: String::new(),
        };
        assert_eq!(a.error_code(), None);
    }
}
