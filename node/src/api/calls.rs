//! Handlers of the Calls endpoints: decode and check the request, run the operation on the
//! engine, encode the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::error::ApiError;
use super::guard::{decode, is_blank, read_body};
use super::wire::*;
use crate::engine::{LocalTrack, RemoteTrack, TracksNew, UpdateTrack};
use crate::ids::SessionId;

type ApiResult = Result<Response, ApiError>;

/// Poll interval while an API call waits for a session's PeerConnection to connect.
const CONNECT_POLL: Duration = Duration::from_millis(20);

/// Auth, rate limit and body for a call on one session.
async fn prologue(
    st: &ApiState,
    app: &str,
    session: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, ApiError> {
    st.apps.authorize(app, headers)?;
    st.rate.check(session)?;
    read_body(body, st.max_body).await
}

/// Calls waits up to 5 s for a session's PeerConnection before operating on it. The first
/// exchange (which creates the transport) and a pending SFU offer never wait.
async fn wait_connected(st: &ApiState, app: &str, session: &str) -> Result<(), ApiError> {
    let deadline = Instant::now() + st.connect_timeout;
    loop {
        let (a, s) = (app.to_string(), session.to_string());
        if !st
            .engine
            .call(move |e, _| e.must_wait_for_connection(&a, &s))
            .await??
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::GONE,
                "session_error",
                "Session appears to be disconnected. Please check if the PeerConnection is connected.",
            ));
        }
        tokio::time::sleep(CONNECT_POLL).await;
    }
}

fn expect_type(d: &SessionDescription, want: SdpType) -> Result<(), ApiError> {
    if d.kind != want {
        let w = if want == SdpType::Offer {
            "an offer"
        } else {
            "an answer"
        };
        return Err(ApiError::invalid_sdp(format!(
            "sessionDescription must be {w}"
        )));
    }
    Ok(())
}

pub async fn sessions_new(
    State(st): State<Arc<ApiState>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    st.apps.authorize(&app, &headers)?;
    if st
        .ops
        .local
        .draining
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable_error",
            "this node is draining: create the session on another node",
        ));
    }
    let bytes = read_body(body, st.max_body).await?;
    let offer = if is_blank(&bytes) || bytes.as_ref() == b"null" {
        None
    } else {
        let req: NewSessionRequest = decode(&bytes)?;
        expect_type(&req.session_description, SdpType::Offer)?;
        Some(req.session_description.sdp)
    };
    let (id, answer) = st
        .engine
        .call(move |e, now| e.create_session(&app, offer.as_deref(), now))
        .await??;
    let body = NewSessionResponse {
        session_id: id.to_string(),
        session_description: answer.map(Into::into),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn tracks_new(
    State(st): State<Arc<ApiState>>,
    Path((app, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = prologue(&st, &app, &session, &headers, body).await?;
    let req: TracksRequest = if is_blank(&bytes) {
        TracksRequest::default()
    } else {
        decode(&bytes)?
    };
    let offer = match req.session_description {
        Some(d) => {
            expect_type(&d, SdpType::Offer)?;
            Some(d.sdp)
        }
        None => None,
    };
    let tracks = req.tracks.unwrap_or_default();
    let auto_discover = req.auto_discover.unwrap_or(false);
    validate_required(&tracks, offer.is_some())?;
    let local = tracks
        .iter()
        .filter(|t| t.location == Some(WireLocation::Local))
        .count();
    let remote = tracks
        .iter()
        .filter(|t| t.location == Some(WireLocation::Remote))
        .count();
    if local + remote != tracks.len() {
        return Err(ApiError::invalid_params(
            "every track needs location \"local\" or \"remote\"",
        ));
    }
    let op = match (local, remote, offer) {
        (0, 0, None) if !auto_discover => {
            return Err(ApiError::invalid_params(
                "no tracks, no autoDiscover and no sessionDescription",
            ));
        }
        (0, 0, None) => {
            return Err(ApiError::invalid_params(
                "autoDiscover needs a sessionDescription (offer)",
            ));
        }
        (0, 0, Some(offer)) => match auto_discover {
            true => TracksNew::Local {
                offer: Some(offer),
                tracks: Vec::new(),
                auto_discover,
            },
            false => TracksNew::OfferOnly { offer },
        },
        (_, 0, offer) => TracksNew::Local {
            offer,
            auto_discover,
            tracks: tracks
                .into_iter()
                .map(|t| LocalTrack {
                    mid: t.mid,
                    track_name: t.track_name,
                    kind: t.kind.map(|k| match k {
                        WireKind::Audio => str0m::media::MediaKind::Audio,
                        WireKind::Video => str0m::media::MediaKind::Video,
                    }),
                    bidirectional: t.bidirectional_media_stream.unwrap_or(false),
                })
                .collect(),
        },
        (0, _, None) => TracksNew::Remote {
            tracks: tracks
                .into_iter()
                .map(|t| RemoteTrack {
                    session_id: t.session_id,
                    track_name: t.track_name,
                    mid: t.mid,
                })
                .collect(),
        },
        (0, _, Some(_)) => {
            return Err(ApiError::invalid_params(
                "pulling remote tracks takes no sessionDescription: the SFU sends the offer",
            ));
        }
        _ => {
            return Err(ApiError::invalid_params(
                "a request must be all local or all remote tracks",
            ));
        }
    };
    if tracks_len(&op) > crate::engine::MAX_TRACKS_PER_CALL {
        return Err(ApiError::invalid_params(format!(
            "at most {} tracks per request",
            crate::engine::MAX_TRACKS_PER_CALL
        )));
    }
    wait_connected(&st, &app, &session).await?;
    if let TracksNew::Remote { tracks } = &op {
        let wanted = tracks.iter().filter_map(|t| {
            Some((
                SessionId::parse(t.session_id.as_deref()?)?,
                t.track_name.clone()?,
            ))
        });
        super::cluster::resolve_remote(&st, &app, wanted).await;
    }
    let res = st
        .engine
        .call(move |e, now| e.tracks_new(&app, &session, op, now))
        .await??;
    Ok(Json(TracksResponse {
        requires_immediate_renegotiation: res.requires_immediate_renegotiation,
        session_description: res.description.map(Into::into),
        tracks: res.tracks.into_iter().map(Into::into).collect(),
    })
    .into_response())
}

/// Calls answers a missing required field (say `trackname` for `trackName`) with 400
/// `decoding_error` "JSON body validation error", not with a per-item error.
fn validate_required(tracks: &[TrackObject], with_offer: bool) -> Result<(), ApiError> {
    let present = |f: &Option<String>| f.as_deref().is_some_and(|v| !v.is_empty());
    for (i, t) in tracks.iter().enumerate() {
        let missing = match t.location {
            Some(WireLocation::Remote) if !present(&t.session_id) => Some("sessionId"),
            Some(WireLocation::Remote) | Some(WireLocation::Local) if !present(&t.track_name) => {
                Some("trackName")
            }
            Some(WireLocation::Local) if with_offer && !present(&t.mid) => Some("mid"),
            Some(WireLocation::Local) if !with_offer && t.kind.is_none() => Some("kind"),
            None => Some("location"),
            _ => None,
        };
        if let Some(field) = missing {
            return Err(ApiError::decoding(format!(
                "JSON body validation error: tracks[{i}] needs {field}"
            )));
        }
    }
    Ok(())
}

fn tracks_len(op: &TracksNew) -> usize {
    match op {
        TracksNew::Local { tracks, .. } => tracks.len(),
        TracksNew::Remote { tracks } => tracks.len(),
        TracksNew::OfferOnly { .. } => 0,
    }
}

pub async fn renegotiate(
    State(st): State<Arc<ApiState>>,
    Path((app, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = prologue(&st, &app, &session, &headers, body).await?;
    let req: RenegotiateRequest = decode(&bytes)?;
    expect_type(&req.session_description, SdpType::Answer)?;
    let sdp = req.session_description.sdp;
    st.engine
        .call(move |e, now| e.renegotiate(&app, &session, &sdp, now))
        .await??;
    Ok(Json(serde_json::json!({})).into_response())
}

pub async fn tracks_update(
    State(st): State<Arc<ApiState>>,
    Path((app, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = prologue(&st, &app, &session, &headers, body).await?;
    let req: UpdateRequest = decode(&bytes)?;
    let tracks: Vec<UpdateTrack> = req
        .tracks
        .into_iter()
        .map(|t| UpdateTrack {
            mid: t.mid,
            session_id: t.session_id,
            track_name: t.track_name,
        })
        .collect();
    wait_connected(&st, &app, &session).await?;
    let wanted = tracks.iter().filter_map(|t| {
        Some((
            SessionId::parse(t.session_id.as_deref()?)?,
            t.track_name.clone()?,
        ))
    });
    super::cluster::resolve_remote(&st, &app, wanted).await;
    let res = st
        .engine
        .call(move |e, now| e.tracks_update(&app, &session, tracks, now))
        .await??;
    Ok(Json(TracksResponse {
        requires_immediate_renegotiation: false,
        session_description: None,
        tracks: res.into_iter().map(Into::into).collect(),
    })
    .into_response())
}

pub async fn tracks_close(
    State(st): State<Arc<ApiState>>,
    Path((app, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = prologue(&st, &app, &session, &headers, body).await?;
    let req: CloseRequest = decode(&bytes)?;
    let force = req.force.unwrap_or(false);
    let offer = match req.session_description {
        Some(d) => {
            expect_type(&d, SdpType::Offer)?;
            Some(d.sdp)
        }
        None => None,
    };
    let mut mids = Vec::with_capacity(req.tracks.len());
    for t in req.tracks {
        match t.mid {
            Some(m) if !m.is_empty() => mids.push(m),
            _ => {
                return Err(ApiError::invalid_params(
                    "every track to close needs its mid",
                ));
            }
        }
    }
    if !force {
        wait_connected(&st, &app, &session).await?;
    }
    let res = st
        .engine
        .call(move |e, now| e.tracks_close(&app, &session, mids, force, offer.as_deref(), now))
        .await??;
    Ok(Json(TracksResponse {
        requires_immediate_renegotiation: false,
        session_description: res.description.map(Into::into),
        tracks: res.tracks.into_iter().map(Into::into).collect(),
    })
    .into_response())
}

pub async fn get_session(
    State(st): State<Arc<ApiState>>,
    Path((app, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    prologue(&st, &app, &session, &headers, body).await?;
    let tracks = st
        .engine
        .call(move |e, _| e.session_tracks(&app, &session))
        .await??;
    Ok(Json(SessionStateResponse {
        tracks: tracks.into_iter().map(Into::into).collect(),
    })
    .into_response())
}

/// partytracks asks `{prefix}/generate-ice-servers` unless given `iceServers`; the node is
/// reachable directly (ICE-lite with a host candidate), so no STUN/TURN servers are needed.
pub async fn ice_servers(State(st): State<Arc<ApiState>>, Path(app): Path<String>) -> ApiResult {
    if !st.apps.has(&app) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app {app} not found"),
        ));
    }
    Ok(Json(serde_json::json!({ "iceServers": [] })).into_response())
}
