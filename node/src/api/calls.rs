//! Handlers of the Calls endpoints: decode and check the request, run the operation on the
//! engine, encode the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;

use super::ApiState;
use super::error::ApiError;
use super::guard::{decode, is_blank, read_body};
use super::wire::*;
use crate::engine::{
    ClientAnswer, ClientOffer, DataChannelItem, LocalTrack, Location, RemoteTrack, TracksNew,
    UpdateTrack,
};
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
/// exchange (which creates the transport), a pending SFU offer and an offer that brings a new
/// transport (ICE restart, new DTLS) never wait.
async fn wait_connected(
    st: &ApiState,
    app: &str,
    session: &str,
    transport: Option<(Option<String>, Option<String>)>,
) -> Result<(), ApiError> {
    let deadline = Instant::now() + st.connect_timeout;
    loop {
        let (a, s, t) = (app.to_string(), session.to_string(), transport.clone());
        if !st
            .engine
            .call_on(st.engine.worker_of_str(session), move |e, _| {
                e.must_wait_for_connection(&a, &s, t)
            })
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

/// How long a call waits for a free SDP parser before it gets 503.
const PARSER_WAIT: Duration = Duration::from_secs(2);

/// Runs SDP parsing on the blocking pool: a large SDP costs milliseconds, which must not be spent
/// on the engine task (it forwards all media) nor hold up an async worker. At most
/// `sdp_parsers` run at once.
pub(super) async fn off_engine<T: Send + 'static>(
    st: &ApiState,
    parse: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let busy = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable_error",
            "too many SDPs being parsed on this node; retry",
        )
        .retry_after(1)
    };
    let permit = tokio::time::timeout(PARSER_WAIT, st.sdp_parsers.clone().acquire_owned())
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
    tokio::task::spawn_blocking(move || {
        let parsed = parse();
        drop(permit);
        parsed
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("parsing the SDP failed: {e}"),
        )
    })
}

/// Longest track name accepted, in bytes (Calls clients use UUIDs or short names).
pub const MAX_TRACK_NAME_BYTES: usize = 256;
/// Longest mid accepted, in bytes (browsers use small integers).
pub const MAX_MID_BYTES: usize = 64;

/// The description is of the wanted type and within the SDP bounds; a bound broken is a 400
/// that names it, answered before the SDP goes anywhere near the engine.
fn check_description(d: &SessionDescription, want: SdpType) -> Result<(), ApiError> {
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
    crate::engine::sdp_limits::check(&d.sdp).map_err(|b| ApiError::decoding(b.to_string()))
}

/// A track object's `simulcast`, checked by [`check_names`] before.
fn prefs_of(t: &TrackObject) -> Option<crate::engine::simulcast::Prefs> {
    t.simulcast.as_ref().and_then(|s| s.to_prefs().ok())
}

/// Track names and mids within their length limits; `simulcast.preferredRid` well-formed.
fn check_names(tracks: &[TrackObject]) -> Result<(), ApiError> {
    for (i, t) in tracks.iter().enumerate() {
        if t.track_name
            .as_ref()
            .is_some_and(|n| n.len() > MAX_TRACK_NAME_BYTES)
        {
            return Err(ApiError::decoding(format!(
                "tracks[{i}].trackName is longer than {MAX_TRACK_NAME_BYTES} bytes"
            )));
        }
        if t.mid.as_ref().is_some_and(|m| m.len() > MAX_MID_BYTES) {
            return Err(ApiError::decoding(format!(
                "tracks[{i}].mid is longer than {MAX_MID_BYTES} bytes"
            )));
        }
        if let Some(Err(e)) = t.simulcast.as_ref().map(|s| s.to_prefs()) {
            return Err(ApiError::invalid_params(format!("tracks[{i}]: {e}")));
        }
    }
    Ok(())
}

pub async fn sessions_new(
    State(st): State<Arc<ApiState>>,
    Path(app): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    // The address's budget first, so guessing bearers costs the same as creating sessions.
    if let Some(Extension(ConnectInfo(peer))) = connect {
        st.limits
            .check_ip(peer.ip())
            .map_err(|e| refused(&st, e, "session_rate_ip"))?;
    }
    st.apps.authorize(&app, &headers)?;
    st.limits
        .check_app(&app)
        .map_err(|e| refused(&st, e, "session_rate_app"))?;
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
        check_description(&req.session_description, SdpType::Offer)?;
        let sdp = req.session_description.sdp;
        let twcc = st.twcc;
        Some(off_engine(&st, move || ClientOffer::parse_for(&sdp, twcc)).await?)
    };
    let quota = st.limits.per_app_quota;
    // The app's quota counts its sessions on every worker; the new one goes to the least loaded.
    let held = st.engine.app_sessions(&app).await?;
    let worker = st.engine.place();
    let created = st
        .engine
        .call_placed(worker, move |e, now| {
            if held >= quota {
                return Ok(None);
            }
            e.create_session(&app, offer, now).map(Some)
        })
        .await??;
    let Some((id, answer)) = created else {
        return Err(refused(&st, st.limits.over_quota(), "app_session_quota"));
    };
    let body = NewSessionResponse {
        session_id: id.to_string(),
        session_description: answer.map(Into::into),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Counts a limit's refusal (a 429 with `Retry-After`), never logged: a busy client is no attack.
fn refused(st: &ApiState, e: ApiError, reason: &'static str) -> ApiError {
    st.ops.rejects.count(crate::rejects::Port::Http, reason);
    e
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
            check_description(&d, SdpType::Offer)?;
            let sdp = d.sdp;
            let twcc = st.twcc;
            Some(off_engine(&st, move || ClientOffer::parse_for(&sdp, twcc)).await?)
        }
        None => None,
    };
    let tracks = req.tracks.unwrap_or_default();
    let auto_discover = req.auto_discover.unwrap_or(false);
    check_names(&tracks)?;
    validate_required(&tracks, offer.is_some())?;
    // Read before the offer moves into the operation: it may bring a new transport.
    let offer_transport = offer
        .as_ref()
        .map(|o| (o.ice_ufrag.clone(), o.fingerprint.clone()));
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
                    simulcast: prefs_of(&t),
                    session_id: t.session_id,
                    track_name: t.track_name,
                    mid: t.mid,
                })
                .collect(),
        },
        // Each remote track's mid names the offer's receiving section; the SFU answers.
        (0, _, Some(offer)) => TracksNew::RemoteWithOffer {
            offer,
            tracks: tracks
                .into_iter()
                .map(|t| RemoteTrack {
                    simulcast: prefs_of(&t),
                    session_id: t.session_id,
                    track_name: t.track_name,
                    mid: t.mid,
                })
                .collect(),
        },
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
    wait_connected(&st, &app, &session, offer_transport).await?;
    let mut unreachable = Vec::new();
    if let TracksNew::Remote { tracks } | TracksNew::RemoteWithOffer { tracks, .. } = &op {
        let wanted = tracks.iter().filter_map(|t| {
            Some((
                SessionId::parse(t.session_id.as_deref()?)?,
                t.track_name.clone()?,
            ))
        });
        unreachable =
            super::cluster::resolve_remote(&st, &app, st.engine.worker_of_str(&session), wanted)
                .await;
    }
    let res = st
        .engine
        .call_on(st.engine.worker_of_str(&session), move |e, now| {
            e.tracks_new(&app, &session, op, now)
        })
        .await??;
    let mut tracks: Vec<TrackOut> = res.tracks.into_iter().map(Into::into).collect();
    super::cluster::mark_unreachable(&mut tracks, &unreachable);
    Ok(Json(TracksResponse {
        requires_immediate_renegotiation: res.requires_immediate_renegotiation,
        session_description: res.description.map(Into::into),
        tracks,
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
        TracksNew::Remote { tracks } | TracksNew::RemoteWithOffer { tracks, .. } => tracks.len(),
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
    check_description(&req.session_description, SdpType::Answer)?;
    let sdp = req.session_description.sdp;
    let twcc = st.twcc;
    let answer = off_engine(&st, move || ClientAnswer::parse_for(&sdp, twcc)).await?;
    st.engine
        .call_on(st.engine.worker_of_str(&session), move |e, now| {
            e.renegotiate(&app, &session, answer, now)
        })
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
    // Checked before the remote tracks are resolved (one task and relay pull each), not only by
    // the engine after them.
    crate::engine::check_update_count(req.tracks.len())?;
    check_names(&req.tracks)?;
    let tracks: Vec<UpdateTrack> = req
        .tracks
        .into_iter()
        .map(|t| UpdateTrack {
            simulcast: prefs_of(&t),
            mid: t.mid,
            session_id: t.session_id,
            track_name: t.track_name,
        })
        .collect();
    wait_connected(&st, &app, &session, None).await?;
    let wanted = tracks.iter().filter_map(|t| {
        Some((
            SessionId::parse(t.session_id.as_deref()?)?,
            t.track_name.clone()?,
        ))
    });
    let unreachable =
        super::cluster::resolve_remote(&st, &app, st.engine.worker_of_str(&session), wanted).await;
    let res = st
        .engine
        .call_on(st.engine.worker_of_str(&session), move |e, now| {
            e.tracks_update(&app, &session, tracks, now)
        })
        .await??;
    let mut tracks: Vec<TrackOut> = res.into_iter().map(Into::into).collect();
    super::cluster::mark_unreachable(&mut tracks, &unreachable);
    Ok(Json(TracksResponse {
        requires_immediate_renegotiation: false,
        session_description: None,
        tracks,
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
    // Before the offer is parsed against every mid (a cost that grows with both) and before
    // the wait for the connection, as `tracks/update` does.
    crate::engine::check_update_count(req.tracks.len())?;
    check_names(&req.tracks)?;
    let force = req.force.unwrap_or(false);
    let offer = match req.session_description {
        Some(d) => {
            check_description(&d, SdpType::Offer)?;
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
    let offer = match offer {
        Some(sdp) => {
            let closing = mids.clone();
            let twcc = st.twcc;
            Some(
                off_engine(&st, move || {
                    ClientOffer::parse_closing(&sdp, &closing, twcc)
                })
                .await?,
            )
        }
        None => None,
    };
    if !force {
        let transport = offer
            .as_ref()
            .map(|o| (o.ice_ufrag.clone(), o.fingerprint.clone()));
        wait_connected(&st, &app, &session, transport).await?;
    }
    let res = st
        .engine
        .call_on(st.engine.worker_of_str(&session), move |e, now| {
            e.tracks_close(&app, &session, mids, force, offer, now)
        })
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
    let (tracks, channels) = st
        .engine
        .call_on(st.engine.worker_of_str(&session), move |e, _| {
            Ok::<_, crate::engine::OpError>((
                e.session_tracks(&app, &session)?,
                e.session_datachannels(&app, &session)?,
            ))
        })
        .await??;
    Ok(Json(SessionStateResponse {
        tracks: tracks.into_iter().map(Into::into).collect(),
        data_channels: channels.into_iter().map(Into::into).collect(),
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

/// `POST datachannels/establish`: the SFU offers the SCTP section with `server-events` (id 0).
pub async fn datachannels_establish(
    State(st): State<Arc<ApiState>>,
    Path((app, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = prologue(&st, &app, &session, &headers, body).await?;
    let req: EstablishRequest = if is_blank(&bytes) {
        EstablishRequest::default()
    } else {
        decode(&bytes)?
    };
    if req.session_description.is_some() {
        return Err(ApiError::decoding(
            "datachannels/establish takes no sessionDescription: answer the SFU's offer with renegotiate",
        ));
    }
    if let Some(dc) = &req.data_channel
        && (dc.location != Some(WireLocation::Remote)
            || dc.data_channel_name.as_deref() != Some(crate::engine::datachannels::SERVER_EVENTS))
    {
        return Err(ApiError::invalid_params(
            "only {location: \"remote\", dataChannelName: \"server-events\"} can be established",
        ));
    }
    wait_connected(&st, &app, &session, None).await?;
    let est = st
        .engine
        .call_on(st.engine.worker_of_str(&session), move |e, now| {
            e.datachannels_establish(&app, &session, now)
        })
        .await??;
    Ok(Json(EstablishResponse {
        requires_immediate_renegotiation: est.offer.is_some(),
        data_channel: DataChannelOut {
            location: None,
            session_id: None,
            data_channel_name: Some(crate::engine::datachannels::SERVER_EVENTS.into()),
            id: Some(0),
            status: None,
            error_code: None,
            error_description: None,
        },
        session_description: est.offer.map(Into::into),
    })
    .into_response())
}

/// Decodes a `datachannels/*` body into engine items, within the per-call bound.
fn channel_items(bytes: &[u8]) -> Result<Vec<DataChannelItem>, ApiError> {
    let req: DataChannelsRequest = decode(bytes)?;
    if req.data_channels.is_empty() {
        return Err(ApiError::invalid_params("dataChannels must not be empty"));
    }
    if req.data_channels.len() > crate::engine::MAX_TRACKS_PER_CALL {
        return Err(ApiError::invalid_params(format!(
            "at most {} dataChannels per request",
            crate::engine::MAX_TRACKS_PER_CALL
        )));
    }
    Ok(req
        .data_channels
        .into_iter()
        .map(|d| DataChannelItem {
            location: d.location.map(|l| match l {
                WireLocation::Local => Location::Local,
                WireLocation::Remote => Location::Remote,
            }),
            session_id: d.session_id,
            name: d.data_channel_name,
            ordered: d.ordered,
            max_retransmits: d.max_retransmits,
            max_packet_life_time: d.max_packet_life_time,
            wait_for_ack: d.wait_for_ack.unwrap_or(false),
            can_reply: d.can_reply.unwrap_or(false),
            id: d.id,
        })
        .collect())
}

/// `POST datachannels/new`: publish or subscribe; ids in the answer.
pub async fn datachannels_new(
    State(st): State<Arc<ApiState>>,
    Path((app, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = prologue(&st, &app, &session, &headers, body).await?;
    let items = channel_items(&bytes)?;
    wait_connected(&st, &app, &session, None).await?;
    // Channels of other nodes' sessions are subscribed to over the relay first (in parallel),
    // then, like channels of this node's other workers, linked to this session's worker.
    let worker = st.engine.worker_of_str(&session);
    let mut set = tokio::task::JoinSet::new();
    for it in &items {
        let (Some(Location::Remote), Some(p), Some(name)) = (
            it.location,
            it.session_id.as_deref().and_then(SessionId::parse),
            it.name.clone(),
        ) else {
            continue;
        };
        let (relay, engine, app) = (st.cluster.relay.clone(), st.engine.clone(), app.clone());
        let remote = p.node_tag() != st.cluster.tag;
        set.spawn(async move {
            if !remote || relay.ensure_channel_upstream(&app, p, &name).await.is_ok() {
                let _ = engine.link_channel(&app, p, &name, worker).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
    // `canReply` is granted by the publisher's node, for the whole cluster, and within the node
    // by the publisher's worker.
    for it in &items {
        let (Some(Location::Remote), true, Some(p), Some(name)) = (
            it.location,
            it.can_reply,
            it.session_id.as_deref().and_then(SessionId::parse),
            it.name.as_deref(),
        ) else {
            continue;
        };
        claim_reply(&st, p, name, worker).await;
    }
    let res = st
        .engine
        .call_on(st.engine.worker_of_str(&session), move |e, now| {
            e.datachannels_new(&app, &session, items, now)
        })
        .await??;
    Ok(Json(DataChannelsResponse {
        data_channels: res.into_iter().map(Into::into).collect(),
    })
    .into_response())
}

/// Claims the `canReply` grant of `publisher`'s channel `name` for worker `worker`: from the
/// publisher's node over the relay, then (channels of other nodes live on the primary worker)
/// from the worker that receives it.
async fn claim_reply(st: &ApiState, publisher: SessionId, name: &str, worker: usize) {
    if publisher.node_tag() != st.cluster.tag
        && !st.cluster.relay.claim_channel_reply(publisher, name).await
    {
        return;
    }
    st.engine.claim_channel_reply(publisher, name, worker).await;
}

/// `PUT datachannels/update`: grant or revoke `canReply`.
pub async fn datachannels_update(
    State(st): State<Arc<ApiState>>,
    Path((app, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = prologue(&st, &app, &session, &headers, body).await?;
    let items = channel_items(&bytes)?;
    // Granting `canReply` on a channel of another node's publisher: that node decides.
    for it in items.iter().filter(|it| it.can_reply) {
        let Some(id) = it.id else { continue };
        let (a, s) = (app.clone(), session.clone());
        let sub = st
            .engine
            .call_on(st.engine.worker_of_str(&session), move |e, _| {
                e.channel_subscription(&a, &s, id)
            })
            .await?;
        if let Some((p, name)) = sub {
            claim_reply(&st, p, &name, st.engine.worker_of_str(&session)).await;
        }
    }
    let res = st
        .engine
        .call_on(st.engine.worker_of_str(&session), move |e, _| {
            e.datachannels_update(&app, &session, items)
        })
        .await??;
    Ok(Json(DataChannelsResponse {
        data_channels: res.into_iter().map(Into::into).collect(),
    })
    .into_response())
}

/// `PUT datachannels/close`: by id, no SDP exchange.
pub async fn datachannels_close(
    State(st): State<Arc<ApiState>>,
    Path((app, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = prologue(&st, &app, &session, &headers, body).await?;
    let mut ids = Vec::new();
    for (i, d) in channel_items(&bytes)?.into_iter().enumerate() {
        ids.push(d.id.ok_or_else(|| {
            ApiError::decoding(format!(
                "JSON body validation error: dataChannels[{i}] needs id"
            ))
        })?);
    }
    let res = st
        .engine
        .call_on(st.engine.worker_of_str(&session), move |e, now| {
            e.datachannels_close(&app, &session, ids, now)
        })
        .await??;
    Ok(Json(DataChannelsResponse {
        data_channels: res.into_iter().map(Into::into).collect(),
    })
    .into_response())
}
