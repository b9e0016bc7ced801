//! Finding and closing sessions: ids, the per-app lookup (404 against 410), and removal of a
//! session with everything it published or pulled.

use std::time::Instant;

use super::publications::Sink;
use super::session::SessionState;
use super::{Engine, MAX_TOMBSTONES, OpError, TOMBSTONE_TTL};
use crate::ids::SessionId;

impl Engine {
    pub(super) fn new_session_id(&self) -> SessionId {
        // 96 random bits: a collision is practically impossible, but never hand out a live id.
        loop {
            let id = SessionId::new_on(self.cfg.node_tag, self.cfg.worker);
            if !self.sessions.contains_key(&id) && !self.tombstones.contains_key(&id) {
                return id;
            }
        }
    }

    /// Finds a session of this app, distinguishing never-existed (404) from closed (410).
    pub(super) fn lookup(&self, app: &str, session_id: &str) -> Result<SessionId, OpError> {
        let not_found = || OpError::NotFound(format!("session {session_id} not found"));
        let sid = SessionId::parse(session_id).ok_or_else(not_found)?;
        match self.sessions.get(&sid) {
            Some(s) if s.app == app => Ok(sid),
            Some(_) => Err(not_found()),
            // Another app's closed session is as unknown to this one as its live ones.
            None if self.tombstones.get(&sid).is_some_and(|t| t.app == app) => Err(OpError::Gone(
                "Session appears to be disconnected. Please check if the PeerConnection is connected."
                    .into(),
            )),
            None => Err(not_found()),
        }
    }

    /// Whether an API call on this session must wait for its PeerConnection to connect: not
    /// before the first exchange (it creates the transport), nor while the SFU's offer waits for
    /// its answer (the answer is what lets it connect), nor when the call's offer (its ICE ufrag
    /// and DTLS fingerprint) brings a new transport: that offer is how a client that lost its
    /// connection (a new address, a stopped transport) gets it back.
    pub fn must_wait_for_connection(
        &self,
        app: &str,
        session_id: &str,
        offer: Option<(Option<String>, Option<String>)>,
    ) -> Result<bool, OpError> {
        let sid = self.lookup(app, session_id)?;
        let s = &self.sessions[&sid];
        let differs = |theirs: &Option<String>, ours: &Option<String>| {
            theirs.is_some() && ours.is_some() && theirs != ours
        };
        let new_transport = offer.is_some_and(|(ufrag, fingerprint)| {
            differs(&ufrag, &s.remote_ufrag) || differs(&fingerprint, &s.remote_fingerprint)
        });
        Ok(s.pending.is_none()
            && !new_transport
            && matches!(
                s.state,
                SessionState::Negotiated | SessionState::Disconnected { .. }
            ))
    }

    /// Removes a session and everything it published or pulled.
    pub fn close_session(&mut self, sid: SessionId, now: Instant, reason: &str) {
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        if let Some(n) = self.app_sessions.get_mut(&s.app) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.app_sessions.remove(&s.app);
            }
        }
        tracing::info!(session = %sid, reason, "session closed");
        s.rtc.disconnect();
        self.demux.remove_session(sid, &s.ufrag);
        if let Some(local) = s.outgoing_local
            && self.outgoing.get(&local) == Some(&sid)
        {
            self.outgoing.remove(&local);
        }
        self.timers.remove(&(s.timeout, sid));
        for name in s.local_by_mid.values() {
            self.unpublish(&(sid, name.clone()));
        }
        self.streams.session_closed(sid);
        for e in s.channels.list.iter().filter(|e| !e.closed) {
            match e.publisher {
                None => {
                    self.end_channel_subscriptions(sid, &e.name);
                    self.channel_unpublished(sid, &e.name);
                }
                Some(p) => {
                    if let Some(subs) = self.dc_subscribers.get_mut(&(p, e.name.clone())) {
                        subs.retain(|(sub, _)| *sub != sid);
                    }
                    self.channel_subscriber_left(p, &e.name);
                    self.release_unused_reply_grant(p, &e.name);
                }
            }
        }
        for (mid, key) in &s.remote_by_mid {
            if let Some(p) = self.publications.get_mut(key) {
                p.subscribers.retain(|k| *k != Sink::Session(sid, *mid));
                if p.subscribers.is_empty() {
                    p.unused_since = Some(now);
                }
            }
        }
        if self.tombstones.len() >= MAX_TOMBSTONES {
            self.tombstones
                .retain(|_, t| now.saturating_duration_since(t.at) < TOMBSTONE_TTL);
            if self.tombstones.len() >= MAX_TOMBSTONES {
                self.tombstones.clear();
            }
        }
        let app = std::mem::take(&mut s.app);
        self.tombstones.insert(sid, Tombstone { at: now, app });
    }
}

/// What a closed session leaves for [`TOMBSTONE_TTL`]: calls on it get 410 rather than 404, from
/// its own app only.
pub(super) struct Tombstone {
    /// When it closed.
    pub at: Instant,
    /// Its app.
    pub app: String,
}
