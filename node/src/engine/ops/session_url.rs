//! The WHIP/WHEP session URL: `PATCH` (trickled candidates, or an ICE restart when the client's
//! credentials change) and `DELETE`.

use std::time::Instant;

use str0m::IceCreds;

use crate::engine::sdpfrag::{self, IceFrag};
use crate::engine::streams::Role;
use crate::engine::{Engine, OpError};
use crate::ids::{SessionId, random_hex};

/// What a `PATCH` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patched {
    /// Candidates applied (204).
    Trickled,
    /// An ICE restart: the server's new sdpfrag and the new ETag (200).
    Restarted {
        /// The server's sdpfrag: its new credentials and candidates.
        frag: String,
        /// The ETag of the new ICE session.
        etag: String,
    },
}

impl Engine {
    /// A WHIP/WHEP session of this app, stream and role; anything else is not found (so another
    /// app's session or a Calls session looks like no session at all).
    fn stream_session_of(
        &self,
        app: &str,
        stream: &str,
        role: Role,
        session_id: &str,
    ) -> Result<SessionId, OpError> {
        let sid = self.lookup(app, session_id)?;
        match self.streams.session(sid) {
            Some(m) if m.via_http && m.role == role && m.stream == stream => Ok(sid),
            _ => Err(OpError::NotFound(format!("session {session_id} not found"))),
        }
    }

    /// `PATCH` on a session URL. `if_match` is the request's `If-Match` (`*` matches any).
    // The URL's three parts, the request's two and the clock: a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn stream_session_patch(
        &mut self,
        app: &str,
        stream: &str,
        role: Role,
        session_id: &str,
        if_match: Option<&str>,
        frag: IceFrag,
        now: Instant,
    ) -> Result<Patched, OpError> {
        let sid = self.stream_session_of(app, stream, role, session_id)?;
        let member = self
            .streams
            .session(sid)
            .ok_or_else(|| OpError::Internal("stream session vanished".into()))?;
        if let Some(tag) = if_match {
            let tag = tag.trim();
            if tag != "*" && tag.trim_matches('"') != member.etag {
                return Err(OpError::PreconditionFailed(
                    "If-Match does not name this session's current ICE session".into(),
                ));
            }
        }
        let restart = frag
            .creds
            .as_ref()
            .is_some_and(|(u, _)| member.remote_ufrag.as_deref() != Some(u.as_str()));
        if !self
            .streams
            .add_trickled(sid, frag.candidates.len(), sdpfrag::MAX_CANDIDATES)
        {
            return Err(OpError::Decoding(format!(
                "a session takes at most {} trickled candidates",
                sdpfrag::MAX_CANDIDATES
            )));
        }
        let mut result = Patched::Trickled;
        if let Some((ufrag, pass)) = frag.creds.filter(|_| restart) {
            let mut local = random_hex(4);
            while self.demux.has_ufrag(&local) {
                local = random_hex(4);
            }
            let local_pass = random_hex(16);
            let s = self
                .sessions
                .get_mut(&sid)
                .ok_or_else(|| OpError::Internal("session vanished".into()))?;
            let mut api = s.rtc.direct_api();
            api.set_local_ice_credentials(IceCreds {
                ufrag: local.clone(),
                pass: local_pass.clone(),
            });
            api.set_remote_ice_credentials(IceCreds {
                ufrag: ufrag.clone(),
                pass,
            });
            self.demux.remove_session(sid, &s.ufrag);
            self.demux.add_session(sid, &local);
            s.ufrag = local.clone();
            self.streams.set_remote_ufrag(sid, Some(ufrag));
            let etag = self
                .streams
                .renew_etag(sid)
                .ok_or_else(|| OpError::Internal("stream session vanished".into()))?;
            let candidates: Vec<String> = self
                .cfg
                .host_candidates()
                .map_err(|e| OpError::Internal(format!("media address unusable: {e}")))?
                .iter()
                .map(|c| c.to_sdp_string())
                .collect();
            result = Patched::Restarted {
                frag: sdpfrag::answer(&local, &local_pass, &candidates),
                etag,
            };
            tracing::info!(session = %sid, "ICE restart");
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            for c in frag.candidates {
                s.rtc.add_remote_candidate(c);
            }
        }
        self.drain(sid, now);
        self.process_work(now);
        Ok(result)
    }

    /// `DELETE` on a session URL: ends the session.
    pub fn stream_session_delete(
        &mut self,
        app: &str,
        stream: &str,
        role: Role,
        session_id: &str,
        now: Instant,
    ) -> Result<(), OpError> {
        let sid = self.stream_session_of(app, stream, role, session_id)?;
        self.close_session(sid, now, "ended by DELETE");
        Ok(())
    }
}
