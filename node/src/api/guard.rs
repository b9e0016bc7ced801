//! What every API call passes before it reaches the engine: app and bearer check, per-session
//! rate limit, bounded body read and JSON decoding (whatever the Content-Type).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::config::App;

pub struct Apps {
    secrets: HashMap<String, String>,
}

impl Apps {
    pub fn new(apps: &[App]) -> Apps {
        Apps {
            secrets: apps
                .iter()
                .map(|a| (a.id.clone(), a.secret.clone()))
                .collect(),
        }
    }

    /// How many apps are configured.
    pub fn count(&self) -> usize {
        self.secrets.len()
    }

    pub fn has(&self, app: &str) -> bool {
        self.secrets.contains_key(app)
    }

    /// The app's secret, which also signs its stream tokens.
    pub fn secret(&self, app: &str) -> Option<&str> {
        self.secrets.get(app).map(String::as_str)
    }

    /// Unknown app → 404 `not_found`; missing or wrong bearer → 401 `unauthorized`.
    pub fn authorize(&self, app: &str, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(secret) = self.secrets.get(app) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("app {app} not found"),
            ));
        };
        match bearer(headers) {
            Some(p) if constant_time_eq(p.as_bytes(), secret.as_bytes()) => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token for this app",
            )),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` work for the app and the admin API alike.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares without an early exit (aws-lc's `CRYPTO_memcmp`), so response time does not leak
/// how much of a secret matched. Only the length may show, as before.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// `limit` calls per second per session id, in a burst or spread (governor's GCRA). Sessions
/// idle long enough to have their whole budget again are forgotten when the map grows, so random
/// ids from a client cannot grow it without bound.
pub struct RateLimiter {
    limit: u32,
    per_session: DefaultKeyedRateLimiter<String>,
    started: Instant,
    /// The second (since `started`) of the last sweep of the map.
    last_prune: AtomicU64,
}

const RATE_MAP_PURGE_AT: usize = 10_000;

impl RateLimiter {
    pub fn new(limit: u32) -> RateLimiter {
        let n = NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN);
        RateLimiter {
            limit,
            per_session: DefaultKeyedRateLimiter::dashmap(Quota::per_second(n).allow_burst(n)),
            started: Instant::now(),
            last_prune: AtomicU64::new(u64::MAX),
        }
    }

    pub fn check(&self, session: &str) -> Result<(), ApiError> {
        if self.per_session.len() >= RATE_MAP_PURGE_AT {
            // At most once a second: the sweep walks the whole map.
            let now = self.started.elapsed().as_secs();
            if self.last_prune.swap(now, Ordering::Relaxed) != now {
                self.per_session.retain_recent();
            }
            if self.per_session.len() >= RATE_MAP_PURGE_AT {
                // Thousands of distinct sessions within a second: fail open rather than grow.
                return Ok(());
            }
        }
        self.per_session
            .check_key(&session.to_string())
            .map_err(|_| {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "more than {} API calls per second on this session",
                        self.limit
                    ),
                )
            })
    }
}

/// Reads at most `limit` bytes of body; more is 413 with a JSON error. A body that breaks off
/// or is badly framed (chunked encoding) is 400: saying "too large" would send the client
/// looking in the wrong place. A body past its deadline is answered 408 by the HTTP layer.
pub async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|cause| cause.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body larger than {limit} bytes"),
            )
        } else {
            ApiError::decoding(format!("request body could not be read: {e}"))
        }
    })
}

/// Whether the body is empty or only whitespace (partytracks and curl send no body at all).
pub fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// Longest part of a JSON error quoted back to the client.
const MAX_ERROR_ECHO: usize = 200;

/// Decodes JSON whatever the Content-Type says (partytracks sends `text/plain`).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        // serde quotes the offending input; keep the answer small whatever was sent.
        let mut text = e.to_string();
        if let Some((cut, _)) = text.char_indices().nth(MAX_ERROR_ECHO) {
            text.truncate(cut);
            text.push('…');
        }
        ApiError::decoding(format!("JSON body validation error: {text}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check() {
        let apps = Apps::new(&[App {
            id: "a".into(),
            secret: "s3cret".into(),
        }]);
        let mut h = HeaderMap::new();
        assert_eq!(
            apps.authorize("a", &h).map_err(|e| e.code),
            Err("unauthorized")
        );
        h.insert(
            header::AUTHORIZATION,
            "Bearer wrong".parse().expect("header"),
        );
        assert_eq!(
            apps.authorize("a", &h).map_err(|e| e.code),
            Err("unauthorized")
        );
        h.insert(
            header::AUTHORIZATION,
            "Bearer s3cret".parse().expect("header"),
        );
        assert_eq!(apps.authorize("a", &h), Ok(()));
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let mut h = HeaderMap::new();
            let v = format!("{scheme} s3cret");
            h.insert(header::AUTHORIZATION, v.parse().expect("header"));
            assert_eq!(apps.authorize("a", &h), Ok(()), "{scheme}");
        }
        assert_eq!(
            apps.authorize("b", &h).map_err(|e| e.status),
            Err(StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(constant_time_eq(b"", b""));
        for other in [&b"s3creT"[..], b"s3cre", b"s3crets", b"", b"S3cret"] {
            assert!(!constant_time_eq(b"s3cret", other), "{other:?}");
        }
    }

    #[test]
    fn rate_limit_per_session() {
        let r = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(r.check("x").is_ok());
        }
        assert_eq!(
            r.check("x").map_err(|e| e.status),
            Err(StatusCode::TOO_MANY_REQUESTS)
        );
        assert!(r.check("y").is_ok(), "another session has its own budget");
    }

    #[test]
    fn rate_map_is_bounded() {
        let r = RateLimiter::new(1);
        for i in 0..(RATE_MAP_PURGE_AT * 3) {
            let _ = r.check(&i.to_string());
        }
        let len = r.per_session.len();
        assert!(len <= RATE_MAP_PURGE_AT, "{len}");
    }
}
