//! Transport changes a client's offer can carry, so a session survives them:
//!
//! - an **ICE restart** (new `ice-ufrag`/`ice-pwd`): str0m restarts ICE itself when it accepts
//!   the offer and answers with new local credentials; the demux is moved to the new ufrag so
//!   the client's checks from a new address still find the session;
//! - a **new DTLS transport**: a new fingerprint, or new ICE credentials on an offer that keeps
//!   none of the sections the session already negotiated open (JSEP: once every section of a
//!   BUNDLE is stopped the transport is gone, and Chromium makes a new one, as after
//!   partytracks' bulk close). str0m runs one DTLS handshake per `Rtc`, so the session moves to
//!   a fresh `Rtc`: same id, same publications; its tracks on sections the offer keeps open
//!   carry on, the others are closed as the client's new transport no longer has them;
//! - the client **closing its DTLS transport** (close_notify) once none of the session's tracks
//!   is active (Chromium after every transceiver of the BUNDLE was stopped): the session waits on
//!   a fresh `Rtc`, up to the reconnect grace, for the client's next transport. The client's last
//!   offer is replayed on it so the SFU's next offer (a pull) keeps the client's sections in
//!   order, and that offer restarts ICE so the client's answer may bring new credentials. With
//!   an active track left, a close is the client hanging up and ends the session as before.

use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::Mid;

use super::publications::TrackKey;
use super::session::{Location, SessionState};
use super::{ClientOffer, Engine, OpError};
use crate::ids::SessionId;

/// What a client's offer says about its transport, read before str0m takes the offer.
pub(super) struct OfferTransport {
    pub(super) ice_ufrag: Option<String>,
    pub(super) fingerprint: Option<String>,
    pub(super) live_mids: Vec<Mid>,
    pub(super) text: Option<String>,
    pub(super) data_section: bool,
}

impl OfferTransport {
    pub(super) fn of(offer: &ClientOffer) -> OfferTransport {
        OfferTransport {
            ice_ufrag: offer.ice_ufrag.clone(),
            fingerprint: offer.fingerprint.clone(),
            live_mids: offer.live_mids().map(Mid::from).collect(),
            text: offer.text.clone(),
            data_section: offer.data_section,
        }
    }
}

impl Engine {
    /// Accepts a client's offer on session `sid`, following a transport change (see the module
    /// doc). Returns str0m's answer.
    pub(super) fn accept_client_offer(
        &mut self,
        sid: SessionId,
        offer: SdpOffer,
        mut transport: OfferTransport,
        now: Instant,
    ) -> Result<SdpAnswer, OpError> {
        let renew = self.is_new_transport(sid, &transport);
        if renew {
            self.renew_transport(sid, now)?;
        }
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        let answer = s.accept_offer(offer)?;
        s.note_remote(transport.ice_ufrag.as_ref(), transport.fingerprint.as_ref());
        s.last_offer = transport.text.take();
        s.renewed = false;
        // The client brought its own SCTP section (the older Calls flow): DataChannels may be
        // made on it as after `datachannels/establish`.
        s.channels.established |= transport.data_section;
        self.follow_ice_restart(sid);
        if renew {
            self.close_tracks_off(sid, &transport.live_mids, now);
        }
        Ok(answer)
    }

    /// After str0m took an offer or answer: if it restarted ICE (new local credentials), the
    /// demux routes the new ufrag.
    pub(super) fn follow_ice_restart(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let local = s.rtc.direct_api().local_ice_credentials().ufrag;
        if local == s.ufrag {
            return;
        }
        let old = std::mem::replace(&mut s.ufrag, local.clone());
        self.demux.remove_ufrag(sid, &old);
        if !self.demux.add_session_if_free(sid, &local) {
            // str0m's ufrags are random; a clash only loses routing by ufrag (a client that
            // moved address), never another session's.
            tracing::warn!(session = %sid, "ICE restart: new ufrag already taken");
        }
        tracing::info!(session = %sid, "ICE restart");
    }

    /// The client closed its DTLS transport. With no active track left the session waits on a
    /// fresh `Rtc` for the client's next transport; otherwise the client hung up, and the
    /// housekeeping closes the session (its `Rtc` is no longer alive).
    pub(super) fn transport_closed(&mut self, sid: SessionId, now: Instant) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        if !s.state.ever_connected() || s.tracks.iter().any(|t| !t.closed) {
            return;
        }
        let replay = s.last_offer.clone();
        if let Err(e) = self.renew_transport(sid, now) {
            tracing::warn!(session = %sid, error = %e, "cannot renew the transport");
            return;
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.transport_lost = Some(now);
        // The client's sections, in its order, so the SFU's next offer matches them; the
        // answer is not sent anywhere. The client's next offer restarts ICE over it.
        let replayed = replay
            .and_then(|text| SdpOffer::from_sdp_string(&text).ok())
            .is_some_and(|offer| s.rtc.sdp_api().accept_offer(offer).is_ok());
        // Over the replayed (old) credentials, the SFU's next offer must restart ICE; a fresh
        // `Rtc` without them negotiates as for a new session.
        s.renewed = replayed;
        if !replayed {
            tracing::info!(session = %sid, "no offer to replay: fresh Rtc without sections");
        }
        self.drain(sid, now);
    }

    pub(super) fn is_new_transport(&self, sid: SessionId, t: &OfferTransport) -> bool {
        let Some(s) = self.sessions.get(&sid) else {
            return false;
        };
        if s.state == SessionState::New {
            return false;
        }
        if let (Some(old), Some(new)) = (&s.remote_fingerprint, &t.fingerprint)
            && old != new
        {
            return true;
        }
        let ice_restart = matches!((&s.remote_ufrag, &t.ice_ufrag), (Some(o), Some(n)) if o != n);
        ice_restart
            && !t.live_mids.is_empty()
            && t.live_mids.iter().all(|m| s.rtc.media(*m).is_none())
    }

    /// Moves session `sid` onto a fresh `Rtc`: the client's next offer sets up ICE and DTLS
    /// anew. Tracks stay in the session; `close_tracks_off` closes the ones the new transport
    /// does not carry once the offer is accepted.
    fn renew_transport(&mut self, sid: SessionId, now: Instant) -> Result<(), OpError> {
        // A cascade's outgoing session keeps its own socket and full ICE.
        let outgoing = self.sessions.get(&sid).and_then(|s| s.outgoing_local);
        let (rtc, ufrag) = self.build_rtc(outgoing, now)?;
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        let mut old = std::mem::replace(&mut s.rtc, rtc);
        old.disconnect();
        let old_ufrag = std::mem::replace(&mut s.ufrag, ufrag);
        // Forget the old addresses too: the new transport's checks are routed by ufrag.
        self.demux.remove_session(sid, &old_ufrag);
        self.demux.add_session(sid, &self.sessions[&sid].ufrag);
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        s.state = SessionState::New;
        s.pending = None;
        s.last_offer = None;
        s.remote_ufrag = None;
        s.remote_fingerprint = None;
        s.nacks_seen.clear();
        s.media_counts.clear();
        s.out.clear();
        s.awaiting_keyframe.clear();
        // The client's decoders start over with the transport: each pulled video waits for a
        // keyframe again, so it gets the edge cache's at once and no deltas it cannot decode.
        let pulled: Vec<(Mid, TrackKey)> = s
            .remote_by_mid
            .iter()
            .map(|(mid, key)| (*mid, key.clone()))
            .collect();
        for (mid, key) in pulled {
            self.await_keyframe(sid, mid, &key, now);
        }
        tracing::info!(session = %sid, "new DTLS transport: session moved to a fresh Rtc");
        Ok(())
    }

    /// After a transport renewal, closes the session's active tracks whose sections the new
    /// transport does not carry (the client has no transceiver for them any more).
    fn close_tracks_off(&mut self, sid: SessionId, live: &[Mid], now: Instant) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let gone: Vec<(Mid, Location, String)> = s
            .tracks
            .iter()
            .filter(|t| !t.closed && !live.contains(&t.mid))
            .map(|t| (t.mid, t.location, t.track_name.clone()))
            .collect();
        for (mid, location, name) in gone {
            match location {
                Location::Local => self.unpublish(&(sid, name)),
                Location::Remote => self.unsubscribe(sid, mid, now),
            }
            self.mark_closed(sid, mid);
        }
    }
}
