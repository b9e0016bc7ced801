//! The Calls API operations on the engine: sessions/new, tracks/new (push, pull, autoDiscover,
//! SFU-offer), renegotiate, tracks/update, tracks/close and the session view.
//!
//! Every operation runs to completion on the engine (they are serialized per node), validates all
//! input first and reports per-track failures in the items, as Calls does.

use std::time::Instant;

use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Candidate, IceCreds, Rtc};

use super::client_sdp::{ClientAnswer, ClientOffer};
use super::sdp::candidates_in_every_section;
use super::session::{Location, Session, TrackEntry};
use super::{Engine, OpError, Publication, Sink, Source, TrackKey};
use crate::ids::{SessionId, random_hex};

/// Most tracks in one API call (Calls' limit).
pub const MAX_TRACKS_PER_CALL: usize = 64;
/// Most active tracks (published plus pulled) one session may hold.
pub const MAX_ACTIVE_TRACKS_PER_SESSION: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpKind {
    Offer,
    Answer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDesc {
    pub kind: SdpKind,
    pub sdp: String,
}

#[derive(Debug, Clone, Default)]
pub struct LocalTrack {
    pub mid: Option<String>,
    pub track_name: Option<String>,
    pub kind: Option<MediaKind>,
    pub bidirectional: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RemoteTrack {
    pub session_id: Option<String>,
    pub track_name: Option<String>,
    /// `#<localTrackName>`: send into the transceiver that carries that local track.
    pub mid: Option<String>,
}

#[derive(Debug)]
pub enum TracksNew {
    Local {
        offer: Option<ClientOffer>,
        tracks: Vec<LocalTrack>,
        auto_discover: bool,
    },
    Remote {
        tracks: Vec<RemoteTrack>,
    },
    /// Only an offer: a plain renegotiation started by the client.
    OfferOnly {
        offer: ClientOffer,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackResult {
    pub location: Option<Location>,
    pub session_id: Option<String>,
    pub track_name: Option<String>,
    pub mid: String,
    pub error: Option<(&'static str, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracksNewResult {
    pub requires_immediate_renegotiation: bool,
    pub description: Option<SessionDesc>,
    pub tracks: Vec<TrackResult>,
}

#[derive(Debug, Clone)]
pub struct UpdateTrack {
    pub mid: Option<String>,
    pub session_id: Option<String>,
    pub track_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseResult {
    pub description: Option<SessionDesc>,
    pub tracks: Vec<TrackResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub session_id: SessionId,
    pub app: String,
    pub connected: bool,
    pub tracks: Vec<TrackStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationSummary {
    pub session_id: SessionId,
    pub track_name: String,
    pub kind: MediaKind,
    pub local_subscribers: usize,
    /// Relay downstream ids (the relay layer maps them to nodes).
    pub downstreams: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackStatus {
    pub location: Location,
    pub mid: String,
    pub track_name: String,
    pub session_id: Option<String>,
    pub active: bool,
}

const NOT_FOUND_TRACK: &str = "Track not found on remote peer. Make sure the publisher peer is connected and sending packets for this track";

fn item_error(code: &'static str, desc: impl Into<String>) -> Option<(&'static str, String)> {
    Some((code, desc.into()))
}

fn answer_desc(answer: SdpAnswer) -> SessionDesc {
    SessionDesc {
        kind: SdpKind::Answer,
        sdp: candidates_in_every_section(&answer.to_sdp_string()),
    }
}

/// Packets of resend history kept per outgoing video stream.
const SEND_BUFFER_VIDEO: usize = 256;
/// Packets kept per outgoing audio stream (str0m's default is 50).
const SEND_BUFFER_AUDIO: usize = 16;

impl Engine {
    /// `POST sessions/new`, optionally with an offer (the older Calls flow).
    pub fn create_session(
        &mut self,
        app: &str,
        offer: Option<ClientOffer>,
        now: Instant,
    ) -> Result<(SessionId, Option<SessionDesc>), OpError> {
        if self.sessions.len() >= self.cfg.max_sessions {
            return Err(OpError::Unavailable(
                "this node holds its maximum number of sessions".into(),
            ));
        }
        let offer = offer.map(|o| o.parsed).transpose()?;
        let id = self.new_session_id();
        let mut ufrag = random_hex(4);
        while self.demux.has_ufrag(&ufrag) {
            ufrag = random_hex(4);
        }
        let mut config = Rtc::builder()
            .set_ice_lite(true)
            .set_local_ice_credentials(IceCreds {
                ufrag: ufrag.clone(),
                pass: random_hex(16),
            })
            // Stats events carry the NACK counts the metrics report.
            .set_stats_interval(Some(std::time::Duration::from_secs(2)))
            // Resend history per video stream: str0m's default of 1000 packets is 8 s at
            // 1 Mbit/s, about 1.4 MB per subscriber when full. 256 packets still cover a large
            // keyframe (~300 KB) and NACKs over any sane round trip (0.8 s even at 3 Mbit/s).
            .set_send_buffer_video(SEND_BUFFER_VIDEO)
            // Audio is not NACKed by browsers (Opus has its own loss concealment): the buffer only
            // holds a written frame until it is sent. Each slot costs about 1.4 KB.
            .set_send_buffer_audio(SEND_BUFFER_AUDIO);
        if let Some(cert) = &self.cert {
            config = config.set_dtls_cert(cert.clone());
        }
        let mut rtc = config.build(now);
        let candidate = Candidate::host(self.cfg.candidate_addr, "udp").map_err(|e| {
            OpError::Internal(format!("media address unusable as ICE candidate: {e}"))
        })?;
        rtc.add_local_candidate(candidate);
        let mut session = Session::new(id, app.to_string(), rtc, ufrag.clone(), now);
        let answer = match offer {
            Some(offer) => {
                let answer = session
                    .rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .map_err(|e| OpError::InvalidSdp(format!("offer not accepted: {e}")))?;
                session.negotiated = true;
                Some(answer_desc(answer))
            }
            None => None,
        };
        self.demux.add_session(id, &ufrag);
        *self.app_sessions.entry(app.to_string()).or_insert(0) += 1;
        self.sessions.insert(id, session);
        self.drain(id, now);
        self.process_work(now);
        tracing::info!(session = %id, app, "session created");
        Ok((id, answer))
    }

    fn new_session_id(&self) -> SessionId {
        // 96 random bits: a collision is practically impossible, but never hand out a live id.
        loop {
            let id = SessionId::new(self.cfg.node_tag);
            if !self.sessions.contains_key(&id) && !self.tombstones.contains_key(&id) {
                return id;
            }
        }
    }

    /// Finds a session of this app, distinguishing never-existed (404) from closed (410).
    fn lookup(&self, app: &str, session_id: &str) -> Result<SessionId, OpError> {
        let not_found = || OpError::NotFound(format!("session {session_id} not found"));
        let sid = SessionId::parse(session_id).ok_or_else(not_found)?;
        match self.sessions.get(&sid) {
            Some(s) if s.app == app => Ok(sid),
            Some(_) => Err(not_found()),
            None if self.tombstones.contains_key(&sid) => Err(OpError::Gone(
                "Session appears to be disconnected. Please check if the PeerConnection is connected."
                    .into(),
            )),
            None => Err(not_found()),
        }
    }

    /// Whether an API call on this session must wait for its PeerConnection to connect: not
    /// before the first exchange (it creates the transport), nor while the SFU's offer waits for
    /// its answer (the answer is what lets it connect).
    pub fn must_wait_for_connection(&self, app: &str, session_id: &str) -> Result<bool, OpError> {
        let sid = self.lookup(app, session_id)?;
        let s = &self.sessions[&sid];
        Ok(s.negotiated && s.pending.is_none() && !s.connected)
    }

    pub fn tracks_new(
        &mut self,
        app: &str,
        session_id: &str,
        req: TracksNew,
        now: Instant,
    ) -> Result<TracksNewResult, OpError> {
        let sid = self.lookup(app, session_id)?;
        let count = match &req {
            TracksNew::Local { tracks, .. } => tracks.len(),
            TracksNew::Remote { tracks } => tracks.len(),
            TracksNew::OfferOnly { .. } => 0,
        };
        if count > MAX_TRACKS_PER_CALL {
            return Err(OpError::InvalidParams(format!(
                "at most {MAX_TRACKS_PER_CALL} tracks per request, got {count}"
            )));
        }
        let active =
            self.sessions[&sid].local_by_mid.len() + self.sessions[&sid].remote_by_mid.len();
        if active + count > MAX_ACTIVE_TRACKS_PER_SESSION {
            return Err(OpError::InvalidParams(format!(
                "a session holds at most {MAX_ACTIVE_TRACKS_PER_SESSION} active tracks"
            )));
        }
        if self.sessions[&sid].pending.is_some() {
            return Err(OpError::InvalidSdp(
                "the previous SFU offer has not been answered: call renegotiate first".into(),
            ));
        }
        let result = match req {
            TracksNew::Local {
                offer: Some(offer),
                tracks,
                auto_discover,
            } => self.push_with_offer(sid, offer, tracks, auto_discover, now),
            TracksNew::Local {
                offer: None,
                tracks,
                auto_discover: _,
            } => self.push_sfu_offer(sid, tracks, now),
            TracksNew::Remote { tracks } => self.pull(sid, tracks, now),
            TracksNew::OfferOnly { offer } => {
                self.push_with_offer(sid, offer, Vec::new(), false, now)
            }
        };
        self.drain(sid, now);
        self.process_work(now);
        result
    }

    /// Push with the client's offer: accept it, publish the listed (or discovered) mids.
    fn push_with_offer(
        &mut self,
        sid: SessionId,
        offer: ClientOffer,
        tracks: Vec<LocalTrack>,
        auto_discover: bool,
        now: Instant,
    ) -> Result<TracksNewResult, OpError> {
        let ClientOffer {
            sections: offered,
            parsed,
        } = offer;
        let offer = parsed?;
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        let answer = s
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| OpError::InvalidSdp(format!("offer not accepted: {e}")))?;
        s.negotiated = true;

        let mut results = Vec::new();
        for t in tracks {
            let Some(mid_str) = t.mid.filter(|m| !m.is_empty()) else {
                results.push(TrackResult {
                    location: Some(Location::Local),
                    track_name: t.track_name,
                    error: item_error(
                        "invalid_params",
                        "mid is required when pushing with an offer",
                    ),
                    ..TrackResult::default()
                });
                continue;
            };
            let Some(name) = t.track_name.filter(|n| !n.is_empty()) else {
                results.push(TrackResult {
                    location: Some(Location::Local),
                    mid: mid_str,
                    error: item_error("invalid_params", "trackName is required"),
                    ..TrackResult::default()
                });
                continue;
            };
            let mid = Mid::from(mid_str.as_str());
            let outcome = self.publish(sid, mid, &name, now);
            results.push(TrackResult {
                location: Some(Location::Local),
                track_name: Some(name),
                mid: if outcome.is_ok() {
                    mid_str
                } else {
                    String::new()
                },
                error: outcome.err(),
                ..TrackResult::default()
            });
        }
        if auto_discover {
            // Every m-section the client sends on that carries no track yet gets a name.
            let sending = offered
                .into_iter()
                .filter(|m| m.client_sends && !m.rejected && !m.mid.is_empty());
            for m in sending {
                let mid = Mid::from(m.mid.as_str());
                let known = self.sessions.get(&sid).is_some_and(|s| {
                    s.local_by_mid.contains_key(&mid)
                        || s.remote_by_mid.contains_key(&mid)
                        || s.tracks.iter().any(|t| t.mid == mid && !t.closed)
                });
                if known {
                    continue;
                }
                let name = random_hex(16);
                let outcome = self.publish(sid, mid, &name, now);
                results.push(TrackResult {
                    location: Some(Location::Local),
                    track_name: Some(name),
                    mid: if outcome.is_ok() {
                        mid.to_string()
                    } else {
                        String::new()
                    },
                    error: outcome.err(),
                    ..TrackResult::default()
                });
            }
        }
        Ok(TracksNewResult {
            requires_immediate_renegotiation: false,
            description: Some(answer_desc(answer)),
            tracks: results,
        })
    }

    /// Registers `mid` of session `sid` as the publication `name`.
    fn publish(
        &mut self,
        sid: SessionId,
        mid: Mid,
        name: &str,
        now: Instant,
    ) -> Result<(), (&'static str, String)> {
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or(("internal_error", "session vanished".to_string()))?;
        let app = s.app.clone();
        let Some(media) = s.rtc.media(mid) else {
            return Err((
                "invalid_params",
                format!("mid {mid} is not in the session description"),
            ));
        };
        let kind = media.kind();
        if !media.direction().is_receiving() {
            return Err((
                "invalid_params",
                format!("mid {mid} does not send media to the SFU"),
            ));
        }
        if s.active_track_named(name).is_some() {
            return Err((
                "repeated_local_track_error",
                format!("track {name} is already published"),
            ));
        }
        if s.local_by_mid.contains_key(&mid) || s.remote_by_mid.contains_key(&mid) {
            return Err((
                "invalid_params",
                format!("mid {mid} already carries a track"),
            ));
        }
        let entry = TrackEntry {
            location: Location::Local,
            mid,
            track_name: name.to_string(),
            remote: None,
            closed: false,
        };
        if !s.push_track(entry) {
            return Err((
                "invalid_params",
                "too many tracks in this session".to_string(),
            ));
        }
        s.local_by_mid.insert(mid, name.to_string());
        self.publications.insert(
            (sid, name.to_string()),
            Publication::new(&app, Source::Session(mid), kind, None, now),
        );
        tracing::info!(session = %sid, track = name, %mid, ?kind, "track published");
        Ok(())
    }

    /// Push without an offer: the SFU adds transceivers and offers them (Calls requires `kind`;
    /// `bidirectionalMediaStream` makes them sendrecv so they can also carry a pulled track).
    fn push_sfu_offer(
        &mut self,
        sid: SessionId,
        tracks: Vec<LocalTrack>,
        now: Instant,
    ) -> Result<TracksNewResult, OpError> {
        if tracks.is_empty() {
            return Err(OpError::InvalidParams(
                "no tracks and no sessionDescription".into(),
            ));
        }
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        let app = s.app.clone();
        let mut results = Vec::new();
        let mut sdp = s.rtc.sdp_api();
        let mut added = Vec::new();
        for t in tracks {
            let name = t.track_name.filter(|n| !n.is_empty());
            match (name, t.kind) {
                (Some(name), Some(kind)) => {
                    let dir = if t.bidirectional {
                        Direction::SendRecv
                    } else {
                        Direction::RecvOnly
                    };
                    let mid = sdp.add_media(kind, dir, None, None, None);
                    added.push((mid, name.clone(), kind));
                    results.push(TrackResult {
                        location: Some(Location::Local),
                        track_name: Some(name),
                        mid: mid.to_string(),
                        ..TrackResult::default()
                    });
                }
                (name, _) => results.push(TrackResult {
                    location: Some(Location::Local),
                    track_name: name,
                    error: item_error(
                        "invalid_params",
                        "trackName and kind are required when the SFU writes the offer",
                    ),
                    ..TrackResult::default()
                }),
            }
        }
        let Some((offer, pending)) = sdp.apply() else {
            return Ok(TracksNewResult {
                requires_immediate_renegotiation: false,
                description: None,
                tracks: results,
            });
        };
        s.pending = Some(pending);
        s.negotiated = true;
        for (mid, name, kind) in added {
            s.push_track(TrackEntry {
                location: Location::Local,
                mid,
                track_name: name.clone(),
                remote: None,
                closed: false,
            });
            s.local_by_mid.insert(mid, name.clone());
            self.publications.insert(
                (sid, name),
                Publication::new(&app, Source::Session(mid), kind, None, now),
            );
        }
        Ok(TracksNewResult {
            requires_immediate_renegotiation: true,
            description: Some(SessionDesc {
                kind: SdpKind::Offer,
                sdp: candidates_in_every_section(&offer.to_sdp_string()),
            }),
            tracks: results,
        })
    }

    /// Pull: one new sendonly transceiver per found publication, offered by the SFU.
    fn pull(
        &mut self,
        sid: SessionId,
        tracks: Vec<RemoteTrack>,
        now: Instant,
    ) -> Result<TracksNewResult, OpError> {
        let app = self.sessions[&sid].app.clone();
        let mut results = Vec::new();
        // (result index, publication, kind) of the items that need a new transceiver.
        let mut wanted: Vec<(usize, TrackKey, MediaKind)> = Vec::new();
        let mut into_existing: Vec<(usize, TrackKey, Mid)> = Vec::new();
        for t in tracks {
            let mut r = TrackResult {
                location: None,
                session_id: t.session_id.clone(),
                track_name: t.track_name.clone(),
                ..TrackResult::default()
            };
            let (Some(pub_session), Some(name)) =
                (t.session_id.as_deref(), t.track_name.as_deref())
            else {
                r.error = item_error(
                    "invalid_params",
                    "sessionId and trackName are required to pull",
                );
                results.push(r);
                continue;
            };
            // A publication of this app, local or relayed from another node.
            let key = SessionId::parse(pub_session).map(|p| (p, name.to_string()));
            let found = key.and_then(|k| {
                let kind = self.publications.get(&k).filter(|p| *p.app == *app)?.kind;
                Some((k, kind))
            });
            let Some((key, kind)) = found else {
                r.error = item_error("not_found_track_error", NOT_FOUND_TRACK);
                results.push(r);
                continue;
            };
            if let Some(local) = t.mid.as_deref().and_then(|m| m.strip_prefix('#')) {
                let s = &self.sessions[&sid];
                match s.active_track_named(local).map(|e| e.mid) {
                    Some(mid)
                        if s.rtc
                            .media(mid)
                            .is_some_and(|m| m.direction() == Direction::SendRecv)
                            && !s.remote_by_mid.contains_key(&mid) =>
                    {
                        into_existing.push((results.len(), key, mid));
                    }
                    _ => {
                        r.error = item_error(
                            "invalid_params",
                            format!("#{local} is not a bidirectional local track of this session"),
                        );
                    }
                }
                results.push(r);
                continue;
            }
            wanted.push((results.len(), key, kind));
            results.push(r);
        }

        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        let mut offer = None;
        if !wanted.is_empty() {
            let mut sdp = s.rtc.sdp_api();
            let mut mids = Vec::new();
            for (_, key, kind) in &wanted {
                // msid: the publisher's session as stream id, the track name as track id.
                mids.push(sdp.add_media(
                    *kind,
                    Direction::SendOnly,
                    Some(key.0.to_string()),
                    Some(key.1.clone()),
                    None,
                ));
            }
            if let Some((o, pending)) = sdp.apply() {
                s.pending = Some(pending);
                s.negotiated = true;
                offer = Some(SessionDesc {
                    kind: SdpKind::Offer,
                    sdp: candidates_in_every_section(&o.to_sdp_string()),
                });
            }
            for ((i, key, _), mid) in wanted.into_iter().zip(mids) {
                results[i].mid = mid.to_string();
                self.subscribe(sid, mid, key, now);
            }
        }
        for (i, key, mid) in into_existing {
            results[i].mid = mid.to_string();
            self.subscribe(sid, mid, key, now);
            // The transceiver is already negotiated: media can start now.
            self.request_keyframes_for(sid, now);
        }
        Ok(TracksNewResult {
            requires_immediate_renegotiation: offer.is_some(),
            description: offer,
            tracks: results,
        })
    }

    fn subscribe(&mut self, sid: SessionId, mid: Mid, key: TrackKey, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.active_entry_mut(mid).is_none() {
            s.push_track(TrackEntry {
                location: Location::Remote,
                mid,
                track_name: key.1.clone(),
                remote: Some(key.clone()),
                closed: false,
            });
        }
        s.remote_by_mid.insert(mid, key.clone());
        if let Some(p) = self.publications.get_mut(&key) {
            p.subscribers.push(Sink::Session(sid, mid));
            p.unused_since = None;
        }
        self.await_keyframe(sid, mid, &key, now);
        tracing::info!(session = %sid, %mid, publisher = %key.0, track = %key.1, "track pulled");
    }

    fn unsubscribe(&mut self, sid: SessionId, mid: Mid, now: Instant) {
        let Some(key) = self
            .sessions
            .get_mut(&sid)
            .and_then(|s| s.remote_by_mid.remove(&mid))
        else {
            return;
        };
        if let Some(p) = self.publications.get_mut(&key) {
            p.subscribers.retain(|k| *k != Sink::Session(sid, mid));
            if p.subscribers.is_empty() {
                p.unused_since = Some(now);
            }
        }
    }

    /// `PUT renegotiate`: the client's answer to the SFU's last offer.
    pub fn renegotiate(
        &mut self,
        app: &str,
        session_id: &str,
        answer: ClientAnswer,
        now: Instant,
    ) -> Result<(), OpError> {
        let sid = self.lookup(app, session_id)?;
        let answer = answer.parsed?;
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        let Some(pending) = s.pending.take() else {
            return Err(OpError::InvalidSdp(
                "no SFU offer is waiting for an answer".into(),
            ));
        };
        s.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| OpError::InvalidSdp(format!("answer not accepted: {e}")))?;
        let connected = s.connected;
        self.drain(sid, now);
        if connected {
            self.request_keyframes_for(sid, now);
        }
        self.process_work(now);
        Ok(())
    }

    /// `PUT tracks/update`: points existing receiving mids at other publications.
    pub fn tracks_update(
        &mut self,
        app: &str,
        session_id: &str,
        tracks: Vec<UpdateTrack>,
        now: Instant,
    ) -> Result<Vec<TrackResult>, OpError> {
        let sid = self.lookup(app, session_id)?;
        if tracks.is_empty() || tracks.len() > MAX_TRACKS_PER_CALL {
            return Err(OpError::InvalidParams(format!(
                "between 1 and {MAX_TRACKS_PER_CALL} tracks per request, got {}",
                tracks.len()
            )));
        }
        let mut results = Vec::new();
        for t in tracks {
            let mut r = TrackResult {
                session_id: t.session_id.clone(),
                track_name: t.track_name.clone(),
                mid: t.mid.clone().unwrap_or_default(),
                ..TrackResult::default()
            };
            let mid = t.mid.as_deref().map(Mid::from);
            let current = mid.and_then(|m| {
                self.sessions[&sid]
                    .tracks
                    .iter()
                    .find(|e| e.mid == m && !e.closed && e.location == Location::Remote)
                    .map(|e| e.mid)
            });
            let Some(mid) = current else {
                r.error = item_error(
                    "update_track_error",
                    "mid is not a pulled track of this session",
                );
                r.mid = String::new();
                results.push(r);
                continue;
            };
            let key = match (
                t.session_id.as_deref().and_then(SessionId::parse),
                t.track_name,
            ) {
                (Some(p), Some(name)) => (p, name),
                _ => {
                    r.error = item_error("not_found_track_error", NOT_FOUND_TRACK);
                    r.mid = String::new();
                    results.push(r);
                    continue;
                }
            };
            let want_kind = self.sessions[&sid].rtc.media(mid).map(|m| m.kind());
            match self.publications.get(&key).filter(|p| *p.app == *app) {
                Some(p) if Some(p.kind) == want_kind => {}
                Some(_) => {
                    r.error = item_error(
                        "update_track_error",
                        "the publication's kind differs from the transceiver's",
                    );
                    r.mid = String::new();
                    results.push(r);
                    continue;
                }
                None => {
                    r.error = item_error("not_found_track_error", NOT_FOUND_TRACK);
                    r.mid = String::new();
                    results.push(r);
                    continue;
                }
            }
            self.unsubscribe(sid, mid, now);
            if let Some(e) = self
                .sessions
                .get_mut(&sid)
                .and_then(|s| s.active_entry_mut(mid))
            {
                e.track_name = key.1.clone();
                e.remote = Some(key.clone());
            }
            self.subscribe(sid, mid, key.clone(), now);
            self.serve_cached_keyframe(sid, mid, &key, now);
            self.request_keyframe(&key, now);
            results.push(r);
        }
        self.process_work(now);
        Ok(results)
    }

    /// `PUT tracks/close`: by the mids in the body (not by what the SDP shows). Without `force`
    /// the client's offer is answered.
    pub fn tracks_close(
        &mut self,
        app: &str,
        session_id: &str,
        mids: Vec<String>,
        force: bool,
        offer: Option<ClientOffer>,
        now: Instant,
    ) -> Result<CloseResult, OpError> {
        let sid = self.lookup(app, session_id)?;
        if mids.is_empty() {
            return Err(OpError::InvalidParams(
                "tracks must list at least one mid".into(),
            ));
        }
        if mids.len() > MAX_TRACKS_PER_CALL {
            return Err(OpError::InvalidParams(format!(
                "at most {MAX_TRACKS_PER_CALL} tracks per request, got {}",
                mids.len()
            )));
        }
        let offer = match (force, offer) {
            // The API made the listed mids inactive before parsing (ClientOffer::parse_closing).
            (_, Some(o)) => Some(o.parsed?),
            (true, None) => None,
            (false, None) => {
                return Err(OpError::InvalidParams(
                    "sessionDescription (an offer) is required unless force is true".into(),
                ));
            }
        };
        if offer.is_some() && self.sessions[&sid].pending.is_some() {
            return Err(OpError::InvalidSdp(
                "the previous SFU offer has not been answered: call renegotiate first".into(),
            ));
        }
        let mut results = Vec::new();
        for m in mids {
            let mid = Mid::from(m.as_str());
            let entry = self.sessions[&sid]
                .tracks
                .iter()
                .find(|e| e.mid == mid && !e.closed)
                .map(|e| (e.location, e.track_name.clone()));
            match entry {
                Some((Location::Local, name)) => {
                    self.unpublish(&(sid, name));
                    self.mark_closed(sid, mid);
                    results.push(TrackResult {
                        mid: m,
                        ..TrackResult::default()
                    });
                }
                Some((Location::Remote, _)) => {
                    self.unsubscribe(sid, mid, now);
                    self.mark_closed(sid, mid);
                    results.push(TrackResult {
                        mid: m,
                        ..TrackResult::default()
                    });
                }
                None => results.push(TrackResult {
                    mid: m,
                    error: item_error("close_track_error", "no open track with this mid"),
                    ..TrackResult::default()
                }),
            }
        }
        let description = match offer {
            Some(offer) => {
                let s = self
                    .sessions
                    .get_mut(&sid)
                    .ok_or_else(|| OpError::Internal("session vanished".into()))?;
                let answer = s
                    .rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .map_err(|e| OpError::InvalidSdp(format!("offer not accepted: {e}")))?;
                Some(answer_desc(answer))
            }
            None => None,
        };
        self.drain(sid, now);
        self.process_work(now);
        Ok(CloseResult {
            description,
            tracks: results,
        })
    }

    fn mark_closed(&mut self, sid: SessionId, mid: Mid) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.local_by_mid.remove(&mid);
            s.remote_by_mid.remove(&mid);
            if let Some(e) = s.active_entry_mut(mid) {
                e.closed = true;
            }
        }
    }

    /// Every session of this node with its tracks, for the admin view.
    pub fn admin_sessions(&self) -> Vec<SessionSummary> {
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| self.admin_session(id))
            .collect()
    }

    pub fn admin_session(&self, id: SessionId) -> Option<SessionSummary> {
        let s = self.sessions.get(&id)?;
        let tracks = self.session_tracks(&s.app, &id.to_string()).ok()?;
        Some(SessionSummary {
            session_id: id,
            app: s.app.clone(),
            connected: s.connected,
            tracks,
        })
    }

    /// Tracks published on this node, with their local subscribers and relay downstream ids.
    pub fn admin_publications(&self) -> Vec<PublicationSummary> {
        let mut out: Vec<PublicationSummary> = self
            .publications
            .iter()
            .filter(|(_, p)| matches!(p.source, Source::Session(_)))
            .map(|(k, p)| PublicationSummary {
                session_id: k.0,
                track_name: k.1.clone(),
                kind: p.kind,
                local_subscribers: p
                    .subscribers
                    .iter()
                    .filter(|s| matches!(s, Sink::Session(..)))
                    .count(),
                downstreams: p
                    .subscribers
                    .iter()
                    .filter_map(|s| match s {
                        Sink::Relay(d) => Some(*d),
                        Sink::Session(..) => None,
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| (a.session_id, &a.track_name).cmp(&(b.session_id, &b.track_name)));
        out
    }

    /// Local subscribers of a publication (local or relayed) held here.
    pub fn local_subscriber_count(&self, session: SessionId, track: &str) -> usize {
        self.publications
            .get(&(session, track.to_string()))
            .map(|p| {
                p.subscribers
                    .iter()
                    .filter(|s| matches!(s, Sink::Session(..)))
                    .count()
            })
            .unwrap_or(0)
    }

    /// `GET sessions/{id}`: every track the session has had, with its status.
    pub fn session_tracks(&self, app: &str, session_id: &str) -> Result<Vec<TrackStatus>, OpError> {
        let sid = self.lookup(app, session_id)?;
        let s = &self.sessions[&sid];
        Ok(s.tracks
            .iter()
            .map(|e| {
                let active = !e.closed
                    && match e.location {
                        Location::Local => s.local_by_mid.contains_key(&e.mid),
                        Location::Remote => s.remote_by_mid.contains_key(&e.mid),
                    };
                TrackStatus {
                    location: e.location,
                    mid: e.mid.to_string(),
                    track_name: e.track_name.clone(),
                    session_id: e.remote.as_ref().map(|k| k.0.to_string()),
                    active,
                }
            })
            .collect())
    }
}
