//! The streams API under `/v1/apps/{app}/streams` (app secret; problem+json errors): list,
//! create, delete, and bind a Calls session's tracks as a stream's publisher.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::guard::{decode, read_body};
use super::problem::Problem;
use crate::cluster::ClusterView;
use crate::engine::{StreamSessionView, StreamView};

type Result<T, E = Problem> = std::result::Result<T, E>;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StreamsBody {
    streams: Vec<StreamJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StreamJson {
    id: String,
    /// Unix milliseconds.
    created_at: u64,
    publisher: Option<SessionJson>,
    subscribers: Vec<SessionJson>,
    codecs: Vec<String>,
    /// Cascades to and from other servers (omitted when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cascades: Vec<crate::cascade::CascadeView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionJson {
    session_id: String,
    node: String,
    state: &'static str,
    tracks: Vec<String>,
    packets_in: u64,
    bytes_in: u64,
    packets_out: u64,
    bytes_out: u64,
}

/// `node` for a session of this node; another node's session (a followed publisher) is named
/// by the member whose tag its id carries.
fn session_json(node: &str, view: &ClusterView, v: StreamSessionView) -> SessionJson {
    let node = view
        .live_by_tag(v.session_id.node_tag())
        .map_or(node, |m| m.node_id.as_str());
    SessionJson {
        session_id: v.session_id.to_string(),
        node: node.to_string(),
        state: v.state,
        tracks: v.tracks,
        packets_in: v.packets_in,
        bytes_in: v.bytes_in,
        packets_out: v.packets_out,
        bytes_out: v.bytes_out,
    }
}

fn stream_json(node: &str, view: &ClusterView, s: StreamView) -> StreamJson {
    StreamJson {
        id: s.name,
        created_at: s
            .created
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        publisher: s.publisher.map(|p| session_json(node, view, p)),
        subscribers: s
            .viewers
            .into_iter()
            .map(|v| session_json(node, view, v))
            .collect(),
        codecs: s.codecs,
        cascades: Vec::new(),
    }
}

/// `GET /v1/apps/{app}/streams`.
pub async fn list(
    State(st): State<Arc<ApiState>>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    st.apps.authorize(&app, &headers)?;
    let mut cascades = st.cascades.list(&app);
    let streams = st.engine.call(move |e, _| e.streams_list(&app)).await?;
    let node = st.node_id.clone();
    let view = st.cluster.view.borrow().clone();
    Ok(Json(StreamsBody {
        streams: streams
            .into_iter()
            .map(|s| {
                let c = cascades.remove(&s.name).unwrap_or_default();
                let mut j = stream_json(&node, &view, s);
                j.cascades = c;
                j
            })
            .collect(),
    })
    .into_response())
}

/// `POST /v1/apps/{app}/streams/{id}`: 201 when created, 200 when it existed.
pub async fn create(
    State(st): State<Arc<ApiState>>,
    Path((app, stream)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    st.apps.authorize(&app, &headers)?;
    let created = st
        .engine
        .call(move |e, _| e.stream_create(&app, &stream))
        .await??;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
    .into_response())
}

/// `DELETE /v1/apps/{app}/streams/{id}`: removes it and ends its sessions.
pub async fn delete(
    State(st): State<Arc<ApiState>>,
    Path((app, stream)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    st.apps.authorize(&app, &headers)?;
    let (a, s) = (app.clone(), stream.clone());
    st.engine
        .call(move |e, now| e.stream_delete(&a, &s, now))
        .await??;
    // Its cascades end too, and the other servers' sessions with them.
    st.cascades.stop(&app, &stream, None).await;
    Ok(StatusCode::OK.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BindRequest {
    session_id: String,
    tracks: Vec<String>,
}

/// `PUT /v1/apps/{app}/streams/{id}/publisher` with `{sessionId, tracks}`: a Calls session's
/// published tracks become the stream (WHEP viewers play them).
pub async fn bind(
    State(st): State<Arc<ApiState>>,
    Path((app, stream)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    st.apps.authorize(&app, &headers)?;
    let bytes = read_body(body, st.max_body).await?;
    let req: BindRequest = decode(&bytes)?;
    // Streams live on the primary worker; a session on another one cannot feed them yet.
    let worker = st.engine.worker_of_str(&req.session_id);
    if worker != crate::workers::PRIMARY {
        return Err(crate::engine::OpError::Conflict(format!(
            "session {} is on engine worker {worker}: only sessions on worker 0 can be bound to a stream (see --workers)",
            req.session_id
        ))
        .into());
    }
    st.engine
        .call(move |e, now| e.stream_bind(&app, &stream, &req.session_id, req.tracks, now))
        .await??;
    Ok(StatusCode::OK.into_response())
}
