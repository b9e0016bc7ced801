//! `POST tracks/new`: checks the request, then pushes (`push.rs`) or pulls (`pull.rs`).

use std::time::Instant;

use super::{MAX_ACTIVE_TRACKS_PER_SESSION, MAX_TRACKS_PER_CALL, TracksNew, TracksNewResult};
use crate::engine::sdp_limits::MAX_M_LINES;
use crate::engine::{Engine, OpError};

impl Engine {
    /// `POST tracks/new`: publish the client's tracks or pull publications into its session.
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
            TracksNew::Remote { tracks } | TracksNew::RemoteWithOffer { tracks, .. } => {
                tracks.len()
            }
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
        // Sections this call adds when the SFU writes the offer (a client's own offer is held
        // to the bound as it arrives). Past the bound the client could not answer, and the
        // session would be left with an offer it can never complete.
        let new_sections = match &req {
            TracksNew::Local {
                offer: None,
                tracks,
                ..
            } => tracks.len(),
            TracksNew::Remote { tracks } => tracks
                .iter()
                .filter(|t| !t.mid.as_deref().is_some_and(|m| m.starts_with('#')))
                .count(),
            _ => 0,
        };
        let sections = self.sessions[&sid].m_lines;
        if new_sections > 0 && sections + new_sections > MAX_M_LINES {
            return Err(OpError::InvalidParams(format!(
                "this session's SDP already has {sections} of the {MAX_M_LINES} m-sections it may have (a closed track keeps its section): pull into a new session"
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
            TracksNew::RemoteWithOffer { offer, tracks } => {
                self.pull_with_offer(sid, offer, tracks, now)
            }
            TracksNew::OfferOnly { offer } => {
                self.push_with_offer(sid, offer, Vec::new(), false, now)
            }
        };
        self.drain(sid, now);
        self.process_work(now);
        result
    }
}
