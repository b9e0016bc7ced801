//! `POST` and `DELETE /v1/apps/{app}/streams/{id}/cascade` (app secret; problem+json errors):
//! start pulling the stream from another server's WHEP endpoint (`sourceUrl`) or pushing it to
//! another server's WHIP endpoint (`targetUrl`), and stop. The work is in `crate::cascade`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::ApiState;
use super::guard::{decode, read_body};
use super::problem::Problem;
use crate::cascade::{StartRefused, client};
use crate::engine::CascadeDirection;

type Result<T, E = Problem> = std::result::Result<T, E>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CascadeRequest {
    source_url: Option<String>,
    target_url: Option<String>,
    #[serde(default)]
    token: String,
}

/// The query of `DELETE …/cascade`.
#[derive(Deserialize)]
pub struct StopQuery {
    /// `source` or `target`; both when absent.
    pub direction: Option<String>,
}

fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail)
}

/// The problem for a cascade [`Cascades::start`](crate::cascade::Cascades::start) refuses.
fn refused(r: StartRefused) -> Problem {
    match r {
        StartRefused::Exists => Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            "the stream already has a cascade in this direction; DELETE it first",
        ),
        StartRefused::Full => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "at most {} cascades per app and {} per node",
                crate::cascade::MAX_CASCADES_PER_APP,
                crate::cascade::MAX_CASCADES
            ),
        ),
    }
}

/// `POST …/streams/{id}/cascade` with `{sourceUrl, token}` or `{targetUrl, token}`: 201 when
/// started (it then connects, and reconnects, in the background; `GET streams` shows how).
pub async fn start(
    State(st): State<Arc<ApiState>>,
    Path((app, stream)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    st.apps.authorize(&app, &headers)?;
    let bytes = read_body(body, st.max_body).await?;
    let req: CascadeRequest = decode(&bytes)?;
    let (direction, url) = match (req.source_url, req.target_url) {
        (Some(u), None) => (CascadeDirection::Source, u),
        (None, Some(u)) => (CascadeDirection::Target, u),
        _ => return Err(bad_request("give exactly one of sourceUrl and targetUrl")),
    };
    let url = client::parse_url(&url).map_err(bad_request)?;
    client::check_token(&req.token).map_err(bad_request)?;
    // Refused before the stream is pinned for it: a refusal leaves the stream as it was (an
    // auto-created one still goes with its last session).
    if let Some(r) = st.cascades.refusal(&app, &stream, direction) {
        return Err(refused(r));
    }
    // Only an existing stream takes a cascade; its cascade runs on its worker and holds the
    // stream there while it runs.
    let slot = match st.engine.find_stream(&app, &stream) {
        Some(slot) => {
            let (a, s) = (app.clone(), stream.clone());
            let pinned = st
                .engine
                .call_on(slot.worker(), move |e, _| e.cascade_pin_stream(&a, &s))
                .await?;
            pinned.then_some(slot)
        }
        None => None,
    };
    let Some(slot) = slot else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("stream {stream} not found"),
        ));
    };
    st.cascades
        .start(&app, &stream, direction, url.clone(), req.token, slot)
        .map_err(refused)?;
    let body = serde_json::json!({
        "direction": match direction {
            CascadeDirection::Source => "source",
            CascadeDirection::Target => "target",
        },
        "url": url.to_string(),
        "state": "connecting",
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE …/streams/{id}/cascade[?direction=source|target]`: stops the stream's cascades (both
/// without a direction), closing their sessions here and on the other server.
pub async fn stop(
    State(st): State<Arc<ApiState>>,
    Path((app, stream)): Path<(String, String)>,
    Query(q): Query<StopQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    st.apps.authorize(&app, &headers)?;
    let direction = match q.direction.as_deref() {
        None => None,
        Some("source") => Some(CascadeDirection::Source),
        Some("target") => Some(CascadeDirection::Target),
        Some(_) => return Err(bad_request("direction is source or target")),
    };
    if st.cascades.stop(&app, &stream, direction).await == 0 {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("stream {stream} has no such cascade"),
        ));
    }
    Ok(StatusCode::OK.into_response())
}
