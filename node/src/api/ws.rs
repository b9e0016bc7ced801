//! `GET /v1/ws`: the rooms' WebSocket signalling, the thin shell over the protocol core (`ws/`).
//! Each participant is a Calls session underneath, made and negotiated with the same engine
//! operations the Calls API uses (the server writes every offer: a push of the client's audio
//! and video, pulls of the room's publishers, or the DataChannel section when there is nothing
//! to pull yet), so the admin API lists it and its tracks are pullable with Calls.
//!
//! A connection lives in one task: socket reads, the core's deadlines, a room tick (multistream
//! updates) and a close signal (the room was deleted) are one `select!`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;

use super::ApiState;
use super::auth_hook::{HookQuery, UserClaim, user_claim};
use super::rooms::{self, Participant, RedeemError};
use crate::engine::{
    ClientAnswer, LocalTrack, MAX_TRACKS_PER_CALL, OpError, RemoteTrack, SdpKind, TracksNew,
};
use crate::http::ConnSlot;
use crate::ids::SessionId;
use crate::rooms::{Direction, Role, RoomOptions};
use crate::ws::protocol::{
    self, ClientMsg, CloseReason, MAX_MESSAGE_BYTES, MediaPref, OfferConfig, ServerMsg,
};
use crate::ws::{Action, Core};

/// The track names a WebSocket publisher's session publishes.
pub const TRACK_NAMES: [&str; 2] = ["audio", "video"];

/// Upgrades to the signalling protocol. The claim header is read here (the socket has no
/// headers later) and only with `--trust-user-claim`.
pub async fn upgrade(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    slot: Option<Extension<ConnSlot>>,
    ws: WebSocketUpgrade,
) -> Response {
    let claim = user_claim(&headers, st.rooms.trust_user_claim);
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            // The socket holds its connection's place under the caps until it ends.
            let _slot = slot;
            run(st, socket, claim).await
        })
}

/// A joined participant.
struct Joined {
    app: String,
    room: String,
    client_id: String,
    role: Role,
    session: SessionId,
    multistream: bool,
    /// Publishers whose tracks this session pulled, with the mids they came on.
    pulled: HashMap<SessionId, Vec<String>>,
    /// The room's publishers at the first answer were pulled (or there were none); without
    /// multistream no later ones are.
    first_pull_done: bool,
}

/// Why the loop ended: a close to send, or the client left.
enum End {
    Close(CloseReason),
    Normal,
    Gone,
}

async fn run(st: Arc<ApiState>, socket: WebSocket, claim: Option<UserClaim>) {
    let (mut tx, mut rx) = socket.split();
    let mut core = Core::new(st.rooms.timers, Instant::now());
    let (close_tx, mut close_rx) = watch::channel(None::<CloseReason>);
    let mut joined: Option<Joined> = None;
    let mut tick = tokio::time::interval(rooms::ROOMS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        let deadline = core
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600));
        tokio::select! {
            msg = rx.next() => {
                let text = match msg {
                    Some(Err(e)) if is_too_big(&e) => break End::Close(CloseReason::MessageLimit),
                    None | Some(Err(_)) => break End::Gone,
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => break End::Close(CloseReason::JsonDecode),
                    Some(Ok(Message::Close(_))) => break End::Gone,
                    Some(Ok(_)) => continue,
                };
                let msg = match core.on_text(text.as_str(), Instant::now()) {
                    Ok(m) => m,
                    Err(r) => break End::Close(r),
                };
                // Only an answer moves the negotiation on; other messages (candidates, pongs)
                // leave the room's tracks to the tick, rather than each costing a look over
                // every participant of the node.
                let answered = matches!(msg, ClientMsg::Answer { .. } | ClientMsg::Update { .. });
                match handle(&st, msg, &mut joined, &claim, &close_tx).await {
                    Ok(Some(out)) => {
                        if send(&mut tx, &out).await.is_err() {
                            break End::Gone;
                        }
                        if matches!(out, ServerMsg::Offer { .. }) {
                            core.offer_sent(Instant::now());
                        }
                    }
                    Ok(None) => {}
                    Err(End::Normal) => break End::Normal,
                    Err(e) => break e,
                }
                if core.phase() == crate::ws::core::Phase::Closed {
                    break End::Normal;
                }
                if !answered {
                    continue;
                }
                // Right after an answer: the room's tracks, if any.
                match pull_new(&st, &mut joined, &core).await {
                    Ok(Some(out)) => {
                        if send(&mut tx, &out).await.is_err() {
                            break End::Gone;
                        }
                        core.update_sent(Instant::now());
                    }
                    Ok(None) => {}
                    Err(r) => break End::Close(r),
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let action = core.handle_timeout(Instant::now());
                if let Some(Action::Close(r)) = action {
                    break End::Close(r);
                }
                if action == Some(Action::SendPing)
                    && send(&mut tx, &ServerMsg::Ping).await.is_err()
                {
                    break End::Gone;
                }
            }
            changed = close_rx.changed() => {
                let reason = *close_rx.borrow();
                match (changed, reason) {
                    (Ok(()), Some(r)) => break End::Close(r),
                    (Ok(()), None) => {}
                    (Err(_), _) => break End::Close(CloseReason::InternalError),
                }
            }
            _ = tick.tick() => {
                match pull_new(&st, &mut joined, &core).await {
                    Ok(Some(out)) => {
                        if send(&mut tx, &out).await.is_err() {
                            break End::Gone;
                        }
                        core.update_sent(Instant::now());
                    }
                    Ok(None) => {}
                    Err(r) => break End::Close(r),
                }
            }
        }
    };
    if let Some(j) = joined {
        rooms_lock(&st).remove(&j.app, &j.client_id);
        let sid = j.session;
        let _ = st
            .engine
            .call_session(sid, move |e, now| {
                e.close_session(sid, now, "websocket participant left")
            })
            .await;
        st.ops.local.rooms.replace_all(&rooms::local_announces(&st));
    }
    st.rooms.count_closed(match end {
        End::Close(r) => r.reason(),
        End::Normal => "normal",
        End::Gone => "gone",
    });
    let frame = match end {
        End::Close(r) => Some(CloseFrame {
            code: r.code(),
            reason: r.reason().into(),
        }),
        End::Normal => Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        }),
        End::Gone => None,
    };
    if let Some(frame) = frame {
        let _ = tx.send(Message::Close(Some(frame))).await;
    }
    let _ = tx.close().await;
}

fn rooms_lock(st: &ApiState) -> std::sync::MutexGuard<'_, rooms::Participants> {
    st.rooms
        .participants
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

async fn send(
    tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    msg: &ServerMsg,
) -> Result<(), ()> {
    let text = serde_json::to_string(msg).map_err(|_| ())?;
    tx.send(Message::Text(text.into())).await.map_err(|_| ())
}

/// One client message; an answer to send back, if any.
async fn handle(
    st: &ApiState,
    msg: ClientMsg,
    joined: &mut Option<Joined>,
    claim: &Option<UserClaim>,
    close_tx: &watch::Sender<Option<CloseReason>>,
) -> Result<Option<ServerMsg>, End> {
    match msg {
        ClientMsg::Connect {
            token,
            role,
            room,
            client_id,
            audio,
            video,
            multistream,
        } => {
            protocol::check_codecs(audio.as_ref(), video.as_ref()).map_err(End::Close)?;
            let j = join(
                st,
                &token,
                role,
                room,
                client_id,
                claim,
                multistream,
                close_tx,
            )
            .await
            .map_err(End::Close)?;
            let offer = first_offer(st, &j, audio.as_ref(), video.as_ref()).await;
            let client_id = j.client_id.clone();
            let session = j.session.to_string();
            *joined = Some(j);
            let sdp = offer.map_err(End::Close)?;
            Ok(Some(ServerMsg::Offer {
                sdp,
                client_id,
                session_id: session,
                config: OfferConfig {
                    ice_servers: Vec::new(),
                },
            }))
        }
        ClientMsg::Answer { sdp } | ClientMsg::Update { sdp } => {
            let Some(j) = joined.as_mut() else {
                return Err(End::Close(CloseReason::JsonDecode));
            };
            apply_answer(st, j, sdp).await.map_err(End::Close)?;
            Ok(None)
        }
        ClientMsg::Candidate { .. } | ClientMsg::Pong => Ok(None),
        ClientMsg::Disconnect => Err(End::Normal),
    }
}

/// Checks the ticket, the room, the hook, the client id and the room's limit, consumes the
/// ticket, then makes the participant's session.
#[allow(clippy::too_many_arguments)]
async fn join(
    st: &ApiState,
    token: &str,
    role: Role,
    room: Option<String>,
    client_id: Option<String>,
    claim: &Option<UserClaim>,
    multistream: Option<bool>,
    close_tx: &watch::Sender<Option<CloseReason>>,
) -> Result<Joined, CloseReason> {
    let app = trackmesh_tokens::ticket_app_unverified(token).ok_or(CloseReason::InvalidToken)?;
    let secret = st.apps.secret(&app).ok_or(CloseReason::InvalidToken)?;
    let claims = trackmesh_tokens::verify_ticket(
        secret.as_bytes(),
        Some(&app),
        token,
        trackmesh_tokens::unix_now(),
    )
    .map_err(|e| match e {
        trackmesh_tokens::TokenError::Expired => CloseReason::ExpiredToken,
        _ => CloseReason::InvalidToken,
    })?;
    if room.as_ref().is_some_and(|r| *r != claims.room) {
        return Err(CloseReason::AuthenticationFailure);
    }
    let dir: Direction = serde_json::from_value(serde_json::Value::String(claims.dir.clone()))
        .map_err(|_| CloseReason::InvalidToken)?;
    if !dir.admits(role) {
        return Err(CloseReason::AuthenticationFailure);
    }
    let mine_before = rooms::local_count(st, &app, &claims.room);
    let summary = rooms::find(st, &app, &claims.room).ok_or(CloseReason::AuthenticationFailure)?;
    // A ticket for a room since deleted does not admit to a new room of the same id.
    if claims.room_created.is_some_and(|c| c != summary.created_ms) {
        return Err(CloseReason::AuthenticationFailure);
    }
    let direction = match role {
        Role::Upstream => "up",
        Role::Downstream => "down",
        Role::Sendrecv => "both",
    };
    let query = HookQuery {
        app: app.clone(),
        room: claims.room.clone(),
        user: claims.user.clone(),
        direction: direction.to_string(),
    };
    if !st.rooms.hook.check(&query).await.allows() {
        return Err(CloseReason::AuthenticationFailure);
    }
    let client_id = client_id
        .or_else(|| claim.as_ref().and_then(|c| c.clientid.clone()))
        .unwrap_or_else(|| crate::ids::random_hex(8));
    // It is echoed, used as a key and may label egress: the characters of a room id.
    if !crate::rooms::valid_room_id(&client_id) {
        return Err(CloseReason::JsonDecode);
    }
    if rooms_lock(st).has(&app, &client_id) {
        return Err(CloseReason::DuplicatedClient);
    }
    if summary.total >= summary.options.max_participants {
        return Err(CloseReason::ExceedMaxConnections);
    }
    // A participant is a session of the app: the same rate and quota as `sessions/new`, checked
    // before the ticket is used up so that a refused join can be retried with it.
    if st.limits.check_app(&app).is_err() {
        st.ops
            .rejects
            .count(crate::rejects::Port::Http, "session_rate_app");
        return Err(CloseReason::ExceedMaxConnections);
    }
    let held = st
        .engine
        .app_sessions(&app)
        .await
        .map_err(|_| CloseReason::InternalError)?;
    if held >= st.limits.per_app_quota {
        st.ops
            .rejects
            .count(crate::rejects::Port::Http, "app_session_quota");
        return Err(CloseReason::ExceedMaxConnections);
    }
    {
        let mut parts = rooms_lock(st);
        if parts.has(&app, &client_id) {
            return Err(CloseReason::DuplicatedClient);
        }
        let here = parts.in_room(&app, &claims.room).count() as u32;
        // Others' participants from gossip, with this node's counted fresh.
        if summary.total.saturating_sub(mine_before) + here >= summary.options.max_participants {
            return Err(CloseReason::ExceedMaxConnections);
        }
        parts.insert(
            client_id.clone(),
            Participant {
                app: app.clone(),
                room: claims.room.clone(),
                role,
                user: claims.user.clone(),
                session: None,
                publishing: false,
                created_ms: summary.created_ms,
                options: summary.options,
                since: std::time::Instant::now(),
                close: close_tx.clone(),
            },
        );
    }
    // The room may have been deleted while the hook was asked: a participant taken in after its
    // end would outlive it. Once in, a deletion finds it and closes it.
    if rooms::find(st, &app, &claims.room).is_none_or(|s| s.created_ms != summary.created_ms) {
        rooms_lock(st).remove(&app, &client_id);
        return Err(CloseReason::RoomClosed);
    }
    // The place is taken before the ticket is used up, so a join refused for want of one (two
    // joins racing for a room's last place, a client id taken meanwhile) can retry its ticket.
    let refused = match rooms::consume(st, &claims, token).await {
        Ok(()) => None,
        Err(RedeemError::Used) => Some(CloseReason::InvalidToken),
        // Not consumed: the ticket can be retried once the app's older tickets expire.
        Err(RedeemError::Full) => Some(CloseReason::ExceedMaxConnections),
        Err(RedeemError::IssuerUnreachable) => Some(CloseReason::AuthenticationFailure),
    };
    if let Some(reason) = refused {
        rooms_lock(st).remove(&app, &client_id);
        return Err(reason);
    }
    // Spread like Calls sessions: the least-loaded worker; every later call goes to the worker
    // the session id names.
    let (a, quota) = (app.clone(), st.limits.per_app_quota);
    // Counted again on every worker, as `sessions/new` does, for joins racing each other.
    let created = match st.engine.app_sessions(&app).await {
        Ok(held) => st
            .engine
            .call_placed(st.engine.place(), move |e, now| {
                if held >= quota {
                    return Ok(None);
                }
                e.create_session(&a, None, now).map(Some)
            })
            .await
            .map_err(|_| CloseReason::InternalError)
            .and_then(|r| r.map_err(|_| CloseReason::InternalError))
            .and_then(|r| r.ok_or(CloseReason::ExceedMaxConnections)),
        Err(_) => Err(CloseReason::InternalError),
    };
    let session = match created {
        Ok((sid, _)) => sid,
        Err(r) => {
            rooms_lock(st).remove(&app, &client_id);
            return Err(r);
        }
    };
    if let Some(p) = rooms_lock(st).get_mut(&app, &client_id) {
        p.session = Some(session);
    }
    if let Some(labels) = egress_labels_for(
        &app,
        &claims.room,
        &summary.options,
        role,
        claims.user.as_deref(),
        &client_id,
    ) {
        let (label_app, room, user, client) = labels;
        let labels = crate::engine::EgressLabels {
            app: label_app,
            room,
            user,
            client,
        };
        match st.engine.set_egress(session, Some(labels)).await {
            Ok(Ok(())) => {}
            // A room that asks for egress on a node without --nats still works, without egress.
            Ok(Err(e @ OpError::Unavailable(_))) => {
                tracing::warn!(%client_id, error = %e, "room audio egress not started")
            }
            // Labels it cannot carry (tickets are checked when issued; this is the backstop): a
            // room with egress does not take a publisher whose audio would not reach the bus.
            // Or the engine stopped (the node is going down; the close below then does nothing).
            // Either way the participant must not stay counted in its room.
            refused => {
                if let Ok(Err(e)) = &refused {
                    tracing::warn!(%client_id, error = %e, "room audio egress refused: join refused");
                }
                rooms_lock(st).remove(&app, &client_id);
                let _ = st
                    .engine
                    .call_session(session, move |e, now| {
                        e.close_session(session, now, "its room's audio egress was refused")
                    })
                    .await;
                return Err(CloseReason::InternalError);
            }
        }
    }
    Ok(Joined {
        app,
        room: claims.room,
        client_id,
        role,
        session,
        multistream: multistream.unwrap_or(false),
        pulled: HashMap::new(),
        first_pull_done: false,
    })
}

/// The labels a publisher's audio goes to the message bus with, when its room asks for audio
/// egress: `(app, room, user, client)`. The user is the ticket's, else empty: the client id is
/// the client's own choice, so it never takes the user's place, where it could pass for another
/// participant's user name.
pub fn egress_labels_for(
    app: &str,
    room: &str,
    options: &RoomOptions,
    role: Role,
    user: Option<&str>,
    client_id: &str,
) -> Option<(String, String, String, String)> {
    (options.audio_egress && role.sends()).then(|| {
        (
            app.to_string(),
            room.to_string(),
            user.unwrap_or_default().to_string(),
            client_id.to_string(),
        )
    })
}

/// The WebSocket layer refused a message or frame over [`MAX_MESSAGE_BYTES`]: the client is
/// told so (4404) rather than left with a socket that just ends.
fn is_too_big(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|cause| cause.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
}

fn op_reason(e: OpError) -> CloseReason {
    match e {
        OpError::InvalidSdp(_) | OpError::Decoding(_) => CloseReason::SdpParse,
        // The participant's own session ended (its tombstone answered).
        OpError::Gone(_) => CloseReason::SessionEnded,
        OpError::NotFound(_) => CloseReason::RoomClosed,
        _ => CloseReason::InternalError,
    }
}

/// The first offer: a publisher's push of its audio and video; a viewer's pulls of the room's
/// publishers, or the DataChannel section when there are none yet (so the transport comes up
/// and later tracks come as `update`).
async fn first_offer(
    st: &ApiState,
    j: &Joined,
    audio: Option<&MediaPref>,
    video: Option<&MediaPref>,
) -> Result<String, CloseReason> {
    let (app, sid, session) = (j.app.clone(), j.session.to_string(), j.session);
    if j.role.sends() {
        let mut tracks = Vec::new();
        for (name, kind, pref) in [
            (TRACK_NAMES[0], str0m::media::MediaKind::Audio, audio),
            (TRACK_NAMES[1], str0m::media::MediaKind::Video, video),
        ] {
            if pref.is_none_or(MediaPref::wanted) {
                tracks.push(LocalTrack {
                    mid: None,
                    track_name: Some(name.to_string()),
                    kind: Some(kind),
                    bidirectional: false,
                });
            }
        }
        if tracks.is_empty() {
            return Err(CloseReason::UnknownCodec);
        }
        let op = TracksNew::Local {
            offer: None,
            tracks,
            auto_discover: false,
        };
        let res = st
            .engine
            .call_session(session, move |e, now| e.tracks_new(&app, &sid, op, now))
            .await
            .map_err(|_| CloseReason::InternalError)?
            .map_err(op_reason)?;
        return res
            .description
            .filter(|d| d.kind == SdpKind::Offer)
            .map(|d| d.sdp)
            .ok_or(CloseReason::InternalError);
    }
    let res = st
        .engine
        .call_session(session, move |e, now| {
            e.datachannels_establish(&app, &sid, now)
        })
        .await
        .map_err(|_| CloseReason::InternalError)?
        .map_err(op_reason)?;
    res.offer.map(|d| d.sdp).ok_or(CloseReason::InternalError)
}

/// Applies the client's answer (to the first offer or an update).
async fn apply_answer(st: &ApiState, j: &mut Joined, sdp: String) -> Result<(), CloseReason> {
    // The bounds every SDP the node takes is held to (Calls, WHIP): applying an answer runs on
    // the engine task, and its cost grows faster than its size.
    if crate::engine::sdp_limits::check(&sdp).is_err() {
        return Err(CloseReason::SdpParse);
    }
    let twcc = st.twcc;
    let answer = super::calls::off_engine(st, move || ClientAnswer::parse_for(&sdp, twcc))
        .await
        .map_err(|_| CloseReason::InternalError)?;
    let (app, sid, session) = (j.app.clone(), j.session.to_string(), j.session);
    st.engine
        .call_session(session, move |e, now| {
            e.renegotiate(&app, &sid, answer, now)
        })
        .await
        .map_err(|_| CloseReason::InternalError)?
        .map_err(op_reason)?;
    if j.role.sends()
        && let Some(p) = rooms_lock(st).get_mut(&j.app, &j.client_id)
    {
        p.publishing = true;
    }
    Ok(())
}

/// The room's publishers this participant does not receive yet, pulled in one `update` offer:
/// after the first answer always, later only with multistream.
async fn pull_new(
    st: &ApiState,
    joined: &mut Option<Joined>,
    core: &Core,
) -> Result<Option<ServerMsg>, CloseReason> {
    let Some(j) = joined.as_mut() else {
        return Ok(None);
    };
    if !j.role.receives()
        || core.phase() != crate::ws::core::Phase::Live
        || core.update_pending()
        || (j.first_pull_done && !j.multistream)
    {
        return Ok(None);
    }
    let Some(summary) = rooms::find(st, &j.app, &j.room) else {
        return Ok(None);
    };
    let fresh: Vec<SessionId> = summary
        .publishers
        .iter()
        .copied()
        .filter(|p| *p != j.session && !j.pulled.contains_key(p))
        .take(crate::rooms::announce::MAX_PUBLISHERS)
        .collect();
    if fresh.is_empty() {
        j.first_pull_done = true;
        if !j.multistream {
            return Ok(None);
        }
        return close_gone(st, j, &summary.publishers).await;
    }
    let wanted: Vec<(SessionId, String)> = fresh
        .iter()
        .flat_map(|p| TRACK_NAMES.iter().map(move |t| (*p, t.to_string())))
        .collect();
    super::cluster::resolve_remote(
        st,
        &j.app,
        st.engine.worker_of(j.session),
        wanted.iter().cloned(),
    )
    .await;
    let op = TracksNew::Remote {
        tracks: wanted
            .into_iter()
            .map(|(s, t)| RemoteTrack {
                session_id: Some(s.to_string()),
                track_name: Some(t),
                mid: None,
                simulcast: None,
            })
            .collect(),
    };
    let (app, sid, session) = (j.app.clone(), j.session.to_string(), j.session);
    let res = st
        .engine
        .call_session(session, move |e, now| e.tracks_new(&app, &sid, op, now))
        .await
        .map_err(|_| CloseReason::InternalError)?
        .map_err(op_reason)?;
    // Without multistream, the publishers present at the first answer are all this participant
    // gets: once one of them was pulled (or none was there), it stops looking.
    j.first_pull_done = res.description.is_some();
    // A publisher counts as received once one of its tracks was pulled; one whose tracks could
    // not be reached yet (its relay link still coming up) is tried again on the next tick.
    for p in fresh {
        let id = p.to_string();
        let mids: Vec<String> = res
            .tracks
            .iter()
            .filter(|t| t.error.is_none() && !t.mid.is_empty())
            .filter(|t| t.session_id.as_deref() == Some(&id))
            .map(|t| t.mid.clone())
            .collect();
        if !mids.is_empty() {
            j.pulled.insert(p, mids);
        }
    }
    Ok(res
        .description
        .filter(|d| d.kind == SdpKind::Offer)
        .map(|d| ServerMsg::Update { sdp: d.sdp }))
}

/// Publishers this participant receives that left the room: their sections are offered inactive
/// in one `update` (multistream only).
async fn close_gone(
    st: &ApiState,
    j: &mut Joined,
    publishers: &[SessionId],
) -> Result<Option<ServerMsg>, CloseReason> {
    let mids = take_gone(&mut j.pulled, publishers, MAX_TRACKS_PER_CALL);
    if mids.is_empty() {
        return Ok(None);
    }
    let (app, sid, session) = (j.app.clone(), j.session.to_string(), j.session);
    let offer = st
        .engine
        .call_session(session, move |e, now| {
            e.close_pulls_offer(&app, &sid, &mids, now)
        })
        .await
        .map_err(|_| CloseReason::InternalError)?
        .map_err(op_reason)?;
    Ok(offer.map(|d| ServerMsg::Update { sdp: d.sdp }))
}

/// The mids of publishers in `pulled` that are no longer among `publishers`, taken out of
/// `pulled`: as many publishers as fit in `max` mids (one close offer's worth; at least one), the
/// others are left for the next tick, whose `update` follows the answer to this one.
fn take_gone(
    pulled: &mut HashMap<SessionId, Vec<String>>,
    publishers: &[SessionId],
    max: usize,
) -> Vec<String> {
    let mut gone: Vec<SessionId> = pulled
        .keys()
        .copied()
        .filter(|p| !publishers.contains(p))
        .collect();
    gone.sort();
    let mut mids = Vec::new();
    for p in gone {
        let fits = pulled
            .get(&p)
            .is_some_and(|m| mids.is_empty() || mids.len() + m.len() <= max);
        if !fits {
            break;
        }
        mids.extend(pulled.remove(&p).unwrap_or_default());
    }
    mids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_that_left_are_closed_one_offer_at_a_time() {
        let tag = crate::ids::NodeTag::random();
        let ids: Vec<SessionId> = (0..40).map(|_| SessionId::new(tag)).collect();
        let mut pulled: HashMap<SessionId, Vec<String>> = ids
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, vec![format!("{}", 2 * i), format!("{}", 2 * i + 1)]))
            .collect();
        // Five stay; 35 left, 70 mids: more than one close offer takes.
        let staying = &ids[..5];
        let first = take_gone(&mut pulled, staying, MAX_TRACKS_PER_CALL);
        assert_eq!(first.len(), 64, "32 publishers' two mids each");
        let second = take_gone(&mut pulled, staying, MAX_TRACKS_PER_CALL);
        assert_eq!(second.len(), 6, "the other three, on the next tick");
        assert!(take_gone(&mut pulled, staying, MAX_TRACKS_PER_CALL).is_empty());
        let mut all: Vec<String> = first.into_iter().chain(second).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 70, "every mid of those who left, once");
        assert_eq!(pulled.len(), 5, "the staying publishers are still received");
        assert!(staying.iter().all(|p| pulled.contains_key(p)));
    }

    #[test]
    fn an_operation_on_an_ended_session_closes_with_session_ended() {
        assert_eq!(
            op_reason(OpError::Gone("closed".into())).code(),
            4502,
            "the documented SESSION-ENDED, not ROOM-CLOSED"
        );
        assert_eq!(op_reason(OpError::NotFound("x".into())).code(), 4501);
        assert_eq!(op_reason(OpError::InvalidSdp("x".into())).code(), 4402);
    }

    #[test]
    fn only_publishers_of_egress_rooms_get_labels() {
        let egress = RoomOptions {
            audio_egress: true,
            ..RoomOptions::default()
        };
        assert_eq!(
            egress_labels_for("a", "r", &egress, Role::Upstream, Some("u"), "c"),
            Some(("a".into(), "r".into(), "u".into(), "c".into()))
        );
        assert_eq!(
            egress_labels_for("a", "r", &egress, Role::Sendrecv, None, "alice"),
            Some(("a".into(), "r".into(), String::new(), "alice".into())),
            "no user: none, whatever the client calls itself"
        );
        assert_eq!(
            egress_labels_for("a", "r", &egress, Role::Downstream, Some("u"), "c"),
            None
        );
        assert_eq!(
            egress_labels_for("a", "r", &RoomOptions::default(), Role::Upstream, None, "c"),
            None
        );
    }
}
