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
use tokio::sync::watch;

use super::ApiState;
use super::error::ApiError;
use super::guard::read_body;
use super::wire::TrackOut;
use crate::cluster::ClusterView;
use crate::cluster::relay::{PullError, Relay};
use crate::ids::{NodeTag, SessionId};

use super::node_auth::{FORWARDED_BY, NODE_AUTH, NodeAuth};

/// What the API needs of the cluster: who this node is, who owns a session, the relay.
pub struct ClusterHandle {
    /// This node's id in the cluster, sent as the forwarding node.
    pub self_id: String,
    /// This node's tag, to tell its own session ids from other nodes'.
    pub tag: NodeTag,
    /// The latest membership view, to find the owner of another node's session.
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// Pulls remote publications here before a local session subscribes to them.
    pub relay: Relay,
    /// Signs the calls this node forwards and checks the ones forwarded to it.
    pub node_auth: NodeAuth,
}

/// Largest answer taken from the owner of a session (answers are JSON with an SDP or two).
const MAX_FORWARDED_ANSWER: usize = 4 << 20;

/// The session id in `/…/apps/{app}/sessions/{id}/…`, when the path has one.
fn session_in_path(path: &str) -> Option<SessionId> {
    let mut parts = path.split('/');
    parts.find(|p| *p == "sessions")?;
    SessionId::parse(parts.next()?)
}

/// The `{app}` in `/v1/apps/{app}/…` or `/apps/{app}/…`.
fn app_in_path(path: &str) -> &str {
    let mut parts = path.split('/');
    parts.find(|p| *p == "apps");
    parts.next().unwrap_or("")
}

/// The path and query the client asked for: inside nested routers the URI has lost its
/// `/v1/apps/{app}` prefix.
fn original_path(req: &axum::http::request::Parts) -> String {
    let uri = req
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map(|o| &o.0)
        .unwrap_or(&req.uri);
    uri.path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string()
}

/// The client's address, when the server recorded it.
pub(super) fn client_ip(ext: &axum::http::Extensions) -> std::net::IpAddr {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))
}

/// Middleware on the session routes. The app and bearer are checked here, before anything else,
/// so nothing is forwarded for a caller that could not make the call itself (and which node tags
/// are live is not told to strangers). Then the call runs here when this node owns the session,
/// or goes to the owner with this node's credential. A call that says it was forwarded runs here
/// only when its node credential checks out.
pub async fn route_to_owner(State(st): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let Some(session) = session_in_path(req.uri().path()) else {
        return next.run(req).await;
    };
    if req.headers().contains_key(FORWARDED_BY) {
        return match check_forwarded(&st, req).await {
            Ok(req) => next.run(req).await,
            Err(e) => e.into_response(),
        };
    }
    let (parts, body) = req.into_parts();
    let path = original_path(&parts);
    if let Err(e) = st.apps.authorize(app_in_path(&path), &parts.headers) {
        return e.into_response();
    }
    let req = Request::from_parts(parts, body);
    if session.node_tag() == st.cluster.tag {
        return next.run(req).await;
    }
    match forward(&st, session, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Checks a call that says it was forwarded: the client's bearer (a forwarded call carries it)
/// and the form and age of the node credential before the body is read, then the credential's
/// MAC over the body.
pub(super) async fn check_forwarded(st: &ApiState, req: Request) -> Result<Request, ApiError> {
    let (parts, body) = req.into_parts();
    let path = original_path(&parts);
    st.apps.authorize(app_in_path(&path), &parts.headers)?;
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let mut verdict = st.cluster.node_auth.precheck(header(NODE_AUTH));
    let mut bytes = axum::body::Bytes::new();
    if verdict.is_ok() {
        bytes = read_body(body, st.max_body).await?;
        verdict = st.cluster.node_auth.verify(
            parts.method.as_str(),
            &path,
            header(FORWARDED_BY).unwrap_or(""),
            &bytes,
            header(NODE_AUTH),
        );
    }
    if let Err(refusal) = verdict {
        let ip = client_ip(&parts.extensions);
        if st
            .ops
            .rejects
            .reject(crate::rejects::Port::Http, refusal.reason(), ip)
        {
            tracing::warn!(%ip, reason = refusal.reason(), "refused a call claiming to be forwarded by a member (further ones from this address are counted, not logged, for a minute)");
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a forwarded call needs a valid node credential",
        ));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
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
    forward_to(st, &owner, req).await
}

/// Forwards a call to `owner` with this node's credential and returns its answer unchanged
/// (status, body up to [`MAX_FORWARDED_ANSWER`], content type, `Retry-After`).
pub(super) async fn forward_to(
    st: &ApiState,
    owner: &crate::cluster::Member,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, st.max_body).await?;
    let url =
        reqwest::Url::parse(&format!("{}{}", owner.api, original_path(&parts))).map_err(|e| {
            ApiError::invalid_params(format!("the call's path cannot be forwarded: {e}"))
        })?;
    // Sign the path and query exactly as they go on the wire (the URL parser may re-encode).
    let signed = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let credential =
        st.cluster
            .node_auth
            .sign(parts.method.as_str(), &signed, &st.cluster.self_id, &bytes);
    let mut out = st
        .http
        .request(parts.method.clone(), url)
        .header(FORWARDED_BY, st.cluster.self_id.as_str())
        .header(NODE_AUTH, credential)
        .body(bytes);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v);
        }
    }
    let res = out.send().await.map_err(|e| {
        // The owner's internal API address stays in the log, not in the client's answer.
        tracing::info!(error = %e, "forwarding a call to the session's owner failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable_error",
            format!(
                "the node owning this session did not answer: {}",
                e.without_url()
            ),
        )
    })?;
    let status = res.status();
    // The client's bearer checked out here before the call was forwarded: the owner refusing
    // it is a cluster fault (a clock over 30 s apart, another cluster or app secret), not the
    // client's, and a 401 would send the client to look at its credentials.
    if status == StatusCode::UNAUTHORIZED {
        tracing::warn!(owner = %owner.node_id, "the owning node refused a forwarded call (clocks more than 30 s apart, or different cluster or app secrets?)");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable_error",
            "the node owning this session refused this node's forwarded call: the nodes' \
             clocks, cluster secret or app secrets disagree",
        ));
    }
    let content_type = res.headers().get(header::CONTENT_TYPE).cloned();
    let retry_after = res.headers().get(header::RETRY_AFTER).cloned();
    let unavailable = |what: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable_error",
            what,
        )
    };
    let body = read_capped(res, MAX_FORWARDED_ANSWER)
        .await
        .map_err(|e| unavailable(format!("the owner's answer: {e}")))?;
    let mut response = (status, Body::from(body)).into_response();
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    if let Some(ra) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, ra);
    }
    Ok(response)
}

/// Reads another node's answer, refusing one over `cap` bytes: a broken or
/// hostile peer costs the call, never this node's memory.
pub(super) async fn read_capped(mut res: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    // Without the URL: the answer goes to the client, and the URL is another node's address.
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| format!("reading it: {}", e.without_url()))?
    {
        if body.len() + chunk.len() > cap {
            return Err(format!("over {cap} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Makes every listed track available on engine worker `worker` (the subscriber's),
/// concurrently: a track of another node is pulled over the relay (onto the primary worker),
/// then, like a track of another worker of this node, linked in-process to `worker`.
/// Tracks no node has are left alone: the engine then answers `not_found_track_error`. Returns
/// the tracks whose node is live but could not be reached (see [`mark_unreachable`]).
pub async fn resolve_remote(
    st: &ApiState,
    app: &str,
    worker: usize,
    tracks: impl Iterator<Item = (SessionId, String)>,
) -> Vec<(String, String)> {
    let mut set = tokio::task::JoinSet::new();
    for (session, track) in tracks {
        if session.node_tag() == st.cluster.tag {
            let (engine, app) = (st.engine.clone(), app.to_string());
            set.spawn(async move {
                let _ = engine.link_track(&app, session, &track, worker).await;
                (session, track, Ok(()))
            });
            continue;
        }
        let engine = st.engine.clone();
        let relay = st.cluster.relay.clone();
        let app = app.to_string();
        set.spawn(async move {
            let r = relay.ensure_upstream(&app, session, &track).await;
            // Relayed tracks of other nodes live on the primary worker.
            if r.is_ok() {
                let _ = engine.link_track(&app, session, &track, worker).await;
            }
            (session, track, r)
        });
    }
    let mut unreachable = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok((session, track, Err(PullError::Link | PullError::NoAnswer))) = done {
            unreachable.push((session.to_string(), track));
        }
    }
    unreachable
}

/// A pull of a track whose node gossip calls live but that did not answer is not "not found":
/// it is worth retrying (the node may be cut off for a moment), so say so.
pub fn mark_unreachable(tracks: &mut [TrackOut], unreachable: &[(String, String)]) {
    for t in tracks {
        if t.error_code != Some("not_found_track_error") {
            continue;
        }
        let (Some(sid), Some(name)) = (&t.session_id, &t.track_name) else {
            continue;
        };
        if unreachable.iter().any(|(s, n)| s == sid && n == name) {
            t.error_code = Some("retryable_transient_error");
            t.error_description = Some(
                "the node that holds this track is not reachable right now; retry".to_string(),
            );
        }
    }
}

pub(super) fn check_admin(st: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &st.admin_token else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the admin API is off: start the node with --admin-token",
        ));
    };
    if super::guard::bearer(headers)
        .is_some_and(|p| super::guard::constant_time_eq(p.as_bytes(), token.as_bytes()))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin token",
        ))
    }
}

pub async fn admin_cluster(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&st, &headers)?;
    let view = st.cluster.view.borrow().clone();
    Ok(Json(cluster_view(&st.cluster.self_id, &view)).into_response())
}

/// The admin view of the cluster as this node sees it.
pub(super) fn cluster_view(self_id: &str, view: &ClusterView) -> trackmesh_admin_api::ClusterView {
    let members = view
        .members
        .iter()
        .map(|m| trackmesh_admin_api::Member {
            api: m.api.clone(),
            draining: m.draining,
            live: m.live,
            node_id: m.node_id.clone(),
            region: m.region.clone(),
            relay: m.relay.to_string(),
            relays: m.load.map(|l| l.relays),
            sessions: m.load.map(|l| l.sessions),
            tag: m.tag.to_string(),
            tracks: m.load.map(|l| l.tracks),
            version: m.version.clone(),
        })
        .collect();
    trackmesh_admin_api::ClusterView {
        members,
        self_id: self_id.to_string(),
        duplicate_node_ids: view.duplicate_ids.clone(),
    }
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

    /// A peer answering `len` bytes on 127.0.0.1; its URL.
    async fn peer_answering(len: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move { vec![b'x'; len] }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn another_nodes_answer_is_read_up_to_the_cap_and_no_further() {
        let client = reqwest::Client::new();
        let small = client
            .get(peer_answering(1000).await)
            .send()
            .await
            .expect("answer");
        assert_eq!(
            read_capped(small, MAX_FORWARDED_ANSWER)
                .await
                .expect("small answer")
                .len(),
            1000
        );
        let huge = client
            .get(peer_answering(MAX_FORWARDED_ANSWER + 1).await)
            .send()
            .await
            .expect("answer");
        let err = read_capped(huge, MAX_FORWARDED_ANSWER)
            .await
            .expect_err("a huge answer is refused");
        assert!(err.contains("over"), "{err}");
    }

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

#[cfg(test)]
mod unreachable_tests {
    use super::mark_unreachable;
    use crate::api::wire::TrackOut;

    fn failed(sid: &str, name: &str, code: &'static str) -> TrackOut {
        TrackOut {
            location: None,
            session_id: Some(sid.into()),
            track_name: Some(name.into()),
            mid: String::new(),
            status: None,
            error_code: Some(code),
            error_description: Some("no such track".into()),
            simulcast: None,
        }
    }

    #[test]
    fn a_track_on_an_unreachable_live_node_is_worth_a_retry() {
        let mut tracks = vec![
            failed("s1", "cam", "not_found_track_error"),
            failed("s1", "mic", "not_found_track_error"),
            failed("s2", "cam", "invalid_params"),
        ];
        let unreachable = vec![
            ("s1".to_string(), "cam".to_string()),
            ("s2".to_string(), "cam".to_string()),
        ];
        mark_unreachable(&mut tracks, &unreachable);
        assert_eq!(tracks[0].error_code, Some("retryable_transient_error"));
        assert_eq!(
            tracks[1].error_code,
            Some("not_found_track_error"),
            "a track no node has stays not found"
        );
        assert_eq!(
            tracks[2].error_code,
            Some("invalid_params"),
            "other errors are left alone"
        );
    }
}
