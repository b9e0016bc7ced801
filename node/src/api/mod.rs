//! The HTTP surface: the Calls-compatible API under `/v1/apps/{appId}` and `/apps/{appId}` (with
//! the app's session listing, an extension), stream tokens (`…/{appId}/tokens`), WHIP/WHEP and
//! the streams API under `/v1/apps/{appId}` (`whip.rs`, `streams.rs`, RFC 9457 errors from
//! `problem.rs`), TURN credentials under `/v1/turn/keys/…`, the demo page at `/` and the meeting
//! view at `/meet`, health, metrics and `/admin/*`. Errors are JSON in the Calls error model: an
//! unknown path under the API's prefix gets 405, as Calls answers ("reserved for future
//! WHIP/WHEP"), an unknown path anywhere else 404, and a known path with the wrong method 405.

pub mod auth_hook;
mod calls;
mod cascade;
mod cluster;
mod error;
mod guard;
mod listing;
pub mod node_auth;
mod ops;
pub(crate) mod problem;
mod quota;
pub mod rooms;
mod stream_follow;
mod streams;
pub mod tokens;
pub mod turn;
pub mod whip;
pub mod wire;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

pub use cluster::ClusterHandle;
pub use error::ApiError;
pub use rooms::run as announce_rooms;
pub use stream_follow::run as follow_streams;

use crate::config::Config;
use crate::workers::EngineHandle;

/// What operating the node needs: metrics, the gossiped drain state, and facts for the status view.
pub struct OpsState {
    /// The Prometheus registry `/metrics` renders.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This node's gossiped state (drain flag, load), which `/readyz` and drain read and set.
    pub local: Arc<crate::cluster::membership::LocalState>,
    /// When the node started, for the uptime in the status view.
    pub started: std::time::Instant,
    /// The gossip address, shown in the status view.
    pub gossip: std::net::SocketAddr,
    /// Refusals at the node's edges, counted and log-limited.
    pub rejects: Arc<crate::rejects::Rejects>,
    /// Which of the engine, relay and gossip still run, for `/healthz`.
    pub liveness: crate::liveness::Liveness,
    /// The audio egress publisher's figures, with `--nats`.
    pub egress: Option<Arc<crate::egress::EgressFigures>>,
}

/// Everything a request handler needs, shared by all requests of one node.
pub struct ApiState {
    ops: OpsState,
    /// The engine task every Calls operation runs on.
    pub engine: EngineHandle,
    apps: guard::Apps,
    rate: guard::RateLimiter,
    limits: quota::SessionLimits,
    /// SDP parses running at once on the blocking pool: half the cores, so a client posting the
    /// largest SDPs in parallel cannot take the CPU the engine task needs.
    sdp_parsers: Arc<tokio::sync::Semaphore>,
    max_sessions: usize,
    max_body: usize,
    connect_timeout: Duration,
    cluster: ClusterHandle,
    admin_token: Option<String>,
    /// Client for forwarding calls to the node that owns a session.
    http: reqwest::Client,
    /// TURN keys, revocations and the TURN server.
    turn: turn::TurnState,
    /// This node's id, shown in the streams list.
    node_id: String,
    /// WHIP/WHEP stream settings.
    streams: StreamSettings,
    /// Streams pulled from or pushed to other WHIP/WHEP servers.
    cascades: Arc<crate::cascade::Cascades>,
    /// Rooms, tickets, WebSocket participants and the permission hook.
    pub rooms: rooms::RoomsState,
    /// The HTTP address, named in tickets when a request has no Host.
    http_addr: std::net::SocketAddr,
    /// Where clients' SDP keeps transport-wide congestion control (only `--bwe` reads it on
    /// the legs the node sends on).
    pub(crate) twcc: crate::engine::Twcc,
}

/// The WHIP/WHEP settings of the node.
struct StreamSettings {
    whip_auto_create: bool,
    whep_auto_create: bool,
    whep_max_viewers: usize,
}

impl ApiState {
    /// The API's state for a node configured by `cfg`.
    pub fn new(
        cfg: &Config,
        engine: EngineHandle,
        cluster: ClusterHandle,
        ops: OpsState,
        turn: turn::TurnState,
        cascades: Arc<crate::cascade::Cascades>,
    ) -> ApiState {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            // Let pooled connections go before the other node's idle timeout closes them
            // (default 60 s), so a forwarded call never races that close.
            .pool_idle_timeout(Duration::from_secs(20))
            .no_proxy()
            .build()
            .unwrap_or_default();
        let rooms = rooms::RoomsState::new(cfg);
        if let Err(e) = ops.metrics.register(rooms.collectors()) {
            tracing::warn!(%e, "the rooms' counters are not on /metrics");
        }
        ApiState {
            ops,
            cluster,
            admin_token: cfg.admin_token.clone(),
            http,
            engine,
            apps: guard::Apps::new(&cfg.apps),
            rate: guard::RateLimiter::new(cfg.rate_limit),
            limits: quota::SessionLimits::new(
                cfg.session_rate_ip,
                cfg.session_rate_app,
                cfg.max_sessions_per_app,
            ),
            sdp_parsers: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism()
                    .map(|n| (n.get() / 2).max(1))
                    .unwrap_or(1),
            )),
            max_sessions: cfg.max_sessions,
            max_body: cfg.max_body,
            connect_timeout: cfg.connect_timeout,
            node_id: cfg.node_id.clone(),
            streams: StreamSettings {
                whip_auto_create: cfg.whip_auto_create,
                whep_auto_create: cfg.whep_auto_create,
                whep_max_viewers: cfg.whep_max_viewers,
            },
            turn,
            cascades,
            rooms,
            http_addr: cfg.http,
            twcc: crate::engine::Twcc::for_bwe(cfg.bwe),
        }
    }
}

const DEMO_PAGE: &str = include_str!("../demo/index.html");
const MEET_PAGE: &str = include_str!("../demo/meet.html");
const DEMO_JS: &str = include_str!("../demo/common.js");
const DEMO_CSS: &str = include_str!("../demo/common.css");

/// A static asset of the demo pages, with its type; small and versioned with the node, so it
/// may be cached briefly.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        body,
    )
}

/// The demo page's icon, so a browser's automatic `/favicon.ico` request is not an error.
const FAVICON: &str = "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>\
<circle cx='8' cy='8' r='7' fill='#2b6cb0'/></svg>";

/// Serves [`FAVICON`]; browsers read an SVG icon whatever the path's extension says.
async fn favicon() -> impl axum::response::IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        FAVICON,
    )
}

/// Every route of the node's HTTP API, with CORS and the Calls error model for unknown paths.
pub fn router(state: Arc<ApiState>) -> Router {
    let sessions = Router::new()
        .route("/sessions/{session}", get(calls::get_session))
        .route("/sessions/{session}/tracks/new", post(calls::tracks_new))
        .route("/sessions/{session}/renegotiate", put(calls::renegotiate))
        .route(
            "/sessions/{session}/tracks/update",
            put(calls::tracks_update),
        )
        .route("/sessions/{session}/tracks/close", put(calls::tracks_close))
        .route(
            "/sessions/{session}/datachannels/establish",
            post(calls::datachannels_establish),
        )
        .route(
            "/sessions/{session}/datachannels/new",
            post(calls::datachannels_new),
        )
        .route(
            "/sessions/{session}/datachannels/update",
            put(calls::datachannels_update),
        )
        .route(
            "/sessions/{session}/datachannels/close",
            put(calls::datachannels_close),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cluster::route_to_owner,
        ));
    let calls = Router::new()
        .route("/sessions/new", post(calls::sessions_new))
        .route("/sessions", get(listing::app_sessions))
        .route("/generate-ice-servers", get(calls::ice_servers))
        .merge(sessions);
    // WHIP/WHEP and streams: only under /v1 (the unversioned prefix is Calls' legacy one).
    let v1 = calls
        .clone()
        .route("/whip/{stream}", post(whip::whip_post))
        .route("/whep/{stream}", post(whip::whep_post))
        .route(
            "/whip/{stream}/{session}",
            patch(whip::whip_patch).delete(whip::whip_delete),
        )
        .route(
            "/whep/{stream}/{session}",
            patch(whip::whep_patch).delete(whip::whep_delete),
        )
        .route("/streams", get(streams::list))
        .route(
            "/streams/{stream}",
            post(streams::create).delete(streams::delete),
        )
        .route("/streams/{stream}/publisher", put(streams::bind))
        .route(
            "/streams/{stream}/cascade",
            post(cascade::start).delete(cascade::stop),
        );
    // Browsers call the API from other origins (the Calls echo examples do); answer preflights
    // for any origin and header, and say `Vary: Origin`.
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        // WHIP/WHEP clients in a browser read these from the 201 and the PATCH answers.
        .expose_headers([header::LOCATION, header::ETAG, header::LINK])
        .max_age(Duration::from_secs(600));
    Router::new()
        .nest("/v1/apps/{app}", v1)
        .nest("/apps/{app}", calls)
        .route("/v1/apps/{app}/tokens", post(tokens::create))
        .route("/v1/apps/{app}/rooms", post(rooms::create).get(rooms::list))
        .route(
            "/v1/apps/{app}/rooms/{room}",
            get(rooms::get).delete(rooms::delete),
        )
        .route("/v1/apps/{app}/rooms/{room}/tickets", post(rooms::ticket))
        .route(
            "/v1/apps/{app}/rooms/{room}/tickets/consume",
            post(rooms::consume_here),
        )
        .route("/v1/ws", get(ws::upgrade))
        .route("/apps/{app}/tokens", post(tokens::create))
        .route(
            "/v1/turn/keys/{key}/credentials/generate-ice-servers",
            post(turn::generate),
        )
        .route(
            "/v1/turn/keys/{key}/credentials/{username}/revoke",
            post(turn::revoke),
        )
        .route("/", get(|| async { Html(DEMO_PAGE) }))
        .route("/meet", get(|| async { Html(MEET_PAGE) }))
        .route(
            "/demo/common.js",
            get(|| async { asset("text/javascript; charset=utf-8", DEMO_JS) }),
        )
        .route(
            "/demo/common.css",
            get(|| async { asset("text/css; charset=utf-8", DEMO_CSS) }),
        )
        .route("/favicon.ico", get(favicon))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/admin/cluster", get(cluster::admin_cluster))
        .route("/admin/relay", get(cluster::admin_relay))
        .route("/admin/status", get(ops::status))
        .route("/admin/status/{node}", get(ops::status_of))
        .route("/admin/sessions", get(ops::sessions))
        .route("/admin/sessions/{session}", get(ops::session))
        .route("/admin/tracks", get(ops::tracks))
        .route("/admin/locate/{session}/{track}", get(ops::locate))
        .route("/admin/drain/{node}", post(ops::drain))
        .route("/admin/undrain/{node}", post(ops::undrain))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::track_http,
        ))
        .fallback(unknown_path)
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn(error_model))
        .with_state(state)
        // Bodies are read with our own limit so an oversized one gets a JSON 413.
        .layer(DefaultBodyLimit::disable())
        .layer(cors)
        .layer(axum::middleware::from_fn(whip::accept_post))
        .layer(axum::middleware::map_response(no_store))
        .layer(axum::middleware::from_fn(close_after_refused_body))
}

/// The answer for a path no route matches: 405 under the Calls API's prefixes, as Calls
/// answers there (clients written for Calls may branch on it), else 404.
async fn unknown_path(uri: axum::extract::OriginalUri) -> ApiError {
    let path = uri.path();
    if ["/v1/apps/", "/apps/"].iter().any(|p| path.starts_with(p)) {
        ApiError::method_not_allowed()
    } else {
        ApiError::unknown_path()
    }
}

/// Whether `path` answers errors as RFC 9457 problems: WHIP, WHEP and the streams API (under
/// `/v1/apps/{app}/`); everything else uses the Calls model.
pub(crate) fn is_problem_path(path: &str) -> bool {
    let mut parts = path.split('/');
    matches!(
        (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next()
        ),
        (
            Some(""),
            Some("v1"),
            Some("apps"),
            Some(_),
            Some("whip" | "whep" | "streams")
        )
    )
}

/// Most bytes of an error answer read to re-encode it.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Puts the router's own errors in the error model of their path. axum's extractors answer a
/// path or query they cannot read (invalid UTF-8 in `{app}`, a repeated query key) in plain
/// text, and the fallbacks (unknown path, method not allowed) in the Calls model, also under
/// the WHIP, WHEP and streams paths that answer problems. The extractor's text is not passed
/// on: it can quote what the client sent.
async fn error_model(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let problem = is_problem_path(req.uri().path());
    // The WebSocket upgrade's own refusals (a proxy that drops `Upgrade`) name their cause.
    let websocket = req.uri().path() == "/v1/ws";
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("text/plain") && !websocket {
        let e = if status == StatusCode::BAD_REQUEST {
            ApiError::decoding("the request's path or query string cannot be read")
        } else {
            ApiError::new(
                status,
                "internal_error",
                status.canonical_reason().unwrap_or("error"),
            )
        };
        return if problem {
            problem::Problem::from(e).into_response()
        } else {
            e.into_response()
        };
    }
    if !(problem && content_type.starts_with("application/json")) {
        return res;
    }
    // A Calls error on a problem path: the same status and description, as a problem.
    let (parts, body) = res.into_parts();
    let description = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["errorDescription"].as_str().map(str::to_string))
        .unwrap_or_default();
    let mut converted = problem::Problem::from(ApiError::new(status, "", description));
    converted.retry_after = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut out = converted.into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// A call refused before its body was read (a bad bearer, a limit) leaves the body on the
/// connection; hyper then closes it after the answer. Say so in the answer, so the client does not
/// send its next request on a connection that is going away.
async fn close_after_refused_body(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut res = next.run(req).await;
    if has_body && (res.status().is_client_error() || res.status().is_server_error()) {
        res.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    res
}

/// API answers are per-request state; never let a proxy or browser cache them.
async fn no_store(mut res: axum::response::Response) -> impl IntoResponse {
    res.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    res
}
