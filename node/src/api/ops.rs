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
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use trackmesh_admin_api as admin;

use super::ApiState;
use super::error::ApiError;
use crate::cluster::Member;
use crate::engine::{Location, SessionSummary, TrackStatus};
use crate::ids::SessionId;
use crate::metrics::{EgressSnapshot, Snapshot};

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
    let per_worker = st
        .engine
        .call_all(|e, _| (e.stats().clone(), e.gauges(), e.take_setup_times()))
        .await?;
    // The node's figures are its workers' sums; a few are also shown by worker.
    let mut stats = crate::engine::Stats::default();
    let mut gauges = crate::engine::Gauges::default();
    let mut setup_times = Vec::new();
    let mut workers = Vec::with_capacity(per_worker.len());
    let loads = st.engine.loads();
    for (i, (s, g, t)) in per_worker.into_iter().enumerate() {
        workers.push(crate::metrics::WorkerSnapshot {
            sessions: loads.get(i).copied().unwrap_or_default() as u64,
            frames_forwarded: s.frames_forwarded,
            rtp_out: s.rtp_out,
            hop_frames: st
                .engine
                .links()
                .figures
                .frames
                .get(i)
                .map_or(0, |c| c.load(Ordering::Relaxed)),
            hop_drops: st
                .engine
                .links()
                .figures
                .drops
                .get(i)
                .map_or(0, |c| c.load(Ordering::Relaxed)),
        });
        stats.add(&s);
        gauges.add(&g);
        setup_times.extend(t);
    }
    let snap = Snapshot {
        workers,
        stats,
        gauges,
        setup_times,
        relay: st.cluster.relay.figures(),
        view: st.cluster.view.borrow().clone(),
        draining: st.ops.local.draining.load(Ordering::Relaxed),
        cascades: st.cascades.counts(),
        egress: st.ops.egress.as_deref().map(EgressSnapshot::of),
    };
    let body = st.ops.metrics.render(snap);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

/// Alive while the engine task, the relay and gossip all run; else 503 naming what stopped (each
/// part only for its own failure, see [`crate::liveness::Liveness::stopped`]), so an orchestrator
/// restarts the node instead of routing to an HTTP front with nothing behind it.
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

/// Largest admin answer read from another node. Larger than a forwarded call's cap: a node's
/// `/admin/sessions` at 10,000 sessions with a few pulled tracks each is about 5 MB, and the
/// answer comes from an authenticated cluster member.
const MAX_ADMIN_ANSWER: usize = 64 << 20;

/// Largest answer read from another node for an app's listing, which that node bounds itself
/// (`api/listing.rs`) well below this.
const MAX_APP_ANSWER: usize = 4 << 20;

/// Whom a node asks another node's API as, for its part of a cluster-wide view.
pub(super) enum AskAs<'a> {
    /// The operator, with the admin token (`/admin/*`).
    Admin,
    /// A member on an app client's behalf: the client's own `Authorization` header, which the
    /// other node checks again, and this node's credential, so the other node answers for
    /// itself only and never gathers again.
    Member {
        authorization: Option<&'a axum::http::HeaderValue>,
    },
}

/// Asks another node's API for its JSON answer.
async fn ask_json_as(
    st: &ApiState,
    node: &Member,
    method: Method,
    path: &str,
    who: &AskAs<'_>,
) -> Result<Value, ApiError> {
    let unreachable = |e: String| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "temporarily_unavailable_error",
            format!("node {} did not answer: {e}", node.node_id),
        )
    };
    let url = reqwest::Url::parse(&format!("{}{path}", node.api))
        .map_err(|e| unreachable(format!("bad address: {e}")))?;
    let (req, cap) = match who {
        AskAs::Admin => (
            st.http
                .request(method, url)
                .bearer_auth(st.admin_token.clone().unwrap_or_default()),
            MAX_ADMIN_ANSWER,
        ),
        AskAs::Member { authorization } => {
            // Sign the path and query exactly as they go on the wire, as a forwarded call does.
            let signed = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            let credential =
                st.cluster
                    .node_auth
                    .sign(method.as_str(), &signed, &st.cluster.self_id, b"");
            let mut req = st
                .http
                .request(method, url)
                .header(super::node_auth::FORWARDED_BY, st.cluster.self_id.as_str())
                .header(super::node_auth::NODE_AUTH, credential);
            if let Some(a) = authorization {
                req = req.header(header::AUTHORIZATION, (*a).clone());
            }
            (req, MAX_APP_ANSWER)
        }
    };
    let res = req.send().await.map_err(|e| unreachable(e.to_string()))?;
    let status = res.status();
    let body = super::cluster::read_capped(res, cap).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "temporarily_unavailable_error",
            format!("node {}'s answer: {e}", node.node_id),
        )
    })?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
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

/// Asks another node's admin API and reads its answer as the view `T`; an answer of another
/// shape is that node's failure (a gateway error), not this node's.
async fn ask<T: DeserializeOwned>(
    st: &ApiState,
    node: &Member,
    method: Method,
    path: &str,
) -> Result<T, ApiError> {
    ask_as(st, node, method, path, &AskAs::Admin).await
}

/// [`ask`] as `who`.
async fn ask_as<T: DeserializeOwned>(
    st: &ApiState,
    node: &Member,
    method: Method,
    path: &str,
    who: &AskAs<'_>,
) -> Result<T, ApiError> {
    let body = ask_json_as(st, node, method, path, who).await?;
    T::deserialize(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "temporarily_unavailable_error",
            format!(
                "node {} answered {path} in an unknown shape: {e}",
                node.node_id
            ),
        )
    })
}

fn member(st: &ApiState, id: &str) -> Result<Member, ApiError> {
    st.cluster
        .view
        .borrow()
        .live_by_id(id)
        .cloned()
        .ok_or_else(|| not_found(format!("no live node {id} in the cluster")))
}

/// How long a cluster-wide admin view waits for each other node.
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// `ask` within [`GATHER_WAIT`].
async fn bounded<T>(
    ask: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(GATHER_WAIT, ask)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "temporarily_unavailable_error",
                format!("no answer within {} s", GATHER_WAIT.as_secs()),
            ))
        })
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

async fn local_status(st: &ApiState) -> Result<admin::Status, ApiError> {
    let mut gauges = crate::engine::Gauges::default();
    let mut sessions = 0;
    for (g, n) in st
        .engine
        .call_all(|e, _| (e.gauges(), e.session_count()))
        .await?
    {
        gauges.add(&g);
        sessions += n;
    }
    let me = st.cluster.view.borrow().me().cloned();
    Ok(admin::Status {
        api: me.as_ref().map(|m| m.api.clone()).unwrap_or_default(),
        draining: st.ops.local.draining.load(Ordering::Relaxed),
        gossip: st.ops.gossip.to_string(),
        media: me.as_ref().map(|m| m.media.clone()).unwrap_or_default(),
        node_id: st.cluster.self_id.clone(),
        published_tracks: Some(gauges.published_audio + gauges.published_video),
        region: me.as_ref().map(|m| m.region.clone()).unwrap_or_default(),
        relay: me.as_ref().map(|m| m.relay.to_string()).unwrap_or_default(),
        relay_links: Some(st.cluster.relay.figures().links),
        sessions: Some(sessions as u64),
        subscribed_tracks: Some(gauges.subscribed_audio + gauges.subscribed_video),
        tag: st.cluster.tag.to_string(),
        uptime_secs: Some(st.ops.started.elapsed().as_secs()),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
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
    let status: admin::Status = ask(&st, &m, Method::GET, "/admin/status").await?;
    Ok(Json(status).into_response())
}

#[derive(Deserialize)]
pub struct NodeQuery {
    node: Option<String>,
}

async fn local_sessions(st: &ApiState) -> Result<Vec<admin::SessionInfo>, ApiError> {
    let mut sessions: Vec<_> = st
        .engine
        .call_all(|e, _| e.admin_sessions())
        .await?
        .into_iter()
        .flatten()
        .collect();
    sessions.sort_by_key(|s| s.session_id);
    Ok(sessions
        .into_iter()
        .map(|s| session_info(&st.cluster.self_id, s))
        .collect())
}

fn session_info(node: &str, s: SessionSummary) -> admin::SessionInfo {
    admin::SessionInfo {
        app: s.app,
        connected: s.connected,
        node: node.to_string(),
        session_id: s.session_id.to_string(),
        tracks: s.tracks.into_iter().map(session_track).collect(),
    }
}

fn session_track(t: TrackStatus) -> admin::SessionTrack {
    admin::SessionTrack {
        location: match t.location {
            Location::Local => "local",
            Location::Remote => "remote",
        }
        .to_string(),
        mid: t.mid,
        session_id: t.session_id,
        status: if t.active { "active" } else { "inactive" }.to_string(),
        track_name: t.track_name,
    }
}

/// A view that lists items, gathered from several nodes.
pub(super) trait Listing: DeserializeOwned {
    type Item;
    /// The items, and whether the node that answered left some out.
    fn items(self) -> (Vec<Self::Item>, bool);
}

impl Listing for admin::Sessions {
    type Item = admin::SessionInfo;
    fn items(self) -> (Vec<admin::SessionInfo>, bool) {
        (self.sessions, false)
    }
}

impl Listing for admin::Tracks {
    type Item = admin::Publication;
    fn items(self) -> (Vec<admin::Publication>, bool) {
        (self.tracks, false)
    }
}

/// Items gathered from the nodes that answered.
pub(super) struct Gathered<T> {
    pub items: Vec<T>,
    /// A node that answered left some of its items out.
    pub truncated: bool,
    /// The live nodes asked that did not answer, in id order: their items are missing.
    pub unanswered: Vec<String>,
}

/// Answers with this node's items (`local`), or asks the named node, or gathers from every
/// live node (a node that fails to answer is logged, left out and named in `unanswered`), asking
/// as `who`.
pub(super) async fn gather<L: Listing>(
    st: &ApiState,
    node: Option<String>,
    path: &str,
    local: Vec<L::Item>,
    who: &AskAs<'_>,
) -> Result<Gathered<L::Item>, ApiError> {
    let done = |items| Gathered {
        items,
        truncated: false,
        unanswered: Vec::new(),
    };
    match node {
        Some(n) if n == st.cluster.self_id => Ok(done(local)),
        Some(n) => {
            let m = member(st, &n)?;
            let v: L = ask_as(st, &m, Method::GET, &format!("{path}?node={n}"), who).await?;
            let (items, truncated) = v.items();
            Ok(Gathered {
                items,
                truncated,
                unanswered: Vec::new(),
            })
        }
        None => {
            let mut all = done(local);
            // All at once, each within its own deadline: one node that takes connections and
            // never answers costs the call GATHER_WAIT, not the client's whole timeout.
            let asks = others(st).into_iter().map(|m| async move {
                let q = format!("{path}?node={}", m.node_id);
                let answer = bounded(ask_as::<L>(st, &m, Method::GET, &q, who)).await;
                (m, answer)
            });
            for (m, answer) in futures_util::future::join_all(asks).await {
                match answer {
                    Ok(v) => {
                        let (items, truncated) = v.items();
                        all.items.extend(items);
                        all.truncated |= truncated;
                    }
                    Err(e) => {
                        tracing::warn!(node = %m.node_id, error = %e.description, "gathering {path}");
                        all.unanswered.push(m.node_id);
                    }
                }
            }
            all.unanswered.sort();
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
    let local = local_sessions(&st).await?;
    let g = gather::<admin::Sessions>(&st, q.node, "/admin/sessions", local, &AskAs::Admin).await?;
    Ok(Json(admin::Sessions {
        sessions: g.items,
        unanswered: g.unanswered,
    })
    .into_response())
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
        let info: admin::SessionInfo =
            ask(&st, &owner, Method::GET, &format!("/admin/sessions/{id}")).await?;
        return Ok(Json(info).into_response());
    }
    let s = st
        .engine
        .call_session(sid, move |e, _| e.admin_session(sid))
        .await?;
    let s = s.ok_or_else(|| not_found(format!("session {id} not found")))?;
    Ok(Json(session_info(&st.cluster.self_id, s)).into_response())
}

/// One entry per track over all workers: a track linked from its worker to others shows up on
/// each of them (as a relayed publication there); the node shows it once, with every worker's
/// subscribers, and only the downstreams that go to other nodes.
fn merge_publications(
    per_worker: Vec<Vec<crate::engine::PublicationSummary>>,
) -> Vec<crate::engine::PublicationSummary> {
    let mut out: Vec<crate::engine::PublicationSummary> = Vec::new();
    for mut p in per_worker.into_iter().flatten() {
        p.downstreams.retain(|d| !crate::workers::is_local(d.0));
        match out
            .iter_mut()
            .find(|q| q.session_id == p.session_id && q.track_name == p.track_name)
        {
            Some(q) => {
                q.local_subscribers += p.local_subscribers;
                q.downstreams.extend(p.downstreams);
            }
            None => out.push(p),
        }
    }
    out.sort_by(|a, b| (a.session_id, &a.track_name).cmp(&(b.session_id, &b.track_name)));
    out
}

async fn local_tracks(st: &ApiState) -> Result<Vec<admin::Publication>, ApiError> {
    let pubs = merge_publications(st.engine.call_all(|e, _| e.admin_publications()).await?);
    Ok(pubs
        .into_iter()
        .map(|p| admin::Publication {
            kind: if p.kind == str0m::media::MediaKind::Audio {
                "audio"
            } else {
                "video"
            }
            .to_string(),
            node: st.cluster.self_id.clone(),
            relayed_to: st.cluster.relay.downstream_peers(&p.downstreams),
            session_id: p.session_id.to_string(),
            subscribers: Some(p.local_subscribers as u64),
            track_name: p.track_name,
        })
        .collect())
}

pub async fn tracks(
    State(st): State<Arc<ApiState>>,
    Query(q): Query<NodeQuery>,
    headers: HeaderMap,
) -> AdminResult {
    check(&st, &headers)?;
    let local = local_tracks(&st).await?;
    let g = gather::<admin::Tracks>(&st, q.node, "/admin/tracks", local, &AskAs::Admin).await?;
    Ok(Json(admin::Tracks {
        tracks: g.items,
        unanswered: g.unanswered,
    })
    .into_response())
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
    // Every other node's relay and tracks, asked all at once, each within its deadline.
    let asks = view
        .members
        .iter()
        .filter(|m| m.live && m.node_id != st.cluster.self_id)
        .map(|m| {
            let st = &st;
            async move {
                let tracks_path = format!("/admin/tracks?node={}", m.node_id);
                let (relay, tracks) = tokio::join!(
                    bounded(ask::<admin::RelayView>(st, m, Method::GET, "/admin/relay")),
                    bounded(ask::<admin::Tracks>(st, m, Method::GET, &tracks_path)),
                );
                (m.node_id.clone(), (relay.ok(), tracks.ok()))
            }
        });
    let mut answers: std::collections::HashMap<String, _> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .collect();
    for m in view.members.iter().filter(|m| m.live) {
        // A node that does not answer counts as pulling nothing and having no subscribers.
        let (relay, local_subs) = if m.node_id == st.cluster.self_id {
            let t = track.clone();
            let n: usize = st
                .engine
                .call_all(move |e, _| e.local_subscriber_count(sid, &t))
                .await?
                .into_iter()
                .sum();
            (Some(st.cluster.relay.view()), n as u64)
        } else {
            let (relay, tracks) = answers.remove(&m.node_id).unwrap_or((None, None));
            let n = tracks
                .and_then(|v| {
                    v.tracks
                        .into_iter()
                        .find(|t| t.session_id == session && t.track_name == track)?
                        .subscribers
                })
                .unwrap_or(0);
            (relay, n)
        };
        let upstream = relay.and_then(|r| {
            r.upstream
                .into_iter()
                .find(|u| u.session_id == session && u.track_name == track)
        });
        let pulls = upstream.is_some();
        // A hub is where the track enters another region: a node outside the owner's region
        // that pulls it straight from the owner (the others there pull through it).
        let from_owner = owner.as_ref().is_some_and(|o| {
            o.region != m.region && upstream.as_ref().is_some_and(|u| u.via == o.node_id)
        });
        if from_owner {
            hubs.push(admin::Hub {
                node: m.node_id.clone(),
                region: m.region.clone(),
            });
        }
        if pulls || local_subs > 0 {
            subscribing.push(m.node_id.clone());
        }
    }
    Ok(Json(admin::Located {
        hubs,
        owner: owner.map(|o| o.node_id),
        session_id: session,
        subscribing_nodes: subscribing,
        track_name: track,
    })
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
        let answer: admin::Drained =
            ask(&st, &m, Method::POST, &format!("/admin/{verb}/{node}")).await?;
        return Ok(Json(answer).into_response());
    }
    // Undrained, it would take new sessions and hubs back, then exit under them.
    if !drain && st.ops.local.stopping.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the node is draining to exit (SIGTERM): it cannot be undrained",
        ));
    }
    st.ops.local.draining.store(drain, Ordering::Relaxed);
    tracing::warn!(draining = drain, "drain state changed by the admin API");
    Ok(Json(admin::Drained {
        draining: Some(drain),
        node_id: node,
    })
    .into_response())
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

/// The admin views are typed now; before, they were `json!` maps. These pin that the bytes on
/// the wire are the ones the maps wrote (keys sorted, `null` where a value was `None`), and that
/// each view reads back as itself.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wire::TrackOut;
    use crate::ids::NodeTag;
    use serde::Serialize;

    /// Same bytes as the old map, and reads back unchanged.
    fn same_wire<T>(typed: &T, old: Value)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let text = serde_json::to_string(typed).expect("serialize");
        assert_eq!(text, old.to_string());
        let back: T = serde_json::from_str(&text).expect("read back");
        assert_eq!(&back, typed);
    }

    #[test]
    fn status_writes_what_the_map_wrote() {
        let s = admin::Status {
            api: "http://127.0.0.1:7700".into(),
            draining: false,
            gossip: "127.0.0.1:7701".into(),
            media: "127.0.0.1:7702".into(),
            node_id: "a".into(),
            published_tracks: Some(2),
            region: "eu".into(),
            relay: "127.0.0.1:7703".into(),
            relay_links: Some(1),
            sessions: Some(3),
            subscribed_tracks: Some(4),
            tag: "0badcafe".into(),
            uptime_secs: Some(9),
            version: "0.1.0".into(),
        };
        same_wire(
            &s,
            json!({
                "nodeId": "a", "tag": "0badcafe", "region": "eu", "version": "0.1.0",
                "uptimeSecs": 9u64, "draining": false, "sessions": 3usize,
                "publishedTracks": 2u64, "subscribedTracks": 4u64, "relayLinks": 1u64,
                "api": "http://127.0.0.1:7700", "media": "127.0.0.1:7702",
                "relay": "127.0.0.1:7703", "gossip": "127.0.0.1:7701",
            }),
        );
    }

    #[test]
    fn sessions_write_what_the_map_wrote() {
        let tracks = vec![
            TrackStatus {
                location: Location::Local,
                mid: "0".into(),
                track_name: "cam".into(),
                session_id: None,
                active: true,
                simulcast: None,
            },
            TrackStatus {
                location: Location::Remote,
                mid: "1".into(),
                track_name: "mic".into(),
                session_id: Some("other".into()),
                active: false,
                simulcast: None,
            },
        ];
        let summary = SessionSummary {
            session_id: SessionId::new(NodeTag(7)),
            app: "app".into(),
            connected: true,
            tracks: tracks.clone(),
        };
        let old_tracks: Vec<TrackOut> = tracks.into_iter().map(Into::into).collect();
        let old = json!({
            "node": "a",
            "sessionId": summary.session_id.to_string(),
            "app": "app",
            "connected": true,
            "tracks": old_tracks,
        });
        let info = session_info("a", summary);
        same_wire(&info, old.clone());
        same_wire(
            &admin::Sessions {
                sessions: vec![info],
                unanswered: Vec::new(),
            },
            json!({ "sessions": [old] }),
        );
    }

    #[test]
    fn tracks_write_what_the_map_wrote() {
        let p = admin::Publication {
            kind: "video".into(),
            node: "a".into(),
            relayed_to: vec!["b".into()],
            session_id: "s".into(),
            subscribers: Some(2),
            track_name: "cam".into(),
        };
        let old = json!({
            "node": "a", "sessionId": "s", "trackName": "cam", "kind": "video",
            "subscribers": 2usize, "relayedTo": vec!["b".to_string()],
        });
        same_wire(&p, old.clone());
        same_wire(
            &admin::Tracks {
                tracks: vec![p],
                unanswered: Vec::new(),
            },
            json!({ "tracks": [old] }),
        );
    }

    #[test]
    fn locate_and_drain_write_what_the_maps_wrote() {
        let l = admin::Located {
            hubs: vec![admin::Hub {
                node: "c".into(),
                region: "us".into(),
            }],
            owner: Some("a".into()),
            session_id: "s".into(),
            subscribing_nodes: vec!["b".into(), "c".into()],
            track_name: "cam".into(),
        };
        same_wire(
            &l,
            json!({
                "sessionId": "s", "trackName": "cam", "owner": Some("a".to_string()),
                "hubs": [json!({ "region": "us", "node": "c" })],
                "subscribingNodes": vec!["b".to_string(), "c".to_string()],
            }),
        );
        let nobody = admin::Located {
            owner: None,
            hubs: Vec::new(),
            subscribing_nodes: Vec::new(),
            ..l
        };
        let none: Option<String> = None;
        same_wire(
            &nobody,
            json!({
                "sessionId": "s", "trackName": "cam", "owner": none,
                "hubs": Vec::<Value>::new(), "subscribingNodes": Vec::<String>::new(),
            }),
        );
        same_wire(
            &admin::Drained {
                draining: Some(true),
                node_id: "a".into(),
            },
            json!({ "nodeId": "a", "draining": true }),
        );
    }

    #[test]
    fn cluster_writes_what_the_map_wrote() {
        let view = crate::cluster::ClusterView {
            self_id: "a".into(),
            members: vec![Member {
                node_id: "a".into(),
                tag: NodeTag(0x0bad_cafe),
                region: "eu".into(),
                api: "http://127.0.0.1:7700".into(),
                relay: "127.0.0.1:7703".parse().expect("addr"),
                media: "127.0.0.1:7702".into(),
                live: true,
                draining: false,
                load: Some(crate::cluster::Load {
                    sessions: 2,
                    tracks: 3,
                    relays: 1,
                }),
                version: "0.1.0".into(),
            }],
            streams: Vec::new(),
            rooms: Vec::new(),
            duplicate_ids: Vec::new(),
        };
        let typed = super::super::cluster::cluster_view("a", &view);
        same_wire(
            &typed,
            json!({ "self": "a", "members": [json!({
                "nodeId": "a", "tag": "0badcafe", "region": "eu",
                "api": "http://127.0.0.1:7700", "relay": "127.0.0.1:7703", "live": true,
                "draining": false, "sessions": 2u64, "tracks": 3u64, "relays": 1u64,
                "version": "0.1.0",
            })]}),
        );
    }

    #[test]
    fn an_unknown_load_is_null_not_zero() {
        let mut view = crate::cluster::ClusterView {
            self_id: "a".into(),
            members: Vec::new(),
            streams: Vec::new(),
            rooms: Vec::new(),
            duplicate_ids: Vec::new(),
        };
        view.members.push(Member {
            node_id: "b".into(),
            tag: NodeTag(1),
            region: "eu".into(),
            api: "http://127.0.0.1:7700".into(),
            relay: "127.0.0.1:7703".parse().expect("addr"),
            media: String::new(),
            live: true,
            draining: false,
            load: None,
            version: String::new(),
        });
        let v = serde_json::to_value(super::super::cluster::cluster_view("a", &view))
            .expect("serialize");
        for count in ["sessions", "tracks", "relays"] {
            assert_eq!(v["members"][0][count], Value::Null, "{count}");
        }
    }

    #[test]
    fn relay_writes_its_struct_order() {
        let r = admin::RelayView {
            links: vec![admin::RelayLink {
                peer: "b".into(),
                direction: "out".into(),
            }],
            upstream: vec![admin::Upstream {
                session_id: "s".into(),
                track_name: "cam".into(),
                via: "b".into(),
                frames: 5,
            }],
            downstream: vec![admin::Downstream {
                session_id: "t".into(),
                track_name: "mic".into(),
                peer: "c".into(),
                frames: 6,
            }],
        };
        let text = serde_json::to_string(&r).expect("serialize");
        assert_eq!(
            text,
            r#"{"links":[{"peer":"b","direction":"out"}],"upstream":[{"sessionId":"s","trackName":"cam","via":"b","frames":5}],"downstream":[{"sessionId":"t","trackName":"mic","peer":"c","frames":6}]}"#
        );
        let back: admin::RelayView = serde_json::from_str(&text).expect("read back");
        assert_eq!(back, r);
    }
}
