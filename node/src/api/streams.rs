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
    // Each stream lives on one worker: the lists of all of them, merged.
    let mut streams: Vec<StreamView> = st
        .engine
        .call_all(move |e, _| e.streams_list(&app))
        .await?
        .into_iter()
        .flatten()
        .collect();
    streams.sort_by(|a, b| a.name.cmp(&b.name));
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

/// Explicit streams one app may hold on a node with `apps` apps: a share of the node's table
/// that leaves as much again for the streams WHIP and WHEP make on their own.
pub fn explicit_streams_per_app(apps: usize) -> usize {
    crate::engine::streams::MAX_STREAMS / (apps + 1)
}

/// `POST /v1/apps/{app}/streams/{id}`: 201 when created, 200 when it existed.
pub async fn create(
    State(st): State<Arc<ApiState>>,
    Path((app, stream)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    st.apps.authorize(&app, &headers)?;
    let slot = st.engine.stream_slot(&app, &stream).await?;
    // Explicit streams stay until deleted: one app's must not fill the node's table for all.
    let a = app.clone();
    let held: usize = st
        .engine
        .call_all(move |e, _| e.explicit_stream_count(&a))
        .await?
        .into_iter()
        .sum();
    let room = held < explicit_streams_per_app(st.apps.count());
    let created = st
        .engine
        .call_on(slot.worker(), move |e, _| {
            e.stream_create(&app, &stream, room)
        })
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
    let Some(slot) = st.engine.find_stream(&app, &stream) else {
        return Err(crate::engine::OpError::NotFound(format!("stream {stream} not found")).into());
    };
    let (a, s) = (app.clone(), stream.clone());
    st.engine
        .call_on(slot.worker(), move |e, now| e.stream_delete(&a, &s, now))
        .await??;
    drop(slot);
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

/// Tracks one bind may name, as a Calls request may hold.
const MAX_BIND_TRACKS: usize = 64;

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
    // Both are echoed in errors: checked first, with a fixed text.
    let bad = |detail: String| Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail);
    if crate::ids::SessionId::parse(&req.session_id).is_none() {
        return Err(bad("sessionId is not a session id".into()));
    }
    if req.tracks.len() > MAX_BIND_TRACKS {
        return Err(bad(format!("at most {MAX_BIND_TRACKS} tracks")));
    }
    if req
        .tracks
        .iter()
        .any(|t| t.len() > super::calls::MAX_TRACK_NAME_BYTES)
    {
        return Err(bad(format!(
            "a track name is at most {} bytes",
            super::calls::MAX_TRACK_NAME_BYTES
        )));
    }
    // A stream lives on one worker with all its sessions: the bound session's. A stream that
    // is new, or holds no session there, moves to it; one that serves sessions on another
    // worker cannot take it (its viewers are attached there).
    let worker = st.engine.worker_of_str(&req.session_id);
    let mut slot = st.engine.stream_slot_on(&app, &stream, worker).await?;
    if slot.worker() != worker {
        let from = slot.worker();
        let conflict = |why: &str| -> Problem {
            crate::engine::OpError::Conflict(format!(
                "stream {stream} lives on engine worker {from}, {why}; session {} is on worker {worker}: bind a session held by worker {from}, or bind when the stream is idle (see --workers)",
                req.session_id
            ))
            .into()
        };
        if st.cascades.list(&app).contains_key(&stream) {
            return Err(conflict("which runs its cascade"));
        }
        match st.engine.move_stream(&mut slot, worker).await? {
            Ok(()) => {}
            Err(crate::workers::MoveRefused::InUse) => {
                return Err(conflict("which holds its sessions"));
            }
            Err(crate::workers::MoveRefused::Busy | crate::workers::MoveRefused::Moved) => {
                return Err(conflict("busy with another request"));
            }
        }
    }
    st.engine
        .call_on(worker, move |e, now| {
            e.stream_bind(&app, &stream, &req.session_id, req.tracks, now)
        })
        .await??;
    drop(slot);
    Ok(StatusCode::OK.into_response())
}
