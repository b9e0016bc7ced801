//! WHIP (RFC 9725) and WHEP endpoints: `POST /v1/apps/{app}/whip/{stream}` publishes,
//! `POST /v1/apps/{app}/whep/{stream}` plays, each with an `application/sdp` offer; the session
//! URL (`.../{stream}/{session}`) takes `PATCH` (trickle ICE, ICE restart) and `DELETE`. Errors
//! are RFC 9457 problems. The sessions are Calls sessions run by the same engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::calls::off_engine;
use super::guard::read_body;
use super::problem::Problem;
use super::tokens::StreamDenied;
use crate::engine::streams::Role;
use crate::engine::{ClientOffer, OpError, Patched, StreamPolicy, StreamSessionCreated};

type Result<T, E = Problem> = std::result::Result<T, E>;

/// The SDP media type WHIP and WHEP exchange.
const SDP: &str = "application/sdp";
/// The media type of `PATCH` bodies (RFC 8840).
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// What a bearer is asked to allow on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// WHIP: publish into the stream.
    Publish,
    /// WHEP: play the stream.
    Subscribe,
}

/// The one place WHIP/WHEP check a bearer: the app's secret (every stream and mode) or a stream
/// token signed with it ([`super::tokens`]). A missing, forged, expired or other app's bearer is
/// 401; a valid token for another stream or mode is 403; an unknown app is 404.
pub fn authorize_stream(
    st: &ApiState,
    app: &str,
    headers: &HeaderMap,
    stream: &str,
    mode: Mode,
) -> Result<()> {
    let want = match mode {
        Mode::Publish => super::tokens::Mode::Publish,
        Mode::Subscribe => super::tokens::Mode::Subscribe,
    };
    match st.authorize_stream(app, headers, stream, want) {
        Ok(_) => Ok(()),
        Err(StreamDenied::UnknownApp) => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("app {app} not found"),
        )),
        Err(StreamDenied::Token(e)) => Err(Problem::from(super::error::ApiError::from(e))),
    }
}

/// The body's media type is `want` (parameters such as `charset` are ignored).
fn require_type(headers: &HeaderMap, want: &str) -> Result<()> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(want));
    if ok {
        Ok(())
    } else {
        Err(Problem::unsupported_type(want))
    }
}

/// Engine errors as WHIP/WHEP report them: an offer str0m refuses is a bad SDP (400) here, not
/// Calls' 406.
fn op_problem(e: OpError) -> Problem {
    match e {
        OpError::InvalidSdp(d) | OpError::InvalidParams(d) | OpError::Decoding(d) => {
            Problem::bad_sdp(d)
        }
        other => Problem::from(other),
    }
}

fn role_of(mode: Mode) -> Role {
    match mode {
        Mode::Publish => Role::Publisher,
        Mode::Subscribe => Role::Viewer,
    }
}

fn path_word(mode: Mode) -> &'static str {
    match mode {
        Mode::Publish => "whip",
        Mode::Subscribe => "whep",
    }
}

/// `POST /v1/apps/{app}/whip/{stream}`.
pub async fn whip_post(
    st: State<Arc<ApiState>>,
    path: Path<(String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    post(st, path, connect, headers, body, Mode::Publish)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/apps/{app}/whep/{stream}`.
pub async fn whep_post(
    st: State<Arc<ApiState>>,
    path: Path<(String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    post(st, path, connect, headers, body, Mode::Subscribe)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn post(
    State(st): State<Arc<ApiState>>,
    Path((app, stream)): Path<(String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
    mode: Mode,
) -> Result<Response> {
    // As for sessions/new: the address's budget before the bearer, so guessing is slow too.
    if let Some(Extension(ConnectInfo(peer))) = connect {
        st.limits.check_ip(peer.ip()).map_err(|e| {
            st.ops
                .rejects
                .count(crate::rejects::Port::Http, "session_rate_ip");
            Problem::from(e)
        })?;
    }
    authorize_stream(&st, &app, &headers, &stream, mode)?;
    st.limits.check_app(&app).map_err(|e| {
        st.ops
            .rejects
            .count(crate::rejects::Port::Http, "session_rate_app");
        Problem::from(e)
    })?;
    if st.ops.local.draining.load(Ordering::Relaxed) {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this node is draining: use another node",
        )
        .retry_after_secs(1));
    }
    require_type(&headers, SDP)?;
    let bytes = read_body(body, st.max_body).await?;
    let sdp = std::str::from_utf8(&bytes)
        .map_err(|_| Problem::bad_sdp("the SDP is not UTF-8"))?
        .to_string();
    crate::engine::sdp_limits::check(&sdp).map_err(|b| Problem::bad_sdp(b.to_string()))?;
    let twcc = st.twcc;
    let offer = off_engine(&st, move || ClientOffer::parse_for(&sdp, twcc)).await?;
    // The cluster: a publisher of this name on another node makes a second one a conflict, and
    // a viewer here follows it (its tracks pulled over the relay before the viewer's answer).
    let elsewhere = super::stream_follow::remote_publisher(&st, &app, &stream);
    match (mode, &elsewhere) {
        (Mode::Publish, Some((node, _))) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("stream {stream} already has a publisher, on node {node}"),
            ));
        }
        (Mode::Subscribe, Some((_, winner))) => {
            super::stream_follow::follow(&st, &app, &stream, Some(winner.clone()), true, false)
                .await?;
        }
        _ => {}
    }
    // The stream's worker (placed on the least-loaded one at its first use) runs its sessions.
    let slot = st
        .engine
        .stream_slot(&app, &stream)
        .await
        .map_err(op_problem)?;
    let worker = slot.worker();
    let quota = st.limits.per_app_quota;
    let policy = StreamPolicy {
        auto_create: match mode {
            Mode::Publish => st.streams.whip_auto_create,
            Mode::Subscribe => st.streams.whep_auto_create,
        },
        max_viewers: st.streams.whep_max_viewers,
    };
    // The app's quota counts its sessions on every worker; the stream's worker counts its own
    // when the session is made.
    let a = app.clone();
    let elsewhere: usize = st
        .engine
        .call_all(move |e, _| e.app_session_count(&a))
        .await?
        .into_iter()
        .enumerate()
        .filter(|(w, _)| *w != worker)
        .map(|(_, n)| n)
        .sum();
    let (a, s) = (app.clone(), stream.clone());
    let created = st
        .engine
        .call_on(worker, move |e, now| {
            if e.app_session_count(&a) + elsewhere >= quota {
                return Ok(None);
            }
            match mode {
                Mode::Publish => e.whip_publish(&a, &s, offer, policy, now),
                Mode::Subscribe => e.whep_play(&a, &s, offer, policy, now),
            }
            .map(Some)
        })
        .await?
        .map_err(op_problem)?;
    drop(slot);
    let Some(created) = created else {
        st.ops
            .rejects
            .count(crate::rejects::Port::Http, "app_session_quota");
        return Err(Problem::from(st.limits.over_quota()));
    };
    let links = super::turn::ice_server_links(&st.turn, crate::turn::credentials::unix_now());
    Ok(created_response(&app, &stream, mode, created, &links))
}

fn created_response(
    app: &str,
    stream: &str,
    mode: Mode,
    c: StreamSessionCreated,
    links: &[String],
) -> Response {
    let location = format!(
        "/v1/apps/{app}/{}/{stream}/{}",
        path_word(mode),
        c.session_id
    );
    let mut res = (StatusCode::CREATED, c.answer.sdp).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", c.etag)) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::HeaderName::from_static("accept-patch"),
        HeaderValue::from_static(SDPFRAG),
    );
    // With a TURN key, the node's STUN/TURN URLs and a fresh credential (RFC 9725 §4.6), so a
    // client whose UDP to the media port is blocked can still connect. Without one, none: the node
    // answers on its own host candidate (ICE-lite) and needs no STUN.
    for link in links {
        if let Ok(v) = HeaderValue::from_str(link) {
            h.append(header::LINK, v);
        }
    }
    res
}

/// `PATCH` on a WHIP session URL.
pub async fn whip_patch(
    st: State<Arc<ApiState>>,
    path: Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    patch(st, path, headers, body, Mode::Publish)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `PATCH` on a WHEP session URL.
pub async fn whep_patch(
    st: State<Arc<ApiState>>,
    path: Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    patch(st, path, headers, body, Mode::Subscribe)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn patch(
    State(st): State<Arc<ApiState>>,
    Path((app, stream, session)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
    mode: Mode,
) -> Result<Response> {
    authorize_stream(&st, &app, &headers, &stream, mode)?;
    st.rate.check(&session)?;
    require_type(&headers, SDPFRAG)?;
    let bytes = read_body(body, st.max_body).await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Problem::bad_sdp("not UTF-8"))?;
    if text.len() > crate::engine::sdp_limits::MAX_SDP_BYTES {
        return Err(Problem::bad_sdp("sdpfrag too large"));
    }
    let frag = crate::engine::sdpfrag::parse(text).map_err(Problem::bad_sdp)?;
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let role = role_of(mode);
    // The session URL names the session, whose id names its worker.
    let patched = st
        .engine
        .call_on(st.engine.worker_of_str(&session), move |e, now| {
            e.stream_session_patch(
                &app,
                &stream,
                role,
                &session,
                if_match.as_deref(),
                frag,
                now,
            )
        })
        .await?
        .map_err(op_problem)?;
    Ok(match patched {
        Patched::Trickled => StatusCode::NO_CONTENT.into_response(),
        Patched::Restarted { frag, etag } => {
            let mut res = (StatusCode::OK, frag).into_response();
            let h = res.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG));
            if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
                h.insert(header::ETAG, v);
            }
            res
        }
    })
}

/// `DELETE` on a WHIP session URL: ends the session.
pub async fn whip_delete(
    st: State<Arc<ApiState>>,
    path: Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(st, path, headers, Mode::Publish)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE` on a WHEP session URL: ends the session.
pub async fn whep_delete(
    st: State<Arc<ApiState>>,
    path: Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(st, path, headers, Mode::Subscribe)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn delete(
    State(st): State<Arc<ApiState>>,
    Path((app, stream, session)): Path<(String, String, String)>,
    headers: HeaderMap,
    mode: Mode,
) -> Result<Response> {
    authorize_stream(&st, &app, &headers, &stream, mode)?;
    st.rate.check(&session)?;
    let role = role_of(mode);
    match st
        .engine
        .call_on(st.engine.worker_of_str(&session), move |e, now| {
            e.stream_session_delete(&app, &stream, role, &session, now)
        })
        .await?
    {
        // DELETE is idempotent: a session that just ended (its client closed the peer
        // connection a moment before the DELETE arrived, as browsers do) is what was asked for.
        Ok(()) | Err(OpError::Gone(_)) => Ok(StatusCode::OK.into_response()),
        Err(e) => Err(op_problem(e)),
    }
}

/// `OPTIONS` on a WHIP/WHEP endpoint says which body `POST` takes (RFC 9725 §4.1), and on a
/// session URL which body `PATCH` takes. The CORS layer answers every `OPTIONS` (a preflight or
/// not) before the router; this adds the header to its answer.
pub async fn accept_post(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let accepts = if req.method() == Method::OPTIONS {
        let parts: Vec<&str> = req.uri().path().trim_end_matches('/').split('/').collect();
        // "", "v1", "apps", {app}, "whip"|"whep", {stream}[, {session}]
        match parts.as_slice() {
            ["", "v1", "apps", _, "whip" | "whep", _] => Some(("accept-post", SDP)),
            ["", "v1", "apps", _, "whip" | "whep", _, _] => Some(("accept-patch", SDPFRAG)),
            _ => None,
        }
    } else {
        None
    };
    let mut res = next.run(req).await;
    if let Some((name, value)) = accepts {
        res.headers_mut().insert(
            header::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    res
}
