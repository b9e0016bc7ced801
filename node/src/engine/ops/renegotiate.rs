//! `PUT renegotiate`: the client's answer to the SFU's last offer.

use std::time::Instant;

use crate::engine::{ClientAnswer, Engine, OpError};

impl Engine {
    /// `PUT renegotiate`: the client's answer to the SFU's last offer.
    pub fn renegotiate(
        &mut self,
        app: &str,
        session_id: &str,
        answer: ClientAnswer,
        now: Instant,
    ) -> Result<(), OpError> {
        let sid = self.lookup(app, session_id)?;
        let (ufrag, fingerprint) = (answer.ice_ufrag, answer.fingerprint);
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
        s.note_remote(ufrag.as_ref(), fingerprint.as_ref());
        s.renewed = false;
        let connected = s.state.is_connected();
        self.follow_ice_restart(sid);
        self.drain(sid, now);
        if connected {
            self.request_keyframes_for(sid, now);
        }
        self.process_work(now);
        Ok(())
    }
}
