//! Stream tokens at the API: [`authorize_stream`], the bearer check of WHIP and WHEP (the app
//! secret, or a scoped token signed with it), and `POST /v1/apps/{app}/tokens`, which mints one.
//! Signing and checking are the `trackmesh-tokens` crate's, shared with `trackmeshctl token`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use trackmesh_tokens::MintError;
pub use trackmesh_tokens::{
    CLOCK_SKEW, Claims, DEFAULT_TTL, MAX_TTL, Mode, TokenError, rfc3339, unix_now,
};

use super::ApiState;
use super::error::ApiError;
use super::guard::{bearer, constant_time_eq, decode, is_blank, read_body};

/// What a bearer was found to grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The app secret itself: every stream, both modes, no expiry.
    AppSecret,
    /// A stream token; its claims say which stream, which mode and until when.
    Token(Claims),
}

/// Whether `bearer` may `mode` (`Publish` or `Subscribe`) the stream `stream` of `app`, at `now`
/// (Unix seconds). The bearer is the app secret (compared in constant time) or a token signed with
/// it. 401s ([`TokenError::status`]) for a missing, malformed, forged, expired or other app's
/// token; 403s for a valid one of another stream or mode. No I/O: every node answers alike.
pub fn authorize_stream(
    app_secret: &str,
    app: &str,
    bearer: Option<&str>,
    stream: &str,
    mode: Mode,
    now: u64,
) -> Result<Grant, TokenError> {
    let Some(bearer) = bearer.filter(|b| !b.is_empty()) else {
        return Err(TokenError::Missing);
    };
    if !app_secret.is_empty() && constant_time_eq(bearer.as_bytes(), app_secret.as_bytes()) {
        return Ok(Grant::AppSecret);
    }
    let claims = trackmesh_tokens::verify(app_secret.as_bytes(), app, bearer, now)?;
    claims.check_scope(stream, mode)?;
    Ok(Grant::Token(claims))
}

/// Why [`ApiState::authorize_stream`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamDenied {
    /// No app of that id is configured.
    UnknownApp,
    /// The bearer: 401 or 403 ([`TokenError::status`]).
    Token(TokenError),
}

impl ApiState {
    /// [`authorize_stream`] for a request's `Authorization: Bearer` header, at the system clock.
    pub fn authorize_stream(
        &self,
        app: &str,
        headers: &HeaderMap,
        stream: &str,
        mode: Mode,
    ) -> Result<Grant, StreamDenied> {
        let secret = self.apps.secret(app).ok_or(StreamDenied::UnknownApp)?;
        authorize_stream(
            secret,
            app,
            bearer(headers),
            stream,
            mode,
            trackmesh_tokens::unix_now(),
        )
        .map_err(StreamDenied::Token)
    }
}

/// The token error in the Calls error model: 401 `unauthorized` or 403 `forbidden`.
impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        if e.is_forbidden() {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
        } else {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
        }
    }
}

/// A token request is three short fields; anything larger is not one.
const MAX_TOKEN_REQUEST: usize = 4096;

/// `POST /v1/apps/{app}/tokens` body.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenRequest {
    /// A stream name, or `*` for every stream of the app.
    stream: String,
    mode: Mode,
    /// Lifetime in seconds; the default is an hour, the most a day.
    ttl_seconds: Option<u64>,
}

/// `POST /v1/apps/{app}/tokens` answer.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    /// The JWT, for `Authorization: Bearer`.
    pub token: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

/// `POST /v1/apps/{app}/tokens`: mints a stream token. Only the app secret may ask (a token
/// cannot mint tokens); 201 `{token, expiresAt}`.
pub async fn create(
    State(st): State<Arc<ApiState>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    st.apps.authorize(&app, &headers)?;
    let bytes = read_body(body, MAX_TOKEN_REQUEST).await?;
    if is_blank(&bytes) {
        return Err(ApiError::decoding(
            "the body must be JSON {stream, mode, ttlSeconds?}",
        ));
    }
    let req: TokenRequest = decode(&bytes)?;
    let ttl = req.ttl_seconds.map_or(DEFAULT_TTL, Duration::from_secs);
    let secret = st.apps.secret(&app).unwrap_or_default();
    let minted = trackmesh_tokens::mint(
        secret.as_bytes(),
        &app,
        &req.stream,
        req.mode,
        ttl,
        trackmesh_tokens::unix_now(),
    )
    .map_err(|e| match e {
        MintError::Sign(_) | MintError::EmptySecret => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        ),
        MintError::Ttl | MintError::BadName(_) => ApiError::decoding(e.to_string()),
    })?;
    Ok((
        StatusCode::CREATED,
        Json(TokenResponse {
            token: minted.token,
            expires_at: trackmesh_tokens::rfc3339(minted.claims.exp),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret-of-app1";
    const NOW: u64 = 1_800_000_000;

    fn mint(stream: &str, mode: Mode) -> String {
        trackmesh_tokens::mint(SECRET.as_bytes(), "app1", stream, mode, DEFAULT_TTL, NOW)
            .map(|m| m.token)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_app_secret_grants_everything() {
        for mode in [Mode::Publish, Mode::Subscribe, Mode::Both] {
            assert_eq!(
                authorize_stream(SECRET, "app1", Some(SECRET), "any", mode, NOW),
                Ok(Grant::AppSecret)
            );
        }
        // Not a prefix of it, nor another app's.
        let e = authorize_stream(SECRET, "app1", Some("s3cret"), "any", Mode::Publish, NOW)
            .expect_err("refused");
        assert_eq!(e.status(), 401);
    }

    #[test]
    fn a_token_grants_its_scope_only() {
        let t = mint("cam", Mode::Subscribe);
        match authorize_stream(SECRET, "app1", Some(&t), "cam", Mode::Subscribe, NOW) {
            Ok(Grant::Token(c)) => {
                assert_eq!((c.stream.as_str(), c.mode), ("cam", Mode::Subscribe))
            }
            other => panic!("{other:?}"),
        }
        let e = authorize_stream(SECRET, "app1", Some(&t), "cam", Mode::Publish, NOW)
            .expect_err("refused");
        assert_eq!(e.status(), 403);
        let e = authorize_stream(SECRET, "app1", Some(&t), "other", Mode::Subscribe, NOW)
            .expect_err("refused");
        assert_eq!(e.status(), 403);
        assert_eq!(
            ApiError::from(e).code,
            "forbidden",
            "403 in the Calls error model"
        );
    }

    #[test]
    fn missing_expired_and_foreign_bearers_are_401() {
        let t = mint("*", Mode::Both);
        for bearer in [None, Some("")] {
            assert_eq!(
                authorize_stream(SECRET, "app1", bearer, "cam", Mode::Publish, NOW),
                Err(TokenError::Missing)
            );
        }
        let late = NOW + DEFAULT_TTL.as_secs() + trackmesh_tokens::CLOCK_SKEW.as_secs() + 1;
        let e = authorize_stream(SECRET, "app1", Some(&t), "cam", Mode::Publish, late)
            .expect_err("refused");
        assert_eq!(e, TokenError::Expired);
        assert_eq!(ApiError::from(e).status, StatusCode::UNAUTHORIZED);
        // Another app's secret, and another app id under the same secret.
        assert_eq!(
            authorize_stream("other", "app1", Some(&t), "cam", Mode::Publish, NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            authorize_stream(SECRET, "app2", Some(&t), "cam", Mode::Publish, NOW),
            Err(TokenError::WrongApp)
        );
    }

    #[test]
    fn an_empty_app_secret_is_never_matched() {
        assert_eq!(
            authorize_stream("", "app1", Some(""), "cam", Mode::Publish, NOW),
            Err(TokenError::Missing)
        );
        assert!(authorize_stream("", "app1", Some("x"), "cam", Mode::Publish, NOW).is_err());
    }
}
