//! Operating a node: `/metrics`, `/readyz`, drain, and the admin API. Cluster-wide admin views
//! are answered by any node, which asks the others over HTTP (with the same admin token).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use crate::cluster::Member;
use crate::ids::SessionId;
use crate::metrics::Snapshot;

type AdminResult = Result<Response, ApiError>;

/// Counts requests and their latency by route template (never by concrete path: session ids in
/// paths would make the label unbounded).
pub async fn track_http(State(st): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let started = Instant::now();
    let res = next.run(req).await;
    let m = &st.ops.metrics;
    m.http_requests
        .with_label_values(&[route.as_str(), method.as_str(), res.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    res
}

pub async fn metrics(State(st): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let (stats, gauges, setup_times) = st
        .engine
        .call(|e, _| (e.stats().clone(), e.gauges(), e.take_setup_times()))
        .await?;
    let snap = Snapshot {
        stats,
        gauges,
        setup_times,
        relay: st.cluster.relay.figures(),
        view: st.cluster.view.borrow().clone(),
        draining: st.ops.local.draining.load(Ordering::Relaxed),
    };
    let body = st.ops.metrics.render(snap);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

/// Alive while the engine task, the relay and gossip all run; else 503 naming what stopped, so an
/// orchestrator restarts the node instead of routing to an HTTP front with nothing behind it.
pub async fn healthz(State(st): State<Arc<ApiState>>) -> Response {
    let stopped = st.ops.liveness.stopped();
    if stopped.is_empty() {
        return Json(json!({"status": "ok"})).into_response();
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable_error",
        format!("stopped: {}", stopped.join(", ")),
    )
    .into_response()
}

pub async fn readyz(State(st): State<Arc<ApiState>>) -> Response {
    if st.ops.local.draining.load(Ordering::Relaxed) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable_error",
            "draining",
        )
        .into_response();
    }
    // A full node takes no new sessions: let the load balancer send them elsewhere. The count is
    // the one gossiped (at most a second old), so a probe costs the engine nothing.
    if st.ops.local.sessions.load(Ordering::Relaxed) >= st.max_sessions as u64 {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable_error",
            "full: this node holds --max-sessions sessions",
        )
        .into_response();
    }
    Json(json!({ "ready": true })).into_response()
}

pub fn check(st: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    super::cluster::check_admin(st, headers)
}

fn not_found(what: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
}

/// Asks another node's admin API.
async fn ask(st: &ApiState, node: &Member, method: Method, path: &str) -> Result<Value, ApiError> {
    let token = st.admin_token.clone().unwrap_or_default();
    let res = st
        .http
        .request(method, format!("{}{path}", node.api))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "temporarily_unavailable_error",
                format!("node {} did not answer: {e}", node.node_id),
            )
        })?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let desc = body["errorDescription"]
        .as_str()
        .unwrap_or("error")
        .to_string();
    // The other node's own verdict (404 not found, 401, ...) is the answer; only its failures
    // become a gateway error.
    if status.is_client_error() {
        let code = match body["errorCode"].as_str() {
            Some("not_found") => "not_found",
            Some("unauthorized") => "unauthorized",
            _ => "invalid_params",
        };
        return Err(ApiError::new(status, code, desc));
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "temporarily_unavailable_error",
        format!("node {} answered {status}: {desc}", node.node_id),
    ))
}

fn member(st: &ApiState, id: &str) -> Result<Member, ApiError> {
    st.cluster
        .view
        .borrow()
        .live_by_id(id)
        .cloned()
        .ok_or_else(|| not_found(format!("no live node {id} in the cluster")))
}

fn others(st: &ApiState) -> Vec<Member> {
    st.cluster
        .view
        .borrow()
        .members
        .iter()
        .filter(|m| m.live && m.node_id != st.cluster.self_id)
        .cloned()
        .collect()
}

async fn local_status(st: &ApiState) -> Result<Value, ApiError> {
    let (gauges, sessions) = st
        .engine
        .call(|e, _| (e.gauges(), e.session_count()))
        .await?;
    let me = st.cluster.view.borrow().me().cloned();
    Ok(json!({
        "nodeId": st.cluster.self_id,
        "tag": st.cluster.tag.to_string(),
        "region": me.as_ref().map(|m| m.region.clone()).unwrap_or_default(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSecs": st.ops.started.elapsed().as_secs(),
        "draining": st.ops.local.draining.load(Ordering::Relaxed),
        "sessions": sessions,
        "publishedTracks": gauges.published_audio + gauges.published_video,
        "subscribedTracks": gauges.subscribed_audio + gauges.subscribed_video,
        "relayLinks": st.cluster.relay.figures().links,
        "api": me.as_ref().map(|m| m.api.clone()).unwrap_or_default(),
        "media": me.as_ref().map(|m| m.media.clone()).unwrap_or_default(),
        "relay": me.as_ref().map(|m| m.relay.to_string()).unwrap_or_default(),
        "gossip": st.ops.gossip.to_string(),
    }))
}

pub async fn status(State(st): State<Arc<ApiState>>, headers: HeaderMap) -> AdminResult {
    check(&st, &headers)?;
    Ok(Json(local_status(&st).await?).into_response())
}

pub async fn status_of(
    State(st): State<Arc<ApiState>>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> AdminResult {
    check(&st, &headers)?;
    if node == st.cluster.self_id {
        return Ok(Json(local_status(&st).await?).into_response());
    }
    let m = member(&st, &node)?;
    Ok(Json(ask(&st, &m, Method::GET, "/admin/status").await?).into_response())
}

#[derive(Deserialize)]
pub struct NodeQuery {
    node: Option<String>,
}

async fn local_sessions(st: &ApiState) -> Result<Vec<Value>, ApiError> {
    let sessions = st.engine.call(|e, _| e.admin_sessions()).await?;
    Ok(sessions.into_iter().map(|s| session_json(st, s)).collect())
}

fn session_json(st: &ApiState, s: crate::engine::SessionSummary) -> Value {
    let tracks: Vec<super::wire::TrackOut> = s.tracks.into_iter().map(Into::into).collect();
    json!({
        "node": st.cluster.self_id,
        "sessionId": s.session_id.to_string(),
        "app": s.app,
        "connected": s.connected,
        "tracks": tracks,
    })
}

/// Runs `local` here, or asks the named node, or gathers from every live node.
async fn gather(
    st: &ApiState,
    node: Option<String>,
    path: &str,
    key: &str,
) -> Result<Vec<Value>, ApiError> {
    let local = match key {
        "sessions" => local_sessions(st).await?,
        _ => local_tracks(st).await?,
    };
    match node {
        Some(n) if n == st.cluster.self_id => Ok(local),
        Some(n) => {
            let m = member(st, &n)?;
            let v = ask(st, &m, Method::GET, &format!("{path}?node={n}")).await?;
            Ok(v[key].as_array().cloned().unwrap_or_default())
        }
        None => {
            let mut all = local;
            for m in others(st) {
                let q = format!("{path}?node={}", m.node_id);
                match ask(st, &m, Method::GET, &q).await {
                    Ok(v) => all.extend(v[key].as_array().cloned().unwrap_or_default()),
                    Err(e) => {
                        tracing::warn!(node = %m.node_id, error = %e.description, "admin gather")
                    }
                }
            }
            Ok(all)
        }
    }
}

pub async fn sessions(
    State(st): State<Arc<ApiState>>,
    Query(q): Query<NodeQuery>,
    headers: HeaderMap,
) -> AdminResult {
    check(&st, &headers)?;
    let all = gather(&st, q.node, "/admin/sessions", "sessions").await?;
    Ok(Json(json!({ "sessions": all })).into_response())
}

pub async fn session(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> AdminResult {
    check(&st, &headers)?;
    let sid = SessionId::parse(&id).ok_or_else(|| not_found(format!("session {id} not found")))?;
    if sid.node_tag() != st.cluster.tag {
        let owner = st
            .cluster
            .view
            .borrow()
            .live_by_tag(sid.node_tag())
            .cloned();
        let owner = owner.ok_or_else(|| not_found(format!("session {id} not found")))?;
        return Ok(
            Json(ask(&st, &owner, Method::GET, &format!("/admin/sessions/{id}")).await?)
                .into_response(),
        );
    }
    let s = st.engine.call(move |e, _| e.admin_session(sid)).await?;
    let s = s.ok_or_else(|| not_found(format!("session {id} not found")))?;
    Ok(Json(session_json(&st, s)).into_response())
}

async fn local_tracks(st: &ApiState) -> Result<Vec<Value>, ApiError> {
    let pubs = st.engine.call(|e, _| e.admin_publications()).await?;
    Ok(pubs
        .into_iter()
        .map(|p| {
            json!({
                "node": st.cluster.self_id,
                "sessionId": p.session_id.to_string(),
                "trackName": p.track_name,
                "kind": if p.kind == str0m::media::MediaKind::Audio { "audio" } else { "video" },
                "subscribers": p.local_subscribers,
                "relayedTo": st.cluster.relay.downstream_peers(&p.downstreams),
            })
        })
        .collect())
}

pub async fn tracks(
    State(st): State<Arc<ApiState>>,
    Query(q): Query<NodeQuery>,
    headers: HeaderMap,
) -> AdminResult {
    check(&st, &headers)?;
    let all = gather(&st, q.node, "/admin/tracks", "tracks").await?;
    Ok(Json(json!({ "tracks": all })).into_response())
}

/// Where a track lives: its owner, the nodes that pull it from another node (hubs among them
/// serve it on), and the nodes with subscribers of it.
pub async fn locate(
    State(st): State<Arc<ApiState>>,
    Path((session, track)): Path<(String, String)>,
    headers: HeaderMap,
) -> AdminResult {
    check(&st, &headers)?;
    let sid = SessionId::parse(&session)
        .ok_or_else(|| not_found(format!("session {session} not found")))?;
    let view = st.cluster.view.borrow().clone();
    let owner = view.live_by_tag(sid.node_tag()).cloned();
    let mut hubs = Vec::new();
    let mut subscribing = Vec::new();
    for m in view.members.iter().filter(|m| m.live) {
        let (relay, local_subs) = if m.node_id == st.cluster.self_id {
            let t = track.clone();
            let n = st
                .engine
                .call(move |e, _| e.local_subscriber_count(sid, &t))
                .await?;
            (
                serde_json::to_value(st.cluster.relay.view()).unwrap_or(Value::Null),
                n as u64,
            )
        } else {
            let relay = ask(&st, m, Method::GET, "/admin/relay")
                .await
                .unwrap_or(Value::Null);
            let n = ask(
                &st,
                m,
                Method::GET,
                &format!("/admin/tracks?node={}", m.node_id),
            )
            .await
            .ok()
            .and_then(|v| {
                v["tracks"].as_array()?.iter().find(|t| {
                    t["sessionId"] == session.as_str() && t["trackName"] == track.as_str()
                })?["subscribers"]
                    .as_u64()
            })
            .unwrap_or(0);
            (relay, n)
        };
        let matches =
            |e: &&Value| e["sessionId"] == session.as_str() && e["trackName"] == track.as_str();
        let upstream = relay["upstream"]
            .as_array()
            .and_then(|a| a.iter().find(|e| matches(e)).cloned());
        let pulls = upstream.is_some();
        // A hub is where the track enters another region: a node outside the owner's region
        // that pulls it straight from the owner (the others there pull through it).
        let from_owner = owner.as_ref().is_some_and(|o| {
            o.region != m.region
                && upstream
                    .as_ref()
                    .is_some_and(|u| u["via"] == o.node_id.as_str())
        });
        if from_owner {
            hubs.push(json!({ "region": m.region, "node": m.node_id }));
        }
        if pulls || local_subs > 0 {
            subscribing.push(m.node_id.clone());
        }
    }
    Ok(Json(json!({
        "sessionId": session,
        "trackName": track,
        "owner": owner.map(|o| o.node_id),
        "hubs": hubs,
        "subscribingNodes": subscribing,
    }))
    .into_response())
}

async fn set_drain(
    st: Arc<ApiState>,
    node: String,
    headers: HeaderMap,
    drain: bool,
) -> AdminResult {
    check(&st, &headers)?;
    if node != st.cluster.self_id {
        let m = member(&st, &node)?;
        let verb = if drain { "drain" } else { "undrain" };
        return Ok(
            Json(ask(&st, &m, Method::POST, &format!("/admin/{verb}/{node}")).await?)
                .into_response(),
        );
    }
    st.ops.local.draining.store(drain, Ordering::Relaxed);
    tracing::warn!(draining = drain, "drain state changed by the admin API");
    Ok(Json(json!({ "nodeId": node, "draining": drain })).into_response())
}

pub async fn drain(
    State(st): State<Arc<ApiState>>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> AdminResult {
    set_drain(st, node, headers, true).await
}

pub async fn undrain(
    State(st): State<Arc<ApiState>>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> AdminResult {
    set_drain(st, node, headers, false).await
}
