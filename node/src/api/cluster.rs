//! The API in a cluster: calls for a session owned by another node are forwarded to it and its
//! answer returned unchanged; remote tracks are made local (relayed) before a pull; and the
//! admin views of the cluster and the relay.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::watch;

use super::ApiState;
use super::error::ApiError;
use super::guard::read_body;
use crate::cluster::ClusterView;
use crate::cluster::relay::Relay;
use crate::ids::{NodeTag, SessionId};

/// Marks a forwarded call, so it is never forwarded again (no loops while views disagree).
const FORWARDED: &str = "x-trackmesh-forwarded-by";

pub struct ClusterHandle {
    pub self_id: String,
    pub tag: NodeTag,
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub relay: Relay,
}

/// The session id in `/…/apps/{app}/sessions/{id}/…`, when the path has one.
fn session_in_path(path: &str) -> Option<SessionId> {
    let mut parts = path.split('/');
    parts.find(|p| *p == "sessions")?;
    SessionId::parse(parts.next()?)
}

/// Middleware on the session routes: run the call here when this node owns the session,
/// otherwise forward it to the owner.
pub async fn route_to_owner(State(st): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let Some(session) = session_in_path(req.uri().path()) else {
        return next.run(req).await;
    };
    if session.node_tag() == st.cluster.tag || req.headers().contains_key(FORWARDED) {
        return next.run(req).await;
    }
    match forward(&st, session, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn forward(st: &ApiState, session: SessionId, req: Request) -> Result<Response, ApiError> {
    let owner = st
        .cluster
        .view
        .borrow()
        .live_by_tag(session.node_tag())
        .cloned();
    let Some(owner) = owner else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("session {session} not found (its node is not in the cluster)"),
        ));
    };
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, st.max_body).await?;
    // Inside nested routers the URI has lost its `/v1/apps/{app}` prefix; forward the original.
    let uri = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| parts.uri.clone());
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = st
        .http
        .request(parts.method.clone(), format!("{}{path}", owner.api))
        .header(FORWARDED, st.cluster.self_id.as_str())
        .body(bytes);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v);
        }
    }
    let res = out.send().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable_error",
            format!("the node owning this session did not answer: {e}"),
        )
    })?;
    let status = res.status();
    let content_type = res.headers().get(header::CONTENT_TYPE).cloned();
    let body = res.bytes().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable_error",
            e.to_string(),
        )
    })?;
    let mut response = (status, Body::from(body)).into_response();
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(response)
}

/// Pulls every listed track that lives on another node into this node's engine, concurrently.
/// Tracks no node has are left alone: the engine then answers `not_found_track_error`.
pub async fn resolve_remote(
    st: &ApiState,
    app: &str,
    tracks: impl Iterator<Item = (SessionId, String)>,
) {
    let mut set = tokio::task::JoinSet::new();
    for (session, track) in tracks {
        if session.node_tag() == st.cluster.tag {
            continue;
        }
        let relay = st.cluster.relay.clone();
        let app = app.to_string();
        set.spawn(async move { relay.ensure_upstream(&app, session, &track).await });
    }
    while set.join_next().await.is_some() {}
}

pub(super) fn check_admin(st: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &st.admin_token else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the admin API is off: start the node with --admin-token",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|p| super::guard::constant_time_eq(p.as_bytes(), token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin token",
        ))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberOut {
    node_id: String,
    tag: String,
    region: String,
    api: String,
    relay: String,
    live: bool,
    draining: bool,
    sessions: u64,
    tracks: u64,
    relays: u64,
    version: String,
}

pub async fn admin_cluster(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&st, &headers)?;
    let view = st.cluster.view.borrow().clone();
    let members: Vec<MemberOut> = view
        .members
        .iter()
        .map(|m| MemberOut {
            node_id: m.node_id.clone(),
            tag: m.tag.to_string(),
            region: m.region.clone(),
            api: m.api.clone(),
            relay: m.relay.to_string(),
            live: m.live,
            draining: m.draining,
            sessions: m.load.sessions,
            tracks: m.load.tracks,
            relays: m.load.relays,
            version: m.version.clone(),
        })
        .collect();
    Ok(Json(serde_json::json!({ "self": st.cluster.self_id, "members": members })).into_response())
}

pub async fn admin_relay(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&st, &headers)?;
    let mut res = Json(st.cluster.relay.view()).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_session_in_api_paths() {
        let id = SessionId::new(NodeTag(7));
        let p = format!("/v1/apps/app/sessions/{id}/tracks/new");
        assert_eq!(session_in_path(&p), Some(id));
        assert_eq!(session_in_path(&format!("/apps/a/sessions/{id}")), Some(id));
        assert_eq!(session_in_path("/v1/apps/a/sessions/new"), None);
        assert_eq!(session_in_path("/v1/apps/a/sessions"), None);
        assert_eq!(session_in_path("/healthz"), None);
    }
}
