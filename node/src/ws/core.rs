//! One WebSocket connection's protocol state, without I/O or a clock: which message may come
//! next, the connect/answer/pong deadlines, when to ping, and the message rate bound. The shell
//! feeds it text and the time and does what it returns.

use std::time::{Duration, Instant};

use super::protocol::{self, ClientMsg, CloseReason};

/// Messages a client may send in one second; past it the socket is closed.
pub const MAX_MESSAGES_PER_SECOND: u32 = 50;

/// The protocol's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// From the upgrade to `connect` (`CONNECT-WAIT-TIMEOUT`).
    pub connect_wait: Duration,
    /// From an offer to its answer (`ANSWER-TIMEOUT-ERROR`).
    pub answer_wait: Duration,
    /// Between pings.
    pub ping_interval: Duration,
    /// From a ping to its pong (`PONG-TIMEOUT-ERROR`).
    pub pong_timeout: Duration,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            connect_wait: Duration::from_secs(10),
            answer_wait: Duration::from_secs(10),
            ping_interval: Duration::from_secs(5),
            pong_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for `connect`.
    AwaitConnect,
    /// `connect` taken; the shell checks the ticket and makes the offer.
    Joining,
    /// The first offer is out; waiting for `answer`.
    AwaitAnswer,
    /// Joined; an `update` offer may be out.
    Live,
    /// Closed.
    Closed,
}

/// What the shell must do when a deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send `ping`.
    SendPing,
    /// Close with this reason.
    Close(CloseReason),
}

/// One connection's state.
#[derive(Debug)]
pub struct Core {
    timers: Timers,
    phase: Phase,
    connect_by: Option<Instant>,
    answer_by: Option<Instant>,
    update_pending: bool,
    next_ping: Option<Instant>,
    pong_by: Option<Instant>,
    window: (Instant, u32),
}

impl Core {
    /// A connection just upgraded at `now`.
    pub fn new(timers: Timers, now: Instant) -> Core {
        Core {
            timers,
            phase: Phase::AwaitConnect,
            connect_by: Some(now + timers.connect_wait),
            answer_by: None,
            update_pending: false,
            next_ping: None,
            pong_by: None,
            window: (now, 0),
        }
    }

    /// Where it is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether an `update` offer is waiting for its answer (no other may be sent meanwhile).
    pub fn update_pending(&self) -> bool {
        self.update_pending
    }

    /// A text message arrived: the message, if it is valid now; else why to close.
    pub fn on_text(&mut self, text: &str, now: Instant) -> Result<ClientMsg, CloseReason> {
        let r = self.take(text, now);
        if r.is_err() {
            self.phase = Phase::Closed;
        }
        r
    }

    fn take(&mut self, text: &str, now: Instant) -> Result<ClientMsg, CloseReason> {
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        if self.window.1 > MAX_MESSAGES_PER_SECOND {
            return Err(CloseReason::MessageLimit);
        }
        let msg = protocol::decode(text)?;
        let in_turn = match (&msg, self.phase) {
            (ClientMsg::Disconnect, _) => true,
            (ClientMsg::Connect { .. }, Phase::AwaitConnect) => true,
            (ClientMsg::Answer { .. }, Phase::AwaitAnswer) => true,
            (ClientMsg::Update { .. }, Phase::Live) => self.update_pending,
            (ClientMsg::Pong, Phase::Live | Phase::AwaitAnswer) => true,
            (ClientMsg::Candidate { .. }, Phase::Joining | Phase::AwaitAnswer | Phase::Live) => {
                true
            }
            _ => false,
        };
        if !in_turn {
            return Err(CloseReason::JsonDecode);
        }
        match msg {
            ClientMsg::Connect { .. } => {
                self.phase = Phase::Joining;
                self.connect_by = None;
            }
            ClientMsg::Pong => self.pong_by = None,
            ClientMsg::Answer { .. } => {
                self.phase = Phase::Live;
                self.answer_by = None;
                self.next_ping = Some(now + self.timers.ping_interval);
            }
            ClientMsg::Update { .. } => {
                self.update_pending = false;
                self.answer_by = None;
            }
            ClientMsg::Disconnect => self.phase = Phase::Closed,
            ClientMsg::Candidate { .. } => {}
        }
        Ok(msg)
    }

    /// The first offer was sent.
    pub fn offer_sent(&mut self, now: Instant) {
        if self.phase == Phase::Joining {
            self.phase = Phase::AwaitAnswer;
            self.answer_by = Some(now + self.timers.answer_wait);
        }
    }

    /// An `update` offer was sent.
    pub fn update_sent(&mut self, now: Instant) {
        if self.phase == Phase::Live {
            self.update_pending = true;
            self.answer_by = Some(now + self.timers.answer_wait);
        }
    }

    /// The next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.connect_by,
            self.answer_by,
            self.next_ping,
            self.pong_by,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Deadlines at `now`: a ping to send, or a close.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Action> {
        let close = if self.connect_by.is_some_and(|t| now >= t) {
            Some(CloseReason::ConnectWaitTimeout)
        } else if self.answer_by.is_some_and(|t| now >= t) {
            Some(CloseReason::AnswerTimeout)
        } else if self.pong_by.is_some_and(|t| now >= t) {
            Some(CloseReason::PongTimeout)
        } else {
            None
        };
        if let Some(reason) = close {
            self.phase = Phase::Closed;
            return Some(Action::Close(reason));
        }
        if self.next_ping.is_some_and(|t| now >= t) {
            self.next_ping = Some(now + self.timers.ping_interval);
            if self.pong_by.is_none() {
                self.pong_by = Some(now + self.timers.pong_timeout);
            }
            return Some(Action::SendPing);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers() -> Timers {
        Timers {
            connect_wait: Duration::from_secs(3),
            answer_wait: Duration::from_secs(4),
            ping_interval: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(2),
        }
    }

    const CONNECT: &str = r#"{"type":"connect","token":"t","role":"upstream"}"#;
    const ANSWER: &str = r#"{"type":"answer","sdp":"v=0"}"#;

    #[test]
    fn connect_must_come_in_time() {
        let t0 = Instant::now();
        let mut c = Core::new(timers(), t0);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(3)));
        assert_eq!(c.handle_timeout(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            c.handle_timeout(t0 + Duration::from_secs(3)),
            Some(Action::Close(CloseReason::ConnectWaitTimeout))
        );
    }

    #[test]
    fn a_joined_client_is_pinged_and_closed_without_pong() {
        let t0 = Instant::now();
        let mut c = Core::new(timers(), t0);
        assert!(c.on_text(CONNECT, t0).is_ok());
        assert_eq!(c.poll_timeout(), None, "the shell is joining");
        c.offer_sent(t0);
        assert_eq!(
            c.handle_timeout(t0 + Duration::from_secs(4)),
            Some(Action::Close(CloseReason::AnswerTimeout))
        );
        let mut c = Core::new(timers(), t0);
        assert!(c.on_text(CONNECT, t0).is_ok());
        c.offer_sent(t0);
        assert!(matches!(
            c.on_text(ANSWER, t0),
            Ok(ClientMsg::Answer { .. })
        ));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(c.handle_timeout(t1), Some(Action::SendPing));
        assert!(c.on_text(r#"{"type":"pong"}"#, t1).is_ok());
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(c.handle_timeout(t2), Some(Action::SendPing));
        let t3 = t2 + Duration::from_secs(1);
        assert_eq!(
            c.handle_timeout(t3),
            Some(Action::SendPing),
            "still waiting"
        );
        assert_eq!(
            c.handle_timeout(t2 + Duration::from_secs(2)),
            Some(Action::Close(CloseReason::PongTimeout))
        );
    }

    #[test]
    fn out_of_turn_and_malformed_messages_close() {
        let t0 = Instant::now();
        let mut c = Core::new(timers(), t0);
        assert_eq!(c.on_text(ANSWER, t0), Err(CloseReason::JsonDecode));
        assert_eq!(c.phase(), Phase::Closed);
        let mut c = Core::new(timers(), t0);
        assert_eq!(c.on_text("{not json", t0), Err(CloseReason::JsonDecode));
        let mut c = Core::new(timers(), t0);
        assert!(c.on_text(CONNECT, t0).is_ok());
        c.offer_sent(t0);
        assert!(c.on_text(ANSWER, t0).is_ok());
        // An update answer with no update offer out.
        assert_eq!(
            c.on_text(r#"{"type":"update","sdp":"v=0"}"#, t0),
            Err(CloseReason::JsonDecode)
        );
    }

    #[test]
    fn updates_are_answered_in_time_and_the_rate_is_bounded() {
        let t0 = Instant::now();
        let mut c = Core::new(timers(), t0);
        assert!(c.on_text(CONNECT, t0).is_ok());
        c.offer_sent(t0);
        assert!(c.on_text(ANSWER, t0).is_ok());
        c.update_sent(t0);
        assert!(c.update_pending());
        assert!(c.on_text(r#"{"type":"update","sdp":"v=0"}"#, t0).is_ok());
        assert!(!c.update_pending());
        let mut n = 0;
        let r = loop {
            n += 1;
            if let Err(e) = c.on_text(r#"{"type":"pong"}"#, t0) {
                break e;
            }
            assert!(n < 1000);
        };
        assert_eq!(r, CloseReason::MessageLimit);
        assert_eq!(n, MAX_MESSAGES_PER_SECOND - 2);
    }
}
