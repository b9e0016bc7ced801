//! Cascades: the node as a WHEP or WHIP *client* of another server. The engine writes the offer
//! of an outgoing session (full ICE, controlling: the other server may be ICE-lite, as trackmesh
//! is), the shell POSTs it, and the answer is applied here. Each outgoing session has a socket
//! of its own (the other server, like this one, tells sessions apart by the client's address):
//! its datagrams come in through [`Engine::handle_outgoing_datagram`] and go out through
//! [`Engine::poll_outgoing_transmit`], never through the demux. A source session's received tracks
//! become the stream's publisher; a target session is a viewer of the stream whose sending
//! sections carry the stream's publications to the other server.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use str0m::media::{Direction, MediaKind, Mid};

use crate::engine::streams::{CreateRefused, Role, valid_stream_name};
use crate::engine::{ClientAnswer, Engine, OpError, SessionState};
use crate::ids::SessionId;

/// Remote candidates taken from an answer; a server needs one or two, the rest is ignored.
pub const MAX_REMOTE_CANDIDATES: usize = 4;

/// A connected outgoing session that received nothing for this long has lost the other server:
/// as the controlling agent it checks the pair at least every 3 s (str0m's maximum RTO), and a
/// live server answers each check, so this is two answers missed.
pub const OUTGOING_SILENT_AFTER: Duration = Duration::from_secs(6);

/// Which way a cascade carries the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CascadeDirection {
    /// Pull from another server's WHEP endpoint: the stream's publisher.
    Source,
    /// Push to another server's WHIP endpoint: a viewer of the stream.
    Target,
}

/// Where a cascade's outgoing session is, for the shell that drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutgoingState {
    /// ICE and DTLS are being set up.
    Connecting,
    /// Connected: media can flow.
    Live,
    /// Was connected and lost the other server (it may come back within the reconnect grace).
    Disconnected,
    /// The session has ended (closed, expired, or its stream was deleted).
    Gone,
    /// A target whose stream has no publisher: nothing to push, and the other server would
    /// time its tracks out, so the attempt ends and the next waits for a publisher.
    NoPublisher,
}

impl Engine {
    /// Writes the offer of a new outgoing session for a cascade of `stream`: recvonly audio and
    /// video for a source, sendonly for a target. `local` is the address of the session's own
    /// socket, which the shell bound (see [`Engine::outgoing_bind_addr`]). The stream must
    /// exist; a source needs it without a publisher, a target with one.
    pub fn cascade_offer(
        &mut self,
        app: &str,
        stream: &str,
        direction: CascadeDirection,
        local: SocketAddr,
        now: Instant,
    ) -> Result<(SessionId, String), OpError> {
        let Some(s) = self.streams.get(app, stream) else {
            return Err(OpError::NotFound(format!("stream {stream} not found")));
        };
        match direction {
            CascadeDirection::Source if s.publisher.is_some() => {
                return Err(OpError::Conflict(format!(
                    "stream {stream} already has a publisher"
                )));
            }
            CascadeDirection::Target if s.publisher.is_none() => {
                return Err(OpError::Unavailable(format!(
                    "stream {stream} has no publisher to push yet"
                )));
            }
            _ => {}
        }
        if self.outgoing.contains_key(&local) {
            return Err(OpError::Internal(format!("{local} already has a session")));
        }
        let (sid, _) = self.new_session(app, None, Some(local), now)?;
        let dir = match direction {
            CascadeDirection::Source => Direction::RecvOnly,
            CascadeDirection::Target => Direction::SendOnly,
        };
        let offer = self.sessions.get_mut(&sid).and_then(|s| {
            let mut api = s.rtc.sdp_api();
            let mids: Vec<Mid> = [MediaKind::Audio, MediaKind::Video]
                .into_iter()
                .map(|kind| api.add_media(kind, dir, Some(stream.to_string()), None, None))
                .collect();
            let (offer, pending) = api.apply()?;
            s.pending = Some(pending);
            s.outgoing_mids = mids;
            Some(offer.to_sdp_string())
        });
        let Some(offer) = offer else {
            self.close_session(sid, now, "cascade offer not made");
            return Err(OpError::Internal("str0m made no offer".into()));
        };
        self.drain(sid, now);
        self.process_work(now);
        Ok((sid, offer))
    }

    /// Applies the other server's answer (read by [`prepare_answer`], off the engine task) to a
    /// cascade's outgoing session and joins the session to its stream. On error the session is
    /// closed.
    pub fn cascade_answer(
        &mut self,
        app: &str,
        stream: &str,
        sid: SessionId,
        direction: CascadeDirection,
        answer: ClientAnswer,
        now: Instant,
    ) -> Result<(), OpError> {
        let r = self.cascade_accept(app, stream, sid, direction, answer, now);
        if r.is_err() {
            self.close_session(sid, now, "cascade answer refused");
        }
        self.drain(sid, now);
        self.process_work(now);
        r
    }

    fn cascade_accept(
        &mut self,
        app: &str,
        stream: &str,
        sid: SessionId,
        direction: CascadeDirection,
        answer: ClientAnswer,
        now: Instant,
    ) -> Result<(), OpError> {
        let parsed = answer.parsed?;
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::NotFound("cascade session closed".into()))?;
        let pending = s
            .pending
            .take()
            .ok_or_else(|| OpError::Internal("no pending cascade offer".into()))?;
        s.rtc
            .sdp_api()
            .accept_answer(pending, parsed)
            .map_err(|e| OpError::InvalidSdp(format!("answer not accepted: {e}")))?;
        s.state = s.state.on_negotiated();
        let mids: Vec<(Mid, MediaKind)> = s
            .outgoing_mids
            .iter()
            .filter_map(|mid| s.rtc.media(*mid))
            .filter(|m| !m.remote_pts().is_empty() && m.direction() != Direction::Inactive)
            .map(|m| (m.mid(), m.kind()))
            .collect();
        if mids.is_empty() {
            return Err(OpError::Unprocessable(
                "the other server answered no section with a codec in common".into(),
            ));
        }
        self.streams
            .create(app, stream, false, SystemTime::now())
            .map_err(|CreateRefused::Full| {
                OpError::Unavailable("this node holds its maximum number of streams".into())
            })?;
        match direction {
            CascadeDirection::Source => {
                let mut names = Vec::new();
                for (mid, kind) in mids {
                    let name = super::whip::track_name_for(kind, &names);
                    if self.publish(sid, mid, &name, now).is_ok() {
                        names.push(name);
                    }
                }
                if !self.streams.set_publisher(app, stream, sid, names, false) {
                    return Err(OpError::Conflict(format!(
                        "stream {stream} already has a publisher"
                    )));
                }
                self.attach_viewers(app, stream, now);
            }
            CascadeDirection::Target => {
                if !self.streams.add_viewer(app, stream, sid, mids, false) {
                    return Err(OpError::NotFound(format!("stream {stream} not found")));
                }
                self.attach_viewer(sid, now);
            }
        }
        Ok(())
    }

    /// Where a cascade's outgoing session is. A connected one that has heard nothing from the
    /// other server for [`OUTGOING_SILENT_AFTER`] counts as disconnected: str0m's own verdict
    /// takes its nine STUN retransmissions, about 20 s.
    pub fn outgoing_state(&self, sid: SessionId, now: Instant) -> OutgoingState {
        let Some(s) = self.sessions.get(&sid) else {
            return OutgoingState::Gone;
        };
        if let Some(m) = self.streams.session(sid)
            && m.role == Role::Viewer
            && self
                .streams
                .get(&m.app, &m.stream)
                .is_none_or(|st| st.publisher.is_none())
        {
            return OutgoingState::NoPublisher;
        }
        match s.state {
            SessionState::New | SessionState::Negotiated => OutgoingState::Connecting,
            SessionState::Connected { .. }
                if s.last_recv
                    .is_some_and(|t| now.saturating_duration_since(t) > OUTGOING_SILENT_AFTER) =>
            {
                OutgoingState::Disconnected
            }
            SessionState::Connected { .. } => OutgoingState::Live,
            SessionState::Disconnected { .. } => OutgoingState::Disconnected,
        }
    }

    /// Closes the outgoing session bound at `local`, if any (a cascade stopped while the
    /// engine was creating it leaves the shell without its id).
    pub fn close_outgoing(&mut self, local: SocketAddr, now: Instant, reason: &str) {
        if let Some(sid) = self.outgoing.get(&local).copied() {
            self.close_session(sid, now, reason);
        }
    }

    /// Where the shell binds a cascade session's socket: the media socket's IP, port 0; on a
    /// dual-stack media socket, the wildcard of the primary candidate's family (cascades, like
    /// the relay, speak that family).
    pub fn outgoing_bind_addr(&self) -> SocketAddr {
        let ip = self.cfg.local_addr.ip();
        if ip.is_unspecified() && self.cfg.candidate_addr.is_ipv4() {
            return SocketAddr::from(([0, 0, 0, 0], 0));
        }
        SocketAddr::new(ip, 0)
    }

    /// The host candidate of a socket bound at `bound`: itself, or with the announced IP when
    /// bound to every interface.
    pub fn outgoing_candidate(&self, bound: SocketAddr) -> SocketAddr {
        if bound.ip().is_unspecified() {
            SocketAddr::new(self.cfg.candidate_addr.ip(), bound.port())
        } else {
            bound
        }
    }

    /// A cascade starts on an existing stream: it is made explicit, so that it stays between
    /// attempts even without sessions. False when there is no such stream.
    pub fn cascade_pin_stream(&mut self, app: &str, stream: &str) -> bool {
        self.stream_exists(app, stream)
            && self
                .streams
                .create(app, stream, true, SystemTime::now())
                .is_ok()
    }

    /// Whether a stream exists (a cascade of a stream that went away stops).
    pub fn stream_exists(&self, app: &str, stream: &str) -> bool {
        valid_stream_name(stream) && self.streams.get(app, stream).is_some()
    }
}

/// Reads the other server's answer: within the SDP bounds, with at least one UDP candidate, and
/// with at most [`MAX_REMOTE_CANDIDATES`] of them kept (ICE checks go to each, so an answer must
/// not be able to point the node at a thousand addresses). Costs a parse: run it off the engine
/// task.
pub fn prepare_answer(sdp: &str) -> Result<ClientAnswer, OpError> {
    super::super::sdp_limits::check(sdp).map_err(|b| OpError::Decoding(b.to_string()))?;
    let keep = remote_candidates(sdp);
    if keep.is_empty() {
        return Err(OpError::Decoding(
            "the answer has no UDP candidate (a server answers with its candidates)".into(),
        ));
    }
    let mut kept = Vec::new();
    let mut text = String::with_capacity(sdp.len());
    for line in sdp.lines() {
        if let Some(addr) = candidate_addr(line) {
            if !keep.contains(&addr) || kept.contains(&addr) {
                continue;
            }
            kept.push(addr);
        } else if line.trim_end().starts_with("a=candidate:") {
            continue;
        }
        text.push_str(line.trim_end());
        text.push_str("\r\n");
    }
    Ok(ClientAnswer::parse(&text))
}

/// The address of an `a=candidate` line for UDP, component 1; `None` for any other line.
fn candidate_addr(line: &str) -> Option<SocketAddr> {
    let c = line.trim_end().strip_prefix("a=candidate:")?;
    // foundation component transport priority address port typ type ...
    let f: Vec<&str> = c.split_ascii_whitespace().collect();
    let (component, transport, ip, port) = (f.get(1)?, f.get(2)?, f.get(4)?, f.get(5)?);
    if *component != "1" || !transport.eq_ignore_ascii_case("udp") {
        return None;
    }
    Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
}

/// The UDP addresses of an answer's `a=candidate` lines (component 1), at most
/// [`MAX_REMOTE_CANDIDATES`].
pub fn remote_candidates(sdp: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in sdp.lines() {
        let Some(addr) = candidate_addr(line) else {
            continue;
        };
        if !out.contains(&addr) {
            out.push(addr);
            if out.len() == MAX_REMOTE_CANDIDATES {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_read_bounded_and_deduplicated() {
        let sdp = "v=0\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n\
            a=candidate:1 1 UDP 2130706431 127.0.0.1 5000 typ host\r\n\
            a=candidate:2 2 udp 2130706431 127.0.0.1 5001 typ host\r\n\
            a=candidate:3 1 tcp 2130706431 127.0.0.1 5002 typ host\r\n\
            a=candidate:4 1 udp 1 not-an-ip 5003 typ host\r\n\
            a=candidate:5 1 udp\r\n\
            a=candidate:6 1 udp 1 ::1 5004 typ host\r\n";
        assert_eq!(
            remote_candidates(sdp),
            vec![
                "127.0.0.1:5000".parse().expect("addr"),
                "[::1]:5004".parse().expect("addr")
            ]
        );
        let many: String = (0..20)
            .map(|i| format!("a=candidate:1 1 udp 1 10.0.0.1 {} typ host\n", 6000 + i))
            .collect();
        assert_eq!(remote_candidates(&many).len(), MAX_REMOTE_CANDIDATES);
    }

    #[test]
    fn a_prepared_answer_keeps_at_most_four_candidates() {
        // A real answer: a str0m peer answers a cascade-like offer, then lists 20 candidates.
        let mut offerer = str0m::Rtc::builder().build(Instant::now());
        let mut answerer = str0m::Rtc::builder()
            .set_ice_lite(true)
            .build(Instant::now());
        for i in 0..20u16 {
            let c = str0m::Candidate::host(SocketAddr::from(([127, 0, 0, 1], 6000 + i)), "udp")
                .expect("candidate");
            answerer.add_local_candidate(c);
        }
        let mut api = offerer.sdp_api();
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, _pending) = api.apply().expect("an offer");
        let answer = answerer
            .sdp_api()
            .accept_offer(offer)
            .expect("an answer")
            .to_sdp_string();
        assert_eq!(answer.matches("a=candidate:").count(), 20);
        let prepared = prepare_answer(&answer)
            .expect("prepared")
            .parsed
            .expect("parsed")
            .to_sdp_string();
        assert_eq!(
            prepared.matches("a=candidate:").count(),
            MAX_REMOTE_CANDIDATES,
            "{prepared}"
        );
    }
}
