//! The HTTP surface: the Calls-compatible API under `/v1/apps/{appId}` and `/apps/{appId}`, the
//! demo page at `/`, health, metrics and `/admin/*`. Errors are JSON in the Calls error model:
//! an unknown path under the API's prefix gets 405, as Calls answers ("reserved for future
//! WHIP/WHEP"), an unknown path anywhere else 404, and a known path with the wrong method 405.

mod calls;
mod cluster;
mod error;
mod guard;
pub mod node_auth;
mod ops;
mod quota;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post, put};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

pub use cluster::ClusterHandle;
pub use error::ApiError;

use crate::config::Config;
use crate::runtime::EngineHandle;

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
}

impl ApiState {
    /// The API's state for a node configured by `cfg`.
    pub fn new(
        cfg: &Config,
        engine: EngineHandle,
        cluster: ClusterHandle,
        ops: OpsState,
    ) -> ApiState {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            // Let pooled connections go before the other node's idle timeout closes them
            // (default 60 s), so a forwarded call never races that close.
            .pool_idle_timeout(Duration::from_secs(20))
            .no_proxy()
            .build()
            .unwrap_or_default();
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
        }
    }
}

const DEMO_PAGE: &str = include_str!("../demo/index.html");

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
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cluster::route_to_owner,
        ));
    let calls = Router::new()
        .route("/sessions/new", post(calls::sessions_new))
        .route("/generate-ice-servers", get(calls::ice_servers))
        .merge(sessions);
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
        .max_age(Duration::from_secs(600));
    Router::new()
        .nest("/v1/apps/{app}", calls.clone())
        .nest("/apps/{app}", calls)
        .route("/", get(|| async { Html(DEMO_PAGE) }))
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
        .with_state(state)
        // Bodies are read with our own limit so an oversized one gets a JSON 413.
        .layer(DefaultBodyLimit::disable())
        .layer(cors)
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
