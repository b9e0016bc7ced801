//! `PUT tracks/close`: closes by the mids in the body, answering the client's offer unless
//! forced.

use std::time::Instant;

use str0m::media::Mid;

use super::{CloseResult, MAX_TRACKS_PER_CALL, TrackResult, answer_desc};
use crate::engine::session::Location;
use crate::engine::transport::OfferTransport;
use crate::engine::{ClientOffer, Engine, OpError, TrackError};
use crate::ids::SessionId;

impl Engine {
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
            (_, Some(o)) => Some((OfferTransport::of(&o), o.parsed?)),
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
                    // A bidirectional mid may carry a pulled track too: it ends with the mid.
                    if self.sessions[&sid].remote_by_mid.contains_key(&mid) {
                        self.unsubscribe(sid, mid, now);
                    }
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
                    error: Some(TrackError::Close("no open track with this mid".into())),
                    ..TrackResult::default()
                }),
            }
        }
        let description = match offer {
            Some((transport, offer)) => {
                let answer = self.accept_client_offer(sid, offer, transport, now)?;
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

    pub(in crate::engine) fn mark_closed(&mut self, sid: SessionId, mid: Mid) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.local_by_mid.remove(&mid);
            s.remote_by_mid.remove(&mid);
            s.simulcast.remove(&mid);
            // Every active entry on it: a bidirectional mid has its local track and the one
            // pulled into it.
            for e in s.tracks.iter_mut().filter(|e| e.mid == mid && !e.closed) {
                e.closed = true;
            }
        }
    }
}
