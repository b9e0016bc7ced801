//! `POST sessions/new`: a str0m `Rtc` per session, ICE-lite, with the node's certificate (a
//! cascade's outgoing session runs full ICE instead).

use std::net::SocketAddr;
use std::time::Instant;

use str0m::{Candidate, IceCreds, Rtc};

use super::answer_desc;
use crate::engine::session::Session;
use crate::engine::{ClientOffer, Engine, OpError, SessionDesc};
use crate::ids::{SessionId, random_hex};

/// Packets kept per outgoing audio stream (str0m's default is 50).
const SEND_BUFFER_AUDIO: usize = 16;

impl Engine {
    /// `POST sessions/new`, optionally with an offer (the older Calls flow).
    pub fn create_session(
        &mut self,
        app: &str,
        offer: Option<ClientOffer>,
        now: Instant,
    ) -> Result<(SessionId, Option<SessionDesc>), OpError> {
        self.new_session(app, offer, None, now)
    }

    /// A new session: answering and ICE-lite (`outgoing: None`), or, for a cascade, the offering
    /// side running full ICE from its own socket's local address (the other server may be
    /// ICE-lite, and it tells sessions apart by our address, so each needs its own port).
    pub(in crate::engine) fn new_session(
        &mut self,
        app: &str,
        offer: Option<ClientOffer>,
        outgoing: Option<SocketAddr>,
        now: Instant,
    ) -> Result<(SessionId, Option<SessionDesc>), OpError> {
        if self.sessions.len() + self.sessions_elsewhere >= self.cfg.max_sessions {
            return Err(OpError::Unavailable(
                "this node holds its maximum number of sessions".into(),
            ));
        }
        let (remote_ufrag, fingerprint) = offer.as_ref().map_or((None, None), |o| {
            (o.ice_ufrag.clone(), o.fingerprint.clone())
        });
        // The older Calls flow: a `server-events` DataChannel in the offer to `sessions/new`
        // stands for `datachannels/establish`.
        let data_section = offer.as_ref().is_some_and(|o| o.data_section);
        let offer = offer.map(|o| o.parsed).transpose()?;
        let id = self.new_session_id();
        let (rtc, ufrag) = self.build_rtc(outgoing, now)?;
        let mut session = Session::new(id, app.to_string(), rtc, ufrag.clone(), now);
        session.outgoing_local = outgoing;
        let answer = match offer {
            Some(offer) => {
                let answer = session.accept_offer(offer)?;
                session.note_remote(remote_ufrag.as_ref(), fingerprint.as_ref());
                session.state = session.state.on_negotiated();
                session.channels.established = data_section;
                Some(answer_desc(answer))
            }
            None => None,
        };
        // Outgoing sessions keep their ufrag here too, so no other session is given it.
        self.demux.add_session(id, &ufrag);
        if let Some(local) = outgoing {
            self.outgoing.insert(local, id);
        }
        *self.app_sessions.entry(app.to_string()).or_insert(0) += 1;
        self.sessions.insert(id, Box::new(session));
        self.drain(id, now);
        self.process_work(now);
        tracing::info!(session = %id, app, "session created");
        Ok((id, answer))
    }

    /// A fresh `Rtc` for a session (a new one, or one moving to a new DTLS transport): the
    /// node's certificate, a local ufrag no other session has (the demux routes by it), and
    /// ICE-lite on the node's host candidate — or, for a cascade's outgoing session
    /// (`outgoing`), full ICE from that socket's address.
    pub(in crate::engine) fn build_rtc(
        &self,
        outgoing: Option<SocketAddr>,
        now: Instant,
    ) -> Result<(Rtc, String), OpError> {
        let mut ufrag = random_hex(4);
        while self.demux.has_ufrag(&ufrag) {
            ufrag = random_hex(4);
        }
        let mut config = Rtc::builder()
            // Packet-level forwarding: received RTP packets are handed out as they are and
            // written to subscribers with `write_rtp` (`fanout.rs`), not depacketized.
            .set_rtp_mode(true)
            .set_ice_lite(outgoing.is_none())
            .set_local_ice_credentials(IceCreds {
                ufrag: ufrag.clone(),
                pass: random_hex(16),
            })
            // Stats events carry the NACK counts the metrics report.
            .set_stats_interval(Some(std::time::Duration::from_secs(2)))
            // Resend history per video stream, at most: str0m's default of 1000 packets is 8 s
            // at 1 Mbit/s, about 1.4 MB per subscriber when full. Its age is cut further to the
            // subscriber's round trip once media flows (`repair_window`).
            .set_send_buffer_video(crate::engine::repair_window::MAX_PACKETS)
            // Audio is not NACKed by browsers (Opus has its own loss concealment): the buffer only
            // holds a written frame until it is sent. Each slot costs about 1.4 KB.
            .set_send_buffer_audio(SEND_BUFFER_AUDIO)
            // DataChannels: room for a burst while the subscriber's path catches up (see
            // `datachannels::SESSION_SCTP_BUFFER`).
            .set_sctp_max_buffered_amount(crate::engine::datachannels::SESSION_SCTP_BUFFER);
        if let Some(cert) = &self.cert {
            config = config.set_dtls_cert(cert.clone());
        }
        // Only str0m's builder can turn BWE on, so a session that may later pull simulcast with
        // `priorityOrdering: "asciibetical"` needs it from here (a cascade's own session never
        // pulls simulcast).
        if self.cfg.bandwidth_estimation && outgoing.is_none() {
            config = config.enable_bwe(Some(str0m::bwe::Bitrate::bps(
                crate::engine::simulcast_bwe::BWE_INITIAL_BPS,
            )));
        }
        let mut rtc = config.build(now);
        // A cascade's outgoing session is reached only through its own socket.
        let candidates = match outgoing {
            Some(addr) => Candidate::host(addr, "udp").map(|c| vec![c]),
            None => self.cfg.host_candidates(),
        }
        .map_err(|e| OpError::Internal(format!("media address unusable as ICE candidate: {e}")))?;
        for candidate in candidates {
            rtc.add_local_candidate(candidate);
        }
        Ok((rtc, ufrag))
    }
}
