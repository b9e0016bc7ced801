//! Marking a session for audio egress (`set_egress`); the queue and the packet path are in
//! `engine/egress.rs`.

use super::super::egress::{EgressLabels, MAX_LABEL_BYTES, SessionEgress};
use super::super::{Engine, OpError};
use crate::ids::SessionId;

impl Engine {
    /// Marks a session of this node so that every Opus payload it publishes goes to the egress
    /// queue under `labels`, or (`None`) stops that. Its tracks relayed to other nodes are not
    /// published there: only this node's packet path feeds the queue.
    pub fn set_egress(
        &mut self,
        session: SessionId,
        labels: Option<EgressLabels>,
    ) -> Result<(), OpError> {
        let Some(enabled) = &self.egress.enabled else {
            return Err(OpError::Unavailable(
                "audio egress is not configured on this node (--nats)".to_string(),
            ));
        };
        let prepared = match &labels {
            Some(l) => {
                for (what, v) in [
                    ("app", &l.app),
                    ("room", &l.room),
                    ("user", &l.user),
                    ("client", &l.client),
                ] {
                    if v.len() > MAX_LABEL_BYTES {
                        return Err(OpError::InvalidParams(format!(
                            "egress {what} is longer than {MAX_LABEL_BYTES} bytes"
                        )));
                    }
                }
                Some(SessionEgress::new(&enabled.prefix, l))
            }
            None => None,
        };
        let Some(s) = self.sessions.get_mut(&session) else {
            return Err(if self.tombstones.contains_key(&session) {
                OpError::Gone(format!("session {session} is closed"))
            } else {
                OpError::NotFound(format!("session {session} is not on this node"))
            });
        };
        s.egress = prepared;
        Ok(())
    }
}
