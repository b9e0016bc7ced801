//! Ending pulled tracks with an SFU offer: the WebSocket signalling's `update` when a room's
//! publisher leaves. The sections are offered inactive, so the client's transceivers stop; the
//! Calls API closes tracks with the client's offer instead (`tracks_close`).

use std::time::Instant;

use str0m::media::{Direction, Mid};

use super::{MAX_TRACKS_PER_CALL, SdpKind, SessionDesc};
use crate::engine::sdp::candidates_in_every_section;
use crate::engine::session::Location;
use crate::engine::{Engine, OpError};

impl Engine {
    /// Ends the pulls on `mids` (at most [`MAX_TRACKS_PER_CALL`]) and offers their sections
    /// inactive. `None` when nothing changed in the SDP. The client answers with `renegotiate`.
    pub fn close_pulls_offer(
        &mut self,
        app: &str,
        session_id: &str,
        mids: &[String],
        now: Instant,
    ) -> Result<Option<SessionDesc>, OpError> {
        let sid = self.lookup(app, session_id)?;
        if self.sessions[&sid].pending.is_some() {
            return Err(OpError::InvalidSdp(
                "the previous SFU offer has not been answered".into(),
            ));
        }
        let mut sections = Vec::new();
        for m in mids.iter().take(MAX_TRACKS_PER_CALL) {
            let mid = Mid::from(m.as_str());
            let open_pull = self.sessions[&sid]
                .tracks
                .iter()
                .any(|e| e.mid == mid && e.location == Location::Remote && !e.closed);
            if open_pull {
                self.unsubscribe(sid, mid, now);
                self.mark_closed(sid, mid);
            }
            sections.push(mid);
        }
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        let mut sdp = s.rtc.sdp_api();
        for mid in &sections {
            sdp.set_direction(*mid, Direction::Inactive);
        }
        let Some((offer, pending)) = sdp.apply() else {
            return Ok(None);
        };
        s.pending = Some(pending);
        let desc = SessionDesc {
            kind: SdpKind::Offer,
            sdp: candidates_in_every_section(&offer.to_sdp_string()),
        };
        self.drain(sid, now);
        self.process_work(now);
        Ok(Some(desc))
    }
}
