//! Pulling with the client's offer (`tracks/new` with remote tracks and an offer; WHEP): the
//! client offers receiving sections, each pull names the client's `mid`, and the SFU answers
//! them `sendonly` with the publications attached. No SFU offer is left pending.

use std::time::Instant;

use str0m::media::Mid;

use super::{RemoteTrack, SimulcastView, TrackResult, TracksNewResult, answer_desc};
use crate::engine::transport::OfferTransport;
use crate::engine::{ClientOffer, Engine, OpError, TrackError};
use crate::ids::SessionId;

impl Engine {
    /// Pull into the client's own transceivers: accept its offer, attach each listed publication
    /// to the section its `mid` names, answer.
    pub(in crate::engine) fn pull_with_offer(
        &mut self,
        sid: SessionId,
        offer: ClientOffer,
        tracks: Vec<RemoteTrack>,
        now: Instant,
    ) -> Result<TracksNewResult, OpError> {
        let transport = OfferTransport::of(&offer);
        let offer = offer.parsed?;
        let app = self.sessions[&sid].app.clone();
        let answer = self.accept_client_offer(sid, offer, transport, now)?;
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.state = s.state.on_negotiated();
        }

        let mut results = Vec::with_capacity(tracks.len());
        let mut attached = false;
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
                r.error = Some(TrackError::InvalidParams(
                    "sessionId and trackName are required to pull".into(),
                ));
                results.push(r);
                continue;
            };
            let Some(mid_str) = t.mid.filter(|m| !m.is_empty()) else {
                r.error = Some(TrackError::InvalidParams(
                    "mid (the offer's receiving section) is required when pulling with an offer"
                        .into(),
                ));
                results.push(r);
                continue;
            };
            let Some((key, kind)) = self.find_publication(&app, pub_session, name) else {
                r.error = Some(TrackError::NotFound);
                results.push(r);
                continue;
            };
            let mid = Mid::from(mid_str.as_str());
            if let Err(e) = self.check_receiving_mid(sid, mid, kind) {
                r.error = Some(e);
                results.push(r);
                continue;
            }
            r.mid = mid_str;
            r.simulcast = t.simulcast.map(|prefs| SimulcastView {
                prefs,
                current_rid: None,
            });
            self.subscribe(sid, mid, key, t.simulcast, now);
            attached = true;
            results.push(r);
        }
        if attached && self.sessions[&sid].state.is_connected() {
            // A renegotiation of a live session: media can start now.
            self.request_keyframes_for(sid, now);
        }
        Ok(TracksNewResult {
            requires_immediate_renegotiation: false,
            description: Some(answer_desc(answer)),
            tracks: results,
        })
    }

    /// A publication of this app, local or relayed from another node: its key and kind.
    pub(in crate::engine) fn find_publication(
        &self,
        app: &str,
        session_id: &str,
        name: &str,
    ) -> Option<(crate::engine::TrackKey, str0m::media::MediaKind)> {
        let key = (SessionId::parse(session_id)?, name.to_string());
        let kind = self.publications.get(&key).filter(|p| *p.app == *app)?.kind;
        Some((key, kind))
    }

    /// `mid` is a section of the session the SFU sends on, of `kind`, that carries nothing yet.
    pub(in crate::engine) fn check_receiving_mid(
        &self,
        sid: SessionId,
        mid: Mid,
        kind: str0m::media::MediaKind,
    ) -> Result<(), TrackError> {
        let s = self
            .sessions
            .get(&sid)
            .ok_or_else(|| TrackError::Internal("session vanished".into()))?;
        let Some(media) = s.rtc.media(mid) else {
            return Err(TrackError::InvalidParams(format!(
                "mid {mid} is not in the offer"
            )));
        };
        if !media.direction().is_sending() {
            return Err(TrackError::InvalidParams(format!(
                "mid {mid} does not receive media from the SFU (offer it recvonly or sendrecv)"
            )));
        }
        if media.kind() != kind {
            return Err(TrackError::InvalidParams(format!(
                "mid {mid} is {:?}, the track is {kind:?}",
                media.kind()
            )));
        }
        if media.remote_pts().is_empty() {
            return Err(TrackError::InvalidParams(format!(
                "mid {mid} has no codec in common with the SFU"
            )));
        }
        if s.local_by_mid.contains_key(&mid) || s.remote_by_mid.contains_key(&mid) {
            return Err(TrackError::InvalidParams(format!(
                "mid {mid} already carries a track"
            )));
        }
        Ok(())
    }
}
