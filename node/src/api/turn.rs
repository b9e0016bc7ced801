//! The Calls TURN endpoints: `POST /v1/turn/keys/{keyId}/credentials/generate-ice-servers`
//! hands out a credential for this node's TURN server, `…/credentials/{username}/revoke` revokes
//! one. The bearer is the key's secret.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::ApiState;
use super::error::ApiError;
use super::guard::{bearer, constant_time_eq, decode, is_blank, read_body};
use crate::turn::credentials::{MAX_TTL_SECS, unix_now};
use crate::turn::{TurnAuth, TurnServer};

/// What the TURN endpoints need: the keys and revocations, and the running server.
pub struct TurnState {
    /// Keys and revoked credentials, shared with the TURN server.
    pub auth: Arc<TurnAuth>,
    /// The server, when keys are configured.
    pub server: Option<Arc<TurnServer>>,
}

#[derive(Deserialize)]
struct GenerateRequest {
    ttl: Option<serde_json::Value>,
}

/// Unknown key → 404 `not_found`; missing or wrong bearer → 401 `unauthorized`.
fn authorize(turn: &TurnState, key: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(secret) = turn.auth.secret(key) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("TURN key {key} not found"),
        ));
    };
    match bearer(headers) {
        Some(t) if constant_time_eq(t.as_bytes(), secret.as_bytes()) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token for this TURN key",
        )),
    }
}

/// The URLs of a TURN server reached at `at`.
fn ice_servers(at: SocketAddr, username: &str, credential: &str) -> serde_json::Value {
    serde_json::json!({
        "iceServers": [
            { "urls": [format!("stun:{at}")] },
            {
                "urls": [
                    format!("turn:{at}?transport=udp"),
                    format!("turn:{at}?transport=tcp"),
                ],
                "username": username,
                "credential": credential,
            }
        ]
    })
}

/// Lifetime of the credential a WHIP/WHEP answer carries in its `Link` headers. The TURN server
/// checks the credential on every refresh, so it must outlast a broadcast; 12 hours covers a long
/// event, a quarter of what `generate-ice-servers` allows.
pub const LINK_CREDENTIAL_TTL_SECS: u64 = 12 * 3600;

/// The `Link: <…>; rel="ice-server"` values (RFC 9725 §4.6) of a WHIP/WHEP answer: STUN, then
/// TURN over UDP and TCP with a fresh credential of the first TURN key. None without a running
/// TURN server.
pub fn ice_server_links(turn: &TurnState, now: u64) -> Vec<String> {
    let (Some(server), Some(key)) = (&turn.server, turn.auth.first_key()) else {
        return Vec::new();
    };
    let Some(cred) = turn.auth.issue(key, LINK_CREDENTIAL_TTL_SECS, now) else {
        return Vec::new();
    };
    let at = server.public_addr();
    // The username (`{expiry}:{key}:{hex}`) and the base64 credential hold no `"` or `\`, so
    // they go into the quoted strings as they are.
    let auth = format!(
        "username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
        cred.username, cred.password
    );
    vec![
        format!("<stun:{at}>; rel=\"ice-server\""),
        format!("<turn:{at}?transport=udp>; rel=\"ice-server\"; {auth}"),
        format!("<turn:{at}?transport=tcp>; rel=\"ice-server\"; {auth}"),
    ]
}

/// 400 `bad_request`: the TURN API answers a missing or out-of-range ttl with 400 (the Calls
/// media API's 406 `invalid_params` is not used here).
fn bad_ttl() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("a body {{\"ttl\": seconds}} is required, ttl from 1 to {MAX_TTL_SECS}"),
    )
}

/// `POST /v1/turn/keys/{keyId}/credentials/generate-ice-servers` `{ttl}` → 201 `{iceServers}`.
pub async fn generate(
    State(st): State<Arc<ApiState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&st.turn, &key, &headers)?;
    let bytes = read_body(body, st.max_body).await?;
    if is_blank(&bytes) {
        return Err(bad_ttl());
    }
    let req: GenerateRequest = decode(&bytes)?;
    let ttl = req
        .ttl
        .as_ref()
        .and_then(serde_json::Value::as_u64)
        .filter(|t| (1..=MAX_TTL_SECS).contains(t))
        .ok_or_else(bad_ttl)?;
    let Some(server) = &st.turn.server else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable_error",
            "the TURN server is not running",
        ));
    };
    let cred = st.turn.auth.issue(&key, ttl, unix_now()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("TURN key {key} not found"),
        )
    })?;
    Ok((
        StatusCode::CREATED,
        Json(ice_servers(
            server.public_addr(),
            &cred.username,
            &cred.password,
        )),
    )
        .into_response())
}

/// `POST /v1/turn/keys/{keyId}/credentials/{username}/revoke` → 204; the credential is refused
/// from then on and its allocations on this node are closed.
pub async fn revoke(
    State(st): State<Arc<ApiState>>,
    Path((key, username)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&st.turn, &key, &headers)?;
    match st.turn.auth.revoke(&key, &username, unix_now()) {
        Ok(()) => {}
        Err(Some(_)) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such credential of this TURN key",
            ));
        }
        Err(None) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable_error",
                "too many revoked credentials not yet expired",
            )
            .retry_after(60));
        }
    }
    if let Some(server) = &st.turn.server {
        server.close_allocations_of(&username).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
