//! The HTTP half of a WHIP/WHEP client: POST an offer, read the bounded answer and the session
//! URL, DELETE that URL when the cascade stops (RFC 9725 section 4.2).

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};

/// The longest SDP answer read from the other server.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Every request to the other server (connect, send, read the answer) ends within this.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest URL and token accepted for a cascade.
pub const MAX_URL_BYTES: usize = 2048;
/// See [`MAX_URL_BYTES`].
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The other server's 201: its SDP answer and the session URL to DELETE.
pub struct Posted {
    /// The SDP answer.
    pub answer: String,
    /// The session URL (`Location`, resolved against the endpoint's URL), if it gave one.
    pub location: Option<Url>,
}

/// The client every cascade of a node shares: bounded time, at most 3 redirects (WHIP allows
/// them; reqwest drops the bearer on a redirect to another host), no proxy.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .no_proxy()
        .build()
        .unwrap_or_default()
}

/// Checks a cascade's URL: absolute `http` with a host, bounded. The node's HTTP client is
/// built without TLS (reqwest's rustls backend would need a process-wide crypto provider for
/// every client in the workspace), so `https` is refused here rather than failing every attempt.
pub fn parse_url(url: &str) -> Result<Url, String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!("the URL is longer than {MAX_URL_BYTES} bytes"));
    }
    let u = Url::parse(url).map_err(|e| format!("not an absolute URL: {e}"))?;
    if u.scheme() == "https" {
        return Err(
            "https:// is not supported yet: use http:// (or a TLS proxy that forwards http)".into(),
        );
    }
    if u.scheme() != "http" || u.host_str().is_none_or(str::is_empty) {
        return Err("the URL must be http:// with a host".into());
    }
    Ok(u)
}

/// Checks a cascade's bearer token: bounded and usable in a header (empty: none sent).
pub fn check_token(token: &str) -> Result<(), String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("the token is longer than {MAX_TOKEN_BYTES} bytes"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be printable ASCII without spaces".into());
    }
    Ok(())
}

fn bearer(req: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
    if token.is_empty() {
        req
    } else {
        req.header(AUTHORIZATION, format!("Bearer {token}"))
    }
}

/// POSTs an offer to a WHIP or WHEP endpoint; anything but a 201 with an SDP body is an error
/// that says what came back.
pub async fn post_offer(
    http: &reqwest::Client,
    url: &Url,
    token: &str,
    offer: String,
) -> Result<Posted, String> {
    let req = http
        .post(url.clone())
        .header(CONTENT_TYPE, "application/sdp")
        .body(offer);
    let mut res = bearer(req, token)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {}", error_chain(&e)))?;
    let status = res.status();
    let location = res
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| res.url().join(l).ok());
    let mut body = Vec::new();
    loop {
        match res.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(format!(
                        "POST {url}: the answer is longer than {MAX_ANSWER_BYTES} bytes"
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(format!("POST {url}: reading the answer: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    if status != StatusCode::CREATED {
        let mut detail: String = text.chars().take(200).collect();
        detail.retain(|c| !c.is_control());
        return Err(format!("POST {url}: {status}: {detail}"));
    }
    Ok(Posted {
        answer: text,
        location,
    })
}

/// DELETEs the other server's session URL; failures are only logged (the other server ends an
/// abandoned session by itself).
pub async fn delete_session(http: &reqwest::Client, location: &Url, token: &str) {
    match bearer(http.delete(location.clone()), token).send().await {
        Ok(r) => tracing::debug!(%location, status = %r.status(), "cascade session deleted"),
        Err(e) => tracing::info!(%location, error = %error_chain(&e), "cascade DELETE failed"),
    }
}

/// An error with its causes, on one line (reqwest's own text leaves out the reason).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_tokens_are_checked() {
        assert!(parse_url("http://127.0.0.1:7700/v1/apps/a/whep/x").is_ok());
        assert!(parse_url("http://[::1]:7700/whip/x").is_ok());
        for bad in [
            "",
            "not a url",
            "/relative/path",
            "ftp://host/x",
            "file:///etc/passwd",
            "https://example.com/whip/x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(parse_url(&format!("http://h/{}", "a".repeat(MAX_URL_BYTES))).is_err());
        assert!(check_token("").is_ok());
        assert!(check_token("abc.def-ghi").is_ok());
        assert!(check_token("a b").is_err());
        assert!(check_token("a\r\nX-Evil: 1").is_err());
        assert!(check_token(&"a".repeat(MAX_TOKEN_BYTES + 1)).is_err());
    }
}
